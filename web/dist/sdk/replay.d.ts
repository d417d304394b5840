/**
 * The replay client: a VOD's comments around a playhead.
 *
 * Segments (`/v1/vods/{vod}/segments/{n}`, 6 minutes each) are loaded around
 * the playhead: the current one, the next one ahead of time (prefetch), and
 * those far behind are released, so memory stays flat over a 3-hour VOD.
 * When `GET /v1/vods/{vod}` lists `segments` with versions, their versioned
 * (immutable, cacheable) URLs are used; otherwise the plain URLs, revalidated
 * with `If-None-Match` and the last `ETag`.
 */
import { Emitter } from "./emitter.js";
import { ApiError, type ReplayItem, type SendOptions, type Session } from "./types.js";
import { type Fetch } from "./http.js";
/** Length of one segment, ms (API.md). */
export declare const SEGMENT_MS = 360000;
/** The events of a {@link ReplayClient}. */
export interface ReplayEvents extends Record<string, unknown> {
    /** Segment `n` is loaded (or changed after a revalidation). */
    segment: {
        n: number;
        count: number;
    };
    /** Segment `n` was released (far behind or far ahead of the playhead). */
    release: {
        n: number;
    };
    /** A segment failed to load (it is retried on the next playhead move). */
    error: ApiError;
}
/** Settings of a {@link ReplayClient}; only `vod` is required. */
export interface ReplayOptions {
    /** The API's origin; "" (default) = this page's origin. */
    baseUrl?: string;
    vod: string;
    /** A bearer token: needed to post; to read only when the server requires it. */
    token?: string;
    /** Segments kept behind the playhead's (default 1). */
    keepBehind?: number;
    /** Segments loaded ahead of the playhead's (default 1). */
    prefetchAhead?: number;
    fetch?: Fetch;
}
/** One VOD's comments by playhead; see the module documentation. */
export declare class ReplayClient extends Emitter<ReplayEvents> {
    /** The session, once {@link load} answered. */
    session: Session | undefined;
    private readonly options;
    private readonly fetchFn;
    private readonly segments;
    private readonly loading;
    private versions;
    private playheadSegment;
    constructor(options: ReplayOptions);
    /** `GET /v1/vods/{vod}`: the session (with `segments` versions when listed). */
    load(): Promise<Session>;
    /** The recording's length so far, ms (its whole length once ended). */
    durationMs(now?: number): number;
    /** Which segment holds `offsetMs`. */
    static segmentOf(offsetMs: number): number;
    /** The segments held in memory, ascending. */
    loadedSegments(): number[];
    /**
     * Moves the playhead: loads its segment (awaited) and the next (not
     * awaited), releases those outside `[n - keepBehind, n + prefetchAhead]`.
     */
    setPlayhead(offsetMs: number): Promise<void>;
    /**
     * The loaded items with `fromMs < offset_ms <= toMs`, in (offset, id) order.
     * Items of segments not loaded (yet) are simply absent.
     */
    itemsBetween(fromMs: number, toMs: number): ReplayItem[];
    /** Loads segment `n` if not held (one request however many callers). */
    ensure(n: number): Promise<void>;
    /**
     * Revalidates a held segment (`If-None-Match`): a VOD still live, or one
     * whose segment changed (a post, a deletion). Returns whether it changed.
     */
    revalidate(n: number): Promise<boolean>;
    /**
     * Counts of comments per bucket over the whole recording (for a heatmap),
     * reading each segment once without keeping its items.
     */
    density(buckets: number): Promise<number[]>;
    /**
     * Posts a comment at `offsetMs` of the recording (`POST
     * /v1/vods/{vod}/danmaku`); network failures and 5xx retry with the same
     * idempotency key.
     */
    post(text: string, offsetMs: number, options?: SendOptions): Promise<{
        id: string;
    }>;
    /** Forgets the segment list's versions after a post, so the next loads see it. */
    refreshSession(): Promise<void>;
    private url;
    /** Whether segment `n` can hold comments, as far as the session says. */
    private mayHold;
    /** `null` when `previous` is still current (304). */
    private fetchSegment;
}
