"""A real Mosquitto broker and paho-mqtt helper clients for the MQTT adapter's end-to-end tests.

`Mosquitto` runs /usr/sbin/mosquitto in the foreground from a generated config in its
work dir, with three listeners on free 127.0.0.1 ports:

    plain  anonymous MQTT over TCP
    tls    anonymous MQTT over TLS (certificates from certs.py; optionally requiring a
           client certificate signed by the test CA)
    auth   MQTT over TCP with a password file: only `user` / `password` may connect

Persistence is on (its own directory), so persistent sessions, their subscriptions and
queued QoS 1/2 messages, and retained messages survive `stop()` + `start()` (SIGTERM makes
mosquitto save its database). `kill()` (SIGKILL) saves nothing: autosave is off, so what
survives a kill is exactly what the last `stop()` or `save()` wrote.

Mosquitto 2.0 behaviour worth knowing when writing tests (seen with 2.0.11, Debian 12):
- `stop()` publishes the wills of the clients still connected (a subscriber with a
  persistent session gets them after the restart; a retained will stays retained);
  `kill()` publishes none.
- A message reaches a subscriber that was already subscribed with retain=False, even if it
  was published retained (a will too): check retained state with a fresh subscription.
- Started as root, mosquitto switches to the user 'mosquitto' unless told otherwise; the
  config names the current user so that it keeps access to the private work dir.
- With TLS 1.3, a client certificate the broker refuses fails after the client's handshake
  has completed: the client sees its connection closed before CONNACK, not an SSL error.

`MqttClient` is a paho-mqtt 2.x client (CallbackAPIVersion.VERSION2) driven from synchronous
test code: `connect()` returns after CONNACK, `subscribe()` after SUBACK, `publish()` once the
broker has the message (PUBACK/PUBCOMP, or for QoS 0 an UNSUBACK round trip behind it), and
it records every message it receives with its arrival time. It never reconnects by itself,
so a test sees exactly the connections it made. `Collector` is one that subscribes on entry.

Additive to harness.py: the broker and every client register in harness.ACTIVE (log tails
on a failing test's report) and are stopped by `close()`.
"""

from __future__ import annotations

import atexit
import itertools
import os
import pwd
import re
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

import harness
from certs import Certs, Leaf, make_certs
from harness import HarnessError, LogFile, free_port, stop_process, tail, wait_for

HOST = "127.0.0.1"
LISTENERS = ("plain", "tls", "auth")
USER = "gw"
USER_PASSWORD = "gw-secret"

MQTTv311 = MQTTProtocolVersion.MQTTv311
MQTTv5 = MQTTProtocolVersion.MQTTv5

# "the broker's user on the auth listener, no credentials elsewhere"
DEFAULT: Any = object()


def _bin(name: str) -> str:
    # Debian installs the broker in /usr/sbin, which is not on a normal user's PATH.
    found = shutil.which(name) or next(
        (str(p) for p in (Path("/usr/sbin") / name, Path("/usr/bin") / name) if os.access(p, os.X_OK)), None)
    if not found:
        raise HarnessError(f"{name} not found (install the Debian packages 'mosquitto', 'mosquitto-clients' and "
                           "'openssl'; bash tests/run.sh does it)")
    return found


def mosquitto_bin() -> str:
    return _bin("mosquitto")


def missing_tools() -> list[str]:
    """The programs this module needs that are not installed (for a clear failure)."""
    out = []
    for name in ("mosquitto", "mosquitto_passwd", "openssl"):
        try:
            _bin(name)
        except HarnessError:
            out.append(name)
    return out


def _listening(ports: Iterable[int]) -> bool:
    """Whether every port has a socket in LISTEN state on 127.0.0.1 (read from
    /proc/net/tcp, so that the readiness check does not open connections that the broker
    would log as clients)."""
    want = {f"0100007F:{p:04X}" for p in ports}
    try:
        lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return all(harness.port_open(p) for p in ports)
    for line in lines:
        cols = line.split()
        if len(cols) > 3 and cols[3] == "0A":  # TCP_LISTEN
            want.discard(cols[1])
    return not want


# --------------------------------------------------------------------------------------
# the broker


