#!/usr/bin/env bash
# Runs every fuzz target in turn, one process at a time at the lowest priority:
#   bash fuzz/run_all.sh [seconds per target, default 600] [target ...]
# Needs cargo-fuzz (stable Rust works with `-s none`: coverage-guided, no sanitizer).
# New inputs go to fuzz/corpus/<target>; crashes to fuzz/artifacts/<target>; each log
# to fuzz/logs/<target>.log. A crash does not stop the run (-ignore_crashes in fork mode).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
secs=${1:-600}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(stanza_guard control sensordata events presence_disco config modbus_codec mqtt_codec payload_codec)
nice -n 19 cargo fuzz build -s none -O
bin=target/$(rustc -vV | sed -n 's/^host: //p')/release
mkdir -p logs
for t in "${targets[@]}"; do
    mkdir -p "artifacts/$t" "corpus/$t"
    echo "== $t: ${secs}s" >&2
    nice -n 19 "$bin/$t" "corpus/$t" -fork=1 -ignore_crashes=1 -max_total_time="$secs" \
        -timeout=10 -rss_limit_mb=2048 -max_len=4096 -artifact_prefix="artifacts/$t/" \
        >"logs/$t.log" 2>&1 || echo "$t: exit $?" >&2
    tail -n 3 "logs/$t.log" >&2
done
