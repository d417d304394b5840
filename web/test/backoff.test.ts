import { describe, expect, it } from "vitest";
import { Backoff } from "../src/sdk/backoff.js";
import { colorToCss, cssToColor } from "../src/sdk/color.js";

describe("Backoff", () => {
  it("doubles up to the cap, with jitter in the upper half", () => {
    const low = new Backoff({ initialMs: 100, maxMs: 1000, random: () => 0 });
    expect([1, 2, 3, 4, 5, 6].map(() => low.next())).toEqual([50, 100, 200, 400, 500, 500]);
    const high = new Backoff({ initialMs: 100, maxMs: 1000, random: () => 0.999999 });
    expect([1, 2, 3, 4, 5].map(() => high.next())).toEqual([100, 200, 400, 800, 1000]);
  });

  it("starts over after reset", () => {
    const b = new Backoff({ initialMs: 100, maxMs: 1000, random: () => 0 });
    b.next();
    b.next();
    b.reset();
    expect(b.attempts).toBe(0);
    expect(b.next()).toBe(50);
  });
});

describe("colors", () => {
  it("zero-pads to six digits and reads them back", () => {
    expect(colorToCss(0x00ff00)).toBe("#00ff00");
    expect(colorToCss(0x0000ff)).toBe("#0000ff");
    expect(colorToCss(0)).toBe("#000000");
    expect(colorToCss(-1)).toBe("#ffffff");
    expect(cssToColor("#00ff00")).toBe(0x00ff00);
    expect(cssToColor("#abc")).toBe(0xaabbcc);
    expect(cssToColor("red")).toBe(0xffffff);
  });
});
