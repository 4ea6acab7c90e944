#!/usr/bin/env bash
# fieldgate on both XMPP servers, one run:  bash tests/bench/run_servers.sh [bench_servers.py options]
#   (--servers prosody,ejabberd, --no-tls, --devices N, --sessions N, --phase-duration 8s, ...)
#
# Installs what is missing (like tests/run.sh: Prosody and ejabberd from Debian), builds the
# gateway and the load generator with its ideal-component baseline in release mode (like
# run_iot.sh), and runs tests/bench/bench_servers.py: bench_core.py and bench_iot.py against
# a private Prosody, then against a private ejabberd (with the TLS link's cost), printing
# every figure as `<server>.<name>: value` and a side-by-side summary. Not part of
# tests/run.sh: figures are reported, not pass/fail. Takes about ten minutes on 2 cores.
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

export FIELDGATE_BIN="${FIELDGATE_BIN:-${CARGO_TARGET_DIR:-target}/release/fieldgate}"
export FIELDGATE_LOG="${FIELDGATE_LOG:-info}"
export LOADGEN_BIN="${LOADGEN_BIN:-tests/bench/loadgen/target/release/fieldgate-loadgen}"
export NULL_COMPONENT_BIN="${NULL_COMPONENT_BIN:-tests/bench/loadgen/target/release/fieldgate-null-component}"
exec "$FG_VENV/bin/python" tests/bench/bench_servers.py "$@"
