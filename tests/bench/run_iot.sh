#!/usr/bin/env bash
# fieldgate sensor-data benchmark:  bash tests/bench/run_iot.sh [bench_iot.py options]
#   (--sessions N, --inflight N, --latency-count N, --phase-duration 8s, --rounds N, --keep,
#    --server ejabberd [--tls])
#
# Installs what is missing (like tests/bench/run.sh), builds the gateway and the load
# generator with its ideal-component baseline (tests/bench/loadgen, its own cargo project
# with its own Cargo.lock and target dir) in release mode, and runs tests/bench/bench_iot.py
# against a private Prosody (or ejabberd) on free loopback ports. Prints `name: value` lines (see
# bench_iot.py for what each figure measures). Not part of tests/run.sh: figures are
# reported, not pass/fail.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

# shellcheck source=../e2e/deps.sh
source tests/e2e/deps.sh

fg_ensure_all

fg_log "cargo build --release (gateway)"
cargo build --release
fg_log "cargo build --release (tests/bench/loadgen)"
cargo build --release --locked --manifest-path tests/bench/loadgen/Cargo.toml \
    --target-dir tests/bench/loadgen/target

export FIELDGATE_BIN="${FIELDGATE_BIN:-target/release/fieldgate}"
export FIELDGATE_LOG="${FIELDGATE_LOG:-info}"
export LOADGEN_BIN="${LOADGEN_BIN:-tests/bench/loadgen/target/release/fieldgate-loadgen}"
export NULL_COMPONENT_BIN="${NULL_COMPONENT_BIN:-tests/bench/loadgen/target/release/fieldgate-null-component}"
exec "$FG_VENV/bin/python" tests/bench/bench_iot.py "$@"
