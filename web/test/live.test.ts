import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { LiveClient } from "../src/sdk/live.js";
import type { Item } from "../src/sdk/types.js";
import { FakeSocket, fakeFetch, json } from "./fakes.js";

function item(id: string, text = "t" + id): Item {
  return { id, room: "r1", user: "u", ts: 1, kind: "comment", mode: "scroll", color: 0xffffff, text };
}

function client(overrides: Record<string, unknown> = {}, fetchFn?: typeof fetch) {
  const live = new LiveClient({
    baseUrl: "http://api.test",
    room: "r1",
    WebSocket: FakeSocket as unknown as new (url: string) => WebSocket,
    fetch: fetchFn ?? (fakeFetch(() => json({})).fn),
    backoff: { initialMs: 100, maxMs: 1000, random: () => 0 },
    ...overrides,
  });
  const items: string[] = [];
  const states: string[] = [];
  live.on("batch", (b) => items.push(...b.items.map((i) => i.id)));
  live.on("state", (s) => states.push(s.state));
  return { live, items, states };
}

beforeEach(() => {
  vi.useFakeTimers();
  FakeSocket.reset();
});
afterEach(() => {
  vi.useRealTimers();
});

describe("LiveClient over WebSocket", () => {
  it("connects by room, delivers batches and resumes from the last cursor", async () => {
    const { live, items, states } = client();
    live.connect();
    const first = FakeSocket.last();
    expect(first.url).toBe("ws://api.test/v1/rooms/r1/ws");
    first.push({ type: "hello", room: "r1", cursor: "c0" });
    first.push({ type: "batch", cursor: "c2", items: [item("1"), item("2")] });
    expect(items).toEqual(["1", "2"]);
    expect(states).toContain("open");

    first.drop();
    expect(live.status.state).toBe("reconnecting");
    expect(FakeSocket.instances.length).toBe(1);
    await vi.advanceTimersByTimeAsync(50);
    const second = FakeSocket.last();
    expect(FakeSocket.instances.length).toBe(2);
    expect(second.url).toBe("ws://api.test/v1/rooms/r1/ws?cursor=c2");
    second.push({ type: "hello", room: "r1", cursor: "c2" });
    // The same item again (a resume overlapping) is not delivered twice.
    second.push({ type: "batch", cursor: "c3", items: [item("2"), item("3")] });
    expect(items).toEqual(["1", "2", "3"]);
    live.close();
  });

  it("backs off exponentially while failing and resets after a hello", async () => {
    const { live } = client({ transport: "websocket" });
    live.connect();
    const delays: number[] = [];
    live.on("state", (s) => s.delayMs !== undefined && delays.push(s.delayMs));
    for (let i = 0; i < 5; i++) {
      FakeSocket.last().drop();
      await vi.advanceTimersByTimeAsync(1000);
    }
    expect(delays).toEqual([50, 100, 200, 400, 500]);
    FakeSocket.last().push({ type: "hello", cursor: "c" });
    FakeSocket.last().drop();
    expect(delays[delays.length - 1]).toBe(50);
    live.close();
  });

  it("a replaced socket's late close schedules nothing; reconnectNow opens exactly one", async () => {
    const { live } = client();
    live.connect();
    const first = FakeSocket.last();
    first.push({ type: "hello", cursor: "c0" });
    live.reconnectNow();
    live.reconnectNow();
    live.reconnectNow();
    expect(FakeSocket.instances.length).toBe(2);
    // The old socket's close arrives late: ignored.
    first.drop();
    await vi.advanceTimersByTimeAsync(10_000);
    expect(FakeSocket.instances.length).toBe(2);
    live.close();
  });

  it("emits delete and online, and gap resumes from its cursor by polling", async () => {
    const polls: string[] = [];
    const fetcher = fakeFetch(({ url }) => {
      polls.push(url);
      return polls.length === 1
        ? json({ items: [item("9")], cursor: "g2", next_poll_ms: 0 })
        : json({ items: [], cursor: "g2", next_poll_ms: 1000 });
    });
    const { live, items } = client({}, fetcher.fn);
    const deleted: string[] = [];
    const online: number[] = [];
    live.on("delete", (d) => deleted.push(...d.ids));
    live.on("online", (o) => online.push(o.count));
    live.connect();
    const ws = FakeSocket.last();
    ws.push({ type: "hello", cursor: "c0" });
    ws.push({ type: "delete", ids: ["5"] });
    ws.push({ type: "online", count: 2 });
    expect(deleted).toEqual(["5"]);
    expect(online).toEqual([2]);

    ws.push({ type: "gap", cursor: "g1" });
    await vi.advanceTimersByTimeAsync(10);
    expect(polls[0]).toBe("http://api.test/v1/rooms/r1/danmaku?limit=500&cursor=g1");
    expect(items).toEqual(["9"]);
    // Caught up (next_poll_ms > 0): back on a WebSocket from the new cursor.
    expect(polls.length).toBe(2);
    expect(FakeSocket.last().url).toBe("ws://api.test/v1/rooms/r1/ws?cursor=g2");
    live.close();
  });
});

