#!/usr/bin/env bash
# THE demo command of fieldgate:  bash tests/demo.sh [--keep]
#
# Installs what is missing (Prosody from Debian, .venv with slixmpp), builds the release
# binary, starts a private Prosody on free loopback ports, starts fieldgate with three
# simulated devices (a pump, a meter, an unreachable valve), and lets a slixmpp client
# subscribe, discover, ping and query them; prints the transcript, stops everything
# (the gateway by SIGTERM) and exits 0. Config: tests/demo/fieldgate.toml.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# shellcheck source=e2e/deps.sh
source tests/e2e/deps.sh

fg_ensure_all

fg_log "cargo build --release"
cargo build --release
export FIELDGATE_BIN="${FIELDGATE_BIN:-target/release/fieldgate}"
export FIELDGATE_LOG="${FIELDGATE_LOG:-info}"
exec "$FG_VENV/bin/python" tests/demo/demo.py "$@"
