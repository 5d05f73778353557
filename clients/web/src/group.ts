// A chat's info panel (members, roles, description, invite links) and the
// page an invite link opens.

import { ChatType, Role, type Chat, type InviteLink } from "@parley/client";
import { errorText, fill, h, ms, when } from "./dom.js";
import {
  avatar, chatAvatar, chats, hooks, me, nameOf, parley, peerOf, presenceDot, presenceText, ui, users,
} from "./state.js";

let invites: { chatId: string; links: InviteLink[] } = { chatId: "", links: [] };
// What the user typed in the panel's fields, kept across re-renders (live
// events re-render the panel) until saved.
const drafts = new Map<string, string>();

function field<E extends HTMLInputElement | HTMLTextAreaElement>(el: E, key: string, initial = ""): E {
  el.value = drafts.get(key) ?? initial;
  el.addEventListener("input", () => drafts.set(key, el.value));
  return el;
}

function saved(...keys: string[]) {
  for (const k of keys) drafts.delete(k);
}

export function inviteUrl(code: string): string {
  return `${location.origin}${location.pathname}?invite=${code}`;
}

/** The info panel of the current chat, filled into el. */
export function renderInfo(el: HTMLElement, chat: Chat) {
  const status = h("p", { class: "error", "data-testid": "info-error" });
  const act = (f: () => Promise<unknown>) => async () => {
    status.textContent = "";
    try {
      await f();
    } catch (err) {
      status.textContent = errorText(err);
    }
  };
  if (chat.type !== ChatType.GROUP) {
    const peer = peerOf(chat) ?? me.id;
    el.replaceChildren(h("div", { class: "profile" }, avatar(peer, 64),
      h("div", {}, h("strong", {}, nameOf(peer)), h("div", { class: "muted" }, presenceText(peer)))));
    return;
  }
  const admin = chat.role === Role.ADMIN;
  const updated = (c?: Chat) => {
    if (c) chats.set(c.id, { ...c, role: chat.role, unreadCount: chat.unreadCount, unreadMentionCount: chat.unreadMentionCount, settings: chat.settings });
    hooks.renderChat();
    hooks.renderChats();
  };

  const description = field(h("textarea", { "data-testid": "description-input", rows: "2", maxlength: "500", placeholder: "description" }), `${chat.id}:description`, chat.description);
  const rename = field(h("input", { "data-testid": "rename-input", maxlength: "100" }), `${chat.id}:name`, chat.name);
  const adding = field(h("input", { "data-testid": "add-members-input", placeholder: "usernames, comma-separated" }), `${chat.id}:add`);

  const members = [...chat.participants].sort((a, b) => b.role - a.role || nameOf(a.userId).localeCompare(nameOf(b.userId)));
  fill(el,
    h("h3", {}, "Group"),
    admin
      ? h("div", { class: "row" }, rename, h("button", { "data-testid": "rename", onclick: act(async () => { const c = (await parley.chats.updateChat({ chatId: chat.id, name: rename.value.trim() })).chat; saved(`${chat.id}:name`); updated(c); }) }, "Rename"))
      : undefined,
    h("div", { class: "row" }, chatAvatar(chat, 48), admin ? groupAvatarForm(chat, act, updated) : undefined),
    h("p", { class: "description", "data-testid": "description" }, chat.description || (admin ? "" : "No description.")),
    admin
      ? h("div", { class: "row" }, description, h("button", {
        "data-testid": "save-description",
        onclick: act(async () => {
          const c = (await parley.chats.updateChat({ chatId: chat.id, description: description.value.trim() })).chat;
          saved(`${chat.id}:description`);
          updated(c);
        }),
      }, "Save description"))
      : undefined,
    h("h4", {}, `Members (${members.length})`),
    h("ul", { class: "members", "data-testid": "members" }, ...members.map((p) =>
      h("li", { "data-testid": "member", "data-user": nameOf(p.userId), "data-role": p.role === Role.ADMIN ? "admin" : "member" },
        avatar(p.userId, 20), presenceDot(p.userId), h("span", { class: "name" }, nameOf(p.userId)),
        p.role === Role.ADMIN ? h("span", { class: "role" }, "admin") : undefined,
        admin && p.userId !== me.id
          ? h("button", {
            class: "link", "data-testid": "toggle-admin",
            onclick: act(async () => updated((await parley.chats.setParticipantRole({ chatId: chat.id, userId: p.userId, role: p.role === Role.ADMIN ? Role.MEMBER : Role.ADMIN })).chat)),
          }, p.role === Role.ADMIN ? "Make member" : "Make admin")
          : undefined,
        admin && p.userId !== me.id
          ? h("button", { class: "link danger", "data-testid": "remove-member", onclick: act(async () => updated((await parley.chats.removeParticipant({ chatId: chat.id, userId: p.userId })).chat)) }, "Remove")
          : undefined,
      ))),
    admin
      ? h("div", { class: "row" }, adding, h("button", {
        "data-testid": "add-members",
        onclick: act(async () => {
          const ids = await userIds(adding.value);
          const res = await parley.chats.addParticipants({ chatId: chat.id, userIds: ids });
          saved(`${chat.id}:add`);
          if (res.notAddedUserIds.length) status.textContent = `Not added: ${res.notAddedUserIds.map(nameOf).join(", ")}`;
          updated(res.chat);
        }),
      }, "Add"))
      : undefined,
    h("button", {
      class: "link danger", "data-testid": "leave",
      onclick: act(async () => {
        await parley.chats.leaveChat({ chatId: chat.id });
        chats.delete(chat.id);
        ui.current = "";
        await hooks.loadChats();
        document.querySelector("main")!.replaceChildren(h("p", { class: "empty" }, "You left the group."));
      }),
    }, "Leave group"),
    admin ? inviteSection(chat, act) : undefined,
    status,
  );
}

