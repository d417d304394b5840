/**
 * `@danmaku/client`: the danmaku platform's browser (and Node) SDK.
 *
 * - {@link LiveClient}: a room's live comments with resume by cursor,
 *   backoff with jitter, a long-polling fallback and sends acknowledged once.
 * - {@link ReplayClient}: a VOD's comments by playhead, in segments.
 * - {@link Backoff}, {@link ApiError} and the API's types.
 */
export { LiveClient } from "./live.js";
export type { LiveEvents, LiveOptions, LiveState, Transport, WebSocketCtor } from "./live.js";
export { ReplayClient, SEGMENT_MS } from "./replay.js";
export type { ReplayEvents, ReplayOptions } from "./replay.js";
export { Backoff } from "./backoff.js";
export type { BackoffOptions } from "./backoff.js";
export { ApiError } from "./types.js";
export type { Item, Kind, Mode, ReplayItem, SendOptions, Session } from "./types.js";
export { colorToCss, cssToColor } from "./color.js";
