"""fieldgate demo: a real Prosody, the gateway with three simulated devices, and a slixmpp
client that looks at them. Run through `bash tests/demo.sh` (which builds and installs
what is needed); prints a transcript and exits 0 when everything behaved."""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "e2e"))

import harness as h  # noqa: E402

NS_CONTROL = "urn:xmpp:iot:control"
NS_SENSORDATA = "urn:xmpp:iot:sensordata"
DEVICES = ["pump1", "meter1", "valve3"]


def say(who: str, text: str) -> None:
    print(f"  {who:<8} {text}", flush=True)


def section(title: str) -> None:
    print(f"\n== {title}", flush=True)


def show_presence(p: h.Pres) -> str:
    if p.type == "available":
        caps = f"  [caps {p.caps.get('ver')}]" if p.caps else "  [no caps!]"
        return f"{p.frm:<28} available{caps}"
    if p.type == "unavailable":
        return f"{p.frm:<28} unavailable: {p.status or '(no reason given)'}"
    return f"{p.frm:<28} {p.type}"


def readout(client: h.XmppClient, jid: str, seqnr: int = 1) -> None:
    """A momentary XEP-0323 readout, if the device advertises sensor data."""
    since = len(client.messages)
    r = client.iq(f"<iq type='get' to='{jid}'><req xmlns='{NS_SENSORDATA}' seqnr='{seqnr}' momentary='true'/></iq>")
    if not r.ok:
        say("gateway", f"readout refused: {r.condition}")
        return

    def fields_done(m: ET.Element) -> bool:
        f = m.find(f"{{{NS_SENSORDATA}}}fields")
        return m.get("from", "").startswith(jid) and f is not None and f.get("done") == "true"

    msg = client.wait_message(fields_done, since, timeout=10)
    for el in msg.iter():
        if el.tag.startswith(f"{{{NS_SENSORDATA}}}") and el.get("name") and el.get("value") is not None:
            unit = f" {el.get('unit')}" if el.get("unit") else ""
            kind = el.tag.split("}", 1)[1]
            say("", f"  {el.get('name'):<10} = {el.get('value')}{unit}   ({kind})")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (logs, configs)")
    args = ap.parse_args()

    binary = h.gateway_bin()
    root = Path(tempfile.mkdtemp(prefix="fieldgate-demo-"))
    ok = False
    env = None
    try:
        section("starting a private Prosody")
        env = h.make_env(root, users=("demo",), log_level="info")
        pro = env.prosody
        say("prosody", f"c2s on 127.0.0.1:{pro.c2s_port}, component port 127.0.0.1:{pro.component_port}, "
                       f"virtual host {pro.vhost}, component {pro.component}")
        say("prosody", f"registered user {pro.jid('demo')}")

        section("starting fieldgate")
        gw = env.new_gateway()
        config = (HERE / "fieldgate.toml").read_text()
        for key, value in {
            "@SERVER@": f"127.0.0.1:{pro.component_port}",
            "@DOMAIN@": pro.component,
            "@SECRET@": pro.secret,
            "@USER@": pro.jid("demo"),
            "@STATE_DIR@": str(gw.state_dir),
        }.items():
            config = config.replace(key, value)
        gw.write_raw_config(config)
        check = gw.run_cli("check", "--config", str(gw.config_path))
        for line in check.stdout.strip().splitlines():
            say("check", line)
        if check.returncode != 0:
            raise SystemExit(f"fieldgate check refused the demo config:\n{check.stderr}")
        t0 = time.monotonic()
        gw.start()
        shown = binary.relative_to(h.REPO_ROOT) if binary.is_relative_to(h.REPO_ROOT) else binary
        say("gateway", f"{shown} pid {gw.pid}: component link up after {time.monotonic() - t0:.2f}s")

        section(f"client {pro.jid('demo')} subscribes to the devices")
        client = env.client("demo")
        say("client", f"logged in as {client.full_jid}")
        jids = [env.dev(d) for d in DEVICES]
        mark = client.mark()
        for jid in jids:
            say("client", f"-> subscribe {jid}")
            client.subscribe(jid)
        client.wait_all(jids, "subscribed", mark)
        seen = client.wait_all(jids, ("available", "unavailable"), mark)
        for p in client.presences_since(mark):
            if p.bare in jids:
                say("device", "<- " + show_presence(p))
        expected = {"pump1": "available", "meter1": "available", "valve3": "unavailable"}
        for dev, want in expected.items():
            got = seen[env.dev(dev)].type
            if got != want:
                raise SystemExit(f"{dev}: expected {want} presence, got {got}")

        section(f"service discovery on {pro.component}")
        info = h.parse_disco_info(client.disco_info(pro.component))
        for cat, typ, name in info.identities:
            say("gateway", f"identity {cat}/{typ} {name!r}")
        items = h.parse_disco_items(client.disco_items(pro.component))
        say("gateway", f"disco#items: {', '.join(items)}")

        pump = env.dev("pump1")
        section(f"a closer look at {pump}")
        info = h.parse_disco_info(client.disco_info(pump))
        for cat, typ, name in info.identities:
            say("pump1", f"identity {cat}/{typ} {name!r}")
        for feature in sorted(info.features):
            say("pump1", f"feature  {feature}")
        v = client.plugin_version(pump)
        say("pump1", f"version  {v.get('name')} {v.get('version')} ({v.get('os', '-')})")
        t = time.monotonic()
        r = client.ping(pump)
        say("pump1", f"ping     {'pong' if r.ok else r.condition} in {1000 * (time.monotonic() - t):.1f} ms")
        if NS_SENSORDATA in info.features:
            say("pump1", "sensor data (XEP-0323 momentary readout):")
            readout(client, pump)
        if NS_CONTROL in info.features:
            r = client.iq(f"<iq type='set' to='{pump}'><set xmlns='{NS_CONTROL}'>"
                          "<double name='setpoint' value='6.5'/></set></iq>")
            say("client", f"set setpoint = 6.5 (XEP-0325) -> {'setResponse OK' if r.ok else r.condition}")
            r = client.iq(f"<iq type='set' to='{pump}'><set xmlns='{NS_CONTROL}'>"
                          "<double name='setpoint' value='99'/></set></iq>")
            say("client", f"set setpoint = 99 -> {r.type} {r.condition}: {r.text}")
            say("pump1", "sensor data after the write:")
            readout(client, pump, seqnr=2)
        r = client.ping(env.dev("nosuch"))
        say("client", f"ping nosuch@{pro.component} -> {r.type} {r.condition}")

        section("stopping fieldgate (SIGTERM)")
        mark = client.mark()
        code, took = gw.stop(signal.SIGTERM)
        say("gateway", f"exited with code {code} after {took:.2f}s")
        gone = client.wait_all(jids, "unavailable", mark, timeout=5)
        for jid in jids:
            say("device", "<- " + show_presence(gone[jid]))
        if code != 0:
            raise SystemExit(f"fieldgate exited with {code}")
        client.disconnect()
        ok = True
    finally:
        if env is not None:
            if not ok and env.gateway is not None:
                print(env.gateway.log_tail(40), file=sys.stderr)
            env.close()
        h.loop_thread().close()
        if args.keep:
            print(f"\n(kept {root})")
        else:
            shutil.rmtree(root, ignore_errors=True)
    section("done: Prosody stopped, temp dir removed" if not args.keep else "done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
