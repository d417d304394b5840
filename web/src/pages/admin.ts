/**
 * `/admin`: moderation with an admin token (kept for this tab only): a room's
 * recent comments with delete and ban, its bans, its settings, the word list
 * and the big keys (API.md "Moderation"). Everything is set as text.
 */
import { LiveClient } from "../sdk/live.js";
import { readAnswer, request } from "../sdk/http.js";
import type { Item } from "../sdk/types.js";
import { byId, element, errorInWords, ID_PATTERN } from "./common.js";

const TOKEN_KEY = "danmaku.admin-token";
const MAX_ROWS = 200;

let token = sessionStorage.getItem(TOKEN_KEY) ?? "";
let room = "";
let live: LiveClient | null = null;
const status = byId("admin-status");

async function api<T>(method: string, path: string, body?: unknown): Promise<T> {
  const headers: Record<string, string> = {};
  if (token) headers.Authorization = "Bearer " + token;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await request(fetch, path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  return readAnswer<T>(response);
}

/** Runs an action, showing its failure in words. */
async function act(what: string, action: () => Promise<unknown>): Promise<void> {
  try {
    await action();
    status.textContent = "";
  } catch (error) {
    status.textContent = `${what}: ${errorInWords(error)}`;
  }
}

function roomPath(suffix = ""): string {
  return `/v1/admin/rooms/${encodeURIComponent(room)}${suffix}`;
}

function commentRow(item: Item): HTMLLIElement {
  const li = element("li");
  li.dataset.id = item.id;
  const del = element("button", "delete");
  del.type = "button";
  del.addEventListener("click", () =>
    act("delete", async () => {
      await api("DELETE", `/v1/rooms/${encodeURIComponent(room)}/danmaku/${encodeURIComponent(item.id)}`);
      li.remove();
    }),
  );
  const ban = element("button", "ban 10 min");
  ban.type = "button";
  ban.addEventListener("click", () =>
    act("ban", async () => {
      await api("POST", roomPath("/bans"), { user: item.user, seconds: 600 });
      await loadBans();
    }),
  );
  li.append(element("span", item.user, "who"), element("span", item.text, "what"), del, ban);
  return li;
}

async function loadBans(): Promise<void> {
  const list = byId("bans-list");
  const [inRoom, everywhere] = await Promise.all([
    api<{ bans: { user: string; until: number; shadow: boolean }[] }>("GET", roomPath("/bans")),
    api<{ bans: { user: string; until: number; shadow: boolean }[] }>("GET", "/v1/admin/bans"),
  ]);
  list.replaceChildren();
  for (const [scope, bans] of [["room", inRoom.bans], ["every room", everywhere.bans]] as const) {
    for (const ban of bans) {
      const li = element("li");
      const lift = element("button", "lift");
      lift.type = "button";
      lift.addEventListener("click", () =>
        act("lift", async () => {
          await api("POST", scope === "room" ? roomPath("/bans") : "/v1/admin/bans", { user: ban.user, seconds: 0 });
          await loadBans();
        }),
      );
      const until = new Date(ban.until).toLocaleString();
      li.append(element("span", ban.user, "who"), element("span", ` ${scope}${ban.shadow ? ", shadow" : ""}, until ${until} `, "meta"), lift);
      list.append(li);
    }
  }
}

async function loadSettings(): Promise<void> {
  const info = await api<{ online?: number; settings?: { slow_mode_secs?: number; muted?: boolean; display_budget_per_sec?: number } }>(
    "GET",
    `/v1/rooms/${encodeURIComponent(room)}`,
  );
  const s = info.settings ?? {};
  byId<HTMLInputElement>("slow-mode").value = String(s.slow_mode_secs ?? 0);
  byId<HTMLInputElement>("muted").checked = Boolean(s.muted);
  byId<HTMLInputElement>("budget").value = String(s.display_budget_per_sec ?? 500);
  byId("room-state").textContent = `${info.online ?? 0} watching`;
}

async function loadFilter(): Promise<void> {
  const filter = await api<{ words: string[]; policy: string }>("GET", "/v1/admin/filter");
  byId<HTMLTextAreaElement>("words").value = filter.words.join("\n");
  byId<HTMLSelectElement>("policy").value = filter.policy;
}

async function loadBigKeys(): Promise<void> {
  const body = await api<{ keys: { key: string; room?: string; members: number; bytes: number }[] }>("GET", "/v1/admin/bigkeys");
  const rows = body.keys.slice(0, 50).map((k) => {
    const tr = element("tr");
    tr.append(element("td", k.key), element("td", k.room ?? ""), element("td", String(k.members)), element("td", String(k.bytes)));
    return tr;
  });
  byId("bigkeys").querySelector("tbody")!.replaceChildren(...rows);
}

function openRoom(next: string): void {
  room = next;
  live?.close();
  const list = byId("comments-list");
  list.replaceChildren();
  live = new LiveClient({ room, token: token || undefined });
  live.on("batch", ({ items }) => {
    for (const item of items) list.prepend(commentRow(item));
    while (list.childElementCount > MAX_ROWS) list.lastElementChild?.remove();
  });
  live.on("delete", ({ ids }) => {
    for (const id of ids) list.querySelector(`[data-id="${CSS.escape(id)}"]`)?.remove();
  });
  live.on("state", ({ state }) => (byId("room-state").dataset.state = state));
  live.connect();
  void act("bans", loadBans);
  void act("settings", loadSettings);
}

byId<HTMLInputElement>("admin-token").value = token;
byId<HTMLFormElement>("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  token = byId<HTMLInputElement>("admin-token").value.trim();
  sessionStorage.setItem(TOKEN_KEY, token);
  void act("word list", loadFilter);
  void act("big keys", loadBigKeys);
  if (room) openRoom(room);
});
byId<HTMLFormElement>("room-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const next = byId<HTMLInputElement>("admin-room").value.trim();
  if (!ID_PATTERN.test(next)) {
    status.textContent = "Room ids are letters, digits, - and _ (at most 64).";
    return;
  }
  openRoom(next);
});
byId<HTMLFormElement>("ban-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const user = byId<HTMLInputElement>("ban-user").value.trim();
  const seconds = Number(byId<HTMLInputElement>("ban-seconds").value) || 0;
  const shadow = byId<HTMLInputElement>("ban-shadow").checked;
  const global = byId<HTMLInputElement>("ban-global").checked;
  if (!user) return;
  if (!global && !room) {
    status.textContent = "Open a room first (or ban in every room).";
    return;
  }
  void act("ban", async () => {
    await api("POST", global ? "/v1/admin/bans" : roomPath("/bans"), { user, seconds, shadow });
    if (room) await loadBans();
  });
});
byId<HTMLFormElement>("settings-form").addEventListener("submit", (event) => {
  event.preventDefault();
  if (!room) return;
  void act("settings", async () => {
    await api("PUT", roomPath("/settings"), {
      slow_mode_secs: Number(byId<HTMLInputElement>("slow-mode").value) || 0,
      muted: byId<HTMLInputElement>("muted").checked,
      display_budget_per_sec: Number(byId<HTMLInputElement>("budget").value) || 500,
    });
    await loadSettings();
  });
});
byId<HTMLFormElement>("filter-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const words = byId<HTMLTextAreaElement>("words")
    .value.split("\n")
    .map((w) => w.trim())
    .filter(Boolean);
  const policy = byId<HTMLSelectElement>("policy").value;
  void act("word list", async () => {
    await api("PUT", "/v1/admin/filter", { words, policy });
    await loadFilter();
  });
});
byId("bigkeys-refresh").addEventListener("click", () => void act("big keys", loadBigKeys));
if (token) {
  void act("word list", loadFilter);
  void act("big keys", loadBigKeys);
}
