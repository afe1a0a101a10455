#!/usr/bin/env bash
# Runs the whole test suite: unit, property, crash (failpoints) and end-to-end tests with real
# binaries on random loopback ports. Usage: scripts/test.sh [extra cargo test args]
set -euo pipefail
cd "$(dirname "$0")/.."
# The end-to-end tests start the workspace's binaries; build them with the same features first
# so cargo does not build twice.
cargo build --workspace --bins --all-features
cargo test --workspace --all-features "$@"
