#!/usr/bin/env bash
# replay_bench.sh -- the replay benchmarks of docs/benchmarks/replay.md.
#
#   cached: our cached segment (GET /v1/vods/bench/segments/0) against nginx
#           serving the exact same bytes (our body as seg.json, our gzip form as
#           seg.json.gz, gzip_static on), both pinned to CPU 0, measured by
#           ../shared/bench/static_limit.sh (wrk on CPU 1), runs interleaved.
#   zipf:   requests/s and cache hit ratio over ZIPF_VODS VODs, Zipf(s=ZIPF_S)
#           (wrk + a Lua script), with the default cache and a small one.
#   cold:   cold segment latency from the ArchiveStore (embedded, and the ScyllaDB
#           adapter against the in-process CQL test peer), in-process.
#
# Needs release builds:
#   cargo build --release -p danmaku --bin danmaku && cargo build --release -p danmaku-benches --example replay_bench
# Binds 127.0.0.1 only: ports 8089 (nginx) and 8093 (ours); refuses busy ports;
# stops what it started by PID. Everything tunable through the environment.
set -euo pipefail

# ------------------------------- tunables ---------------------------------
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
SHARED=${SHARED:-$(cd "$ROOT/../shared/bench" && pwd)}
WHAT=${WHAT:-"cached zipf cold"}
RUNS=${RUNS:-3}
PORT_OURS=${PORT_OURS:-8093}
PORT_NGINX=${PORT_NGINX:-8089}
SERVER_CPUS=${SERVER_CPUS:-0}
WRK_CPUS=${WRK_CPUS:-1}
WRK_THREADS=${WRK_THREADS:-2}
WRK_CONNS=${WRK_CONNS:-64}
WRK_DURATION=${WRK_DURATION:-10s}
BENCH_COMMENTS=${BENCH_COMMENTS:-100}     # segment 0 of VOD "bench": ~20 KB of JSON
# Targets of the cached comparison: nginx, ours (the danmaku binary), and
# optionally router / router_ct (examples/replay_bench serve: the replay router
# alone, multi-thread / current-thread runtime) to tell our cost from the wiring's.
CACHED_TARGETS=${CACHED_TARGETS:-"nginx ours"}
PORT_ROUTER=${PORT_ROUTER:-8095}
PORT_ROUTER_CT=${PORT_ROUTER_CT:-8096}
ZIPF_VODS=${ZIPF_VODS:-1000}
ZIPF_COMMENTS=${ZIPF_COMMENTS:-100}
ZIPF_S=${ZIPF_S:-1.0}
ZIPF_CACHES=${ZIPF_CACHES:-"67108864 4194304"}   # replay.cache_bytes per Zipf case
COLD_SAMPLES=${COLD_SAMPLES:-200}
COLD_SCYLLA_SAMPLES=${COLD_SCYLLA_SAMPLES:-50}
COLD_COMMENTS=${COLD_COMMENTS:-"100 6000"}
QUIET_BELOW=${QUIET_BELOW:-25}
QUIET_MAX_WAIT=${QUIET_MAX_WAIT:-60}
RESULTS_DIR=${RESULTS_DIR:-$ROOT/target/bench-replay}
BIN=${BIN:-$ROOT/target/release/danmaku}
EX=${EX:-$ROOT/target/release/examples/replay_bench}
# --------------------------------------------------------------------------

. "$SHARED/lib.sh"
mkdir -p "$RESULTS_DIR"
RESULTS_DIR=$(cd "$RESULTS_DIR" && pwd)
LOG=$RESULTS_DIR/replay_bench.log
for f in "$BIN" "$EX"; do
  [ -x "$f" ] || { echo "missing $f; build: cargo build --release -p danmaku --bin danmaku && cargo build --release -p danmaku-benches --example replay_bench" >&2; exit 1; }
done
command -v wrk >/dev/null || { echo "wrk is not installed (apt-get install -y wrk)" >&2; exit 1; }
command -v nginx >/dev/null || { echo "nginx is not installed (apt-get install -y nginx-light)" >&2; exit 1; }

SPID=; NPID=; RPID=; CPID=
cleanup() { for p in "$SPID" "$NPID" "$RPID" "$CPID"; do [ -n "$p" ] && stop_pid "$p"; done; return 0; }
trap cleanup EXIT
log() { echo "$*" | tee -a "$LOG" >&2; }

