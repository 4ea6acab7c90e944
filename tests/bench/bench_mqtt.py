"""fieldgate MQTT benchmark: what the MQTT adapter costs and how fast it answers.

Layout: a private Prosody (Nagle off on its sockets unless `--prosody-nagle on`), a
private Mosquitto (2.0: its defaults but for an unbounded per-client queue,
`max_queued_messages 0`, and `sys_interval 1`), the gateway (release build) and one
slixmpp client, all on loopback. Bulk messages are published by tests/bench/mqtt_flood.py,
a process of its own writing pre-encoded MQTT 3.1.1 PUBLISH packets to a raw socket (a
paho-mqtt client spends ~27 us of CPU per publish, more than the gateway's budget for a
message). The gateway subscribes at QoS 1 (the adapter's default), so a message arrives at
the QoS it was published with.

Phases (`--phases`, all by default, in this order):

throughput  `--devices` explicit `[[device]]` entries (default 1,000), each with its own
            topic `bench/dNNNN/state` and five JSON fields (seq, temperature, humidity,
            pressure, on), plus a `sentinel`, `lat` and `act` device. Per QoS in `--qos`
            (default 0,1): `--messages` messages (default 200,000; round-robin over the
            devices, every value changing) sent at once, then a sentinel message on the
            same connection; the run ends when the sentinel's change event reaches the
            client (the broker hands one connection's messages to a subscriber in order,
            so the gateway has taken every message before it). Prefixed q<QoS>_:
  offered_msgs_per_s        OFFERED LOAD: messages / time for the broker to accept all
                            of them from the publisher (QoS 1: every PUBACK back)
  gateway_msgs_per_s        CAPACITY: messages / time from the publisher's first byte to
                            the sentinel's event at the client. Everything is sent at
                            once, so this is the sustained rate of the slowest stage:
                            the gateway or the broker (see the cpu_pct figures), on 2
                            cores shared with everything else (see others_cpu_pct)
  gateway_cpu_s             gateway CPU (utime + stime of every thread, schedstat) in
                            that window
  cpu_s_per_100k_msgs       gateway CPU per 100,000 messages decoded into readings (the
                            issue's goal: at most 1.0, i.e. 10 us a message)
  cpu_us_per_msg            the same per message
  gateway_cpu_pct / broker_cpu_pct / publisher_cpu_pct / client_cpu_pct
                            each process's CPU over the window, % of one core
  broker_cpu_us_per_msg     Mosquitto's CPU per message (in and out)
  machine_idle_pct / others_cpu_pct / machine_cpu_wait_pct / loadavg_1m
                            how quiet the machine was: idle share of all CPUs, CPU used
                            by processes other than ours (% of one core), share of the
                            window some task waited for a CPU (PSI), load at the end
  set_right_after_burst_ms / set_right_after_burst (QoS 1)
                            one XEP-0325 `set` of `act` (a fake device echoes it) sent
                            as soon as the sentinel's event arrived: its round trip and
                            outcome ("result", or the error condition)
  broker_received / broker_sent_to_gateway / broker_dropped
                            from Mosquitto's $SYS/broker/publish/messages/{received,
                            sent,dropped}: PUBLISHes the broker took in, handed out (less
                            the $SYS messages of our own collector) and dropped for
                            queue limits in the run (expected: messages + 1, the same,
                            and 0)
  broker_unacked_after (QoS 1)
                            messages the broker still holds for want of the gateway's
                            PUBACK once the run is over ($SYS/broker/store/messages/
                            count against its value before the run; expected 0: the
                            adapter acknowledges a message once its values are in the
                            core). If not 0, watched `--ack-watch` seconds:
  gateway_pubacks_per_s_after / broker_unacked_after_watch / ack_backlog_drain_s_estimate
                            the rate PUBACKs leave the gateway, what is left, and when
                            the last would go; a gateway still owing PUBACKs is then
                            restarted (clean session: the broker drops them) so that
                            the later phases do not queue behind them
  devices_at_last_seq       devices whose `seq`, read back over XMPP (XEP-0323 readout)
                            after the run, is the last one published to them (expected:
                            all)
and start_ready_s / start_subscribed_s (gateway start -> READY=1 / -> the broker logged
every subscription), rss_kb_idle, rss_kb / hwm_kb (VmRSS / VmHWM after the runs).

latency     publish -> change event: device `lat` (one JSON field `value`), a
            subscription with changedBy = 0.5 (`[events] min_interval = "10ms"`);
            `--samples` publishes (QoS 0, paho client in this process), each value 1 more
            than the last, `--spacing` seconds apart, interleaved with XMPP pings
            (XEP-0199) from the same client through the same Prosody: to the device's
            JID (answered by the gateway) and to the server. Times are from just before
            the publish call (or the ping's send on the client's loop thread) to the
            stanza's arrival at the client; the first ten samples are a warm-up.
  event_latency_ms_p50/_p99/_max    publish -> event at the client
  ping_device_ms_p50/_p99           client -> Prosody -> gateway -> Prosody -> client
  ping_server_ms_p50/_p99           client -> Prosody -> client
  event_mqtt_leg_ms_p50/_p99        publish -> the reading's timestamp in the event (the
                                    gateway's arrival stamp, wall clock, ms resolution)
  event_xmpp_leg_ms_p50/_p99        that stamp -> the event's arrival at the client
  event_minus_ping_device_ms_p50/_p99   the issue's goal: under 1 ms at p99

set         `set` -> MQTT command -> the device's echo -> `setResponse`: device `act`, a
            writable int field `level` (plain payloads, command_qos 1, `confirm = true`),
            the fake device (paho client in this process) echoing every command onto the
            state topic; sequential `set`s `--spacing` apart, interleaved with pings to
            the device JID; the first ten are a warm-up.
  set_rtt_ms_p50/_p99/_max          iq set sent -> iq result arrived
  set_ping_device_ms_p50/_p99       pings in the same phase
  set_minus_ping_device_ms_p50/_p99
  set_echoes                        commands the fake device echoed

discovery   a second gateway (the first is stopped) with one discovering entry
            `fleet/+/telemetry`, max_devices = 20000, the same five fields, and `--fleet`
            devices (default 10,000), one message each (QoS 0), sent at once.
  fleet_rss_kb_before / fleet_hwm_kb_before   VmRSS / VmHWM before the first message
  fleet_devices_discovered / fleet_devices_online
                            fleet devices with a "device discovered" / "device
                            reachable" line in the gateway log (expected: --fleet)
  fleet_discovered_s        first message -> the last "device discovered" line
  fleet_online_s            first message -> the last "device reachable" line: every
                            device online in the core (what presence and readouts show)
  fleet_online_per_s        devices online per second over that time
  fleet_discovery_cpu_s / fleet_discovery_cpu_us_per_device
                            gateway CPU from the first message until all were online
  fleet_rss_kb_discovered / fleet_hwm_kb_discovered   right after
  fleet_disco_items         fleet devices counted by walking disco#items of the
                            component domain page by page (XEP-0059 RSM) from the
                            client; _all: every item, _count: the <count> announced
  fleet_second_round_*      `--fleet-rounds` more messages per device (default 5), no
                            discovery: rate and gateway CPU per 100,000 messages through
                            the wildcard entry; sampled_devices_at_last_seq: 50 devices
                            read back
  fleet_rss_kb / fleet_hwm_kb   VmRSS at the end / VmHWM (peak) of the whole phase (the
                            issue's goal: under 64 MB; /proc's kB are KiB)
  fleet_discovered_json_bytes   the state file of the members

`--profile` records `perf record -e cpu-clock` of the gateway over the first throughput
run and prints the top symbols (self time; needs `perf`); the sampling perturbs that
run's figures a little.

Not pass/fail. Run through `bash tests/bench/run_mqtt.sh` (release build).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "e2e"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness as h  # noqa: E402
from bench_iot import set_prosody_nagle_off  # noqa: E402
from bench_modbus import cpu_pressure_us, machine_ticks, pct  # noqa: E402
from benchlib import report, teardown  # noqa: E402
from harness import NS_CLIENT, NS_DISCO_ITEMS, NS_PING  # noqa: E402
from iot import NS_SD, IotClient, fields_of, parse_iso, req_iq, set_iq, subscribe_iq  # noqa: E402
from mosquitto import Mosquitto, MqttClient  # noqa: E402

HERE = Path(__file__).resolve().parent
NS_RSM = "http://jabber.org/protocol/rsm"
SYS_TOPICS = {
    "sent": "$SYS/broker/publish/messages/sent",
    "received": "$SYS/broker/publish/messages/received",
    "dropped": "$SYS/broker/publish/messages/dropped",
    "stored": "$SYS/broker/store/messages/count",
}
FIELDS = [
    {"name": "seq", "type": "long"},
    {"name": "temperature", "type": "double", "unit": "°C", "decimals": 2},
    {"name": "humidity", "type": "int", "unit": "%"},
    {"name": "pressure", "type": "double", "unit": "hPa", "decimals": 1},
    {"name": "on", "type": "bool"},
]


def dev_id(i: int) -> str:
    return f"d{i:04d}"


def cpu(pid: int) -> float:
    """CPU seconds of a process so far (every thread; schedstat, ns resolution)."""
    return h.cpu_ns(pid) / 1e9


def toml_device(did: str, mqtt: dict, fields: list[dict], name: str | None = None) -> str:
    out = ["", "[[device]]", f"id = {h.toml_value(did)}", f"name = {h.toml_value(name or did)}",
           'adapter = "mqtt"', "[device.mqtt]"]
    out += [f"{k} = {h.toml_value(v)}" for k, v in mqtt.items()]
    for f in fields:
        out += ["[[device.field]]"] + [f"{k} = {h.toml_value(v)}" for k, v in f.items()]
    return "\n".join(out)


def gateway_config(prosody: h.Prosody, state_dir: Path, bench_jid: str, port: int, client_id: str,
                   devices: list[str]) -> str:
    access = {"subscribe": [bench_jid], "read": [bench_jid], "control": [bench_jid]}
    text = h.gateway_toml(prosody, state_dir, [], access)
    text += "\n".join(["", "[[mqtt.broker]]", 'name = "local"', 'host = "127.0.0.1"', f"port = {port}",
                       f"client_id = {h.toml_value(client_id)}", "qos = 1"])
    text += "\n".join(devices)
    # events at most 10 ms apart per subscription (the default floor is 1 s)
    text += "\n\n[events]\nmin_interval = \"10ms\"\n"
    return text


def sentinel_device(topic: str) -> str:
    return toml_device("sentinel", {"broker": "local", "topic": topic, "format": "json"},
                       [{"name": "run", "type": "long"}], "Sentinel")


# --------------------------------------------------------------------------------------
# the broker's own counters


class SysCounters:
    """Mosquitto's $SYS publish counters, from a collector subscribed to them."""

    def __init__(self, mosq: Mosquitto):
        self.col = mosq.collector(list(SYS_TOPICS.values()), qos=0).start()

    def snapshot(self, timeout: float = 10.0) -> dict:
        """The counters of the next $SYS tick, and the index in the collector of that
        tick's `sent` message: the $SYS messages the broker sent us between two snapshots
        (which its `sent` counter includes) are the difference of the indexes."""
        mk = self.col.mark()
        self.col.wait_message(SYS_TOPICS["sent"], since=mk, timeout=timeout)
        time.sleep(0.3)  # the rest of the tick's batch
        msgs = self.col.received(since=mk)
        i_sent = min(i for i, m in enumerate(msgs) if m.topic == SYS_TOPICS["sent"])
        out = {"index": mk + i_sent}
        for key, topic in SYS_TOPICS.items():
            got = [m for m in msgs[:i_sent + 1] if m.topic == topic] or self.col.received(topic)
            out[key] = int(got[-1].payload) if got else 0
        return out


