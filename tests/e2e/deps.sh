# shellcheck shell=bash
# Installs what the end-to-end tests, the demo and the benchmark need, when it is missing:
#   - Prosody (Debian package; its own service is kept from starting),
#   - socat (Debian package; a pty pair for the Modbus RTU tests),
#   - Mosquitto and openssl (Debian packages mosquitto, mosquitto-clients, openssl; the MQTT
#     tests run their own broker with generated test certificates; its service is kept from
#     starting too),
#   - ejabberd (Debian package; the second XMPP server of the end-to-end tests, which run
#     their own instances, tests/e2e/ejabberd.py; its service is kept from starting too),
#   - libcoap's example programs (Debian package libcoap3-bin: coap-server-notls and
#     coap-client-notls; a second, independent CoAP server for the CoAP adapter's tests),
#   - a Python >= 3.11 virtualenv at .venv with the pinned packages of requirements.txt,
#   - the Rust toolchain components the checks need (rustfmt, clippy).
# Sourced by tests/run.sh, tests/demo.sh and tests/bench/run.sh from the repository root.

FG_REQUIREMENTS="tests/e2e/requirements.txt"
FG_VENV=".venv"
FG_APT_UPDATED=0

fg_log() { printf '==> %s\n' "$*" >&2; }
fg_die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Run a command as root (directly, or through sudo without a password prompt).
fg_as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        sudo -n "$@"
    else
        fg_die "need root to run: $* (run as root, or install it yourself)"
    fi
}

# apt-get install the given packages, without starting any service they ship.
fg_apt_install() {
    command -v apt-get >/dev/null 2>&1 || fg_die "apt-get not found: install $* with your package manager"
    local created_policy=0
    # policy-rc.d exit 101 = "action forbidden": invoke-rc.d / deb-systemd-invoke start nothing.
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        fg_as_root sh -c 'printf "#!/bin/sh\nexit 101\n" > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d'
        created_policy=1
    fi
    local rc=0
    if [ "$FG_APT_UPDATED" -eq 0 ]; then
        fg_log "apt-get update"
        fg_as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q || rc=$?
        FG_APT_UPDATED=1
    fi
    if [ "$rc" -eq 0 ]; then
        fg_log "apt-get install $*"
        fg_as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
            -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "$@" || rc=$?
    fi
    if [ "$created_policy" -eq 1 ]; then
        fg_as_root rm -f /usr/sbin/policy-rc.d
    fi
    return "$rc"
}

# Prosody (server + prosodyctl). The tests start their own instance on free loopback
# ports from a generated config; the packaged service is not needed and is stopped if a
# package script started it anyway (systemd hosts).
# socat, installed along: the Modbus RTU tests wire the gateway to pymodbus over a pty pair;
# faketime, too: the clock test fakes the gateway's wall clock.
fg_ensure_prosody() {
    local missing=()
    command -v socat >/dev/null 2>&1 || missing+=(socat)
    # libfaketime: the clock test steps the gateway's wall clock back mid-run.
    compgen -G "/usr/lib/*/faketime/libfaketimeMT.so.1" >/dev/null || missing+=(faketime)
    # lua-unbound (Prosody recommends it): the federation tests give Prosody their hosts file
    # through its libunbound resolver.
    compgen -G "/usr/lib/*/lua/5.4/lunbound.so" >/dev/null || missing+=(lua-unbound)
    if command -v prosody >/dev/null 2>&1 && command -v prosodyctl >/dev/null 2>&1; then
        [ "${#missing[@]}" -eq 0 ] && return 0
        fg_apt_install "${missing[@]}"
        return
    fi
    fg_apt_install prosody "${missing[@]}"
    if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet prosody 2>/dev/null; then
        fg_log "stopping the packaged prosody service (the tests run their own)"
        fg_as_root systemctl stop prosody || true
    fi
    command -v prosody >/dev/null 2>&1 || fg_die "prosody still missing after apt-get install"
}

# Mosquitto for the MQTT adapter's tests (tests/e2e/mosquitto.py), which start their own
# broker on free loopback ports from a generated config; mosquitto_passwd (same package)
# writes its password file. mosquitto-clients (mosquitto_pub/sub) are for poking at a kept
# test broker by hand. openssl makes the test certificates (tests/e2e/certs.py).
# The packaged broker service is not needed: kept from starting, and stopped if a package
# script started it anyway (systemd hosts).
fg_has_mosquitto() {
    # Debian installs the broker in /usr/sbin, which not every user has on PATH.
    command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ]
}