DATA=$RESULTS_DIR/data
seed() {
  rm -rf "$DATA"
  "$EX" seed --data-dir "$DATA" --bench-comments "$BENCH_COMMENTS" \
    --zipf-vods "$ZIPF_VODS" --zipf-comments "$ZIPF_COMMENTS" >>"$LOG" 2>&1
}

# start_ours CACHE_BYTES: our server, replay-api role only, pinned to SERVER_CPUS.
start_ours() {
  port_free "$PORT_OURS" || { echo "port $PORT_OURS busy" >&2; exit 1; }
  DANMAKU_SERVER__DEMO=false DANMAKU_REPLAY__CACHE_BYTES=$1 RUST_LOG=warn \
    taskset -c "$SERVER_CPUS" "$BIN" serve --roles replay-api --data-dir "$DATA" \
    --listen "127.0.0.1:$PORT_OURS" >>"$RESULTS_DIR/server.log" 2>&1 &
  SPID=$!
  wait_port "$PORT_OURS" "$SPID" 30 || { echo "server failed" >&2; tail "$RESULTS_DIR/server.log" >&2; exit 1; }
}
stop_ours() { stop_pid "$SPID"; SPID=; }

metric() { # metric NAME -> current value (0 if absent)
  curl -s "http://127.0.0.1:$PORT_OURS/metrics" | awk -v n="$1" '$1==n{v=$2} END{print v+0}'
}