# --------------------------------------------------------------------------------------
# the flood publisher (a process of its own)


class Flood:
    def __init__(self, port: int, qos: int, topic: str, devices: int, messages: int, seq0: int,
                 sentinel_topic: str, sentinel_payload: str, client_id: str):
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "mqtt_flood.py"), "--port", str(port), "--qos", str(qos),
             "--topic", topic, "--devices", str(devices), "--messages", str(messages), "--seq0", str(seq0),
             "--sentinel-topic", sentinel_topic, "--sentinel-payload", sentinel_payload,
             "--client-id", client_id],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline().strip()
        if line != "ready":
            raise h.HarnessError(f"mqtt_flood did not start: {line!r}")

    def go(self) -> None:
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def done(self) -> dict[str, float]:
        line = self.proc.stdout.readline().strip()
        if not line.startswith("done "):
            raise h.HarnessError(f"mqtt_flood failed: {line!r}")
        return {k: float(v) for k, v in (kv.split("=") for kv in line.split()[1:])}

    def close(self) -> None:
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# --------------------------------------------------------------------------------------
# waiting for what the client received, with the arrival time


def wait_arrival(client: IotClient, since: int, pred, timeout: float = 30.0,
                 what: str = "a stanza") -> tuple[float, ET.Element]:
    """(arrival time.monotonic(), stanza) of the first stanza after `since` matching `pred`."""
    deadline = time.monotonic() + timeout
    i = since
    with client.cond:
        while True:
            while i < len(client.stanzas):
                if pred(client.stanzas[i]):
                    return client.arrivals[i], client.stanzas[i]
                i += 1
            left = deadline - time.monotonic()
            if left <= 0:
                raise h.HarnessError(f"no {what} within {timeout}s")
            client.cond.wait(left)


