"""Deployment pattern (b): the gateway reaches its XMPP server over the TLS component link.

On both servers, with the certificates from the harness' CA (certs.py: a leaf for
localhost and 127.0.0.1, and the bad ones) and the gateway's `[xmpp.tls]`:

- ejabberd 23.01 with the listener the README gives (`module: ejabberd_service`,
  `tls: true`, `certfile`);
- Prosody 0.12 with `mod_net_multiplex` and `ssl_ports`: a direct-TLS port on which Prosody
  routes each stream by its namespace, a component's (`jabber:component:accept`) to
  mod_component (Prosody has no TLS option on `component_ports` itself); the certificate
  where Prosody looks for a host's, the gateway's `server_name` the component domain.

Through the TLS link a user subscribes to a device and reads it; `server_name` names the
certificate of a server reached by address; and the link is refused, with the reason in
the log and never in plaintext, for a certificate of another CA, for another name, or
expired, for a gateway without TLS on the TLS port, and for a gateway with TLS on a
plaintext port, and on Prosody for a server name it does not serve. While the link is
refused the device is away for the user: the server answers for it, each in its own way
(README: While the gateway is away).
"""

from __future__ import annotations

import itertools
import shutil

import pytest

from federation import sign_leaf
from harness import COMPONENT, VHOST, Env, Prosody, free_port, port_open, sim_device, wait_for
from iot import NS_SD, IotClient, all_fields, brief, by_name, q, req_iq

pytestmark = pytest.mark.servers("prosody", "ejabberd")

ACCESS = {"subscribe": ["alice@example.test"], "read": ["alice@example.test"]}
DEVICES = [sim_device("pump1", name="Pump 1")]
# what each server answers for a component that is not connected
AWAY = {"prosody": "remote-server-timeout", "ejabberd": "remote-server-not-found"}

_seq = itertools.count(1)


def _ejabberd_module():
    import ejabberd

    missing = ejabberd.missing_tools()
    if missing:
        pytest.fail(f"{', '.join(missing)} not found: install the Debian package 'ejabberd' "
                    "(bash tests/run.sh does it)", pytrace=False)
    return ejabberd


class TlsProsody(Prosody):
    """The harness' Prosody plus a direct-TLS port (`ssl_ports`, mod_net_multiplex) on which
    the component connects (`link_port`). `leaf` goes where Prosody looks for a host's
    certificate, `certs/<name>.crt` and `.key` beside the config (Debian: /etc/prosody/certs),
    as the certificate of host `name` (the component domain unless said otherwise); no `ssl`
    option. `leaf=None`: the plaintext component port only."""

    def __init__(self, workdir, leaf, name: str = COMPONENT):
        self.leaf = leaf
        self.cert_name = name
        self.tls_port = free_port()
        super().__init__(workdir)
        while self.tls_port in (self.c2s_port, self.component_port):
            self.tls_port = free_port()
            self._write_config()

    @property
    def link_port(self) -> int:
        return self.component_port if self.leaf is None else self.tls_port

    def _write_config(self) -> None:
        super()._write_config()
        if self.leaf is None:
            return
        certs = self.dir / "certs"
        certs.mkdir(exist_ok=True)
        shutil.copyfile(self.leaf.cert, certs / f"{self.cert_name}.crt")
        shutil.copyfile(self.leaf.key, certs / f"{self.cert_name}.key")
        text = self.config_path.read_text()
        modules = "modules_enabled = { "
        host = '\nVirtualHost "'
        assert text.count(modules) == 1 and text.count(host) == 1, text
        text = text.replace(modules, modules + '"net_multiplex"; ')
        text = text.replace(host, (
            "\n-- direct TLS; mod_net_multiplex routes a component's stream to mod_component\n"
            f"ssl_ports = {{ {self.tls_port} }}\n"
            'ssl_interfaces = { "127.0.0.1" }\n') + host)
        self.config_path.write_text(text)

    def start(self, timeout: float = 20.0) -> "TlsProsody":
        super().start(timeout)
        wait_for(lambda: port_open(self.link_port), timeout, f"prosody to listen on :{self.link_port}")
        return self