class Mosquitto(LogFile):
    """A Mosquitto broker in `workdir`, foreground, on free loopback ports.

    The ports are fixed at construction, so `restart()` (or `stop()` + `start()`) brings the
    broker back on the same addresses. The config and the password file are rewritten at
    every start, so a test may change e.g. `tls_leaf`, `require_certificate` or `password`
    and restart.

    Attributes for the tests: `plain_port`, `tls_port`, `auth_port` (and `port(listener)`),
    `user`, `password`, `certs` (certs.Certs; the tls listener serves `tls_leaf`, by default
    `certs.server`), `log_path`, `persistence_dir`.

    `extra_config` is appended to the generated config, after the last listener: global
    options, or further `listener` blocks with their own settings.
    """

    def __init__(self, workdir: Path, certs: Certs | None = None, *, user: str = USER,
                 password: str = USER_PASSWORD, tls_leaf: Leaf | None = None, require_certificate: bool = False,
                 max_queued_messages: int = 100_000, log_types: Sequence[str] = ("all",), extra_config: str = ""):
        self.dir = Path(workdir).resolve()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.certs = certs if certs is not None else make_certs(self.dir / "certs")
        self.tls_leaf = tls_leaf or self.certs.server
        # require a client certificate signed by the test CA on the tls listener
        self.require_certificate = require_certificate
        self.user = user
        self.password = password
        self.max_queued_messages = max_queued_messages
        self.log_types = tuple(log_types)
        self.extra_config = extra_config
        ports: list[int] = []
        while len(ports) < len(LISTENERS):
            p = free_port()
            if p not in ports:
                ports.append(p)
        self.plain_port, self.tls_port, self.auth_port = ports
        self.config_path = self.dir / "mosquitto.conf"
        self.log_path = self.dir / "mosquitto.log"
        self.out_path = self.dir / "mosquitto.out"
        self.password_path = self.dir / "passwd"
        self.persistence_dir = self.dir / "persistence"
        self.persistence_dir.mkdir(exist_ok=True)
        self.db_path = self.persistence_dir / "mosquitto.db"
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.clients: list[MqttClient] = []
        self._client_ids = itertools.count(1)
        harness.ACTIVE.append(self)

    # -- config

    def port(self, listener: str) -> int:
        try:
            return {"plain": self.plain_port, "tls": self.tls_port, "auth": self.auth_port}[listener]
        except KeyError:
            raise ValueError(f"unknown listener {listener!r} (one of {', '.join(LISTENERS)})") from None

    @property
    def ports(self) -> dict[str, int]:
        return {name: self.port(name) for name in LISTENERS}

    def _write_password_file(self) -> None:
        r = subprocess.run([_bin("mosquitto_passwd"), "-b", "-c", str(self.password_path), self.user, self.password],
                           stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)
        if r.returncode != 0:
            raise HarnessError(f"mosquitto_passwd failed ({r.returncode}): {r.stdout}{r.stderr}")

    def _write_config(self) -> None:
        # `user`: started as root, mosquitto 2 switches to the user 'mosquitto' before it
        # opens the log, key and persistence files, which then cannot be read or written in
        # our private temp dir. Naming the current user keeps it as it is (the setting is only
        # consulted when running as root).
        me = pwd.getpwuid(os.geteuid()).pw_name
        # 'information' always: start() waits for the "running" line.
        log_types = "\n".join(f"log_type {t}" for t in dict.fromkeys((*self.log_types, "information")))
        client_cert = "true" if self.require_certificate else "false"
        cfg = f"""\
# generated by tests/e2e/mosquitto.py
user {me}
# allow_anonymous and password_file apply per listener
per_listener_settings true

persistence true
persistence_location {self.persistence_dir}/
persistence_file {self.db_path.name}
# Saved only on SIGTERM and SIGUSR1 (save()): a SIGKILL loses exactly what changed since.
autosave_interval 0
# sessions of persistent clients never expire; plenty of room for queued messages
max_queued_messages {self.max_queued_messages}

log_dest file {self.log_path}
{log_types}
log_timestamp true
log_timestamp_format %Y-%m-%dT%H:%M:%S
connection_messages true
# no Nagle delays on the small request/response packets the tests time
set_tcp_nodelay true

listener {self.plain_port} {HOST}
allow_anonymous true

listener {self.tls_port} {HOST}
cafile {self.certs.ca_cert}
certfile {self.tls_leaf.cert}
keyfile {self.tls_leaf.key}
require_certificate {client_cert}
allow_anonymous true

listener {self.auth_port} {HOST}
allow_anonymous false
password_file {self.password_path}

{self.extra_config}
"""
        self.config_path.write_text(cfg)

    # -- lifecycle

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 10.0) -> "Mosquitto":
        """Start the broker and wait until all three listeners accept connections."""
        assert not self.running, "mosquitto already running"
        self._write_password_file()
        self._write_config()
        self.starts += 1
        with open(self.log_path, "ab") as logf:
            logf.write(f"===== harness: start #{self.starts} =====\n".encode())
        since = self.log_size()
        with open(self.out_path, "ab") as out:
            self.proc = subprocess.Popen(
                [mosquitto_bin(), "-c", str(self.config_path)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                cwd=self.dir, start_new_session=True,
            )
        running = re.compile(r"mosquitto version \S+ running")

        def ready() -> bool:
            if self.proc.poll() is not None:
                raise HarnessError(f"mosquitto exited with {self.proc.returncode} during start-up\n{self.describe()}")
            # The "running" line comes after every listener is bound (mosquitto exits if one
            # cannot be), so the ports listening are the broker's.
            return bool(running.search(self.log_since(since))) and _listening(self.ports.values())

        wait_for(ready, timeout, f"mosquitto to listen on {HOST} ports {self.ports}")
        return self

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM: mosquitto disconnects its clients (publishing their wills), saves its
        database and exits. Returns the exit code (0)."""
        if self.proc is None:
            return None
        return stop_process(self.proc, signal.SIGTERM, timeout)

    def kill(self) -> int | None:
        """SIGKILL: the broker vanishes without saving. The next start restores the database
        of the last stop()/save(), stale as it is: what came since is lost, and what was
        delivered or deleted since comes back (queued messages are delivered again, a
        cleared retained message reappears). Its clients see their connections reset."""
        if self.proc is None:
            return None
        return stop_process(self.proc, signal.SIGKILL, 10)

    def restart(self, kill: bool = False, timeout: float = 10.0) -> "Mosquitto":
        """Stop (SIGTERM, or SIGKILL with `kill=True`) and start again on the same ports."""
        if kill:
            self.kill()
        else:
            self.stop()
        return self.start(timeout)

    def save(self, timeout: float = 10.0) -> None:
        """Make the running broker write its database now (SIGUSR1) and wait until it did."""
        assert self.running, "mosquitto not running"

        def ident() -> tuple[int, int] | None:
            try:
                st = self.db_path.stat()
            except FileNotFoundError:
                return None
            return st.st_ino, st.st_mtime_ns

        before = ident()
        self.proc.send_signal(signal.SIGUSR1)
        # mosquitto writes mosquitto.db.new and renames it over mosquitto.db
        tmp = self.db_path.with_name(self.db_path.name + ".new")
        wait_for(lambda: ident() not in (None, before) and not tmp.exists(), timeout,
                 f"mosquitto to save {self.db_path}")

    def close(self) -> None:
        """Disconnect the helper clients, stop the broker; safe to call twice."""
        for c in list(self.clients):
            c.close()
        if self.running:
            stop_process(self.proc, signal.SIGTERM, 10)
        if self in harness.ACTIVE:
            harness.ACTIVE.remove(self)

    # -- log


    def wait_log(self, pattern: str | re.Pattern, since: int = 0, timeout: float = 10.0) -> re.Match:
        """Wait for a log line (after byte offset `since`, see log_size()) matching `pattern`."""
        rx = re.compile(pattern, re.M) if isinstance(pattern, str) else pattern
        return wait_for(lambda: rx.search(self.log_since(since)), timeout, f"mosquitto to log /{rx.pattern}/")

    def wait_subscribed(self, client_id: str, topic_filter: str, since: int = 0, timeout: float = 10.0) -> int:
        """Wait until `client_id` subscribed to `topic_filter` (after log offset `since`);
        returns the QoS it asked for. From the `subscribe` log lines: "<id> <qos> <filter>"."""
        m = self.wait_log(rf"^\S+: {re.escape(client_id)} (\d) {re.escape(topic_filter)}$", since, timeout)
        return int(m.group(1))

    def wait_unsubscribed(self, client_id: str, topic_filter: str, since: int = 0, timeout: float = 10.0) -> None:
        """Wait until `client_id` unsubscribed from `topic_filter` ("<id> <filter>" lines)."""
        self.wait_log(rf"^\S+: {re.escape(client_id)} {re.escape(topic_filter)}$", since, timeout)

    def wait_client_connected(self, client_id: str, since: int = 0, timeout: float = 10.0) -> dict[str, Any]:
        """Wait until `client_id` connected (after log offset `since`); returns what the
        broker logged of its CONNECT: protocol ("3.1", "3.1.1" or "5"), clean (clean
        session / clean start), keepalive (s), username (or None)."""
        m = self.wait_log(rf"^\S+: New client connected from \S+ as {re.escape(client_id)} "
                          r"\(p(\d), c(\d), k(\d+)(?:, u'(.*)')?\)\.$", since, timeout)
        # mosquitto logs its own protocol enum: 1 = 3.1, 2 = 3.1.1, 5 = 5 (not the wire level)
        protocol = {"1": "3.1", "2": "3.1.1", "5": "5"}.get(m.group(1), f"p{m.group(1)}")
        return {"protocol": protocol, "clean": m.group(2) == "1", "keepalive": int(m.group(3)),
                "username": m.group(4)}

    def describe(self) -> str:
        if self.proc is None:
            state = "never started"
        else:
            state = f"pid {self.proc.pid}, " + ("running" if self.running else f"exited {self.proc.returncode}")
        return (f"mosquitto ({state}; plain {self.plain_port}, tls {self.tls_port}, auth {self.auth_port})\n"
                f"--- mosquitto.out ---\n{tail(self.out_path, 20)}\n--- mosquitto.log ---\n{tail(self.log_path, 80)}")

    # -- helper clients

    def new_client_id(self, kind: str) -> str:
        return f"harness-{kind}-{next(self._client_ids)}"

    def client(self, client_id: str | None = None, listener: str = "plain", connect: bool = True,
               **kw: Any) -> "MqttClient":
        """A helper client (see MqttClient for the keyword arguments), connected unless
        `connect=False`; closed with the broker."""
        c = MqttClient(self, client_id or self.new_client_id("client"), listener, **kw)
        if connect:
            try:
                c.connect()
            except BaseException:
                c.close()  # a refused client leaves nothing registered
                raise
        return c

    def device_client(self, client_id: str, will: tuple | None = None, listener: str = "plain",
                      **kw: Any) -> "MqttClient":
        """A connected client standing for a device, optionally with a Last Will
        (topic, payload[, qos[, retain]]); `.drop()` loses its connection uncleanly, so the
        broker publishes the will."""
        return self.client(client_id, listener, will=will, **kw)

    def collector(self, topic_filter: str | Sequence[str], qos: int = 1, listener: str = "plain",
                  client_id: str | None = None, **kw: Any) -> "Collector":
        """A Collector (context manager) recording what arrives on `topic_filter`."""
        return Collector(self, topic_filter, qos, listener, client_id=client_id, **kw)

    def publish(self, topic: str, payload: bytes | str, qos: int = 0, retain: bool = False,
                listener: str = "plain", timeout: float = 10.0, **kw: Any) -> None:
        """Publish one message from a short-lived client; returns once the broker has it."""
        with MqttClient(self, self.new_client_id("pub"), listener, **kw) as c:
            c.publish(topic, payload, qos, retain, timeout=timeout)

    def publish_many(self, messages: Iterable[tuple], qos: int = 0, retain: bool = False,
                     listener: str = "plain", timeout: float = 60.0, **kw: Any) -> int:
        """Publish many messages over one connection: items are (topic, payload) or
        (topic, payload, qos, retain). Returns once the broker has all of them; the count."""
        with MqttClient(self, self.new_client_id("pub"), listener, **kw) as c:
            return c.publish_many(messages, qos, retain, timeout=timeout)

    def clear_retained(self, topic: str, listener: str = "plain", **kw: Any) -> None:
        """Delete the retained message of `topic` (an empty retained publish)."""
        self.publish(topic, b"", qos=1, retain=True, listener=listener, **kw)


# --------------------------------------------------------------------------------------
# helper clients


@dataclass(frozen=True)
class Message:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    t: float                       # time.monotonic() when it arrived
    properties: Any = None         # paho Properties (MQTT v5) or None

    @property
    def text(self) -> str:
        return self.payload.decode()


def _matches(topic_filter: str | None, topic: str) -> bool:
    """MQTT filter matching (+ and # wildcards); None matches every topic."""
    return topic_filter is None or paho.topic_matches_sub(topic_filter, topic)


class MqttError(HarnessError):
    pass


class ConnectRefused(MqttError):
    """The broker answered CONNECT with a failure (`reason`: the paho ReasonCode)."""

    def __init__(self, client_id: str, reason: Any):
        super().__init__(f"{client_id}: connection refused: {reason}")
        self.reason = reason


class MqttClient:
    """A paho-mqtt client for test code. Keyword arguments:

    clean_session  False: a persistent session (MQTT 3.1.1 clean session 0; MQTT 5 clean
                   start 0 with a session that never expires)
    username, password
                   default: the broker's user on the `auth` listener, none elsewhere; pass
                   username=None for an anonymous client on `auth`
    will           (topic, payload[, qos[, retain]])
    tls_ca         CA file the client verifies the broker with (default certs.ca_cert);
                   None turns verification off
    tls_client     Leaf the client presents (default: certs.client if the broker requires a
                   certificate, else none)
    host           the address to connect to and to verify the certificate against
                   (default 127.0.0.1; "localhost" checks the DNS name)
    protocol       MQTTv311 (default) or MQTTv5
    keepalive      seconds

    `connect()` may be called again after `disconnect()`, `drop()` or a lost connection
    (with the same client id, so a persistent session resumes); the received messages
    accumulate across connections. TLS and socket errors of `connect()` propagate as raised
    (e.g. ssl.SSLCertVerificationError); a refusal raises ConnectRefused.
    """

    def __init__(self, broker: Mosquitto, client_id: str, listener: str = "plain", *, clean_session: bool = True,
                 username: str | None = DEFAULT, password: str | None = DEFAULT, will: tuple | None = None,
                 tls_ca: Path | None = DEFAULT, tls_client: Leaf | None = DEFAULT, host: str = HOST,
                 protocol: MQTTProtocolVersion = MQTTv311, keepalive: int = 30):
        self.broker = broker
        self.client_id = client_id
        self.listener = listener
        self.port = broker.port(listener)
        self.clean_session = clean_session
        if username is DEFAULT:
            username = broker.user if listener == "auth" else None
        if password is DEFAULT:
            password = broker.password if listener == "auth" and username == broker.user else None
        self.username, self.password = username, password
        self.will = will
        self.tls_ca = broker.certs.ca_cert if tls_ca is DEFAULT else tls_ca
        if tls_client is DEFAULT:
            tls_client = broker.certs.client if broker.require_certificate else None
        self.tls_client = tls_client
        self.host = host
        self.protocol = protocol
        self.keepalive = keepalive

        self.messages: list[Message] = []
        self.cond = threading.Condition()
        self.connects = 0
        self.session_present: bool | None = None
        self.disconnect_reason: Any = None
        self._paho: paho.Client | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._connack: Any = None
        self._subacks: dict[int, list] = {}
        self._unsubacks: set[int] = set()
        broker.clients.append(self)
        harness.ACTIVE.append(self)

    # -- paho callbacks (network thread)

    def _on_connect(self, _c, _u, flags, reason, _props) -> None:
        with self.cond:
            self._connack = reason
            self.session_present = bool(getattr(flags, "session_present", False))
            self.cond.notify_all()

    def _on_disconnect(self, _c, _u, _flags, reason, _props) -> None:
        with self.cond:
            self.disconnect_reason = reason
            self.cond.notify_all()

    def _on_message(self, _c, _u, msg) -> None:
        m = Message(msg.topic, bytes(msg.payload), msg.qos, bool(msg.retain), time.monotonic(),
                    msg.properties if self.protocol == MQTTv5 else None)
        with self.cond:
            self.messages.append(m)
            self.cond.notify_all()

    def _on_subscribe(self, _c, _u, mid, reasons, _props) -> None:
        with self.cond:
            self._subacks[mid] = list(reasons)
            self.cond.notify_all()

    def _on_unsubscribe(self, _c, _u, mid, _reasons, _props) -> None:
        with self.cond:
            self._unsubacks.add(mid)
            self.cond.notify_all()

    @staticmethod
    def _on_socket_open(_c, _u, sock) -> None:
        # paho leaves Nagle on: small packets would wait for the previous one's ACK
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass

    def _run(self, client: paho.Client, stop: threading.Event) -> None:
        # Our own loop instead of loop_start(): loop_forever() would reconnect by itself.
        try:
            while not stop.is_set():
                if client.loop(timeout=0.05) != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    break
        finally:
            with self.cond:
                self.cond.notify_all()

    # -- connection

    @property
    def connected(self) -> bool:
        return (self._thread is not None and self._thread.is_alive() and self._paho is not None
                and self._paho.is_connected())

    def _new_paho(self) -> paho.Client:
        v5 = self.protocol == MQTTv5
        c = paho.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=self.protocol,
                        clean_session=None if v5 else self.clean_session)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        c.on_subscribe = self._on_subscribe
        c.on_unsubscribe = self._on_unsubscribe
        c.on_socket_open = self._on_socket_open
        c.max_inflight_messages_set(100)
        if self.username is not None:
            c.username_pw_set(self.username, self.password)
        if self.will is not None:
            topic, payload, *rest = self.will
            c.will_set(topic, payload, qos=rest[0] if rest else 0, retain=rest[1] if len(rest) > 1 else False)
        if self.listener == "tls":
            ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(self.tls_ca) if self.tls_ca else None)
            if self.tls_ca is None:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            if self.tls_client is not None:
                ctx.load_cert_chain(str(self.tls_client.cert), str(self.tls_client.key))
            c.tls_set_context(ctx)
        return c

    def connect(self, timeout: float = 10.0) -> "MqttClient":
        """Connect and wait for a successful CONNACK (`session_present` is set from it)."""
        assert not self.connected, f"{self.client_id} already connected"
        self._shutdown_thread()
        c = self._new_paho()
        with self.cond:
            self._connack = None
            self.disconnect_reason = None
        v5 = self.protocol == MQTTv5
        props = None
        if v5 and not self.clean_session:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 0xFFFFFFFF  # never expires, as a 3.1.1 persistent session
        # Blocking: TCP connect and the TLS handshake (certificate errors raise here).
        c.connect(self.host, self.port, self.keepalive,
                  clean_start=self.clean_session if v5 else paho.MQTT_CLEAN_START_FIRST_ONLY, properties=props)
        self._paho = c
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(c, self._stop), daemon=True,
                                        name=f"mqtt-{self.client_id}")
        self._thread.start()
        self.connects += 1
        deadline = time.monotonic() + timeout
        with self.cond:
            while self._connack is None:
                if not self._thread.is_alive():
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.cond.wait(min(left, 0.1))
            reason = self._connack
        if reason is None:
            alive = self._thread.is_alive()
            self._shutdown_thread()
            if alive:
                raise MqttError(f"{self.client_id}: no CONNACK from {self.host}:{self.port} within {timeout}s")
            raise MqttError(f"{self.client_id}: connection to {self.listener} listener closed before CONNACK "
                            f"({self.disconnect_reason})")
        if reason.is_failure:
            self._shutdown_thread()
            raise ConnectRefused(self.client_id, reason)
        return self

    def wait_disconnected(self, timeout: float = 10.0) -> None:
        """Wait until the connection is gone (e.g. the broker stopped)."""
        wait_for(lambda: not self.connected, timeout, f"{self.client_id} to lose its connection")

    def disconnect(self, timeout: float = 10.0) -> None:
        """A clean DISCONNECT: the broker discards the will."""
        if self.connected:
            self._paho.disconnect()
            self._thread.join(timeout)
        self._shutdown_thread()

    def drop(self) -> None:
        """Lose the connection without DISCONNECT (the socket just closes), as a device
        whose link died: the broker publishes the will."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        if self._paho is not None:
            sock = self._paho.socket()
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()
        self._shutdown_thread()

    def _shutdown_thread(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
        if self._paho is not None:
            s = self._paho.socket()
            if s is not None:
                try:
                    s.close()
                except OSError:
                    pass
            self._paho = None

    def close(self) -> None:
        """Disconnect (cleanly, if still connected); safe to call twice."""
        try:
            self.disconnect(timeout=5)
        finally:
            if self in self.broker.clients:
                self.broker.clients.remove(self)
            if self in harness.ACTIVE:
                harness.ACTIVE.remove(self)

    def __enter__(self) -> "MqttClient":
        if not self.connected:
            try:
                self.connect()
            except BaseException:
                self.close()
                raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- requests

    def _client(self) -> paho.Client:
        if not self.connected:
            raise MqttError(f"{self.client_id} is not connected ({self.disconnect_reason})")
        return self._paho

    def _wait(self, cond: Callable[[], Any], timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                value = cond()
                if value:
                    return value
                if not self.connected:
                    raise MqttError(f"{self.client_id}: connection lost waiting for {what} ({self.disconnect_reason})")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise HarnessError(f"{self.client_id}: timed out after {timeout:.1f}s waiting for {what}")
                self.cond.wait(min(left, 0.1))

    def subscribe(self, topic_filter: str | Sequence[str], qos: int = 1, timeout: float = 10.0) -> list[int]:
        """Subscribe and wait for SUBACK; returns the granted QoS per filter (a refused
        filter raises MqttError)."""
        filters = [topic_filter] if isinstance(topic_filter, str) else list(topic_filter)
        rc, mid = self._client().subscribe([(f, qos) for f in filters])
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise MqttError(f"{self.client_id}: subscribe failed: {paho.error_string(rc)}")
        reasons = self._wait(lambda: self._subacks.pop(mid, None), timeout, f"SUBACK for {filters}")
        if any(r.is_failure for r in reasons):
            raise MqttError(f"{self.client_id}: subscription to {filters} refused: {[str(r) for r in reasons]}")
        return [r.value for r in reasons]

    def unsubscribe(self, topic_filter: str | Sequence[str], timeout: float = 10.0) -> None:
        filters = [topic_filter] if isinstance(topic_filter, str) else list(topic_filter)
        rc, mid = self._client().unsubscribe(filters)
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise MqttError(f"{self.client_id}: unsubscribe failed: {paho.error_string(rc)}")

        def acked() -> bool:
            if mid in self._unsubacks:
                self._unsubacks.discard(mid)
                return True
            return False
        self._wait(acked, timeout, f"UNSUBACK for {filters}")

    def _barrier(self, timeout: float) -> None:
        # The broker handles one connection's packets in order, so its answer to a later
        # request means it has routed every earlier QoS 0 publish. Unsubscribing from a
        # filter we never subscribed to changes nothing and is always acknowledged.
        self.unsubscribe(f"fieldgate-harness/barrier/{self.client_id}", timeout)

    def publish(self, topic: str, payload: bytes | str, qos: int = 0, retain: bool = False,
                timeout: float = 10.0, properties: Properties | None = None) -> None:
        """Publish and return once the broker has the message (QoS 1: PUBACK, QoS 2: PUBCOMP,
        QoS 0: an UNSUBACK round trip behind it)."""
        info = self._client().publish(topic, payload, qos, retain, properties)
        self._wait_published([info], timeout)
        if qos == 0:
            self._barrier(timeout)

    def publish_many(self, messages: Iterable[tuple], qos: int = 0, retain: bool = False,
                     timeout: float = 60.0) -> int:
        """Publish (topic, payload) or (topic, payload, qos, retain) items back to back;
        returns once the broker has all of them. Returns the count."""
        c = self._client()
        infos = []
        any_qos0 = False
        for item in messages:
            topic, payload, *rest = item
            q = rest[0] if rest else qos
            r = rest[1] if len(rest) > 1 else retain
            any_qos0 |= q == 0
            infos.append(c.publish(topic, payload, q, r))
        self._wait_published(infos, timeout)
        if any_qos0:
            self._barrier(timeout)
        return len(infos)

    def _wait_published(self, infos: list, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for info in infos:
            if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_AGAIN):
                raise MqttError(f"{self.client_id}: publish failed: {paho.error_string(info.rc)}")
            while not info.is_published():
                if not self.connected:
                    raise MqttError(f"{self.client_id}: connection lost before publish mid {info.mid} completed "
                                    f"({self.disconnect_reason})")
                if time.monotonic() >= deadline:
                    raise HarnessError(f"{self.client_id}: publish mid {info.mid} not acknowledged within {timeout}s")
                info.wait_for_publish(0.05)

    # -- received messages

    def mark(self) -> int:
        """Index of the next message; pass as `since` to look only at later ones."""
        with self.cond:
            return len(self.messages)

    def received(self, topic_filter: str | None = None, since: int = 0) -> list[Message]:
        """Messages received (after `since`) whose topic matches `topic_filter` (MQTT
        wildcards allowed; None = all)."""
        with self.cond:
            ms = self.messages[since:]
        return [m for m in ms if _matches(topic_filter, m.topic)]

    def wait_for(self, pred: Callable[[list[Message]], Any], timeout: float = 10.0, since: int = 0,
                 what: str = "a condition on the received messages") -> Any:
        """Wait until `pred(messages received after since)` is truthy; returns its value.
        Does not need the connection: messages may arrive after a reconnect."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                value = pred(self.messages[since:])
                if value:
                    return value
                left = deadline - time.monotonic()
                if left <= 0:
                    got = [(m.topic, m.payload[:60]) for m in self.messages[since:][-10:]]
                    raise HarnessError(f"{self.client_id}: timed out after {timeout:.1f}s waiting for {what}; "
                                       f"last received: {got}")
                self.cond.wait(min(left, 0.1))

    def wait_message(self, topic_filter: str | None = None, since: int = 0, timeout: float = 10.0,
                     pred: Callable[[Message], bool] | None = None) -> Message:
        """The first message (after `since`) on `topic_filter` satisfying `pred`."""
        def first(ms: list[Message]) -> Message | None:
            for m in ms:
                if _matches(topic_filter, m.topic) and (pred is None or pred(m)):
                    return m
            return None
        return self.wait_for(first, timeout, since, f"a message on {topic_filter or '#'}")

    def wait_count(self, n: int, topic_filter: str | None = None, since: int = 0,
                   timeout: float = 10.0) -> list[Message]:
        """Wait until at least `n` messages (after `since`) matched `topic_filter`; returns them all."""
        def enough(ms: list[Message]) -> list[Message] | None:
            got = [m for m in ms if _matches(topic_filter, m.topic)]
            return got if len(got) >= n else None
        return self.wait_for(enough, timeout, since, f"{n} messages on {topic_filter or '#'}")

    def describe(self) -> str:
        with self.cond:
            last = self.messages[-15:]
            count = len(self.messages)
        lines = [f"mqtt client {self.client_id} on {self.listener} :{self.port} "
                 f"({'connected' if self.connected else 'not connected'}, {self.connects} connects, "
                 f"{count} messages received; last disconnect: {self.disconnect_reason})"]
        lines += [f"  {m.t:.3f} {m.topic} q{m.qos}{' retained' if m.retain else ''} {m.payload[:120]!r}" for m in last]
        return "\n".join(lines)


