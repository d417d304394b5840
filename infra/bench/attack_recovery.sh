#!/usr/bin/env bash
# Memory recovery after attacks (issue 13, items 3 and 10): does the server
# give back to the OS what an attack made it take? Target: RSS returns within
# 20 % of its pre-attack level within 60 s after each attack.
#
# Each attack runs against a fresh release server (embedded defaults, loopback,
# its own data dir), after its setup and a settle pause, and prints RSS idle
# (just before), the peak during the attack, RSS at 5/10/20/30/60 s after it,
# and the ratio after/idle:
#
#   byte_by_byte  100 connections each send a 4,000-byte body one byte per TCP
#                 segment, 1 ms apart (as infra/bench/attack_edge.sh)
#   resumes       50 WebSocket resumes from a cursor 20,000 comments back
#                 (90 characters each), 4 KiB receive buffers, never reading,
#                 held HOLD_SECS then closed
#   range         64 concurrent `limit=1` range requests at random offsets on
#                 an ended VOD whose segment 0 holds 100,000 comments, for
#                 RANGE_SECS (the first page loads the segment cold)
#
#   bash infra/bench/attack_recovery.sh [byte_by_byte] [resumes] [range]
#
# Knobs (environment): RECOVERY_BIN (the server; default the release build,
# built if missing), RECOVERY_PORT (18096), RUNS (runs of each attack, default
# 1; with more, a median line per attack follows), AFTER_SECS (60),
# SETTLE_SECS (pause between setup and the idle sample, default 20),
# HOLD_SECS (8), RANGE_SECS (10), RANGE_COMMENTS (100000), RESUME_ITEMS
# (20000). The machine's background load (CPU busy outside the server and this
# driver) is printed with each attack.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BIN=${RECOVERY_BIN:-$ROOT/target/release/danmaku}
[ -x "$BIN" ] || (cd "$ROOT" && cargo build --release -q --bin danmaku)
PORT=${RECOVERY_PORT:-18096}
ATTACKS=${*:-byte_by_byte resumes range}
export DANMAKU_AUTH__SECRET=recovery-bench-secret DANMAKU_SERVER__DEMO=false
export RUST_LOG=${RUST_LOG:-warn}
TOKEN=$("$BIN" token --user recovery-bench --role service --ttl 1d)
# The driver holds hundreds of sockets.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
echo "# $(date -u +%FT%TZ) $(uname -r) $(nproc) cores; server $BIN; loadavg $(cut -d' ' -f1-3 /proc/loadavg)"
BIN=$BIN PORT=$PORT TOKEN=$TOKEN ATTACKS=$ATTACKS python3 - <<'PY'
import asyncio, base64, json, os, random, shutil, socket, statistics, subprocess, tempfile, time

BIN = os.environ["BIN"]; PORT = int(os.environ["PORT"]); TOKEN = os.environ["TOKEN"]
ATTACKS = os.environ["ATTACKS"].split()
RUNS = int(os.environ.get("RUNS", "1"))
AFTER_SECS = float(os.environ.get("AFTER_SECS", "60"))
SETTLE_SECS = float(os.environ.get("SETTLE_SECS", "20"))
HOLD_SECS = float(os.environ.get("HOLD_SECS", "8"))
RANGE_SECS = float(os.environ.get("RANGE_SECS", "10"))
RANGE_COMMENTS = int(os.environ.get("RANGE_COMMENTS", "100000"))
RESUME_ITEMS = int(os.environ.get("RESUME_ITEMS", "20000"))
MARKS = [m for m in (5, 10, 20, 30, 60) if m < AFTER_SECS] + [AFTER_SECS]
TEXT90 = "x" * 90

def rss_mb(pid):
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except FileNotFoundError:
        pass
    return 0.0

def cpu_ticks(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return int(f[11]) + int(f[12])

def total_ticks():
    v = list(map(int, open("/proc/stat").readline().split()[1:]))
    return sum(v), v[3] + v[4]

class Load:
    """Busy CPU over an interval, % of the machine: everyone but the server and this driver."""
    def __init__(self, pid):
        self.pid = pid
        self.t0, self.i0 = total_ticks(); self.s0 = cpu_ticks(pid); self.d0 = cpu_ticks(os.getpid())
    def other_pct(self):
        t, i = total_ticks(); s = cpu_ticks(self.pid); d = cpu_ticks(os.getpid())
        span = max(1, t - self.t0); busy = span - (i - self.i0)
        return 100.0 * (busy - (s - self.s0) - (d - self.d0)) / span

class Server:
    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="danmaku-recovery.")
        self.proc = subprocess.Popen(
            [BIN, "serve", "--listen", f"127.0.0.1:{PORT}", "--data-dir", f"{self.dir}/d"],
            stdout=open(f"{self.dir}/out.log", "w"), stderr=open(f"{self.dir}/err.log", "w"))
        self.pid = self.proc.pid
    async def ready(self):
        for _ in range(200):
            try:
                st, _ = await request("GET", "/healthz")
                if st == 200:
                    return
            except OSError:
                pass
            await asyncio.sleep(0.05)
        raise SystemExit("the server did not start")
    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill(); self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)

