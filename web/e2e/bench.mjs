// The pages' performance in Chromium (issue 15, item 6; docs/BENCHMARKS.md,
// "The pages in Chromium"). Run by infra/bench/web_pages.sh, or:
//   DANMAKU_BIN=../target/release/danmaku WEB_SEED=../target/release/examples/web_seed \
//     node e2e/bench.mjs [bundle] [paint] [live] [replay] [trace]
// (no argument: the first four; `trace` profiles the room page under load). Every figure is printed with the load average at
// the time (/proc/loadavg): the machine is shared, read it before the number.
//
// - bundle: raw and gzip -9 bytes of web/dist: each page's HTML with the
//   scripts and style it loads, and the SDK (as shipped and minified).
// - paint: first paint and first contentful paint of `/` and
//   `/rooms/{room}` on loopback, PAINT_SAMPLES fresh browser contexts each.
// - live: the room page while the room receives RATE comments/s (default 500)
//   for SECONDS (default 20), sent over HTTP with a service token; frame
//   intervals from requestAnimationFrame (median and 5th-percentile fps), the
//   renderer's main-thread time from CDP (Performance.getMetrics), the most
//   comments on screen, comments received by the page (its WebSocket frames).
// - replay: a REPLAY_HOURS (3) recording with PER_SEGMENT (6,000) comments in
//   every 6-minute segment (seeded by WEB_SEED into the server's data dir)
//   played through at 16x on `/vods/{vod}`; the JS heap after a forced GC
//   every HEAP_EVERY_S seconds (CDP HeapProfiler.collectGarbage,
//   Runtime.getHeapUsage), DOM nodes, segments held.
import { execFileSync } from "node:child_process";
import { readFileSync, readdirSync } from "node:fs";
import { gzipSync } from "node:zlib";
import { join } from "node:path";
import http from "node:http";
import { build } from "esbuild";
import { launchBrowser, Server, sleep, until, WEB } from "./lib.mjs";

const WHAT = process.argv.slice(2).length ? process.argv.slice(2) : ["bundle", "paint", "live", "replay"];
const RATE = Number(process.env.RATE ?? 500);
const SECONDS = Number(process.env.SECONDS ?? 20);
const PAINT_SAMPLES = Number(process.env.PAINT_SAMPLES ?? 10);
const REPLAY_HOURS = Number(process.env.REPLAY_HOURS ?? 3);
const PER_SEGMENT = Number(process.env.PER_SEGMENT ?? 6000);
const HEAP_EVERY_S = Number(process.env.HEAP_EVERY_S ?? 15);
const WEB_SEED = process.env.WEB_SEED || join(WEB, "../target/release/examples/web_seed");

const load = () => readFileSync("/proc/loadavg", "utf8").split(" ").slice(0, 3).join(" ");
const stamp = () => new Date().toISOString().replace(/\.\d+Z$/, "Z");
const kb = (n) => (n / 1024).toFixed(1) + " KB";
const quantile = (sorted, q) => sorted[Math.min(sorted.length - 1, Math.max(0, Math.round((sorted.length - 1) * q)))];
const median = (v) => quantile([...v].sort((a, b) => a - b), 0.5);
function report(figure, value) {
  console.log(`${stamp()}  load ${load()}  ${figure}: ${value}`);
}

