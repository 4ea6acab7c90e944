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

# shellcheck source=release.sh
source tests/bench/release.sh
fg_bench_loadgen bench_iot.py "$@"
