"""Helpers for the IoT end-to-end tests (XEP-0323 sensor data, XEP-0325 control, IoT events):
a module-scoped environment, an ordered recorder of the IoT stanzas a client receives,
request builders and parsers of `<fields>`, `<failure>`, iq errors and control forms.

Additive to harness.py: nothing here changes the harness' behaviour.
"""

from __future__ import annotations

import copy
import math
import os
import shutil
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable

from harness import (NS_CLIENT, Env, HarnessError, IqReply, XmppClient, gateway_toml,
                     make_env)

NS_SD = "urn:xmpp:iot:sensordata"
NS_CTL = "urn:xmpp:iot:control"
NS_EV = "urn:xmpp:iot:events"
NS_XDATA = "jabber:x:data"
NS_XDV = "http://jabber.org/protocol/xdata-validate"
NS_XDD = "urn:xmpp:xdata:dynamic"

SD_PAYLOADS = ("accepted", "started", "fields", "failure", "done", "cancelled")
FIELD_TAGS = ("numeric", "boolean", "date", "dateTime", "duration", "enum", "int", "long", "string", "time")


def q(ns: str, name: str) -> str:
    return f"{{{ns}}}{name}"


# --------------------------------------------------------------------------------------
# a module-scoped XMPP server + gateway


def extra_sections(sections: dict[str, dict] | None) -> str:
    """`[readout]` / `[events]` tables appended after the devices (valid TOML: a new
    top-level table may follow array-of-tables entries)."""
    from harness import toml_value

    out = []
    for name, values in (sections or {}).items():
        out += ["", f"[{name}]"] + [f"{k} = {toml_value(v)}" for k, v in values.items()]
    return "\n".join(out) + "\n"


class ModuleEnv:
    """An XMPP server (`server`: "prosody" or "ejabberd") + users + one gateway for a whole
    test module (tests that do not disturb each other share it); torn down by `close()`."""

    def __init__(self, devices: list[dict], access: dict, users: Iterable[str] = ("alice", "bob", "carol"),
                 sections: dict[str, dict] | None = None, xmpp: dict | None = None, server: str = "prosody"):
        self.root = Path(tempfile.mkdtemp(prefix="fg-iot-"))
        self.env: Env = make_env(self.root, users=users, server=server)
        try:
            gw = self.env.new_gateway()
            text = gateway_toml(self.env.server, gw.state_dir, devices, access, xmpp) + extra_sections(sections)
            gw.write_raw_config(text)
            gw.start()
        except BaseException:
            self.close()
            raise
        self._clients: dict[tuple[str, str], XmppClient] = {}

    @property
    def gw(self):
        return self.env.gateway

    def dev(self, device_id: str) -> str:
        return self.env.dev(device_id)

    def full(self, device_id: str) -> str:
        return f"{self.env.dev(device_id)}/gw"

    def client(self, user: str, resource: str = "test", plugins: Iterable[str] = ()) -> "IotClient":
        """A connected client (cached per user/resource for the module; reconnected if it was
        disconnected by a test)."""
        key = (user, resource)
        c = self._clients.get(key)
        if c is None:
            c = IotClient(self.env.server, user, resource=resource)
            self.env.clients.append(c)
            self._clients[key] = c
        if c.xmpp is None:
            c.connect()
        for p in plugins:
            c.ensure_plugin(p)
        return c

    def fresh_client(self, user: str, resource: str) -> "IotClient":
        """A new connected client not cached (for tests that disconnect it)."""
        c = IotClient(self.env.server, user, resource=resource)
        self.env.clients.append(c)
        c.connect()
        return c

    def assert_alive(self) -> None:
        gw = self.gw
        assert gw.running, f"gateway died\n{gw.log_tail()}"
        log = gw.log_text()
        assert "panicked" not in log, f"panic in the gateway log\n{gw.log_tail()}"

    def close(self) -> None:
        try:
            self.env.close()
        finally:
            if os.environ.get("FIELDGATE_E2E_KEEP") != "1":
                shutil.rmtree(self.root, ignore_errors=True)


