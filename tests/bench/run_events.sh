#!/usr/bin/env bash
# fieldgate events benchmark:  bash tests/bench/run_events.sh [--devices 10]
#     [--registers 1000] [--poll 1s] [--duration 20] [--keep]
#
# Builds the gateway and the Modbus TCP simulator (the sim_server example of
# fieldgate-modbus) in release mode and runs tests/bench/bench_events.py against a private
# Prosody on free loopback ports: Modbus polling without and with one events subscriber
# per device. Prints `name: value` lines (see bench_events.py). Not part of tests/run.sh:
# figures are reported, not pass/fail.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

# shellcheck source=release.sh
source tests/bench/release.sh
cargo build --release -p fieldgate-modbus --example sim_server
export FIELDGATE_MODBUS_SIM="${FIELDGATE_MODBUS_SIM:-target/release/examples/sim_server}"
fg_bench bench_events.py "$@"