def send_timed(client: IotClient, xml: str) -> float:
    """Sends raw XML from the client's loop thread; the time.monotonic() just before."""
    def go():
        t = time.monotonic()
        client.xmpp.send_raw(xml)
        return t
    return client.lt.call(go)


def is_iq_reply(iq_id: str):
    return lambda s: s.tag == f"{{{NS_CLIENT}}}iq" and s.get("id") == iq_id


def event_value(frm: str, seqnr: int, name: str):
    """A predicate: an event message of subscription `seqnr` from `frm` carrying field
    `name`, whatever its value."""
    def pred(s):
        if s.tag != f"{{{NS_CLIENT}}}message" or not s.get("from", "").startswith(frm):
            return False
        return any(p.tag == f"{{{NS_SD}}}fields" and p.get("seqnr") == str(seqnr)
                   and any(f.name == name for f in fields_of(p)) for p in s)
    return pred


def event_with(frm: str, seqnr: int, name: str, value: str):
    """A predicate: an event message of subscription `seqnr` from `frm` with `name` = `value`."""
    def pred(s):
        if s.tag != f"{{{NS_CLIENT}}}message" or not s.get("from", "").startswith(frm):
            return False
        for p in s:
            if p.tag == f"{{{NS_SD}}}fields" and p.get("seqnr") == str(seqnr):
                if any(f.name == name and f.value == value for f in fields_of(p)):
                    return True
        return False
    return pred


_ids = iter(range(1, 1 << 30))


def ping_rtt(client: IotClient, to: str) -> float:
    iq_id = f"bp{next(_ids)}"
    mk = client.mark_stanzas()
    t = send_timed(client, f"<iq type='get' id='{iq_id}' to='{to}'><ping xmlns='{NS_PING}'/></iq>")
    at, s = wait_arrival(client, mk, is_iq_reply(iq_id), 10, f"ping reply from {to}")
    if s.get("type") != "result":
        raise h.HarnessError(f"ping to {to} failed: {ET.tostring(s, encoding='unicode')[:300]}")
    return (at - t) * 1000


def subscribe(client: IotClient, jid: str, seqnr: int, fields: list[dict]) -> None:
    r = client.iq(subscribe_iq(jid, seqnr, fields, momentary="true"))
    if not r.ok:
        raise h.HarnessError(f"subscribe to {jid} refused: {r.condition} {r.text}")


