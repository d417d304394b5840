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
import { Backoff, type BackoffOptions } from "./backoff.js";
import { Emitter } from "./emitter.js";
import { apiUrl, authHeaders, type Fetch, newIdempotencyKey, readAnswer, request, sleep } from "./http.js";
import { ApiError, type Item, type SendOptions } from "./types.js";

/** Where the client is. */
export type LiveState = "idle" | "connecting" | "open" | "polling" | "reconnecting" | "closed";

/** How items currently arrive. */
export type Transport = "websocket" | "polling";

/** The events of a {@link LiveClient}. */
export interface LiveEvents extends Record<string, unknown> {
  /** The connection state changed; `delayMs` is the wait before the next try. */
  state: { state: LiveState; transport: Transport | null; delayMs?: number };
  /** New items, in room order, none delivered before. */
  batch: { items: Item[]; cursor: string };
  /** Items deleted by moderation (the page removes them if shown). */
  delete: { ids: string[] };
  /** Open WebSocket viewers of the room. */
  online: { count: number };
  /** The server could not deliver everything; the client resumes from `cursor`. */
  gap: { cursor: string };
  /** A WebSocket was opened (tests and pages count them). */
  connection: { transport: Transport };
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

interface PendingSend {
  resolve: (value: { id: string }) => void;
  reject: (error: ApiError) => void;
  timer: ReturnType<typeof setTimeout>;
}

/** How many delivered ids are remembered to drop duplicates. */
const SEEN_IDS = 4096;

/** Statuses of the API's error codes, for errors that arrive over the WebSocket. */
const CODE_STATUS: Record<string, number> = {
  unauthorized: 401,
  forbidden: 403,
  banned: 403,
  muted: 403,
  not_found: 404,
  idempotency_conflict: 409,
  payload_too_large: 413,
  rate_limited: 429,
  unavailable: 503,
};

/** One room's live comments; see the module documentation. */
export class LiveClient extends Emitter<LiveEvents> {
  /** The last cursor received: where a resume starts. */
  cursor: string | undefined;
  private readonly options: LiveOptions;
  private readonly backoff: Backoff;
  private readonly fetchFn: Fetch;
  private state: LiveState = "idle";
  private transport: Transport | null = null;
  /** Bumped whenever the current connection is given up: stale handlers check it. */
  private generation = 0;
  private ws: WebSocket | null = null;
  private wsHello = false;
  private wsFailures = 0;
  private usePolling = false;
  private probe: WebSocket | null = null;
  private probeDelayMs: number;
  private timer: ReturnType<typeof setTimeout> | null = null;
  /** A socket that neither opens nor fails (a proxy holding it) is given up. */
  private helloTimer: ReturnType<typeof setTimeout> | null = null;
  private probeTimer: ReturnType<typeof setTimeout> | null = null;
  private pollAbort: AbortController | null = null;
  private readonly pending = new Map<string, PendingSend>();
  /** The socket each pending send went out on (its close fails them). */
  private readonly pendingSocket = new Map<string, WebSocket>();
  private nextRef = 0;
  private readonly seen = new Set<string>();
  private readonly seenOrder: string[] = [];

  constructor(options: LiveOptions) {
    super();
    this.options = options;
    this.cursor = options.cursor;
    this.backoff = new Backoff(options.backoff);
    this.fetchFn = options.fetch ?? ((...args) => fetch(...args));
    this.usePolling = options.transport === "polling";
    this.probeDelayMs = options.wsRetryFromPollingMs ?? 30_000;
  }

  /** The connection state and the transport in use. */
  get status(): { state: LiveState; transport: Transport | null } {
    return { state: this.state, transport: this.transport };
  }

  /** Starts receiving (once; later calls do nothing until {@link close}). */
  connect(): void {
    if (this.state !== "idle" && this.state !== "closed") return;
    this.setState("connecting", null);
    this.start();
  }

  /**
   * Drops the current connection or wait and opens one new connection now
   * (a "reconnect" button): exactly one, however often it is called while
   * that one is opening.
   */
  reconnectNow(): void {
    if (this.state === "connecting" && this.ws && !this.wsHello) return;
    this.backoff.reset();
    this.wsFailures = 0;
    this.usePolling = this.options.transport === "polling";
    this.setState("connecting", this.transport);
    this.start();
  }

  /** Stops everything; pending sends fail with code `closed`. */
  close(): void {
    this.abandon();
    this.stopProbe();
    for (const [ref, p] of this.pending) {
      clearTimeout(p.timer);
      p.reject(new ApiError(0, "closed", "the client was closed"));
      this.pending.delete(ref);
    }
    this.pendingSocket.clear();
    this.setState("closed", null);
  }

