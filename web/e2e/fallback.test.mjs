// WebSockets blocked (a proxy that refuses upgrades, simulated by closing
// every WebSocket the page opens): the room page falls back to long polling,
// shows it, receives and sends; and the SDK itself in Node (no WebSocket)
// polls the real server and sends with one idempotency key.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { LiveClient } from "../dist/sdk/index.js";
import { launchBrowser, newPage, Server, until } from "./lib.mjs";

const room = "blocked-ws";
let server;
let browser;
const errors = [];

before(async () => {
  server = await new Server().start();
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await server?.dispose();
});

test("the room page falls back to polling when WebSockets are refused", async () => {
  const page = await newPage(browser, errors);
  let refused = 0;
  await page.routeWebSocket(/\/ws/, (ws) => {
    refused++;
    ws.close({ code: 1006 });
  });
  await page.goto(`${server.url}/rooms/${room}`);
  await page.waitForSelector('#state[data-state="polling"][data-transport="polling"]', { timeout: 15_000 });
  assert.ok(refused >= 1, "the page tried a WebSocket first");
  assert.equal(await page.textContent("#state"), "live (polling)");

  const service = server.token("backend", "service");
  await server.api("POST", `/v1/rooms/${room}/danmaku`, { token: service, body: { text: "over a long poll" } });
  await until(
    () => page.evaluate(() => [...document.querySelectorAll("#log .what")].some((e) => e.textContent === "over a long poll")),
    "a comment arrives by polling",
    5_000,
  );
  await page.fill("#text", "sent without a WebSocket");
  await page.click("#send-button");
  await until(async () => {
    const body = await server.api("GET", `/v1/rooms/${room}/danmaku`);
    return body.items.some((i) => i.text === "sent without a WebSocket");
  }, "the page's send is stored", 5_000);
  assert.deepEqual(errors, []);
  await page.close();
});

test("the SDK in Node polls the real server and delivers each item once", async () => {
  const token = server.token("node-user");
  const live = new LiveClient({ baseUrl: server.url, room: "sdk-node", token, transport: "polling", pollWaitMs: 2_000 });
  const seen = [];
  live.on("batch", ({ items }) => seen.push(...items.map((i) => i.text)));
  live.connect();
  await until(() => live.status.state === "polling", "polling", 5_000);
  const sent = [];
  for (let i = 0; i < 5; i++) sent.push((await live.send(`node ${i}`)).id);
  assert.equal(new Set(sent).size, 5);
  await until(() => seen.length >= 5, "the SDK's own comments come back", 10_000);
  assert.deepEqual(seen.slice(0, 5), ["node 0", "node 1", "node 2", "node 3", "node 4"]);
  live.close();
});
