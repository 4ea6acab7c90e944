#!/usr/bin/env bash
# Stands in for the fieldgate binary in the e2e harness and runs the container image
# instead:  FIELDGATE_BIN=tests/packaging/docker_gateway.sh  (see docker_e2e.sh).
#
# Called like the binary (`run --config FILE`, `check --config FILE`, `--version`). The
# directory holding FILE, or the current one (the harness keeps the config, the state
# directory and the sd_notify socket together) is mounted at the
# same path, the host network is shared (the test Prosody listens on loopback), and the
# container runs as the caller, who owns that directory. `docker run` passes SIGTERM and
# SIGHUP on to the gateway, so the harness's signals reach it as they would the binary.
set -euo pipefail
config=""
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
    [ "${args[$i]}" = "--config" ] && config=${args[$((i + 1))]}
done
dir=$(cd "$(dirname "${config:-.}")" && pwd)
env_args=(-e FIELDGATE_LOG -e RUST_BACKTRACE)
[ -n "${NOTIFY_SOCKET:-}" ] && env_args+=(-e NOTIFY_SOCKET)
exec "${FIELDGATE_DOCKER:-docker}" run --rm --network host \
    --user "$(id -u):$(id -g)" -v "$dir:$dir" -w "$dir" "${env_args[@]}" \
    "${FIELDGATE_IMAGE:-fieldgate:test}" "$@"
