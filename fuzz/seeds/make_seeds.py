#!/usr/bin/env python3
"""Writes the hand-made seed inputs of every fuzz target into corpus/<target>/.

Seeds follow the XEP examples and the gateway's own configuration example; the fuzzer's
minimised findings are kept next to them. Re-running this is harmless: files are named
by their content."""
import hashlib
import os
import pathlib
import struct

here = pathlib.Path(__file__).resolve().parent.parent
SD = "urn:xmpp:iot:sensordata"
CTL = "urn:xmpp:iot:control"
EV = "urn:xmpp:iot:events"
XD = "jabber:x:data"


def put(target, data):
    if isinstance(data, str):
        data = data.encode()
    d = here / "corpus" / target
    d.mkdir(parents=True, exist_ok=True)
    (d / ("seed-" + hashlib.sha1(data).hexdigest()[:16])).write_bytes(data)


for s in [
    f"<req xmlns='{SD}' seqnr='4' momentary='true' all='false' from='2013-03-07T16:24:30Z' to='2013-03-07T19:00:00.5+02:00' when='2025-01-01T00:00:00-05:30' tokens='a b'><node nodeId='Device01' sourceId='MeteringTopology' cacheType='x'/><field name='Temperature'/></req>",
    f"<accepted xmlns='{SD}' seqnr='1' queued='true'/>",
    f"<started xmlns='{SD}' seqnr='1'/>",
    f"<done xmlns='{SD}' seqnr='18446744073709551615'/>",
    f"<cancel xmlns='{SD}' seqnr='0'/>",
    f"<cancelled xmlns='{SD}' seqnr='7'/>",
    f"<fields xmlns='{SD}' seqnr='4' done='true'><node nodeId='Device01'><timestamp value='2013-03-07T16:24:30Z'>"
    "<numeric name='Temperature' momentary='true' automaticReadout='true' value='23.4' unit='°C'/>"
    "<numeric name='x' value='-1.5E3' unit='' invoiced='1' writable='false'/>"
    "<boolean name='On' value='1' status='true'/><int name='i' value='-2147483648'/>"
    "<long name='l' value='9223372036854775807'/><string name='s' value='a &amp; b &#x41;' stringIds='1|m|s,2'/>"
    "<date name='d' value='2013-03-07+01:00'/><time name='t' value='16:24:30.123456789Z'/>"
    "<dateTime name='dt' value='0001-01-01T00:00:00Z'/><duration name='du' value='P1DT2H3M4.5S'/>"
    "<enum name='e' value='On' dataType='OnOff'/></timestamp></node></fields>",
    f"<failure xmlns='{SD}' seqnr='4' done='true'><error nodeId='Device01' timestamp='2013-03-07T17:13:30'>Timeout.</error></failure>",
    f"<numeric xmlns='{SD}' name='n' value='NaN' unit='x' peak='true' computed='true' missing='true' endOfSeries='true'/>",
    f"<duration xmlns='{SD}' name='d' value='-PT1S'/>",
    f"<duration xmlns='{SD}' name='d' value='P0Y0M100000000DT0.000000001S'/>",
]:
    put("sensordata", s)

for s in [
    f"<set xmlns='{CTL}'><boolean name='bool' value='true'/><int name='int_bounded' value='10'/><long name='long' value='-1'/>"
    "<double name='double_bounded' value='100.001'/><string name='enum_bounded' value='on'/><color name='c' value='FF00aa80'/>"
    "<date name='d' value='2020-02-29'/><time name='t' value='23:59:60'/><dateTime name='ts' value='2020-01-01T00:00:00Z'/>"
    "<duration name='du' value='PT1M30S'/><node nodeId='n1' sourceId='s' cacheType='c'/></set>",
    f"<set xmlns='{CTL}'><x xmlns='{XD}' type='submit'><field var='FORM_TYPE' type='hidden'><value>{CTL}</value></field>"
    "<field var='double'><value>4.5</value></field><field var='bool'><value>1</value></field>"
    "<field var='xdd session' type='hidden'><value>s</value></field><field var='unknown'/></x></set>",
    f"<set xmlns='{CTL}'><x xmlns='{XD}' type='form'/></set>",
    f"<setResponse xmlns='{CTL}' responseCode='OK'><node nodeId='a'/><parameter name='p'/></setResponse>",
    f"<paramError xmlns='{CTL}' var='Output'>Invalid value.</paramError>",
    f"<getForm xmlns='{CTL}' tokens='t'><node nodeId='a'/></getForm>",
    f"<x xmlns='{XD}' type='form'><title>pump</title><field var='sp' type='text-single' label='Setpoint'>"
    "<desc>d</desc><value>5</value><validate xmlns='http://jabber.org/protocol/xdata-validate' datatype='xs:double'>"
    "<range min='0' max='10'/></validate><notSame xmlns='urn:xmpp:xdata:dynamic'/></field>"
    "<field var='mode' type='list-single'><option label='A'><value>auto</value></option></field>"
    "<field var='on' type='boolean'/><field var='c' type='text-single'><validate xmlns='http://jabber.org/protocol/xdata-validate' datatype='xdc:color'/></field></x>",
]:
    put("control", s)

