// Parley web chat: a small single-page app on @parley/client alone.
// state.ts holds what the app knows, group.ts the info panel and invites.

import {
  ChatType,
  Code,
  ConnectError,
  LastMessageSchema,
  MessageStatus,
  PinSchema,
  ReactionSchema,
  Role,
  create,
  type Attachment,
  type Chat,
  type Event,
  type GetMessageReceiptsResponse,
  type Message,
  type Pin,
  type ReplyQuote,
} from "@parley/client";
import { errorText, fill, h, ms, when } from "./dom.js";
import { inviteCode, renderInfo, showInvite, userIds } from "./group.js";
import {
  avatar, chatAvatar, chatTitle, chats, hooks, loadPresence, me, messages, nameOf, nameUsers, parley, peerOf,
  presence, presenceDot, presenceText, ui, users,
} from "./state.js";

const PALETTE = ["👍", "❤️", "😂", "😮", "😢", "🙏"];

let listed: string[] = []; // the chats of the list shown (ui.view), in the server's order
const typing = new Map<string, Map<number, number>>(); // chat → user → expiry (ms)
const ticks = new Map<string, { delivered: bigint; read: bigint }>(); // chat-wide positions
const reactionVersion = new Map<string, bigint>(); // message id → highest version seen
const pinsTold = new Map<string, { version: bigint; pin?: Pin }>(); // message id → the pin of the highest pins version seen
const receipts = new Map<string, GetMessageReceiptsResponse>(); // message id → its receipts, once asked
const menuOpen = new Set<string>(); // messages whose actions are shown
let pinned: { chatId: string; list: Message[]; open: boolean } = { chatId: "", list: [], open: false };
let context: { kind: "reply" | "edit"; m: Message } | undefined; // what the composer does
let live: AbortController | undefined;
let forwardTo = ""; // the chat last chosen to forward to

function reset() {
  live?.abort();
  for (const m of [chats, messages, typing, ticks, reactionVersion, pinsTold, receipts, presence, signed, users]) m.clear();
  menuOpen.clear();
  pinned = { chatId: "", list: [], open: false };
  forwardTo = "";
  listed = [];
  ui.current = "";
  ui.view = "chats";
  context = undefined;
}

const app = document.getElementById("app")!;
const $ = <T extends Element = HTMLElement>(sel: string) => app.querySelector<T>(sel);

// ---- sign in

function showAuth(message = "") {
  live?.abort();
  app.replaceChildren(
    h("form", { class: "auth", "data-testid": "auth", onsubmit: (e: SubmitEvent) => e.preventDefault() },
      h("h1", {}, "Parley"),
      inviteCode() ? h("p", { class: "muted" }, "Sign in to open your invite.") : undefined,
      h("input", { name: "username", placeholder: "username", autocomplete: "username", required: true }),
      h("input", { name: "email", placeholder: "email (to register)", type: "email" }),
      h("input", { name: "password", placeholder: "password", type: "password", autocomplete: "current-password", required: true }),
      h("div", { class: "row" },
        h("button", { type: "button", "data-testid": "login", onclick: () => signIn(false) }, "Log in"),
        h("button", { type: "button", "data-testid": "register", onclick: () => signIn(true) }, "Register"),
      ),
      h("p", { class: "error", "data-testid": "auth-error" }, message),
    ),
  );
}

async function signIn(register: boolean) {
  const form = $<HTMLFormElement>("form.auth")!;
  const v = (n: string) => (form.elements.namedItem(n) as HTMLInputElement).value.trim();
  try {
    if (register) await parley.register(v("username"), v("email"), v("password"));
    else await parley.login(v("username"), v("password"));
    await start();
  } catch (err) {
    form.querySelector(".error")!.textContent = errorText(err);
  }
}

// ---- main view

async function start() {
  const res = await parley.users.getMe({});
  const u = res.me!.user!;
  Object.assign(me, { id: u.id, username: u.username });
  users.set(me.id, { username: u.username, avatarUrl: u.avatarUrl });
  app.replaceChildren(
    h("div", { class: "layout" },
      h("aside", {},
        h("header", {},
          h("span", { class: "who" }, avatar(me.id, 28), h("strong", { "data-testid": "me" }, me.username)),
          h("button", { class: "link", onclick: () => parley.logout().finally(() => { reset(); showAuth(); }) }, "Log out"),
        ),
        searchForm(),
        newChatForm(),
        h("nav", { class: "tabs" },
          h("button", { class: "link", "data-testid": "show-chats", onclick: () => switchView("chats") }, "Chats"),
          h("button", { class: "link", "data-testid": "show-archived", onclick: () => switchView("archived") }, "Archived")),
        h("ul", { class: "chats", "data-testid": "chat-list", "data-view": ui.view }),
      ),
      h("main", { "data-testid": "chat-view" }, h("p", { class: "empty" }, "Pick a chat, or start one.")),
    ),
  );
  const code = inviteCode();
  if (code) void showInvite(code);
  // Subscribe first and load the chats once the stream is ready, so that
  // no change falls between the two.
  void listen();
}

window.addEventListener("hashchange", () => {
  const code = inviteCode();
  if (code && me.id) void showInvite(code);
});

async function switchView(view: "chats" | "archived") {
  ui.view = view;
  $("ul.chats")?.setAttribute("data-view", view);
  await loadChats();
}