def tls_server(kind: str, workdir, leaf, name: str = COMPONENT):
    """A started server whose component link speaks TLS from the first byte with `leaf`
    (certs.Leaf) as in README (b); `leaf=None`: the harness' plaintext component port.
    Prosody holds `leaf` as the certificate of host `name`."""
    if kind == "prosody":
        srv = TlsProsody(workdir / "prosody", leaf, name)
    else:
        ejabberd = _ejabberd_module()

        class TlsEjabberd(ejabberd.Ejabberd):
            link_port = property(lambda self: self.component_port)

            def _write_config(self) -> None:
                super()._write_config()
                if leaf is None:
                    return
                text = self.config_path.read_text()
                listener = "    module: ejabberd_service\n"
                assert text.count(listener) == 1, text
                text = text.replace(listener, listener + f'    tls: true\n    certfile: "{leaf.bundle}"\n')
                self.config_path.write_text(text)

        srv = TlsEjabberd(workdir / "ejabberd")
    env = Env(root=workdir, server=srv)
    try:
        srv.register("alice")
        srv.start()
    except BaseException:
        env.close()
        raise
    return env


@pytest.fixture
def tls_env(workdir, xmpp_server):
    envs = []

    def make(leaf, name: str = COMPONENT):
        e = tls_server(xmpp_server, workdir, leaf, name)
        envs.append(e)
        return e

    yield make
    for e in envs:
        e.close()


def good_leaf(certs, server: str):
    """A certificate the gateway accepts: for localhost and 127.0.0.1 (ejabberd, reached by
    address), for the component domain (Prosody, reached by that name)."""
    return certs.server if server == "ejabberd" else sign_leaf(certs, "component", (COMPONENT,))


def tls_gateway(env, **tls):
    """The gateway on the server's link port (by address). With TLS on Prosody, the name it
    checks and sends is the component domain unless `server_name` says otherwise: Prosody
    needs a name it serves (strict SNI)."""
    g = env.new_gateway()
    xmpp = {"server": f"127.0.0.1:{env.server.link_port}"}
    if tls:
        if env.server.name == "prosody":
            tls.setdefault("server_name", COMPONENT)
        xmpp["tls"] = {k: v for k, v in tls.items() if v is not None}
    g.write_config(DEVICES, access=ACCESS, xmpp=xmpp)
    return g


def readout(c, dev):
    seqnr = next(_seq)
    mk = c.mark_stanzas()
    r = c.iq(req_iq(dev, seqnr, momentary=True))
    assert r.ok, f"readout refused: {r.condition} {r.text}\n{brief(r.xml)}"
    assert r.payload() is not None and r.payload().tag == q(NS_SD, "accepted"), brief(r.xml)
    return by_name(all_fields(c.wait_readout_end(seqnr, mk)))


def link_down_reasons(g) -> list[str]:
    return [line for line in g.log_text().splitlines() if "component link down" in line]


def assert_refused(env, g, *words: str) -> None:
    """The gateway logs "component link down" lines holding every one of `words` (the first
    attempt and a retry after the back-off: refused again, the same way), never comes up,
    and the device is away for the user (the server answers for it)."""
    def matching() -> list[str]:
        return [ln for ln in link_down_reasons(g) if all(w in ln for w in words)]

    wait_for(lambda: len(matching()) >= 2, 10, f"two 'component link down' lines with {words}")
    assert not g.notify.seen("READY=1"), g.log_tail()
    assert "component link up" not in g.log_text(), g.log_tail()
    assert g.running, g.log_tail()
    alice = env.client("alice")
    r = alice.iq(req_iq(env.dev("pump1"), next(_seq), momentary=True))
    # the server's answer for a component that is not connected
    assert (r.type, r.condition) == ("error", AWAY[env.server.name]), brief(r.xml)


