"""MQTT flood publisher for bench_mqtt.py, run as a process of its own.

It speaks MQTT 3.1.1 over a raw socket: every PUBLISH packet is encoded before the run,
so that sending costs almost nothing and the broker and the gateway are what the
benchmark measures (a paho-mqtt 2.2 client spends ~27 µs of CPU per QoS 0 publish here,
more than the gateway is meant to spend on a message). Protocol on stdin/stdout, one line
each:

    -> ready                       connected (CONNACK received), packets encoded
    <- go                          send them all
    -> done elapsed=S cpu=S acks=N the broker has every message: at QoS 1 every PUBACK
                                   came back; then (QoS 0 as well) the sentinel message,
                                   published at QoS 1 on the same connection, was
                                   acknowledged, so every message before it was routed
    <- (end of stdin)              DISCONNECT, exit

Message i goes to device i % devices (topic --topic with the device index formatted in),
with a JSON payload of five fields: {"seq": n, "temperature": ..., "humidity": ...,
"pressure": ..., "on": ...}, where n = --seq0 + i // devices (so each device's seq counts
up by one per message, and its last is --seq0 + (messages - 1) // devices for devices
that got one that round). The values change with every message.

At QoS 1 at most --window messages are unacknowledged (packet ids 1..65535 cycle; the
window is far below that, so no id in use is reused).
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import threading
import time


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n % 128
        n //= 128
        if n:
            b |= 0x80
        out.append(b)
        if not n:
            return bytes(out)


def utf8(s: str) -> bytes:
    b = s.encode()
    return len(b).to_bytes(2, "big") + b


def packet(first: int, body: bytes) -> bytes:
    return bytes([first]) + varint(len(body)) + body


def connect_packet(client_id: str, keepalive: int = 600) -> bytes:
    # protocol name, level 4 (3.1.1), flags: clean session; keep-alive; client id
    body = utf8("MQTT") + bytes([4, 0x02]) + keepalive.to_bytes(2, "big") + utf8(client_id)
    return packet(0x10, body)


def publish_packet(topic: str, payload: bytes, qos: int, pkid: int) -> bytes:
    body = utf8(topic) + (pkid.to_bytes(2, "big") if qos else b"") + payload
    return packet(0x30 | (qos << 1), body)


def payload(i: int, seq: int) -> bytes:
    t = 15.0 + (i * 7 % 1000) / 100
    h = 30 + i % 50
    p = 990.0 + (i * 13 % 400) / 10
    on = "true" if i % 2 else "false"
    return (f'{{"seq":{seq},"temperature":{t:.2f},"humidity":{h},"pressure":{p:.1f},"on":{on}}}').encode()


class Reader(threading.Thread):
    """Reads the broker's packets: counts PUBACKs, notes the CONNACK."""

    def __init__(self, sock: socket.socket):
        super().__init__(daemon=True)
        self.sock = sock
        self.cond = threading.Condition()
        self.acks = 0
        self.acked: set[int] = set()
        self.watch: int | None = None
        self.connack: int | None = None
        self.closed = False

    def run(self) -> None:
        buf = b""
        try:
            while True:
                data = self.sock.recv(1 << 16)
                if not data:
                    break
                buf += data
                pos, n = 0, len(buf)
                acks, seen = 0, None
                while pos + 2 <= n:
                    kind = buf[pos]
                    # remaining length
                    length, mult, k = 0, 1, pos + 1
                    while k < n:
                        b = buf[k]
                        length += (b & 0x7F) * mult
                        mult *= 128
                        k += 1
                        if not b & 0x80:
                            break
                    else:
                        break
                    if k + length > n:
                        break
                    body = buf[k:k + length]
                    if kind == 0x40:  # PUBACK
                        acks += 1
                        pid = int.from_bytes(body[:2], "big")
                        if pid == self.watch:
                            seen = pid
                    elif kind == 0x20:  # CONNACK
                        with self.cond:
                            self.connack = body[1] if len(body) > 1 else 255
                            self.cond.notify_all()
                    pos = k + length
                buf = buf[pos:]
                if acks or seen is not None:
                    with self.cond:
                        self.acks += acks
                        if seen is not None:
                            self.acked.add(seen)
                        self.cond.notify_all()
        except OSError:
            pass
        finally:
            with self.cond:
                self.closed = True
                self.cond.notify_all()

    def wait(self, pred, what: str, timeout: float = 300.0) -> None:
        deadline = time.monotonic() + timeout
        with self.cond:
            while not pred():
                if self.closed:
                    raise SystemExit(f"mqtt_flood: connection closed waiting for {what}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise SystemExit(f"mqtt_flood: timed out waiting for {what}")
                self.cond.wait(min(left, 0.5))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--qos", type=int, choices=(0, 1), default=0)
    ap.add_argument("--topic", required=True, help="topic with one {} for the device index, e.g. bench/d{:04d}/state")
    ap.add_argument("--devices", type=int, required=True)
    ap.add_argument("--messages", type=int, required=True)
    ap.add_argument("--seq0", type=int, default=0)
    ap.add_argument("--window", type=int, default=1000, help="QoS 1: unacknowledged messages at most")
    ap.add_argument("--sentinel-topic", required=True)
    ap.add_argument("--sentinel-payload", required=True)
    ap.add_argument("--client-id", default=f"bench-flood-{os.getpid()}")
    args = ap.parse_args()

    q = args.qos
    topics = [args.topic.format(d) for d in range(args.devices)]
    packets = [publish_packet(topics[i % args.devices], payload(i, args.seq0 + i // args.devices), q,
                              (i % 65535) + 1 if q else 0)
               for i in range(args.messages)]
    # send in chunks: at QoS 1 each chunk waits for room in the window
    chunk = 200 if q else 2000
    chunks = [b"".join(packets[i:i + chunk]) for i in range(0, len(packets), chunk)]
    counts = [len(packets[i:i + chunk]) for i in range(0, len(packets), chunk)]
    del packets

    sock = socket.create_connection((args.host, args.port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    reader = Reader(sock)
    reader.start()
    sock.sendall(connect_packet(args.client_id))
    reader.wait(lambda: reader.connack is not None, "CONNACK", 10)
    if reader.connack != 0:
        raise SystemExit(f"mqtt_flood: connection refused ({reader.connack})")
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        return 1
    t0 = time.monotonic()
    sent = 0
    for data, n in zip(chunks, counts):
        if q:
            need = sent + n - args.window
            if need > 0:
                reader.wait(lambda: reader.acks >= need, "PUBACKs")
        sock.sendall(data)
        sent += n
    if q:
        reader.wait(lambda: reader.acks >= sent, "the last PUBACKs")
    # The sentinel: QoS 1 on this connection, after everything else. Its PUBACK means the
    # broker has routed every message before it (it handles a connection's packets in
    # order), and a subscriber gets it after them.
    sentinel_id = 1  # free: at QoS 1 every earlier id has been acknowledged
    reader.watch = sentinel_id
    sock.sendall(publish_packet(args.sentinel_topic, args.sentinel_payload.encode(), 1, sentinel_id))
    reader.wait(lambda: sentinel_id in reader.acked, "the sentinel's PUBACK")
    elapsed = time.monotonic() - t0
    cpu = time.process_time()
    print(f"done elapsed={elapsed:.6f} cpu={cpu:.6f} acks={reader.acks}", flush=True)
    sys.stdin.read()
    try:
        sock.sendall(b"\xe0\x00")  # DISCONNECT
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
