"""XEP-0325 control through a real XMPP server (Prosody and ejabberd): iq and message `set` with typed parameters and
with a submitted data form, `getForm`, the all-or-nothing rule, paramError, the access
rights, and slixmpp's own xep_0325 plugin as an independent client (it expects
<setResponse responseCode='OK'/> and, on error, a <setResponse responseCode=.../> beside
the RFC 6120 error).

One server + gateway serves the module (per server); each test writes the values it later checks.
"""

from __future__ import annotations

import itertools
import threading
import time

import pytest

from harness import NS_CLIENT, sim_device, wait_for
from iot import (NS_CTL, NS_SD, NS_XDATA, NS_XDD, NS_XDV, ModuleEnv, all_fields, brief, expect_error,
                 param_errors, q, quiet_plugin_iq_errors, req_iq, set_iq, set_payload, set_response_code)

pytestmark = pytest.mark.servers("prosody", "ejabberd")

ALICE, BOB, CAROL = (f"{u}@example.test" for u in ("alice", "bob", "carol"))

# alice: control; bob: read, no control; carol: subscribe only; dave: nothing
ACCESS = {"subscribe": [ALICE, BOB, CAROL], "read": [ALICE, BOB], "control": [ALICE]}

PUMP_FIELDS = [
    {"name": "pressure", "type": "double", "unit": "bar", "decimals": 2,
     "sim": {"kind": "sine", "period": "60s", "amplitude": 1.5, "offset": 4.0}},
    {"name": "setpoint", "type": "double", "unit": "bar", "decimals": 1, "writable": True, "min": 0.0, "max": 10.0},
    {"name": "running", "type": "bool", "writable": True},
    {"name": "mode", "type": "enum", "values": ["auto", "manual", "off"], "writable": True},
    {"name": "count", "type": "int", "writable": True, "min": -5, "max": 5},
    {"name": "total", "type": "long", "unit": "Wh", "writable": True},
    {"name": "label", "type": "string", "writable": True},
    {"name": "installed", "type": "timestamp", "writable": True},
]
WRITABLE = ["setpoint", "running", "mode", "count", "total", "label", "installed"]

DEVICES = [
    sim_device("pump1", name="Pump 1", fields=PUMP_FIELDS),
    sim_device("dead", name="Dead pump", sim={"unreachable": "cable cut"}, fields=[
        {"name": "setpoint", "type": "double", "unit": "bar", "writable": True, "min": 0.0, "max": 10.0}]),
    sim_device("gauge", name="Gauge", fields=[
        {"name": "level", "type": "double", "unit": "m", "decimals": 2, "sim": {"kind": "constant", "value": 1.5}}]),
]


@pytest.fixture(scope="module")
def m(xmpp_server):
    env = ModuleEnv(DEVICES, ACCESS, users=("alice", "bob", "carol", "dave"), server=xmpp_server)
    yield env
    env.close()


_seq = itertools.count(1)

PUMP = "pump1@gw.example.test"


def read_values(c, dev: str, names=None) -> dict[str, tuple[str, str]]:
    """A momentary readout: {name: (element, value)}."""
    seqnr = next(_seq)
    mk = c.mark_stanzas()
    r = c.iq(req_iq(dev, seqnr, fields=names or (), momentary=True))
    assert r.ok, f"readout refused: {r.condition} {r.text}"
    payloads = c.wait_readout_end(seqnr, mk)
    return {f.name: (f.tag, f.value) for f in all_fields(payloads)}


def apply(c, params=(), form=None, dev=PUMP):
    r = c.iq(set_iq(dev, params, form))
    assert r.ok, f"set refused: {r.condition} {r.text}\n{brief(r.xml)}"
    sr = r.payload()
    assert sr is not None and sr.tag == q(NS_CTL, "setResponse"), brief(r.xml)
    assert sr.get("responseCode") == "OK", brief(r.xml)
    assert not list(sr), "an empty <setResponse/>: everything was applied as requested"
    return r


def error_beside(r) -> None:
    """The error reply carries <setResponse responseCode=...> beside <error> (slixmpp
    reads it there) and the <error> is the RFC 6120 one."""
    kids = [c.tag for c in r.xml]
    assert q(NS_CTL, "setResponse") in kids and q(NS_CLIENT, "error") in kids, kids


# --------------------------------------------------------------------------------------
# successful writes


