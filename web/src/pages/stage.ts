/**
 * The stage: comments flying over the video (or a dark area) in rows that
 * never overlap ({@link Lanes} picks the row). When no row is free the
 * comment is dropped (the display budget), never stacked.
 *
 * Text is set with `textContent` (never parsed as HTML); motion uses the Web
 * Animations API, which the pages' CSP allows (no inline styles in markup).
 */
import { colorToCss } from "../sdk/color.js";
import type { Mode } from "../sdk/types.js";
import { Lanes } from "./lanes.js";

/** What the stage shows of a comment. */
export interface StageComment {
  id?: string;
  text: string;
  mode: Mode;
  color: number;
  /** The viewer's own comment (outlined). */
  mine?: boolean;
  /** Offset in a recording (kept as `data-offset` for tests and tools). */
  offsetMs?: number;
}

/** Stage settings. */
export interface StageOptions {
  /** Time a scrolling comment takes to cross, ms. */
  scrollMs?: number;
  /** Time a top/bottom comment stays, ms. */
  fixedMs?: number;
  /** Height of one lane, px. */
  laneHeight?: number;
  /** Most comments on screen at once. */
  maxOnScreen?: number;
}

export class Stage {
  private readonly el: HTMLElement;
  private readonly scrollMs: number;
  private readonly fixedMs: number;
  private readonly laneHeight: number;
  private readonly maxOnScreen: number;
  private readonly lanes: Lanes;
  private readonly live = new Set<{ node: HTMLElement; animation: Animation }>();
  private readonly measure: CanvasRenderingContext2D | null;
  /** The stage's size, kept by a ResizeObserver: reading it per comment would force a layout each time. */
  private width: number;
  private height: number;
  private paused = false;
  private pausedAt = 0;
  /** Comments dropped because no lane was free (shown to the viewer). */
  dropped = 0;
  /** Comments shown so far. */
  shown = 0;

  constructor(el: HTMLElement, options: StageOptions = {}) {
    this.el = el;
    this.scrollMs = options.scrollMs ?? 8000;
    this.fixedMs = options.fixedMs ?? 4000;
    this.laneHeight = options.laneHeight ?? 30;
    this.maxOnScreen = options.maxOnScreen ?? 300;
    this.lanes = new Lanes(this.scrollMs, this.fixedMs);
    this.measure = document.createElement("canvas").getContext("2d");
    if (this.measure) this.measure.font = getComputedStyle(el).font || "24px sans-serif";
    this.width = el.clientWidth;
    this.height = el.clientHeight;
    if (typeof ResizeObserver !== "undefined") {
      new ResizeObserver(() => {
        this.width = el.clientWidth;
        this.height = el.clientHeight;
      }).observe(el);
    }
  }

  /** Comments on screen now. */
  get onScreen(): number {
    return this.live.size;
  }

  /** Shows `comment` if a lane is free; returns whether it was shown. */
  add(comment: StageComment): boolean {
    const width = this.width;
    const height = this.height;
    const lanes = Math.max(1, Math.floor(height / this.laneHeight));
    if (this.live.size >= this.maxOnScreen) return this.drop();
    const now = this.clock();
    const textWidth = this.textWidth(comment.text);
    const lane = this.lanes.place(comment.mode, now, width, lanes, textWidth);
    if (lane < 0) return this.drop();

    const node = document.createElement("div");
    node.className = "dm dm-" + comment.mode + (comment.mine ? " dm-mine" : "");
    node.textContent = comment.text;
    node.style.color = colorToCss(comment.color);
    if (comment.id) node.dataset.id = comment.id;
    if (comment.offsetMs !== undefined) node.dataset.offset = String(comment.offsetMs);
    const y = lane * this.laneHeight;
    node.style.top = y + "px";
    this.el.appendChild(node);

    const frames =
      comment.mode === "scroll"
        ? [{ transform: `translateX(${width}px)` }, { transform: `translateX(${-textWidth}px)` }]
        : [{ transform: "translateX(-50%)" }, { transform: "translateX(-50%)" }];
    const animation = node.animate(frames, {
      duration: comment.mode === "scroll" ? this.scrollMs : this.fixedMs,
      easing: "linear",
      fill: "both",
    });
    if (this.paused) animation.pause();
    const entry = { node, animation };
    this.live.add(entry);
    animation.onfinish = () => {
      node.remove();
      this.live.delete(entry);
    };
    this.shown++;
    return true;
  }

  /** Removes the comments with these ids (moderation). */
  remove(ids: string[]): void {
    const wanted = new Set(ids);
    for (const entry of [...this.live]) {
      if (entry.node.dataset.id && wanted.has(entry.node.dataset.id)) {
        entry.animation.cancel();
        entry.node.remove();
        this.live.delete(entry);
      }
    }
  }

  /** Removes everything (a seek). */
  clear(): void {
    for (const entry of this.live) {
      entry.animation.cancel();
      entry.node.remove();
    }
    this.live.clear();
    this.lanes.clear();
  }

  /** Freezes the comments in place (the recording paused). */
  pause(): void {
    if (this.paused) return;
    this.paused = true;
    this.pausedAt = performance.now();
    for (const entry of this.live) entry.animation.pause();
  }

  /** Lets them fly again; lanes' times move by the pause. */
  resume(): void {
    if (!this.paused) return;
    const pausedFor = performance.now() - this.pausedAt;
    this.paused = false;
    this.lanes.shift(pausedFor);
    for (const entry of this.live) entry.animation.play();
  }

  /** Lane times are wall times (comments fly at one speed whatever the playback rate). */
  private clock(): number {
    return performance.now();
  }

  private drop(): boolean {
    this.dropped++;
    return false;
  }

  private textWidth(text: string): number {
    if (this.measure) return Math.ceil(this.measure.measureText(text).width);
    return text.length * 24;
  }
}
