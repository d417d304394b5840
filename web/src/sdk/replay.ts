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
import { apiUrl, authHeaders, type Fetch, newIdempotencyKey, readAnswer, request, sleep } from "./http.js";
import { Backoff } from "./backoff.js";

/** Length of one segment, ms (API.md). */
export const SEGMENT_MS = 360_000;

/** The events of a {@link ReplayClient}. */
export interface ReplayEvents extends Record<string, unknown> {
  /** Segment `n` is loaded (or changed after a revalidation). */
  segment: { n: number; count: number };
  /** Segment `n` was released (far behind or far ahead of the playhead). */
  release: { n: number };
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

interface Segment {
  n: number;
  items: ReplayItem[];
  etag: string | null;
  /** The versioned URL's version this copy came from, if any. */
  version: string | null;
}

/** One VOD's comments by playhead; see the module documentation. */
export class ReplayClient extends Emitter<ReplayEvents> {
  /** The session, once {@link load} answered. */
  session: Session | undefined;
  private readonly options: ReplayOptions;
  private readonly fetchFn: Fetch;
  private readonly segments = new Map<number, Segment>();
  private readonly loading = new Map<number, Promise<Segment | null>>();
  private versions = new Map<number, string>();
  private playheadSegment = 0;

  constructor(options: ReplayOptions) {
    super();
    this.options = options;
    this.fetchFn = options.fetch ?? ((...args) => fetch(...args));
  }

  /** `GET /v1/vods/{vod}`: the session (with `segments` versions when listed). */
  async load(): Promise<Session> {
    const response = await request(this.fetchFn, this.url(""), {
      headers: authHeaders(this.options.token, false),
    });
    const session = await readAnswer<Session>(response);
    this.session = session;
    this.versions = new Map((session.segments ?? []).map((s) => [s.n, s.version]));
    return session;
  }

  /** The recording's length so far, ms (its whole length once ended). */
  durationMs(now: number = Date.now()): number {
    const s = this.session;
    if (!s) return 0;
    return Math.max(0, (s.ended_at ?? now) - s.started_at);
  }

  /** Which segment holds `offsetMs`. */
  static segmentOf(offsetMs: number): number {
    return Math.max(0, Math.floor(offsetMs / SEGMENT_MS));
  }

  /** The segments held in memory, ascending. */
  loadedSegments(): number[] {
    return [...this.segments.keys()].sort((a, b) => a - b);
  }

  /**
   * Moves the playhead: loads its segment (awaited) and the next (not
   * awaited), releases those outside `[n - keepBehind, n + prefetchAhead]`.
   */
  async setPlayhead(offsetMs: number): Promise<void> {
    const n = ReplayClient.segmentOf(offsetMs);
    this.playheadSegment = n;
    const behind = this.options.keepBehind ?? 1;
    const ahead = this.options.prefetchAhead ?? 1;
    for (const held of [...this.segments.keys()]) {
      if (held < n - behind || held > n + ahead) {
        this.segments.delete(held);
        this.emit("release", { n: held });
      }
    }
    for (let k = 1; k <= ahead; k++) void this.ensure(n + k).catch(() => undefined);
    await this.ensure(n);
  }

  /**
   * The loaded items with `fromMs < offset_ms <= toMs`, in (offset, id) order.
   * Items of segments not loaded (yet) are simply absent.
   */
  itemsBetween(fromMs: number, toMs: number): ReplayItem[] {
    const out: ReplayItem[] = [];
    if (toMs <= fromMs) return out;
    const first = ReplayClient.segmentOf(Math.max(0, fromMs));
    const last = ReplayClient.segmentOf(toMs);
    for (let n = first; n <= last; n++) {
      const segment = this.segments.get(n);
      if (!segment) continue;
      const items = segment.items;
      let i = lowerBound(items, fromMs);
      for (; i < items.length && items[i].offset_ms <= toMs; i++) out.push(items[i]);
    }
    return out;
  }

  /** Loads segment `n` if not held (one request however many callers). */
  async ensure(n: number): Promise<void> {
    if (n < 0 || this.segments.has(n) || !this.mayHold(n)) return;
    let pending = this.loading.get(n);
    if (!pending) {
      pending = this.fetchSegment(n, null).finally(() => this.loading.delete(n));
      this.loading.set(n, pending);
    }
    const segment = await pending;
    // Released while loading (the playhead moved far): do not keep it.
    if (!segment) return;
    const behind = this.options.keepBehind ?? 1;
    const ahead = this.options.prefetchAhead ?? 1;
    if (n < this.playheadSegment - behind || n > this.playheadSegment + ahead) return;
    this.segments.set(n, segment);
    this.emit("segment", { n, count: segment.items.length });
  }

