// A real Bilibili live client (the npm package bilibili-live-ws) pointed at
// this server's /sub; driven by live/tests/sub.rs (sub_npm_client_*).
//
// Usage: node sub_client.js ADDRESS ROOMID PROTOVER WANT
// Prints one JSON line per event: {"event":"live"}, {"event":"heartbeat",
// "online":n}, {"event":"danmu","id":...,"text":...,"uid":...,"name":...,
// "mode":...,"color":...}, {"event":"wire","ids":[...]} (the comments of one
// WebSocket message in wire order), {"event":"gift",...}; exits 0 after WANT
// comments.
'use strict';
const { LiveWS } = require('bilibili-live-ws');
const zlib = require('zlib');

const [address, roomid, protover, want] = process.argv.slice(2);
const live = new LiveWS(Number(roomid), { address, protover: Number(protover) });
const out = (v) => process.stdout.write(JSON.stringify(v) + '\n');
let got = 0;

// The library decompresses each message asynchronously, so its events can
// come out of the wire's order when a later message inflates first; the ids
// in wire order are decoded here, synchronously, message by message.
const wireIds = (buf) => {
  const ids = [];
  for (let i = 0; i < buf.length; ) {
    const size = buf.readUInt32BE(i);
    const version = buf.readUInt16BE(i + 6);
    const op = buf.readUInt32BE(i + 8);
    const body = buf.subarray(i + 16, i + size);
    if (op === 5 && version === 2) ids.push(...wireIds(zlib.inflateSync(body)));
    else if (op === 5 && version === 3) ids.push(...wireIds(zlib.brotliDecompressSync(body)));
    else if (op === 5) {
      const cmd = JSON.parse(String(body));
      if (cmd.cmd === 'DANMU_MSG') ids.push(JSON.parse(cmd.info[0][15].extra).id_str);
    }
    i += size;
  }
  return ids;
};
live.on('message', (buf) => {
  const ids = wireIds(buf);
  if (ids.length) out({ event: 'wire', ids });
});
live.on('live', () => out({ event: 'live' }));
live.on('heartbeat', (online) => out({ event: 'heartbeat', online }));
live.on('DANMU_MSG', (d) => {
  const extra = JSON.parse(d.info[0][15].extra);
  out({
    event: 'danmu',
    id: extra.id_str,
    text: d.info[1],
    uid: d.info[2][0],
    name: d.info[2][1],
    mode: d.info[0][1],
    color: d.info[0][3],
  });
  got += 1;
  if (got >= Number(want)) {
    live.close();
  }
});
live.on('SEND_GIFT', (d) => out({ event: 'gift', name: d.data.giftName, uname: d.data.uname }));
live.on('close', () => process.exit(0));
live.on('error', (e) => {
  process.stderr.write(`error: ${e}\n`);
  process.exit(2);
});
setTimeout(() => {
  process.stderr.write(`timeout after ${got} comments\n`);
  process.exit(3);
}, 60000);
