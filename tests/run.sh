#!/usr/bin/env bash
# THE test command of fieldgate:  bash tests/run.sh [extra pytest arguments]
#
# Installs what is missing (Prosody, ejabberd and Mosquitto from Debian, a Python venv at
# .venv with slixmpp, paho-mqtt and pytest), then runs: cargo fmt --check, cargo clippy -D
# warnings, cargo test, the core's tests built with the Modbus adapter alone, cargo build,
# and the end-to-end tests in tests/e2e against a real Prosody (and, for the XMPP
# behaviour, a real ejabberd too) with slixmpp as client.
# Every step runs even when an earlier one failed (except the e2e tests, which need the
# build); the exit status is non-zero if any step failed.
#
# Environment: FIELDGATE_BIN = gateway binary for the e2e tests (default target/debug/fieldgate),
#              FIELDGATE_E2E_KEEP=1 keeps the tests' temp dirs, PYTHON = interpreter for .venv.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# shellcheck source=e2e/deps.sh
source tests/e2e/deps.sh

fg_ensure_all rustfmt clippy

failed=()
step() {
    local name=$1
    shift
    fg_log "$name: $*"
    local t0=$SECONDS
    if "$@"; then
        fg_log "$name: ok ($((SECONDS - t0))s)"
    else
        fg_log "$name: FAILED ($((SECONDS - t0))s)"
        failed+=("$name")
        return 1
    fi
}

step "fmt" cargo fmt --all -- --check || true
step "clippy" cargo clippy --workspace --all-targets -- -D warnings || true
step "unit tests" cargo test --workspace || true
# A box that needs one bus builds with one adapter: the core must not need the others.
step "one adapter (modbus)" cargo test -p fieldgate --no-default-features --features modbus || true
if step "build" cargo build; then
    step "systemd unit" env FIELDGATE_BIN=target/debug/fieldgate bash tests/packaging/verify_unit.sh || true
    # The harness' own waits all time out; this bounds the whole run regardless.
    step "e2e" timeout --kill-after=30s 45m "$FG_VENV/bin/python" -m pytest tests/e2e "$@" || true
else
    failed+=("e2e (not run: the build failed)")
fi

if [ "${#failed[@]}" -gt 0 ]; then
    printf '\nFAILED: %s\n' "${failed[*]}" >&2
    exit 1
fi
printf '\nall checks passed\n' >&2
