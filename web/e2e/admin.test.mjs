// The admin page in Chromium against the real server: a room's recent
// comments with delete and ban, the word list, big keys; hostile text literal.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { launchBrowser, newPage, Server, until } from "./lib.mjs";

const room = "admin-room";
let server;
let browser;
let page;
let viewer;
const errors = [];

before(async () => {
  server = await new Server().start();
  viewer = server.token("noisy-viewer");
  browser = await launchBrowser();
  page = await newPage(browser, errors);
  await page.goto(`${server.url}/admin`);
  await page.fill("#admin-token", server.token("the-admin", "admin"));
  await page.click("#token-form button");
  await page.fill("#admin-room", room);
  await page.click("#room-form button");
  await page.waitForSelector('#room-state[data-state="open"]', { timeout: 15_000 });
});

after(async () => {
  await browser?.close();
  await server?.dispose();
});

async function send(text) {
  const response = await fetch(`${server.url}/v1/rooms/${room}/danmaku`, {
    method: "POST",
    headers: { authorization: "Bearer " + viewer, "content-type": "application/json" },
    body: JSON.stringify({ text }),
  });
  return { status: response.status, body: await response.json() };
}

test("recent comments appear; delete removes one everywhere", async () => {
  const kept = await send("keep me");
  const doomed = await send("<img src=x onerror=alert(1)> delete me");
  assert.equal(doomed.status, 202);
  const row = `#comments-list li[data-id="${doomed.body.id}"]`;
  await page.waitForSelector(row, { timeout: 10_000 });
  assert.equal(await page.textContent(`${row} .what`), "<img src=x onerror=alert(1)> delete me");
  await page.click(`${row} button:text("delete")`);
  await page.waitForSelector(row, { state: "detached", timeout: 10_000 });
  // Polls after the deletion has reached the live role no longer carry it.
  const ids = await until(async () => {
    const poll = await server.api("GET", `/v1/rooms/${room}/danmaku`);
    const ids = poll.items.map((i) => i.id);
    return ids.includes(doomed.body.id) ? null : ids;
  }, "the deleted comment leaves the polls", 5_000);
  assert.ok(ids.includes(kept.body.id), JSON.stringify(ids));
  assert.equal(await page.evaluate(() => document.querySelectorAll("main img").length), 0);
  assert.deepEqual(errors, []);
});

test("ban from a comment row: the viewer's next send is refused", async () => {
  const sent = await send("ban me");
  const row = `#comments-list li[data-id="${sent.body.id}"]`;
  await page.waitForSelector(row, { timeout: 10_000 });
  await page.click(`${row} button:text("ban 10 min")`);
  await until(() => page.evaluate(() => document.getElementById("bans-list").textContent.includes("noisy-viewer")), "ban listed");
  const refused = await until(async () => {
    const r = await send("still here?");
    return r.status === 403 ? r : null;
  }, "the ban holds", 5_000);
  assert.equal(refused.body.error.code, "banned");
  // Lift it again.
  await page.click('#bans-list button:text("lift")');
  await until(async () => (await send("back again")).status === 202, "the ban is lifted", 5_000);
});

test("the word list is replaced and applied", async () => {
  await page.fill("#words", "forbiddenword");
  await page.selectOption("#policy", "reject");
  await page.click("#filter-form button");
  const refused = await until(async () => {
    const r = await send("a forbiddenword here");
    return r.status === 400 ? r : null;
  }, "the word list applies", 5_000);
  assert.equal(refused.body.error.code, "blocked_word");
  await page.click("#bigkeys-refresh");
  assert.equal(await page.textContent("#admin-status"), "");
  assert.deepEqual(errors, []);
});
