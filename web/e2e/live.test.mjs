// The live room page in Chromium against the real server: two pages
// exchange comments through the UI within 1 s, the online count, one click
// on reconnect = at most one new connection, the page resumes by itself
// after a server restart and shows what was sent meanwhile, hostile text
// renders literally.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { launchBrowser, newPage, Server, sleep, until } from "./lib.mjs";

const room = "browser-live";
let server;
let browser;
const errors = [];
let pageA;
let pageB;

async function openRoom() {
  const page = await newPage(browser, errors);
  page.__sockets = 0;
  page.on("websocket", () => page.__sockets++);
  await page.goto(`${server.url}/rooms/${room}`);
  await page.waitForSelector('#state[data-state="open"]', { timeout: 15_000 });
  return page;
}

async function sendFromUi(page, text) {
  await page.fill("#text", text);
  await page.click("#send-button");
}

async function logHas(page, text) {
  return await page.evaluate(
    (t) => [...document.querySelectorAll("#log .what")].some((e) => e.textContent === t),
    text,
  );
}

before(async () => {
  server = await new Server().start();
  browser = await launchBrowser();
  pageA = await openRoom();
  pageB = await openRoom();
});

after(async () => {
  await browser?.close();
  await server?.dispose();
});

test("two pages exchange comments through the UI within 1 s", async () => {
  for (const [from, to, text] of [
    [pageA, pageB, "hello from A"],
    [pageB, pageA, "hello from B"],
  ]) {
    const started = Date.now();
    await sendFromUi(from, text);
    await until(() => logHas(to, text), `${text} arrives`, 5_000);
    const took = Date.now() - started;
    assert.ok(took < 1000, `${text} took ${took} ms`);
    // It flies over the other page's stage too.
    assert.ok(
      await to.evaluate((t) => [...document.querySelectorAll("#comments .dm")].some((e) => e.textContent === t), text),
    );
  }
  assert.deepEqual(errors, []);
});

test("the online count shows both viewers", async (t) => {
  // Counts are summed over nodes at most every 5 s: wait for one that says 2.
  let last = null;
  const both = await until(
    async () => {
      last = await pageA.evaluate(() => document.getElementById("online").dataset.count ?? null);
      const b = await pageB.evaluate(() => document.getElementById("online").dataset.count ?? null);
      return last === "2" && b === "2";
    },
    "online count 2 on both pages",
    15_000,
  ).catch(() => false);
  if (!both && last === null) {
    // A server without {"type":"online"} messages (before the moderation issue).
    t.skip("the server sends no online message");
    return;
  }
  assert.ok(both, `online count shows ${last}`);
});

test("hostile text renders literally everywhere", async () => {
  const hostile = ["<img src=x onerror=alert(1)>", "<script>alert(2)</script>", "\"'><svg onload=alert(3)>"];
  for (const text of hostile) {
    await sendFromUi(pageA, text);
    await until(() => logHas(pageB, text), `${text} arrives`, 5_000);
    await sleep(250);
  }
  for (const page of [pageA, pageB]) {
    const injected = await page.evaluate(() => document.querySelectorAll("main img, main svg, main script").length);
    assert.equal(injected, 0, "no element injected");
  }
  assert.deepEqual(errors, [], "no dialog, no page error");
});

test("one click on reconnect opens at most one connection; the page resumes after a restart with what was sent meanwhile", async () => {
  await server.stop();
  await pageA.waitForSelector("#reconnect:not([hidden])", { timeout: 10_000 });
  await server.start();
  // What was sent while the pages were away.
  const service = server.token("backend", "service");
  for (let i = 1; i <= 3; i++) {
    await server.api("POST", `/v1/rooms/${room}/danmaku`, { token: service, body: { text: `meanwhile ${i}` } });
  }
  // A is reconnected by one click (or by its timer if that came first).
  const before = pageA.__sockets;
  await pageA.click("#reconnect").catch(() => undefined);
  await pageA.waitForSelector('#state[data-state="open"]', { timeout: 10_000 });
  await sleep(3000);
  assert.ok(pageA.__sockets - before <= 1, `a click opened ${pageA.__sockets - before} connections`);
  // B comes back by itself (backoff, no click) and both show what was sent.
  await pageB.waitForSelector('#state[data-state="open"]', { timeout: 30_000 });
  for (const page of [pageA, pageB]) {
    for (let i = 1; i <= 3; i++) await until(() => logHas(page, `meanwhile ${i}`), `meanwhile ${i}`, 10_000);
  }
  // Nothing keeps reconnecting afterwards.
  const settled = [pageA.__sockets, pageB.__sockets];
  await sleep(3000);
  assert.deepEqual([pageA.__sockets, pageB.__sockets], settled);
  assert.deepEqual(errors, []);
});
