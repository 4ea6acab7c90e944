"""A c2s flooder in a process of its own: logs in on a plain socket (SASL PLAIN, bind),
writes the stanzas of a file as fast as the socket takes them, and reads everything back
unparsed. A process of its own, so that neither its writing nor the reading of 10,000
answers competes with the measuring client for the interpreter.

    python flooder.py PORT USER PASSWORD STANZA_FILE

Prints `ready` once logged in, waits for a line on stdin, floods, prints `sent`, then
reads until stdin closes and prints `received <n>` (iq answers counted).
"""

from __future__ import annotations

import base64
import socket
import sys
import threading


def until(sock: socket.socket, buf: bytes, marker: bytes) -> bytes:
    while marker not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise SystemExit(f"stream closed waiting for {marker!r}: {buf[-300:]!r}")
        buf += chunk
    return buf[buf.index(marker) + len(marker):]


def main() -> None:
    port, user, password, path = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
    sock = socket.create_connection(("127.0.0.1", int(port)), timeout=10)
    header = ("<?xml version='1.0'?><stream:stream to='example.test' version='1.0' "
              "xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>").encode()
    sock.sendall(header)
    buf = until(sock, b"", b"</stream:features>")
    token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
    sock.sendall(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{token}</auth>".encode())
    buf = until(sock, buf, b"<success")
    sock.sendall(header)
    buf = until(sock, buf, b"</stream:features>")
    sock.sendall(b"<iq type='set' id='bind'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
                 b"<resource>flood</resource></bind></iq>")
    until(sock, buf, b"</iq>")
    sock.settimeout(None)
    received = 0

    def drain() -> None:
        nonlocal received
        try:
            while chunk := sock.recv(1 << 20):
                received += chunk.count(b"<iq ")
        except OSError:
            pass

    threading.Thread(target=drain, daemon=True).start()
    with open(path, "rb") as f:
        batches = f.read().split(b"\n")
    print("ready", flush=True)
    sys.stdin.readline()
    for b in batches:
        sock.sendall(b)
    print("sent", flush=True)
    sys.stdin.read()
    print(f"received {received}", flush=True)
    try:
        sock.sendall(b"</stream:stream>")
    except OSError:
        pass
    sock.close()


if __name__ == "__main__":
    main()