for s in [
    f"<subscribe xmlns='{EV}' seqnr='1' momentary='true' maxAge='PT1M' minInterval='PT1S' maxInterval='PT1H' req='true'>"
    "<node nodeId='n'/><field name='Temperature' currentValue='22.5' changedBy='0.5'/>"
    "<field name='x' changedUp='1' changedDown='2E1'/><field name='y' changeBy='1'/><field name='z'/></subscribe>",
    f"<subscribe xmlns='{EV}' seqnr='2' all='true' maxInternval='P1D'/>",
    f"<unsubscribe xmlns='{EV}' seqnr='1'/>",
]:
    put("events", s)

for s in [
    "<iq xmlns='jabber:component:accept' type='get' id='1' from='alice@example.org/app' to='pump@gw.example.org'>"
    "<query xmlns='http://jabber.org/protocol/disco#info' node='https://github.com/fieldgate/fieldgate#x'/></iq>",
    "<iq xmlns='jabber:component:accept' type='get' id='2' from='a@b/c' to='gw.example.org'>"
    "<query xmlns='http://jabber.org/protocol/disco#items'><set xmlns='http://jabber.org/protocol/rsm'><max>3</max>"
    "<after>dev4@gw.example.org</after></set></query></iq>",
    "<query xmlns='http://jabber.org/protocol/disco#items'><set xmlns='http://jabber.org/protocol/rsm'><max>2</max><before/></set></query>",
    "<query xmlns='http://jabber.org/protocol/disco#items'><set xmlns='http://jabber.org/protocol/rsm'><index>30</index></set></query>",
    "<presence xmlns='jabber:component:accept' type='subscribe' from='a@b' to='pump@gw.example.org'/>",
    "<presence xmlns='jabber:component:accept' type='unavailable' from='a@b/c' to='pump@gw.example.org'><status>bye</status></presence>",
    "<message xmlns='jabber:component:accept' from='a@b/c' to='pump@gw.example.org' id='m' type='error'>"
    "<refused xmlns='urn:fieldgate:guard' reason='depth' limit='64' size='9000'/></message>",
]:
    put("presence_disco", s)

stanzas = [
    b" <iq type=\"get\" id='a&apos;1' from='a@b/c' to='gw.example.org'><ping xmlns='urn:xmpp:ping'/></iq>\n",
    b"<message to='d@gw.example.org'><body>1 &lt; 2 <![CDATA[<not/> ]]></body></message><presence/>",
    b"<message from='a@b/c' to='x@gw' id='m1'><x xmlns='urn:x'>" + b"<a>" * 20 + b"</a>" * 20 + b"</x></message>",
    b"<iq id='c'><!-- hi --></iq><iq id='p'><?pi x?></iq><iq/>",
    b"<iq id='t' a=\"'>\" b='\"/>'><x><![CDATA[</iq><iq>]]]]></x></iq>",
    b"<iq type='set' id='i' from='a@b/c' to='d@gw'><set v='" + b"x" * 300 + b"'/></iq>",
    b"<frob to='x'>" + b"<a>" * 12 + b"</a>" * 12 + b"</frob>",
]
for i, s in enumerate(stanzas):
    put("stanza_guard", bytes([i * 37 % 256]) + s)