def test_set_double_then_read_back(m):
    alice = m.client("alice")
    apply(alice, [("double", "setpoint", "7.5")])
    assert read_values(alice, PUMP, ["setpoint"]) == {"setpoint": ("numeric", "7.5")}
    # an int parameter to a double field, written with the field's precision
    apply(alice, [("int", "setpoint", "3")])
    assert read_values(alice, PUMP, ["setpoint"]) == {"setpoint": ("numeric", "3.0")}
    # the bounds themselves are allowed
    apply(alice, [("double", "setpoint", "10")])
    assert read_values(alice, PUMP, ["setpoint"])["setpoint"] == ("numeric", "10.0")
    apply(alice, [("double", "setpoint", "0")])
    assert read_values(alice, PUMP, ["setpoint"])["setpoint"] == ("numeric", "0.0")


def test_set_every_parameter_type_and_read_back(m):
    alice = m.client("alice")
    apply(alice, [
        ("boolean", "running", "true"),
        ("string", "mode", "off"),
        ("int", "count", "-4"),
        ("long", "total", "9876543210"),
        ("string", "label", "north &amp; south"),
        ("dateTime", "installed", "2025-06-01T12:34:56Z"),
    ])
    got = read_values(alice, PUMP)
    assert got["running"] == ("boolean", "true")
    assert got["mode"] == ("enum", "off")
    assert got["count"] == ("int", "-4")
    assert got["total"] == ("long", "9876543210")
    assert got["label"] == ("string", "north & south")
    assert got["installed"] == ("dateTime", "2025-06-01T12:34:56Z")
    # a dateTime with an offset is the same instant in UTC
    apply(alice, [("dateTime", "installed", "2025-06-01T14:34:56.250+02:00"), ("boolean", "running", "0")])
    got = read_values(alice, PUMP, ["installed", "running"])
    assert got == {"installed": ("dateTime", "2025-06-01T12:34:56.250Z"), "running": ("boolean", "false")}


def test_parameters_apply_in_document_order(m):
    """The same parameter twice: the last one wins (parameters apply in document order)."""
    alice = m.client("alice")
    apply(alice, [("double", "setpoint", "1.5"), ("double", "setpoint", "8.5")])
    assert read_values(alice, PUMP, ["setpoint"])["setpoint"] == ("numeric", "8.5")


def test_data_form_set(m):
    alice = m.client("alice")
    apply(alice, [("double", "setpoint", "1.0"), ("string", "mode", "auto"), ("boolean", "running", "true")])
    apply(alice, form={"setpoint": "6.5", "mode": "manual", "running": "false", "count": "2"})
    got = read_values(alice, PUMP, ["setpoint", "mode", "running", "count"])
    assert got == {"setpoint": ("numeric", "6.5"), "mode": ("enum", "manual"),
                   "running": ("boolean", "false"), "count": ("int", "2")}
    # a form value that is not of the field's type: bad-request naming the field, nothing applied
    r = alice.iq(set_iq(PUMP, form={"setpoint": "2.5", "count": "many"}))
    expect_error(r, "bad-request", "modify")
    assert list(param_errors(r)) == ["count"], param_errors(r)
    assert read_values(alice, PUMP, ["setpoint", "count"]) == {"setpoint": ("numeric", "6.5"), "count": ("int", "2")}
    # a form of type 'form' (not submitted) is refused
    bad = (f"<iq type='set' to='{PUMP}'><set xmlns='{NS_CTL}'><x xmlns='{NS_XDATA}' type='form'>"
           "<field var='setpoint'><value>1</value></field></x></set></iq>")
    expect_error(alice.iq(bad), "bad-request", text_contains=["submit"])
    assert read_values(alice, PUMP, ["setpoint"])["setpoint"] == ("numeric", "6.5")


