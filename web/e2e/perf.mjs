// Measures the live room page in Chromium: first paint, and frames per
// second while the room receives RATE comments per second for SECONDS
// (sent over HTTP with a service token, exempt from the per-user limits),
// with the largest number of comments on screen at once.
//   DANMAKU_BIN=../target/release/danmaku node e2e/perf.mjs
import { launchBrowser, Server, sleep } from "./lib.mjs";

const RATE = Number(process.env.RATE ?? 500);
const SECONDS = Number(process.env.SECONDS ?? 10);
const room = "perf-room";
const server = await new Server({ DANMAKU_LIMITS__ROOM_PER_SEC: "5000", DANMAKU_LIMITS__ROOM_BURST: "10000" }).start();
const browser = await launchBrowser();
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
  const t0 = Date.now();
  await page.goto(`${server.url}/rooms/${room}`);
  await page.waitForSelector('#state[data-state="open"]');
  const paint = await page.evaluate(() =>
    performance.getEntriesByType("paint").map((e) => [e.name, Math.round(e.startTime)]),
  );
  console.log("load to live:", Date.now() - t0, "ms; paints:", JSON.stringify(paint));

  await page.evaluate(() => {
    window.__frames = 0;
    window.__maxOnScreen = 0;
    window.__longest = 0;
    let last = performance.now();
    const tick = (now) => {
      window.__frames++;
      window.__longest = Math.max(window.__longest, now - last);
      last = now;
      window.__maxOnScreen = Math.max(window.__maxOnScreen, document.querySelectorAll("#comments .dm").length);
      requestAnimationFrame(tick);
    };
    requestAnimationFrame(tick);
  });
  const token = server.token("load", "service");
  const started = Date.now();
  const frames0 = await page.evaluate(() => window.__frames);
  let sent = 0;
  const inflight = new Set();
  while (Date.now() - started < SECONDS * 1000) {
    const due = Math.floor(((Date.now() - started) / 1000) * RATE);
    while (sent < due && inflight.size < 200) {
      const p = fetch(`${server.url}/v1/rooms/${room}/danmaku`, {
        method: "POST",
        headers: { authorization: "Bearer " + token, "content-type": "application/json" },
        body: JSON.stringify({ text: `load comment ${sent}`, color: (sent * 2654435761) % 0xffffff }),
      }).then((r) => r.arrayBuffer());
      inflight.add(p);
      p.finally(() => inflight.delete(p));
      sent++;
    }
    await sleep(5);
  }
  await Promise.allSettled([...inflight]);
  const elapsed = (Date.now() - started) / 1000;
  const stats = await page.evaluate(() => ({ frames: window.__frames, max: window.__maxOnScreen, longest: window.__longest }));
  const logged = await page.evaluate(() => document.querySelectorAll("#log li").length);
  console.log(
    `sent ${sent} in ${elapsed.toFixed(1)} s (${(sent / elapsed).toFixed(0)}/s); ` +
      `fps ${((stats.frames - frames0) / elapsed).toFixed(1)}; longest frame ${stats.longest.toFixed(0)} ms; ` +
      `most on screen ${stats.max}; log lines ${logged}`,
  );
} finally {
  await browser.close();
  await server.dispose();
}
