#!/usr/bin/env bash
# Runs the fuzz targets with cargo fuzz (nightly, libFuzzer + AddressSanitizer)
# for a bounded time each and prints one line per target: executions, time,
# coverage, corpus size and whether it crashed (CONTRIBUTING.md, "Fuzzing").
#
#   bash fuzz/run.sh [target...]        # every target when none is named
#
# Knobs (environment): FUZZ_SECS (seconds per target, default 60), FUZZ_JOBS
# (parallel libFuzzer jobs per target, default 1). Needs the nightly toolchain
# and cargo-fuzz (`rustup toolchain install nightly`, `cargo install
# cargo-fuzz`). The corpus grows in fuzz/corpus/<target>/ (not committed: seeds
# worth keeping go to fuzz/seeds/<target>/); a crash is kept in
# fuzz/artifacts/<target>/ and replays with `cargo +nightly fuzz run <target>
# <file>`, or on stable by copying it into fuzz/seeds/<target>/ and running
# `cargo test -p danmaku-fuzz-targets`.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${FUZZ_SECS:-60}
JOBS=${FUZZ_JOBS:-1}
# The fuzz crate is a workspace of its own: start from the main lock file so it
# builds the same dependency versions.
[ -f fuzz/Cargo.lock ] || cp Cargo.lock fuzz/Cargo.lock
targets=${*:-$(cargo +nightly fuzz list)}
cargo +nightly fuzz build >/dev/null 2>&1 || cargo +nightly fuzz build
echo "# $(date -u +%FT%TZ) $(rustc +nightly --version); ${SECS} s per target; loadavg $(cut -d' ' -f1-3 /proc/loadavg)"
failed=0
for t in $targets; do
  mkdir -p "fuzz/corpus/$t"
  log=$(mktemp)
  verdict=ok
  cargo +nightly fuzz run "$t" "fuzz/corpus/$t" "fuzz/seeds/$t" -- \
    -max_total_time="$SECS" -jobs="$JOBS" -workers="$JOBS" -print_final_stats=1 >"$log" 2>&1 || verdict=CRASH
  stat() { grep -o "stat::$1: *[0-9]*" "$log" | awk '{s += $2} END {print s + 0}'; }
  last=$(grep -E '^#[0-9]+' "$log" | tail -1 | grep -oE 'cov: [0-9]+ ft: [0-9]+ corp: [0-9]+/[0-9]+[a-zA-Z]*' || true)
  printf '%-14s %s: %s execs in %s s (%s/s), %s; %s new inputs; peak rss %s MB\n' \
    "$t" "$verdict" "$(stat number_of_executed_units)" "$SECS" "$(stat average_exec_per_sec)" \
    "${last:-no stats}" "$(stat new_units_added)" "$(stat peak_rss_mb)"
  if [ "$verdict" != ok ]; then
    failed=1
    grep -E 'panicked at|ERROR: |SUMMARY|Test unit written' "$log" | head -8 | sed 's/^/    /'
  fi
  rm -f "$log"
done
exit "$failed"