def test_message_set_is_applied_without_reply(m):
    alice = m.client("alice")
    apply(alice, [("double", "setpoint", "2.0")])
    mk = alice.mark_stanzas()
    alice.send_raw(f"<message to='{PUMP}'>{set_payload([('double', 'setpoint', '4.4')])}</message>")
    wait_for(lambda: read_values(alice, PUMP, ["setpoint"])["setpoint"] == ("numeric", "4.4"), 10,
             "the message set to be applied")
    # a refused message set: not applied, and no reply either, but logged
    log_at = m.gw.log_size()
    alice.send_raw(f"<message to='{PUMP}'>{set_payload([('double', 'setpoint', '5.0'), ('double', 'setpoint', '99')])}"
                   "</message>")
    alice.send_raw(f"<message to='{PUMP}'>{set_payload([('double', 'nope', '1')])}</message>")
    alice.barrier(PUMP)
    assert read_values(alice, PUMP, ["setpoint"])["setpoint"] == ("numeric", "4.4")
    alice.barrier(PUMP)
    replies = [brief(s) for s in alice.stanzas_since(mk) if s.tag == q(NS_CLIENT, "message")
               and not any(p.tag.startswith(f"{{{NS_SD}}}") for p in s)]
    assert replies == [], f"a message set gets no reply: {replies}"
    refused = [line for line in m.gw.log_since(log_at).splitlines() if "message set not applied" in line]
    assert len(refused) == 2, f"one log line per refused message set, with its sender:\n{m.gw.log_since(log_at)}"
    assert all(ALICE in line and "reason=" in line for line in refused), refused


# --------------------------------------------------------------------------------------
# refusals: all or nothing, paramError, conditions


def test_set_is_all_or_nothing(m):
    alice = m.client("alice")
    apply(alice, [("double", "setpoint", "2.0"), ("int", "count", "1"), ("boolean", "running", "false")])
    before = read_values(alice, PUMP, ["setpoint", "count", "running"])

    # one bad parameter among good ones: nothing applied
    r = alice.iq(set_iq(PUMP, [("double", "setpoint", "6.0"), ("int", "count", "99"), ("boolean", "running", "true")]))
    expect_error(r, "bad-request", "modify")
    assert param_errors(r).keys() == {"count"}, param_errors(r)
    assert set_response_code(r) == "FormError"
    error_beside(r)
    assert read_values(alice, PUMP, ["setpoint", "count", "running"]) == before

    # two bad ones: one paramError each
    r = alice.iq(set_iq(PUMP, [("double", "setpoint", "11"), ("boolean", "running", "true"), ("int", "count", "-6")]))
    expect_error(r, "bad-request", "modify")
    pe = param_errors(r)
    assert set(pe) == {"setpoint", "count"}, pe
    assert "maximum" in pe["setpoint"] and "minimum" in pe["count"], pe
    assert read_values(alice, PUMP, ["setpoint", "count", "running"]) == before

    # an unknown parameter among bad and good ones: item-not-found (paramError for each failing one)
    r = alice.iq(set_iq(PUMP, [("double", "setpoint", "5"), ("double", "nope", "1"), ("int", "count", "9")]))
    expect_error(r, "item-not-found", "cancel")
    assert set(param_errors(r)) == {"nope", "count"}, param_errors(r)
    assert set_response_code(r) == "NotFound"
    assert read_values(alice, PUMP, ["setpoint", "count", "running"]) == before


def test_out_of_range(m):
    alice = m.client("alice")
    for value, word in (("10.5", "maximum"), ("-0.1", "minimum")):
        r = alice.iq(set_iq(PUMP, [("double", "setpoint", value)]))
        expect_error(r, "bad-request", "modify", text_contains=["setpoint"])
        pe = param_errors(r)
        assert list(pe) == ["setpoint"] and word in pe["setpoint"] and value.lstrip("-") in pe["setpoint"], pe
        assert set_response_code(r) == "FormError"
        error_beside(r)


def test_unknown_parameter(m):
    alice = m.client("alice")
    r = alice.iq(set_iq(PUMP, [("double", "nope", "1")]))
    expect_error(r, "item-not-found", "cancel", text_contains=["nope"])
    assert list(param_errors(r)) == ["nope"]
    assert set_response_code(r) == "NotFound"
    error_beside(r)


def test_read_only_parameter(m):
    alice = m.client("alice")
    r = alice.iq(set_iq(PUMP, [("double", "pressure", "1")]))
    expect_error(r, "bad-request", "modify", text_contains=["read-only"])
    assert list(param_errors(r)) == ["pressure"]
    assert set_response_code(r) == "FormError"
    # a device without any writable field
    r = alice.iq(set_iq(m.dev("gauge"), [("double", "level", "2")]))
    expect_error(r, "bad-request", "modify", text_contains=["read-only"])


