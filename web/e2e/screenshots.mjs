// Regenerates the README's screenshots (web/screenshots/*.png): a server with
// a live room and an ended recording, each page in headless Chromium.
//   DANMAKU_BIN=../target/debug/danmaku node e2e/screenshots.mjs
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { launchBrowser, Server, sleep, WEB } from "./lib.mjs";

const out = join(WEB, "screenshots");
mkdirSync(out, { recursive: true });
const server = await new Server().start();
const browser = await launchBrowser();
try {
  const service = server.token("studio", "service");
  const viewers = ["alice", "bob", "carol", "dave"].map((u) => server.token(u));
  const lines = [
    ["好耶！", "scroll", 0xffffff],
    ["first time here", "scroll", 0x66ccff],
    ["GG", "top", 0xff6699],
    ["what a play", "scroll", 0xffcc00],
    ["8888888", "scroll", 0x00ff00],
    ["subtitles please", "bottom", 0xffffff],
    ["<b>not bold</b>", "scroll", 0xffffff],
    ["弹幕护体", "scroll", 0xff3333],
  ];

  // An ended recording with comments spread over a minute.
  await server.api("POST", "/v1/rooms/lobby/sessions", { token: service, body: { vod: "lobby-vod" } });
  await sleep(8000);
  await server.api("POST", "/v1/vods/lobby-vod/end", { token: service });
  for (let i = 0; i < 40; i++) {
    const [text, mode, color] = lines[i % lines.length];
    await server.api("POST", "/v1/vods/lobby-vod/danmaku", {
      token: viewers[i % viewers.length],
      body: { text, mode, color, offset_ms: Math.round(((i * 37) % 80) * 100) },
    });
  }
  // Live rooms (one with a stream), listed by GET /v1/vods alone.
  await server.api("POST", "/v1/rooms/speedrun/sessions", {
    token: service,
    body: { vod: "speedrun-live", video_url: "https://cdn.example/speedrun/index.m3u8" },
  });
  await server.api("POST", "/v1/rooms/music/sessions", { token: service, body: { vod: "music-live" } });
  await server.api("POST", "/v1/rooms/lobby/sessions", { token: service, body: { vod: "lobby-live" } });
  await sleep(1500);

  const page = await browser.newPage({ viewport: { width: 1100, height: 820 } });
  await page.goto(`${server.url}/`);
  await page.waitForSelector("#recent-vods li a");
  await page.screenshot({ path: join(out, "home.png") });

  await page.goto(`${server.url}/rooms/lobby`);
  await page.waitForSelector('#state[data-state="open"]');
  for (let i = 0; i < 14; i++) {
    const [text, mode, color] = lines[i % lines.length];
    await server.api("POST", "/v1/rooms/lobby/danmaku", { token: viewers[i % viewers.length], body: { text, mode, color } });
    await sleep(180);
  }
  await sleep(1200);
  await page.screenshot({ path: join(out, "room.png") });

  await page.goto(`${server.url}/vods/lobby-vod`);
  await page.waitForSelector("#heat[data-total]");
  await page.click("#play");
  await sleep(4500);
  await page.screenshot({ path: join(out, "vod.png") });
  console.log("screenshots in", out);
} finally {
  await browser.close();
  await server.dispose();
}
