// The replay page in Chromium against the real server: comments at their
// offsets while the clock plays, a seek, the heatmap, a post at the
// playhead, hostile text literal.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { launchBrowser, newPage, recordShownComments, Server, sleep, until } from "./lib.mjs";

const OFFSETS = [1000, 2000, 3000, 4000];
const HOSTILE = "<img src=x onerror=alert(1)>";
const vod = "browser-vod";
let server;
let browser;
let page;
const errors = [];

before(async () => {
  server = await new Server().start();
  const service = server.token("site-backend", "service");
  const viewer = server.token("viewer-1");
  await server.api("POST", "/v1/rooms/replay-room/sessions", { token: service, body: { vod } });
  await sleep(6000);
  await server.api("POST", `/v1/vods/${vod}/end`, { token: service });
  for (const offset of OFFSETS) {
    await server.api("POST", `/v1/vods/${vod}/danmaku`, { token: viewer, body: { text: "c" + offset, offset_ms: offset } });
  }
  await server.api("POST", `/v1/vods/${vod}/danmaku`, { token: viewer, body: { text: HOSTILE, offset_ms: 2500 } });
  await until(async () => {
    const body = await server.api("GET", `/v1/vods/${vod}/segments/0`);
    return body.items.length === OFFSETS.length + 1;
  }, "the VOD's comments are served", 20_000);
  browser = await launchBrowser();
  page = await newPage(browser, errors);
  // Record when each comment appears: the page's playhead at that moment.
  await recordShownComments(page);
  await page.goto(`${server.url}/vods/${vod}`);
  await page.waitForSelector("#heat[data-total]", { timeout: 15_000 });
});

after(async () => {
  await browser?.close();
  await server?.dispose();
});

test("comments appear at their offsets while the clock plays; the heatmap counts them", async () => {
  assert.equal(await page.getAttribute("#heat", "data-total"), String(OFFSETS.length + 1));
  await page.click("#play");
  await page.waitForFunction(() => window.__seen.length >= 5, null, { timeout: 15_000 });
  const seen = await page.evaluate(() => window.__seen);
  for (const offset of OFFSETS) {
    const s = seen.find((e) => e.text === "c" + offset);
    assert.ok(s, `c${offset} shown`);
    const late = s.playhead - offset;
    assert.ok(late >= -20 && late <= 300, `c${offset} at playhead ${s.playhead} (${late} ms late)`);
  }
  const hostile = seen.find((e) => e.text === HOSTILE);
  assert.ok(hostile, "the hostile text shows as text");
  assert.equal(await page.evaluate(() => document.querySelectorAll("main img").length), 0);
  assert.deepEqual(errors, []);
});

test("a seek clears the stage and plays from the new place", async () => {
  // Back to about 40 % (2.4 s of 6 s): the 3 s and 4 s comments show again.
  await page.evaluate(() => {
    window.__seen = [];
    const seek = document.getElementById("seek");
    seek.value = "400";
    seek.dispatchEvent(new Event("input"));
  });
  if ((await page.textContent("#play")) === "play") await page.click("#play");
  await page.waitForFunction(() => window.__seen.some((e) => e.text === "c3000"), null, { timeout: 10_000 });
  const seen = await page.evaluate(() => window.__seen);
  assert.ok(!seen.some((e) => e.text === "c1000"), "nothing before the seek point");
});

test("a post lands at the playhead", async () => {
  await page.evaluate(() => {
    const seek = document.getElementById("seek");
    seek.value = "300";
    seek.dispatchEvent(new Event("input"));
  });
  if ((await page.textContent("#play")) === "pause") await page.click("#play");
  await sleep(300);
  const at = Number(await page.evaluate(() => document.body.dataset.playhead));
  await page.fill("#text", "posted at the playhead");
  await page.click("#send-button");
  await page.waitForFunction(() => document.getElementById("send-status").textContent.startsWith("posted"), null, {
    timeout: 10_000,
  });
  const item = await until(async () => {
    const body = await server.api("GET", `/v1/vods/${vod}/danmaku?from_ms=0&to_ms=360000`);
    return body.items.find((i) => i.text === "posted at the playhead");
  }, "the post is stored", 15_000);
  assert.ok(Math.abs(item.offset_ms - at) <= 100, `stored at ${item.offset_ms}, playhead ${at}`);
  assert.deepEqual(errors, []);
});

// Segment 1 after a seek: e2e/vod_long.test.mjs, on a 12-minute recording
// seeded into the data dir (the API cannot start a session in the past).
