"""ejabberd as the second XMPP server of the end-to-end tests (beside harness.Prosody).

`Ejabberd` has the interface of `harness.Prosody`: `start()`, `stop()` (restartable on the
same ports, the spool kept), `register(user)`, `jid(user)`, `describe()`, `close()`, and the
attributes the gateway's config and the clients need (`vhost`, `component`, `secret`,
`c2s_port`, `component_port`).

How it runs (Debian's ejabberd 23.01, checked against its `ejabberdctl`):

- `erl` directly under Popen, in the foreground, with the arguments `ejabberdctl foreground`
  would give it: `ejabberdctl` itself switches to the `ejabberd` system user when run as
  root (CI runs as root) and refuses any other user, and that user cannot write the test's
  directory. One process, stopped by a line on its stdin: ejabberd's application stops
  (listeners and sessions closed), Mnesia and the logs are flushed, the VM halts, in some
  30 ms. SIGTERM (ejabberd's own path: "SIGTERM received - shutting down", then OTP's
  init:stop, a second) if that does not end it, SIGKILL after that. When the harness dies,
  stdin ends and the node stops itself.
- Everything under the test's directory: `ejabberd.yml` (EJABBERD_CONFIG_PATH), the Mnesia
  spool (`-mnesia dir`, the same as `ejabberdctl --spool`), the logs (EJABBERD_LOG_PATH;
  ejabberd writes error.log beside it), an `inetrc` (ERL_INETRC) so that no DNS lookup leaves
  the machine, HOME (where erl would keep a cookie file).
- Its own Erlang node name and a random cookie, and Erlang distribution on a free loopback
  port given with `-erl_epmd_port` (ejabberdctl's ERL_DIST_PORT): no epmd is started or
  used, so parallel instances cannot collide in epmd and none is left running.
- Start-up with three users: 0.9 to 1.5 s on two shared cores (Prosody: 0.2 s).
- Users: the ones registered before `start()` are registered by the node itself as it
  boots (`ejabberd_admin:register/3`, which `ejabberdctl register` calls), so that start-up
  costs one Erlang VM, not one per user; `register()` on a running server runs
  `ejabberdctl register` the way ejabberdctl does (a hidden node calling `ejabberd_ctl`).

The generated config mirrors the Prosody harness: `hosts: [example.test]`, a c2s listener
accepting PLAIN and SCRAM over plain TCP on loopback (no TLS, like the Prosody harness),
an `ejabberd_service` listener with the component's domain and password, 4 MiB stanza
limits (ejabberd's Debian defaults with `default_limits=True`), no offline storage, the core
XMPP modules of Debian's default config (roster with versioning, disco, caps, ping, last,
privacy, blocking, carbons, CSI, stream management) plus mod_version. Server-to-server stays
allowed, as in ejabberd's default: a stanza for a component that is not connected is then
routed to s2s, whose DNS lookup fails at once (`remote-server-not-found`). With `s2s=False`
(`s2s_access: none`) ejabberd refuses such a stanza instead (`forbidden`).

More component listeners (`services=` or `add_service()` before start): each an
`ejabberd_service` listener on a port of its own, for the component's domain or another,
with `tls: true` and a `certfile` (TLS from the first byte, ejabberd 23.01), and a `cafile`
(ejabberd then asks for a client certificate, and accepts any or none). ejabberd picks the
certificate it presents by the name the client sends (SNI) among all its certificates
(every listener's `certfile`), and presents the listener's own `certfile` only when no name
is sent or none matches: a test that wants one listener's certificate connects by address
(127.0.0.1) and sends no name.
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import secrets
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from harness import (ACTIVE, COMPONENT, PASSWORD, VHOST, HarnessError, free_port, port_open, stop_process,
                     tail, wait_for)

EJABBERDCTL = "/usr/sbin/ejabberdctl"
READY_LINE = "fieldgate-harness: ready"

log = logging.getLogger("e2e")


def _ejabberdctl_setting(name: str) -> str | None:
    """A `NAME="value"` line of the installed ejabberdctl script (where the Debian package
    keeps the paths of erl and of ejabberd's Erlang libraries)."""
    script = shutil.which("ejabberdctl") or EJABBERDCTL
    try:
        text = Path(script).read_text(errors="replace")
    except OSError:
        return None
    m = re.search(rf"^{name}=['\"]?([^'\"\n]+)['\"]?$", text, re.MULTILINE)
    return m.group(1) if m else None


def missing_tools() -> list[str]:
    """What is missing to run ejabberd here (empty when it can run)."""
    missing = []
    if not (shutil.which("ejabberdctl") or Path(EJABBERDCTL).is_file()):
        missing.append("ejabberdctl")
    elif _erl_libs() is None:
        missing.append("ejabberd's Erlang libraries")
    if not _erl():
        missing.append("erl")
    return missing


def _erl() -> str | None:
    erl = _ejabberdctl_setting("ERL")
    if erl and Path(erl).is_file():
        return erl
    return shutil.which("erl")


def _erl_libs() -> str | None:
    libs = _ejabberdctl_setting("ERL_LIBS")
    candidates = [libs] if libs else []
    candidates += [str(p.parent.parent.parent) for p in Path("/usr/lib").glob("*/ejabberd-*/ebin/ejabberd.app")]
    candidates += [str(p.parent.parent.parent) for p in Path("/usr/lib/erlang/lib").glob("ejabberd-*/ebin/ejabberd.app")]
    for c in candidates:
        if c and list(Path(c).glob("ejabberd-*/ebin/ejabberd.app")):
            return c
    return None


@dataclass
class Service:
    """One more `ejabberd_service` listener (Ejabberd(services=...), Ejabberd.add_service()).

    `domain` and `secret` default to the server's component domain and secret; `certfile`
    (certificate chain then key, PEM: certs.Leaf.bundle) is required with `tls`. `port` is
    set by the server (a free loopback port)."""

    domain: str | None = None
    secret: str | None = None
    tls: bool = False
    certfile: Path | None = None
    cafile: Path | None = None
    global_routes: bool | None = None
    port: int = 0


def _erl_binary(s: str) -> str:
    """An Erlang binary literal of `s` (ASCII test names and passwords only)."""
    assert re.fullmatch(r"[A-Za-z0-9._@-]*", s), f"not a plain test value: {s!r}"
    return f'<<"{s}">>'


class Ejabberd:
    """An ejabberd server in `workdir`, foreground, on free loopback ports.

    The ports, node name and cookie are fixed at construction, so stop()/start() restarts
    the server on the same ports with the same spool (users and rosters kept).
    """

    name = "ejabberd"

    def __init__(self, workdir: Path, vhost: str = VHOST, component: str = COMPONENT,
                 secret: str = "component-secret", log_level: str = "info", default_limits: bool = False,
                 s2s: bool = True, extra_modules: str = "", services: dict[str, Service] | None = None):
        missing = missing_tools()
        if missing:
            raise HarnessError(f"{', '.join(missing)} not found: install the Debian package 'ejabberd' "
                               "(bash tests/run.sh does it)")
        self.dir = Path(workdir).resolve()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.vhost = vhost
        self.component = component
        self.secret = secret
        # harness-style levels: "debug" logs every stanza; ejabberd's own names pass through
        self.log_level = {"warn": "warning"}.get(log_level, log_level)
        self.default_limits = default_limits
        self.s2s = s2s
        # more `modules:` entries, as YAML indented by two spaces
        self.extra_modules = extra_modules
        ports: set[int] = set()
        while len(ports) < 3:
            ports.add(free_port())
        self.c2s_port, self.component_port, self.dist_port = sorted(ports)
        self.node = f"fg{self.dist_port}@localhost"
        self.cookie = secrets.token_hex(16)
        self.config_path = self.dir / "ejabberd.yml"
        self.inetrc_path = self.dir / "inetrc"
        self.spool_dir = self.dir / "spool"
        self.logs_dir = self.dir / "logs"
        self.log_path = self.logs_dir / "ejabberd.log"
        self.out_path = self.dir / "ejabberd.out"
        self.spool_dir.mkdir(exist_ok=True)
        self.logs_dir.mkdir(exist_ok=True)
        self.proc: subprocess.Popen | None = None
        self._pending_users: dict[str, str] = {}
        self.start_seconds: list[float] = []  # how long each start() took, for the figures
        # more component listeners by name (see Service); their ports in .port
        self.services: dict[str, Service] = {}
        for name, svc in (services or {}).items():
            self.add_service(name, svc)
        self._write_config()
        ACTIVE.append(self)

    def add_service(self, name: str, svc: Service | None = None, **kw) -> Service:
        """One more `ejabberd_service` listener (before start(), or followed by a restart):
        `add_service("tls", Service(tls=True, certfile=...))` or the same as keywords.
        Returns it, with its port."""
        svc = svc or Service(**kw)
        assert name not in self.services, f"service listener {name!r} exists"
        if svc.tls and svc.certfile is None:
            raise ValueError("a TLS service listener needs a certfile")
        svc.domain = svc.domain or self.component
        svc.secret = svc.secret or self.secret
        taken = {self.c2s_port, self.component_port, self.dist_port} | {s.port for s in self.services.values()}
        while not svc.port or svc.port in taken:
            svc.port = free_port()
        self.services[name] = svc
        self._write_config()
        return svc

    def _ports(self) -> list[int]:
        return [self.c2s_port, self.component_port, *(s.port for s in self.services.values())]

    # -- files

    def _service_yaml(self, svc: Service, limit: int) -> str:
        lines = [
            "  -",
            f"    port: {svc.port}",
            '    ip: "127.0.0.1"',
            "    module: ejabberd_service",
            f"    max_stanza_size: {limit}",
        ]
        if svc.tls:
            lines.append("    tls: true")
        if svc.certfile is not None:
            lines.append(f'    certfile: "{Path(svc.certfile).resolve()}"')
        if svc.cafile is not None:
            lines.append(f'    cafile: "{Path(svc.cafile).resolve()}"')
        if svc.global_routes is not None:
            lines.append(f"    global_routes: {str(svc.global_routes).lower()}")
        lines += ["    hosts:", f'      "{svc.domain}":', f'        password: "{svc.secret}"']
        return "\n".join(lines) + "\n"

    def _write_config(self) -> None:
        c2s_limit, service_limit = (262144, 524288) if self.default_limits else (4194304, 4194304)
        cfg = f"""\
# generated by tests/e2e/ejabberd.py
loglevel: {self.log_level}
log_rotate_count: 0
hosts:
  - {self.vhost}
listen:
  -
    port: {self.c2s_port}
    ip: "127.0.0.1"
    module: ejabberd_c2s
    max_stanza_size: {c2s_limit}
    shaper: none
    access: c2s
  -
    port: {self.component_port}
    ip: "127.0.0.1"
    module: ejabberd_service
    max_stanza_size: {service_limit}
    hosts:
      "{self.component}":
        password: "{self.secret}"
{"".join(self._service_yaml(svc, service_limit) for svc in self.services.values())}\
# PLAIN and SCRAM over plain TCP on loopback (no certificates): the stored passwords
# stay in plain text so that both mechanisms work.
auth_method: internal
auth_password_format: plain
{"" if self.s2s else "s2s_access: none"}
acl:
  local:
    user_regexp: ""
access_rules:
  local:
    allow: local
  c2s:
    allow: all
modules:
  mod_roster:
    versioning: true
  mod_disco: {{}}
  mod_caps: {{}}
  mod_ping: {{}}
  mod_version: {{}}
  mod_last: {{}}
  mod_privacy: {{}}
  mod_blocking: {{}}
  mod_carboncopy: {{}}
  mod_client_state: {{}}
  mod_stream_mgmt: {{}}
{self.extra_modules}"""
        self.config_path.write_text(cfg)
        # Host names from a hosts file that knows localhost only (the node names' host) and no
        # name server at all: any other lookup (ejabberd's s2s for a domain that has no route)
        # fails at once instead of asking the machine's DNS.
        (self.dir / "hosts").write_text("127.0.0.1 localhost\n")
        (self.dir / "resolv.conf").write_text("")
        self.inetrc_path.write_text(
            "{lookup, [file, dns]}.\n"
            f'{{hosts_file, "{self.dir / "hosts"}"}}.\n'
            f'{{resolv_conf, "{self.dir / "resolv.conf"}"}}.\n')

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update({
            "EJABBERD_CONFIG_PATH": str(self.config_path),
            "EJABBERD_LOG_PATH": str(self.log_path),
            "ERL_LIBS": _erl_libs() or "",
            "ERL_INETRC": str(self.inetrc_path),
            "ERL_CRASH_DUMP_BYTES": "0",
            "ERL_CRASH_DUMP": str(self.logs_dir / "erl_crash.dump"),
            "HOME": str(self.dir),
            "ERL_DIST_PORT": str(self.dist_port),
        })
        for var in ("ERL_FLAGS", "ERL_AFLAGS", "ERL_ZFLAGS", "ERL_EPMD_PORT", "ERL_EPMD_ADDRESS"):
            env.pop(var, None)
        return env

    def _dist_args(self) -> list[str]:
        # ejabberdctl's ERL_DIST_PORT: distribution on a fixed port, no epmd.
        return ["-setcookie", self.cookie, "-erl_epmd_port", str(self.dist_port), "-start_epmd", "false"]

    # -- lifecycle

    def start(self, timeout: float = 30.0) -> "Ejabberd":
        assert self.proc is None or self.proc.poll() is not None, "ejabberd already running"
        users = dict(self._pending_users)
        regs = ", ".join(f"{{{_erl_binary(u)}, {_erl_binary(p)}}}" for u, p in users.items())
        # Runs once ejabberd's application has started (`-s ejabberd` returns then): registers
        # the users (an existing one, after a restart, is fine) and prints the ready line.
        boot = (
            "Host = " + _erl_binary(self.vhost) + ", "
            "Res = [{U, ejabberd_admin:register(U, Host, P)} || {U, P} <- [" + regs + "]], "
            "Bad = [R || {_, R} <- Res, element(1, R) =/= ok, element(2, R) =/= conflict], "
            "case Bad of [] -> io:format(\"" + READY_LINE + "~n\"); "
            "_ -> io:format(\"fieldgate-harness: register failed: ~p~n\", [Res]) end, "
            # A line (or the end) on stdin stops the server: ejabberd's application is
            # stopped (its listeners and sessions closed), Mnesia and the logs flushed,
            # then the VM halts, without the second OTP's init:stop spends after that. When the harness
            # dies, stdin ends and the server goes with it.
            "spawn(fun() -> io:get_line(''), application:stop(ejabberd), mnesia:stop(), "
            "[catch logger_std_h:filesync(H) || H <- logger:get_handler_ids()], "
            "io:format(\"fieldgate-harness: stopped~n\"), erlang:halt(0) end)")
        args = [_erl(), "-sname", self.node, *self._dist_args(),
                "-kernel", "inet_dist_use_interface", "{127,0,0,1}",
                "-mnesia", "dir", f'"{self.spool_dir}"',
                "-noshell", "-s", "ejabberd", "-eval", boot]
        out = open(self.out_path, "ab")
        out.write(f"\n===== harness: start {time.strftime('%H:%M:%S')} =====\n".encode())
        out.flush()
        offset = out.tell()
        t0 = time.monotonic()
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=out, stderr=subprocess.STDOUT,
                                     cwd=self.dir, env=self._env(), start_new_session=True)
        out.close()

        def ready() -> bool:
            text = self._out_since(offset)
            if self.proc.poll() is not None or "register failed" in text:
                raise HarnessError(
                    f"ejabberd failed to start (exit {self.proc.poll()})\n{self.describe()}")
            return READY_LINE in text and all(port_open(p) for p in self._ports())

        wait_for(ready, timeout, f"ejabberd to listen on 127.0.0.1:{', :'.join(map(str, self._ports()))} "
                 "with its users registered", interval=0.05)
        self.start_seconds.append(time.monotonic() - t0)
        for u in users:
            self._pending_users.pop(u, None)
        return self

    def _out_since(self, offset: int) -> str:
        try:
            with open(self.out_path, "rb") as f:
                f.seek(offset)
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is not None:
            self._stop_proc(timeout)
            wait_for(lambda: not any(port_open(p) for p in self._ports()),
                     timeout, "ejabberd's ports to close")

    def _stop_proc(self, timeout: float) -> None:
        """A line on stdin (see start()), then SIGTERM (ejabberd's own clean shutdown, a
        second slower), then SIGKILL."""
        proc = self.proc
        if proc.poll() is None:
            try:
                proc.stdin.write(b"stop\n")
                proc.stdin.close()
            except (BrokenPipeError, OSError):
                pass
            try:
                proc.wait(timeout=timeout / 2)
            except subprocess.TimeoutExpired:
                log.warning("ejabberd %s did not stop on stdin; SIGTERM", self.node)
                stop_process(proc, signal.SIGTERM, timeout / 2)
        elif proc.stdin and not proc.stdin.closed:
            proc.stdin.close()

    def ctl(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
        """`ejabberdctl <args>` against this node, run the way ejabberdctl runs it: a hidden
        Erlang node calling ejabberd_ctl (no epmd, no listening port)."""
        ctl_node = f"ctl{secrets.token_hex(3)}@localhost"
        return subprocess.run(
            [_erl(), "-sname", ctl_node, *self._dist_args(), "-dist_listen", "false", "-hidden", "-noinput",
             "-s", "ejabberd_ctl", "-extra", self.node, *args],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout, cwd=self.dir,
            env=self._env())

    def register(self, user: str, password: str = PASSWORD) -> str:
        """Register user@vhost; returns the bare JID. Before start() the node registers the
        user itself as it boots; on a running server this is `ejabberdctl register`."""
        if not self.running:
            self._pending_users[user] = password
            return self.jid(user)
        r = self.ctl("register", user, self.vhost, password)
        if r.returncode != 0:
            raise HarnessError(f"ejabberdctl register {user} failed ({r.returncode}): {r.stdout}{r.stderr}")
        return self.jid(user)

    def jid(self, user: str) -> str:
        return f"{user}@{self.vhost}"

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def describe(self) -> str:
        more = "".join(f", {n} {s.port}{' tls' if s.tls else ''}" for n, s in self.services.items())
        return (f"ejabberd {self.node} (c2s {self.c2s_port}, component {self.component_port}{more}, "
                f"dist {self.dist_port}) output and log tail:\n"
                f"{tail(self.out_path, 20)}\n{tail(self.logs_dir / 'error.log', 20)}\n{tail(self.log_path, 80)}")

    def close(self) -> None:
        if self.proc is not None:
            self._stop_proc(10)
        if self in ACTIVE:
            ACTIVE.remove(self)


@atexit.register
def _stop_leftovers() -> None:
    """An interrupted run leaves no ejabberd behind."""
    for obj in list(ACTIVE):
        if isinstance(obj, Ejabberd):
            try:
                obj.close()
            except Exception:  # noqa: BLE001
                pass
