// The browser tests' harness: the real `danmaku` binary (DANMAKU_BIN) on a
// free loopback port with a fresh data dir, tokens from `danmaku token`,
// Debian's Chromium driven by playwright-core (never a downloaded browser),
// and a tiny static server on another port for pages of ANOTHER origin.
import { spawn, execFileSync } from "node:child_process";
import { createServer } from "node:http";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, extname, dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { createServer as netServer } from "node:net";
import { chromium } from "playwright-core";

export const WEB = join(dirname(fileURLToPath(import.meta.url)), "..");
// Absolute: `token()` runs it from the server's temporary dir.
export const BIN = resolve(process.env.DANMAKU_BIN || join(WEB, "../target/debug/danmaku"));
export const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";

/** A free loopback port (bound, read, released). */
export async function freePort() {
  return await new Promise((resolve, reject) => {
    const s = netServer();
    s.once("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/**
 * A `danmaku serve` process; `restart()` keeps its port and data dir. `dir`: a
 * directory whose `data/` was prepared beforehand (default: a new one).
 */
export class Server {
  constructor(env = {}, dir = undefined) {
    this.dir = dir ?? mkdtempSync(join(tmpdir(), "danmaku-browser-"));
    this.secret = "browser-secret-" + process.pid + "-" + Date.now();
    this.env = {
      DANMAKU_AUTH__SECRET: this.secret,
      DANMAKU_SERVER__DEMO: "false",
      DANMAKU_LIVE__SLICE_MS: "1000",
      DANMAKU_ARCHIVE__POLL_MS: "200",
      DANMAKU_SERVER__SHUTDOWN_GRACE_SECS: "5",
      ...env,
    };
    this.proc = null;
    this.port = 0;
  }

  get url() {
    return `http://127.0.0.1:${this.port}`;
  }

  childEnv() {
    const env = {};
    for (const [k, v] of Object.entries(process.env)) if (!k.startsWith("DANMAKU_")) env[k] = v;
    return { ...env, ...this.env, RUST_LOG: process.env.RUST_LOG || "warn" };
  }

  async start() {
    if (!this.port) this.port = await freePort();
    const proc = spawn(
      BIN,
      ["serve", "--listen", `127.0.0.1:${this.port}`, "--data-dir", join(this.dir, "data")],
      { env: this.childEnv(), stdio: ["ignore", "pipe", "inherit"] },
    );
    this.proc = proc;
    await new Promise((resolve, reject) => {
      let out = "";
      const timer = setTimeout(() => reject(new Error("server did not start: " + out)), 30_000);
      proc.stdout.on("data", (chunk) => {
        out += chunk;
        if (out.includes("listening on")) {
          clearTimeout(timer);
          resolve();
        }
      });
      proc.once("exit", (code) => reject(new Error(`server exited (${code}) before listening: ${out}`)));
    });
    proc.stdout.resume();
    for (let i = 0; i < 300; i++) {
      try {
        if ((await fetch(this.url + "/healthz")).ok) return this;
      } catch {
        // not yet
      }
      await sleep(50);
    }
    throw new Error("healthz did not answer");
  }

  /** SIGTERM and wait for the exit. */
  async stop() {
    const proc = this.proc;
    if (!proc || proc.exitCode !== null) return;
    const exited = new Promise((r) => proc.once("exit", r));
    proc.kill("SIGTERM");
    // A timer left pending would keep this test process alive after the tests.
    let timer;
    const limit = new Promise((r) => (timer = setTimeout(r, 60_000)));
    await Promise.race([exited, limit]);
    clearTimeout(timer);
    if (proc.exitCode === null && proc.signalCode === null) proc.kill("SIGKILL");
    this.proc = null;
  }

  async restart() {
    await this.stop();
    await this.start();
  }

  async dispose() {
    await this.stop();
    rmSync(this.dir, { recursive: true, force: true });
  }

  token(user, role = "viewer") {
    return execFileSync(BIN, ["token", "--user", user, "--role", role, "--ttl", "1h"], {
      env: this.childEnv(),
      cwd: this.dir,
    })
      .toString()
      .trim();
  }

  async api(method, path, { token, body } = {}) {
    const headers = {};
    if (token) headers.authorization = "Bearer " + token;
    if (body !== undefined) headers["content-type"] = "application/json";
    const response = await fetch(this.url + path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await response.text();
    let json;
    try {
      json = JSON.parse(text);
    } catch {
      json = undefined;
    }
    if (!response.ok) throw new Error(`${method} ${path}: ${response.status} ${text}`);
    return json;
  }
}

/** Headless Chromium with the flags that keep it off the network. */
export async function launchBrowser() {
  return await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--autoplay-policy=no-user-gesture-required",
    ],
  });
}

/**
 * A page that fails the test on any dialog (alert/confirm: injected script)
 * and records page errors.
 */
export async function newPage(browser, errors = []) {
  const page = await browser.newPage({ viewport: { width: 1000, height: 700 } });
  page.on("dialog", async (dialog) => {
    errors.push("dialog: " + dialog.message());
    await dialog.dismiss();
  });
  page.on("pageerror", (e) => errors.push("pageerror: " + e.message));
  return page;
}

const TYPES = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript",
  ".mjs": "text/javascript",
  ".css": "text/css",
  ".wav": "audio/wav",
};

/**
 * A static server on another port: `files` maps URL paths to absolute file
 * paths or to { body, type } values.
 */
export async function staticServer(files) {
  const server = createServer((req, res) => {
    const path = new URL(req.url, "http://x").pathname;
    const entry = files[path];
    if (!entry) {
      res.writeHead(404).end();
      return;
    }
    const body = typeof entry === "string" ? readFileSync(entry) : entry.body;
    const type = typeof entry === "string" ? TYPES[extname(entry)] : entry.type;
    res.writeHead(200, { "content-type": type ?? "application/octet-stream", "cache-control": "no-store" });
    res.end(body);
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  const { port } = server.address();
  return { url: `http://127.0.0.1:${port}`, close: () => new Promise((r) => server.close(r)) };
}

/** A silent mono 8-bit WAV of `seconds` (a "video" the players can play). */
export function silentWav(seconds) {
  const rate = 8000;
  const samples = rate * seconds;
  const buf = Buffer.alloc(44 + samples, 128);
  buf.write("RIFF", 0);
  buf.writeUInt32LE(36 + samples, 4);
  buf.write("WAVEfmt ", 8);
  buf.writeUInt32LE(16, 16);
  buf.writeUInt16LE(1, 20);
  buf.writeUInt16LE(1, 22);
  buf.writeUInt32LE(rate, 24);
  buf.writeUInt32LE(rate, 28);
  buf.writeUInt16LE(1, 32);
  buf.writeUInt16LE(8, 34);
  buf.write("data", 36);
  buf.writeUInt32LE(samples, 40);
  return buf;
}

export { sleep };

/** Waits until `check()` is truthy (polling), or throws with `what`. */
export async function until(check, what, timeoutMs = 10_000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error("timed out: " + what);
    await sleep(50);
  }
}

/**
 * Records every comment the page puts on its stage in `window.__seen`: its
 * text, its `data-offset` and the page's playhead at that moment. Call before
 * `page.goto`.
 */
export async function recordShownComments(page) {
  await page.addInitScript(() => {
    window.__seen = [];
    new MutationObserver((records) => {
      for (const r of records)
        for (const n of r.addedNodes)
          if (n.nodeType === 1 && n.classList.contains("dm"))
            window.__seen.push({ text: n.textContent, offset: Number(n.dataset.offset), playhead: Number(document.body.dataset.playhead) });
    }).observe(document, { childList: true, subtree: true });
  });
}
