#!/usr/bin/env bash
# build_cost.sh DIR REDIS_FILE LABEL: build-time figures of issue 12 for one checkout.
set -u
dir=$1; redis_file=$2; label=$3
out=${BUILD_COST_OUT:-/tmp/build_cost-$label.txt}
export CARGO_TARGET_DIR=$dir/target-bench
cd "$dir"
t() { # t NAME CMD...: wall and CPU seconds
  local name=$1; shift
  /usr/bin/time -f "$name wall=%e user=%U sys=%S maxrss_kb=%M" -a -o "$out" "$@" >/dev/null 2>>"${out%.txt}.log"
}
: > "$out"
echo "label=$label commit=$(git rev-parse --short HEAD) started=$(date -u +%FT%TZ) loadavg=$(cut -d' ' -f1-3 /proc/loadavg)" >> "$out"
rm -rf "$CARGO_TARGET_DIR"
t cold_release_bin cargo build --release --locked --bin danmaku
echo "// bench touch $(date +%s%N)" >> "$redis_file"
t touch_redis_release_bin cargo build --release --locked --bin danmaku
git checkout -- "$redis_file"
rm -rf "$CARGO_TARGET_DIR"
t clean_test_live_norun cargo test --locked -p danmaku-live --no-run
echo "// bench touch $(date +%s%N)" >> "$redis_file"
t touch_redis_test_live_norun cargo test --locked -p danmaku-live --no-run
git checkout -- "$redis_file"
for p in danmaku-ingest danmaku-live danmaku-archive danmaku-replay-api danmaku-core danmaku; do
  n=$(cargo tree --locked -p $p -e normal,build --prefix none 2>/dev/null | sed 's/ (\*)//' | sort -u | wc -l)
  echo "crates $p $n" >> "$out"
done
echo "finished=$(date -u +%FT%TZ)" >> "$out"
