/**
 * `/`: live rooms and recent recordings. The API has no list of every room,
 * so the page lists the rooms it knows: the demo room, `?rooms=a,b` and the
 * rooms this browser visited, each with its sessions (`GET
 * /v1/rooms/{room}/vods`): an open one makes the room live.
 */
import type { Session } from "../sdk/types.js";
import { byId, clock, element, ID_PATTERN, link, rememberedRooms } from "./common.js";

async function main(): Promise<void> {
  const extra = (new URLSearchParams(location.search).get("rooms") ?? "").split(",");
  const rooms = [...new Set(["demo", ...extra, ...rememberedRooms()])].filter((r) => ID_PATTERN.test(r));
  const liveList = byId("live-rooms");
  const vodList = byId("recent-vods");
  const recent: Session[] = [];
  await Promise.all(
    rooms.map(async (room) => {
      try {
        const response = await fetch(`/v1/rooms/${encodeURIComponent(room)}/vods`);
        if (!response.ok) return;
        const { vods } = (await response.json()) as { vods: Session[] };
        const open = vods.find((v) => v.ended_at === null);
        if (open) {
          const li = element("li");
          li.append(link(`/rooms/${encodeURIComponent(room)}`, room), element("span", " live since " + new Date(open.started_at).toLocaleTimeString(), "meta"));
          liveList.append(li);
        }
        recent.push(...vods.filter((v) => v.ended_at !== null).slice(0, 10));
      } catch {
        // One room failing does not hide the others.
      }
    }),
  );
  if (!liveList.childElementCount) liveList.append(element("li", "No room is live right now.", "meta"));
  recent.sort((a, b) => (b.ended_at ?? 0) - (a.ended_at ?? 0));
  for (const v of recent.slice(0, 30)) {
    const li = element("li");
    li.append(
      link(`/vods/${encodeURIComponent(v.vod)}`, v.vod),
      element("span", ` room ${v.room}, ${clock((v.ended_at ?? v.started_at) - v.started_at)}`, "meta"),
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
