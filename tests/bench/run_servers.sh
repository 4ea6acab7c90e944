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

# shellcheck source=release.sh
source tests/bench/release.sh
fg_bench_loadgen bench_servers.py "$@"