  /**
   * Revalidates a held segment (`If-None-Match`): a VOD still live, or one
   * whose segment changed (a post, a deletion). Returns whether it changed.
   */
  async revalidate(n: number): Promise<boolean> {
    const held = this.segments.get(n);
    if (!held) return false;
    const fresh = await this.fetchSegment(n, held);
    if (!fresh || fresh === held) return false;
    this.segments.set(n, fresh);
    this.emit("segment", { n, count: fresh.items.length });
    return true;
  }

  /**
   * Counts of comments per bucket over the whole recording (for a heatmap),
   * reading each segment once without keeping its items.
   */
  async density(buckets: number): Promise<number[]> {
    const counts = new Array<number>(Math.max(1, buckets)).fill(0);
    const duration = this.durationMs();
    if (duration <= 0) return counts;
    const last = ReplayClient.segmentOf(duration);
    for (let n = 0; n <= last; n++) {
      if (!this.mayHold(n)) continue;
      const segment = this.segments.get(n) ?? (await this.fetchSegment(n, null).catch(() => null));
      for (const item of segment?.items ?? []) {
        const b = Math.min(counts.length - 1, Math.floor((item.offset_ms / duration) * counts.length));
        counts[Math.max(0, b)]++;
      }
    }
    return counts;
  }

  /**
   * Posts a comment at `offsetMs` of the recording (`POST
   * /v1/vods/{vod}/danmaku`); network failures and 5xx retry with the same
   * idempotency key.
   */
  async post(text: string, offsetMs: number, options: SendOptions = {}): Promise<{ id: string }> {
    const body = JSON.stringify({
      text,
      ...options,
      offset_ms: Math.max(0, Math.round(offsetMs)),
      idempotency_key: newIdempotencyKey(),
    });
    const backoff = new Backoff({ initialMs: 300, maxMs: 5_000 });
    let lastError: ApiError | undefined;
    for (let attempt = 0; attempt < 4; attempt++) {
      try {
        const response = await request(this.fetchFn, this.url("/danmaku"), {
          method: "POST",
          headers: authHeaders(this.options.token, true),
          body,
        });
        const answer = await readAnswer<{ id: string }>(response);
        return { id: String(answer.id) };
      } catch (error) {
        if (!(error instanceof ApiError) || !(error.status === 0 || error.status >= 500)) throw error;
        lastError = error;
        await sleep(backoff.next());
      }
    }
    throw lastError!;
  }

  /** Forgets the segment list's versions after a post, so the next loads see it. */
  async refreshSession(): Promise<void> {
    await this.load();
    for (const n of this.loadedSegments()) await this.revalidate(n).catch(() => false);
  }

  // ---- internals -----------------------------------------------------------

  private url(path: string): string {
    return apiUrl(this.options.baseUrl ?? "", `/v1/vods/${encodeURIComponent(this.options.vod)}${path}`);
  }

  /** Whether segment `n` can hold comments, as far as the session says. */
  private mayHold(n: number): boolean {
    const s = this.session;
    if (!s) return true;
    if (s.ended_at !== null && n * SEGMENT_MS > this.durationMs()) return false;
    // A listed version set names every segment that holds comments.
    if (s.segments && s.ended_at !== null) return this.versions.has(n);
    return true;
  }

  /** `null` when `previous` is still current (304). */
  private async fetchSegment(n: number, previous: Segment | null): Promise<Segment | null> {
    const version = this.versions.get(n) ?? null;
    const path = version
      ? `/segments/${n}?v=${encodeURIComponent(version)}`
      : `/segments/${n}`;
    const headers = authHeaders(this.options.token, false);
    if (previous?.etag && previous.version === version) headers["If-None-Match"] = previous.etag;
    let response: Response;
    try {
      response = await request(this.fetchFn, this.url(path), { headers });
    } catch (error) {
      if (error instanceof ApiError) this.emit("error", error);
      throw error;
    }
    if (response.status === 304 && previous) return previous;
    const body = await readAnswer<{ items?: ReplayItem[] }>(response);
    const items = (body.items ?? []).slice().sort(byOffsetThenId);
    return { n, items, etag: response.headers.get("etag"), version };
  }
}

function byOffsetThenId(a: ReplayItem, b: ReplayItem): number {
  if (a.offset_ms !== b.offset_ms) return a.offset_ms - b.offset_ms;
  if (a.id.length !== b.id.length) return a.id.length - b.id.length;
  return a.id < b.id ? -1 : a.id > b.id ? 1 : 0;
}

/** First index whose offset is above `offsetMs`. */
function lowerBound(items: ReplayItem[], offsetMs: number): number {
  let lo = 0;
  let hi = items.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (items[mid].offset_ms <= offsetMs) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}