@pytest.mark.parametrize("param,mentions", [
    (("boolean", "setpoint", "true"), ["double", "boolean"]),  # a boolean to a double
    (("double", "running", "1"), ["boolean"]),
    (("string", "mode", "turbo"), ["turbo"]),  # not one of the enum's values
    (("long", "count", "3000000000"), ["3000000000"]),  # does not fit a 32-bit int
    (("string", "count", "3"), ["int"]),
    (("dateTime", "label", "2025-01-01T00:00:00Z"), ["string"]),
    # the parameter types no field of the model has are parsed, then refused for the type
    (("date", "installed", "2025-01-01"), ["dateTime", "<date>"]),
    (("time", "installed", "12:30:00"), ["dateTime", "<time>"]),
    (("duration", "setpoint", "PT5M"), ["double", "<duration>"]),
    (("color", "label", "FF8800"), ["string", "<color>"]),
])
def test_wrong_type(m, param, mentions):
    alice = m.client("alice")
    r = alice.iq(set_iq(PUMP, [param]))
    expect_error(r, "bad-request", "modify")
    pe = param_errors(r)
    assert list(pe) == [param[1]], pe
    for word in mentions:
        assert word in pe[param[1]], (pe, word)
    assert set_response_code(r) == "FormError"


def test_unreachable_device_is_service_unavailable(m):
    alice = m.client("alice")
    r = alice.iq(set_iq(m.dev("dead"), [("double", "setpoint", "1")]))
    expect_error(r, "service-unavailable", "wait", text_contains=["unreachable", "cable cut"])
    assert not param_errors(r), "the parameters are fine: the device cannot be reached"
    # a refusal on the same device stays a refusal
    r = alice.iq(set_iq(m.dev("dead"), [("double", "setpoint", "11")]))
    expect_error(r, "bad-request", "modify")


def test_node_filter(m):
    alice = m.client("alice")
    r = alice.iq(set_iq(PUMP, [("double", "setpoint", "1")], nodes=["other"]))
    expect_error(r, "item-not-found")
    assert set_response_code(r) == "NotFound"
    apply(alice, [("double", "setpoint", "1.5")])
    r = alice.iq(set_iq(PUMP, [("double", "setpoint", "2.5")], nodes=["pump1"]))
    assert r.ok and set_response_code(r) == "OK"
    assert read_values(alice, PUMP, ["setpoint"])["setpoint"] == ("numeric", "2.5")


@pytest.mark.parametrize("name,body,mentions", [
    ("unknown_element", "<float name='setpoint' value='1'/>", ["float"]),
    ("nan", "<double name='setpoint' value='NaN'/>", ["NaN", "finite"]),
    ("inf", "<double name='setpoint' value='INF'/>", ["finite"]),
    ("not_a_number", "<double name='setpoint' value='4,2'/>", ["4,2"]),
    ("missing_value", "<double name='setpoint'/>", ["value"]),
    ("missing_name", "<double value='1'/>", ["name"]),
    ("bad_boolean", "<boolean name='running' value='yes'/>", ["yes"]),
    ("bad_datetime", "<dateTime name='installed' value='2025-02-30T00:00:00Z'/>", ["2025-02-30", "dateTime"]),
])
def test_malformed_set(m, name, body, mentions):
    alice = m.client("alice")
    apply(alice, [("double", "setpoint", "3.3")])
    r = alice.iq(f"<iq type='set' to='{PUMP}'><set xmlns='{NS_CTL}'>"
                 f"<double name='setpoint' value='4.4'/>{body}</set></iq>")
    expect_error(r, "bad-request", "modify", text_contains=mentions)
    assert read_values(alice, PUMP, ["setpoint"])["setpoint"] == ("numeric", "3.3"), "nothing applied"


def test_unparsable_value_names_its_parameter(m):
    """A value that does not parse is a failing parameter like any other: the reply names it
    (text and <paramError var=.../>), so a client can tell which of several parameters of the
    same type is wrong."""
    alice = m.client("alice")
    r = alice.iq(set_iq(PUMP, [("double", "setpoint", "4.4"), ("int", "count", "1"), ("double", "setpoint", "NaN")]))
    expect_error(r, "bad-request", "modify", text_contains=["NaN"])
    assert "setpoint" in r.text, f"the error text does not say which parameter is wrong: {r.text!r}"
    assert list(param_errors(r)) == ["setpoint"], f"paramError expected for setpoint: {brief(r.xml)}"


