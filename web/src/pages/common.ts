/**
 * What every page shares: the API's origin (this one), tokens (a guest token
 * fetched once and kept while valid), small DOM helpers that only ever set
 * text (never HTML), and the API's error codes in words.
 */
import { ApiError } from "../sdk/types.js";

/** `#id`, typed; throws when the page lacks it (a build mistake). */
export function byId<T extends HTMLElement = HTMLElement>(id: string): T {
  const el = document.getElementById(id);
  if (!el) throw new Error("missing #" + id);
  return el as T;
}

/** An element with text content (never parsed as HTML). */
export function element<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  text?: string,
  className?: string,
): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  if (text !== undefined) el.textContent = text;
  if (className) el.className = className;
  return el;
}

/** A link with a text label. */
export function link(href: string, text: string): HTMLAnchorElement {
  const a = element("a", text);
  a.href = href;
  return a;
}

/** Room and VOD ids as API.md allows them. */
export const ID_PATTERN = /^[A-Za-z0-9_-]{1,64}$/;

/** The id after `/rooms/` or `/vods/` in this page's path, if valid. */
export function idFromPath(prefix: string): string | null {
  const path = location.pathname;
  if (!path.startsWith(prefix)) return null;
  const id = decodeURIComponent(path.slice(prefix.length).replace(/\/+$/, ""));
  return ID_PATTERN.test(id) ? id : null;
}

/** The limits the server sends with the page (`data-*` of `<body>`). */
export function limits(): { maxChars: number; perSec: number; burst: number } {
  const d = document.body.dataset;
  return {
    maxChars: Number(d.maxChars) || 100,
    perSec: Number(d.perSec) || 5,
    burst: Number(d.burst) || 10,
  };
}

const TOKEN_KEY = "danmaku.token";

function tokenExpiry(token: string): number {
  try {
    const payload = JSON.parse(atob(token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/")));
    return typeof payload.exp === "number" ? payload.exp * 1000 : 0;
  } catch {
    return 0;
  }
}

/**
 * A token to send with: `?token=` in the page's URL, else the one kept from
 * before while valid for another minute, else a new guest token. `null` when
 * guests are off and none was given (the page then reads only).
 */
export async function getToken(): Promise<string | null> {
  const fromUrl = new URLSearchParams(location.search).get("token");
  if (fromUrl) return fromUrl;
  let kept: string | null = null;
  try {
    kept = localStorage.getItem(TOKEN_KEY);
  } catch {
    kept = null;
  }
  if (kept && tokenExpiry(kept) > Date.now() + 60_000) return kept;
  try {
    const response = await fetch("/v1/auth/guest", { method: "POST" });
    if (!response.ok) return null;
    const body = (await response.json()) as { token?: string };
    if (!body.token) return null;
    try {
      localStorage.setItem(TOKEN_KEY, body.token);
    } catch {
      // Private mode: the token lives as long as the page.
    }
    return body.token;
  } catch {
    return null;
  }
}

/** The API's error codes in words a viewer understands. */
export function errorInWords(error: unknown): string {
  if (!(error instanceof ApiError)) return "Something went wrong; the comment was not sent.";
  const lim = limits();
  switch (error.code) {
    case "text_empty":
      return "Write something first.";
    case "text_too_long":
      return `Too long: at most ${lim.maxChars} characters.`;
    case "invalid_text":
      return "The text holds characters that cannot be sent.";
    case "blocked_word":
      return "The text holds a word this site does not allow.";
    case "rate_limited":
      return `Sending too fast: wait ${error.retryAfterSecs ?? 1} s and try again.`;
    case "banned":
      return "You are banned from this room.";
    case "muted":
      return "This room is muted for now.";
    case "unauthorized":
      return "Your sign-in expired: reload the page.";
    case "forbidden":
      return "You may not do that here.";
    case "payload_too_large":
      return "That is too big to send.";
    case "idempotency_conflict":
      return "A different comment was already sent with this key; try again.";
    case "unavailable":
      return "The server is busy; nothing was sent. Try again shortly.";
    case "network":
    case "timeout":
      return "No connection to the server; the comment was not sent.";
    case "not_found":
      return "This room or recording does not exist.";
    default:
      return error.message || "The server refused the comment.";
  }
}

/** `m:ss` or `h:mm:ss`. */
export function clock(ms: number): string {
  const total = Math.max(0, Math.floor(ms / 1000));
  const h = Math.floor(total / 3600);
  const m = Math.floor((total % 3600) / 60);
  const s = total % 60;
  const mm = h ? String(m).padStart(2, "0") : String(m);
  return (h ? h + ":" : "") + mm + ":" + String(s).padStart(2, "0");
}

/** Visited rooms, most recent first (the home page lists them). */
export function rememberRoom(room: string): void {
  try {
    const list = JSON.parse(localStorage.getItem("danmaku.rooms") ?? "[]") as string[];
    const next = [room, ...list.filter((r) => r !== room && ID_PATTERN.test(r))].slice(0, 20);
    localStorage.setItem("danmaku.rooms", JSON.stringify(next));
  } catch {
    // Storage off: nothing to remember.
  }
}

/** The rooms {@link rememberRoom} kept. */
export function rememberedRooms(): string[] {
  try {
    const list = JSON.parse(localStorage.getItem("danmaku.rooms") ?? "[]");
    return Array.isArray(list) ? list.filter((r): r is string => typeof r === "string" && ID_PATTERN.test(r)) : [];
  } catch {
    return [];
  }
}

/** Wires a send form's limits (max length, a counter) and returns its parts. */
export function sendForm(): {
  form: HTMLFormElement;
  text: HTMLInputElement;
  mode: HTMLSelectElement;
  color: HTMLInputElement;
  button: HTMLButtonElement;
  status: HTMLElement;
} {
  const lim = limits();
  const form = byId<HTMLFormElement>("send");
  const text = byId<HTMLInputElement>("text");
  const counter = byId("counter");
  text.maxLength = lim.maxChars;
  byId("limits").textContent = `at most ${lim.maxChars} characters, ${lim.perSec} comments per second`;
  const update = () => {
    const n = [...text.value].length;
    counter.textContent = `${n}/${lim.maxChars}`;
    counter.classList.toggle("over", n > lim.maxChars);
  };
  text.addEventListener("input", update);
  update();
  return {
    form,
    text,
    mode: byId<HTMLSelectElement>("mode"),
    color: byId<HTMLInputElement>("color"),
    button: byId<HTMLButtonElement>("send-button"),
    status: byId("send-status"),
  };
}