function newChatForm(): HTMLElement {
  const status = h("p", { class: "error" });
  // One request id per group asked for, kept when the same group is asked
  // for again after an error: a retry then makes no second group.
  let request = { key: "", id: "" };
  const people = h("input", { placeholder: "usernames, comma-separated", "data-testid": "new-chat-users" });
  const name = h("input", { placeholder: "group name (for a group)", "data-testid": "new-chat-name" });
  const make = async () => {
    status.textContent = "";
    try {
      const ids = await userIds(people.value);
      const group = name.value.trim();
      if (ids.length === 0 && !group) throw new Error("name at least one user, or a group");
      const key = JSON.stringify([group, ids]);
      if (request.key !== key) request = { key, id: crypto.randomUUID() };
      const chat = group || ids.length > 1
        ? (await parley.chats.createGroupChat({ name: group || "Group", memberIds: ids, requestId: request.id })).chat!
        : (await parley.chats.createPrivateChat({ peerId: ids[0] })).chat!;
      request = { key: "", id: "" };
      chats.set(chat.id, chat);
      if (!listed.includes(chat.id)) listed.unshift(chat.id);
      people.value = name.value = "";
      renderChats();
      await openChat(chat.id);
    } catch (err) {
      status.textContent = errorText(err);
    }
  };
  return h("form", { class: "new-chat", onsubmit: (e: SubmitEvent) => { e.preventDefault(); void make(); } },
    people, name, h("button", { "data-testid": "new-chat" }, "New chat"), status);
}

// ---- search

function searchForm(): HTMLElement {
  const query = h("input", { type: "search", placeholder: "Search messages", "data-testid": "search-input" });
  const here = h("input", { type: "checkbox", "data-testid": "search-here" });
  const status = h("p", { class: "error", "data-testid": "search-error" });
  const results = h("ul", { class: "results", "data-testid": "search-results" });
  const search = async () => {
    status.textContent = "";
    results.replaceChildren();
    const q = query.value.trim();
    if (!q) return;
    try {
      const res = await parley.messages.searchMessages({ query: q, chatId: here.checked ? ui.current : "", pageSize: 30 });
      const unknown = [...new Set(res.messages.map((m) => m.chatId))].filter((id) => !chats.has(id));
      for (const id of unknown) {
        const c = await parley.chats.getChat({ chatId: id }).catch(() => undefined);
        if (c?.chat) chats.set(id, c.chat);
      }
      await nameUsers(res.messages.map((m) => m.senderId));
      results.replaceChildren(...res.messages.map((m) => {
        const c = chats.get(m.chatId);
        return h("li", { "data-testid": "search-result", "data-chat": m.chatId, "data-id": m.id, onclick: () => void openChat(m.chatId, m) },
          h("div", { class: "muted" }, `${c ? chatTitle(c) : "?"} · ${nameOf(m.senderId)} · ${when(m.sentAt)}`),
          h("div", { "data-testid": "search-text" }, m.text));
      }));
      if (res.messages.length === 0) status.textContent = "Nothing found.";
    } catch (err) {
      status.textContent = errorText(err);
    }
  };
  return h("form", { class: "search", onsubmit: (e: SubmitEvent) => { e.preventDefault(); void search(); } },
    h("div", { class: "row" }, query, h("button", { "data-testid": "search" }, "Search")),
    h("label", { class: "muted" }, here, " in this chat only"),
    status, results);
}

// ---- the chat list

async function loadChats() {
  const res = await parley.chats.listChats({ pageSize: 200, archived: ui.view === "archived" });
  for (const c of res.chats) {
    // A message that arrived live after the list was read is newer than
    // the list: its preview and unread counts stay.
    const had = chats.get(c.id);
    if (had?.lastMessage && had.lastMessage.seq > (c.lastMessage?.seq ?? 0n)) {
      c.lastMessage = had.lastMessage;
      c.unreadCount = had.unreadCount;
      c.unreadMentionCount = had.unreadMentionCount;
    }
    chats.set(c.id, c);
  }
  listed = res.chats.map((c) => c.id);
  const ids = res.chats.flatMap((c) => c.participants.map((p) => p.userId));
  await nameUsers(ids);
  await loadPresence(ids);
  renderChats();
  if (ui.current) renderChat();
}

function activity(c: Chat): bigint {
  return c.lastMessage?.sentAt?.seconds ?? c.updatedAt?.seconds ?? c.createdAt?.seconds ?? 0n;
}

function renderChats() {
  const list = $("ul.chats");
  if (!list) return;
  const pinnedAt = (c: Chat) => ms(c.settings?.pinnedAt);
  const sorted = listed.map((id) => chats.get(id)).filter((c): c is Chat => !!c)
    .sort((a, b) => pinnedAt(b) - pinnedAt(a) || Number(activity(b) - activity(a)));
  list.replaceChildren(
    ...sorted.map((c) => {
      const peer = peerOf(c);
      const muted = !!c.settings?.muted;
      return h("li", {
        class: `${c.id === ui.current ? "active" : ""} ${muted ? "muted-chat" : ""}`,
        "data-testid": "chat", "data-title": chatTitle(c), "data-id": c.id,
        "data-muted": String(muted), "data-pinned": String(!!c.settings?.pinnedAt),
        onclick: () => openChat(c.id),
      },
      h("div", { class: "title" },
        h("span", { class: "who" }, chatAvatar(c, 20), peer ? presenceDot(peer) : undefined, chatTitle(c)),
        h("span", { class: "flags" },
          c.settings?.pinnedAt ? h("span", { title: "pinned", "data-testid": "pinned-flag" }, "📌") : undefined,
          muted ? h("span", { title: "muted", "data-testid": "muted-flag" }, "🔕") : undefined,
          c.unreadMentionCount > 0n ? h("span", { class: "badge mention", "data-testid": "mentions", title: "mentions" }, `@${c.unreadMentionCount}`) : undefined,
          c.unreadCount > 0n ? h("span", { class: "badge", "data-testid": "unread" }, String(c.unreadCount)) : undefined)),
      h("div", { class: "preview", "data-testid": "preview" }, c.lastMessage?.preview ?? ""),
      );
    }),
  );
  if (sorted.length === 0) list.append(h("li", { class: "muted" }, ui.view === "archived" ? "No archived chats." : "No chats yet."));
}

