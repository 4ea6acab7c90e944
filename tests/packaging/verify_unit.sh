#!/usr/bin/env bash
# Verify systemd/fieldgate.service with `systemd-analyze verify`; fail on ANY warning or error.
#
#   bash tests/packaging/verify_unit.sh            # uses target/release or target/debug binary
#   FIELDGATE_BIN=/path/to/fieldgate bash tests/packaging/verify_unit.sh
#
# Works without systemd as PID 1 (containers, CI): `systemd-analyze verify` loads unit files
# offline. It checks that every Exec*= command exists and is executable, so the unit is
# verified from a temporary copy in which only the path /usr/bin/fieldgate on the Exec*= lines
# is replaced by the absolute path of a built binary; every other line is verified as shipped.
# The diff is printed. The unit name (fieldgate.service) is kept, as verify derives it from the
# file name.
#
# systemd-analyze exits 0 on many warnings ("Unknown key ..., ignoring"), so its output is
# checked instead: any line at all is a failure. --recursive-errors=no scopes the check to our
# unit: warnings in units it is merely ordered against (prosody.service, ejabberd.service) are
# those packages' business.
#
# systemd-analyze verify checks only the first command of each Exec*= list, so the script
# checks that every Exec*= command path exists and is executable itself.
#
# On a fresh Debian machine run as root, installs `systemd` (for systemd-analyze) and `procps`
# (for /bin/kill, which ExecReload= uses) with apt-get when they are missing.
#
# Exit: 0 clean, 1 warnings/errors found, 2 cannot run (no binary, no systemd-analyze).
set -euo pipefail

# Resolve a relative FIELDGATE_BIN against the caller's directory, before changing it.
if [ -n "${FIELDGATE_BIN:-}" ]; then
    [ -f "$FIELDGATE_BIN" ] && [ -x "$FIELDGATE_BIN" ] \
        || { echo "verify_unit: FIELDGATE_BIN=$FIELDGATE_BIN is not an executable file" >&2; exit 2; }
    FIELDGATE_BIN=$(realpath "$FIELDGATE_BIN")
fi
cd "$(dirname "$0")/../.."
UNIT=systemd/fieldgate.service
INSTALLED_BIN=/usr/bin/fieldgate

die() { echo "verify_unit: $*" >&2; exit 2; }

[ -f "$UNIT" ] || die "$UNIT not found"

apt_install() {
    [ "$(id -u)" -eq 0 ] || die "need $* but not root; install it: apt-get install $*"
    command -v apt-get >/dev/null || die "need $* and there is no apt-get"
    echo "verify_unit: installing $* with apt-get" >&2
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -q --no-install-recommends "$@" >/dev/null; then
        apt-get update -q >/dev/null
        apt-get install -y -q --no-install-recommends "$@" >/dev/null
    fi
}

need_pkgs=()
command -v systemd-analyze >/dev/null || need_pkgs+=(systemd)
[ -x /bin/kill ] || need_pkgs+=(procps)
if [ "${#need_pkgs[@]}" -gt 0 ]; then apt_install "${need_pkgs[@]}"; fi
command -v systemd-analyze >/dev/null || die "systemd-analyze still missing"

# The binary that stands in for /usr/bin/fieldgate in the Exec*= lines.
bin="${FIELDGATE_BIN:-}"
if [ -z "$bin" ]; then
    for c in target/release/fieldgate target/debug/fieldgate "$INSTALLED_BIN"; do
        if [ -x "$c" ]; then bin=$c; break; fi
    done
fi
[ -n "$bin" ] || die "no fieldgate binary: run 'cargo build' first or set FIELDGATE_BIN"
bin=$(realpath "$bin")

# Cheap contract checks: the lines other parts of the project rely on, verbatim.
fail=0
for line in \
    'Type=notify' \
    'ExecStart=/usr/bin/fieldgate run --config /etc/fieldgate/fieldgate.toml' \
    'ExecReload=/bin/kill -HUP $MAINPID' \
    'StateDirectory=fieldgate' \
    'ConfigurationDirectory=fieldgate'; do
    grep -qxF -- "$line" "$UNIT" || { echo "verify_unit: $UNIT lacks the line: $line" >&2; fail=1; }
done
grep -qE '^WatchdogSec=[1-9]' "$UNIT" || { echo "verify_unit: $UNIT lacks WatchdogSec=" >&2; fail=1; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
copy="$tmp/fieldgate.service"
replaced=0
while IFS= read -r l || [ -n "$l" ]; do
    if [[ $l == Exec*=$INSTALLED_BIN\ * || $l == Exec*=$INSTALLED_BIN ]]; then
        l=${l/"$INSTALLED_BIN"/"$bin"}   # first occurrence only: the command path
        replaced=$((replaced + 1))
    fi
    printf '%s\n' "$l"
done <"$UNIT" >"$copy"
[ "$replaced" -ge 1 ] || die "no Exec*=$INSTALLED_BIN line found in $UNIT"
echo "verify_unit: verifying $UNIT with $INSTALLED_BIN -> $bin on $replaced Exec line(s):"
diff -u --label "$UNIT" --label "(verified copy)" "$UNIT" "$copy" | sed -n '3,$p' | grep '^[-+]' || true

# systemd-analyze verify only checks the first command of each Exec*= list (here ExecStart=
# and the first ExecReload=), so check every command path of every Exec*= line here.
while IFS= read -r cmd; do
    cmd=${cmd#*=}
    cmd=${cmd##[-@:+!]}; cmd=${cmd##[-@:+!]}; cmd=${cmd##[-@:+!]}
    cmd=${cmd%% *}
    if [ ! -x "$cmd" ]; then
        echo "verify_unit: command $cmd of an Exec line is not an executable file" >&2
        fail=1
    fi
done < <(grep -E '^Exec[A-Za-z]*=' "$copy")

echo "verify_unit: $(systemd-analyze --version | head -n1)"
set +e
out=$(cd "$tmp" && SYSTEMD_LOG_COLOR=0 systemd-analyze verify --man=no --generators=no \
    --recursive-errors=no ./fieldgate.service 2>&1)
rc=$?
set -e
if [ -n "$out" ]; then
    echo "verify_unit: systemd-analyze verify reported (rc=$rc):" >&2
    printf '%s\n' "$out" >&2
    fail=1
elif [ "$rc" -ne 0 ]; then
    echo "verify_unit: systemd-analyze verify exited $rc without output" >&2
    fail=1
fi

# Informational only: systemd's own exposure score for the sandbox settings.
score=$(cd "$tmp" && systemd-analyze security --offline=yes --man=no ./fieldgate.service 2>/dev/null \
    | grep -F 'Overall exposure level' || true)
[ -z "$score" ] || echo "verify_unit: ${score#→ }"

if [ "$fail" -ne 0 ]; then
    echo "verify_unit: FAIL" >&2
    exit 1
fi
echo "verify_unit: OK (no warnings)"