# ---------------------------------------------------------------- cached
cached() {
  local www=$RESULTS_DIR/nginx/www ours="http://127.0.0.1:$PORT_OURS/v1/vods/bench/segments/0"
  mkdir -p "$www" "$RESULTS_DIR/nginx/logs" "$RESULTS_DIR/nginx/tmp"
  chmod 755 "$RESULTS_DIR" "$RESULTS_DIR/nginx" "$www"
  start_ours 67108864
  # The exact bytes our endpoint returns: the body, and its gzip form as sent.
  curl -sf -H 'Accept-Encoding: identity' "$ours" -o "$www/seg.json"
  curl -sf -H 'Accept-Encoding: gzip' "$ours" -o "$www/seg.json.gz"
  chmod 644 "$www"/seg.json*
  log "# cached: our segment ${ours}: $(stat -c %s "$www/seg.json") B, gzip $(stat -c %s "$www/seg.json.gz") B; nginx serves the same files"
  port_free "$PORT_NGINX" || { echo "port $PORT_NGINX busy" >&2; exit 1; }
  local p=$RESULTS_DIR/nginx
  cat > "$p/nginx.conf" <<EOF
worker_processes 1;
user root;
pid $p/nginx.pid;
error_log $p/logs/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  sendfile on; tcp_nopush on; tcp_nodelay on;
  keepalive_requests 10000000; keepalive_timeout 65;
  open_file_cache max=64 inactive=60s;
  types { application/json json; }
  default_type application/octet-stream;
  client_body_temp_path $p/tmp/body;
  proxy_temp_path $p/tmp/proxy;
  fastcgi_temp_path $p/tmp/fastcgi;
  uwsgi_temp_path $p/tmp/uwsgi;
  scgi_temp_path $p/tmp/scgi;
  server {
    listen 127.0.0.1:$PORT_NGINX backlog=4096;
    root $www;
    location / { gzip_static on; }
  }
}
EOF
  taskset -c "$SERVER_CPUS" nginx -p "$p" -c "$p/nginx.conf" -g 'daemon off;' >"$p/logs/stdout" 2>&1 &
  NPID=$!
  wait_port "$PORT_NGINX" "$NPID" 10 || { echo "nginx failed" >&2; cat "$p/logs/"* >&2; exit 1; }
  cmp -s <(curl -s -H 'Accept-Encoding: gzip' "http://127.0.0.1:$PORT_NGINX/seg.json") "$www/seg.json.gz" \
    || { echo "nginx does not serve our gzip bytes" >&2; exit 1; }
  local out=$RESULTS_DIR/cached.csv
  echo "target,run,case,body_bytes,req_per_s,p99_ms" > "$out"
  for r in $(seq "$RUNS"); do
    for target in $CACHED_TARGETS; do
      local base
      # ours, router and router_ct open the same embedded data dir: one at a time.
      case $target in
        nginx) base="http://127.0.0.1:$PORT_NGINX" ;;
        ours)
          for p in "$RPID" "$CPID"; do [ -n "$p" ] && stop_pid "$p"; done; RPID=; CPID=
          [ -n "$SPID" ] || start_ours 67108864
          base="$ours?b=" ;;
        router|router_ct)
          [ -n "$SPID" ] && stop_ours
          local port=$PORT_ROUTER flag=
          [ "$target" = router_ct ] && { port=$PORT_ROUTER_CT; flag=--current-thread; }
          if ! ss -ltn "sport = :$port" | grep -q LISTEN; then
            for p in "$RPID" "$CPID"; do [ -n "$p" ] && stop_pid "$p"; done; RPID=; CPID=
            port_free "$port" || { echo "port $port busy" >&2; exit 1; }
            taskset -c "$SERVER_CPUS" "$EX" serve $flag --data-dir "$DATA" --listen "127.0.0.1:$port" >>"$RESULTS_DIR/router.log" 2>&1 &
            if [ "$target" = router ]; then RPID=$!; else CPID=$!; fi
            wait_port "$port" "$!" 30 || { echo "$target failed" >&2; exit 1; }
          fi
          base="http://127.0.0.1:$port/v1/vods/bench/segments/0?b=" ;;
      esac
      RESULTS_DIR=$RESULTS_DIR/static SKIP_NGINX=1 RUNS=1 CASES="plain gzip_static" \
        TARGET_BASE="$base" PIN=1 WRK_CPUS="$WRK_CPUS" WRK_THREADS="$WRK_THREADS" \
        WRK_CONNS="$WRK_CONNS" WRK_DURATION="$WRK_DURATION" QUIET_BELOW="$QUIET_BELOW" \
        QUIET_MAX_WAIT="$QUIET_MAX_WAIT" "$SHARED/static_limit.sh" 2>>"$LOG" \
        | awk -F, -v t="$target" -v r="$r" 'NR>1{print t","r","$1","$2","$3","$4}' >> "$out"
    done
  done
  for p in "$NPID" "$RPID" "$CPID"; do [ -n "$p" ] && stop_pid "$p"; done
  NPID=; RPID=; CPID=
  [ -n "$SPID" ] && stop_ours
  log "# cached (medians of $RUNS; ratio = target / nginx, same run)"
  echo "target,case,nginx_req_per_s,req_per_s,ratio,nginx_p99_ms,p99_ms"
  for t in $CACHED_TARGETS; do
    [ "$t" = nginx ] && continue
    for c in plain gzip_static; do
      local nr or np op
      nr=$(median $(awk -F, -v c=$c '$1=="nginx"&&$3==c{print $5}' "$out"))
      or=$(median $(awk -F, -v c=$c -v t=$t '$1==t&&$3==c{print $5}' "$out"))
      np=$(median $(awk -F, -v c=$c '$1=="nginx"&&$3==c{print $6}' "$out"))
      op=$(median $(awk -F, -v c=$c -v t=$t '$1==t&&$3==c{print $6}' "$out"))
      echo "$t,$c,$nr,$or,$(awk -v a="$or" -v b="$nr" 'BEGIN{printf "%.2f", a/b}'),$np,$op" | tee -a "$LOG"
    done
  done
}

