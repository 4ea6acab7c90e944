#!/usr/bin/env bash
# The container image under the end-to-end tests:  bash tests/packaging/docker_e2e.sh [pytest args]
#
# Builds the image from the Dockerfile (BuildKit; tag fieldgate:test, or $FIELDGATE_IMAGE)
# and runs tests/e2e with the gateway started from it (tests/packaging/docker_gateway.sh in
# place of the binary), against the same private Prosody, slixmpp and pymodbus peers.
# Needs a Docker engine that can pull the two base images; not part of tests/run.sh, which
# runs where no engine is. Deselected: the Modbus RTU test over a host pty pair (a pty of
# the host cannot be created under the container's own /dev/pts).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

# shellcheck source=../e2e/deps.sh
source tests/e2e/deps.sh
fg_ensure_all

docker=${FIELDGATE_DOCKER:-docker}
command -v "$docker" >/dev/null 2>&1 || fg_die "no docker command (set FIELDGATE_DOCKER)"
export FIELDGATE_IMAGE=${FIELDGATE_IMAGE:-fieldgate:test}
fg_log "docker build -t $FIELDGATE_IMAGE ."
DOCKER_BUILDKIT=1 "$docker" build -t "$FIELDGATE_IMAGE" .
fg_log "image runs as: $("$docker" run --rm --entrypoint id "$FIELDGATE_IMAGE")"

export FIELDGATE_BIN=tests/packaging/docker_gateway.sh
exec "$FG_VENV/bin/python" -m pytest tests/e2e --deselect test_modbus.py::test_rtu_over_pty "$@"
