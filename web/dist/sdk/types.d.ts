/**
 * The API's shapes (docs/API.md), as the SDK hands them to callers.
 * Ids are strings: a 64-bit id does not fit a JavaScript number.
 */
/** How a comment moves across the screen. */
export type Mode = "scroll" | "top" | "bottom";
/** What an item is. */
export type Kind = "comment" | "gift" | "like" | "system";
/** A comment as the live endpoints send it. */
export interface Item {
    id: string;
    room: string;
    user: string;
    name?: string;
    /** Server time, ms since the Unix epoch. */
    ts: number;
    kind: Kind;
    mode: Mode;
    /** 0xRRGGBB. */
    color: number;
    text: string;
}
/** A comment of a recording: an item with its VOD and its offset. */
export interface ReplayItem extends Item {
    vod: string;
    /** Milliseconds from the start of the VOD. */
    offset_ms: number;
}
/** What a sender may set besides the text. */
export interface SendOptions {
    mode?: Mode;
    color?: number;
    kind?: Kind;
    /** The player's position in the live stream when the viewer typed. */
    stream_pos_ms?: number;
}
/** A VOD session (`GET /v1/vods/{vod}`). */
export interface Session {
    vod: string;
    room: string;
    started_at: number;
    ended_at: number | null;
    latency_ms: number;
    count?: number;
    video_url?: string | null;
    /** Segments holding comments and their current versions, when the server lists them. */
    segments?: {
        n: number;
        version: string;
    }[];
}
/** The API's error answer, thrown by every call that failed. */
export declare class ApiError extends Error {
    /** HTTP status; 0 when the request never got an answer. */
    readonly status: number;
    /** The API's stable code (`rate_limited`, `text_too_long`, ...), or `network`. */
    readonly code: string;
    /** Seconds the server asked to wait (`Retry-After`), when it did. */
    readonly retryAfterSecs: number | undefined;
    constructor(status: number, code: string, message: string, retryAfterSecs?: number);
    /** Whether trying again later may succeed (network trouble, 429, 503). */
    get retryable(): boolean;
}
