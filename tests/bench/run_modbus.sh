#!/usr/bin/env bash
# fieldgate Modbus benchmark:  bash tests/bench/run_modbus.sh [--connections 10,1]
#     [--devices 100] [--registers 1000] [--poll 1s] [--duration 30] [--writes 500]
#     [--profile SECONDS] [--keep]
#
# Installs what is missing (like tests/run.sh), builds the gateway and the Modbus TCP
# simulator (the sim_server example of fieldgate-modbus) in release mode and runs
# tests/bench/bench_modbus.py against a private Prosody on free loopback ports. Prints
# `name: value` lines (see bench_modbus.py for what each figure measures). Not part of
# tests/run.sh: figures are reported, not pass/fail.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

# shellcheck source=../e2e/deps.sh
source tests/e2e/deps.sh

fg_ensure_all

fg_log "cargo build --release (gateway and sim_server)"
cargo build --release -p fieldgate --bin fieldgate
cargo build --release -p fieldgate-modbus --example sim_server
export FIELDGATE_BIN="${FIELDGATE_BIN:-target/release/fieldgate}"
export FIELDGATE_MODBUS_SIM="${FIELDGATE_MODBUS_SIM:-target/release/examples/sim_server}"
# The per-device `poll cycle` lines (debug) are what the benchmark counts.
export FIELDGATE_LOG="${FIELDGATE_LOG:-info,fieldgate_modbus=debug}"
exec "$FG_VENV/bin/python" tests/bench/bench_modbus.py "$@"