async function updateSettings(chat: Chat, change: { muted?: boolean; archived?: boolean; pinned?: boolean }) {
  const res = await parley.chats.updateChatSettings({
    chatId: chat.id,
    mute: change.muted === undefined ? undefined : { case: "muted", value: change.muted },
    archived: change.archived,
    pinned: change.pinned,
  });
  chat.settings = res.settings;
  if (change.archived !== undefined || change.pinned !== undefined) await loadChats();
  else { renderChats(); renderChat(); }
}

// ---- one chat

async function openChat(id: string, focus?: Message) {
  if (ui.current !== id) {
    context = undefined;
    ui.infoOpen = false;
  }
  ui.current = id;
  const chat = chats.get(id);
  if (!chat) return;
  const res = await parley.messages.listMessages({ chatId: id, limit: 100 });
  if (ui.current !== id) return; // another chat was opened meanwhile
  // Merged with what arrived live while the page was loading.
  let byseq = messages.get(id);
  if (!byseq) messages.set(id, (byseq = new Map()));
  for (const m of res.messages) if (!byseq.has(m.seq)) byseq.set(m.seq, withToldPin(m));
  if (focus && !byseq.has(focus.seq)) {
    const older = await parley.messages.listMessages({ chatId: id, cursor: { case: "beforeSeq", value: focus.seq + 1n }, limit: 50 });
    for (const m of older.messages) if (!byseq.has(m.seq)) byseq.set(m.seq, withToldPin(m));
  }
  if (ui.current !== id) return;
  await nameUsers(chat.participants.map((p) => p.userId));
  // Checked after every wait: a composer of this chat under another
  // chat's header would send there.
  if (ui.current !== id) return;
  const main = $("main")!;
  main.replaceChildren(
    h("header", { class: "chat-header" }),
    h("div", { class: "pinned-bar", "data-testid": "pinned-bar", hidden: true }),
    h("section", { class: "info", "data-testid": "info-panel", hidden: true }),
    h("ol", { class: "messages", "data-testid": "messages" }),
    composer(chat),
  );
  renderChat();
  renderTyping();
  renderChats();
  void loadPinned(id);
  if (focus) flash(focus.id);
  await markRead(id);
}

function flash(messageId: string) {
  const el = $(`[data-testid=message][data-id="${messageId}"]`);
  el?.scrollIntoView({ block: "center" });
  el?.classList.add("flash");
  setTimeout(() => el?.classList.remove("flash"), 2000);
}

/** Re-renders the open chat's header, info panel and messages. */
function renderChat() {
  const chat = chats.get(ui.current);
  if (!chat) return;
  renderHeader(chat);
  const info = $("section.info");
  if (info) {
    info.hidden = !ui.infoOpen;
    if (ui.infoOpen) renderInfo(info, chat);
  }
  renderPinned();
  renderMessages();
  renderContext();
}

function renderHeader(chat: Chat) {
  const header = $("header.chat-header");
  if (!header) return;
  const id = chat.id;
  const peer = peerOf(chat);
  const status = h("span", { class: "error", "data-testid": "chat-error" });
  const act = (f: () => Promise<unknown>) => () => f().catch((err) => { status.textContent = errorText(err); });
  const s = chat.settings;
  // A request made to me: its starter sees no ticks or presence of mine
  // until I accept it (or reply).
  const request = chat.request && chat.request.starterId !== me.id
    ? h("span", { class: "request", "data-testid": "request" },
      h("button", {
        "data-testid": "accept-request",
        onclick: act(async () => {
          const c = (await parley.chats.acceptChatRequest({ chatId: id })).chat;
          chat.request = undefined;
          if (c) chats.set(id, { ...chat, request: c.request });
          renderChat();
        }),
      }, "Accept"),
      h("button", {
        "data-testid": "decline-request",
        onclick: act(async () => {
          await parley.chats.declineChatRequest({ chatId: id });
          ui.current = "";
          chats.delete(id);
          $("main")!.replaceChildren();
          await loadChats();
        }),
      }, "Decline"))
    : undefined;
  const members = chat.participants.length;
  fill(header,
    h("div", { class: "who" },
      chatAvatar(chat, 32),
      h("div", {},
        h("strong", { "data-testid": "chat-title" }, chatTitle(chat)),
        h("div", { class: "muted", "data-testid": "presence" },
          peer ? presenceText(peer) : `${members} member${members === 1 ? "" : "s"}${chat.description ? ` · ${chat.description}` : ""}`),
        h("span", { class: "typing", "data-testid": "typing" }))),
    request,
    h("div", { class: "chat-actions" },
      h("button", { class: "link", "data-testid": "mute", "data-muted": String(!!s?.muted), onclick: act(() => updateSettings(chat, { muted: !s?.muted })) }, s?.muted ? "Unmute" : "Mute"),
      h("button", { class: "link", "data-testid": "pin-chat", onclick: act(() => updateSettings(chat, { pinned: !s?.pinnedAt })) }, s?.pinnedAt ? "Unpin chat" : "Pin chat"),
      h("button", { class: "link", "data-testid": "archive", onclick: act(() => updateSettings(chat, { archived: !s?.archived })) }, s?.archived ? "Unarchive" : "Archive"),
      h("button", { class: "link", "data-testid": "chat-info", onclick: () => { ui.infoOpen = !ui.infoOpen; renderChat(); } }, ui.infoOpen ? "Hide info" : "Info")),
    status,
  );
  renderTyping();
}