class Collector(MqttClient):
    """A client that subscribes to `topic_filter` at QoS `qos` when entered (or `start()`ed),
    and records what arrives (`messages`, `wait_for`, `wait_message`, `wait_count`).

        with mosquitto.collector("fieldgate/#") as col:
            ...
            col.wait_message("fieldgate/pump1/pressure")
    """

    def __init__(self, broker: Mosquitto, topic_filter: str | Sequence[str], qos: int = 1, listener: str = "plain",
                 client_id: str | None = None, **kw: Any):
        super().__init__(broker, client_id or broker.new_client_id("collect"), listener, **kw)
        self.topic_filter = topic_filter
        self.qos = qos

    def start(self, timeout: float = 10.0) -> "Collector":
        """Connect and subscribe; returns once the subscription is in place (SUBACK)."""
        try:
            self.connect(timeout)
            self.subscribe(self.topic_filter, self.qos, timeout)
        except BaseException:
            self.close()  # __exit__ does not run when __enter__ fails
            raise
        return self

    def __enter__(self) -> "Collector":
        return self.start()


@atexit.register
def _stop_leftovers() -> None:
    """An interrupted run leaves no broker behind."""
    for obj in list(reversed(harness.ACTIVE)):
        if isinstance(obj, Mosquitto):
            try:
                obj.close()
            except Exception:  # noqa: BLE001
                pass
