/**
 * `/vods/{vod}`: the replay page. The recording (`video_url`) or a clock
 * timeline, the VOD's comments at their offsets as it plays (the SDK's
 * ReplayClient loads segments around the playhead and releases those
 * behind), seek, a density heatmap, and a send box that posts at the playhead.
 */
import { ReplayClient } from "../sdk/replay.js";
import { cssToColor } from "../sdk/color.js";
import { ApiError, type Mode } from "../sdk/types.js";
import { Stage } from "./stage.js";
import { byId, clock, errorInWords, getToken, idFromPath, link, sendForm } from "./common.js";

/**
 * Most playback time whose comments one frame adds: after a stall (a busy
 * machine, a background tab) at 16x the playhead may have moved far; the
 * comments of its last SHOW_MS are shown, not all of them at once. A seek
 * (the slider, the video's own controls, or moving backwards) clears the stage.
 */
const SHOW_MS = 1500;
const HEAT_BUCKETS = 200;
/** How often a recording still live rereads the playhead's segment, ms. */
const LIVE_REVALIDATE_MS = 5000;

/** The playhead: a video's, or a clock's when there is no video. */
interface Player {
  time(): number;
  playing(): boolean;
  play(): void;
  pause(): void;
  seek(ms: number): void;
  setRate(rate: number): void;
  /** Whether the playhead was moved other than by playing since the last call. */
  seeked(): boolean;
}

class ClockPlayer implements Player {
  private base = 0;
  private since = 0;
  private running = false;
  private rate = 1;
  constructor(private readonly duration: () => number) {}
  time(): number {
    const t = this.running ? this.base + (performance.now() - this.since) * this.rate : this.base;
    const end = this.duration();
    if (t >= end && this.running) {
      this.base = end;
      this.running = false;
    }
    return Math.min(t, end);
  }
  playing(): boolean {
    return this.running;
  }
  play(): void {
    if (this.running) return;
    if (this.base >= this.duration()) this.base = 0;
    this.since = performance.now();
    this.running = true;
  }
  pause(): void {
    this.base = this.time();
    this.running = false;
  }
  seek(ms: number): void {
    this.base = Math.max(0, Math.min(ms, this.duration()));
    this.since = performance.now();
  }
  setRate(rate: number): void {
    this.base = this.time();
    this.since = performance.now();
    this.rate = rate;
  }
  seeked(): boolean {
    return false;
  }
}

class VideoPlayer implements Player {
  private moved = false;
  constructor(private readonly video: HTMLVideoElement) {
    // The video's own controls seek too.
    video.addEventListener("seeking", () => (this.moved = true));
  }
  seeked(): boolean {
    const moved = this.moved;
    this.moved = false;
    return moved;
  }
  time(): number {
    return this.video.currentTime * 1000;
  }
  playing(): boolean {
    return !this.video.paused && !this.video.ended;
  }
  play(): void {
    void this.video.play().catch(() => undefined);
  }
  pause(): void {
    this.video.pause();
  }
  seek(ms: number): void {
    this.video.currentTime = ms / 1000;
  }
  setRate(rate: number): void {
    this.video.playbackRate = rate;
  }
}

