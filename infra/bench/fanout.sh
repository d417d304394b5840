#!/usr/bin/env bash
# Fan-out benchmarks of issue 5 against the peers of ../shared/bench, in one
# sitting on this machine: ws_matrix.sh (deliveries/s, p50/p99, RSS) and
# ws_idle_mem.sh (memory per idle connection) for Node ws, socket.io and the
# danmaku server (release build, embedded defaults, its own fresh data dir per run).
#
#   bash infra/bench/fanout.sh [matrix|idle|all]      (default all)
#   bash infra/bench/fanout.sh cell SERVER C M T      (one ws_fanout.sh run)
#
# Knobs (environment): FANOUT_BIN (the server binary; default the release
# build, built if missing), FLUSH_MS / FLUSH_MIN_MS / FLUSH_PER_VIEWER_US
# (override live.flush_ms / flush_min_ms / flush_per_viewer_us; unset = the
# server's defaults), IDLE_SERVERS (default "ws socketio custom"), IDLE_N.
#
# Server settings for the runs: the display budget is set far above the offered
# rate (DANMAKU_LIVE__DISPLAY_BUDGET_PER_SEC=1000000) so nothing is dropped,
# rate limits are off for the publisher (a service token), and the queue of a
# room holds 1024 frames.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BENCH=${BENCH:-$ROOT/../shared/bench}
WHAT=${1:-all}
BIN=${FANOUT_BIN:-$ROOT/target/release/danmaku}
[ -x "$BIN" ] || (cd "$ROOT" && cargo build --release -q)
DATA=$(mktemp -d /tmp/danmaku-bench.XXXXXX)
trap 'rm -rf "$DATA"' EXIT
export DANMAKU_AUTH__SECRET=bench-secret
TOKEN=$("$BIN" token --user bench --role service --ttl 1d)
export DANMAKU_SERVER__DEMO=false DANMAKU_LIVE__DISPLAY_BUDGET_PER_SEC=1000000 DANMAKU_LIVE__WS_QUEUE=1024
export RUST_LOG=${RUST_LOG:-warn}
# The flush interval: the server's defaults unless overridden here.
[ -n "${FLUSH_MS:-}" ] && export DANMAKU_LIVE__FLUSH_MS=$FLUSH_MS
[ -n "${FLUSH_MIN_MS:-}" ] && export DANMAKU_LIVE__FLUSH_MIN_MS=$FLUSH_MIN_MS
[ -n "${FLUSH_PER_VIEWER_US:-}" ] && export DANMAKU_LIVE__FLUSH_PER_VIEWER_US=$FLUSH_PER_VIEWER_US
export CUSTOM_PORT=${BENCH_DANMAKU_PORT:-8094}
# A fresh data dir per server start: the wrapper wipes it and execs the server,
# so the PID the bench scripts measure is the server's.
cat >"$DATA/serve.sh" <<EOF
#!/usr/bin/env bash
rm -rf "$DATA/d"
exec "$BIN" serve --listen "127.0.0.1:$CUSTOM_PORT" --data-dir "$DATA/d"
EOF
chmod +x "$DATA/serve.sh"
export CUSTOM_CMD="$DATA/serve.sh"
export CUSTOM_SUB_URL="ws://127.0.0.1:$CUSTOM_PORT/v1/rooms/r1/ws"
export CUSTOM_PUB_URL="ws://127.0.0.1:$CUSTOM_PORT/v1/rooms/r1/ws?token=$TOKEN"
export CUSTOM_PUB_TEMPLATE='{"type":"send","text":"{json_str}"}'
export CUSTOM_TS_KEY=sent_us
export PAYLOAD=60
cd "$BENCH"
if [ "$WHAT" = matrix ] || [ "$WHAT" = all ]; then
  ./ws_matrix.sh ws socketio custom
fi
if [ "$WHAT" = idle ] || [ "$WHAT" = all ]; then
  # ws_idle_mem.sh can exit non-zero after printing its result (its EXIT trap's
  # last test); go on with the next server either way.
  for s in ${IDLE_SERVERS:-ws socketio custom}; do
    ./ws_idle_mem.sh "$s" "${IDLE_N:-10000}" || echo "(ws_idle_mem.sh $s exited with $?)" >&2
  done
fi
if [ "$WHAT" = cell ]; then
  # One cell: bash infra/bench/fanout.sh cell SERVER C M T
  ./ws_fanout.sh "$2" "$3" "$4" "$5"
fi