# ---------------------------------------------------------------- zipf
zipf() {
  local lua=$RESULTS_DIR/zipf.lua
  cat > "$lua" <<EOF
-- Zipf(s=$ZIPF_S) over $ZIPF_VODS VODs: GET /v1/vods/z<k>/segments/0, gzip.
local n, s = $ZIPF_VODS, $ZIPF_S
local cdf, sum = {}, 0
for k = 1, n do sum = sum + 1 / k ^ s; cdf[k] = sum end
for k = 1, n do cdf[k] = cdf[k] / sum end
local counter = 0
function setup(thread) thread:set("tid", counter); counter = counter + 1 end
function init(args) math.randomseed(4242 + tid) end
local headers = { ["Accept-Encoding"] = "gzip" }
function request()
  local u, lo, hi = math.random(), 1, n
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if cdf[mid] < u then lo = mid + 1 else hi = mid end
  end
  return wrk.format("GET", "/v1/vods/z" .. (lo - 1) .. "/segments/0", headers)
end
EOF
  # hit ratio = requests served without a store read of their own:
  # (hits + coalesced) / (hits + coalesced + misses).
  echo "cache_bytes,run,req_per_s,p99_ms,hits,coalesced,misses,hit_ratio,background_busy_pct"
  for cache in $ZIPF_CACHES; do
    start_ours "$cache"
    # Warm-up: fills the caches and the per-VOD views.
    taskset -c "$WRK_CPUS" wrk -t "$WRK_THREADS" -c "$WRK_CONNS" -d 5s -s "$lua" "http://127.0.0.1:$PORT_OURS" >/dev/null 2>&1 || true
    for r in $(seq "$RUNS"); do
      local busy h0 m0 c0 out h1 m1 c1
      busy=$(wait_quiet "$QUIET_BELOW" "$QUIET_MAX_WAIT")
      h0=$(metric danmaku_replay_cache_hits_total); m0=$(metric danmaku_replay_cache_misses_total); c0=$(metric danmaku_replay_cache_coalesced_total)
      out=$(timeout 120 taskset -c "$WRK_CPUS" wrk -t "$WRK_THREADS" -c "$WRK_CONNS" -d "$WRK_DURATION" --latency -s "$lua" "http://127.0.0.1:$PORT_OURS" 2>&1 || true)
      h1=$(metric danmaku_replay_cache_hits_total); m1=$(metric danmaku_replay_cache_misses_total); c1=$(metric danmaku_replay_cache_coalesced_total)
      printf '%s\n' "# zipf cache=$cache run $r background_busy_pct=$busy" "$out" >> "$LOG"
      grep -q 'Non-2xx' <<<"$out" && log "# WARNING zipf run $r: non-2xx responses"
      local rps p99
      rps=$(awk '/^Requests\/sec:/{print $2}' <<<"$out")
      p99=$(awk '$1=="99%"{v=$2; if (v ~ /us$/) {sub(/us$/,"",v); v=v/1000} else if (v ~ /ms$/) {sub(/ms$/,"",v)} else if (v ~ /s$/) {sub(/s$/,"",v); v=v*1000}; print v}' <<<"$out")
      local h=$((h1-h0)) c=$((c1-c0)) m=$((m1-m0))
      echo "$cache,$r,$rps,$p99,$h,$c,$m,$(awk -v h=$h -v c=$c -v m=$m 'BEGIN{printf "%.4f", (h+c+m) ? (h+c)/(h+c+m) : 0}'),$busy" | tee -a "$LOG"
    done
    stop_ours
  done
}

# ---------------------------------------------------------------- cold
cold() {
  echo "store,comments,samples,run,p50_ms,p90_ms,p99_ms,max_ms"
  for n in $COLD_COMMENTS; do
    log "# cold embedded comments=$n background_busy_pct=$(wait_quiet "$QUIET_BELOW" "$QUIET_MAX_WAIT")"
    taskset -c "$SERVER_CPUS" "$EX" cold --store embedded --samples "$COLD_SAMPLES" --comments "$n" --runs "$RUNS" 2>>"$LOG" | tail -n +2 | tee -a "$LOG"
    log "# cold scylla (kassandra test peer) comments=$n background_busy_pct=$(wait_quiet "$QUIET_BELOW" "$QUIET_MAX_WAIT")"
    taskset -c "$SERVER_CPUS" "$EX" cold --store scylla ${SCYLLA_NODES:+--scylla-nodes "$SCYLLA_NODES"} --samples "$COLD_SCYLLA_SAMPLES" --comments "$n" --runs "$RUNS" 2>>"$LOG" | tail -n +2 | tee -a "$LOG"
  done
}

log "# replay_bench $(date -u +%FT%TZ) WHAT=\"$WHAT\" RUNS=$RUNS wrk -t$WRK_THREADS -c$WRK_CONNS -d$WRK_DURATION server_cpus=$SERVER_CPUS wrk_cpus=$WRK_CPUS background_busy_pct=$(busy_pct 1)"
case " $WHAT " in *" cached "*|*" zipf "*) seed ;; esac
for w in $WHAT; do "$w"; done
