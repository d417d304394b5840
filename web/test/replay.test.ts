import { describe, expect, it } from "vitest";
import { ReplayClient, SEGMENT_MS } from "../src/sdk/replay.js";
import { fakeFetch, json } from "./fakes.js";

function seg(n: number, offsets: number[]) {
  return {
    vod: "v1",
    segment: n,
    items: offsets.map((o, i) => ({
      id: String(n * 1000 + i + 1), vod: "v1", room: "r1", user: "u", ts: 1, kind: "comment",
      mode: "scroll", color: 0xffffff, text: "x", offset_ms: o,
    })),
  };
}

const HOURS_3 = 3 * 3600 * 1000;

function server(withVersions: boolean) {
  return fakeFetch(({ url, init }) => {
    const u = new URL(url);
    if (u.pathname === "/v1/vods/v1") {
      return json({
        vod: "v1", room: "r1", started_at: 0, ended_at: HOURS_3, latency_ms: 0, count: 30,
        ...(withVersions ? { segments: Array.from({ length: 30 }, (_, n) => ({ n, version: "a" + n })) } : {}),
      });
    }
    const m = u.pathname.match(/segments\/(\d+)$/);
    if (m) {
      const n = Number(m[1]);
      const etag = `"e${n}"`;
      if ((init.headers as Record<string, string>)["If-None-Match"] === etag) return new Response(null, { status: 304 });
      const offsets = n * SEGMENT_MS < HOURS_3 ? [n * SEGMENT_MS + 10, n * SEGMENT_MS + 5000] : [];
      return json(seg(n, offsets), 200, { etag });
    }
    return json({ error: { code: "not_found", message: "no" } }, 404);
  });
}

describe("ReplayClient", () => {
  it("loads the playhead's segment, prefetches the next, releases those behind", async () => {
    const s = server(false);
    const replay = new ReplayClient({ baseUrl: "http://api.test", vod: "v1", fetch: s.fn });
    await replay.load();
    await replay.setPlayhead(1000);
    await new Promise((r) => setTimeout(r, 0));
    expect(replay.loadedSegments()).toEqual([0, 1]);
    expect(replay.itemsBetween(0, 20).map((i) => i.offset_ms)).toEqual([10]);
    expect(replay.itemsBetween(10, 5000).map((i) => i.offset_ms)).toEqual([5000]);

    // Play through the whole 3 hours: at most 3 segments held at any time.
    let most = 0;
    for (let t = 0; t < HOURS_3; t += SEGMENT_MS / 2) {
      await replay.setPlayhead(t);
      await new Promise((r) => setTimeout(r, 0));
      most = Math.max(most, replay.loadedSegments().length);
    }
    expect(most).toBeLessThanOrEqual(3);
    // Segment 30 starts at the very end: it may hold comments at exactly the end.
    expect(replay.loadedSegments()).toEqual([28, 29, 30]);
    // Plain URLs without a version list.
    expect(s.calls.some((c) => c.url === "http://api.test/v1/vods/v1/segments/5")).toBe(true);

    // A seek back loads segment 1 again.
    await replay.setPlayhead(SEGMENT_MS + 1);
    expect(replay.loadedSegments()).toContain(1);
    expect(replay.loadedSegments()).not.toContain(29);
  });

  it("uses versioned URLs when the session lists them", async () => {
    const s = server(true);
    const replay = new ReplayClient({ baseUrl: "http://api.test", vod: "v1", fetch: s.fn });
    await replay.load();
    await replay.setPlayhead(0);
    expect(s.calls.map((c) => c.url)).toContain("http://api.test/v1/vods/v1/segments/0?v=a0");
  });

  it("revalidates with If-None-Match and keeps the copy on 304", async () => {
    const s = server(false);
    const replay = new ReplayClient({ baseUrl: "http://api.test", vod: "v1", fetch: s.fn });
    await replay.load();
    await replay.setPlayhead(0);
    expect(await replay.revalidate(0)).toBe(false);
    const last = s.calls[s.calls.length - 1];
    expect((last.init.headers as Record<string, string>)["If-None-Match"]).toBe('"e0"');
  });

  it("posts at an offset with a token and an idempotency key", async () => {
    const s = fakeFetch(() => json({ id: "5" }, 202));
    const replay = new ReplayClient({ baseUrl: "http://api.test", vod: "v1", token: "tok", fetch: s.fn });
    await expect(replay.post("hello", 1234.4, { color: 0xff0000 })).resolves.toEqual({ id: "5" });
    const body = JSON.parse(String(s.calls[0].init.body));
    expect(body).toMatchObject({ text: "hello", offset_ms: 1234, color: 0xff0000 });
    expect(typeof body.idempotency_key).toBe("string");
  });

  it("density counts every segment's comments into buckets", async () => {
    const s = server(false);
    const replay = new ReplayClient({ baseUrl: "http://api.test", vod: "v1", fetch: s.fn });
    await replay.load();
    const counts = await replay.density(30);
    expect(counts.reduce((a, b) => a + b, 0)).toBe(60);
    expect(counts.every((c) => c === 2)).toBe(true);
    expect(replay.loadedSegments()).toEqual([]);
  });
});