  /**
   * Sends a comment; resolves with its id once the server durably accepted it.
   * Rejects with the server's {@link ApiError} (e.g. `text_too_long`,
   * `rate_limited` with `retryAfterSecs`) or after the last failed try.
   */
  async send(text: string, options: SendOptions = {}): Promise<{ id: string }> {
    const body = { text, ...options, idempotency_key: newIdempotencyKey() };
    const attempts = Math.max(1, this.options.sendAttempts ?? 4);
    const backoff = new Backoff({ initialMs: 300, maxMs: 5_000 });
    let lastError: ApiError | undefined;
    for (let attempt = 0; attempt < attempts; attempt++) {
      try {
        if (this.options.token && this.ws && this.wsHello && this.ws.readyState === 1) {
          return await this.sendOverSocket(this.ws, body);
        }
        return await this.sendOverHttp(body);
      } catch (error) {
        if (!(error instanceof ApiError) || !isTransient(error)) throw error;
        lastError = error;
        if (attempt + 1 < attempts) await sleep(backoff.next());
      }
    }
    throw lastError ?? new ApiError(0, "network", "sending failed");
  }

  // ---- connections ---------------------------------------------------------

  /** Gives up the current connection: its handlers become no-ops. */
  private abandon(): void {
    this.generation++;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    this.clearHelloTimer();
    this.pollAbort?.abort();
    this.pollAbort = null;
    const ws = this.ws;
    this.ws = null;
    this.wsHello = false;
    if (ws) {
      this.failPendingOn(ws);
      closeQuietly(ws);
    }
  }

  private start(): void {
    if (this.usePolling) this.startPolling(false);
    else this.openSocket();
  }

  private socketUrl(): string {
    let base = this.options.baseUrl ?? "";
    if (!base) {
      const loc = (globalThis as { location?: Location }).location;
      base = loc ? loc.origin : "";
    }
    const ws = base.replace(/^http(s?):/i, "ws$1:").replace(/\/+$/, "");
    const query: string[] = [];
    if (this.cursor) query.push("cursor=" + encodeURIComponent(this.cursor));
    if (this.options.token) query.push("token=" + encodeURIComponent(this.options.token));
    return `${ws}/v1/rooms/${encodeURIComponent(this.options.room)}/ws${query.length ? "?" + query.join("&") : ""}`;
  }

  private newSocket(): WebSocket | null {
    const Ctor = this.options.WebSocket ?? (globalThis as { WebSocket?: WebSocketCtor }).WebSocket;
    if (!Ctor) return null;
    try {
      const ws = new Ctor(this.socketUrl());
      this.emit("connection", { transport: "websocket" });
      return ws;
    } catch {
      return null;
    }
  }

  private openSocket(): void {
    this.abandon();
    const generation = this.generation;
    const ws = this.newSocket();
    if (!ws) {
      this.onSocketClosed(generation, false);
      return;
    }
    this.ws = ws;
    this.wire(ws, generation);
    this.helloTimer = setTimeout(() => {
      this.helloTimer = null;
      if (generation !== this.generation || this.wsHello) return;
      this.ws = null;
      this.failPendingOn(ws);
      closeQuietly(ws);
      this.onSocketClosed(generation, false);
    }, this.options.helloTimeoutMs ?? 10_000);
    // An attempt in flight: a reconnect button does not start another.
    this.setState("connecting", "websocket");
  }

  private clearHelloTimer(): void {
    if (this.helloTimer) clearTimeout(this.helloTimer);
    this.helloTimer = null;
  }

  private wire(ws: WebSocket, generation: number): void {
    ws.onmessage = (event: MessageEvent) => {
      if (generation !== this.generation) return;
      this.onSocketMessage(String(event.data));
    };
    ws.onclose = () => {
      if (generation !== this.generation) return;
      this.clearHelloTimer();
      const hadHello = this.wsHello;
      this.ws = null;
      this.wsHello = false;
      this.failPendingOn(ws);
      this.onSocketClosed(generation, hadHello);
    };
    ws.onerror = () => {
      // A close event follows; that is where the client decides.
    };
  }

