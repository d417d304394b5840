#!/usr/bin/env bash
# The edge under attack (issue 13, item 10, first two targets), against the
# release binary with the embedded defaults, on loopback:
#
#   1. byte_by_byte: 100 connections each send a 2,000-byte body one byte per
#      TCP segment with a valid token, so the server reads every byte (the
#      answers show whether the bodies arrived within limits.body_timeout_ms:
#      202, or 408 on a machine too busy to send them in time). Target: RSS
#      grows by < 64 MB.
#   2. slow_bodies: 2,000 connections send a body one byte a second, each
#      reconnecting half a second after the server closed it (so about 2,000
#      are always trying). Meanwhile /healthz is asked from a new connection every 200 ms.
#      Target: it answers in < 100 ms.
#
# Next to them: the server idle (RSS, /healthz latency), and RSS some seconds
# after each attack. Prints one line per figure; the machine's background load
# (CPU busy outside the server and this driver) is printed beside each.
#
#   bash infra/bench/attack_edge.sh
#
# Knobs (environment): EDGE_BIN (the server; default the release build, built
# if missing), EDGE_PORT (default 18095), BYTE_BODY (2000), SLOW_CONNS (2000),
# SLOW_SECS (20),
# AFTER_SECS (seconds to wait before the "after" RSS sample, default 10).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BIN=${EDGE_BIN:-$ROOT/target/release/danmaku}
[ -x "$BIN" ] || (cd "$ROOT" && cargo build --release -q -p danmaku)
PORT=${EDGE_PORT:-18095}
DATA=$(mktemp -d /tmp/danmaku-edge.XXXXXX)
export DANMAKU_AUTH__SECRET=edge-bench-secret DANMAKU_SERVER__DEMO=false
export RUST_LOG=${RUST_LOG:-warn}
TOKEN=$("$BIN" token --user edge-bench --role service --ttl 1d)
"$BIN" serve --listen "127.0.0.1:$PORT" --data-dir "$DATA/d" >"$DATA/out.log" 2>"$DATA/err.log" &
PID=$!
trap 'kill $PID 2>/dev/null; wait $PID 2>/dev/null; rm -rf "$DATA"' EXIT
for _ in $(seq 100); do
  curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1 && break
  sleep 0.1
done
# The driver holds thousands of sockets.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
echo "# $(date -u +%FT%TZ) $(uname -r) $(nproc) cores; server $BIN pid $PID; loadavg $(cut -d' ' -f1-3 /proc/loadavg)"
PORT=$PORT PID=$PID TOKEN=$TOKEN python3 - <<'PY'
import asyncio, os, statistics, time

PORT = int(os.environ["PORT"]); PID = int(os.environ["PID"]); TOKEN = os.environ["TOKEN"]
SLOW_CONNS = int(os.environ.get("SLOW_CONNS", "2000"))
SLOW_SECS = float(os.environ.get("SLOW_SECS", "20"))
AFTER_SECS = float(os.environ.get("AFTER_SECS", "10"))
BYTE_BODY = int(os.environ.get("BYTE_BODY", "2000"))
HZ = os.sysconf("SC_CLK_TCK")

