#!/usr/bin/env bash
# The project's test command (README, "Two commands"; .ci/run calls it): checks
# formatting and lints, then runs every test of the workspace: unit tests, the
# conformance suites of every port on every adapter, and the end-to-end tests
# that start the `danmaku` binary on free loopback ports with temporary data
# dirs. Plain `cargo test` skips the tests that need an installed server
# (marked `#[ignore = "needs ..."]`, CONTRIBUTING.md "Test tiers"); this command
# installs those servers and runs them too (`--include-ignored`).
#
# It installs what the tests need on a fresh machine: rustfmt and clippy,
# redis-server, redis-cli, prometheus (promtool), nginx and iptables from the OS packages (the tests start their own
# servers on free loopback ports and stop them), and pyarrow + duckdb (independent
# Parquet readers) and moto[server] (an S3 API server for the s3:// archive tests)
# from PyPI, web/'s npm packages and Chromium (tests/web). Kafka runs as librdkafka's in-process mock cluster and the CQL peer
# in-process, so they need no install.
set -euo pipefail
cd "$(dirname "$0")/../.."

apt_updated=0
need_pkg() { # need_pkg COMMAND PACKAGE...
  if ! command -v "$1" >/dev/null 2>&1; then
    shift
    if [ "$apt_updated" = 0 ]; then apt-get update -qq; apt_updated=1; fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
  fi
}
need_pkg redis-server redis-server
need_pkg redis-cli redis-tools
# promtool and prometheus (tests/ops_artifacts.rs: `promtool check` / `test
# rules` on infra/prometheus, and a real Prometheus scraping a node on loopback).
need_pkg promtool prometheus
# nginx, for the proxy's routing (infra/compose/nginx.conf) in the same tests.
need_pkg nginx nginx-light
# iptables, for the chaos suite's partition between a live node and Redis
# (infra/chaos/, run as root; without it that fault is skipped and the report says so).
need_pkg iptables iptables
python3 -c 'import pyarrow, duckdb' 2>/dev/null || python3 -m pip install -q pyarrow duckdb
# moto's S3 server (archive.url = s3://...): the tests start `moto_server` (or
# `python3 -m moto.server`) on free loopback ports; it is not real AWS.
python3 -c 'import moto.server' 2>/dev/null || python3 -m pip install -q 'moto[server]'
# node and npm, and the real client libraries the tests drive (tests/clients:
# bilibili-live-ws against /sub, live/tests/sub.rs), pinned by its lockfile.
need_pkg node nodejs
need_pkg npm npm
(cd tests/clients && npm ci --no-audit --no-fund --silent)
# The web SDK and pages (web/): its build and test tools, playwright-core and
# the players the browser tests load (DPlayer, ArtPlayer + its danmuku plugin,
# weizhenye/Danmaku), pinned by web/package-lock.json; Debian's Chromium for
# tests/web (playwright-core drives /usr/bin/chromium; no browser download).
(cd web && npm ci --no-audit --no-fund --silent)
need_pkg chromium chromium

if ! cargo fmt --version >/dev/null 2>&1; then rustup component add rustfmt; fi
if ! cargo clippy --version >/dev/null 2>&1; then rustup component add clippy; fi

# A one-off build from a clean clone gains nothing from incremental
# compilation, whose caches would take gigabytes of disk.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test"
# The chaos suite's heavy run (about 5 minutes) is left to `infra/chaos/run.sh
# --heavy`; its short run (`chaos_suite`) is in here.
cargo test --workspace --locked --no-fail-fast -- --include-ignored --skip chaos_suite_heavy 2>&1 | tee target/test-output.txt
# One closing line that sums up every test binary.
awk '/^test result:/ {p += $4; f += $6; i += $8} END {printf "%d passed, %d failed, %d skipped\n", p, f, i}' target/test-output.txt