example = (here.parent / "config.example.toml").read_text()
put("config", example)
put("config", "[xmpp]\nserver = \"127.0.0.1:5347\"\ndomain = \"gw.example.org\"\nsecret = \"s\"\n"
    "[[device]]\nid = \"pump\"\nadapter = \"sim\"\n[[device.field]]\nname = \"level\"\ntype = \"int\"\n")
put("config", "[xmpp]\nserver = \"h:1\"\ndomain = \"d\"\nsecret = \"s\"\n[[modbus.connection]]\nname = \"plc\"\n"
    "transport = \"tcp\"\nhost = \"127.0.0.1\"\n[[device]]\nid = \"m\"\nadapter = \"modbus\"\n"
    "[device.modbus]\nconnection = \"plc\"\nunit = 1\n[[device.field]]\nname = \"t\"\ntype = \"double\"\n"
    "modbus = { register = \"holding\", address = 3, type = \"i32\", order = \"CDAB\", scale = 0.1 }\n")
put("config", "[xmpp]\nserver = 5\n")
put("config", "a = \"é\u00e9\"\n[[x]]\n\tb = [1, 2,\n")

# Modbus: kind, type, order, bit, length, map entries, address, scale, offset, flags, then registers.
for fields in [
    [2, 5, 0, 0, 0, 0, 0, 10, 1, 1, 1, 0, 0x12, 0x34, 0x56, 0x78, 1, 0, 5],
    [2, 9, 3, 0, 0, 0, 0, 1, 1, 2, 1, 2, 0x41, 0xbc, 0, 0, 4, 0x10, 0],
    [2, 2, 0, 3, 0, 0, 0, 0, 1, 0, 0, 2, 0xff, 0xf8, 3, 1, 1],
    [0, 0, 0, 0, 0, 0, 0, 7, 1, 0, 0, 2, 1, 0, 1],
    [2, 11, 1, 0, 4, 0, 0, 0, 1, 0, 0, 2, 0x68, 0x69, 0xc3, 0xa9, 0, 0, 0, 0, 5, 3],
    [3, 4, 0, 0, 0, 2, 1, 2, 2, 3, 0, 1, 0, 0, 0, 0, 0, 1, 6, 1],
    [2, 7, 7, 0, 0, 0, 0, 0, 1, 19] + list(struct.pack(">d", 1e-3)) + [0, 2] + [0x7f] * 8 + [2] + [0xff] * 8,
]:
    put("modbus_codec", bytes(fields))

# MQTT: the first byte picks the format (0 plain, 1 JSON, 2 SenML; see
# fieldgate_mqtt::fuzzing::codec), the rest is the payload.
for pick, payload in [
    (0, "21.5"), (0, " ON\n"), (0, "2024-05-01T14:00:00+02:00"), (0, b"\xff\xfe"),
    (1, '{"temperature": 21.5, "state": "ON", "0": [1, 2], "time": 1767225600}'),
    (0x11, '{"temperature": "21", "time": "2026-01-01T00:00:00Z", "a/b": null}'),
    (0x31, '{"time": 1767225600123.5, "state": {"state": "online"}}'),
    (1, "[" * 200), (1, '{"temperature": 1e400, "state": -9223372036854775809}'),
    (2, '[{"bn":"urn:dev:ow:10e2073a01080063:","bt":1.767e9,"n":"temperature","u":"Cel","v":23.1},'
        '{"n":"state","vb":true},{"n":"0","vs":"on","t":-5}]'),
    (2, '[{"bver":11,"n":"x","v":1}]'), (2, '[{"n":"state","v":1,"vs":"x"}]'),
    (0x42, '[{"bn":"a","bv":10,"n":"temperature","v":1.5,"t":1e30}]'),
]:
    put("mqtt_codec", bytes([pick]) + (payload.encode() if isinstance(payload, str) else payload))


# Payload codecs (fieldgate_payload::fuzzing::codec): the first byte's low three bits
# pick the format (modulo 5: 0 plain, 1 JSON, 2 SenML, 3 CBOR, 4 SenML CBOR), 0x08 paths
# with integer keys, 0x10 a timestamp (0x20 in milliseconds), 0x40 decimals; the rest is
# the payload. CBOR is written by the small encoder below (preferred serialization).
class Tag:
    def __init__(self, tag, item):
        self.tag, self.item = tag, item