// ---- bundle ------------------------------------------------------------------
async function bundle() {
  const pages = join(WEB, "dist/pages");
  const assets = join(pages, "assets");
  const size = (bytes) => ({ raw: bytes.length, gz: gzipSync(bytes, { level: 9 }).length });
  // What one page loads: its HTML, then every asset it names, and every chunk
  // those import (esbuild's `from"./chunk-X.js"` / `import"./chunk-X.js"`).
  const closure = (html) => {
    const files = new Set();
    const todo = [...html.matchAll(/\/assets\/([\w.-]+)/g)].map((m) => m[1]);
    while (todo.length) {
      const f = todo.pop();
      if (files.has(f)) continue;
      files.add(f);
      if (f.endsWith(".js")) {
        const js = readFileSync(join(assets, f), "utf8");
        for (const m of js.matchAll(/["']\.\/([\w.-]+\.js)["']/g)) todo.push(m[1]);
      }
    }
    return [...files];
  };
  for (const page of ["home", "room", "vod", "admin"]) {
    const html = readFileSync(join(pages, `${page}.html`));
    const files = closure(html.toString());
    let raw = html.length;
    let gz = size(html).gz;
    for (const f of files) {
      const s = size(readFileSync(join(assets, f)));
      raw += s.raw;
      gz += s.gz;
    }
    report(`bundle ${page} page (HTML + ${files.length} assets)`, `${kb(raw)} raw, ${kb(gz)} gzip`);
  }
  let all = 0;
  let allGz = 0;
  for (const f of readdirSync(assets)) {
    const s = size(readFileSync(join(assets, f)));
    all += s.raw;
    allGz += s.gz;
  }
  report("bundle all page assets (web/dist/pages/assets)", `${kb(all)} raw, ${kb(allGz)} gzip`);
  const sdk = size(readFileSync(join(WEB, "dist/sdk/index.js")));
  report("bundle SDK dist/sdk/index.js as shipped", `${kb(sdk.raw)} raw, ${kb(sdk.gz)} gzip`);
  const min = await build({
    entryPoints: [join(WEB, "src/sdk/index.ts")],
    bundle: true,
    minify: true,
    format: "esm",
    target: "es2020",
    write: false,
    legalComments: "none",
  });
  const m = size(Buffer.from(min.outputFiles[0].contents));
  report("bundle SDK minified (esbuild --bundle --minify)", `${kb(m.raw)} raw, ${kb(m.gz)} gzip`);
}

// ---- paint -------------------------------------------------------------------
async function paint() {
  const server = await new Server().start();
  const browser = await launchBrowser();
  try {
    const service = server.token("bench", "service");
    await server.api("POST", "/v1/rooms/paint-room/sessions", { token: service, body: { vod: "paint-vod" } });
    for (const [name, path] of [
      ["/", "/"],
      ["/rooms/{room}", "/rooms/paint-room"],
    ]) {
      const fp = [];
      const fcp = [];
      for (let i = 0; i < PAINT_SAMPLES + 1; i++) {
        // A fresh context each time: nothing cached, as a first visit.
        const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
        const page = await context.newPage();
        await page.goto(server.url + path, { waitUntil: "load" });
        const entries = await until(
          () =>
            page.evaluate(() => {
              const p = Object.fromEntries(performance.getEntriesByType("paint").map((e) => [e.name, e.startTime]));
              return p["first-contentful-paint"] !== undefined ? p : null;
            }),
          "paint entries",
        );
        await context.close();
        if (i === 0) continue; // the browser's own warm-up
        fp.push(entries["first-paint"]);
        fcp.push(entries["first-contentful-paint"]);
      }
      const s = (v) => {
        const sorted = [...v].sort((a, b) => a - b);
        return `median ${quantile(sorted, 0.5).toFixed(0)} ms, max ${sorted[sorted.length - 1].toFixed(0)} ms`;
      };
      report(`first paint ${name} (${PAINT_SAMPLES} cold loads)`, s(fp));
      report(`first contentful paint ${name} (${PAINT_SAMPLES} cold loads)`, s(fcp));
    }
  } finally {
    await browser.close();
    await server.dispose();
  }
}

// ---- live --------------------------------------------------------------------
/** Posts `rate` comments/s to `room` for `seconds` over keep-alive HTTP. */
async function flood(server, room, token, rate, seconds) {
  const agent = new http.Agent({ keepAlive: true, maxSockets: 64 });
  const url = new URL(`${server.url}/v1/rooms/${room}/danmaku`);
  let sent = 0;
  let ok = 0;
  let failed = 0;
  let inflight = 0;
  const post = (i) =>
    new Promise((resolve) => {
      const body = JSON.stringify({
        text: `load comment ${i} 好耶`,
        color: (i * 2654435761) % 0xffffff,
        mode: i % 10 === 0 ? "top" : i % 10 === 1 ? "bottom" : "scroll",
      });
      const req = http.request(
        url,
        {
          method: "POST",
          agent,
          headers: {
            authorization: "Bearer " + token,
            "content-type": "application/json",
            "content-length": Buffer.byteLength(body),
          },
        },
        (res) => {
          res.resume();
          res.on("end", () => {
            res.statusCode < 300 ? ok++ : failed++;
            resolve();
          });
        },
      );
      req.on("error", () => {
        failed++;
        resolve();
      });
      req.end(body);
    });
  const started = Date.now();
  const pending = new Set();
  while (Date.now() - started < seconds * 1000) {
    const due = Math.floor(((Date.now() - started) / 1000) * rate);
    while (sent < due && inflight < 256) {
      inflight++;
      const p = post(sent).then(() => {
        inflight--;
        pending.delete(p);
      });
      pending.add(p);
      sent++;
    }
    await sleep(2);
  }
  await Promise.all([...pending]);
  agent.destroy();
  return { sent, ok, failed, elapsed: (Date.now() - started) / 1000 };
}

async function live() {
  const room = "perf-room";
  const server = await new Server({
    DANMAKU_LIMITS__ROOM_PER_SEC: "5000",
    DANMAKU_LIMITS__ROOM_BURST: "10000",
  }).start();
  const browser = await launchBrowser();
  try {
    const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
    let received = 0;
    page.on("websocket", (ws) =>
      ws.on("framereceived", ({ payload }) => {
        try {
          const m = JSON.parse(payload.toString());
          if (Array.isArray(m.items)) received += m.items.length;
        } catch {
          // binary or not JSON
        }
      }),
    );
    await page.goto(`${server.url}/rooms/${room}`);
    await page.waitForSelector('#state[data-state="open"]');
    const cdp = await page.context().newCDPSession(page);
    await cdp.send("Performance.enable");
    const metrics = async () =>
      Object.fromEntries((await cdp.send("Performance.getMetrics")).metrics.map((m) => [m.name, m.value]));

    const measure = async (label, during) => {
      await page.evaluate(() => {
        window.__intervals = [];
        window.__maxOnScreen = 0;
        window.__run = true;
        let last = 0;
        const tick = (now) => {
          if (last) window.__intervals.push(now - last);
          last = now;
          const n = document.getElementById("comments").childElementCount;
          if (n > window.__maxOnScreen) window.__maxOnScreen = n;
          if (window.__run) requestAnimationFrame(tick);
        };
        requestAnimationFrame(tick);
      });
      const m0 = await metrics();
      const r0 = received;
      const t0 = Date.now();
      const result = await during();
      const wall = (Date.now() - t0) / 1000;
      const m1 = await metrics();
      const { intervals, max } = await page.evaluate(() => {
        window.__run = false;
        return { intervals: window.__intervals, max: window.__maxOnScreen };
      });
      const sorted = [...intervals].sort((a, b) => a - b);
      const fps = (ms) => (1000 / ms).toFixed(1);
      const busy = (k) => (((m1[k] ?? 0) - (m0[k] ?? 0)) / wall) * 100;
      report(
        `live ${label}: fps`,
        `median ${fps(quantile(sorted, 0.5))}, p5 ${fps(quantile(sorted, 0.95))}, mean ${(intervals.length / wall).toFixed(1)}, ` +
          `longest frame ${sorted[sorted.length - 1]?.toFixed(0)} ms, frames over 20 ms ${intervals.filter((i) => i > 20).length}/${intervals.length}`,
      );
      report(
        `live ${label}: renderer main thread`,
        `busy ${busy("TaskDuration").toFixed(0)} % (script ${busy("ScriptDuration").toFixed(0)} %, ` +
          `layout ${busy("LayoutDuration").toFixed(0)} %, style ${busy("RecalcStyleDuration").toFixed(0)} %); ` +
          `most on screen ${max}; page received ${received - r0} comments (${((received - r0) / wall).toFixed(0)}/s)`,
      );
      return result;
    };

    await measure("idle (5 s, no comments)", () => sleep(5000));
    const token = server.token("load", "service");
    const sent = await measure(`${RATE} comments/s for ${SECONDS} s`, () => flood(server, room, token, RATE, SECONDS));
    report(
      "live load generator",
      `${sent.sent} sent in ${sent.elapsed.toFixed(1)} s (${(sent.sent / sent.elapsed).toFixed(0)}/s), ${sent.ok} accepted, ${sent.failed} failed`,
    );
  } finally {
    await browser.close();
    await server.dispose();
  }
}

// ---- trace (not part of the default run) -------------------------------------
/**
 * Where the browser's threads spend their time on the room page at RATE/s:
 * a 4-second Chromium trace (devtools.timeline, cc, viz), complete events
 * summed per thread and name, as % of one core. Names nest (RunTask holds
 * the rest), so read them as a tree, not a sum.
 */
async function trace() {
  const room = "perf-room";
  const server = await new Server({
    DANMAKU_LIMITS__ROOM_PER_SEC: "5000",
    DANMAKU_LIMITS__ROOM_BURST: "10000",
  }).start();
  const browser = await launchBrowser();
  try {
    const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
    await page.goto(`${server.url}/rooms/${room}`);
    await page.waitForSelector('#state[data-state="open"]');
    const token = server.token("load", "service");
    const flooding = flood(server, room, token, RATE, 9);
    await sleep(3000);
    await browser.startTracing(page, { categories: ["devtools.timeline", "disabled-by-default-devtools.timeline", "v8", "blink", "cc", "viz"] });
    await sleep(4000);
    const buf = await browser.stopTracing();
    await flooding;
    const parsed = JSON.parse(buf.toString());
    const events = parsed.traceEvents ?? parsed;
    const threads = {};
    for (const e of events) if (e.ph === "M" && e.name === "thread_name") threads[`${e.pid}:${e.tid}`] = e.args.name;
    const sums = {};
    for (const e of events) {
      if (e.ph !== "X" || !e.dur) continue;
      const key = `${threads[`${e.pid}:${e.tid}`] ?? "?"} | ${e.name}`;
      sums[key] = (sums[key] ?? 0) + e.dur / 1000;
    }
    report(`trace of the room page at ${RATE}/s`, "4 s, % of one core per thread | event (nested)");
    for (const [k, v] of Object.entries(sums).sort((a, b) => b[1] - a[1]).slice(0, 40)) {
      console.log(`  ${((v / 4000) * 100).toFixed(1).padStart(5)} %  ${k}`);
    }
  } finally {
    await browser.close();
    await server.dispose();
  }
}

// ---- replay ------------------------------------------------------------------
async function replay() {
  const server = new Server();
  const seeded = execFileSync(
    WEB_SEED,
    ["--data-dir", join(server.dir, "data"), "--hours", String(REPLAY_HOURS), "--per-segment", String(PER_SEGMENT)],
    { env: server.childEnv() },
  )
    .toString()
    .trim();
  report("replay seed", seeded);
  await server.start();
  const browser = await launchBrowser();
  try {
    const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
    const cdp = await page.context().newCDPSession(page);
    await cdp.send("Performance.enable");
    let segmentsFetched = 0;
    page.on("request", (r) => {
      if (/\/segments\/\d+/.test(r.url())) segmentsFetched++;
    });
    await page.goto(`${server.url}/vods/perf-vod`);
    await page.waitForSelector("#heat[data-total]", { timeout: 120_000 });
    await page.selectOption("#rate", "16");
    await page.click("#play");
    const durationMs = REPLAY_HOURS * 3_600_000;
    const samples = [];
    const intervalsAll = [];
    await page.evaluate(() => {
      window.__intervals = [];
      let last = 0;
      const tick = (now) => {
        if (last) window.__intervals.push(now - last);
        last = now;
        requestAnimationFrame(tick);
      };
      requestAnimationFrame(tick);
    });
    const t0 = Date.now();
    for (;;) {
      await sleep(HEAP_EVERY_S * 1000);
      await cdp.send("HeapProfiler.collectGarbage");
      const heap = await cdp.send("Runtime.getHeapUsage");
      const m = Object.fromEntries((await cdp.send("Performance.getMetrics")).metrics.map((x) => [x.name, x.value]));
      const state = await page.evaluate(() => {
        const iv = window.__intervals;
        window.__intervals = [];
        return {
          playhead: Number(document.body.dataset.playhead ?? 0),
          onScreen: document.getElementById("comments").childElementCount,
          intervals: iv,
        };
      });
      intervalsAll.push(...state.intervals);
      const sample = {
        wall: (Date.now() - t0) / 1000,
        playhead: state.playhead,
        used: heap.usedSize,
        total: heap.totalSize,
        nodes: m.Nodes,
        listeners: m.JSEventListeners,
        onScreen: state.onScreen,
      };
      samples.push(sample);
      console.log(
        `  t ${sample.wall.toFixed(0)} s  playhead ${(sample.playhead / 60000).toFixed(1)} min  heap ${kb(sample.used)} ` +
          `(of ${kb(sample.total)})  DOM nodes ${sample.nodes}  listeners ${sample.listeners}  on screen ${sample.onScreen}  load ${load()}`,
      );
      if (sample.playhead >= durationMs - 1000) break;
      if (Date.now() - t0 > ((durationMs / 16) * 2 + 120_000)) throw new Error("the replay did not reach the end in twice its time");
    }
    // The first sample holds two segments (the playhead's and the next); from
    // the second segment on the page holds three (one behind). Flat = the
    // second half of the run holds no more than the first half did.
    const used = samples.map((s) => s.used);
    const first = used[0];
    const max = Math.max(...used);
    const last = used[used.length - 1];
    const half = Math.floor(used.length / 2);
    const firstHalf = Math.max(...used.slice(0, half));
    const secondHalf = Math.max(...used.slice(half));
    const pct = (a, b) => (((a - b) / b) * 100).toFixed(1) + " %";
    report(
      `replay ${REPLAY_HOURS} h x ${PER_SEGMENT}/segment at 16x: JS heap after GC`,
      `first ${kb(first)}, median ${kb(median(used))}, max ${kb(max)} (${pct(max, first)} over first), last ${kb(last)}; ` +
        `max of the second half ${kb(secondHalf)} vs first half ${kb(firstHalf)}: ${pct(secondHalf, firstHalf)}; ` +
        `${samples.length} samples over ${samples[samples.length - 1].wall.toFixed(0)} s`,
    );
    const screens = samples.map((s) => s.onScreen);
    report("replay comments on screen (at the samples)", `median ${median(screens)}, max ${Math.max(...screens)}`);
    const nodes = samples.map((s) => s.nodes);
    report("replay DOM nodes", `first ${nodes[0]}, max ${Math.max(...nodes)}, last ${nodes[nodes.length - 1]}`);
    const sorted = intervalsAll.sort((a, b) => a - b);
    report(
      "replay fps at 16x",
      `median ${(1000 / quantile(sorted, 0.5)).toFixed(1)}, p5 ${(1000 / quantile(sorted, 0.95)).toFixed(1)}; segments fetched ${segmentsFetched}`,
    );
  } finally {
    await browser.close();
    await server.dispose();
  }
}

console.log(`${stamp()}  web/e2e/bench.mjs ${WHAT.join(" ")}; server ${process.env.DANMAKU_BIN ?? "(default)"}; nproc ${execFileSync("nproc").toString().trim()}`);
for (const w of WHAT) {
  if (w === "bundle") await bundle();
  else if (w === "paint") await paint();
  else if (w === "live") await live();
  else if (w === "replay") await replay();
  else if (w === "trace") await trace();
  else throw new Error("unknown part: " + w);
}
