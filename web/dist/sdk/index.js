var __defProp = Object.defineProperty;
var __defNormalProp = (obj, key, value) => key in obj ? __defProp(obj, key, { enumerable: true, configurable: true, writable: true, value }) : obj[key] = value;
var __publicField = (obj, key, value) => __defNormalProp(obj, typeof key !== "symbol" ? key + "" : key, value);

// src/sdk/backoff.ts
var Backoff = class {
  constructor(options = {}) {
    __publicField(this, "attempt", 0);
    __publicField(this, "initialMs");
    __publicField(this, "maxMs");
    __publicField(this, "factor");
    __publicField(this, "random");
    this.initialMs = Math.max(1, options.initialMs ?? 500);
    this.maxMs = Math.max(this.initialMs, options.maxMs ?? 2e4);
    this.factor = Math.max(1, options.factor ?? 2);
    this.random = options.random ?? Math.random;
  }
  /** Failed attempts since the last reset. */
  get attempts() {
    return this.attempt;
  }
  /** The delay before the next attempt, ms; counts one more failure. */
  next() {
    const ceiling = Math.min(this.maxMs, this.initialMs * Math.pow(this.factor, this.attempt));
    this.attempt = Math.min(this.attempt + 1, 64);
    return Math.round(ceiling / 2 + ceiling / 2 * this.random());
  }
  /** A success: the next failure starts from the first delay again. */
  reset() {
    this.attempt = 0;
  }
};

// src/sdk/emitter.ts
var Emitter = class {
  constructor() {
    __publicField(this, "handlers", {});
  }
  /** Calls `handler` for every `event`; returns a function that stops it. */
  on(event, handler) {
    let set = this.handlers[event];
    if (!set) {
      set = /* @__PURE__ */ new Set();
      this.handlers[event] = set;
    }
    set.add(handler);
    return () => this.off(event, handler);
  }
  /** Stops calling `handler` for `event`. */
  off(event, handler) {
    this.handlers[event]?.delete(handler);
  }
  emit(event, value) {
    for (const handler of [...this.handlers[event] ?? []]) {
      try {
        handler(value);
      } catch (error) {
        console.error("danmaku: event handler failed", error);
      }
    }
  }
};

// src/sdk/types.ts
var ApiError = class extends Error {
  constructor(status, code, message, retryAfterSecs) {
    super(message);
    /** HTTP status; 0 when the request never got an answer. */
    __publicField(this, "status");
    /** The API's stable code (`rate_limited`, `text_too_long`, ...), or `network`. */
    __publicField(this, "code");
    /** Seconds the server asked to wait (`Retry-After`), when it did. */
    __publicField(this, "retryAfterSecs");
    this.name = "ApiError";
    this.status = status;
    this.code = code;
    this.retryAfterSecs = retryAfterSecs;
  }
  /** Whether trying again later may succeed (network trouble, 429, 503). */
  get retryable() {
    return this.status === 0 || this.status === 429 || this.status === 503 || this.status >= 500;
  }
};

// src/sdk/http.ts
function apiUrl(baseUrl, path) {
  return baseUrl.replace(/\/+$/, "") + path;
}
function newIdempotencyKey() {
  const c = globalThis.crypto;
  if (c && typeof c.randomUUID === "function") return c.randomUUID();
  let key = "";
  for (let i = 0; i < 32; i++) key += Math.floor(Math.random() * 16).toString(16);
  return key;
}
async function readAnswer(response) {
  const text = await response.text();
  let body = void 0;
  try {
    body = text ? JSON.parse(text) : void 0;
  } catch {
    body = void 0;
  }
  if (response.ok) return body;
  const error = body?.error;
  const retryAfter = Number(response.headers.get("retry-after"));
  throw new ApiError(
    response.status,
    error?.code ?? "http_" + response.status,
    error?.message ?? response.statusText ?? "request failed",
    Number.isFinite(retryAfter) && retryAfter > 0 ? retryAfter : void 0
  );
}
async function request(fetchFn, url, init) {
  try {
    return await fetchFn(url, init);
  } catch (error) {
    if (error?.name === "AbortError") throw error;
    throw new ApiError(0, "network", String(error?.message ?? error));
  }
}
function authHeaders(token, json) {
  const headers = {};
  if (token) headers["Authorization"] = "Bearer " + token;
  if (json) headers["Content-Type"] = "application/json";
  return headers;
}
function sleep(ms, signal) {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve();
    const timer = setTimeout(done, ms);
    function done() {
      clearTimeout(timer);
      signal?.removeEventListener("abort", done);
      resolve();
    }
    signal?.addEventListener("abort", done);
  });
}