  private onSocketMessage(data: string): void {
    let msg: Record<string, unknown>;
    try {
      msg = JSON.parse(data);
    } catch {
      return;
    }
    switch (msg.type) {
      case "hello":
        this.clearHelloTimer();
        this.wsHello = true;
        this.wsFailures = 0;
        this.backoff.reset();
        if (typeof msg.cursor === "string") this.cursor = msg.cursor;
        this.setState("open", "websocket");
        break;
      case "batch":
        this.deliver(Array.isArray(msg.items) ? (msg.items as Item[]) : [], msg.cursor);
        break;
      case "gap":
        if (typeof msg.cursor === "string") this.cursor = msg.cursor;
        this.emit("gap", { cursor: this.cursor ?? "" });
        this.startPolling(true);
        break;
      case "delete":
        if (Array.isArray(msg.ids)) this.emit("delete", { ids: msg.ids.map(String) });
        break;
      case "online":
        if (typeof msg.count === "number") this.emit("online", { count: msg.count });
        break;
      case "ack":
      case "error": {
        const ref = typeof msg.ref === "string" ? msg.ref : JSON.stringify(msg.ref);
        const pending = this.pending.get(ref);
        if (!pending) break;
        this.pending.delete(ref);
        this.pendingSocket.delete(ref);
        clearTimeout(pending.timer);
        if (msg.type === "ack") pending.resolve({ id: String(msg.id) });
        else {
          const err = (msg.error ?? {}) as { code?: string; message?: string };
          const code = err.code ?? "error";
          pending.reject(new ApiError(CODE_STATUS[code] ?? 400, code, err.message ?? code));
        }
        break;
      }
      default:
        break;
    }
  }

  private onSocketClosed(generation: number, hadHello: boolean): void {
    if (generation !== this.generation || this.state === "closed") return;
    if (!hadHello) this.wsFailures++;
    const limit = this.options.wsFailuresBeforePolling ?? 2;
    if ((this.options.transport ?? "auto") === "auto" && this.wsFailures >= limit) {
      this.usePolling = true;
      this.startPolling(false);
      return;
    }
    const delayMs = this.backoff.next();
    this.setState("reconnecting", "websocket", delayMs);
    this.timer = setTimeout(() => {
      if (generation !== this.generation) return;
      this.openSocket();
    }, delayMs);
  }

  // ---- polling -------------------------------------------------------------

  /**
   * Polls from the cursor. `catchUp`: after a gap, only until caught up, then
   * back to a WebSocket; else as the transport, with WebSocket probes.
   */
  private startPolling(catchUp: boolean): void {
    this.abandon();
    const generation = this.generation;
    this.setState("polling", "polling");
    if (!catchUp) this.scheduleProbe();
    void this.pollLoop(generation, catchUp);
  }

  private async pollLoop(generation: number, catchUp: boolean): Promise<void> {
    const limit = this.options.pollLimit ?? 500;
    while (generation === this.generation) {
      const abort = new AbortController();
      this.pollAbort = abort;
      const query = [`limit=${limit}`];
      if (this.cursor) query.push("cursor=" + encodeURIComponent(this.cursor));
      if (!catchUp && this.cursor) query.push(`wait_ms=${this.options.pollWaitMs ?? 20_000}`);
      const url = apiUrl(
        this.options.baseUrl ?? "",
        `/v1/rooms/${encodeURIComponent(this.options.room)}/danmaku?${query.join("&")}`,
      );
      let delayMs: number;
      try {
        const response = await request(this.fetchFn, url, {
          headers: authHeaders(this.options.token, false),
          signal: abort.signal,
        });
        const body = await readAnswer<{ items?: Item[]; cursor?: string; next_poll_ms?: number; deleted?: string[] }>(
          response,
        );
        if (generation !== this.generation) return;
        this.backoff.reset();
        if (this.state !== "polling") this.setState("polling", "polling");
        if (Array.isArray(body.deleted) && body.deleted.length) this.emit("delete", { ids: body.deleted.map(String) });
        this.deliver(body.items ?? [], body.cursor);
        delayMs = Math.max(0, Number(body.next_poll_ms ?? 1000));
        if (catchUp && delayMs > 0) {
          // Caught up: live items come faster over a WebSocket again.
          this.openSocket();
          return;
        }
      } catch (error) {
        if (generation !== this.generation) return;
        const apiError = error instanceof ApiError ? error : new ApiError(0, "network", String(error));
        this.emit("error", apiError);
        delayMs = Math.max(this.backoff.next(), (apiError.retryAfterSecs ?? 0) * 1000);
        this.setState("reconnecting", "polling", delayMs);
      }
      await sleep(delayMs, abort.signal);
    }
  }

