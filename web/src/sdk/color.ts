/** Colors: the API's 0xRRGGBB integers and CSS's `#rrggbb` (always six digits). */

/** `#rrggbb` of an API color, zero-padded (0x00ff00 is `#00ff00`, not `#ff00`). */
export function colorToCss(color: number): string {
  const value = Number.isInteger(color) && color >= 0 && color <= 0xffffff ? color : 0xffffff;
  return "#" + value.toString(16).padStart(6, "0");
}

/** The API color of `#rrggbb` (or `#rgb`); white when it is not one. */
export function cssToColor(css: string): number {
  let hex = css.trim().replace(/^#/, "");
  if (/^[0-9a-f]{3}$/i.test(hex)) hex = hex.replace(/./g, (c) => c + c);
  return /^[0-9a-f]{6}$/i.test(hex) ? parseInt(hex, 16) : 0xffffff;
}
