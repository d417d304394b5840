/**
 * `/`: live rooms and recent recordings. The list comes from `GET /v1/vods`
 * (the sessions not ended, and the recent ended ones, of every room). Rooms
 * named in the address (`?rooms=a,b`), the demo room and the rooms this
 * browser visited are looked up too (`GET /v1/rooms/{room}/vods`): they still
 * show when the listing is unavailable (an older server, a store that does not
 * answer), and a room's sessions older than the listing looks back.
 */
import type { Session } from "../sdk/types.js";
import { byId, clock, element, ID_PATTERN, link, rememberedRooms } from "./common.js";

/** Sessions per list asked of `GET /v1/vods` (and shown). */
const LIMIT = 30;

async function getJson<T>(path: string): Promise<T | null> {
  try {
    const response = await fetch(path);
    if (!response.ok) return null;
    return (await response.json()) as T;
  } catch {
    return null;
  }
}

async function main(): Promise<void> {
  const extra = (new URLSearchParams(location.search).get("rooms") ?? "").split(",");
  const rooms = [...new Set(["demo", ...extra, ...rememberedRooms()])].filter((r) => ID_PATTERN.test(r));
  const liveList = byId("live-rooms");
  const vodList = byId("recent-vods");
  // Newest session per live room; ended sessions by vod (no duplicates).
  const live = new Map<string, Session>();
  const recent = new Map<string, Session>();
  const add = (s: Session): void => {
    if (s.ended_at === null) {
      const known = live.get(s.room);
      if (!known || known.started_at < s.started_at) live.set(s.room, s);
    } else {
      recent.set(s.vod, s);
    }
  };
  const listing = getJson<{ live: Session[]; recent: Session[] }>(`/v1/vods?limit=${LIMIT}`).then((list) => {
    if (!list) return;
    for (const s of [...(list.live ?? []), ...(list.recent ?? [])]) add(s);
  });
  const known = rooms.map(async (room) => {
    const list = await getJson<{ vods: Session[] }>(`/v1/rooms/${encodeURIComponent(room)}/vods`);
    // One room failing does not hide the others.
    for (const s of (list?.vods ?? []).slice(0, 10)) add(s);
  });
  await Promise.all([listing, ...known]);

  const liveSorted = [...live.values()].sort((a, b) => b.started_at - a.started_at);
  for (const s of liveSorted.slice(0, LIMIT)) {
    const li = element("li");
    li.append(
      link(`/rooms/${encodeURIComponent(s.room)}`, s.room),
      element("span", " live since " + new Date(s.started_at).toLocaleTimeString() + (s.video_url ? ", with video" : ""), "meta"),
    );
    liveList.append(li);
  }
  if (!liveList.childElementCount) liveList.append(element("li", "No room is live right now.", "meta"));
  const recentSorted = [...recent.values()].sort((a, b) => (b.ended_at ?? 0) - (a.ended_at ?? 0));
  for (const v of recentSorted.slice(0, LIMIT)) {
    const li = element("li");
    li.append(
      link(`/vods/${encodeURIComponent(v.vod)}`, v.vod),
      element(
        "span",
        ` room ${v.room}, ${clock((v.ended_at ?? v.started_at) - v.started_at)}` + (v.video_url ? ", with video" : ""),
        "meta",
      ),
    );
    vodList.append(li);
  }
  if (!vodList.childElementCount) vodList.append(element("li", "No recordings yet.", "meta"));

  byId<HTMLFormElement>("go").addEventListener("submit", (event) => {
    event.preventDefault();
    const room = byId<HTMLInputElement>("room").value.trim();
    if (!ID_PATTERN.test(room)) {
      byId("go-error").textContent = "Room ids are letters, digits, - and _ (at most 64).";
      return;
    }
    location.href = "/rooms/" + encodeURIComponent(room);
  });
}

void main();
