/**
 * The live client: one room's comments as they are sent.
 *
 * It owns the connection the way a page wants it to behave:
 * - a WebSocket (`/v1/rooms/{room}/ws`) resumed from the last cursor after any
 *   disconnect, after a delay from {@link Backoff} (jitter, cap, reset once the
 *   server said hello again);
 * - long polling (`/v1/rooms/{room}/danmaku`, honouring `next_poll_ms`) when
 *   WebSockets fail before their hello (blocked by a proxy, say), with a
 *   WebSocket tried again now and then, and used as soon as it works;
 * - a `gap` (this client was too slow) resumes from the gap's cursor by
 *   polling until caught up, then on a new WebSocket;
 * - every connection belongs to one generation: a replaced socket's late
 *   `close` can never schedule another connection (no reconnect loops), and
 *   {@link LiveClient.reconnectNow} opens exactly one new connection;
 * - items already delivered are not delivered twice (ids remembered, bounded),
 *   whichever transport brought them.
 *
 * Sending: {@link LiveClient.send} goes over the WebSocket (ack by `ref`) when
 * it is open with a token, else by `POST`; a network failure, a 5xx or a lost
 * ack retries with the same `idempotency_key`, so the comment is stored once.
 */
import { type BackoffOptions } from "./backoff.js";
import { Emitter } from "./emitter.js";
import { type Fetch } from "./http.js";
import { ApiError, type Item, type SendOptions } from "./types.js";
/** Where the client is. */
export type LiveState = "idle" | "connecting" | "open" | "polling" | "reconnecting" | "closed";
/** How items currently arrive. */
export type Transport = "websocket" | "polling";
/** The events of a {@link LiveClient}. */
export interface LiveEvents extends Record<string, unknown> {
    /** The connection state changed; `delayMs` is the wait before the next try. */
    state: {
        state: LiveState;
        transport: Transport | null;
        delayMs?: number;
    };
    /** New items, in room order, none delivered before. */
    batch: {
        items: Item[];
        cursor: string;
    };
    /** Items deleted by moderation (the page removes them if shown). */
    delete: {
        ids: string[];
    };
    /** Open WebSocket viewers of the room. */
    online: {
        count: number;
    };
    /** The server could not deliver everything; the client resumes from `cursor`. */
    gap: {
        cursor: string;
    };
    /** A WebSocket was opened (tests and pages count them). */
    connection: {
        transport: Transport;
    };
    /** A request or connection failed (the client retries by itself). */
    error: ApiError;
}
/** A WebSocket constructor (the browser's, or one from a Node library). */
export type WebSocketCtor = new (url: string) => WebSocket;
/** Settings of a {@link LiveClient}; only `room` is required. */
export interface LiveOptions {
    /** The API's origin, e.g. `https://danmaku.example`; "" (default) = this page's origin. */
    baseUrl?: string;
    room: string;
    /** A bearer token: needed to send; to read only when the server requires it. */
    token?: string;
    /** Resume after this cursor instead of starting from the recent items. */
    cursor?: string;
    /** `auto` (default): WebSocket, polling when it fails; or force one. */
    transport?: "auto" | "websocket" | "polling";
    backoff?: BackoffOptions;
    /** `wait_ms` of long polls (default 20,000). */
    pollWaitMs?: number;
    /** `limit` of polls (default 500). */
    pollLimit?: number;
    /** WebSockets that close before their hello before polling takes over (default 2). */
    wsFailuresBeforePolling?: number;
    /** While polling, how often a WebSocket is tried again, ms (default 30,000). */
    wsRetryFromPollingMs?: number;
    /** How long a WebSocket may take to say hello before it counts as failed, ms (default 10,000). */
    helloTimeoutMs?: number;
    /** How long a WebSocket send waits for its ack, ms (default 5,000). */
    ackTimeoutMs?: number;
    /** Tries of one send, the first included (default 4). */
    sendAttempts?: number;
    WebSocket?: WebSocketCtor;
    fetch?: Fetch;
}
/** One room's live comments; see the module documentation. */
export declare class LiveClient extends Emitter<LiveEvents> {
    /** The last cursor received: where a resume starts. */
    cursor: string | undefined;
    private readonly options;
    private readonly backoff;
    private readonly fetchFn;
    private state;
    private transport;
    /** Bumped whenever the current connection is given up: stale handlers check it. */
    private generation;
    private ws;
    private wsHello;
    private wsFailures;
    private usePolling;
    private probe;
    private probeDelayMs;
    private timer;
    /** A socket that neither opens nor fails (a proxy holding it) is given up. */
    private helloTimer;
    private probeTimer;
    private pollAbort;
    private readonly pending;
    /** The socket each pending send went out on (its close fails them). */
    private readonly pendingSocket;
    private nextRef;
    private readonly seen;
    private readonly seenOrder;
    constructor(options: LiveOptions);
    /** The connection state and the transport in use. */
    get status(): {
        state: LiveState;
        transport: Transport | null;
    };
    /** Starts receiving (once; later calls do nothing until {@link close}). */
    connect(): void;
    /**
     * Drops the current connection or wait and opens one new connection now
     * (a "reconnect" button): exactly one, however often it is called while
     * that one is opening.
     */
    reconnectNow(): void;
    /** Stops everything; pending sends fail with code `closed`. */
    close(): void;
    /**
     * Sends a comment; resolves with its id once the server durably accepted it.
     * Rejects with the server's {@link ApiError} (e.g. `text_too_long`,
     * `rate_limited` with `retryAfterSecs`) or after the last failed try.
     */
    send(text: string, options?: SendOptions): Promise<{
        id: string;
    }>;
    /** Gives up the current connection: its handlers become no-ops. */
    private abandon;
    private start;
    private socketUrl;
    private newSocket;
    private openSocket;
    private clearHelloTimer;
    private wire;
    private onSocketMessage;
    private onSocketClosed;
    /**
     * Polls from the cursor. `catchUp`: after a gap, only until caught up, then
     * back to a WebSocket; else as the transport, with WebSocket probes.
     */
    private startPolling;
    private pollLoop;
    /** While polling, tries a WebSocket now and then; switches once it says hello. */
    private scheduleProbe;
    private stopProbe;
    private runProbe;
    private deliver;
    private sendOverSocket;
    /** A socket closed: its sends will not be acked; they retry (same key). */
    private failPendingOn;
    private sendOverHttp;
    private setState;
}