describe("LiveClient polling fallback", () => {
  it("a WebSocket that never says hello counts as failed and polling takes over", async () => {
    const fetcher = fakeFetch(() => json({ items: [], cursor: "p", next_poll_ms: 1000 }));
    const { live } = client({ helloTimeoutMs: 3000, wsRetryFromPollingMs: 600_000 }, fetcher.fn);
    live.connect();
    await vi.advanceTimersByTimeAsync(3000);
    expect(FakeSocket.instances[0].closedByClient).toBe(true);
    expect(live.status.state).toBe("reconnecting");
    await vi.advanceTimersByTimeAsync(50);
    expect(FakeSocket.instances.length).toBe(2);
    await vi.advanceTimersByTimeAsync(3000);
    expect(live.status.transport).toBe("polling");
    expect(fetcher.calls.length).toBeGreaterThan(0);
    live.close();
  });

  it("polls when WebSockets fail before hello, honours next_poll_ms, and goes back", async () => {
    const polls: string[] = [];
    const fetcher = fakeFetch(({ url }) => {
      polls.push(url);
      return json({ items: [item(String(polls.length))], cursor: "p" + polls.length, next_poll_ms: 3000 });
    });
    const { live, items } = client({ wsRetryFromPollingMs: 60_000 }, fetcher.fn);
    live.connect();
    FakeSocket.last().drop();
    await vi.advanceTimersByTimeAsync(50);
    FakeSocket.last().drop();
    expect(live.status.transport).toBe("polling");
    await vi.advanceTimersByTimeAsync(1);
    expect(polls.length).toBe(1);
    await vi.advanceTimersByTimeAsync(2900);
    expect(polls.length).toBe(1);
    await vi.advanceTimersByTimeAsync(200);
    expect(polls.length).toBe(2);
    expect(polls[1]).toContain("cursor=p1");
    expect(polls[1]).toContain("wait_ms=20000");
    expect(items).toEqual(["1", "2"]);

    // The probe WebSocket works: it takes over and polling stops.
    await vi.advanceTimersByTimeAsync(60_000);
    const probe = FakeSocket.last();
    expect(FakeSocket.instances.length).toBe(3);
    const before = polls.length;
    probe.push({ type: "hello", cursor: "p9" });
    expect(live.status).toEqual({ state: "open", transport: "websocket" });
    await vi.advanceTimersByTimeAsync(30_000);
    expect(polls.length).toBe(before);
    live.close();
  });
});

describe("LiveClient sends", () => {
  it("acks by ref over the WebSocket", async () => {
    const { live } = client({ token: "tok" });
    live.connect();
    const ws = FakeSocket.last();
    expect(ws.url).toContain("token=tok");
    ws.push({ type: "hello", cursor: "c0" });
    const sent = live.send("hi", { mode: "top", color: 0xff0000 });
    await vi.advanceTimersByTimeAsync(0);
    const msg = ws.sent[0];
    expect(msg).toMatchObject({ type: "send", text: "hi", mode: "top", color: 0xff0000 });
    expect(typeof msg.idempotency_key).toBe("string");
    ws.push({ type: "ack", ref: msg.ref, id: "42" });
    await expect(sent).resolves.toEqual({ id: "42" });
    live.close();
  });

  it("retries by POST with the same idempotency key when the socket closes before the ack", async () => {
    const fetcher = fakeFetch(({ init }) =>
      init.method === "POST" ? json({ id: "77" }, 202) : json({ items: [], cursor: "c", next_poll_ms: 1000 }),
    );
    const { live } = client({ token: "tok", transport: "websocket" }, fetcher.fn);
    live.connect();
    const ws = FakeSocket.last();
    ws.push({ type: "hello", cursor: "c0" });
    const sent = live.send("hi");
    await vi.advanceTimersByTimeAsync(0);
    const key = ws.sent[0].idempotency_key;
    ws.drop();
    await vi.advanceTimersByTimeAsync(1000);
    await expect(sent).resolves.toEqual({ id: "77" });
    const post = fetcher.calls.find((c) => c.init.method === "POST")!;
    expect(post.url).toBe("http://api.test/v1/rooms/r1/danmaku");
    expect(JSON.parse(String(post.init.body)).idempotency_key).toBe(key);
    expect((post.init.headers as Record<string, string>).Authorization).toBe("Bearer tok");
    live.close();
  });

  it("rejects with the server's code and Retry-After", async () => {
    const fetcher = fakeFetch(() =>
      json({ error: { code: "rate_limited", message: "slow down" } }, 429, { "retry-after": "3" }),
    );
    const { live } = client({ token: "tok", transport: "polling" }, fetcher.fn);
    const error = await live.send("hi").catch((e) => e);
    expect(error.code).toBe("rate_limited");
    expect(error.status).toBe(429);
    expect(error.retryAfterSecs).toBe(3);
    expect(fetcher.calls.length).toBe(1);
  });
});
