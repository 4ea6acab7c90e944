#!/usr/bin/env bash
# fieldgate large-readout benchmark:  bash tests/bench/run_readout.sh [--fields N] [--names N] [--rounds N] [--keep]
#
# Installs what is missing (like tests/run.sh), builds the release binary and runs
# tests/bench/bench_readout.py against a private Prosody on free loopback ports. Prints
# `name: value` lines (see bench_readout.py for what each figure measures). Not part of
# tests/run.sh: figures are reported, not pass/fail.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

# shellcheck source=release.sh
source tests/bench/release.sh
fg_bench bench_readout.py "$@"