fg_ensure_mosquitto() {
    local missing=()
    if ! fg_has_mosquitto || ! command -v mosquitto_passwd >/dev/null 2>&1; then
        missing+=(mosquitto)
    fi
    command -v mosquitto_pub >/dev/null 2>&1 || missing+=(mosquitto-clients)
    command -v openssl >/dev/null 2>&1 || missing+=(openssl)
    [ "${#missing[@]}" -eq 0 ] && return 0
    fg_apt_install "${missing[@]}"
    if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet mosquitto 2>/dev/null; then
        fg_log "stopping the packaged mosquitto service (the tests run their own)"
        fg_as_root systemctl stop mosquitto || true
    fi
    fg_has_mosquitto || fg_die "mosquitto still missing after apt-get install"
    command -v openssl >/dev/null 2>&1 || fg_die "openssl still missing after apt-get install"
}

# libcoap's example server and client for the CoAP adapter's tests (tests/e2e/coap_peers.py):
# Debian 12's libcoap3-bin (4.3.1) ships coap-server / coap-client in the variants -notls,
# -gnutls and -openssl; the tests run the -notls server (plain UDP, no DTLS). No service.
fg_ensure_libcoap() {
    command -v coap-server-notls >/dev/null 2>&1 && command -v coap-client-notls >/dev/null 2>&1 && return 0
    fg_apt_install libcoap3-bin
    command -v coap-server-notls >/dev/null 2>&1 || fg_die "coap-server-notls still missing after apt-get install"
}

# ejabberd (Debian 12: 23.01) for the end-to-end tests that run on both XMPP servers: they
# start their own nodes (erl with ejabberd's libraries, as ejabberdctl would, on free
# loopback ports, no epmd). The packaged service is not needed: kept from starting, and
# stopped if a package script started it anyway (systemd hosts).
fg_ensure_ejabberd() {
    [ -x /usr/sbin/ejabberdctl ] && command -v erl >/dev/null 2>&1 && return 0
    fg_apt_install ejabberd
    if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet ejabberd 2>/dev/null; then
        fg_log "stopping the packaged ejabberd service (the tests run their own)"
        fg_as_root systemctl stop ejabberd || true
    fi
    [ -x /usr/sbin/ejabberdctl ] || fg_die "ejabberd still missing after apt-get install"
}

fg_python_ok() {
    "$1" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null
}

# .venv with the pinned requirements; reinstalled when requirements.txt changes.
fg_ensure_venv() {
    local py="${PYTHON:-python3}"
    if ! command -v "$py" >/dev/null 2>&1; then
        fg_apt_install python3 python3-venv
    fi
    fg_python_ok "$py" || fg_die "$py is older than 3.11 (slixmpp needs >= 3.11); set PYTHON=/path/to/python3.11+"
    if [ -x "$FG_VENV/bin/python" ] && ! fg_python_ok "$FG_VENV/bin/python"; then
        fg_log "recreating $FG_VENV (its interpreter is missing or too old)"
        rm -rf "$FG_VENV"
    fi
    if [ ! -x "$FG_VENV/bin/python" ]; then
        # Debian splits venv/ensurepip into python3-venv
        if ! "$py" -c 'import venv, ensurepip' >/dev/null 2>&1; then
            fg_apt_install python3-venv
        fi
        fg_log "creating $FG_VENV"
        rm -rf "$FG_VENV"
        "$py" -m venv "$FG_VENV"
    fi
    local stamp="$FG_VENV/.fieldgate-requirements"
    if ! cmp -s "$FG_REQUIREMENTS" "$stamp"; then
        fg_log "pip install -r $FG_REQUIREMENTS"
        "$FG_VENV/bin/python" -m pip install --disable-pip-version-check --no-input --progress-bar off -q \
            -r "$FG_REQUIREMENTS"
        cp "$FG_REQUIREMENTS" "$stamp"
    fi
}

# cargo, plus the named rustup components (rustfmt, clippy) when rustup manages the toolchain.
fg_ensure_rust() {
    command -v cargo >/dev/null 2>&1 || fg_die "cargo not found: install a Rust toolchain (rustup) first"
    local comp
    for comp in "$@"; do
        case "$comp" in
            rustfmt) cargo fmt --version >/dev/null 2>&1 && continue ;;
            clippy) cargo clippy --version >/dev/null 2>&1 && continue ;;
        esac
        if command -v rustup >/dev/null 2>&1; then
            fg_log "rustup component add $comp"
            rustup component add "$comp"
        else
            fg_die "cargo $comp missing and no rustup to add it"
        fi
    done
}

# Everything the tests, the demo and the benchmarks need: Prosody, ejabberd, Mosquitto, libcoap,
# the venv, cargo.
fg_ensure_all() {
    fg_ensure_prosody
    fg_ensure_ejabberd
    fg_ensure_mosquitto
    fg_ensure_libcoap
    fg_ensure_venv
    fg_ensure_rust "$@"
}
