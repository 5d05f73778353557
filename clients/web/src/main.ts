// Parley web chat: a small single-page app on @parley/client alone.

import {
  ChatType,
  Code,
  ConnectError,
  LastMessageSchema,
  MessageStatus,
  create,
  createParleyClient,
  webStorageTokenStore,
  type Attachment,
  type Chat,
  type Event,
  type Message,
} from "@parley/client";

const parley = createParleyClient({
  baseUrl: window.location.origin,
  protocol: new URLSearchParams(location.search).get("protocol") === "grpc-web" ? "grpc-web" : "connect",
  tokenStore: webStorageTokenStore(sessionStorage),
});

// ---- state

let me = { id: 0, username: "" };
const chats = new Map<string, Chat>();
const messages = new Map<string, Map<bigint, Message>>();
const names = new Map<number, string>();
const typing = new Map<string, Map<number, number>>(); // chat → user → expiry (ms)
const ticks = new Map<string, { delivered: bigint; read: bigint }>(); // chat-wide positions
let current = "";
let live: AbortController | undefined;

function reset() {
  live?.abort();
  chats.clear();
  messages.clear();
  typing.clear();
  ticks.clear();
  signed.clear();
  current = "";
}

// ---- DOM helpers

const app = document.getElementById("app")!;

function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  props: Record<string, string | boolean | ((e: any) => void)> = {},
  ...children: (Node | string | undefined)[]
): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (typeof v === "function") el.addEventListener(k.replace(/^on/, ""), v);
    else if (k === "class") el.className = String(v);
    else if (typeof v === "boolean") (el as any)[k] = v;
    else el.setAttribute(k, v);
  }
  for (const c of children) if (c !== undefined) el.append(c);
  return el;
}

function errorText(err: unknown): string {
  const e = ConnectError.from(err);
  return e.rawMessage || e.message;
}

// ---- sign in

