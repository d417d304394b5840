#!/usr/bin/env bash
# The pages' performance in headless Chromium (issue 15, item 6;
# docs/BENCHMARKS.md, "The pages in Chromium"), against the release binary on
# loopback with a temporary data dir per part:
#
#   bundle  raw and gzip bytes of each page's HTML + assets and of the SDK
#   paint   first paint / first contentful paint of / and /rooms/{room}
#   live    the room page's frame rate while the room gets RATE comments/s
#   replay  the replay page's JS heap while a 3-hour VOD (6,000 comments per
#           segment, seeded by the web_seed example) plays through at 16x
#
#   bash infra/bench/web_pages.sh [bundle] [paint] [live] [replay]
#
# (no argument: all four; the replay part takes about 12 minutes). Every figure
# is printed with the load average of that moment: 2 shared cores, so read it
# before trusting a frame rate. Before starting, the script waits (at most
# QUIET_WAIT seconds, default 300) for the 1-minute load average to fall below
# QUIET_LOAD (default 1.5), and says whether it did.
#
# Knobs (environment): RATE (500), SECONDS (20), PAINT_SAMPLES (10),
# REPLAY_HOURS (3), PER_SEGMENT (6000), HEAP_EVERY_S (15), CHROMIUM
# (/usr/bin/chromium). Needs web/'s npm packages (npm ci in web/) and Debian's
# chromium, as the browser tests do (infra/dev/test.sh installs both).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
cargo build --release -q -p danmaku
cargo build --release -q -p danmaku-benches --example web_seed
[ -d web/node_modules/playwright-core ] || (cd web && npm ci --no-audit --no-fund --silent)

QUIET_WAIT=${QUIET_WAIT:-300}
QUIET_LOAD=${QUIET_LOAD:-1.5}
waited=0
while awk -v max="$QUIET_LOAD" '{exit !($1 >= max)}' /proc/loadavg && [ "$waited" -lt "$QUIET_WAIT" ]; do
  sleep 10
  waited=$((waited + 10))
done
echo "# $(date -u +%FT%TZ) $(nproc) cores; waited ${waited} s for load < $QUIET_LOAD; loadavg $(cut -d' ' -f1-3 /proc/loadavg)"

# Only the variables the harness means for the server reach it (web/e2e/lib.mjs
# drops every other DANMAKU_* from the environment it gives the server).
cd web
DANMAKU_BIN="$ROOT/target/release/danmaku" WEB_SEED="$ROOT/target/release/examples/web_seed" \
  node e2e/bench.mjs "$@"
