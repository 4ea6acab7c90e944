# shellcheck shell=bash
# Shared by the benchmark wrappers (run*.sh): from the repository root, installs what is
# missing (like tests/run.sh), builds the release binary and runs one benchmark script of
# tests/bench with the arguments given. Figures are reported, not pass/fail.

# shellcheck source=../e2e/deps.sh
source tests/e2e/deps.sh

# fg_bench SCRIPT [ARGS...]: runs tests/bench/SCRIPT against the release build.
fg_bench() {
    local script=$1
    shift
    fg_ensure_all
    fg_log "cargo build --release"
    cargo build --release
    export FIELDGATE_BIN="${FIELDGATE_BIN:-${CARGO_TARGET_DIR:-target}/release/fieldgate}"
    export FIELDGATE_LOG="${FIELDGATE_LOG:-info}"
    exec "$FG_VENV/bin/python" "tests/bench/$script" "$@"
}