function showAuth(message = "") {
  live?.abort();
  app.replaceChildren(
    h(
      "form",
      { class: "auth", "data-testid": "auth", onsubmit: (e: SubmitEvent) => e.preventDefault() },
      h("h1", {}, "Parley"),
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
  const form = app.querySelector<HTMLFormElement>("form.auth")!;
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
  me = { id: res.me!.user!.id, username: res.me!.user!.username };
  names.set(me.id, me.username);
  app.replaceChildren(
    h("div", { class: "layout" },
      h("aside", {},
        h("header", {},
          h("strong", { "data-testid": "me" }, me.username),
          h("button", { class: "link", onclick: () => parley.logout().finally(() => { reset(); showAuth(); }) }, "Log out"),
        ),
        newChatForm(),
        h("ul", { class: "chats", "data-testid": "chat-list" }),
      ),
      h("main", { "data-testid": "chat-view" }, h("p", { class: "empty" }, "Pick a chat, or start one.")),
    ),
  );
  // Subscribe first and load the chats once the stream is ready, so that
  // no change falls between the two.
  void listen();
}

function newChatForm(): HTMLElement {
  const status = h("p", { class: "error" });
  const people = h("input", { placeholder: "usernames, comma-separated", "data-testid": "new-chat-users" });
  const name = h("input", { placeholder: "group name (for a group)", "data-testid": "new-chat-name" });
  const create = async () => {
    status.textContent = "";
    try {
      const ids: number[] = [];
      for (const u of people.value.split(",").map((s) => s.trim()).filter(Boolean)) {
        const found = await parley.users.searchUsers({ prefix: u, pageSize: 10 });
        const user = found.users.find((x) => x.username.toLowerCase() === u.toLowerCase());
        if (!user) throw new Error(`no user ${u}`);
        names.set(user.id, user.username);
        ids.push(user.id);
      }
      if (ids.length === 0) throw new Error("name at least one user");
      const chat = name.value.trim() || ids.length > 1
        ? (await parley.chats.createGroupChat({ name: name.value.trim() || "Group", memberIds: ids })).chat!
        : (await parley.chats.createPrivateChat({ peerId: ids[0] })).chat!;
      chats.set(chat.id, chat);
      people.value = name.value = "";
      renderChats();
      await openChat(chat.id);
    } catch (err) {
      status.textContent = err instanceof Error && !(err instanceof ConnectError) ? err.message : errorText(err);
    }
  };
  return h("form", { class: "new-chat", onsubmit: (e: SubmitEvent) => { e.preventDefault(); void create(); } },
    people, name, h("button", { "data-testid": "new-chat" }, "New chat"), status);
}

async function loadChats() {
  const res = await parley.chats.listChats({ pageSize: 200 });
  chats.clear();
  for (const c of res.chats) chats.set(c.id, c);
  await nameUsers(res.chats.flatMap((c) => c.participants.map((p) => p.userId)));
  renderChats();
}

async function nameUsers(ids: number[]) {
  for (const id of new Set(ids)) {
    if (names.has(id)) continue;
    try {
      names.set(id, (await parley.users.getUser({ userId: id })).user!.username);
    } catch {
      names.set(id, `user ${id}`);
    }
  }
}

function chatTitle(c: Chat): string {
  if (c.type === ChatType.GROUP) return c.name;
  const peer = c.participants.find((p) => p.userId !== me.id);
  return names.get(peer?.userId ?? me.id) ?? "…";
}

function renderChats() {
  const list = app.querySelector("ul.chats");
  if (!list) return;
  const sorted = [...chats.values()].sort((a, b) =>
    Number((b.lastMessage?.sentAt?.seconds ?? b.createdAt?.seconds ?? 0n) - (a.lastMessage?.sentAt?.seconds ?? a.createdAt?.seconds ?? 0n)));
  list.replaceChildren(
    ...sorted.map((c) =>
      h("li", { class: c.id === current ? "active" : "", "data-testid": "chat", "data-title": chatTitle(c), onclick: () => openChat(c.id) },
        h("div", { class: "title" }, chatTitle(c),
          c.unreadCount > 0n ? h("span", { class: "badge", "data-testid": "unread" }, String(c.unreadCount)) : undefined),
        h("div", { class: "preview", "data-testid": "preview" }, c.lastMessage?.preview ?? ""),
      ),
    ),
  );
}

// ---- one chat

async function openChat(id: string) {
  current = id;
  const chat = chats.get(id)!;
  const res = await parley.messages.listMessages({ chatId: id, limit: 100 });
  if (current !== id) return; // another chat was opened meanwhile
  // Merged with what arrived live while the page was loading.
  let byseq = messages.get(id);
  if (!byseq) messages.set(id, (byseq = new Map()));
  for (const m of res.messages) if (!byseq.has(m.seq)) byseq.set(m.seq, m);
  const main = app.querySelector("main")!;
  const progress = h("progress", { max: "100", value: "0", hidden: true, "data-testid": "upload-progress" });
  const text = h("input", { placeholder: "Message", "data-testid": "composer", autocomplete: "off" });
  const file = h("input", { type: "file", accept: "image/*", "data-testid": "file" });
  const status = h("span", { class: "error", "data-testid": "send-error" });
  let lastTyping = 0;
  text.addEventListener("input", () => {
    if (Date.now() - lastTyping > 3000 && text.value) {
      lastTyping = Date.now();
      parley.messages.sendTyping({ chatId: id, typing: true }).catch(() => {});
    }
  });
  const send = async () => {
    status.textContent = "";
    const body = text.value.trim();
    const f = file.files?.[0];
    if (!body && !f) return;
    try {
      const mediaIds: string[] = [];
      if (f) {
        progress.hidden = false;
        const media = await parley.upload(f, {
          chatId: id,
          onProgress: (sent, total) => { progress.value = Math.round((100 * sent) / total); },
        });
        mediaIds.push(media.id);
      }
      const res = await parley.messages.sendMessage({ chatId: id, clientMessageId: crypto.randomUUID(), text: body, mediaIds });
      text.value = "";
      file.value = "";
      lastTyping = 0;
      addMessage(res.message!);
    } catch (err) {
      status.textContent = errorText(err);
    } finally {
      progress.hidden = true;
    }
  };
  // A request made to me: its starter sees no ticks or presence of mine
  // until I accept it (or reply).
  const request = chat.request && chat.request.starterId !== me.id
    ? h("span", { class: "request", "data-testid": "request" },
      h("button", {
        "data-testid": "accept-request",
        onclick: async () => {
          await parley.chats.acceptChatRequest({ chatId: id }).catch((err) => { status.textContent = errorText(err); });
          request?.remove();
        },
      }, "Accept"),
      h("button", {
        "data-testid": "decline-request",
        onclick: async () => {
          await parley.chats.declineChatRequest({ chatId: id }).catch((err) => { status.textContent = errorText(err); });
          current = "";
          main.replaceChildren();
          await loadChats();
        },
      }, "Decline"))
    : undefined;
  main.replaceChildren(
    h("header", {}, h("strong", { "data-testid": "chat-title" }, chatTitle(chat)),
      h("span", { class: "typing", "data-testid": "typing" }), request),
    h("ol", { class: "messages", "data-testid": "messages" }),
    h("form", { class: "composer", onsubmit: (e: SubmitEvent) => { e.preventDefault(); void send(); } },
      text, file, h("button", { "data-testid": "send" }, "Send"), progress, status),
  );
  renderMessages();
  renderTyping();
  renderChats();
  await markRead(id);
}

function addMessage(m: Message) {
  const chat = chats.get(m.chatId);
  let byseq = messages.get(m.chatId);
  if (!byseq) messages.set(m.chatId, (byseq = new Map()));
  byseq.set(m.seq, m);
  if (chat && (!chat.lastMessage || chat.lastMessage.seq <= m.seq)) {
    chat.lastMessage = create(LastMessageSchema, {
      messageId: m.id, senderId: m.senderId, seq: m.seq, sentAt: m.sentAt,
      preview: m.text || (m.attachments.length ? `[${m.attachments[0].type}]` : ""),
    });
  }
  if (m.chatId === current) renderMessages();
  renderChats();
}

function statusOf(m: Message): "sent" | "delivered" | "read" {
  const t = ticks.get(m.chatId);
  if ((t && m.seq <= t.read) || m.status === MessageStatus.READ) return "read";
  if ((t && m.seq <= t.delivered) || m.status === MessageStatus.DELIVERED) return "delivered";
  return "sent";
}

function renderMessages() {
  const list = app.querySelector("ol.messages");
  if (!list) return;
  const ms = [...(messages.get(current)?.values() ?? [])].sort((a, b) => (a.seq < b.seq ? -1 : 1));
  list.replaceChildren(
    ...ms.map((m) => {
      const mine = m.senderId === me.id;
      const st = statusOf(m);
      return h("li", { class: mine ? "mine" : "theirs", "data-testid": "message", "data-seq": String(m.seq) },
        mine ? undefined : h("div", { class: "sender" }, names.get(m.senderId) ?? ""),
        ...m.attachments.map(attachmentView),
        m.deleted ? h("em", {}, "deleted") : h("span", { class: "text", "data-testid": "text" }, m.text),
        mine ? h("span", { class: `ticks ${st}`, "data-testid": "ticks", "data-status": st, title: st }, st === "sent" ? "✓" : "✓✓") : undefined,
      );
    }),
  );
  list.scrollTop = list.scrollHeight;
}

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

function renderTyping() {
  const el = app.querySelector("[data-testid=typing]");
  if (!el) return;
  const now = Date.now();
  const who = [...(typing.get(current)?.entries() ?? [])].filter(([, exp]) => exp > now).map(([u]) => names.get(u) ?? "someone");
  el.textContent = who.length ? `${who.join(", ")} ${who.length > 1 ? "are" : "is"} typing…` : "";
}
setInterval(renderTyping, 1000);
document.addEventListener("visibilitychange", () => {
  if (document.visibilityState === "visible" && current) void markRead(current).catch(() => {});
});

async function markRead(chatId: string) {
  const seqs = [...(messages.get(chatId)?.keys() ?? [])];
  const top = seqs.reduce((a, b) => (a > b ? a : b), 0n);
  const chat = chats.get(chatId);
  if (top === 0n || !chat) return;
  const res = await parley.messages.markRead({ chatId, upToSeq: top });
  chat.unreadCount = res.unreadCount;
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
          loaded = true;
          await loadChats();
          if (current) await openChat(current);
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
    if (ConnectError.from(err).code === Code.Unauthenticated) showAuth("Signed out.");
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
        if (chat && known && m.chatId !== current && m.seq > lastSeen) chat.unreadCount++;
        void parley.messages.markDelivered({ chatId: m.chatId, upToSeq: m.seq }).catch(() => {});
      }
      addMessage(m);
      if (!mine && m.chatId === current && document.visibilityState === "visible") await markRead(m.chatId);
      renderTyping();
      break;
    }
    case "messageEdited":
    case "messageDeleted":
      addMessage(ev.kind.value.message!);
      break;
    case "positionsChanged": {
      const p = ev.kind.value;
      ticks.set(p.chatId, { delivered: p.chatDeliveredSeq, read: p.chatReadSeq });
      if (p.chatId === current) renderMessages();
      break;
    }
    case "typing": {
      const t = ev.kind.value;
      let m = typing.get(t.chatId);
      if (!m) typing.set(t.chatId, (m = new Map()));
      // Relative to the event's own time, so that clocks apart do not matter.
      const ms = (ts?: { seconds: bigint; nanos: number }) => (ts ? Number(ts.seconds) * 1000 + ts.nanos / 1e6 : 0);
      const exp = t.expiresAt && ev.time ? Date.now() + ms(t.expiresAt) - ms(ev.time) : 0;
      if (t.typing) m.set(t.userId, exp);
      else m.delete(t.userId);
      renderTyping();
      break;
    }
    case "chatCreated":
    case "chatUpdated":
    case "membersAdded":
    case "memberRemoved":
    case "roleChanged":
      await loadChats();
      break;
  }
}

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