// src/sdk/live.ts
var SEEN_IDS = 4096;
var CODE_STATUS = {
  unauthorized: 401,
  forbidden: 403,
  banned: 403,
  muted: 403,
  not_found: 404,
  idempotency_conflict: 409,
  payload_too_large: 413,
  rate_limited: 429,
  unavailable: 503
};
var LiveClient = class extends Emitter {
  constructor(options) {
    super();
    /** The last cursor received: where a resume starts. */
    __publicField(this, "cursor");
    __publicField(this, "options");
    __publicField(this, "backoff");
    __publicField(this, "fetchFn");
    __publicField(this, "state", "idle");
    __publicField(this, "transport", null);
    /** Bumped whenever the current connection is given up: stale handlers check it. */
    __publicField(this, "generation", 0);
    __publicField(this, "ws", null);
    __publicField(this, "wsHello", false);
    __publicField(this, "wsFailures", 0);
    __publicField(this, "usePolling", false);
    __publicField(this, "probe", null);
    __publicField(this, "probeDelayMs");
    __publicField(this, "timer", null);
    /** A socket that neither opens nor fails (a proxy holding it) is given up. */
    __publicField(this, "helloTimer", null);
    __publicField(this, "probeTimer", null);
    __publicField(this, "pollAbort", null);
    __publicField(this, "pending", /* @__PURE__ */ new Map());
    /** The socket each pending send went out on (its close fails them). */
    __publicField(this, "pendingSocket", /* @__PURE__ */ new Map());
    __publicField(this, "nextRef", 0);
    __publicField(this, "seen", /* @__PURE__ */ new Set());
    __publicField(this, "seenOrder", []);
    this.options = options;
    this.cursor = options.cursor;
    this.backoff = new Backoff(options.backoff);
    this.fetchFn = options.fetch ?? ((...args) => fetch(...args));
    this.usePolling = options.transport === "polling";
    this.probeDelayMs = options.wsRetryFromPollingMs ?? 3e4;
  }
  /** The connection state and the transport in use. */
  get status() {
    return { state: this.state, transport: this.transport };
  }
  /** Starts receiving (once; later calls do nothing until {@link close}). */
  connect() {
    if (this.state !== "idle" && this.state !== "closed") return;
    this.setState("connecting", null);
    this.start();
  }
  /**
   * Drops the current connection or wait and opens one new connection now
   * (a "reconnect" button): exactly one, however often it is called while
   * that one is opening.
   */
  reconnectNow() {
    if (this.state === "connecting" && this.ws && !this.wsHello) return;
    this.backoff.reset();
    this.wsFailures = 0;
    this.usePolling = this.options.transport === "polling";
    this.setState("connecting", this.transport);
    this.start();
  }
  /** Stops everything; pending sends fail with code `closed`. */
  close() {
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
  async send(text, options = {}) {
    const body = { text, ...options, idempotency_key: newIdempotencyKey() };
    const attempts = Math.max(1, this.options.sendAttempts ?? 4);
    const backoff = new Backoff({ initialMs: 300, maxMs: 5e3 });
    let lastError;
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
  abandon() {
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
  start() {
    if (this.usePolling) this.startPolling(false);
    else this.openSocket();
  }
  socketUrl() {
    let base = this.options.baseUrl ?? "";
    if (!base) {
      const loc = globalThis.location;
      base = loc ? loc.origin : "";
    }
    const ws = base.replace(/^http(s?):/i, "ws$1:").replace(/\/+$/, "");
    const query = [];
    if (this.cursor) query.push("cursor=" + encodeURIComponent(this.cursor));
    if (this.options.token) query.push("token=" + encodeURIComponent(this.options.token));
    return `${ws}/v1/rooms/${encodeURIComponent(this.options.room)}/ws${query.length ? "?" + query.join("&") : ""}`;
  }
  newSocket() {
    const Ctor = this.options.WebSocket ?? globalThis.WebSocket;
    if (!Ctor) return null;
    try {
      const ws = new Ctor(this.socketUrl());
      this.emit("connection", { transport: "websocket" });
      return ws;
    } catch {
      return null;
    }
  }
  openSocket() {
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
    }, this.options.helloTimeoutMs ?? 1e4);
    this.setState("connecting", "websocket");
  }
  clearHelloTimer() {
    if (this.helloTimer) clearTimeout(this.helloTimer);
    this.helloTimer = null;
  }
  wire(ws, generation) {
    ws.onmessage = (event) => {
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
    };
  }
  onSocketMessage(data) {
    let msg;
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
        this.deliver(Array.isArray(msg.items) ? msg.items : [], msg.cursor);
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
          const err = msg.error ?? {};
          const code = err.code ?? "error";
          pending.reject(new ApiError(CODE_STATUS[code] ?? 400, code, err.message ?? code));
        }
        break;
      }
      default:
        break;
    }
  }
  onSocketClosed(generation, hadHello) {
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
  startPolling(catchUp) {
    this.abandon();
    const generation = this.generation;
    this.setState("polling", "polling");
    if (!catchUp) this.scheduleProbe();
    void this.pollLoop(generation, catchUp);
  }
  async pollLoop(generation, catchUp) {
    const limit = this.options.pollLimit ?? 500;
    while (generation === this.generation) {
      const abort = new AbortController();
      this.pollAbort = abort;
      const query = [`limit=${limit}`];
      if (this.cursor) query.push("cursor=" + encodeURIComponent(this.cursor));
      if (!catchUp && this.cursor) query.push(`wait_ms=${this.options.pollWaitMs ?? 2e4}`);
      const url = apiUrl(
        this.options.baseUrl ?? "",
        `/v1/rooms/${encodeURIComponent(this.options.room)}/danmaku?${query.join("&")}`
      );
      let delayMs;
      try {
        const response = await request(this.fetchFn, url, {
          headers: authHeaders(this.options.token, false),
          signal: abort.signal
        });
        const body = await readAnswer(
          response
        );
        if (generation !== this.generation) return;
        this.backoff.reset();
        if (this.state !== "polling") this.setState("polling", "polling");
        if (Array.isArray(body.deleted) && body.deleted.length) this.emit("delete", { ids: body.deleted.map(String) });
        this.deliver(body.items ?? [], body.cursor);
        delayMs = Math.max(0, Number(body.next_poll_ms ?? 1e3));
        if (catchUp && delayMs > 0) {
          this.openSocket();
          return;
        }
      } catch (error) {
        if (generation !== this.generation) return;
        const apiError = error instanceof ApiError ? error : new ApiError(0, "network", String(error));
        this.emit("error", apiError);
        delayMs = Math.max(this.backoff.next(), (apiError.retryAfterSecs ?? 0) * 1e3);
        this.setState("reconnecting", "polling", delayMs);
      }
      await sleep(delayMs, abort.signal);
    }
  }
  /** While polling, tries a WebSocket now and then; switches once it says hello. */
  scheduleProbe() {
    if ((this.options.transport ?? "auto") !== "auto") return;
    this.stopProbe();
    this.probeTimer = setTimeout(() => this.runProbe(), this.probeDelayMs);
  }
  stopProbe() {
    if (this.probeTimer) clearTimeout(this.probeTimer);
    this.probeTimer = null;
    if (this.probe) closeQuietly(this.probe);
    this.probe = null;
  }
  runProbe() {
    this.probeTimer = null;
    if (!this.usePolling || this.state === "closed") return;
    const probe = this.newSocket();
    if (!probe) return this.scheduleProbe();
    this.probe = probe;
    probe.onmessage = (event) => {
      if (this.probe !== probe) return;
      let type;
      try {
        type = JSON.parse(String(event.data)).type;
      } catch {
        return;
      }
      if (type !== "hello") return;
      this.probe = null;
      this.usePolling = false;
      this.probeDelayMs = this.options.wsRetryFromPollingMs ?? 3e4;
      this.abandon();
      const generation = this.generation;
      this.ws = probe;
      this.wire(probe, generation);
      this.onSocketMessage(String(event.data));
    };
    probe.onclose = () => {
      if (this.probe !== probe) return;
      this.probe = null;
      this.probeDelayMs = Math.min(this.probeDelayMs * 2, 5 * 6e4);
      this.scheduleProbe();
    };
  }
  // ---- delivery and sends --------------------------------------------------
  deliver(items, cursor) {
    if (typeof cursor === "string") this.cursor = cursor;
    const fresh = [];
    for (const item of items) {
      const id = String(item.id);
      if (this.seen.has(id)) continue;
      this.seen.add(id);
      this.seenOrder.push(id);
      if (this.seenOrder.length > SEEN_IDS) this.seen.delete(this.seenOrder.shift());
      fresh.push(item);
    }
    if (fresh.length) this.emit("batch", { items: fresh, cursor: this.cursor ?? "" });
  }
  sendOverSocket(ws, body) {
    const ref = `s${++this.nextRef}`;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(ref);
        this.pendingSocket.delete(ref);
        reject(new ApiError(0, "timeout", "no answer to the send"));
      }, this.options.ackTimeoutMs ?? 5e3);
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
  failPendingOn(ws) {
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
  async sendOverHttp(body) {
    const url = apiUrl(this.options.baseUrl ?? "", `/v1/rooms/${encodeURIComponent(this.options.room)}/danmaku`);
    const response = await request(this.fetchFn, url, {
      method: "POST",
      headers: authHeaders(this.options.token, true),
      body: JSON.stringify(body)
    });
    const answer = await readAnswer(response);
    return { id: String(answer.id) };
  }
  setState(state, transport, delayMs) {
    this.state = state;
    this.transport = transport;
    this.emit("state", delayMs === void 0 ? { state, transport } : { state, transport, delayMs });
  }
};
function isTransient(error) {
  return error.status === 0 || error.status >= 500;
}
function closeQuietly(ws) {
  ws.onmessage = null;
  ws.onclose = null;
  ws.onerror = null;
  try {
    ws.close();
  } catch {
  }
}