function groupAvatarForm(chat: Chat, act: (f: () => Promise<unknown>) => () => Promise<void>, updated: (c?: Chat) => void): HTMLElement {
  const file = h("input", { type: "file", accept: "image/*", "data-testid": "group-avatar-file" });
  return h("span", { class: "row" }, file,
    h("button", {
      class: "link", "data-testid": "set-group-avatar",
      onclick: act(async () => {
        const f = file.files?.[0];
        if (!f) throw new Error("choose an image first");
        const media = await parley.upload(f, { avatar: true });
        updated((await parley.chats.updateChat({ chatId: chat.id, avatarMediaId: media.id })).chat);
      }),
    }, "Set avatar"),
    chat.avatarUrl
      ? h("button", { class: "link danger", "data-testid": "remove-group-avatar", onclick: act(async () => updated((await parley.chats.updateChat({ chatId: chat.id, removeAvatar: true })).chat)) }, "Remove avatar")
      : undefined);
}

function inviteSection(chat: Chat, act: (f: () => Promise<unknown>) => () => Promise<void>): HTMLElement {
  const hours = field(h("input", { type: "number", min: "1", placeholder: "expires in hours (never)", "data-testid": "invite-hours" }), `${chat.id}:hours`);
  const limit = field(h("input", { type: "number", min: "0", placeholder: "max joins (no limit)", "data-testid": "invite-limit" }), `${chat.id}:limit`);
  const list = h("ul", { class: "invites", "data-testid": "invites" });
  const show = () => list.replaceChildren(...invites.links.map((l) => {
    const state = l.revokedAt ? "revoked"
      : l.expireTime && ms(l.expireTime) < Date.now() ? "expired"
      : l.usageLimit && l.usageCount >= l.usageLimit ? "used up" : "active";
    return h("li", { "data-testid": "invite", "data-code": l.code, "data-state": state },
      h("input", { readonly: true, value: inviteUrl(l.code), "data-testid": "invite-url", onfocus: (e: FocusEvent) => (e.target as HTMLInputElement).select() }),
      h("span", { class: "muted" }, `${state} · ${l.usageCount}${l.usageLimit ? `/${l.usageLimit}` : ""} joined`
        + (l.expireTime ? ` · until ${when(l.expireTime)}` : "")),
      state === "active"
        ? h("button", {
          class: "link danger", "data-testid": "revoke-invite",
          onclick: act(async () => {
            const r = (await parley.chats.revokeInviteLink({ chatId: chat.id, code: l.code })).inviteLink!;
            invites.links = invites.links.map((x) => (x.code === r.code ? r : x));
            show();
          }),
        }, "Revoke")
        : undefined);
  }));
  if (invites.chatId !== chat.id) {
    invites = { chatId: chat.id, links: [] };
    void parley.chats.listInviteLinks({ chatId: chat.id }).then((r) => {
      if (invites.chatId === chat.id) { invites.links = r.inviteLinks; show(); }
    }).catch(() => {});
  }
  show();
  return h("div", { class: "invite-links" },
    h("h4", {}, "Invite links"),
    h("div", { class: "row" }, hours, limit, h("button", {
      "data-testid": "create-invite",
      onclick: act(async () => {
        const hrs = Number(hours.value);
        const res = await parley.chats.createInviteLink({
          chatId: chat.id,
          usageLimit: Number(limit.value) || 0,
          expireTime: hrs > 0 ? { seconds: BigInt(Math.floor(Date.now() / 1000 + hrs * 3600)), nanos: 0 } : undefined,
        });
        invites.links.unshift(res.inviteLink!);
        saved(`${chat.id}:hours`, `${chat.id}:limit`);
        hours.value = limit.value = "";
        show();
      }),
    }, "Create link")),
    list);
}

