#!/usr/bin/env bash
# fieldgate large-readout benchmark:  bash tests/bench/run_readout.sh [--fields N] [--names N] [--rounds N] [--keep]
#
# Installs what is missing (like tests/run.sh), builds the release binary and runs
# tests/bench/bench_readout.py against a private Prosody on free loopback ports. Prints
# `name: value` lines (see bench_readout.py for what each figure measures). Not part of
# tests/run.sh: figures are reported, not pass/fail.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

# shellcheck source=../e2e/deps.sh
source tests/e2e/deps.sh

fg_ensure_all

fg_log "cargo build --release"
cargo build --release
export FIELDGATE_BIN="${FIELDGATE_BIN:-target/release/fieldgate}"
export FIELDGATE_LOG="${FIELDGATE_LOG:-info}"
exec "$FG_VENV/bin/python" tests/bench/bench_readout.py "$@"