def rss_mb():
    for line in open(f"/proc/{PID}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0

def cpu_ticks(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return int(f[11]) + int(f[12])

def total_ticks():
    f = open("/proc/stat").readline().split()[1:]
    v = list(map(int, f))
    return sum(v), v[3] + v[4]  # all, idle + iowait

class Load:
    """Busy CPU over an interval: the server's, this driver's, everyone else's (% of the machine)."""
    def __init__(self):
        self.t0, self.i0 = total_ticks(); self.s0 = cpu_ticks(PID); self.d0 = cpu_ticks(os.getpid())
    def done(self):
        t, i = total_ticks(); s = cpu_ticks(PID); d = cpu_ticks(os.getpid())
        span = max(1, t - self.t0)
        busy = span - (i - self.i0)
        pct = lambda x: 100.0 * x / span
        return f"server_cpu {pct(s - self.s0):.0f}% driver_cpu {pct(d - self.d0):.0f}% other_cpu {pct(busy - (s - self.s0) - (d - self.d0)):.0f}%"

def head(path, length, extra=""):
    return (f"POST {path} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {length}\r\n{extra}\r\n").encode()

async def read_status(reader, timeout):
    try:
        line = await asyncio.wait_for(reader.readline(), timeout)
        parts = line.split()
        return int(parts[1]) if len(parts) > 1 else "closed"
    except (asyncio.TimeoutError, ConnectionError, OSError):
        return "reset"

async def healthz(local="127.0.0.1"):
    # A process of its own (curl), timed by itself: the driver's event loop,
    # busy with thousands of attack sockets, adds nothing to the figure.
    p = await asyncio.create_subprocess_exec(
        "curl", "-s", "-o", "/dev/null", "--max-time", "2", "--interface", local,
        "-w", "%{http_code} %{time_total}", f"http://127.0.0.1:{PORT}/healthz",
        stdout=asyncio.subprocess.PIPE)
    out, _ = await p.communicate()
    try:
        code, secs = out.decode().split()
        return float(secs) * 1000, code == "200"
    except ValueError:
        return 2000.0, False

def lat(samples):
    ms = sorted(m for m, ok in samples if ok)
    fails = sum(1 for _, ok in samples if not ok)
    if not ms:
        return f"no answer ({fails} failures)"
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    under = sum(1 for m in ms if m < 100)
    return (f"median {statistics.median(ms):.2f} ms, p99 {p99:.2f} ms, max {ms[-1]:.2f} ms, "
            f"{under}/{len(samples)} under 100 ms, {fails} failed")

async def idle():
    load = Load()
    samples = []
    for _ in range(25):
        samples.append(await healthz()); await asyncio.sleep(0.04)
    print(f"idle: rss {rss_mb():.1f} MB; /healthz from a new connection: {lat(samples)}; {load.done()}", flush=True)

async def byte_by_byte(n=100, size=BYTE_BODY):
    before = rss_mb(); peak = before
    body = (b'{"text":"byte by byte"}').ljust(size, b" ")
    async def one():
        r, w = await asyncio.open_connection("127.0.0.1", PORT)
        w.transport.get_extra_info("socket").setsockopt(6, 1, 1)  # TCP_NODELAY
        try:
            w.write(head("/v1/rooms/edge-bench/danmaku", size)); await w.drain()
            for b in body:
                # One byte per send (a segment of its own without Nagle); the
                # other connections' turns space them out.
                w.write(bytes([b])); await w.drain()
                await asyncio.sleep(0)
        except (ConnectionError, OSError):
            pass
        st = await read_status(r, 15); w.close(); return st
    load = Load()
    t0 = time.perf_counter()
    tasks = [asyncio.create_task(one()) for _ in range(n)]
    while not all(t.done() for t in tasks):
        peak = max(peak, rss_mb()); await asyncio.sleep(0.05)
    took = time.perf_counter() - t0
    answers = {}
    for t in tasks:
        answers[t.result()] = answers.get(t.result(), 0) + 1
    print(f"byte_by_byte: {n} connections x {size} B one byte per segment ({took:.1f} s): "
          f"rss {before:.1f} -> peak {peak:.1f} MB (+{peak - before:.1f} MB, target < 64 MB); answers {answers}; {load.done()}", flush=True)
    await asyncio.sleep(AFTER_SECS)
    print(f"byte_by_byte: rss {AFTER_SECS:.0f} s after: {rss_mb():.1f} MB ({100 * (rss_mb() - before) / before:+.0f} % of before)", flush=True)

async def slow_bodies(n=SLOW_CONNS, secs=SLOW_SECS):
    before = rss_mb(); peak = before
    stop = time.monotonic() + secs
    outcomes = {}; opened = [0]; live = [0]
    async def attacker():
        while time.monotonic() < stop:
            try:
                r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", PORT), 5)
            except (asyncio.TimeoutError, OSError):
                outcomes["connect_failed"] = outcomes.get("connect_failed", 0) + 1
                await asyncio.sleep(0.2); continue
            opened[0] += 1; live[0] += 1
            w.write(head("/v1/rooms/edge-bench/danmaku", 4000))
            status = None
            reader = asyncio.create_task(read_status(r, secs + 10))
            try:
                while time.monotonic() < stop and not reader.done():
                    w.write(b" ")
                    await w.drain()
                    await asyncio.wait([reader], timeout=1.0)
            except (ConnectionError, OSError):
                pass
            if reader.done():
                status = reader.result()
            else:
                reader.cancel()
            live[0] -= 1
            w.close()
            if status is not None:
                outcomes[status] = outcomes.get(status, 0) + 1
            # Back again soon (a real attacker would not even wait).
            await asyncio.sleep(0.5)
    load = Load()
    tasks = [asyncio.create_task(attacker()) for _ in range(n)]
    await asyncio.sleep(2)  # let them all connect
    same, other = [], []
    while time.monotonic() < stop - 0.5:
        same.append(await healthz("127.0.0.1"))
        other.append(await healthz("127.0.0.2"))
        peak = max(peak, rss_mb())
        await asyncio.sleep(0.2)
    await asyncio.gather(*tasks, return_exceptions=True)
    print(f"slow_bodies: {n} connections one byte a second, reconnecting, {secs:.0f} s ({opened[0]} opened): "
          f"rss {before:.1f} -> peak {peak:.1f} MB (+{peak - before:.1f} MB); server answers {outcomes}; {load.done()}", flush=True)
    print(f"slow_bodies: /healthz from a new connection, same address as the attack: {lat(same)} (target < 100 ms)", flush=True)
    print(f"slow_bodies: /healthz from a new connection, another address (127.0.0.2): {lat(other)} (target < 100 ms)", flush=True)
    await asyncio.sleep(AFTER_SECS)
    print(f"slow_bodies: rss {AFTER_SECS:.0f} s after: {rss_mb():.1f} MB ({100 * (rss_mb() - before) / before:+.0f} % of before)", flush=True)

async def main():
    await idle()
    await byte_by_byte()
    await slow_bodies()
    await idle()

asyncio.run(main())
PY
echo "# refusals: $(curl -s "http://127.0.0.1:$PORT/metrics" | grep -E '^danmaku_http_(connections_refused_total|body_timeouts_total)' | tr '\n' ' ')"