def test_gateway_reaches_the_server_over_tls(tls_env, tls_certs, xmpp_server):
    env = tls_env(good_leaf(tls_certs, xmpp_server))
    g = tls_gateway(env, ca_file=str(tls_certs.ca_cert))
    g.start()
    assert "component link up" in g.log_text()
    alice = IotClient(env.server, "alice")
    env.clients.append(alice)
    alice.connect()
    pump = env.dev("pump1")
    m = alice.mark()
    alice.subscribe(pump)
    alice.wait_presence(pump, "available", m)
    assert "pressure" in readout(alice, pump)


def test_server_name_names_the_certificate_of_a_server_reached_by_address(tls_env, tls_certs, xmpp_server):
    """The gateway connects to 127.0.0.1 and checks the certificate for `server_name`,
    which it also sends (SNI). ejabberd presents the listener's certificate for a name it
    does not know; Prosody presents the certificate of the host so named: here its
    VirtualHost's, to show that any name it serves will do."""
    if xmpp_server == "ejabberd":
        env = tls_env(tls_certs.wrong_host)  # carries only DNS:wrong.example
        name = "wrong.example"
    else:
        name = VHOST
        env = tls_env(sign_leaf(tls_certs, "vhost", (VHOST,)), name=VHOST)
    g = tls_gateway(env, ca_file=str(tls_certs.ca_cert), server_name=name)
    g.start()
    alice = env.client("alice")
    r = alice.ping(env.dev("pump1"))
    assert r.ok, brief(r.xml)


@pytest.mark.parametrize("server_name, words", [
    ("wrong.example", ("does not serve the name", "wrong.example", "UnrecognisedName", "set server_name")),
    # by address and no name sent: Prosody presents a host's certificate, which does not
    # carry the address the gateway then checks
    (None, ("not valid for the name", '"127.0.0.1"', COMPONENT, "set server_name")),
])
def test_prosody_needs_a_name_it_serves(workdir, tls_certs, server_name, words):
    """Prosody's direct-TLS port aborts the handshake for a server name (SNI) that is none
    of its hosts; without a name, the gateway checks the address it connected to, which
    Prosody's host certificates do not carry: either way the link stays down, with a log
    line that points to server_name."""
    env = tls_server("prosody", workdir, good_leaf(tls_certs, "prosody"))
    try:
        g = env.new_gateway()
        tls = {"ca_file": str(tls_certs.ca_cert)} | ({"server_name": server_name} if server_name else {})
        g.write_config(DEVICES, access=ACCESS, xmpp={"server": f"127.0.0.1:{env.server.link_port}", "tls": tls})
        g.start(wait_ready=False)
        assert_refused(env, g, "TLS", *words)
    finally:
        env.close()


@pytest.mark.parametrize("leaf, words", [
    ("untrusted", ("not signed by a trusted CA",)),
    ("wrong_host", ("not valid for the name", "wrong.example", "server_name")),
    ("expired", ("has expired", "valid until")),
])
def test_a_bad_server_certificate_refuses_the_link(tls_env, tls_certs, leaf, words):
    env = tls_env(getattr(tls_certs, leaf))
    g = tls_gateway(env, ca_file=str(tls_certs.ca_cert))
    g.start(wait_ready=False)
    # the name checked: the address connected to (ejabberd), the component domain (Prosody)
    checked = "127.0.0.1" if env.server.name == "ejabberd" else COMPONENT
    assert_refused(env, g, "TLS", *words, *((f'"{checked}"',) if leaf == "wrong_host" else ()))


def test_a_gateway_without_tls_on_the_tls_port_never_speaks_plaintext(tls_env, tls_certs, xmpp_server):
    env = tls_env(good_leaf(tls_certs, xmpp_server))
    g = tls_gateway(env)
    g.start(wait_ready=False)
    assert_refused(env, g, "no stream", "set tls in [xmpp]")


def test_a_gateway_with_tls_on_a_plaintext_port_is_refused(tls_env, tls_certs):
    env = tls_env(None)
    g = tls_gateway(env, ca_file=str(tls_certs.ca_cert))
    g.start(wait_ready=False)
    assert_refused(env, g, "does not speak TLS on this port")
