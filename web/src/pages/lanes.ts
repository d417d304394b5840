/**
 * Row assignment for the stage, without the DOM (unit-tested): scrolling and
 * fixed (top/bottom) comments share rows but never space. A scroller takes a
 * row when the row's last scroller has fully entered and cannot be caught
 * before it leaves, and any fixed comment there is gone before the new head
 * reaches it; a fixed comment takes a row when no fixed one is there and every
 * scroller of the row is already left of its block. No row: the comment is
 * dropped (the display budget), never stacked.
 */

/** The last scrolling comment of a row: where it is at any time. */
interface Scroller {
  start: number;
  width: number;
  /** px per ms. */
  speed: number;
  /** When its tail has entered, plus a gap. */
  freeAt: number;
  leaveAt: number;
}

/** A top or bottom comment holding a row's middle. */
interface Fixed {
  left: number;
  right: number;
  leaveAt: number;
}

interface Row {
  scroll?: Scroller;
  fixed?: Fixed;
}

/** Gap kept between two comments, px. */
const GAP = 16;

export class Lanes {
  private rows: Row[] = [];

  constructor(
    /** Time a scroller takes to cross, ms. */
    private readonly scrollMs: number,
    /** Time a fixed comment stays, ms. */
    private readonly fixedMs: number,
  ) {}

  /**
   * The row for a comment `textWidth` wide on a stage `width` wide with
   * `lanes` rows at time `now` (ms), or -1 when none is free.
   */
  place(mode: "scroll" | "top" | "bottom", now: number, width: number, lanes: number, textWidth: number): number {
    if (mode === "scroll") {
      const speed = (width + textWidth) / this.scrollMs;
      const lane = this.pick(lanes, false, (row) => this.scrollFits(row, now, width, speed));
      if (lane >= 0) {
        this.row(lane).scroll = {
          start: now,
          width: textWidth,
          speed,
          freeAt: now + (textWidth + GAP) / speed,
          leaveAt: now + this.scrollMs,
        };
      }
      return lane;
    }
    const left = (width - textWidth) / 2 - GAP / 2;
    const right = (width + textWidth) / 2 + GAP / 2;
    const lane = this.pick(lanes, mode === "bottom", (row) => this.fixedFits(row, now, width, left));
    if (lane >= 0) this.row(lane).fixed = { left, right, leaveAt: now + this.fixedMs };
    return lane;
  }

  /** Everything moves later by `ms` (the stage was paused that long). */
  shift(ms: number): void {
    for (const row of this.rows) {
      if (!row) continue;
      if (row.scroll) {
        row.scroll.start += ms;
        row.scroll.freeAt += ms;
        row.scroll.leaveAt += ms;
      }
      if (row.fixed) row.fixed.leaveAt += ms;
    }
  }

  /** Every row free (a seek). */
  clear(): void {
    this.rows = [];
  }

  private pick(lanes: number, fromBottom: boolean, fits: (row: Row) => boolean): number {
    for (let k = 0; k < lanes; k++) {
      const i = fromBottom ? lanes - 1 - k : k;
      if (fits(this.rows[i] ?? {})) return i;
    }
    return -1;
  }

  private row(i: number): Row {
    let row = this.rows[i];
    if (!row) {
      row = {};
      this.rows[i] = row;
    }
    return row;
  }

  private scrollFits(row: Row, now: number, width: number, speed: number): boolean {
    const last = row.scroll;
    if (last && last.leaveAt > now && (now < last.freeAt || last.leaveAt > now + width / speed)) return false;
    const fixed = row.fixed;
    if (fixed && fixed.leaveAt > now && fixed.leaveAt > now + (width - fixed.right) / speed) return false;
    return true;
  }

  private fixedFits(row: Row, now: number, width: number, left: number): boolean {
    if (row.fixed && row.fixed.leaveAt > now) return false;
    const last = row.scroll;
    if (!last || last.leaveAt <= now) return true;
    const tailNow = width - last.speed * (now - last.start) + last.width;
    return tailNow < left;
  }
}