  /** While polling, tries a WebSocket now and then; switches once it says hello. */
  private scheduleProbe(): void {
    if ((this.options.transport ?? "auto") !== "auto") return;
    this.stopProbe();
    this.probeTimer = setTimeout(() => this.runProbe(), this.probeDelayMs);
  }

  private stopProbe(): void {
    if (this.probeTimer) clearTimeout(this.probeTimer);
    this.probeTimer = null;
    if (this.probe) closeQuietly(this.probe);
    this.probe = null;
  }

  private runProbe(): void {
    this.probeTimer = null;
    if (!this.usePolling || this.state === "closed") return;
    const probe = this.newSocket();
    if (!probe) return this.scheduleProbe();
    this.probe = probe;
    probe.onmessage = (event: MessageEvent) => {
      if (this.probe !== probe) return;
      let type: unknown;
      try {
        type = JSON.parse(String(event.data)).type;
      } catch {
        return;
      }
      if (type !== "hello") return;
      // The WebSocket works again: it becomes the connection.
      this.probe = null;
      this.usePolling = false;
      this.probeDelayMs = this.options.wsRetryFromPollingMs ?? 30_000;
      this.abandon();
      const generation = this.generation;
      this.ws = probe;
      this.wire(probe, generation);
      this.onSocketMessage(String(event.data));
    };
    probe.onclose = () => {
      if (this.probe !== probe) return;
      this.probe = null;
      this.probeDelayMs = Math.min(this.probeDelayMs * 2, 5 * 60_000);
      this.scheduleProbe();
    };
  }

  // ---- delivery and sends --------------------------------------------------

  private deliver(items: Item[], cursor: unknown): void {
    if (typeof cursor === "string") this.cursor = cursor;
    const fresh: Item[] = [];
    for (const item of items) {
      const id = String(item.id);
      if (this.seen.has(id)) continue;
      this.seen.add(id);
      this.seenOrder.push(id);
      if (this.seenOrder.length > SEEN_IDS) this.seen.delete(this.seenOrder.shift()!);
      fresh.push(item);
    }
    if (fresh.length) this.emit("batch", { items: fresh, cursor: this.cursor ?? "" });
  }

  private sendOverSocket(ws: WebSocket, body: Record<string, unknown>): Promise<{ id: string }> {
    const ref = `s${++this.nextRef}`;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(ref);
        this.pendingSocket.delete(ref);
        reject(new ApiError(0, "timeout", "no answer to the send"));
      }, this.options.ackTimeoutMs ?? 5_000);
      this.pending.set(ref, { resolve, reject, timer });
      this.pendingSocket.set(ref, ws);
      try {
        ws.send(JSON.stringify({ type: "send", ref, ...body }));
      } catch {
        this.pending.delete(ref);
        this.pendingSocket.delete(ref);
        clearTimeout(timer);
        reject(new ApiError(0, "network", "the connection closed"));
      }
    });
  }

  /** A socket closed: its sends will not be acked; they retry (same key). */
  private failPendingOn(ws: WebSocket): void {
    for (const [ref, socket] of this.pendingSocket) {
      if (socket !== ws) continue;
      this.pendingSocket.delete(ref);
      const pending = this.pending.get(ref);
      if (!pending) continue;
      this.pending.delete(ref);
      clearTimeout(pending.timer);
      pending.reject(new ApiError(0, "network", "the connection closed before the ack"));
    }
  }

  private async sendOverHttp(body: Record<string, unknown>): Promise<{ id: string }> {
    const url = apiUrl(this.options.baseUrl ?? "", `/v1/rooms/${encodeURIComponent(this.options.room)}/danmaku`);
    const response = await request(this.fetchFn, url, {
      method: "POST",
      headers: authHeaders(this.options.token, true),
      body: JSON.stringify(body),
    });
    const answer = await readAnswer<{ id: string }>(response);
    return { id: String(answer.id) };
  }

  private setState(state: LiveState, transport: Transport | null, delayMs?: number): void {
    this.state = state;
    this.transport = transport;
    this.emit("state", delayMs === undefined ? { state, transport } : { state, transport, delayMs });
  }
}

/** Failures worth another try with the same idempotency key. */
function isTransient(error: ApiError): boolean {
  return error.status === 0 || error.status >= 500;
}

function closeQuietly(ws: WebSocket): void {
  ws.onmessage = null;
  ws.onclose = null;
  ws.onerror = null;
  try {
    ws.close();
  } catch {
    // Closing a socket that never opened may throw in some runtimes.
  }
}
