#!/usr/bin/env bash
# fieldgate history benchmark:  bash tests/bench/run_history.sh [--phases write,capacity,readout,startup]
#     [--devices 100] [--fields 100] [--commit 1s] [--duration 20] [--big-store-mb 1024] [--keep]
#
# Installs what is missing (like tests/run.sh), builds the release binary and runs
# tests/bench/bench_history.py against a private Prosody on free loopback ports: the
# history store written at 100,000 samples/s, its capacity, historical readouts of a
# prefilled store, and start-up beside a 1 GB store. Prints `name: value` lines (see
# bench_history.py). Not part of tests/run.sh: figures are reported, not pass/fail.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

# shellcheck source=release.sh
source tests/bench/release.sh
fg_bench bench_history.py "$@"