def read_seq(client: IotClient, jids: list[str], batch: int = 50) -> dict[str, str]:
    """Reads field `seq` of every device (readouts `batch` at a time): {jid: value}; a
    device whose readout failed has none."""
    out: dict[str, str] = {}
    for k in range(0, len(jids), batch):
        group = jids[k:k + batch]
        mk = client.mark_stanzas()
        seqs: dict[str, str] = {}
        ids: dict[str, str] = {}
        for j in group:
            s = 900_000 + next(_ids)
            seqs[str(s)] = j
            ids[f"br{s}"] = str(s)
            client.send_raw(req_iq(j, s, ["seq"], iq_id=f"br{s}", momentary="true"))
        pending = set(seqs)
        deadline = time.monotonic() + 30
        i = mk
        with client.cond:
            while pending:
                while i < len(client.stanzas):
                    st = client.stanzas[i]
                    i += 1
                    if st.tag == f"{{{NS_CLIENT}}}iq" and st.get("type") == "error":
                        pending.discard(ids.get(st.get("id", ""), ""))
                        continue
                    for p in st:
                        sq = p.get("seqnr")
                        if sq not in pending or not p.tag.startswith(f"{{{NS_SD}}}"):
                            continue
                        if p.tag == f"{{{NS_SD}}}fields":
                            for f in fields_of(p):
                                if f.name == "seq":
                                    out[seqs[sq]] = f.value
                        if p.get("done") == "true" or p.tag in (f"{{{NS_SD}}}done", f"{{{NS_SD}}}failure"):
                            pending.discard(sq)
                if not pending:
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    raise h.HarnessError(f"readouts unanswered: {len(pending)}")
                client.cond.wait(left)
    return out


