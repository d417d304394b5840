#!/usr/bin/env bash
# The project's test command (README, "Run the tests"): checks formatting and
# lints, then runs every test of the workspace: unit tests, the conformance
# suites of every port on every adapter, and the end-to-end tests that start the
# `danmaku` binary on free loopback ports with temporary data dirs.
#
# It installs what the tests need on a fresh machine. Today that is only the Rust
# toolchain's rustfmt and clippy components; the services of later issues (Redis,
# the Kafka mock cluster, the CQL peer) are added here as their tests land.
set -euo pipefail
cd "$(dirname "$0")/../.."

if ! cargo fmt --version >/dev/null 2>&1; then rustup component add rustfmt; fi
if ! cargo clippy --version >/dev/null 2>&1; then rustup component add clippy; fi

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test"
cargo test --workspace --locked --no-fail-fast 2>&1 | tee target/test-output.txt
# One closing line that sums up every test binary.
awk '/^test result:/ {p += $4; f += $6; i += $8} END {printf "%d passed, %d failed, %d skipped\n", p, f, i}' target/test-output.txt