class Raw:
    def __init__(self, data):
        self.data = data


class Half:
    def __init__(self, value):
        self.value = value


def cbor_head(major, arg):
    if arg < 24:
        return bytes([major << 5 | arg])
    for info, fmt in ((24, ">B"), (25, ">H"), (26, ">I"), (27, ">Q")):
        if arg < 1 << (8 * struct.calcsize(fmt)):
            return bytes([major << 5 | info]) + struct.pack(fmt, arg)
    raise ValueError(arg)


def cbor(v):
    if isinstance(v, Raw):
        return v.data
    if isinstance(v, Tag):
        return cbor_head(6, v.tag) + cbor(v.item)
    if isinstance(v, Half):
        return b"\xf9" + struct.pack(">e", v.value)
    if v is None:
        return b"\xf6"
    if v is True:
        return b"\xf5"
    if v is False:
        return b"\xf4"
    if isinstance(v, int):
        return cbor_head(0, v) if v >= 0 else cbor_head(1, -1 - v)
    if isinstance(v, float):
        return b"\xfb" + struct.pack(">d", v)
    if isinstance(v, str):
        b = v.encode()
        return cbor_head(3, len(b)) + b
    if isinstance(v, bytes):
        return cbor_head(2, len(v)) + v
    if isinstance(v, list):
        return cbor_head(4, len(v)) + b"".join(cbor(i) for i in v)
    if isinstance(v, dict):
        return cbor_head(5, len(v)) + b"".join(cbor(k) + cbor(i) for k, i in v.items())
    raise TypeError(v)


for pick, payload in [
    (0, "21.5"), (1, '{"temperature": 21.5, "state": "ON", "0": [1, 2], "time": 1767225600}'),
    (0x11, '{"temperature": "21", "time": "2026-01-01T00:00:00Z", "a/b": null}'),
    (2, '[{"bn":"urn:dev:ow:10e2073a01080063:","bt":1.767e9,"n":"temperature","u":"Cel","v":23.1},'
        '{"n":"state","vb":true},{"n":"0","vs":"on","t":-5}]'),
    (3, cbor({"temperature": Half(21.5), "state": "ON", "a/b": [1, 2], "0": True, "time": Tag(1, 1767225600)})),
    (0x13, cbor({"temperature": 21, "state": Tag(0, "2026-01-01T00:00:00Z"), "time": Tag(0, "2026-01-01T00:00:00+01:00")})),
    (0x3b, cbor({0: Tag(4, [-1, 215]), 1: {0: "on"}, -2: Tag(2, b"\x01\x00"), 6: 1767225600123})),
    (0x0b, cbor({0: 2 ** 64 - 1, 1: [Raw(b"\x3b" + b"\xff" * 8)], -2: float("nan"), "x": b"\x00"})),
    (3, cbor(Tag(55799, {"temperature": float("inf"), "state": Raw(b"\x7f\x61a\x61b\xff")}))),
    (3, Raw(b"\x9f" * 150)), (3, Raw(b"\x5a\xff\xff\xff\xff\x00")), (3, Raw(b"\xbf\x61a\x01\xff\x00")),
    (4, cbor([{-2: "urn:dev:ow:10e2073a01080063:", -3: 1.767e9, -1: 10, 0: "temperature", 1: "Cel", 2: 23.1},
              {0: "state", 4: True}, {0: "0", 3: "on", 6: -5}, {0: "a/b", 8: b"\xfb\xff"}])),
    (4, cbor([{-5: 10, 0: "temperature", 2: Tag(4, [-1, 15]), 6: Half(-1.5)}, {0: "temperature", 2: 1, 6: 1e30}])),
    (0x44, cbor([{-1: 11, 0: "x", 2: 1}, {0: "state", 2: 1, 3: "x"}, {"n": "a", "foo_": 1}])),
]:
    data = payload.data if isinstance(payload, Raw) else payload.encode() if isinstance(payload, str) else payload
    put("payload_codec", bytes([pick]) + data)
