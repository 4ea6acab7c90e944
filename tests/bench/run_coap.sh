#!/usr/bin/env bash
# fieldgate CoAP benchmark:  bash tests/bench/run_coap.sh [--devices 100] [--per-device 10]
#     [--servers 1] [--poll 1s] [--duration 20] [--capacity-poll 10ms] [--notify-rates 1000,10000,30000,60000]
#     [--probe-rate 20] [--loss-devices 200] [--drop 0.3] [--seed 1] [--loss-duration 60]
#     [--spread-servers 100] [--phases poll,capacity,spread,observe,loss] [--profile] [--keep]
#
# Builds the gateway and the CoAP benchmark server (the bench_server example of
# fieldgate-coap) in release mode and runs tests/bench/bench_coap.py against a private
# Prosody on free loopback ports: 1,000 resources of one server polled every second (CPU
# per 100,000 requests, RSS) and the capacity of one server's NSTART 1 queue, then the same
# spread over 100 servers; 1,000 observed resources notifying at rising rates (notifications handled per second,
# notification -> change event beside XMPP pings); polls with 30 % of the datagrams
# dropped each way (share completed, latency percentiles beside RFC 7252's expected
# values). Prints `name: value` lines (see bench_coap.py). About 4.5 minutes (5 with --profile). Not part of
# tests/run.sh: figures are reported, not pass/fail.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

# shellcheck source=release.sh
source tests/bench/release.sh
cargo build --release -p fieldgate-coap --example bench_server
export FIELDGATE_COAP_SERVER="${FIELDGATE_COAP_SERVER:-${CARGO_TARGET_DIR:-target}/release/examples/bench_server}"
fg_bench bench_coap.py "$@"
