// The app's shared state: the client, what it knows of chats, messages and
// users, and the few functions every view uses.

import {
  ChatType,
  createParleyClient,
  webStorageTokenStore,
  type Chat,
  type Message,
  type Presence,
} from "@parley/client";
import { h, when } from "./dom.js";

export const parley = createParleyClient({
  baseUrl: window.location.origin,
  protocol: new URLSearchParams(location.search).get("protocol") === "grpc-web" ? "grpc-web" : "connect",
  tokenStore: webStorageTokenStore(sessionStorage),
});

export const me = { id: 0, username: "" };
/** Every chat the app knows, listed or not (archived ones, say). */
export const chats = new Map<string, Chat>();
/** The messages of each chat, by seq. */
export const messages = new Map<string, Map<bigint, Message>>();
export const users = new Map<number, { username: string; avatarUrl: string }>();
export const presence = new Map<number, Presence>();
export const ui = { current: "", view: "chats" as "chats" | "archived", infoOpen: false };

/** Views main.ts provides, for the modules that need to refresh them. */
export const hooks = {
  openChat: async (_id: string, _focus?: Message) => {},
  loadChats: async () => {},
  renderChats: () => {},
  renderChat: () => {},
};

export function nameOf(id: number): string {
  return users.get(id)?.username ?? `user ${id}`;
}

export async function nameUsers(ids: number[]) {
  await Promise.all([...new Set(ids)].filter((id) => id > 0 && !users.has(id)).map(async (id) => {
    try {
      const u = (await parley.users.getUser({ userId: id })).user!;
      users.set(id, { username: u.username, avatarUrl: u.avatarUrl });
    } catch {
      users.set(id, { username: `user ${id}`, avatarUrl: "" });
    }
  }));
}

export function chatTitle(c: Chat): string {
  if (c.type === ChatType.GROUP) return c.name;
  return nameOf(peerOf(c) ?? me.id);
}

export function peerOf(c: Chat): number | undefined {
  if (c.type !== ChatType.PRIVATE) return undefined;
  return c.participants.find((p) => p.userId !== me.id)?.userId;
}

// ---- avatars: identicons are public; uploaded images are fetched with the token

const avatarSrc = new Map<string, Promise<string>>();

export function avatar(userId: number, size = 24): HTMLElement {
  return avatarImg(users.get(userId)?.avatarUrl ?? "", size);
}

/** A group's avatar, or a # when it has none. */
export function chatAvatar(c: Chat, size = 20): HTMLElement {
  if (c.type === ChatType.GROUP && !c.avatarUrl) {
    return h("span", { class: "group-icon", style: `width:${size}px;height:${size}px` }, "#");
  }
  return c.type === ChatType.GROUP ? avatarImg(c.avatarUrl, size) : avatar(peerOf(c) ?? me.id, size);
}

function avatarImg(url: string, size: number): HTMLElement {
  const img = h("img", { class: "avatar", width: String(size), height: String(size), alt: "", "data-testid": "avatar" });
  if (!url) return img;
  let src = avatarSrc.get(url);
  if (!src) {
    src = url.startsWith("/avatars/") || /^https?:/.test(url)
      ? Promise.resolve(parley.url(url))
      : parley.download(url).then((b) => URL.createObjectURL(b));
    avatarSrc.set(url, src);
    src.catch(() => avatarSrc.delete(url));
  }
  void src.then((s) => { img.src = s; }).catch(() => {});
  return img;
}

// ---- presence

export async function loadPresence(ids: number[]) {
  const want = [...new Set(ids)].filter((id) => id > 0);
  for (let i = 0; i < want.length; i += 500) {
    const res = await parley.live.getPresence({ userIds: want.slice(i, i + 500) }).catch(() => undefined);
    for (const p of res?.presences ?? []) presence.set(p.userId, p);
  }
}

export function presenceDot(userId: number): HTMLElement {
  const p = presence.get(userId);
  return h("span", { class: `dot ${p?.online ? "online" : ""}`, "data-testid": "presence-dot", "data-online": String(!!p?.online), title: presenceText(userId) });
}

export function presenceText(userId: number): string {
  const p = presence.get(userId);
  if (!p) return "";
  if (p.online) return "online";
  return p.lastSeen ? `last seen ${when(p.lastSeen)}` : "offline";
}