class Machine:
    """How busy the machine was over a window: idle share, CPU pressure, load, and the
    CPU used by every process but `ours` (other users' work shares the 2 cores)."""

    def __init__(self, ours: list[int] | None = None):
        self.ours = ours or []
        self.idle0, self.total0 = machine_ticks()
        self.busy0 = self._busy()
        self.ours0 = sum(cpu(p) for p in self.ours)
        self.psi0 = cpu_pressure_us()
        self.t0 = time.monotonic()

    @staticmethod
    def _busy() -> float:
        """CPU seconds all CPUs spent not idle (jiffies of user..steal)."""
        v = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        return (sum(v[:8]) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")

    def stop(self, extra_ours: float = 0.0) -> "Machine":
        """Ends the window. `extra_ours`: CPU seconds of our processes that ended in it."""
        idle1, total1 = machine_ticks()
        psi1 = cpu_pressure_us()
        win = time.monotonic() - self.t0
        others = (self._busy() - self.busy0) - (sum(cpu(p) for p in self.ours) - self.ours0) - extra_ours
        self.figures = {}
        if total1 > self.total0:
            self.figures["machine_idle_pct"] = (idle1 - self.idle0) / (total1 - self.total0) * 100
        if win > 0:
            self.figures["others_cpu_pct"] = max(0.0, others) / win * 100
        if self.psi0 is not None and psi1 is not None and win > 0:
            self.figures["machine_cpu_wait_pct"] = (psi1 - self.psi0) / 1e6 / win * 100
        self.figures["loadavg_1m"] = float(os.getloadavg()[0])
        return self

    def report(self, prefix: str) -> None:
        if not hasattr(self, "figures"):
            self.stop()
        for k, v in self.figures.items():
            report(f"{prefix}{k}", v)


class Perf:
    def __init__(self, pid: int, workdir: Path):
        self.data = workdir / "perf.data"
        self.perf = shutil.which("perf")
        self.proc = None
        if not self.perf:
            print("# --profile: perf not found", flush=True)
            return
        self.proc = subprocess.Popen([self.perf, "record", "-e", "cpu-clock", "-F", "1999", "-o", str(self.data),
                                      "-p", str(pid)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(0.5)

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        r = subprocess.run([self.perf, "report", "-i", str(self.data), "--stdio", "--no-children",
                            "--sort", "symbol", "--percent-limit", "1"], capture_output=True, text=True)
        print("# perf: top gateway symbols over the run (cpu-clock samples, self time)", flush=True)
        for line in r.stdout.splitlines():
            if line.strip() and not line.startswith("#"):
                print(f"#   {line.strip()[:150]}", flush=True)


# --------------------------------------------------------------------------------------
# phases


class MainGateway:
    """The gateway of the throughput, latency and set phases: `--devices` sensors, the
    sentinel, `lat` and `act`. (Re)started with `start()`, which waits until the broker
    has every subscription and subscribes the client to the sentinel's `run`."""

    def __init__(self, args, env: h.Env, mosq: Mosquitto, client: IotClient, root: Path):
        self.args, self.env, self.mosq, self.client = args, env, mosq, client
        self.gw = h.Gateway(root / "gw", env.prosody)
        env.gateway = self.gw
        devs = [toml_device(dev_id(i), {"broker": "local", "topic": f"bench/{dev_id(i)}/state", "format": "json"},
                            FIELDS, f"Sensor {i}") for i in range(args.devices)]
        devs.append(sentinel_device("bench/sentinel/state"))
        devs.append(toml_device("lat", {"broker": "local", "topic": "bench/lat/state", "format": "json"},
                                [{"name": "value", "type": "double"}], "Latency probe"))
        devs.append(toml_device("act", {"broker": "local", "topic": "bench/act/state", "format": "plain",
                                        "command_topic": "bench/act/set", "command_qos": 1},
                                [{"name": "level", "type": "int", "writable": True, "min": 0, "max": 100000,
                                  "mqtt": {"confirm": True}}], "Actuator"))
        self.gw.write_raw_config(gateway_config(env.prosody, self.gw.state_dir, env.prosody.jid("bench"),
                                                mosq.plain_port, "fieldgate-bench", devs))
        self.filters = args.devices + 3
        self.sentinel_seq = 6000
        self.run = 0  # the sentinel's last value

    @property
    def pid(self) -> int:
        return self.gw.pid

    def start(self) -> float:
        """Starts the gateway; seconds until the broker had all its subscriptions."""
        log0 = self.mosq.log_size()
        t = time.monotonic()
        self.gw.start(timeout=60)
        self.ready_s = time.monotonic() - t
        sub_re = re.compile(r"^\S+: fieldgate-bench \d \S+$", re.M)
        h.wait_for(lambda: len(sub_re.findall(self.mosq.log_since(log0))) >= self.filters, 60,
                   f"the gateway's {self.filters} subscriptions")
        subscribed = time.monotonic() - t
        self.sentinel_seq += 1
        subscribe(self.client, f"sentinel@{self.env.prosody.component}", self.sentinel_seq,
                  [{"name": "run", "changedBy": 1, "currentValue": self.run}])
        return subscribed

    def stop(self) -> None:
        self.gw.stop()


def set_once(client: IotClient, act: str, value: int, timeout: float = 30.0) -> tuple[float, str]:
    """One XEP-0325 set of `act`'s `level`: (ms from sending to the reply's arrival,
    "result" or the error condition)."""
    iq_id = f"bs{next(_ids)}"
    mk = client.mark_stanzas()
    xml = set_iq(act, [("int", "level", str(value))]).replace("<iq ", f"<iq id='{iq_id}' ", 1)
    t = send_timed(client, xml)
    at, s = wait_arrival(client, mk, is_iq_reply(iq_id), timeout, f"set reply ({value})")
    if s.get("type") == "result":
        return (at - t) * 1000, "result"
    err = s.find(f"{{{NS_CLIENT}}}error")
    cond = next((c.tag.split("}", 1)[1] for c in (err if err is not None else []) if not c.tag.endswith("}text")), "?")
    return (at - t) * 1000, cond


def throughput_run(args, env, main: MainGateway, mosq, sysc: SysCounters, client: IotClient, qos: int,
                   root: Path, echo: "EchoDevice | None") -> None:
    p = f"q{qos}_"
    n_dev = args.devices
    n = max(n_dev, args.messages // n_dev * n_dev)  # whole rounds: every device the same count
    main.run += 1
    run = main.run
    seq0 = run * 1_000_000
    flood = Flood(mosq.plain_port, qos, "bench/d{:04d}/state", n_dev, n, seq0, "bench/sentinel/state",
                  json.dumps({"run": run}), f"bench-flood-q{qos}")
    try:
        s0 = sysc.snapshot()
        mk = client.mark_stanzas()
        pids = {"gateway": main.pid, "broker": mosq.pid, "publisher": flood.proc.pid, "client": os.getpid()}
        perf = Perf(main.pid, root) if args.profile and run == 1 else None
        c0 = {k: cpu(v) for k, v in pids.items()}
        machine = Machine([main.pid, mosq.pid, env.prosody.proc.pid, os.getpid()])
        t0 = time.monotonic()
        flood.go()
        d = flood.done()
        c_pub = cpu(flood.proc.pid)
        t_end, _ = wait_arrival(client, mk, event_with("sentinel@", main.sentinel_seq, "run", str(run)), 600,
                                "the sentinel's event")
        c1 = {k: cpu(v) for k, v in pids.items() if k != "publisher"}
        c1["publisher"] = c_pub
        win = t_end - t0
        machine.stop(extra_ours=c_pub - c0["publisher"])
        if perf:
            perf.stop()
    finally:
        flood.close()
    gw_cpu = c1["gateway"] - c0["gateway"]
    report(f"{p}messages", n)
    report(f"{p}publish_s", d["elapsed"])
    report(f"{p}offered_msgs_per_s", n / d["elapsed"])
    report(f"{p}window_s", win)
    report(f"{p}gateway_msgs_per_s", n / win)
    report(f"{p}gateway_cpu_s", gw_cpu)
    report(f"{p}cpu_s_per_100k_msgs", gw_cpu / (n / 100_000))
    report(f"{p}cpu_us_per_msg", gw_cpu / n * 1e6)
    for k in ("gateway", "broker", "publisher", "client"):
        report(f"{p}{k}_cpu_pct", (c1[k] - c0[k]) / win * 100)
    report(f"{p}broker_cpu_us_per_msg", (c1["broker"] - c0["broker"]) / n * 1e6)
    machine.report(p)
    if qos and echo is not None:
        # a command right behind the burst: does it wait for the burst's PUBACKs?
        ms, outcome = set_once(client, f"act@{env.prosody.component}", 50_000 + run)
        report(f"{p}set_right_after_burst_ms", ms)
        report(f"{p}set_right_after_burst", outcome)
    s1 = sysc.snapshot()
    sys_between = s1["index"] - s0["index"]
    report(f"{p}broker_received", s1["received"] - s0["received"])
    report(f"{p}broker_sent_to_gateway", s1["sent"] - s0["sent"] - sys_between)
    report(f"{p}broker_dropped", s1["dropped"] - s0["dropped"])
    if qos:
        # QoS 1 messages the broker still holds for want of the gateway's PUBACK, and how
        # fast they go: the gateway acknowledges a message once its values are in the
        # core, so none should be left once the sentinel's event is out
        t_a = time.monotonic()
        left_a = s1["stored"] - s0["stored"]
        report(f"{p}broker_unacked_after", left_a)
        if left_a > 0:
            time.sleep(args.ack_watch)
            s2 = sysc.snapshot()
            left_b = s2["stored"] - s0["stored"]
            rate = (left_a - left_b) / (time.monotonic() - t_a)
            report(f"{p}gateway_pubacks_per_s_after", rate)
            report(f"{p}broker_unacked_after_watch", left_b)
            if rate > 0 and left_b > 0:
                report(f"{p}ack_backlog_drain_s_estimate", left_b / rate + (time.monotonic() - t_a))
    # what the gateway holds now: each device's last seq
    jids = [f"{dev_id(i)}@{env.prosody.component}" for i in range(n_dev)]
    got = read_seq(client, jids)
    want = seq0 + n // n_dev - 1
    report(f"{p}devices_at_last_seq", sum(1 for j in jids if got.get(j) == str(want)))
    if qos:
        s3 = sysc.snapshot()
        if s3["stored"] - s0["stored"] > 10:
            # the backlog would hold up every later phase: start afresh (clean session:
            # the broker forgets what is unacknowledged)
            print(f"# {s3['stored'] - s0['stored']} PUBACKs still owed: restarting the gateway", flush=True)
            main.stop()
            main.start()
            time.sleep(1)


def latency_phase(args, env, mosq, client: IotClient) -> None:
    comp = env.prosody.component
    lat = f"lat@{comp}"
    subscribe(client, lat, 7001, [{"name": "value", "changedBy": 0.5, "currentValue": 0}])
    pub = mosq.client("bench-lat-pub")
    try:
        ev, pdev, psrv = [], [], []
        legs: list[tuple[float, float]] = []
        wall_minus_mono = time.time() - time.monotonic()
        # the first ten samples are a warm-up, not counted
        for k in range(1, args.samples + 11):
            pdev_ms = ping_rtt(client, lat)
            time.sleep(args.spacing / 3)
            psrv_ms = ping_rtt(client, env.prosody.vhost)
            time.sleep(args.spacing / 3)
            mk = client.mark_stanzas()
            payload = json.dumps({"value": float(k)})
            paho = pub._client()
            t = time.monotonic()
            paho.publish("bench/lat/state", payload, 0)
            # one event per publish: the previous one has arrived before this mark
            at, st = wait_arrival(client, mk, event_value("lat@", 7001, "value"), 10, f"event {k}")
            stamp = next((parse_iso(x.get("value")) for x in st.iter(f"{{{NS_SD}}}timestamp")), None)
            if k > 10:
                ev.append((at - t) * 1000)
                if stamp is not None:
                    legs.append(((stamp - (t + wall_minus_mono)) * 1000, (at + wall_minus_mono - stamp) * 1000))
                pdev.append(pdev_ms)
                psrv.append(psrv_ms)
            time.sleep(args.spacing / 3)
    finally:
        pub.close()
    report("latency_samples", len(ev))
    report("event_latency_ms_p50", pct(ev, 0.5))
    report("event_latency_ms_p99", pct(ev, 0.99))
    report("event_latency_ms_max", max(ev))
    report("ping_device_ms_p50", pct(pdev, 0.5))
    report("ping_device_ms_p99", pct(pdev, 0.99))
    report("ping_server_ms_p50", pct(psrv, 0.5))
    report("ping_server_ms_p99", pct(psrv, 0.99))
    if legs:
        # the event's <timestamp> is the gateway's arrival stamp (ms resolution, wall clock)
        report("event_mqtt_leg_ms_p50", pct([a for a, _ in legs], 0.5))
        report("event_mqtt_leg_ms_p99", pct([a for a, _ in legs], 0.99))
        report("event_xmpp_leg_ms_p50", pct([b for _, b in legs], 0.5))
        report("event_xmpp_leg_ms_p99", pct([b for _, b in legs], 0.99))
    report("event_minus_ping_device_ms_p50", pct(ev, 0.5) - pct(pdev, 0.5))
    report("event_minus_ping_device_ms_p99", pct(ev, 0.99) - pct(pdev, 0.99))


class EchoDevice(MqttClient):
    """A fake device: every command on `command_topic` is published back on `state_topic`."""

    def __init__(self, broker: Mosquitto, client_id: str, command_topic: str, state_topic: str):
        super().__init__(broker, client_id)
        self.command_topic = command_topic
        self.state_topic = state_topic
        self.echoed = 0

    def _on_message(self, c, _u, msg) -> None:
        if msg.topic == self.command_topic:
            c.publish(self.state_topic, msg.payload, 0)
            self.echoed += 1


def set_phase(args, env, client: IotClient, dev: "EchoDevice") -> None:
    act = f"act@{env.prosody.component}"
    echoed0 = dev.echoed
    rtt, pdev = [], []
    for k in range(1, args.samples + 11):
        pdev_ms = ping_rtt(client, act)
        time.sleep(args.spacing / 2)
        ms, outcome = set_once(client, act, k % 1000 + 1, 15)
        if outcome != "result":
            raise h.HarnessError(f"set {k} failed: {outcome}")
        if k > 10:  # the first ten are a warm-up
            rtt.append(ms)
            pdev.append(pdev_ms)
        time.sleep(args.spacing / 2)
    report("set_samples", len(rtt))
    report("set_rtt_ms_p50", pct(rtt, 0.5))
    report("set_rtt_ms_p99", pct(rtt, 0.99))
    report("set_rtt_ms_max", max(rtt))
    report("set_ping_device_ms_p50", pct(pdev, 0.5))
    report("set_ping_device_ms_p99", pct(pdev, 0.99))
    report("set_minus_ping_device_ms_p50", pct(rtt, 0.5) - pct(pdev, 0.5))
    report("set_minus_ping_device_ms_p99", pct(rtt, 0.99) - pct(pdev, 0.99))
    report("set_echoes", dev.echoed - echoed0)


LOG_LINE_RE = re.compile(r"^(\S+Z)\s.*?(device discovered|device reachable).*?\bdevice=(\S+)")


def log_time(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def disco_walk(client: IotClient, domain: str, page: int = 500) -> tuple[list[str], int | None, int]:
    """Walks disco#items of `domain` with RSM: (the items' JIDs, <count> announced, pages)."""
    after = None
    jids: list[str] = []
    pages = 0
    announced = None
    while True:
        rsm = f"<set xmlns='{NS_RSM}'><max>{page}</max>" + (f"<after>{after}</after>" if after else "") + "</set>"
        r = client.iq(f"<iq type='get' to='{domain}'><query xmlns='{NS_DISCO_ITEMS}'>{rsm}</query></iq>", timeout=30)
        if not r.ok:
            raise h.HarnessError(f"disco#items failed: {r.condition} {r.text}")
        q = r.xml.find(f"{{{NS_DISCO_ITEMS}}}query")
        got = q.findall(f"{{{NS_DISCO_ITEMS}}}item")
        jids += [i.get("jid", "") for i in got]
        pages += 1
        st = q.find(f"{{{NS_RSM}}}set")
        if st is None or not got:
            break
        c = st.find(f"{{{NS_RSM}}}count")
        if c is not None and c.text:
            announced = int(c.text)
        last = st.find(f"{{{NS_RSM}}}last")
        after = last.text if last is not None else None
        if after is None or (announced is not None and len(jids) >= announced):
            break
    return jids, announced, pages


def discovery_phase(args, env, mosq, client: IotClient, root: Path) -> None:
    comp = env.prosody.component
    gw = h.Gateway(root / "gw-fleet", env.prosody)
    env.gateway = gw
    fleet = toml_device("fleet", {"broker": "local", "topic": "fleet/+/telemetry", "format": "json",
                                  "discover": True, "max_devices": 20000}, FIELDS, "Tank")
    gw.write_raw_config(gateway_config(env.prosody, gw.state_dir, env.prosody.jid("bench"), mosq.plain_port,
                                       "fieldgate-fleet", [fleet, sentinel_device("fleet-sentinel/state")]))
    log0 = mosq.log_size()
    gw.start()
    for f in ("fleet/+/telemetry", "fleet-sentinel/state"):
        mosq.wait_subscribed("fieldgate-fleet", f, since=log0, timeout=20)
    sentinel = f"sentinel@{comp}"
    subscribe(client, sentinel, 8001, [{"name": "run", "changedBy": 1, "currentValue": 0}])
    time.sleep(0.5)
    st = h.proc_status(gw.pid)
    report("fleet_rss_kb_before", st.get("VmRSS", 0))
    report("fleet_hwm_kb_before", st.get("VmHWM", 0))
    n = args.fleet
    logpos = gw.log_size()
    # QoS 0 (nothing is dropped: the broker's queue is unbounded; the count of devices
    # discovered shows every message arrived), so that the discovery is not mixed up with
    # QoS 1 acknowledgements
    flood = Flood(mosq.plain_port, 0, "fleet/t{:05d}/telemetry", n, n, 0, "fleet-sentinel/state",
                  json.dumps({"run": 1}), "bench-fleet-1")
    machine = Machine([gw.pid, mosq.pid, env.prosody.proc.pid, os.getpid()])
    try:
        mk = client.mark_stanzas()
        c0 = cpu(gw.pid)
        t0_wall = time.time()
        flood.go()
        flood.done()
        wait_arrival(client, mk, event_with("sentinel@", 8001, "run", "1"), 600, "the fleet sentinel's event")
    finally:
        flood.close()
    # every device reachable, by the log
    discovered: dict[str, float] = {}
    online: dict[str, float] = {}
    deadline = time.monotonic() + 300
    while True:
        text = gw.log_since(logpos)
        for line in text.splitlines():
            m = LOG_LINE_RE.search(line)
            if m and m.group(3).startswith("t"):
                (discovered if m.group(2) == "device discovered" else online)[m.group(3)] = log_time(m.group(1))
        if len(online) >= n or time.monotonic() > deadline:
            break
        time.sleep(0.25)
    c1 = cpu(gw.pid)
    report("fleet_devices", n)
    report("fleet_devices_discovered", len(discovered))
    report("fleet_devices_online", len(online))
    if discovered:
        report("fleet_discovered_s", max(discovered.values()) - t0_wall)
    if online:
        report("fleet_online_s", max(online.values()) - t0_wall)
        report("fleet_online_per_s", len(online) / (max(online.values()) - t0_wall))
    report("fleet_discovery_cpu_s", c1 - c0)
    report("fleet_discovery_cpu_us_per_device", (c1 - c0) / n * 1e6)
    st = h.proc_status(gw.pid)
    report("fleet_rss_kb_discovered", st.get("VmRSS", 0))
    report("fleet_hwm_kb_discovered", st.get("VmHWM", 0))
    t = time.monotonic()
    jids, announced, pages = disco_walk(client, comp)
    report("fleet_disco_items", sum(1 for j in jids if re.fullmatch(rf"t\d{{5}}@{re.escape(comp)}", j)))
    report("fleet_disco_items_all", len(jids))
    report("fleet_disco_items_count", announced if announced is not None else len(jids))
    report("fleet_disco_pages", pages)
    report("fleet_disco_walk_s", time.monotonic() - t)
    # a second message to every device (no discovery now), five rounds
    rounds = args.fleet_rounds
    flood = Flood(mosq.plain_port, 0, "fleet/t{:05d}/telemetry", n, n * rounds, 1_000_000, "fleet-sentinel/state",
                  json.dumps({"run": 2}), "bench-fleet-2")
    try:
        mk = client.mark_stanzas()
        c0 = cpu(gw.pid)
        t0 = time.monotonic()
        flood.go()
        flood.done()
        t_end, _ = wait_arrival(client, mk, event_with("sentinel@", 8001, "run", "2"), 600,
                                "the fleet sentinel's second event")
        c1 = cpu(gw.pid)
    finally:
        flood.close()
    report("fleet_second_round_messages", n * rounds)
    report("fleet_second_round_msgs_per_s", n * rounds / (t_end - t0))
    report("fleet_second_round_cpu_s_per_100k_msgs", (c1 - c0) / (n * rounds / 100_000))
    sample = [f"t{i:05d}@{comp}" for i in range(0, n, max(1, n // 50))]
    got = read_seq(client, sample)
    want = str(1_000_000 + rounds - 1)
    report("fleet_sampled_devices_at_last_seq", f"{sum(1 for j in sample if got.get(j) == want)}/{len(sample)}")
    st = h.proc_status(gw.pid)
    report("fleet_rss_kb", st.get("VmRSS", 0))
    report("fleet_hwm_kb", st.get("VmHWM", 0))
    try:
        report("fleet_discovered_json_bytes", (gw.state_dir / "discovered.json").stat().st_size)
    except OSError:
        pass
    machine.report("fleet_")


# --------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--messages", type=int, default=200_000)
    ap.add_argument("--qos", default="0,1")
    ap.add_argument("--fleet", type=int, default=10_000)
    ap.add_argument("--fleet-rounds", type=int, default=5)
    ap.add_argument("--ack-watch", type=float, default=5.0,
                    help="seconds to watch the broker's unacknowledged QoS 1 messages after the burst")
    ap.add_argument("--samples", type=int, default=500)
    ap.add_argument("--spacing", type=float, default=0.05, help="seconds between two publishes (or sets)")
    ap.add_argument("--phases", default="throughput,latency,set,discovery")
    ap.add_argument("--broker-inflight", type=int, default=20,
                    help="Mosquitto's max_inflight_messages: QoS 1/2 messages it sends before waiting "
                         "for acknowledgements (its default 20)")
    ap.add_argument("--prosody-nagle", choices=("on", "off"), default="off",
                    help="Nagle's algorithm on Prosody's sockets (its default is on: an unsolicited event "
                         "behind an unacknowledged reply then waits for the client's delayed ACK, 20-40 ms)")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    root = Path(tempfile.mkdtemp(prefix="fieldgate-bench-mqtt-"))
    env = None
    mosq = None
    try:
        prosody = h.Prosody(root / "prosody", log_level="warn")
        env = h.Env(root=root, server=prosody)
        if args.prosody_nagle == "off":
            set_prosody_nagle_off(prosody)
        prosody.register("bench")
        prosody.start()
        client = IotClient(env.prosody, "bench")
        env.clients.append(client)
        client.connect()
        mosq = Mosquitto(root / "mosquitto", log_types=("error", "warning", "notice", "subscribe"),
                         max_queued_messages=0,
                         extra_config=f"sys_interval 1\nmax_inflight_messages {args.broker_inflight}\n")
        mosq.start()
        sysc = SysCounters(mosq)
        print(f"# gateway {h.gateway_bin()}; mosquitto {mosq.plain_port}; Prosody nagle {args.prosody_nagle}; "
              f"{os.cpu_count()} CPUs; load {os.getloadavg()[0]:.2f}", flush=True)
        comp = env.prosody.component
        if any(p in phases for p in ("throughput", "latency", "set")):
            main_gw = MainGateway(args, env, mosq, client, root)
            subscribed_s = main_gw.start()
            report("start_ready_s", main_gw.ready_s)
            report("start_subscribed_s", subscribed_s)
            report("rss_kb_idle", h.proc_status(main_gw.pid).get("VmRSS", 0))
            echo = EchoDevice(mosq, "bench-act", "bench/act/set", "bench/act/state")
            echo.connect()
            echo.subscribe("bench/act/set", 1)
            if "throughput" in phases:
                for qos in (int(q) for q in args.qos.split(",")):
                    print(f"# throughput: {args.devices} devices, QoS {qos}, everything sent at once", flush=True)
                    throughput_run(args, env, main_gw, mosq, sysc, client, qos, root, echo)
                st = h.proc_status(main_gw.pid)
                report("rss_kb", st.get("VmRSS", 0))
                report("hwm_kb", st.get("VmHWM", 0))
            ours = [main_gw.pid, mosq.pid, env.prosody.proc.pid, os.getpid()]
            if "latency" in phases:
                print("# latency: publish -> change event, beside pings", flush=True)
                m = Machine(ours)
                latency_phase(args, env, mosq, client)
                m.report("latency_")
            if "set" in phases:
                print("# set -> command -> echo -> setResponse, beside pings", flush=True)
                m = Machine(ours)
                set_phase(args, env, client, echo)
                m.report("set_")
            echo.close()
            main_gw.gw.close()
        if "discovery" in phases:
            print(f"# discovery: {args.fleet} devices from one wildcard entry", flush=True)
            discovery_phase(args, env, mosq, client, root)
        return 0
    finally:
        if mosq is not None:
            mosq.close()
        teardown(env, root, args.keep)


if __name__ == "__main__":
    sys.exit(main())
