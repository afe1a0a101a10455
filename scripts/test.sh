#!/usr/bin/env bash
# Runs the whole test suite: unit, property, crash (failpoints), Raft simulation and end-to-end
# tests with real binaries on random loopback ports. Usage: scripts/test.sh [extra test args]
set -euo pipefail
cd "$(dirname "$0")/.."
# The end-to-end tests start the workspace's binaries; build them with the same features first
# so cargo does not build twice.
cargo build --workspace --bins --all-features
# The dashboard's browser test drives Debian's Chromium through ChromeDriver.
scripts/browser-deps.sh
if cargo nextest --version >/dev/null 2>&1; then
  # nextest does not run doc tests; run them first so its summary is the closing line.
  cargo test --workspace --all-features --doc
  # Per-test processes and timeouts (scripts/nextest.toml): a hung test fails, it does not stall.
  cargo nextest run --workspace --all-features --config-file scripts/nextest.toml "$@"
else
  cargo test --workspace --all-features "$@"
fi
