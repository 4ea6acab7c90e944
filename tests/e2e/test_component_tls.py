"""Deployment pattern (b): the gateway reaches ejabberd over the TLS component link.

ejabberd 23.01 with the listener the README gives (`module: ejabberd_service`, `tls: true`,
`certfile`), the certificates from the harness' CA (certs.py: a leaf for localhost and
127.0.0.1, and the bad ones), the gateway with `[xmpp.tls]`. Through the TLS link a user
subscribes to a device and reads it; `server_name` names the certificate of a server
reached by address; and the link is refused, with the reason in the log and never in
plaintext, for a certificate of another CA, for another name, or expired, for a gateway
without TLS on the TLS port, and for a gateway with TLS on a plaintext port. While the
link is refused the device is away for the user: ejabberd answers for it.
"""

from __future__ import annotations

import itertools

import pytest

from harness import Env, sim_device, wait_for
from iot import NS_SD, IotClient, all_fields, brief, by_name, q, req_iq

ACCESS = {"subscribe": ["alice@example.test"], "read": ["alice@example.test"]}
DEVICES = [sim_device("pump1", name="Pump 1")]

_seq = itertools.count(1)


def _ejabberd_module():
    try:
        import ejabberd
    except ImportError as e:  # pragma: no cover - ejabberd.py is in the tree
        pytest.fail(str(e), pytrace=False)
    missing = ejabberd.missing_tools()
    if missing:
        pytest.fail(f"{', '.join(missing)} not found: install the Debian package 'ejabberd' "
                    "(bash tests/run.sh does it)", pytrace=False)
    return ejabberd


def tls_ejabberd(workdir, certfile=None):
    """An ejabberd whose component listener speaks TLS from the first byte with `certfile`
    (a PEM with the certificate and its key), as in README (b); `certfile=None`: the
    harness' plaintext listener."""
    ejabberd = _ejabberd_module()

    class TlsEjabberd(ejabberd.Ejabberd):
        def _write_config(self) -> None:
            super()._write_config()
            if certfile is None:
                return
            text = self.config_path.read_text()
            listener = "    module: ejabberd_service\n"
            assert text.count(listener) == 1, text
            text = text.replace(listener, listener + f'    tls: true\n    certfile: "{certfile}"\n')
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
def tls_env(workdir):
    envs = []

    def make(certfile=None):
        e = tls_ejabberd(workdir, certfile)
        envs.append(e)
        return e

    yield make
    for e in envs:
        e.close()


def tls_gateway(env, **tls):
    g = env.new_gateway()
    g.write_config(DEVICES, access=ACCESS, xmpp={"tls": tls} if tls else None)
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
    and the device is away for the user (ejabberd answers for it)."""
    def matching() -> list[str]:
        return [ln for ln in link_down_reasons(g) if all(w in ln for w in words)]

    wait_for(lambda: len(matching()) >= 2, 10, f"two 'component link down' lines with {words}")
    assert not g.notify.seen("READY=1"), g.log_tail()
    assert "component link up" not in g.log_text(), g.log_tail()
    assert g.running, g.log_tail()
    alice = env.client("alice")
    r = alice.iq(req_iq(env.dev("pump1"), next(_seq), momentary=True))
    # ejabberd's answer for a component that is not connected (README: While the gateway
    # is away): it tries the domain as a remote server, whose look-up fails
    assert (r.type, r.condition) == ("error", "remote-server-not-found"), brief(r.xml)


def test_gateway_reaches_ejabberd_over_tls(tls_env, tls_certs):
    env = tls_env(tls_certs.server.bundle)
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


def test_server_name_names_the_certificate_of_a_server_reached_by_address(tls_env, tls_certs):
    # the leaf carries only DNS:wrong.example; the gateway connects to 127.0.0.1
    env = tls_env(tls_certs.wrong_host.bundle)
    g = tls_gateway(env, ca_file=str(tls_certs.ca_cert), server_name="wrong.example")
    g.start()
    alice = env.client("alice")
    r = alice.ping(env.dev("pump1"))
    assert r.ok, brief(r.xml)


@pytest.mark.parametrize("leaf, words", [
    ("untrusted", ("not signed by a trusted CA",)),
    ("wrong_host", ("not valid for the name", "127.0.0.1", "wrong.example", "server_name")),
    ("expired", ("has expired", "valid until")),
])
def test_a_bad_server_certificate_refuses_the_link(tls_env, tls_certs, leaf, words):
    env = tls_env(getattr(tls_certs, leaf).bundle)
    g = tls_gateway(env, ca_file=str(tls_certs.ca_cert))
    g.start(wait_ready=False)
    assert_refused(env, g, "TLS", *words)


def test_a_gateway_without_tls_on_the_tls_port_never_speaks_plaintext(tls_env, tls_certs):
    env = tls_env(tls_certs.server.bundle)
    g = tls_gateway(env)
    g.start(wait_ready=False)
    assert_refused(env, g, "no stream", "set tls in [xmpp]")


def test_a_gateway_with_tls_on_a_plaintext_port_is_refused(tls_env, tls_certs):
    env = tls_env(None)
    g = tls_gateway(env, ca_file=str(tls_certs.ca_cert))
    g.start(wait_ready=False)
    assert_refused(env, g, "does not speak TLS on this port")