class Conn:
    """One keep-alive HTTP/1.1 connection."""
    async def open(self):
        self.r, self.w = await asyncio.open_connection("127.0.0.1", PORT)
        return self
    async def call(self, method, path, body=None, token=None):
        data = json.dumps(body).encode() if body is not None else b""
        head = f"{method} {path} HTTP/1.1\r\nHost: bench\r\nContent-Length: {len(data)}\r\n"
        if body is not None:
            head += "Content-Type: application/json\r\n"
        if token:
            head += f"Authorization: Bearer {token}\r\n"
        self.w.write(head.encode() + b"\r\n" + data)
        await self.w.drain()
        status = int((await self.r.readline()).split()[1])
        length, chunked = 0, False
        while True:
            line = (await self.r.readline()).strip()
            if not line:
                break
            k, _, v = line.decode().partition(":")
            if k.lower() == "content-length":
                length = int(v)
            elif k.lower() == "transfer-encoding" and "chunked" in v:
                chunked = True
        if chunked:
            out = b""
            while True:
                n = int((await self.r.readline()).strip(), 16)
                out += await self.r.readexactly(n + 2)
                if n == 0:
                    break
                out = out[:-2]
            payload = out
        else:
            payload = await self.r.readexactly(length)
        return status, (json.loads(payload) if payload[:1] in (b"{", b"[") else payload)
    def close(self):
        self.w.close()

async def request(method, path, body=None, token=None):
    c = await Conn().open()
    try:
        return await c.call(method, path, body, token)
    finally:
        c.close()

async def send_many(room, n, conns=32):
    """n comments into `room` over `conns` keep-alive connections (service token: no rate limit)."""
    left = [n]
    async def worker():
        c = await Conn().open()
        while left[0] > 0:
            left[0] -= 1
            st, body = await c.call("POST", f"/v1/rooms/{room}/danmaku", {"text": TEXT90}, TOKEN)
            if st != 202:
                raise SystemExit(f"send: {st} {body}")
        c.close()
    await asyncio.gather(*(worker() for _ in range(conns)))

class Sampler:
    """RSS of the server every 50 ms while running: the peak."""
    def __init__(self, pid):
        self.pid = pid; self.peak = rss_mb(pid); self.on = True
        self.task = asyncio.create_task(self.run())
    async def run(self):
        while self.on:
            self.peak = max(self.peak, rss_mb(self.pid)); await asyncio.sleep(0.05)
    async def stop(self):
        self.on = False; await self.task
        return self.peak

# ---- attacks: each returns a short description of what the server answered ----

async def byte_by_byte(srv, n=100, size=4000):
    body = b'{"text":"byte by byte"}'.ljust(size, b" ")
    async def one():
        r, w = await asyncio.open_connection("127.0.0.1", PORT)
        w.transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        w.write((f"POST /v1/rooms/bbb/danmaku HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {TOKEN}\r\n"
                 f"Content-Type: application/json\r\nContent-Length: {size}\r\n\r\n").encode())
        await w.drain()
        # Read while writing: an early answer (408 past limits.body_timeout_ms on
        # a slow machine) is then seen before the connection is closed.
        async def status():
            try:
                line = await asyncio.wait_for(r.readline(), 30)
                return line.split()[1].decode() if line else "closed"
            except (ConnectionError, OSError, asyncio.TimeoutError, IndexError):
                return "reset"
        answer = asyncio.create_task(status())
        try:
            for b in body:
                if answer.done():
                    break
                w.write(bytes([b])); await w.drain(); await asyncio.sleep(0.001)
        except (ConnectionError, OSError):
            pass
        st = await answer
        w.close()
        return st
    res = await asyncio.gather(*(one() for _ in range(n)))
    return {s: res.count(s) for s in set(res)}

async def resumes_setup(srv):
    st, page = await request("GET", "/v1/rooms/resume/danmaku")
    cursor = page["cursor"]
    await send_many("resume", RESUME_ITEMS)
    # Wait until every comment is readable after the cursor (stored by the writer).
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        got, c = 0, cursor
        while True:
            st, p = await request("GET", f"/v1/rooms/resume/danmaku?cursor={c}&limit=1000")
            got += len(p["items"]); c = p["cursor"]
            if not p["items"]:
                break
        if got >= RESUME_ITEMS:
            return cursor
        await asyncio.sleep(1)
    raise SystemExit(f"only {got} of {RESUME_ITEMS} comments readable")