function canPin(chat: Chat): boolean {
  return chat.type === ChatType.PRIVATE || chat.role === Role.ADMIN;
}

// ---- pinned messages

async function loadPinned(chatId: string) {
  const res = await parley.messages.listPinnedMessages({ chatId }).catch(() => undefined);
  if (!res || ui.current !== chatId) return;
  pinned = { chatId, list: res.messages, open: pinned.chatId === chatId && pinned.open };
  renderPinned();
}

function renderPinned() {
  const bar = $("div.pinned-bar");
  const chat = chats.get(ui.current);
  if (!bar || !chat) return;
  const list = pinned.chatId === ui.current ? pinned.list : [];
  bar.hidden = list.length === 0;
  bar.setAttribute("data-count", String(list.length));
  if (!list.length) return bar.replaceChildren();
  const latest = list[0];
  fill(bar,
    h("div", { class: "row" },
      h("span", { class: "pinned-latest", "data-testid": "pinned-latest", onclick: () => flash(latest.id) }, `📌 ${preview(latest)}`),
      h("button", { class: "link", "data-testid": "pinned-toggle", onclick: () => { pinned.open = !pinned.open; renderPinned(); } },
        pinned.open ? "Hide" : `All pinned (${list.length})`)),
    pinned.open
      ? h("ul", { class: "pinned-list" }, ...list.map((m) =>
        h("li", { "data-testid": "pinned-item", "data-id": m.id },
          h("span", { onclick: () => flash(m.id) }, `${nameOf(m.senderId)}: ${preview(m)}`),
          canPin(chat) ? h("button", { class: "link", "data-testid": "unpin-item", onclick: () => void setPinned(m, false) }, "Unpin") : undefined)))
      : undefined,
  );
}

async function setPinned(m: Message, pin: boolean) {
  try {
    const res = pin
      ? await parley.messages.pinMessage({ chatId: m.chatId, messageId: m.id })
      : await parley.messages.unpinMessage({ chatId: m.chatId, messageId: m.id });
    if (res.message) addMessage(res.message);
    await loadPinned(m.chatId);
  } catch (err) {
    setStatus(errorText(err));
  }
}

function preview(m: Message): string {
  if (m.deleted) return "deleted message";
  return m.text || m.attachments.map((a) => `[${a.type}]`).join(" ");
}

// ---- the composer: replies, edits, mentions

function composer(chat: Chat): HTMLElement {
  const id = chat.id;
  const progress = h("progress", { max: "100", value: "0", hidden: true, "data-testid": "upload-progress" });
  const text = h("input", { placeholder: "Message (@name to mention)", "data-testid": "composer", autocomplete: "off", list: "mention-names" });
  const file = h("input", { type: "file", accept: "image/*", "data-testid": "file" });
  const status = h("span", { class: "error", "data-testid": "send-error" });
  let lastTyping = 0;
  // A send in flight takes no other (a double click), and a failed one
  // tried again unchanged keeps its ids: the server answers a send or an
  // upload it stored already with the stored one, and adds none.
  let inFlight = false;
  let draft: { sig: string; clientMessageId: string; clientUploadId: string; mediaId?: string } | undefined;
  text.addEventListener("input", () => {
    if (Date.now() - lastTyping > 3000 && text.value) {
      lastTyping = Date.now();
      parley.messages.sendTyping({ chatId: id, typing: true }).catch(() => {});
    }
  });
  const send = async () => {
    if (inFlight) return;
    if (ui.current !== id) return; // a composer left behind by another chat
    status.textContent = "";
    const body = text.value.trim();
    const f = file.files?.[0];
    inFlight = true;
    try {
      if (context?.kind === "edit") {
        if (!body) return;
        const res = await parley.messages.editMessage({ chatId: id, messageId: context.m.id, text: body });
        addMessage(res.message!);
      } else {
        if (!body && !f) return;
        const replyTo = context?.kind === "reply" ? context.m.id : "";
        const sig = JSON.stringify([body, f ? [f.name, f.size, f.lastModified] : null, replyTo]);
        if (draft?.sig !== sig) draft = { sig, clientMessageId: crypto.randomUUID(), clientUploadId: crypto.randomUUID() };
        const d = draft;
        const mediaIds: string[] = [];
        if (f) {
          if (!d.mediaId) {
            progress.hidden = false;
            const media = await parley.upload(f, {
              chatId: id,
              clientUploadId: d.clientUploadId,
              onProgress: (sent, total) => { progress.value = total ? Math.round((100 * sent) / total) : 100; },
            });
            d.mediaId = media.id;
          }
          mediaIds.push(d.mediaId);
        }
        const mentions = resolveMentions(body, chats.get(id) ?? chat);
        const res = await parley.messages.sendMessage({
          chatId: id, clientMessageId: d.clientMessageId, text: body, mediaIds,
          replyToMessageId: replyTo,
          mentionUserIds: mentions.ids, mentionAll: mentions.all,
        });
        if (draft === d) draft = undefined;
        addMessage(res.message!);
      }
      text.value = "";
      file.value = "";
      lastTyping = 0;
      context = undefined;
      renderContext();
    } catch (err) {
      status.textContent = errorText(err);
    } finally {
      inFlight = false;
      progress.hidden = true;
    }
  };
  const names = chat.participants.filter((p) => p.userId !== me.id).map((p) => `@${nameOf(p.userId)}`);
  if (chat.type === ChatType.GROUP && chat.role === Role.ADMIN) names.push("@all");
  return h("form", { class: "composer", onsubmit: (e: SubmitEvent) => { e.preventDefault(); void send(); } },
    h("div", { class: "context", "data-testid": "composer-context", hidden: true }),
    text, file, h("button", { "data-testid": "send" }, "Send"), progress, status,
    h("datalist", { id: "mention-names" }, ...names.map((n) => h("option", { value: n }))));
}

