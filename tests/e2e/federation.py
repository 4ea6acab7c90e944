"""Two Prosody servers federating over s2s with TLS, for the deployment pattern "a small
Prosody on the gateway box" (README, Deployment patterns (c)).

- `main`: the site's server, VirtualHost `main.test` with the users (c2s on a free
  127.0.0.1 port), s2s on port 5269 of a loopback address of its own.
- `edge`: the server on the gateway box: the fieldgate component `gw.edge.test` (component
  port on a free 127.0.0.1 port), s2s on port 5269 of another loopback address, and a
  VirtualHost `edge.test` without accounts or c2s listener (Prosody refuses to start
  without a VirtualHost: "No enabled VirtualHost entries found"; it also answers the
  gateway's keep-alive pings, whose default target is the component domain without its
  first label).

Both require TLS with a verified certificate on every s2s stream (`s2s_secure_auth`) and
trust the harness' test CA (certs.py; Prosody's `cafile`, added to the system's roots).
The edge's configuration is the one README "Deployment patterns" (c) gives, plus what only
a test needs (its paths, addresses and ports, run_as_root, the hosts file).

**Name resolution.** Without an SRV record a server connects to port 5269 of the domain's
address, so each server gets a random address of 127.0.0.0/8 (all of it is the loopback
interface on Linux; no set-up needed) and listens on 5269 there: parallel runs do not clash.
The names go into a hosts file of the test's own, which each Prosody reads through its
resolver option `unbound = { hoststxt = "<file>" }`. This works because Prosody 0.12 on
Debian resolves with libunbound (lua-unbound) and its `net/unbound.lua` sets
`hoststxt = false` unless configured: it never reads /etc/hosts (nor does the legacy
resolver it falls back to without lua-unbound), so a private mount namespace with another
/etc/hosts would change nothing by itself. The `.test` names are also one of libunbound's
built-in local zones: the SRV look-ups (`_xmpp-server._tcp.<domain>`) are answered
NXDOMAIN on the machine itself, no query leaves it, and no root privilege is needed.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Iterable

import harness
from certs import Certs, Leaf, make_certs, openssl_bin
from harness import Gateway, HarnessError, Prosody, port_open, tail, wait_for

MAIN_DOMAIN = "main.test"
EDGE_DOMAIN = "edge.test"
EDGE_COMPONENT = "gw.edge.test"
S2S_PORT = 5269  # the port a server connects to when the domain has no SRV record


# --------------------------------------------------------------------------------------
# addresses, names, certificates


def loopback_address(port: int = S2S_PORT, avoid: Iterable[str] = ()) -> str:
    """A random address of 127.0.0.0/8 whose `port` is free (bound and released)."""
    rng = random.SystemRandom()
    avoid = set(avoid)
    for _ in range(100):
        addr = f"127.{rng.randint(1, 254)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
        if addr in avoid:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((addr, port))
            except OSError:
                continue
        return addr
    raise HarnessError(f"no free address in 127.0.0.0/8 for port {port} after 100 tries "
                       "(is the loopback interface up with 127.0.0.0/8 on it?)")


def write_hosts(path: Path, entries: dict[str, str]) -> Path:
    """A hosts(5) file: {name: address}."""
    path.write_text("".join(f"{addr} {name}\n" for name, addr in entries.items()))
    return path


def prosody_lua() -> str:
    """The Lua interpreter Prosody runs on (its #! line), e.g. lua5.4."""
    first = Path(harness.prosody_bin("prosody")).read_text(errors="replace").splitlines()[0]
    return first.split()[-1] if first.startswith("#!") else "lua"


def check_unbound() -> None:
    """Fails clearly when Prosody would not resolve with libunbound (the hosts file of the
    test is given to it through the `unbound` option, which the legacy resolver ignores)."""
    lua = prosody_lua()
    r = subprocess.run(["env", lua, "-e", 'require "lunbound"'], capture_output=True, text=True, timeout=30,
                       stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        raise HarnessError(f"Prosody's {lua} cannot load lunbound ({r.stderr.strip()}): the federation tests "
                           "need the Debian package 'lua-unbound' (Prosody recommends it)")


def sign_leaf(certs: Certs, stem: str, dns_names: Iterable[str], ca: str = "good") -> Leaf:
    """A server leaf for `dns_names` (subjectAltName DNS entries, serverAuth and clientAuth:
    an s2s peer presents the same certificate in both roles) signed by the test CA
    (`ca="good"`) or the unrelated one (`"wrong"`), with certs.py's CA database and dates."""
    import datetime as dt

    from certs import BACKDATE, VALIDITY, _asn1_time, _openssl

    names = list(dns_names)
    d = certs.dir
    ext = d / f"{stem}.ext"
    ext.write_text(f"""\
[ext_leaf]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth, clientAuth
subjectAltName = {", ".join(f"DNS:{n}" for n in names)}
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
""")
    key, csr, crt = d / f"{stem}.key", d / f"{stem}.csr", d / f"{stem}.crt"
    conf = str(d / "openssl.cnf")
    _openssl("req", "-config", conf, "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={names[0]}", cwd=d)
    now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    _openssl("ca", "-config", conf, "-name", f"ca_{ca}", "-batch", "-notext", "-preserveDN", "-in", str(csr),
             "-out", str(crt), "-extfile", str(ext), "-extensions", "ext_leaf",
             "-startdate", _asn1_time(now - BACKDATE), "-enddate", _asn1_time(now + VALIDITY), cwd=d)
    csr.unlink()
    bundle = d / f"{stem}.pem"
    bundle.write_text(crt.read_text() + key.read_text())
    return Leaf(cert=crt, key=key, bundle=bundle)


class FedCerts:
    """The test CA (certs.py) and the leaves the federation tests use:

    edge_good     gw.edge.test, by the CA          main_good     main.test, by the CA
    edge_wrong_name  wrong.example, by the CA      main_wrong_name  wrong.example, by the CA
    edge_unknown_ca  gw.edge.test, by another CA   main_unknown_ca  main.test, by another CA
    edge_expired  gw.edge.test, by the CA, expired yesterday
    """

    def __init__(self, directory: Path):
        openssl_bin()
        c = make_certs(directory, dns_names=(EDGE_COMPONENT,), ip_addresses=())
        self.certs = c
        self.ca = c.ca_cert
        self.leaves: dict[str, Leaf] = {
            "edge_good": c.server,
            "edge_wrong_name": c.wrong_host,
            "edge_unknown_ca": c.untrusted,
            "edge_expired": c.expired,
            "main_good": sign_leaf(c, "main", (MAIN_DOMAIN,)),
            "main_wrong_name": c.wrong_host,
            "main_unknown_ca": sign_leaf(c, "main-unknown-ca", (MAIN_DOMAIN,), ca="wrong"),
        }

    def __getitem__(self, name: str) -> Leaf:
        return self.leaves[name]


# --------------------------------------------------------------------------------------
# a Prosody with s2s


class S2sProsody(harness.LogFile, Prosody):
    """A Prosody that federates: s2s on `address`:5269 with TLS required and certificates
    verified against `ca_file` only, names resolved from `hosts_file`.

    `c2s=False` makes a server without a c2s listener and with only the modules the edge
    needs (its VirtualHost has no accounts and only answers pings)."""

    def __init__(self, workdir: Path, address: str, hosts_file: Path, cert: Leaf, ca_file: Path,
                 vhost: str = MAIN_DOMAIN, c2s: bool = True, component: str | None = None,
                 secret: str = "component-secret", log_level: str = "debug"):
        self.address = address
        self.hosts_file = Path(hosts_file).resolve()
        self.cert = cert
        self.ca_file = Path(ca_file).resolve()
        self.has_c2s = c2s
        self.has_component = component is not None
        super().__init__(workdir, vhost=vhost, component=component or "", secret=secret, log_level=log_level)

    def config_text(self) -> str:
        d = self.dir
        lines = [
            "-- generated by tests/e2e/federation.py",
            "run_as_root = true",
            f'pidfile = "{d}/prosody.pid"',
            f'data_path = "{self.data_dir}"',
            f'log = {{ {self.log_level} = "{self.log_path}" }}',
            f'interfaces = {{ "{self.address}" }}',
            f'local_interfaces = {{ "{self.address}" }}',
            f"s2s_ports = {{ {S2S_PORT} }}",
            f's2s_interfaces = {{ "{self.address}" }}',
            "s2s_direct_tls_ports = { }",
            "c2s_direct_tls_ports = { }",
            "http_ports = { }",
            "https_ports = { }",
        ]
        if self.has_c2s:
            lines += [f"c2s_ports = {{ {self.c2s_port} }}", 'c2s_interfaces = { "127.0.0.1" }',
                      # the test clients speak plain c2s on loopback; s2s is what is under test
                      "c2s_require_encryption = false", "allow_unencrypted_plain_auth = true"]
        else:
            lines += ["c2s_ports = { }"]
        if self.has_component:
            lines += [f"component_ports = {{ {self.component_port} }}", 'component_interfaces = { "127.0.0.1" }']
        else:
            lines += ["component_ports = { }"]
        lines += [
            "-- s2s: TLS always, and the peer's certificate must be valid for its domain",
            "s2s_require_encryption = true",
            "s2s_secure_auth = true",
            f'ssl = {{ certificate = "{self.cert.cert}"; key = "{self.cert.key}"; cafile = "{self.ca_file}" }}',
            f'unbound = {{ hoststxt = "{self.hosts_file}" }}',
            'authentication = "internal_plain"',
            'storage = "internal"',
        ]
        if self.has_c2s:
            lines += ['modules_enabled = { "roster"; "saslauth"; "tls"; "dialback"; "disco"; "ping"; "posix" }',
                      'modules_disabled = { "offline" }']
        else:
            lines += ['modules_enabled = { "tls"; "saslauth"; "dialback"; "ping"; "posix" }']
        lines += ["", f'VirtualHost "{self.vhost}"', ""]
        if self.has_component:
            lines += [f'Component "{self.component}"', f'    component_secret = "{self.secret}"']
        return "\n".join(lines) + "\n"

    def _write_config(self) -> None:
        # Prosody indexes <config dir>/certs for certificates by name (and logs an error
        # when it is missing): an empty one, so that only the configured certificate is used.
        (self.dir / "certs").mkdir(exist_ok=True)
        self.config_path.write_text(self.config_text())

    def _ports(self) -> list[tuple[str, int]]:
        out = [(self.address, S2S_PORT)]
        if self.has_c2s:
            out.append(("127.0.0.1", self.c2s_port))
        if self.has_component:
            out.append(("127.0.0.1", self.component_port))
        return out

    def start(self, timeout: float = 20.0) -> "S2sProsody":
        assert self.proc is None or self.proc.poll() is not None, "prosody already running"
        out = open(self.out_path, "ab")
        self.proc = subprocess.Popen(
            [harness.prosody_bin("prosody"), "--config", str(self.config_path), "-F"],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            cwd=self.dir, start_new_session=True,
        )
        out.close()
        ports = self._ports()

        def ready() -> bool:
            if self.proc.poll() is not None:
                raise HarnessError(
                    f"prosody exited with {self.proc.returncode} during start-up\n"
                    f"--- prosody.out ---\n{tail(self.out_path)}\n--- prosody.log ---\n{tail(self.log_path)}")
            return all(port_open(p, h) for h, p in ports)

        wait_for(ready, timeout, f"prosody to listen on {ports}")
        if "Using legacy DNS API" in self.log_text():
            raise HarnessError("Prosody uses its legacy DNS resolver, which ignores the test's hosts file: "
                               "install the Debian package 'lua-unbound'")
        return self

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is not None:
            harness.stop_process(self.proc, harness.signal.SIGTERM, timeout)
            ports = self._ports()
            wait_for(lambda: not any(port_open(p, h) for h, p in ports), timeout, "prosody's ports to close")

    def describe(self) -> str:
        return (f"prosody {self.vhost} (s2s {self.address}:{S2S_PORT}, c2s {self.c2s_port if self.has_c2s else '-'}, "
                f"component {self.component_port if self.has_component else '-'}) log tail:\n"
                f"{tail(self.out_path, 20)}\n{tail(self.log_path, 80)}")


# --------------------------------------------------------------------------------------
# the two servers and the gateway, torn down together


class Federation:
    """`main` (users) and `edge` (the component) federating; a gateway on edge's component
    port. `main_cert` / `edge_cert` name a leaf of FedCerts (the refusal tests give one
    server a bad certificate)."""

    def __init__(self, root: Path, certs: FedCerts, users: Iterable[str] = ("alice", "bob"),
                 main_cert: str = "main_good", edge_cert: str = "edge_good"):
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.certs = certs
        self.main_address = loopback_address()
        self.edge_address = loopback_address(avoid=(self.main_address,))
        self.hosts_file = write_hosts(self.root / "hosts", {
            MAIN_DOMAIN: self.main_address,
            EDGE_COMPONENT: self.edge_address,
        })
        self.main = S2sProsody(self.root / "main", self.main_address, self.hosts_file, certs[main_cert], certs.ca,
                               vhost=MAIN_DOMAIN)
        self.edge = S2sProsody(self.root / "edge", self.edge_address, self.hosts_file, certs[edge_cert], certs.ca,
                               vhost=EDGE_DOMAIN, c2s=False, component=EDGE_COMPONENT)
        self.gateway: Gateway | None = None
        self.clients: list = []
        try:
            for u in users:
                self.main.register(u)
            self.main.start()
            self.edge.start()
        except BaseException:
            self.close()
            raise

    def dev(self, device_id: str) -> str:
        return f"{device_id}@{EDGE_COMPONENT}"

    def jid(self, user: str) -> str:
        return f"{user}@{MAIN_DOMAIN}"

    def start_gateway(self, devices: list[dict], access: dict, xmpp: dict | None = None) -> Gateway:
        """The gateway on the edge's component port (keep-alive pings to the default
        target, edge.test: the edge's VirtualHost)."""
        g = Gateway(self.root / "gw", self.edge)
        g.write_config(devices, access=access, xmpp=xmpp)
        self.gateway = g
        g.start()
        return g

    def client(self, user: str, cls=None, resource: str = "test"):
        from iot import IotClient

        c = (cls or IotClient)(self.main, user, resource=resource)
        self.clients.append(c)
        c.connect()
        return c

    def close(self) -> None:
        for c in self.clients:
            c.close()
        if self.gateway is not None:
            self.gateway.close()
        self.edge.close()
        self.main.close()


def temp_root(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix))


def remove_root(path: Path) -> None:
    if os.environ.get("FIELDGATE_E2E_KEEP") != "1":
        shutil.rmtree(path, ignore_errors=True)


__all__ = ["EDGE_COMPONENT", "EDGE_DOMAIN", "MAIN_DOMAIN", "FedCerts", "Federation", "S2sProsody", "check_unbound",
           "loopback_address", "remove_root", "sign_leaf", "temp_root"]
