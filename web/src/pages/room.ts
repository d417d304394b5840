/**
 * `/rooms/{room}`: the live room page. The stream (the open session's
 * `video_url`) or a dark stage, comments in lanes over it, a send box, the
 * online count and the connection state; the SDK's LiveClient does the
 * reconnecting (by cursor, with backoff, polling when WebSockets fail).
 */
import { LiveClient } from "../sdk/live.js";
import { cssToColor } from "../sdk/color.js";
import type { Item, Mode, Session } from "../sdk/types.js";
import { Stage } from "./stage.js";
import { byId, element, errorInWords, getToken, idFromPath, rememberRoom, sendForm } from "./common.js";

const LOG_LINES = 100;
/** The log is rewritten at most this often, ms: nobody reads 500 lines a second, and each write costs a layout. */
const LOG_EVERY_MS = 250;
/** Items waiting for the next frame at most (a hidden tab gets no frames). */
const MAX_QUEUED = 2000;

const STATE_WORDS: Record<string, string> = {
  idle: "not connected",
  connecting: "connecting…",
  open: "live",
  polling: "live (polling)",
  reconnecting: "reconnecting…",
  closed: "closed",
};

async function main(): Promise<void> {
  const room = idFromPath("/rooms/");
  const title = byId("title");
  if (!room) {
    title.textContent = "No such room";
    byId("state").textContent = "room ids are letters, digits, - and _ (at most 64)";
    return;
  }
  title.textContent = room;
  document.title = room + " · danmaku";
  rememberRoom(room);

  const stageEl = byId("stage");
  const stage = new Stage(byId("comments"));
  showStream(room, stageEl);

  const log = byId("log");
  const stateEl = byId("state");
  const onlineEl = byId("online");
  const reconnect = byId<HTMLButtonElement>("reconnect");
  const token = await getToken();
  const live = new LiveClient({ room, token: token ?? undefined });
  const mine = new Set<string>();

  live.on("state", ({ state, transport, delayMs }) => {
    let words = STATE_WORDS[state] ?? state;
    if (state === "reconnecting" && delayMs !== undefined) words += ` in ${Math.ceil(delayMs / 1000)} s`;
    stateEl.textContent = words;
    stateEl.dataset.state = state;
    stateEl.dataset.transport = transport ?? "";
    reconnect.hidden = state === "open" || state === "polling";
  });
  // Items are drawn once per frame: a busy room's many batches cost one
  // layout. The log gets its lines a few times a second and keeps only its
  // last ones.
  let queue: Item[] = [];
  let scheduled = false;
  let logQueue: Item[] = [];
  let logTimer: ReturnType<typeof setTimeout> | undefined;
  let loggedAt = 0;
  const writeLog = () => {
    logTimer = undefined;
    loggedAt = performance.now();
    const items = logQueue;
    logQueue = [];
    const lines = document.createDocumentFragment();
    for (let i = items.length - 1; i >= 0; i--) lines.append(logLine(items[i]));
    log.prepend(lines);
    while (log.childElementCount > LOG_LINES) log.lastElementChild?.remove();
  };
  const flush = () => {
    scheduled = false;
    const items = queue;
    queue = [];
    for (const item of items) {
      stage.add({ id: item.id, text: item.text, mode: item.mode, color: item.color, mine: mine.has(item.id) });
    }
    logQueue.push(...items);
    if (logQueue.length > LOG_LINES) logQueue = logQueue.slice(-LOG_LINES);
    if (logTimer === undefined && logQueue.length) {
      logTimer = setTimeout(writeLog, Math.max(0, loggedAt + LOG_EVERY_MS - performance.now()));
    }
  };
  live.on("batch", ({ items }) => {
    queue.push(...items);
    if (queue.length > MAX_QUEUED) queue = queue.slice(-MAX_QUEUED);
    if (!scheduled) {
      scheduled = true;
      requestAnimationFrame(flush);
    }
  });
  live.on("delete", ({ ids }) => {
    stage.remove(ids);
    const gone = new Set(ids);
    logQueue = logQueue.filter((item) => !gone.has(item.id));
    for (const id of ids) log.querySelector(`[data-id="${CSS.escape(id)}"]`)?.remove();
  });
  live.on("online", ({ count }) => {
    onlineEl.textContent = `${count} watching`;
    onlineEl.dataset.count = String(count);
  });
  reconnect.addEventListener("click", () => live.reconnectNow());
  live.connect();

  const form = sendForm();
  if (!token) {
    form.status.textContent = "Sending needs a token: this server does not hand out guest tokens.";
    form.button.disabled = true;
  }
  form.form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const text = form.text.value;
    if (!text.trim()) {
      form.status.textContent = "Write something first.";
      return;
    }
    form.button.disabled = true;
    form.status.textContent = "sending…";
    try {
      const { id } = await live.send(text, {
        mode: form.mode.value as Mode,
        color: cssToColor(form.color.value),
      });
      mine.add(id);
      form.text.value = "";
      form.text.dispatchEvent(new Event("input"));
      form.status.textContent = "";
    } catch (error) {
      form.status.textContent = errorInWords(error);
    } finally {
      form.button.disabled = false;
      form.text.focus();
    }
  });
}

function logLine(item: Item): HTMLLIElement {
  const line = element("li");
  line.dataset.id = item.id;
  line.append(element("span", item.name || item.user, "who"), element("span", item.text, "what"));
  return line;
}

/** The open session's video, when it has one; the dark stage otherwise. */
async function showStream(room: string, stageEl: HTMLElement): Promise<void> {
  try {
    const response = await fetch(`/v1/rooms/${encodeURIComponent(room)}/vods`);
    if (!response.ok) return;
    const { vods } = (await response.json()) as { vods: Session[] };
    const open = vods.find((v) => v.ended_at === null);
    if (!open) return;
    byId("session").textContent = "session " + open.vod;
    if (open.video_url && /^https?:\/\//.test(open.video_url)) {
      const video = element("video");
      video.src = open.video_url;
      video.autoplay = true;
      video.muted = true;
      video.controls = true;
      stageEl.prepend(video);
    }
  } catch {
    // No session information: the dark stage stays.
  }
}

void main();