/** The members that @name words of the text mention, and whether @all does. */
function resolveMentions(text: string, chat: Chat): { ids: number[]; all: boolean } {
  const ids = new Set<number>();
  let all = false;
  for (const [, word] of text.matchAll(/(?:^|[^\p{L}\p{M}\p{N}_])@([\p{L}\p{M}\p{N}_.-]+)/gu)) {
    const w = word.replace(/[.-]+$/, "").toLowerCase();
    if (w === "all" && chat.type === ChatType.GROUP && chat.role === Role.ADMIN) all = true;
    const p = chat.participants.find((p) => p.userId !== me.id && nameOf(p.userId).toLowerCase() === w);
    if (p) ids.add(p.userId);
  }
  return { ids: [...ids], all };
}

function renderContext() {
  const el = $("[data-testid=composer-context]");
  const text = $<HTMLInputElement>("[data-testid=composer]");
  if (!el) return;
  el.hidden = !context || context.m.chatId !== ui.current;
  if (!context || el.hidden) return el.replaceChildren();
  const m = context.m;
  el.setAttribute("data-kind", context.kind);
  el.replaceChildren(
    h("span", {}, context.kind === "reply" ? `Replying to ${nameOf(m.senderId)}: ` : "Editing: ", h("em", {}, preview(m))),
    h("button", { type: "button", class: "link", "data-testid": "cancel-context", onclick: () => { if (context?.kind === "edit" && text) text.value = ""; context = undefined; renderContext(); } }, "Cancel"),
  );
}

function setContext(kind: "reply" | "edit", m: Message) {
  context = { kind, m };
  menuOpen.delete(m.id);
  const text = $<HTMLInputElement>("[data-testid=composer]");
  if (text && kind === "edit") text.value = m.text;
  renderMessages();
  renderContext();
  text?.focus();
}

function setStatus(message: string) {
  const el = $("[data-testid=send-error]");
  if (el) el.textContent = message;
}

// ---- messages

// withToldPin gives m the pin that the latest pins_changed event of it
// told, if one did: the events keep a message's pin (by version), as an
// answer, an edit or a page read earlier may be older, also for a message
// that was not loaded when the event came.
function withToldPin(m: Message): Message {
  const told = pinsTold.get(m.id);
  if (told && !m.deleted) m.pin = told.pin;
  return m;
}

function addMessage(m: Message) {
  const chat = chats.get(m.chatId);
  let byseq = messages.get(m.chatId);
  if (!byseq) messages.set(m.chatId, (byseq = new Map()));
  // Live events carry no `mine` in reactions: keep ours.
  const old = byseq.get(m.seq);
  if (old) {
    const mine = new Set(old.reactions.filter((r) => r.mine).map((r) => r.emoji));
    for (const r of m.reactions) r.mine ||= mine.has(r.emoji);
  }
  byseq.set(m.seq, withToldPin(m));
  // Replies quote the original as it is now.
  if (old && (m.deleted || m.editedAt)) {
    for (const r of byseq.values()) {
      if (r.replyTo?.messageId !== m.id) continue;
      r.replyTo.preview = m.deleted ? "" : m.text;
      r.replyTo.deleted = m.deleted;
    }
  }
  if (chat && (!chat.lastMessage || chat.lastMessage.seq <= m.seq)) {
    chat.lastMessage = create(LastMessageSchema, {
      messageId: m.id, senderId: m.senderId, seq: m.seq, sentAt: m.sentAt, preview: preview(m),
    });
  }
  if (m.chatId === ui.current) renderMessages();
  renderChats();
}

function statusOf(m: Message): "sent" | "delivered" | "read" {
  const t = ticks.get(m.chatId);
  if ((t && m.seq <= t.read) || m.status === MessageStatus.READ) return "read";
  if ((t && m.seq <= t.delivered) || m.status === MessageStatus.DELIVERED) return "delivered";
  return "sent";
}

function renderMessages() {
  const list = $("ol.messages");
  const chat = chats.get(ui.current);
  if (!list || !chat) return;
  const ms = [...(messages.get(ui.current)?.values() ?? [])].sort((a, b) => (a.seq < b.seq ? -1 : 1));
  // Names of quoted, forwarded and absent senders, then again.
  const unknown = ms.flatMap((m) => [m.senderId, m.replyTo?.senderId ?? 0, m.forwardedFrom?.senderId ?? 0]).filter((id) => id && !users.has(id));
  if (unknown.length) void nameUsers(unknown).then(() => renderMessages());
  const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
  list.replaceChildren(...ms.map((m) => messageView(m, chat)));
  if (atBottom || list.scrollTop === 0) list.scrollTop = list.scrollHeight;
}

