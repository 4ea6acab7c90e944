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

# fg_bench_loadgen SCRIPT [ARGS...]: fg_bench for the scripts that also drive the Rust load
# generator and its ideal component (tests/bench/loadgen), built in release mode too.
fg_bench_loadgen() {
    local script=$1
    shift
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
    exec "$FG_VENV/bin/python" "tests/bench/$script" "$@"
}
