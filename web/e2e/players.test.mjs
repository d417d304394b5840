// DPlayer 1.27, ArtPlayer 5.4 + artplayer-plugin-danmuku and
// weizhenye/Danmaku on a page of ANOTHER origin load an ended VOD's comments
// at the right times (CORS), and DPlayer's send is stored. "Right" is from
// 0.25 s early (ArtPlayer's plugin shows comments up to ~0.09 s ahead) to
// 0.75 s late (measured: DPlayer 0.008 s, weizhenye/Danmaku 0.017 s late).
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { launchBrowser, newPage, Server, silentWav, sleep, staticServer, until, WEB } from "./lib.mjs";

const OFFSETS = [1000, 2000, 3000, 4000];
const HOSTILE = "<img src=x onerror=alert(1)>";
let server;
let site;
let browser;
let viewer;
const vod = "players-vod";

before(async () => {
  server = await new Server().start();
  const service = server.token("site-backend", "service");
  viewer = server.token("viewer-1");
  await server.api("POST", "/v1/rooms/players/sessions", { token: service, body: { vod } });
  await sleep(5500);
  await server.api("POST", `/v1/vods/${vod}/end`, { token: service });
  for (const offset of OFFSETS) {
    await server.api("POST", `/v1/vods/${vod}/danmaku`, {
      token: viewer,
      body: { text: "c" + offset, offset_ms: offset, color: offset === 2000 ? 0x00ff00 : 0xffffff },
    });
  }
  await server.api("POST", `/v1/vods/${vod}/danmaku`, { token: viewer, body: { text: HOSTILE, offset_ms: 2500 } });
  await until(async () => {
    const body = await server.api("GET", `/dplayer/v3/?id=${vod}`);
    return body.data.length === OFFSETS.length + 1;
  }, "the VOD's comments are served", 20_000);

  const modules = join(WEB, "node_modules");
  site = await staticServer({
    "/player.html": join(WEB, "e2e/player.html"),
    "/player.mjs": join(WEB, "e2e/player.mjs"),
    "/DPlayer.min.js": join(modules, "dplayer/dist/DPlayer.min.js"),
    "/artplayer.js": join(modules, "artplayer/dist/artplayer.js"),
    "/artplayer-plugin-danmuku.js": join(modules, "artplayer-plugin-danmuku/dist/artplayer-plugin-danmuku.js"),
    "/danmaku.js": join(modules, "danmaku/dist/danmaku.js"),
    "/silence.wav": { body: silentWav(8), type: "audio/wav" },
  });
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await site?.close();
  await server?.dispose();
});

async function play(kind) {
  const errors = [];
  const page = await newPage(browser, errors);
  const query = new URLSearchParams({ kind, api: server.url, vod, token: viewer });
  await page.goto(`${site.url}/player.html?${query}`);
  await page.waitForFunction(() => window.__seen && window.__seen.length >= 5, null, { timeout: 20_000 });
  const seen = await page.evaluate(() => window.__seen);
  const injected = await page.evaluate(() => document.querySelectorAll("#player img").length);
  return { page, seen, errors, injected };
}

function checkTimes(kind, seen) {
  for (const offset of OFFSETS) {
    const entry = seen.find((s) => s.text === "c" + offset);
    assert.ok(entry, `${kind}: c${offset} shown (saw ${JSON.stringify(seen)})`);
    const late = entry.t - offset / 1000;
    console.log(`${kind}: c${offset} shown ${late.toFixed(3)} s after its offset`);
    assert.ok(late >= -0.25 && late <= 0.75, `${kind}: c${offset} at ${entry.t}s (${late.toFixed(3)} s late)`);
  }
  const hostile = seen.find((s) => s.text === HOSTILE);
  assert.ok(hostile, `${kind}: the hostile text is shown as text`);
}

test("DPlayer loads the comments at their times and its send is stored", async () => {
  const { page, seen, errors, injected } = await play("dplayer");
  checkTimes("dplayer", seen);
  assert.equal(injected, 0, "no element injected");
  await page.evaluate(() => window.__send("sent-by-dplayer"));
  await until(async () => {
    const body = await server.api("GET", `/dplayer/v3/?id=${vod}`);
    return body.data.some((d) => d[4] === "sent-by-dplayer");
  }, "DPlayer's send stored", 15_000);
  assert.deepEqual(errors, []);
  await page.close();
});

test("ArtPlayer + artplayer-plugin-danmuku loads the Bilibili XML with zero-padded colors", async () => {
  const { page, seen, errors, injected } = await play("artplayer");
  checkTimes("artplayer", seen);
  assert.equal(injected, 0, "no element injected");
  const green = seen.find((s) => s.text === "c2000");
  assert.equal(green.color, "rgb(0, 255, 0)", "0x00ff00 stays green");
  assert.deepEqual(errors, []);
  await page.close();
});

test("weizhenye/Danmaku loads a segment", async () => {
  const { page, seen, errors, injected } = await play("danmaku");
  checkTimes("danmaku", seen);
  assert.equal(injected, 0, "no element injected");
  assert.deepEqual(errors, []);
  await page.close();
});