function messageView(m: Message, chat: Chat): HTMLElement {
  const mine = m.senderId === me.id;
  const mentioned = !mine && !m.deleted && (m.mentionsAll || m.mentionedUserIds.includes(me.id));
  const st = statusOf(m);
  return h("li", {
    class: `${mine ? "mine" : "theirs"} ${mentioned ? "mentioned" : ""} ${m.pin ? "pinned" : ""}`,
    "data-testid": "message", "data-seq": String(m.seq), "data-id": m.id, "data-text": m.text,
    "data-mentioned": String(mentioned), "data-pinned": String(!!m.pin), "data-deleted": String(m.deleted),
  },
  mine ? undefined : h("div", { class: "sender" }, avatar(m.senderId, 18), nameOf(m.senderId)),
  m.forwardedFrom ? h("div", { class: "forwarded", "data-testid": "forwarded" }, `Forwarded from ${nameOf(m.forwardedFrom.senderId)}`) : undefined,
  m.replyTo ? quoteView(m.replyTo) : undefined,
  ...m.attachments.map(attachmentView),
  m.deleted ? h("em", { "data-testid": "deleted" }, "deleted message") : h("span", { class: "text", "data-testid": "text" }, ...textView(m.text, chat)),
  h("div", { class: "meta" },
    m.pin ? h("span", { title: `pinned by ${nameOf(m.pin.pinnedBy)}`, "data-testid": "pin-mark" }, "📌") : undefined,
    m.editedAt && !m.deleted ? h("span", { "data-testid": "edited" }, "edited") : undefined,
    h("span", {}, when(m.sentAt)),
    mine ? h("span", { class: `ticks ${st}`, "data-testid": "ticks", "data-status": st, title: st }, st === "sent" ? "✓" : "✓✓") : undefined,
    m.deleted ? undefined : h("button", { class: "link menu", "data-testid": "message-menu", title: "actions", onclick: () => { menuOpen.has(m.id) ? menuOpen.delete(m.id) : menuOpen.add(m.id); renderMessages(); } }, "⋯")),
  m.reactions.length
    ? h("div", { class: "reactions", "data-testid": "reactions" }, ...m.reactions.map((r) =>
      h("button", {
        class: `reaction ${r.mine ? "mine" : ""}`, "data-testid": "reaction", "data-emoji": r.emoji, "data-count": String(r.count), "data-mine": String(r.mine),
        title: r.mine ? "remove your reaction" : "react", onclick: () => void react(m, r.emoji, !r.mine),
      }, `${r.emoji} ${r.count}`)))
    : undefined,
  menuOpen.has(m.id) && !m.deleted ? actionsView(m, chat) : undefined,
  receipts.has(m.id) ? receiptsView(receipts.get(m.id)!) : undefined,
  );
}

function textView(text: string, chat: Chat): (string | HTMLElement)[] {
  const members = new Set(chat.participants.map((p) => nameOf(p.userId).toLowerCase()));
  return text.split(/(@[\p{L}\p{M}\p{N}_.-]+)/u).map((part) => {
    const name = part.startsWith("@") ? part.slice(1).replace(/[.-]+$/, "").toLowerCase() : "";
    return name && (name === "all" || members.has(name)) ? h("b", { class: name === me.username.toLowerCase() || name === "all" ? "mention me" : "mention" }, part) : part;
  });
}

function quoteView(q: ReplyQuote): HTMLElement {
  return h("div", { class: "quote", "data-testid": "quote", "data-deleted": String(q.deleted), onclick: () => flash(q.messageId) },
    q.deleted
      ? h("em", {}, "deleted message")
      : [h("strong", {}, nameOf(q.senderId)), " ", q.preview, ...q.attachmentTypes.map((t) => ` [${t}]`)].reduce<HTMLElement>((el, c) => { el.append(c); return el; }, h("span", {})));
}

function actionsView(m: Message, chat: Chat): HTMLElement {
  const mine = m.senderId === me.id;
  const others = [...chats.values()].filter((c) => listed.includes(c.id) || c.id === chat.id);
  const target = h("select", { "data-testid": "forward-target", onchange: () => { forwardTo = target.value; } },
    ...others.map((c) => h("option", { value: c.id, selected: c.id === forwardTo }, chatTitle(c))));
  const act = (f: () => Promise<unknown>) => () => { setStatus(""); f().catch((err) => setStatus(errorText(err))); };
  return h("div", { class: "actions", "data-testid": "actions" },
    h("span", { class: "palette" }, ...PALETTE.map((e) => {
      const has = m.reactions.some((r) => r.emoji === e && r.mine);
      return h("button", { class: `link emoji ${has ? "mine" : ""}`, "data-testid": "react", "data-emoji": e, onclick: () => void react(m, e, !has) }, e);
    })),
    h("button", { class: "link", "data-testid": "reply", onclick: () => setContext("reply", m) }, "Reply"),
    mine ? h("button", { class: "link", "data-testid": "edit", onclick: () => setContext("edit", m) }, "Edit") : undefined,
    mine || chat.role === Role.ADMIN && chat.type === ChatType.GROUP
      ? h("button", {
        class: "link danger", "data-testid": "delete",
        onclick: act(async () => { menuOpen.delete(m.id); addMessage((await parley.messages.deleteMessage({ chatId: m.chatId, messageId: m.id })).message!); }),
      }, "Delete for everyone")
      : undefined,
    h("button", {
      class: "link danger", "data-testid": "delete-for-me",
      onclick: act(async () => { await parley.messages.deleteMessagesForMe({ chatId: m.chatId, messageIds: [m.id] }); hide(m.chatId, [m.seq]); }),
    }, "Delete for me"),
    canPin(chat)
      ? h("button", { class: "link", "data-testid": "pin-message", onclick: () => void setPinned(m, !m.pin) }, m.pin ? "Unpin" : "Pin")
      : undefined,
    chat.type === ChatType.GROUP
      ? h("button", {
        class: "link", "data-testid": "receipts-button",
        onclick: act(async () => {
          const r = await parley.messages.getMessageReceipts({ chatId: m.chatId, messageId: m.id });
          await nameUsers([...r.readUserIds, ...r.deliveredUserIds, ...r.pendingUserIds]);
          receipts.set(m.id, r);
          renderMessages();
        }),
      }, "Seen by")
      : undefined,
    h("span", { class: "forward" }, target, h("button", {
      class: "link", "data-testid": "forward",
      onclick: act(async () => {
        const res = await parley.messages.sendMessage({ chatId: target.value, clientMessageId: crypto.randomUUID(), forward: { chatId: m.chatId, messageId: m.id } });
        menuOpen.delete(m.id);
        addMessage(res.message!);
        setStatus(`Forwarded to ${chatTitle(chats.get(target.value)!)}.`);
      }),
    }, "Forward")),
  );
}

