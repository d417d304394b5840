#!/usr/bin/env bash
# pipeline_latency.sh -- send -> viewer latency through Kafka and Redis.
# Per run: starts a fresh redis-server and a fresh librdkafka mock cluster (3
# brokers, in a process of its own; DANMAKU_TEST_KAFKA=host:port uses a real
# broker instead, whose topic must exist) and a fresh data dir, then runs
# ../shared/bench/ws_fanout.sh against `danmaku serve` configured with
# kafka.brokers and redis.url: C viewers of one room, one publisher sending M
# comments/s over its WebSocket for T s. Prints ws_fanout's line per run and the
# medians. Fresh Kafka per run: a server stopped by ws_fanout (SIGTERM, SIGKILL
# after 5 s) may leave its consumer in the group `live-writer`, and the next
# run's writer would then stall in a rebalance when that member expires.
#
# Placement: the server is pinned to CPU 0 and wsload to CPU 1 by ws_fanout.sh;
# REDIS_CPUS (default 0: Redis shares the server's core) and KAFKA_CPUS (default
# 0-1: the mock brokers float) place Redis and the mock brokers, as the run of
# 2026-11-24 did. REDIS_CPUS=1 KAFKA_CPUS=1 puts them beside the load tool.
# Run from the project root:  bash infra/bench/pipeline_latency.sh
set -euo pipefail
cd "$(dirname "$0")/../.."

C=${C:-1000}                  # viewers
M=${M:-1000}                  # comments per second
T=${T:-10}                    # seconds of publishing
RUNS=${RUNS:-3}
PORT=${PORT:-8093}            # the danmaku server (ws_fanout's custom port)
FLUSH_MS=${FLUSH_MS:-}        # live.flush_ms for the run (empty = the default)
FETCH_WAIT_MS=${FETCH_WAIT_MS:-} # kafka.fetch_wait_max_ms (empty = the default)
REDIS_CPUS=${REDIS_CPUS:-0}
KAFKA_CPUS=${KAFKA_CPUS:-0-1}
BENCH=${BENCH:-../shared/bench}
SECRET=bench-secret-$$

cargo build --release -q --bin danmaku -p danmaku
cargo build --release -q -p danmaku-benches --example mock_kafka
BIN=$PWD/target/release/danmaku
WORK=$(mktemp -d)
. "$BENCH/lib.sh"

pids=()
stop_all() { for p in "${pids[@]}"; do stop_pid "$p"; done; pids=(); }
cleanup() { stop_all; rm -rf "$WORK"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

echo "# pipeline_latency C=$C M=$M T=$T RUNS=$RUNS redis=$(redis-server --version | awk '{print $3}') redis_cpus=$REDIS_CPUS kafka_cpus=$KAFKA_CPUS flush_ms=${FLUSH_MS:-default} fetch_wait_max_ms=${FETCH_WAIT_MS:-default}" >&2
lines=()
for r in $(seq "$RUNS"); do
  RUN=$WORK/run$r
  mkdir -p "$RUN"
  RPORT=$(free_port)
  taskset -c "$REDIS_CPUS" redis-server --port "$RPORT" --bind 127.0.0.1 --save "" --appendonly no \
    --dir "$RUN" >"$RUN/redis.log" 2>&1 &
  pids+=($!)
  TOPIC=danmaku.bench.$$.$r
  if [ -n "${DANMAKU_TEST_KAFKA:-}" ]; then
    BROKERS=$DANMAKU_TEST_KAFKA; KAFKA_KIND="external broker $BROKERS"
  else
    taskset -c "$KAFKA_CPUS" target/release/examples/mock_kafka "$TOPIC" 12 >"$RUN/kafka.out" 2>"$RUN/kafka.log" &
    pids+=($!)
    for _ in $(seq 100); do grep -q bootstrap= "$RUN/kafka.out" 2>/dev/null && break; sleep 0.1; done
    BROKERS=$(sed -n 's/^bootstrap=//p' "$RUN/kafka.out")
    KAFKA_KIND="librdkafka mock cluster (3 brokers, own process)"
  fi
  wait_port "$RPORT" "${pids[0]}" 10
  ENV="DANMAKU_AUTH__SECRET=$SECRET DANMAKU_SERVER__DEMO=false DANMAKU_KAFKA__BROKERS=$BROKERS"
  ENV="$ENV DANMAKU_KAFKA__TOPIC=$TOPIC DANMAKU_REDIS__URL=redis://127.0.0.1:$RPORT/"
  ENV="$ENV DANMAKU_LIVE__DISPLAY_BUDGET_PER_SEC=1000000 DANMAKU_LIMITS__ROOM_PER_SEC=100000"
  ENV="$ENV DANMAKU_LIMITS__ROOM_BURST=100000"
  [ -n "$FLUSH_MS" ] && ENV="$ENV DANMAKU_LIVE__FLUSH_MS=$FLUSH_MS"
  [ -n "$FETCH_WAIT_MS" ] && ENV="$ENV DANMAKU_KAFKA__FETCH_WAIT_MAX_MS=$FETCH_WAIT_MS"
  TOKEN=$(env $ENV "$BIN" token --user bench --role service --data-dir "$RUN/data")
  [ "$r" = 1 ] && echo "# bus=$KAFKA_KIND" >&2
  line=$(CUSTOM_CMD="env $ENV RUST_LOG=warn $BIN serve --listen 127.0.0.1:$PORT --data-dir $RUN/data" \
    CUSTOM_PORT=$PORT \
    CUSTOM_SUB_URL="ws://127.0.0.1:$PORT/v1/rooms/r1/ws" \
    CUSTOM_PUB_URL="ws://127.0.0.1:$PORT/v1/rooms/r1/ws?token=$TOKEN" \
    CUSTOM_PUB_TEMPLATE='{"type":"send","text":"{json_str}"}' \
    CUSTOM_TS_KEY=sent_us PAYLOAD=60 SETTLE=${SETTLE:-5} \
    bash "$BENCH/ws_fanout.sh" custom "$C" "$M" "$T")
  echo "run $r: $line"
  lines+=("$line")
  stop_all
done
p50=(); p99=(); pct=()
for l in "${lines[@]}"; do
  IFS=, read -r _ _ _ _ a b c _ <<<"$l"; p50+=("$a"); p99+=("$b"); pct+=("$c")
done
echo "median: p50_ms=$(median "${p50[@]}") p99_ms=$(median "${p99[@]}") delivered_pct=$(median "${pct[@]}")"
