#!/usr/bin/env bash
# Connection capacity of one live node (issue 17, item 4;
# docs/benchmarks/connections.md): N concurrent WebSocket viewers, server RSS
# and kernel memory per connection, a reconnect storm of all of them resumed by
# cursor, and a broadcast to all of them at RATE comments/s.
#
#   bash infra/bench/conn_capacity.sh            # VIEWERS=100000 (or as many as RLIMIT_NOFILE allows)
#
# Knobs (environment): VIEWERS (wanted viewers; capped below the hard
# RLIMIT_NOFILE of this shell, which neither process can exceed), SOURCES
# (loopback source addresses 127.0.0.2.., default: enough for 2 x VIEWERS at
# ~25,000 ports each, at least 4), RATE (10), WINDOW_SECS (20), ROUNDS (3),
# CONNECT_CONC (2048), PIN (1: server on CPU 0, load tool on CPU 1), PORT
# (8095), ROLES (ingest,live: `live` alone has no intake for the publisher),
# EXTRA_ENV (more DANMAKU_* settings, e.g.
# "DANMAKU_LIVE__MAX_CONCURRENT_RESUMES=4096"), CC_BIN / CC_TOOL (binaries),
# RESULTS_DIR (/tmp/conn_capacity).
#
# The server: release build, embedded defaults, a fresh data dir,
# --roles ingest,live, with the caps raised so they are not what limits:
# live.max_connections and server.max_connections = VIEWERS + 1000,
# server.max_connections_per_ip = 0 (every viewer is on loopback).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BIN=${CC_BIN:-$ROOT/target/release/danmaku}
TOOL=${CC_TOOL:-$ROOT/target/release/examples/conn_capacity}
[ -x "$BIN" ] || (cd "$ROOT" && cargo build --release -q -p danmaku --bin danmaku)
[ -x "$TOOL" ] || (cd "$ROOT" && cargo build --release -q -p danmaku-benches --example conn_capacity)
RESULTS_DIR=${RESULTS_DIR:-/tmp/conn_capacity}
mkdir -p "$RESULTS_DIR"
LOG=$RESULTS_DIR/conn_capacity.log
PORT=${PORT:-8095}
ROLES=${ROLES:-ingest,live}

# Descriptors: both processes get the hard limit as their soft limit; a
# viewer costs one descriptor in each, so the hard limit bounds VIEWERS.
HARD=$(ulimit -Hn)
[ "$HARD" = unlimited ] && HARD=1048576
ulimit -n "$HARD"
WANT=${VIEWERS:-100000}
FIT=$((HARD - 200))
if [ "$WANT" -gt "$FIT" ]; then
  echo "RLIMIT_NOFILE hard limit is $HARD here (raising it needs CAP_SYS_RESOURCE): $WANT viewers cannot fit in one process; running $FIT" | tee -a "$LOG" >&2
  WANT=$FIT
fi
SOURCES=${SOURCES:-$(( (2 * WANT + 24999) / 25000 ))}
[ "$SOURCES" -lt 4 ] && SOURCES=4

DATA=$(mktemp -d /tmp/danmaku-cc.XXXXXX)
SPID=
cleanup() {
  [ -n "$SPID" ] && kill "$SPID" 2>/dev/null && wait "$SPID" 2>/dev/null || true
  rm -rf "$DATA"
}
trap cleanup EXIT

pin_srv=(); pin_load=()
if [ "${PIN:-1}" = 1 ]; then pin_srv=(taskset -c 0); pin_load=(taskset -c 1); fi

export DANMAKU_AUTH__SECRET=bench-secret
TOKEN=$("$BIN" token --user bench --role service --ttl 1d)
{
  echo "=== $(date -u +%FT%TZ) conn_capacity viewers=$WANT sources=$SOURCES roles=$ROLES"
  echo "machine: $(nproc) cores, $(awk '/MemTotal/{printf "%.1f GiB", $2/1048576}' /proc/meminfo); loadavg $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "limits: RLIMIT_NOFILE soft/hard $(ulimit -Sn)/$(ulimit -Hn); fs.nr_open $(cat /proc/sys/fs/nr_open); ip_local_port_range $(tr '\t' ' ' </proc/sys/net/ipv4/ip_local_port_range); tcp_tw_reuse $(cat /proc/sys/net/ipv4/tcp_tw_reuse); somaxconn $(cat /proc/sys/net/core/somaxconn); nf_conntrack $(cat /proc/sys/net/netfilter/nf_conntrack_count 2>/dev/null || echo -)/$(cat /proc/sys/net/netfilter/nf_conntrack_max 2>/dev/null || echo -); tcp_mem $(tr '\t' ' ' </proc/sys/net/ipv4/tcp_mem)"
  echo "server: $BIN ($(date -u -r "$BIN" +%FT%TZ)); extra env: ${EXTRA_ENV:-none}"
} | tee -a "$LOG"

env DANMAKU_SERVER__DEMO=false \
  DANMAKU_LIVE__MAX_CONNECTIONS=$((WANT + 1000)) \
  DANMAKU_SERVER__MAX_CONNECTIONS=$((WANT + 1000)) \
  DANMAKU_SERVER__MAX_CONNECTIONS_PER_IP=0 \
  RUST_LOG=${RUST_LOG:-warn} ${EXTRA_ENV:-} \
  "${pin_srv[@]}" "$BIN" serve --roles "$ROLES" --listen "127.0.0.1:$PORT" --data-dir "$DATA/d" \
  >"$RESULTS_DIR/server.out" 2>&1 &
SPID=$!
for _ in $(seq 150); do
  curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1 && break
  kill -0 "$SPID" 2>/dev/null || { cat "$RESULTS_DIR/server.out" >&2; exit 1; }
  sleep 0.1
done
# `taskset` execs the server, so $SPID is the server's pid.
echo "server pid $SPID, RLIMIT_NOFILE $(awk '/Max open files/{print $4"/"$5}' /proc/$SPID/limits)" | tee -a "$LOG"

"${pin_load[@]}" "$TOOL" --url "ws://127.0.0.1:$PORT" --room cc --viewers "$WANT" \
  --sources "$SOURCES" --server-pid "$SPID" --token "$TOKEN" \
  --rate "${RATE:-10}" --window-secs "${WINDOW_SECS:-20}" --rounds "${ROUNDS:-3}" \
  --connect-conc "${CONNECT_CONC:-2048}" 2>&1 | tee -a "$LOG"

echo "server warnings and errors:" | tee -a "$LOG"
grep -iE 'warn|error' "$RESULTS_DIR/server.out" | cut -c1-400 | sort | uniq -c | sort -rn | head -20 | tee -a "$LOG" || true