function receiptsView(r: GetMessageReceiptsResponse): HTMLElement {
  const names = (ids: number[]) => (ids.length ? ids.map(nameOf).join(", ") : "—");
  return h("div", { class: "receipts", "data-testid": "receipts" },
    h("div", { "data-testid": "read-by" }, `Read by: ${names(r.readUserIds)}`),
    h("div", { "data-testid": "delivered-to" }, `Delivered to: ${names(r.deliveredUserIds)}`),
    h("div", { "data-testid": "pending" }, `Not yet received: ${names(r.pendingUserIds)}`));
}

function hide(chatId: string, seqs: bigint[]) {
  const byseq = messages.get(chatId);
  for (const s of seqs) byseq?.delete(s);
  if (chatId === ui.current) { renderMessages(); void loadPinned(chatId); }
}

// ---- reactions

async function react(m: Message, emoji: string, add: boolean) {
  const before = reactionVersion.get(m.id);
  try {
    const req = { chatId: m.chatId, messageId: m.id, emoji };
    const res = add ? await parley.messages.addReaction(req) : await parley.messages.removeReaction(req);
    const cur = messages.get(m.chatId)?.get(m.seq);
    if (!cur) return;
    if (reactionVersion.get(m.id) === before) cur.reactions = res.reactions;
    else setMine(cur, emoji, add); // a newer event came first: keep its counts
    menuOpen.delete(m.id);
    if (m.chatId === ui.current) renderMessages();
  } catch (err) {
    setStatus(errorText(err));
  }
}

function setMine(m: Message, emoji: string, mine: boolean) {
  for (const r of m.reactions) if (r.emoji === emoji) r.mine = mine;
}

function onReactions(ev: Extract<Event["kind"], { case: "reactionsChanged" }>["value"]) {
  const m = messages.get(ev.chatId)?.get(ev.seq);
  const seen = reactionVersion.get(ev.messageId) ?? -1n;
  if (ev.version > seen) reactionVersion.set(ev.messageId, ev.version);
  if (!m) return;
  const mine = new Set(m.reactions.filter((r) => r.mine).map((r) => r.emoji));
  if (ev.userId === me.id) ev.added ? mine.add(ev.emoji) : mine.delete(ev.emoji);
  if (ev.version > seen) m.reactions = ev.reactions.map((r) => create(ReactionSchema, { emoji: r.emoji, count: r.count, mine: mine.has(r.emoji) }));
  else for (const r of m.reactions) r.mine = mine.has(r.emoji);
  if (ev.chatId === ui.current) renderMessages();
}

// ---- attachments

const signed = new Map<string, Promise<{ full: string; thumb: string }>>();

function attachmentView(a: Attachment): HTMLElement {
  const box = h("div", { class: "attachment" });
  let urls = signed.get(a.mediaId);
  if (!urls) {
    urls = parley.media.getMedia({ mediaId: a.mediaId }).then((r) => ({
      full: parley.url(r.downloadUrl),
      thumb: r.thumbnailDownloadUrl ? parley.url(r.thumbnailDownloadUrl) : "",
    }));
    signed.set(a.mediaId, urls);
    urls.catch(() => signed.delete(a.mediaId));
    // Signed URLs expire; fetch new ones for views made later.
    setTimeout(() => signed.delete(a.mediaId), 10 * 60_000);
  }
  void urls.then(({ full, thumb }) => {
    box.append(
      a.type === "image" && thumb
        ? h("a", { href: full, target: "_blank" }, h("img", { src: thumb, alt: a.fileName, "data-testid": "image", width: String(Math.min(a.width, 320)) }))
        : h("a", { href: full, download: a.fileName }, `📎 ${a.fileName}`),
    );
  }).catch(() => box.append("(file unavailable)"));
  return box;
}

// ---- typing and reading

function renderTyping() {
  const el = $("[data-testid=typing]");
  if (!el) return;
  const now = Date.now();
  const who = [...(typing.get(ui.current)?.entries() ?? [])].filter(([, exp]) => exp > now).map(([u]) => nameOf(u));
  el.textContent = who.length ? `${who.join(", ")} ${who.length > 1 ? "are" : "is"} typing…` : "";
}
setInterval(renderTyping, 1000);
document.addEventListener("visibilitychange", () => {
  if (document.visibilityState === "visible" && ui.current) void markRead(ui.current).catch(() => {});
});

async function markRead(chatId: string) {
  const seqs = [...(messages.get(chatId)?.keys() ?? [])];
  const top = seqs.reduce((a, b) => (a > b ? a : b), 0n);
  const chat = chats.get(chatId);
  if (top === 0n || !chat) return;
  const res = await parley.messages.markRead({ chatId, upToSeq: top });
  chat.unreadCount = res.unreadCount;
  if (res.unreadCount === 0n) chat.unreadMentionCount = 0n;
  renderChats();
}

// ---- live events

