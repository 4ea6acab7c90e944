#!/usr/bin/env bash
# fieldgate MQTT benchmark:  bash tests/bench/run_mqtt.sh [--devices 1000]
#     [--messages 200000] [--qos 0,1] [--fleet 10000] [--samples 500] [--spacing 0.05]
#     [--phases throughput,latency,set,discovery] [--broker-inflight 20] [--prosody-nagle off]
#     [--profile] [--keep]
#
# Installs what is missing (like tests/run.sh), builds the release binary and runs
# tests/bench/bench_mqtt.py against a private Prosody and a private Mosquitto on free
# loopback ports: decoding throughput (gateway CPU per 100,000 messages) with 1,000
# explicit devices at QoS 0 and 1, peak RSS and time to online with 10,000 devices
# discovered from one wildcard, publish -> change event latency and set -> echo ->
# setResponse round trips, each beside an XMPP ping. Prints `name: value` lines (see
# bench_mqtt.py for what each figure measures). Not part of tests/run.sh: figures are
# reported, not pass/fail.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

# shellcheck source=release.sh
source tests/bench/release.sh
fg_bench bench_mqtt.py "$@"