// src/sdk/replay.ts
var SEGMENT_MS = 36e4;
var ReplayClient = class _ReplayClient extends Emitter {
  constructor(options) {
    super();
    /** The session, once {@link load} answered. */
    __publicField(this, "session");
    __publicField(this, "options");
    __publicField(this, "fetchFn");
    __publicField(this, "segments", /* @__PURE__ */ new Map());
    __publicField(this, "loading", /* @__PURE__ */ new Map());
    __publicField(this, "versions", /* @__PURE__ */ new Map());
    __publicField(this, "playheadSegment", 0);
    this.options = options;
    this.fetchFn = options.fetch ?? ((...args) => fetch(...args));
  }
  /** `GET /v1/vods/{vod}`: the session (with `segments` versions when listed). */
  async load() {
    const response = await request(this.fetchFn, this.url(""), {
      headers: authHeaders(this.options.token, false)
    });
    const session = await readAnswer(response);
    this.session = session;
    this.versions = new Map((session.segments ?? []).map((s) => [s.n, s.version]));
    return session;
  }
  /** The recording's length so far, ms (its whole length once ended). */
  durationMs(now = Date.now()) {
    const s = this.session;
    if (!s) return 0;
    return Math.max(0, (s.ended_at ?? now) - s.started_at);
  }
  /** Which segment holds `offsetMs`. */
  static segmentOf(offsetMs) {
    return Math.max(0, Math.floor(offsetMs / SEGMENT_MS));
  }
  /** The segments held in memory, ascending. */
  loadedSegments() {
    return [...this.segments.keys()].sort((a, b) => a - b);
  }
  /**
   * Moves the playhead: loads its segment (awaited) and the next (not
   * awaited), releases those outside `[n - keepBehind, n + prefetchAhead]`.
   */
  async setPlayhead(offsetMs) {
    const n = _ReplayClient.segmentOf(offsetMs);
    this.playheadSegment = n;
    const behind = this.options.keepBehind ?? 1;
    const ahead = this.options.prefetchAhead ?? 1;
    for (const held of [...this.segments.keys()]) {
      if (held < n - behind || held > n + ahead) {
        this.segments.delete(held);
        this.emit("release", { n: held });
      }
    }
    for (let k = 1; k <= ahead; k++) void this.ensure(n + k).catch(() => void 0);
    await this.ensure(n);
  }
  /**
   * The loaded items with `fromMs < offset_ms <= toMs`, in (offset, id) order.
   * Items of segments not loaded (yet) are simply absent.
   */
  itemsBetween(fromMs, toMs) {
    const out = [];
    if (toMs <= fromMs) return out;
    const first = _ReplayClient.segmentOf(Math.max(0, fromMs));
    const last = _ReplayClient.segmentOf(toMs);
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
  async ensure(n) {
    if (n < 0 || this.segments.has(n) || !this.mayHold(n)) return;
    let pending = this.loading.get(n);
    if (!pending) {
      pending = this.fetchSegment(n, null).finally(() => this.loading.delete(n));
      this.loading.set(n, pending);
    }
    const segment = await pending;
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
  async revalidate(n) {
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
  async density(buckets) {
    const counts = new Array(Math.max(1, buckets)).fill(0);
    const duration = this.durationMs();
    if (duration <= 0) return counts;
    const last = _ReplayClient.segmentOf(duration);
    for (let n = 0; n <= last; n++) {
      if (!this.mayHold(n)) continue;
      const segment = this.segments.get(n) ?? await this.fetchSegment(n, null).catch(() => null);
      for (const item of segment?.items ?? []) {
        const b = Math.min(counts.length - 1, Math.floor(item.offset_ms / duration * counts.length));
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
  async post(text, offsetMs, options = {}) {
    const body = JSON.stringify({
      text,
      ...options,
      offset_ms: Math.max(0, Math.round(offsetMs)),
      idempotency_key: newIdempotencyKey()
    });
    const backoff = new Backoff({ initialMs: 300, maxMs: 5e3 });
    let lastError;
    for (let attempt = 0; attempt < 4; attempt++) {
      try {
        const response = await request(this.fetchFn, this.url("/danmaku"), {
          method: "POST",
          headers: authHeaders(this.options.token, true),
          body
        });
        const answer = await readAnswer(response);
        return { id: String(answer.id) };
      } catch (error) {
        if (!(error instanceof ApiError) || !(error.status === 0 || error.status >= 500)) throw error;
        lastError = error;
        await sleep(backoff.next());
      }
    }
    throw lastError;
  }
  /** Forgets the segment list's versions after a post, so the next loads see it. */
  async refreshSession() {
    await this.load();
    for (const n of this.loadedSegments()) await this.revalidate(n).catch(() => false);
  }
  // ---- internals -----------------------------------------------------------
  url(path) {
    return apiUrl(this.options.baseUrl ?? "", `/v1/vods/${encodeURIComponent(this.options.vod)}${path}`);
  }
  /** Whether segment `n` can hold comments, as far as the session says. */
  mayHold(n) {
    const s = this.session;
    if (!s) return true;
    if (s.ended_at !== null && n * SEGMENT_MS > this.durationMs()) return false;
    if (s.segments && s.ended_at !== null) return this.versions.has(n);
    return true;
  }
  /** `null` when `previous` is still current (304). */
  async fetchSegment(n, previous) {
    const version = this.versions.get(n) ?? null;
    const path = version ? `/segments/${n}?v=${encodeURIComponent(version)}` : `/segments/${n}`;
    const headers = authHeaders(this.options.token, false);
    if (previous?.etag && previous.version === version) headers["If-None-Match"] = previous.etag;
    let response;
    try {
      response = await request(this.fetchFn, this.url(path), { headers });
    } catch (error) {
      if (error instanceof ApiError) this.emit("error", error);
      throw error;
    }
    if (response.status === 304 && previous) return previous;
    const body = await readAnswer(response);
    const items = (body.items ?? []).slice().sort(byOffsetThenId);
    return { n, items, etag: response.headers.get("etag"), version };
  }
};
function byOffsetThenId(a, b) {
  if (a.offset_ms !== b.offset_ms) return a.offset_ms - b.offset_ms;
  if (a.id.length !== b.id.length) return a.id.length - b.id.length;
  return a.id < b.id ? -1 : a.id > b.id ? 1 : 0;
}
function lowerBound(items, offsetMs) {
  let lo = 0;
  let hi = items.length;
  while (lo < hi) {
    const mid = lo + hi >>> 1;
    if (items[mid].offset_ms <= offsetMs) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

// src/sdk/color.ts
function colorToCss(color) {
  const value = Number.isInteger(color) && color >= 0 && color <= 16777215 ? color : 16777215;
  return "#" + value.toString(16).padStart(6, "0");
}
function cssToColor(css) {
  let hex = css.trim().replace(/^#/, "");
  if (/^[0-9a-f]{3}$/i.test(hex)) hex = hex.replace(/./g, (c) => c + c);
  return /^[0-9a-f]{6}$/i.test(hex) ? parseInt(hex, 16) : 16777215;
}
export {
  ApiError,
  Backoff,
  LiveClient,
  ReplayClient,
  SEGMENT_MS,
  colorToCss,
  cssToColor
};