async function main(): Promise<void> {
  const vod = idFromPath("/vods/");
  const title = byId("title");
  if (!vod) {
    title.textContent = "No such recording";
    return;
  }
  document.title = vod + " · danmaku";
  title.textContent = vod;
  const token = await getToken();
  const replay = new ReplayClient({ vod, token: token ?? undefined });
  let session;
  try {
    session = await replay.load();
  } catch (error) {
    byId("state").textContent =
      error instanceof ApiError && error.code === "not_found" ? "This recording does not exist." : errorInWords(error);
    return;
  }
  byId("state").textContent = session.ended_at === null ? "still live: the recording grows" : "ended";
  byId("room-link").replaceChildren(link(`/rooms/${encodeURIComponent(session.room)}`, "room " + session.room));
  const formats = byId("formats");
  formats.replaceChildren(
    link(`/v1/vods/${encodeURIComponent(vod)}/bilibili.xml`, "Bilibili XML"),
    document.createTextNode(" · "),
    link(`/dplayer/v3/?id=${encodeURIComponent(vod)}`, "DPlayer API"),
  );

  const stage = new Stage(byId("comments"));
  const duration = () => replay.durationMs();
  let player: Player;
  if (session.video_url && /^https?:\/\//.test(session.video_url)) {
    const video = document.createElement("video");
    video.src = session.video_url;
    video.controls = true;
    byId("stage").prepend(video);
    player = new VideoPlayer(video);
  } else {
    player = new ClockPlayer(duration);
  }

  const seekBar = byId<HTMLInputElement>("seek");
  const time = byId("time");
  const playButton = byId<HTMLButtonElement>("play");
  const rate = byId<HTMLSelectElement>("rate");
  playButton.addEventListener("click", () => (player.playing() ? player.pause() : player.play()));
  rate.addEventListener("change", () => player.setRate(Number(rate.value) || 1));
  let seeked = false;
  seekBar.addEventListener("input", () => {
    seeked = true;
    player.seek((Number(seekBar.value) / 1000) * duration());
  });

  void drawHeatmap(replay, byId<HTMLCanvasElement>("heat"));
  if (session.ended_at === null) {
    // A recording still live grows: revalidate the playhead's segment (a 304
    // while nothing changed).
    setInterval(() => {
      void replay.revalidate(ReplayClient.segmentOf(player.time())).catch(() => false);
    }, LIVE_REVALIDATE_MS);
  }

  let last = player.time();
  let segment = -1;
  let wasPlaying = false;
  let timeShown = "";
  const frame = () => {
    const t = player.time();
    const playing = player.playing();
    if (playing !== wasPlaying) {
      playing ? stage.resume() : stage.pause();
      playButton.textContent = playing ? "pause" : "play";
      wasPlaying = playing;
    }
    const n = ReplayClient.segmentOf(t);
    if (n !== segment) {
      segment = n;
      void replay.setPlayhead(t).catch(() => undefined);
    }
    if (seeked || player.seeked() || t < last) {
      seeked = false;
      stage.clear();
    } else if (t > last) {
      for (const item of replay.itemsBetween(Math.max(last, t - SHOW_MS), t)) {
        stage.add({ id: item.id, text: item.text, mode: item.mode, color: item.color, offsetMs: item.offset_ms });
      }
    }
    last = t;
    const total = duration();
    document.body.dataset.playhead = String(Math.round(t));
    // Text and the slider change a few times a second; writing them only then
    // spares a layout in the other frames.
    const shown = `${clock(t)} / ${clock(total)}`;
    if (shown !== timeShown) time.textContent = timeShown = shown;
    const position = String(total ? Math.round((t / total) * 1000) : 0);
    if (document.activeElement !== seekBar && position !== seekBar.value) seekBar.value = position;
    requestAnimationFrame(frame);
  };
  requestAnimationFrame(frame);

  const form = sendForm();
  if (!token) {
    form.status.textContent = "Posting needs a token: this server does not hand out guest tokens.";
    form.button.disabled = true;
  }
  form.form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const text = form.text.value;
    if (!text.trim()) {
      form.status.textContent = "Write something first.";
      return;
    }
    const at = player.time();
    const mode = form.mode.value as Mode;
    const color = cssToColor(form.color.value);
    form.button.disabled = true;
    try {
      const { id } = await replay.post(text, at, { mode, color });
      stage.add({ id, text, mode, color, mine: true, offsetMs: Math.round(at) });
      form.text.value = "";
      form.text.dispatchEvent(new Event("input"));
      form.status.textContent = `posted at ${clock(at)}`;
    } catch (error) {
      form.status.textContent = errorInWords(error);
    } finally {
      form.button.disabled = false;
    }
  });
}

async function drawHeatmap(replay: ReplayClient, canvas: HTMLCanvasElement): Promise<void> {
  const counts = await replay.density(HEAT_BUCKETS).catch(() => null);
  if (!counts) return;
  const ctx = canvas.getContext("2d");
  if (!ctx) return;
  canvas.width = HEAT_BUCKETS;
  canvas.height = 24;
  const most = Math.max(1, ...counts);
  counts.forEach((count, i) => {
    const h = Math.round((count / most) * canvas.height);
    ctx.fillStyle = "#ff6699";
    ctx.fillRect(i, canvas.height - h, 1, h);
  });
  canvas.dataset.total = String(counts.reduce((a, b) => a + b, 0));
}

void main();
