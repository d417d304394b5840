import { describe, expect, it } from "vitest";
import { Lanes } from "../src/pages/lanes.js";

interface Placed {
  row: number;
  mode: "scroll" | "top" | "bottom";
  start: number;
  width: number;
}

const WIDTH = 1000;
const ROWS = 8;
const SCROLL_MS = 8000;
const FIXED_MS = 4000;

/** Where a placed comment is at time t, or null when off screen. */
function span(p: Placed, t: number): [number, number] | null {
  if (p.mode === "scroll") {
    if (t < p.start || t > p.start + SCROLL_MS) return null;
    const speed = (WIDTH + p.width) / SCROLL_MS;
    const x = WIDTH - speed * (t - p.start);
    return [x, x + p.width];
  }
  if (t < p.start || t > p.start + FIXED_MS) return null;
  return [(WIDTH - p.width) / 2, (WIDTH + p.width) / 2];
}

/** A deterministic pseudo-random sequence. */
function rng(seed: number) {
  let s = seed;
  return () => {
    s = (s * 1103515245 + 12345) % 2147483648;
    return s / 2147483648;
  };
}

describe("Lanes", () => {
  it("never lets two comments of a row overlap, whatever the mix of modes", () => {
    for (const seed of [1, 2, 3]) {
      const random = rng(seed);
      const lanes = new Lanes(SCROLL_MS, FIXED_MS);
      const placed: Placed[] = [];
      let dropped = 0;
      for (let t = 0; t < 60_000; t += 20 + random() * 80) {
        const r = random();
        const mode = r < 0.7 ? "scroll" : r < 0.85 ? "top" : "bottom";
        const width = 40 + Math.floor(random() * 400);
        const row = lanes.place(mode, t, WIDTH, ROWS, width);
        if (row < 0) dropped++;
        else placed.push({ row, mode, start: t, width });
      }
      expect(placed.length).toBeGreaterThan(100);
      expect(dropped).toBeGreaterThan(0);
      const overlaps: string[] = [];
      for (let t = 0; t < 62_000; t += 25) {
        for (let row = 0; row < ROWS; row++) {
          const spans = placed
            .filter((p) => p.row === row)
            .map((p) => span(p, t))
            .filter((s): s is [number, number] => s !== null)
            .sort((a, b) => a[0] - b[0]);
          for (let i = 1; i < spans.length; i++) {
            if (spans[i][0] < spans[i - 1][1] - 0.5) overlaps.push(`seed ${seed}, row ${row} at ${t} ms`);
          }
        }
      }
      expect(overlaps.slice(0, 5)).toEqual([]);
    }
  });

  it("puts bottom comments from the last row up and frees rows on clear", () => {
    const lanes = new Lanes(SCROLL_MS, FIXED_MS);
    expect(lanes.place("bottom", 0, WIDTH, ROWS, 100)).toBe(ROWS - 1);
    expect(lanes.place("bottom", 0, WIDTH, ROWS, 100)).toBe(ROWS - 2);
    expect(lanes.place("top", 0, WIDTH, ROWS, 100)).toBe(0);
    lanes.clear();
    expect(lanes.place("top", 0, WIDTH, ROWS, 100)).toBe(0);
  });
});
