"""Readouts of a large device: the gateway's work must grow with fields + names, not with
fields x names. One sim device of 10,000 fields behind a real Prosody; a client asks for
a readout filtered by 5,000 field names (every other field), and for the whole device.

Figures (printed as `name: value` lines; --rounds readouts of each kind, one at a time):
  filtered_readout_ms_p50 / _max   request sent -> last message (done) received, 5,000 names
  full_readout_ms_p50 / _max       the same for all 10,000 fields, no filter
  filtered_gateway_cpu_ms          gateway CPU (all threads) per filtered readout
  full_gateway_cpu_ms              gateway CPU per full readout
  messages_per_full_readout        <fields> messages a full readout takes (stanza bound)

Both include Prosody routing about 1 MB of <fields> to the client; the gateway's CPU is
its own part. Not pass/fail. Run through `bash tests/bench/run_readout.sh`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "e2e"))

import harness as h  # noqa: E402
from benchlib import report, teardown  # noqa: E402
from iot import IotClient, NS_SD  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--fields", type=int, default=10_000)
    ap.add_argument("--names", type=int, default=5_000)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()

    root = Path(tempfile.mkdtemp(prefix="fg-bench-readout-"))
    env = None
    try:
        env = h.make_env(root, log_level="info")
        gw = env.new_gateway()
        gw.write_config([h.sim_device("big", fields=[
            {"name": "r{n}", "type": "int", "count": args.fields, "sim": {"kind": "constant", "value": 7}},
        ])], access={"read": ["alice@example.test"]})
        gw.start()
        alice = IotClient(env.prosody, "alice")
        env.clients.append(alice)
        alice.connect()
        big = env.dev("big")
        step = max(1, args.fields // args.names)
        filters = "".join(f"<field name='r{i}'/>" for i in range(0, args.fields, step)[: args.names])

        def readout(seqnr: int, inner: str) -> tuple[float, float, int]:
            mk = alice.mark_stanzas()
            cpu0 = h.cpu_ns(gw.pid)
            t0 = time.monotonic()
            # written as is: the harness' iq() would prefix every element
            alice.send_raw(f"<iq type='get' id='b{seqnr}' to='{big}'>"
                           f"<req xmlns='{NS_SD}' seqnr='{seqnr}' momentary='true'>{inner}</req></iq>")
            payloads = alice.wait_readout_end(seqnr, mk, timeout=60)
            elapsed = (time.monotonic() - t0) * 1000
            return elapsed, (h.cpu_ns(gw.pid) - cpu0) / 1e6, len(payloads)

        seqnr = 0
        results: dict[str, list[tuple[float, float, int]]] = {"filtered": [], "full": []}
        for _ in range(args.rounds):
            for kind, inner in (("filtered", filters), ("full", "")):
                seqnr += 1
                results[kind].append(readout(seqnr, inner))
        for kind, rs in results.items():
            report(f"{kind}_readout_ms_p50", statistics.median(r[0] for r in rs))
            report(f"{kind}_readout_ms_max", max(r[0] for r in rs))
            report(f"{kind}_gateway_cpu_ms", statistics.median(r[1] for r in rs))
        report("messages_per_full_readout", results["full"][0][2])
        return 0
    finally:
        teardown(env, root, args.keep)


if __name__ == "__main__":
    sys.exit(main())