# --------------------------------------------------------------------------------------
# a client that records every iq and message in arrival order


class IotClient(XmppClient):
    """XmppClient plus an ordered log of every iq and message received (deep copies),
    so the order of an iq result and the messages around it can be checked."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.stanzas: list[ET.Element] = []
        self.arrivals: list[float] = []  # time.monotonic() at which each of `stanzas` arrived
        self._plugins: set[str] = set()

    def _make(self):
        from slixmpp.xmlstream.handler import Callback
        from slixmpp.xmlstream.matcher import MatchXPath

        x = super()._make()
        self._plugins = set()

        def record(st):
            with self.cond:
                self.stanzas.append(copy.deepcopy(st.xml))
                self.arrivals.append(time.monotonic())
                self.cond.notify_all()

        x.register_handler(Callback("iot recorder iq", MatchXPath(f"{{{NS_CLIENT}}}iq"), record))
        x.register_handler(Callback("iot recorder message", MatchXPath(f"{{{NS_CLIENT}}}message"), record))
        return x

    def ensure_plugin(self, name: str) -> None:
        if name in self._plugins:
            return
        self.lt.call(lambda: self.xmpp.register_plugin(name))
        self._plugins.add(name)

    def mark_stanzas(self) -> int:
        with self.cond:
            return len(self.stanzas)

    def stanzas_since(self, mark: int) -> list[ET.Element]:
        with self.cond:
            return list(self.stanzas[mark:])

    def timed_since(self, mark: int) -> list[tuple[float, ET.Element]]:
        """(arrival time, stanza) of everything received after `mark`."""
        with self.cond:
            return list(zip(self.arrivals[mark:], self.stanzas[mark:]))

    def wait_stanza(self, pred: Callable[[ET.Element], bool], since: int = 0, timeout: float = 10.0,
                    what: str = "a matching stanza") -> ET.Element:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for s in self.stanzas[since:]:
                    if pred(s):
                        return s
                left = deadline - time.monotonic()
                if left <= 0:
                    got = [brief(s) for s in self.stanzas[since:]][-15:]
                    raise HarnessError(f"{self.jid}: no {what} within {timeout}s; last received: {got}")
                self.cond.wait(left)

    # -- IoT payloads received

    def sd_payloads(self, seqnr: int | str, since: int = 0, frm: str | None = None) -> list[ET.Element]:
        """The XEP-0323 payloads (accepted in iq results, started/fields/failure/done in
        messages) carrying `seqnr`, in arrival order."""
        out = []
        for s in self.stanzas_since(since):
            if frm is not None and s.get("from", "").split("/")[0] != frm.split("/")[0]:
                continue
            for child in s:
                if child.tag.startswith(f"{{{NS_SD}}}") and child.get("seqnr") == str(seqnr):
                    out.append(child)
        return out

    def wait_readout_end(self, seqnr: int | str, since: int = 0, timeout: float = 10.0) -> list[ET.Element]:
        """Waits for the message ending readout `seqnr` (`done='true'` on fields/failure, or
        `<done/>`); returns every message payload of the readout (not the iq result)."""

        def ended(s: ET.Element) -> bool:
            for c in s:
                if c.get("seqnr") != str(seqnr) or not c.tag.startswith(f"{{{NS_SD}}}"):
                    continue
                if c.tag == q(NS_SD, "done") or (c.tag in (q(NS_SD, "fields"), q(NS_SD, "failure"))
                                                 and c.get("done") == "true"):
                    return True
            return False

        self.wait_stanza(lambda s: s.tag == q(NS_CLIENT, "message") and ended(s), since, timeout,
                         f"end of readout {seqnr}")
        return [p for s in self.stanzas_since(since) if s.tag == q(NS_CLIENT, "message")
                for p in s if p.tag.startswith(f"{{{NS_SD}}}") and p.get("seqnr") == str(seqnr)]


class quiet_plugin_iq_errors:
    """slixmpp's xep_0325 `set_request` sends its iq and drops the future; an error reply
    (which the plugin does handle, through its callback) then ends up as "Future exception
    was never retrieved" on stderr. Within this context, those IqErrors are not reported
    (everything else goes to the loop's previous handler)."""

    def __init__(self, lt):
        self.lt = lt
        self.previous = None

    def __enter__(self):
        from slixmpp.exceptions import IqError

        loop = self.lt.loop
        self.previous = loop.get_exception_handler()

        def handler(lp, context):
            if isinstance(context.get("exception"), IqError):
                return
            if self.previous is not None:
                self.previous(lp, context)
            else:
                lp.default_exception_handler(context)

        loop.call_soon_threadsafe(loop.set_exception_handler, handler)
        return self

    def __exit__(self, *exc):
        import gc

        gc.collect()  # the dropped futures sit in reference cycles: report them now, while quiet
        loop = self.lt.loop
        loop.call_soon_threadsafe(loop.set_exception_handler, self.previous)
        return False


def assert_accepted_first(c, mk, iq_id, seqnr) -> None:
    """The iq result carrying <accepted> (iq `iq_id`) arrived before any message carrying
    a payload of `seqnr` (readout values or events), among the stanzas since mark `mk`."""
    order = []
    for s in c.stanzas_since(mk):
        if s.tag == q(NS_CLIENT, "iq") and s.get("id") == iq_id:
            order.append("accepted")
        elif s.tag == q(NS_CLIENT, "message") and any(p.get("seqnr") == str(seqnr) for p in s):
            order.append("message")
    assert order and order[0] == "accepted", f"{seqnr}: messages before the iq result: {order}"


def brief(el: ET.Element) -> str:
    s = ET.tostring(el, encoding="unicode")
    return s if len(s) < 400 else s[:400] + "..."


# --------------------------------------------------------------------------------------
# request builders


def attrs(**kw) -> str:
    out = []
    for k, v in kw.items():
        if v is None:
            continue
        if isinstance(v, bool):
            v = "true" if v else "false"
        out.append(f" {k}='{v}'")
    return "".join(out)


def req_iq(to: str, seqnr, fields: Iterable[str] = (), nodes: Iterable[str] = (), iq_id: str | None = None,
           **flags) -> str:
    inner = "".join(f"<node nodeId='{n}'/>" for n in nodes) + "".join(f"<field name='{f}'/>" for f in fields)
    idattr = f" id='{iq_id}'" if iq_id else ""
    return (f"<iq type='get' to='{to}'{idattr}><req xmlns='{NS_SD}'{attrs(seqnr=seqnr, **flags)}>"
            f"{inner}</req></iq>")


def cancel_iq(to: str, seqnr) -> str:
    return f"<iq type='get' to='{to}'><cancel xmlns='{NS_SD}' seqnr='{seqnr}'/></iq>"


def set_iq(to: str, params: Iterable[tuple[str, str, str]] = (), form: dict[str, str] | None = None,
           nodes: Iterable[str] = ()) -> str:
    return f"<iq type='set' to='{to}'>{set_payload(params, form, nodes)}</iq>"


def set_payload(params: Iterable[tuple[str, str, str]] = (), form: dict[str, str] | None = None,
                nodes: Iterable[str] = ()) -> str:
    """`<set>` with typed parameters (element, name, value) and/or a submitted form."""
    inner = "".join(f"<node nodeId='{n}'/>" for n in nodes)
    inner += "".join(f"<{t} name='{n}' value='{v}'/>" for t, n, v in params)
    if form is not None:
        inner += f"<x xmlns='{NS_XDATA}' type='submit'>"
        inner += "".join(f"<field var='{k}'><value>{v}</value></field>" for k, v in form.items())
        inner += "</x>"
    return f"<set xmlns='{NS_CTL}'>{inner}</set>"


def subscribe_iq(to: str, seqnr, fields: Iterable[dict] = (), **kw) -> str:
    inner = "".join(f"<field{attrs(**f)}/>" for f in fields)
    return f"<iq type='get' to='{to}'><subscribe xmlns='{NS_EV}'{attrs(seqnr=seqnr, **kw)}>{inner}</subscribe></iq>"


def unsubscribe_iq(to: str, seqnr) -> str:
    return f"<iq type='get' to='{to}'><unsubscribe xmlns='{NS_EV}' seqnr='{seqnr}'/></iq>"


# --------------------------------------------------------------------------------------
# time


def iso(t: float) -> str:
    """xs:dateTime in UTC with milliseconds, for `when`."""
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def parse_iso(s: str) -> float:
    s = s.strip()
    if s.endswith("Z"):
        s = s[:-1] + "+00:00"
    return datetime.fromisoformat(s).timestamp()


# --------------------------------------------------------------------------------------
# parsed payloads


@dataclass
class Fld:
    """One XEP-0323 field as received."""
    tag: str  # numeric, boolean, int, ...
    name: str
    value: str
    attrs: dict
    node: str
    timestamp: str

    def flag(self, name: str) -> bool:
        return self.attrs.get(name) == "true"

    @property
    def flags(self) -> set[str]:
        return {k for k, v in self.attrs.items() if v == "true"}


def fields_of(payload: ET.Element) -> list[Fld]:
    """Every field of a `<fields>` payload, in document order."""
    out = []
    for node in payload.findall(q(NS_SD, "node")):
        for ts in node.findall(q(NS_SD, "timestamp")):
            for f in ts:
                tag = f.tag.split("}", 1)[1]
                out.append(Fld(tag, f.get("name", ""), f.get("value", ""), dict(f.attrib),
                               node.get("nodeId", ""), ts.get("value", "")))
    return out


def all_fields(payloads: Iterable[ET.Element]) -> list[Fld]:
    out = []
    for p in payloads:
        if p.tag == q(NS_SD, "fields"):
            out += fields_of(p)
    return out


def by_name(fields: Iterable[Fld]) -> dict[str, Fld]:
    out = {}
    for f in fields:
        assert f.name not in out, f"field {f.name} reported twice"
        out[f.name] = f
    return out


def kinds(payloads: Iterable[ET.Element]) -> list[str]:
    return [p.tag.split("}", 1)[1] for p in payloads]


def failure_texts(payloads: Iterable[ET.Element]) -> list[str]:
    out = []
    for p in payloads:
        if p.tag == q(NS_SD, "failure"):
            out += [(e.text or "") for e in p.findall(q(NS_SD, "error"))]
    return out


def error_el(reply: IqReply) -> ET.Element:
    err = reply.xml.find(q(NS_CLIENT, "error"))
    assert err is not None, f"no <error/> in {brief(reply.xml)}"
    return err


def param_errors(reply: IqReply) -> dict[str, str]:
    """`{var: text}` of the `<paramError/>` elements inside the iq `<error/>`."""
    return {p.get("var", ""): (p.text or "") for p in error_el(reply).findall(q(NS_CTL, "paramError"))}


def set_response_code(reply: IqReply) -> str | None:
    """`responseCode` of the `<setResponse/>` payload (beside the error in an iq error)."""
    sr = reply.xml.find(q(NS_CTL, "setResponse"))
    return None if sr is None else sr.get("responseCode")


def expect_error(reply: IqReply, condition: str, error_type: str | None = None,
                 text_contains: Iterable[str] = ()) -> IqReply:
    assert reply.type == "error", f"expected an error {condition}, got {brief(reply.xml)}"
    assert reply.condition == condition, f"expected {condition}, got {reply.condition}: {brief(reply.xml)}"
    if error_type is not None:
        assert reply.error_type == error_type, f"expected error type {error_type}: {brief(reply.xml)}"
    for t in text_contains:
        assert t.lower() in (reply.text or "").lower(), f"error text {reply.text!r} lacks {t!r}"
    return reply


# --------------------------------------------------------------------------------------
# the sim's functions of time (adapters/sim): what a device must have reported at t


def sine_at(t: float, period: float, amplitude: float, offset: float) -> float:
    phase = (t % period) / period
    return offset + amplitude * math.sin(2 * math.pi * phase)


def counter_at(t: float, start: int, step: int, every: float) -> int:
    return start + step * int(t // every)
