/** Colors: the API's 0xRRGGBB integers and CSS's `#rrggbb` (always six digits). */
/** `#rrggbb` of an API color, zero-padded (0x00ff00 is `#00ff00`, not `#ff00`). */
export declare function colorToCss(color: number): string;
/** The API color of `#rrggbb` (or `#rgb`); white when it is not one. */
export declare function cssToColor(css: string): number;