def test_huge_set_is_refused_bounded(m):
    alice = m.client("alice")
    apply(alice, [("double", "setpoint", "3.3")])
    t0 = time.monotonic()
    # 2,000 parameters (~90 KB as the harness writes them) stay under the gateway's inbound
    # stanza bound (256 KiB, see test_hostile.py); the set's own bound of 256 refuses them.
    r = alice.iq(set_iq(PUMP, [("double", "setpoint", "1")] * 2_000), timeout=30)
    took = time.monotonic() - t0
    expect_error(r, "bad-request", "modify", text_contains=["at most 256", "2000"])
    assert set_response_code(r) == "FormError"
    assert took < 10, f"the refusal took {took:.1f}s"
    assert read_values(alice, PUMP, ["setpoint"])["setpoint"] == ("numeric", "3.3")
    # 256 is still fine
    apply(alice, [("double", "setpoint", "1")] * 255 + [("double", "setpoint", "2")])
    assert read_values(alice, PUMP, ["setpoint"])["setpoint"] == ("numeric", "2.0")
    m.assert_alive()


# --------------------------------------------------------------------------------------
# getForm


def test_get_form_reflects_the_catalogue(m):
    alice = m.client("alice")
    apply(alice, [("double", "setpoint", "7.5")])
    assert read_values(alice, PUMP, ["setpoint"])["setpoint"] == ("numeric", "7.5")  # now cached
    r = alice.iq(f"<iq type='get' to='{PUMP}'><getForm xmlns='{NS_CTL}'/></iq>")
    assert r.ok, f"getForm: {r.condition} {r.text}"
    x = r.payload()
    assert x is not None and x.tag == q(NS_XDATA, "x") and x.get("type") == "form", brief(r.xml)
    assert x.findtext(q(NS_XDATA, "title")) == "Pump 1"
    fields = x.findall(q(NS_XDATA, "field"))
    assert [f.get("var") for f in fields] == WRITABLE, "one field per writable parameter, in catalogue order"
    f = {fl.get("var"): fl for fl in fields}

    def validate(var):
        return f[var].find(q(NS_XDV, "validate"))

    def rng(var):
        v = validate(var)
        r_ = None if v is None else v.find(q(NS_XDV, "range"))
        return None if r_ is None else (r_.get("min"), r_.get("max"))

    sp = f["setpoint"]
    assert sp.get("type") == "text-single" and sp.get("label") == "setpoint (bar)"
    assert validate("setpoint").get("datatype") == "xs:double"
    assert rng("setpoint") == ("0", "10")
    assert sp.findtext(q(NS_XDATA, "value")) == "7.5", "the current value, with the field's precision"

    assert f["running"].get("type") == "boolean"
    assert f["mode"].get("type") == "list-single"
    options = [o.findtext(q(NS_XDATA, "value")) for o in f["mode"].findall(q(NS_XDATA, "option"))]
    assert options == ["auto", "manual", "off"]
    assert f["count"].get("type") == "text-single"
    assert validate("count").get("datatype") == "xs:int" and rng("count") == ("-5", "5")
    assert validate("total").get("datatype") == "xs:long" and rng("total") is None
    assert f["total"].get("label") == "total (Wh)"
    assert validate("label").get("datatype") == "xs:string"
    assert validate("installed").get("datatype") == "xs:dateTime"
    for var in WRITABLE:
        assert f[var].find(q(NS_XDD, "notSame")) is not None, f"{var}: XEP-0325 wants <notSame/> on every parameter"
    assert "pressure" not in f

    # the form, filled in and submitted, is accepted
    apply(alice, form={"setpoint": "4.5", "running": "true", "mode": "auto", "count": "0", "total": "12",
                       "label": "x", "installed": "2024-01-01T00:00:00Z"})
    got = read_values(alice, PUMP, WRITABLE)
    assert got["setpoint"] == ("numeric", "4.5") and got["total"] == ("long", "12")

    # getForm of a node that is not this device
    r = alice.iq(f"<iq type='get' to='{PUMP}'><getForm xmlns='{NS_CTL}'><node nodeId='other'/></getForm></iq>")
    expect_error(r, "item-not-found")


# --------------------------------------------------------------------------------------
# access


