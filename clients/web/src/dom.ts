// DOM and formatting helpers.

import { ConnectError } from "@parley/client";

type Child = Node | string | undefined | false;

/** h makes an element: props are attributes, on* listeners, booleans properties. */
export function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  props: Record<string, string | boolean | undefined | ((e: any) => void)> = {},
  ...children: Child[]
): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (v === undefined) continue;
    if (typeof v === "function") el.addEventListener(k.replace(/^on/, ""), v);
    else if (k === "class") el.className = String(v);
    else if (typeof v === "boolean") (el as any)[k] = v;
    else el.setAttribute(k, v);
  }
  for (const c of children) if (c !== undefined && c !== false) el.append(c);
  return el;
}

export function errorText(err: unknown): string {
  if (err instanceof Error && !(err instanceof ConnectError)) return err.message;
  const e = ConnectError.from(err);
  return e.rawMessage || e.message;
}

export function ms(ts?: { seconds: bigint; nanos: number }): number {
  return ts ? Number(ts.seconds) * 1000 + ts.nanos / 1e6 : 0;
}

export function when(ts?: { seconds: bigint; nanos: number }): string {
  if (!ts) return "";
  const d = new Date(ms(ts));
  return d.toDateString() === new Date().toDateString()
    ? d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })
    : d.toLocaleString([], { dateStyle: "short", timeStyle: "short" });
}

/** replaceChildren that skips absent children. */
export function fill(el: Element, ...children: Child[]) {
  el.replaceChildren(...children.filter((c): c is Node | string => c !== undefined && c !== false));
}
