#!/usr/bin/env bash
# fieldgate hostile-input benchmark:  bash tests/bench/run_hostile.sh [--count N] [--flood-seconds S] [--flood-rate R] [--keep]
#
# Installs what is missing (like tests/run.sh), builds the release binary and runs
# tests/bench/bench_hostile.py against a private Prosody on free loopback ports. Prints
# `name: value` lines (see bench_hostile.py for what each figure measures). Not part of
# tests/run.sh: figures are reported, not pass/fail.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

# shellcheck source=release.sh
source tests/bench/release.sh
fg_bench bench_hostile.py "$@"