async def resumes(srv, cursor, n=50):
    socks = []
    for _ in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(("127.0.0.1", PORT))
        key = base64.b64encode(os.urandom(16)).decode()
        s.sendall((f"GET /v1/rooms/resume/ws?cursor={cursor} HTTP/1.1\r\nHost: bench\r\n"
                   f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                   f"Sec-WebSocket-Version: 13\r\n\r\n").encode())
        socks.append(s)
    await asyncio.sleep(HOLD_SECS)
    # What the server answered (the 101 or a 503 past the resume bound).
    answers = {}
    for s in socks:
        s.setblocking(False)
        try:
            first = s.recv(12)
            a = first.split()[1].decode() if len(first.split()) > 1 else "closed"
        except (BlockingIOError, OSError, IndexError):
            a = "none"
        answers[a] = answers.get(a, 0) + 1
        s.close()
    return answers

async def range_setup(srv):
    st, s = await request("POST", "/v1/rooms/rangeroom/sessions", {"vod": "huge"}, TOKEN)
    if st != 201:
        raise SystemExit(f"session: {st} {s}")
    await send_many("rangeroom", RANGE_COMMENTS)
    st, s = await request("POST", "/v1/vods/huge/end", {}, TOKEN)
    if st != 200:
        raise SystemExit(f"end: {st} {s}")
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        st, v = await request("GET", "/v1/vods/huge")
        if st == 200 and v.get("count", 0) >= RANGE_COMMENTS:
            return None
        await asyncio.sleep(1)
    raise SystemExit(f"only {v.get('count')} of {RANGE_COMMENTS} archived")

async def range_attack(srv, _=None, conc=64):
    stop = time.monotonic() + RANGE_SECS
    lat, statuses = [], {}
    async def worker():
        c = await Conn().open()
        while time.monotonic() < stop:
            t0 = time.perf_counter()
            st, _ = await c.call("GET", f"/v1/vods/huge/danmaku?from_ms={random.randrange(0, 60000)}&limit=1")
            lat.append((time.perf_counter() - t0) * 1000)
            statuses[st] = statuses.get(st, 0) + 1
        c.close()
    await asyncio.gather(*(worker() for _ in range(conc)))
    lat.sort()
    return f"{len(lat)} pages, median {statistics.median(lat):.1f} ms, p99 {lat[int(len(lat) * 0.99)]:.1f} ms, {statuses}"

async def range_poke(srv):
    """One page of another segment: the rows cache (moka) drops idle entries
    only when it is used, so this shows what the idle cache still held."""
    await request("GET", "/v1/vods/huge/danmaku?from_ms=400000&limit=1")

PLAN = {
    "byte_by_byte": (None, byte_by_byte, None),
    "resumes": (resumes_setup, resumes, None),
    "range": (range_setup, range_attack, range_poke),
}

async def one_run(name):
    setup, attack, poke = PLAN[name]
    srv = Server()
    try:
        await srv.ready()
        arg = await setup(srv) if setup else None
        await asyncio.sleep(SETTLE_SECS)
        idle = rss_mb(srv.pid)
        load = Load(srv.pid)
        sampler = Sampler(srv.pid)
        t0 = time.monotonic()
        what = await (attack(srv, arg) if setup else attack(srv))
        took = time.monotonic() - t0
        peak = await sampler.stop()
        curve = []
        start = time.monotonic()
        for m in MARKS:
            await asyncio.sleep(max(0, start + m - time.monotonic()))
            curve.append((m, rss_mb(srv.pid)))
        after = curve[-1][1]
        ratio = after / idle
        poked = ""
        if poke:
            await poke(srv)
            await asyncio.sleep(15)
            poked = f"; 15 s after one more request (caches evict idle entries): {rss_mb(srv.pid):.1f} MB"
        print(f"{name}: idle {idle:.1f} MB, peak {peak:.1f} MB (+{peak - idle:.1f}), "
              f"after {AFTER_SECS:.0f} s {after:.1f} MB, ratio {ratio:.2f} "
              f"({'met' if ratio <= 1.2 else 'NOT met'}: <= 1.20); attack {took:.1f} s: {what}; "
              f"after: " + " ".join(f"{m:.0f}s={v:.1f}" for m, v in curve) +
              f"{poked}; other_cpu {load.other_pct():.0f}%", flush=True)
        return idle, peak, after
    finally:
        srv.stop()

async def main():
    for name in ATTACKS:
        rows = [await one_run(name) for _ in range(RUNS)]
        if RUNS > 1:
            med = [statistics.median(c) for c in zip(*rows)]
            ratios = sorted(r[2] / r[0] for r in rows)
            print(f"{name} median of {RUNS}: idle {med[0]:.1f} MB, peak {med[1]:.1f} MB, "
                  f"after {AFTER_SECS:.0f} s {med[2]:.1f} MB, ratio {statistics.median(ratios):.2f} "
                  f"(runs {' '.join(f'{r:.2f}' for r in ratios)})", flush=True)

asyncio.run(main())
PY
