// The replay page loads segment 1 after a seek (issue 15, item 5): a 12-minute
// ended recording, written into the data dir before the server starts by
// tests/web/browser.rs (replay_page_loads_segment_1_after_a_seek), which sets
// VOD_LONG_DIR: comments at 1 s and 2 s (segment 0) and 401-403 s (segment 1).
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { launchBrowser, newPage, recordShownComments, Server } from "./lib.mjs";

const DIR = process.env.VOD_LONG_DIR;
const vod = "long-vod";
let server;
let browser;
let page;
const errors = [];
const segmentRequests = [];

// Without the seeded directory (`node --test e2e/` alone) the test is reported
// as skipped, never as passed.
const skip = DIR ? false : "needs VOD_LONG_DIR: cargo test --test web replay_page_loads_segment_1_after_a_seek -- --include-ignored";

before(async () => {
  if (skip) return;
  server = await new Server({}, DIR).start();
  const one = await server.api("GET", `/v1/vods/${vod}/segments/1`);
  assert.deepEqual(
    one.items.map((i) => i.text),
    ["at 401000", "at 402000", "at 403000"],
  );
  browser = await launchBrowser();
  page = await newPage(browser, errors);
  page.on("request", (r) => {
    const m = r.url().match(/\/v1\/vods\/long-vod\/segments\/(\d+)/);
    if (m) segmentRequests.push(Number(m[1]));
  });
  await recordShownComments(page);
  await page.goto(`${server.url}/vods/${vod}`);
  await page.waitForSelector("#heat[data-total]", { timeout: 15_000 });
});

after(async () => {
  await browser?.close();
  // Leaves the directory to the Rust test that made it.
  await server?.stop();
});

test("a seek into segment 1 loads it and plays its comments at their offsets", { skip }, async () => {
  // 556 per mille of 720 s = 400.32 s, in segment 1 (360-720 s).
  await page.evaluate(() => {
    window.__seen = [];
    const seek = document.getElementById("seek");
    seek.value = "556";
    seek.dispatchEvent(new Event("input"));
  });
  if ((await page.textContent("#play")) === "play") await page.click("#play");
  await page.waitForFunction(() => window.__seen.some((e) => e.text === "at 403000"), null, { timeout: 15_000 });
  assert.ok(segmentRequests.includes(1), `segment 1 requested (requests: ${segmentRequests})`);
  const seen = await page.evaluate(() => window.__seen);
  for (const offset of [401000, 402000, 403000]) {
    const s = seen.find((e) => e.text === "at " + offset);
    assert.ok(s, `at ${offset} shown`);
    const late = s.playhead - offset;
    assert.ok(late >= -20 && late <= 500, `at ${offset} shown at playhead ${s.playhead} (${late} ms late)`);
  }
  assert.ok(!seen.some((e) => e.text === "at 1000" || e.text === "at 2000"), "nothing of segment 0 after the seek");
  assert.deepEqual(errors, []);
});