async function listen() {
  live?.abort();
  const ctl = (live = new AbortController());
  let loaded = false;
  try {
    for await (const item of parley.subscribe({ signal: ctl.signal })) {
      try {
        if (item.kind === "resync" || (item.event.kind.case === "ready" && !loaded)) {
          // The stream is open: what changes from here arrives on it.
          // After a re-sync, events were missed: what pins events told
          // may be older than what the pages now read.
          if (item.kind === "resync") pinsTold.clear();
          loaded = true;
          await loadChats();
          if (ui.current) await openChat(ui.current);
          continue;
        }
        if (item.kind === "event") await onEvent(item.event);
      } catch (err) {
        // One event that could not be shown must not stop the others.
        console.warn("live event", err);
      }
    }
  } catch (err) {
    if (ctl.signal.aborted) return;
    if (ConnectError.from(err).code === Code.Unauthenticated) {
      // Nothing of this account stays for the next sign-in.
      reset();
      showAuth("Signed out.");
      return;
    }
    // The stream refused for good (a proxy that does not route it, say):
    // live updates stop, so say so, and try again in a while.
    console.warn("live updates stopped", err);
    setTimeout(() => {
      if (live === ctl) void listen();
    }, 30_000);
  }
}

async function onEvent(ev: Event) {
  switch (ev.kind.case) {
    case "messageCreated": {
      const m = ev.kind.value.message!;
      if (messages.get(m.chatId)?.has(m.seq)) break; // seen already
      const known = chats.has(m.chatId);
      if (!known) await loadChats(); // its unread count includes m
      const mine = m.senderId === me.id;
      if (!mine) {
        typing.get(m.chatId)?.delete(m.senderId);
        const chat = chats.get(m.chatId);
        const lastSeen = chat?.lastMessage?.seq ?? 0n;
        if (chat && known && m.chatId !== ui.current && m.seq > lastSeen) {
          chat.unreadCount++;
          if (m.mentionsAll || m.mentionedUserIds.includes(me.id)) chat.unreadMentionCount++;
        }
        void parley.messages.markDelivered({ chatId: m.chatId, upToSeq: m.seq }).catch(() => {});
      }
      addMessage(m);
      if (!mine && m.chatId === ui.current && document.visibilityState === "visible") await markRead(m.chatId);
      renderTyping();
      break;
    }
    case "messageEdited":
    case "messageDeleted": {
      const m = ev.kind.value.message!;
      addMessage(m);
      if (m.deleted && m.chatId === ui.current && pinned.list.some((p) => p.id === m.id)) await loadPinned(m.chatId);
      break;
    }
    case "reactionsChanged":
      onReactions(ev.kind.value);
      break;
    case "pinsChanged": {
      const p = ev.kind.value;
      // A pin and an unpin made at once may announce in either order:
      // the highest version wins, kept for messages not loaded yet too.
      if (p.version > (pinsTold.get(p.messageId)?.version ?? -1n)) {
        const pin = p.pinned ? create(PinSchema, { pinnedBy: p.actorId, pinnedAt: ev.time }) : undefined;
        pinsTold.set(p.messageId, { version: p.version, pin });
        const m = messages.get(p.chatId)?.get(p.seq);
        if (m) m.pin = pin;
      }
      if (p.chatId === ui.current) { renderMessages(); await loadPinned(p.chatId); }
      break;
    }
    case "messagesHidden":
      hide(ev.kind.value.chatId, ev.kind.value.seqs);
      break;
    case "chatSettingsChanged": {
      const { chatId, settings } = ev.kind.value;
      const chat = chats.get(chatId);
      const moved = !chat || !!chat.settings?.archived !== !!settings?.archived || ms(chat.settings?.pinnedAt) !== ms(settings?.pinnedAt);
      if (chat) chat.settings = settings;
      if (moved) await loadChats();
      else { renderChats(); if (chatId === ui.current) renderChat(); }
      break;
    }
    case "positionsChanged": {
      const p = ev.kind.value;
      // Positions only move forward; two marks' events may cross.
      const had = ticks.get(p.chatId);
      ticks.set(p.chatId, {
        delivered: had && had.delivered > p.chatDeliveredSeq ? had.delivered : p.chatDeliveredSeq,
        read: had && had.read > p.chatReadSeq ? had.read : p.chatReadSeq,
      });
      if (p.chatId === ui.current) renderMessages();
      break;
    }
    case "typing": {
      const t = ev.kind.value;
      let m = typing.get(t.chatId);
      if (!m) typing.set(t.chatId, (m = new Map()));
      // Relative to the event's own time, so that clocks apart do not matter.
      const exp = t.expiresAt && ev.time ? Date.now() + ms(t.expiresAt) - ms(ev.time) : 0;
      if (t.typing) m.set(t.userId, exp);
      else m.delete(t.userId);
      renderTyping();
      break;
    }
    case "presence": {
      presence.set(ev.kind.value.userId, ev.kind.value);
      renderChats();
      if (ui.current) renderChat();
      break;
    }
    case "memberRemoved": {
      const { chat, userIds } = ev.kind.value;
      if (chat && userIds.includes(me.id)) {
        chats.delete(chat.id);
        if (ui.current === chat.id) {
          ui.current = "";
          $("main")?.replaceChildren(h("p", { class: "empty" }, "You are no longer in this group."));
        }
      }
      await loadChats();
      break;
    }
    case "chatCreated":
    case "chatUpdated":
    case "membersAdded":
    case "roleChanged":
      await loadChats();
      break;
  }
}

Object.assign(hooks, { openChat, loadChats, renderChats, renderChat });

// ---- boot

(async () => {
  if (await parley.tokenStore.get()) {
    try {
      await start();
      return;
    } catch (err) {
      if (ConnectError.from(err).code === Code.Unauthenticated) await parley.tokenStore.set(undefined);
      showAuth(ConnectError.from(err).code === Code.Unauthenticated ? "" : errorText(err));
      return;
    }
  }
  showAuth();
})();