/** The ids of comma-separated usernames. */
export async function userIds(text: string): Promise<number[]> {
  const ids: number[] = [];
  for (const u of text.split(",").map((s) => s.trim().replace(/^@/, "")).filter(Boolean)) {
    const found = await parley.users.searchUsers({ prefix: u, pageSize: 10 });
    const user = found.users.find((x) => x.username.toLowerCase() === u.toLowerCase());
    if (!user) throw new Error(`no user ${u}`);
    users.set(user.id, { username: user.username, avatarUrl: user.avatarUrl });
    ids.push(user.id);
  }
  return ids;
}

// ---- opening an invite link: ?invite=<code> or #invite/<code>

export function inviteCode(): string {
  const q = new URLSearchParams(location.search).get("invite");
  const m = /^#invite\/([A-Za-z0-9_-]+)$/.exec(location.hash);
  return q ?? m?.[1] ?? "";
}

function forgetInvite() {
  const q = new URLSearchParams(location.search);
  q.delete("invite");
  history.replaceState(null, "", location.pathname + (q.toString() ? `?${q}` : ""));
}

export async function showInvite(code: string) {
  const main = document.querySelector("main");
  if (!main) return;
  ui.current = "";
  hooks.renderChats();
  const box = h("section", { class: "invite", "data-testid": "invite-view" }, "Looking up the invite…");
  main.replaceChildren(box);
  try {
    const inv = await parley.chats.getInvite({ code });
    const status = h("p", { class: "error" });
    fill(box,
      h("p", { class: "muted" }, "You are invited to join"),
      h("h2", { "data-testid": "invite-name" }, inv.name),
      inv.description ? h("p", { "data-testid": "invite-description" }, inv.description) : undefined,
      h("p", { class: "muted", "data-testid": "invite-members" }, `${inv.memberCount} member${inv.memberCount === 1 ? "" : "s"}`),
      h("div", { class: "row" },
        h("button", {
          "data-testid": "join-invite",
          onclick: async () => {
            try {
              const chat = (await parley.chats.joinChatByInvite({ code })).chat!;
              forgetInvite();
              chats.set(chat.id, chat);
              await hooks.loadChats();
              await hooks.openChat(chat.id);
            } catch (err) {
              status.textContent = errorText(err);
            }
          },
        }, inv.member ? "Open" : "Join"),
        h("button", { class: "link", onclick: () => { forgetInvite(); main.replaceChildren(h("p", { class: "empty" }, "Pick a chat, or start one.")); } }, "Not now")),
      status,
    );
  } catch (err) {
    forgetInvite();
    box.replaceChildren(h("p", { class: "error", "data-testid": "invite-error" }, `This invite link does not work: ${errorText(err)}`));
  }
}
