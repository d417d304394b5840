#!/usr/bin/env bash
# Starts the release server on 127.0.0.1:${BENCH_DANMAKU_PORT:-8093} with an
# empty data dir (wiped first) and replaces itself with it (exec), so the PID
# the bench scripts measure is the server's.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
DIR=${BENCH_DANMAKU_DATA:?set BENCH_DANMAKU_DATA}
rm -rf "$DIR"
exec "$ROOT/target/release/danmaku" serve --listen "127.0.0.1:${BENCH_DANMAKU_PORT:-8093}" --data-dir "$DIR"