def test_access_control_right(m):
    alice, bob = m.client("alice"), m.client("bob")
    apply(alice, [("double", "setpoint", "2.0")])
    # bob may read, not control
    r = bob.iq(set_iq(PUMP, [("double", "setpoint", "9")]))
    expect_error(r, "forbidden", "cancel")
    assert set_response_code(r) == "InsufficientPrivileges"
    error_beside(r)
    expect_error(bob.iq(f"<iq type='get' to='{PUMP}'><getForm xmlns='{NS_CTL}'/></iq>"), "forbidden", "cancel")
    # a message set from bob is not applied either
    bob.send_raw(f"<message to='{PUMP}'>{set_payload([('double', 'setpoint', '9')])}</message>")
    bob.barrier(PUMP)
    assert read_values(bob, PUMP, ["setpoint"])["setpoint"] == ("numeric", "2.0")
    # carol only subscribes: forbidden as well
    carol = m.client("carol")
    expect_error(carol.iq(set_iq(PUMP, [("double", "setpoint", "9")])), "forbidden")
    expect_error(carol.iq(f"<iq type='get' to='{PUMP}'><getForm xmlns='{NS_CTL}'/></iq>"), "forbidden")
    # dave has no right at all: the device does not exist for him
    dave = m.client("dave")
    expect_error(dave.iq(set_iq(PUMP, [("double", "setpoint", "9")])), "service-unavailable")
    expect_error(dave.iq(f"<iq type='get' to='{PUMP}'><getForm xmlns='{NS_CTL}'/></iq>"), "service-unavailable")
    assert read_values(alice, PUMP, ["setpoint"])["setpoint"] == ("numeric", "2.0")


# --------------------------------------------------------------------------------------
# slixmpp's xep_0325 plugin as the client


class PluginControl:
    def __init__(self, client):
        self.c = client
        self.events: list[dict] = []
        self.cond = threading.Condition()

    def callback(self, **kw):
        with self.cond:
            self.events.append(kw)
            self.cond.notify_all()

    def set_request(self, to: str, fields) -> dict:
        n = len(self.events)
        self.c.lt.call(lambda: self.c.xmpp.plugin["xep_0325"].set_request(
            self.c.xmpp.boundjid.full, to, self.callback, fields))
        deadline = time.monotonic() + 10
        with self.cond:
            while len(self.events) <= n:
                left = deadline - time.monotonic()
                assert left > 0, "the xep_0325 plugin reported no result within 10s"
                self.cond.wait(left)
            return self.events[n]


@pytest.fixture(scope="module")
def plug(m):
    c = m.client("alice", resource="plugin325", plugins=["xep_0325"])
    with quiet_plugin_iq_errors(c.lt):
        yield PluginControl(c)


def test_slixmpp_plugin_set_request(m, plug):
    alice = m.client("alice")
    res = plug.set_request(PUMP, [("setpoint", "double", "5.5"), ("running", "boolean", "true")])
    assert res["result"] == "OK", res
    assert str(res["from_jid"]) == PUMP
    assert read_values(alice, PUMP, ["setpoint", "running"]) == {"setpoint": ("numeric", "5.5"),
                                                                 "running": ("boolean", "true")}
    # the error codes slixmpp knows, from the <setResponse/> beside the iq error
    assert plug.set_request(PUMP, [("setpoint", "double", "55")])["result"] == "FormError"
    assert plug.set_request(PUMP, [("nope", "double", "1")])["result"] == "NotFound"
    assert plug.set_request(PUMP, [("setpoint", "boolean", "true")])["result"] == "FormError"
    assert plug.set_request(m.dev("dead"), [("setpoint", "double", "1")])["result"] == "OtherError"
    assert read_values(alice, PUMP, ["setpoint"])["setpoint"] == ("numeric", "5.5")


def test_slixmpp_plugin_insufficient_privileges(m, plug):
    bob_plug = PluginControl(m.client("bob", resource="plugin325", plugins=["xep_0325"]))
    assert bob_plug.set_request(PUMP, [("setpoint", "double", "9")])["result"] == "InsufficientPrivileges"


def test_slixmpp_plugin_set_command(m, plug):
    """xep_0325's message-based set_command (which sends type='set', not a valid message
    type; Prosody and ejabberd pass it on): applied without any reply."""
    alice = m.client("alice")
    apply(alice, [("double", "setpoint", "1.0")])
    mk = plug.c.mark_stanzas()
    plug.c.lt.call(lambda: plug.c.xmpp.plugin["xep_0325"].set_command(
        plug.c.xmpp.boundjid.full, PUMP, [("setpoint", "double", "6.6")]))
    wait_for(lambda: read_values(alice, PUMP, ["setpoint"])["setpoint"] == ("numeric", "6.6"), 10,
             "set_command to be applied")
    plug.c.barrier(PUMP)
    assert not [s for s in plug.c.stanzas_since(mk) if s.tag == q(NS_CLIENT, "message")], "no reply to a message set"
