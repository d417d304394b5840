// The home page in Chromium against the real server: the live rooms and the
// recent recordings come from `GET /v1/vods` (no room named in the address,
// none visited before, the demo room off), with their video marks.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { launchBrowser, newPage, Server } from "./lib.mjs";

let server;
let browser;
let page;
const errors = [];

before(async () => {
  server = await new Server().start();
  const service = server.token("site-backend", "service");
  await server.api("POST", "/v1/rooms/home-past/sessions", { token: service, body: { vod: "home-ended" } });
  await server.api("POST", "/v1/vods/home-ended/end", { token: service });
  await server.api("PATCH", "/v1/vods/home-ended", {
    token: service,
    body: { video_url: "https://cdn.example/home-ended.mp4" },
  });
  await server.api("POST", "/v1/rooms/home-live/sessions", {
    token: service,
    body: { vod: "home-now", video_url: "https://cdn.example/home-live.m3u8" },
  });
  await server.api("POST", "/v1/rooms/home-quiet/sessions", { token: service, body: { vod: "home-quiet-now" } });
  browser = await launchBrowser();
  page = await newPage(browser, errors);
  await page.goto(server.url + "/");
  await page.waitForSelector("#live-rooms li, #recent-vods li", { timeout: 15_000 });
  await page.waitForFunction(() => document.querySelectorAll("#recent-vods li").length > 0);
});

after(async () => {
  await browser?.close();
  await server?.dispose();
});

test("the live rooms are listed, newest first, linking to their pages", async () => {
  const live = await page.$$eval("#live-rooms li", (lis) =>
    lis.map((li) => ({ href: li.querySelector("a")?.getAttribute("href"), text: li.textContent })),
  );
  assert.deepEqual(
    live.map((l) => l.href),
    ["/rooms/home-quiet", "/rooms/home-live"],
  );
  assert.match(live[1].text, /live since .*with video/);
  assert.doesNotMatch(live[0].text, /with video/);
});

test("the ended VOD is listed as a recording, linking to its replay page", async () => {
  const recent = await page.$$eval("#recent-vods li", (lis) =>
    lis.map((li) => ({ href: li.querySelector("a")?.getAttribute("href"), text: li.textContent })),
  );
  assert.deepEqual(
    recent.map((r) => r.href),
    ["/vods/home-ended"],
  );
  assert.match(recent[0].text, /room home-past, .*with video/);
  // The live rooms' sessions are not recordings yet.
  assert.ok(!recent.some((r) => r.href === "/vods/home-now"));
  assert.deepEqual(errors, []);
});
