//! A CoAP server for benchmarks (tests/bench/bench_coap.py): `--ports` UDP sockets, each
//! an independent server with `--resources` resources `/r/0` … `/r/<N-1>` and a probe
//! resource `/lat`, every one answering GET with a small JSON document (Content-Format
//! 50), observable (RFC 7641), with notifications at a configured rate, and an optional
//! share of datagrams dropped each way from a seeded RNG.
//!
//! ```text
//! cargo build --release -p fieldgate-coap --example bench_server
//! target/release/examples/bench_server --resources 1000 --notify-rate 10000
//! ```
//!
//! The payload of every resource is `{"v":<n>,"ts":<µs>}`: `n` counts the representations
//! of that resource sent so far (each GET answer and each notification a new one, so
//! every read changes the value), `ts` is the wall clock (µs since the Unix epoch) when
//! the datagram was built, so a reader on the same machine can tell how old a value is.
//!
//! Requests are decoded with coap-lite; answers and notifications are encoded by hand
//! into a reused buffer (a few options, no allocation), so the server stays far below the
//! gateway's cost per message. One thread (a current-thread tokio runtime) serves every
//! socket; sockets have 4 MiB buffers, and incoming datagrams are taken between every 16
//! notifications sent, so that the gateway's ACKs are not lost to a full queue here.
//!
//! - GET (CON or NON) of a known resource: 2.05 with the payload, piggybacked in the ACK
//!   of a CON, a NON answer to a NON. A retransmitted request is answered again (GET is
//!   safe; no duplicate detection needed). Unknown path: 4.04; other methods: 4.05.
//! - GET with Observe = 0: the sender (address, token) becomes the resource's observer (one
//!   per resource; a new registration replaces the old) and the answer carries Observe.
//!   Observe = 1 deregisters. A Reset to a notification deregisters too.
//! - Notifications: `--notify-rate` per second per port in total, round-robin over the
//!   observed `/r/<i>` (so 10,000/s over 1,000 observed resources is 10/s each), spread
//!   over 1 ms ticks; `/lat` is notified `--probe-rate` times per second on its own.
//!   `--notify-type con` (default) sends them confirmable and counts the ACKs that come
//!   back (no retransmission: the next notification supersedes an unacknowledged one);
//!   `non` sends them non-confirmable. A line `rate R` on standard input sets a new
//!   `--notify-rate` (for a server started with one above 0).
//! - A CoAP ping (empty CON) is answered with RST.
//! - `--drop-in P` / `--drop-out P`: each received / sent datagram is dropped with
//!   probability P (StdRng seeded with `--seed` + port index), before any processing / in
//!   place of sending. Dropped datagrams are still seen by the exchange record below.
//! - `--exchanges`: every confirmable request (peer, message id) is followed from its
//!   first transmission seen: it completes when an answer to it is sent and not dropped
//!   (on loopback the client then has it), and fails when `--give-up-after` transmissions
//!   (5: MAX_RETRANSMIT 4 + 1) came and none was answered. One line each, `start` in
//!   seconds since the server started, `retx_at` the seconds from the first transmission
//!   to each retransmission (`-` for none):
//!   `exchange port=I mid=M start=S tx=N retx_at=A,B,… outcome=ok latency=S` or
//!   `… outcome=failed`.
//!
//! Standard output, one line each, `key=value` fields:
//!
//! ```text
//! listening port_index=0 address=127.0.0.1:40123     (one per port, before `ready`)
//! ready ports=1 resources=1000
//! stats t=1.000 requests=… gets=… not_found=… observe_registrations=… observers=…
//!       notifications=… notify_acks=… notify_rsts=… pings=… dropped_in=… dropped_out=…
//!       malformed=… exchanges_ok=… exchanges_failed=… exchanges_open=… late_transmissions=…
//!       send_errors=…
//! final t=… …                                         (on SIGTERM / SIGINT, then exit 0)
//! ```
//!
//! `stats` lines (every `--report` seconds, 0 = never) carry cumulative totals since start;
//! `t` is seconds since start. Counters count datagrams that were not dropped on the way
//! in (`requests`, `gets`, …) or on the way out (`notifications`).
//!
//! Options: `--host H` (127.0.0.1), `--port P` (first port; 0 = ephemeral, the default),
//! `--ports N` (1), `--resources N` (1000), `--notify-rate R` (0), `--notify-type con|non`,
//! `--probe-rate R` (0), `--max-age S` (60; sent with every 2.05), `--drop-in P`,
//! `--drop-out P` (0), `--seed S` (1), `--exchanges`, `--give-up-after N` (5),
//! `--report S` (1, fractions allowed).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use coap_lite::{CoapOption, MessageClass, MessageType, Packet, RequestType};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use tokio::net::UdpSocket;

#[derive(Debug, Clone)]
struct Options {
    host: String,
    port: u16,
    ports: usize,
    resources: usize,
    notify_rate: f64,
    notify_con: bool,
    probe_rate: f64,
    max_age: u32,
    drop_in: f64,
    drop_out: f64,
    seed: u64,
    exchanges: bool,
    give_up_after: u32,
    report: f64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            host: "127.0.0.1".into(),
            port: 0,
            ports: 1,
            resources: 1000,
            notify_rate: 0.0,
            notify_con: true,
            probe_rate: 0.0,
            max_age: 60,
            drop_in: 0.0,
            drop_out: 0.0,
            seed: 1,
            exchanges: false,
            give_up_after: 5,
            report: 1.0,
        }
    }
}

fn parse_args() -> Result<Options, String> {
    let mut o = Options::default();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--exchanges" => {
                o.exchanges = true;
                continue;
            }
            "-h" | "--help" => return Err(String::new()),
            _ => {}
        }
        let v = args.next().ok_or_else(|| format!("{a} needs a value"))?;
        let bad = |e: &dyn std::fmt::Display| format!("{a} {v}: {e}");
        match a.as_str() {
            "--host" => o.host = v,
            "--port" => o.port = v.parse().map_err(|e| bad(&e))?,
            "--ports" => o.ports = v.parse().map_err(|e| bad(&e))?,
            "--resources" => o.resources = v.parse().map_err(|e| bad(&e))?,
            "--notify-rate" => o.notify_rate = v.parse().map_err(|e| bad(&e))?,
            "--notify-type" => {
                o.notify_con = match v.as_str() {
                    "con" => true,
                    "non" => false,
                    _ => return Err(bad(&"con or non")),
                }
            }
            "--probe-rate" => o.probe_rate = v.parse().map_err(|e| bad(&e))?,
            "--max-age" => o.max_age = v.parse().map_err(|e| bad(&e))?,
            "--drop-in" => o.drop_in = v.parse().map_err(|e| bad(&e))?,
            "--drop-out" => o.drop_out = v.parse().map_err(|e| bad(&e))?,
            "--seed" => o.seed = v.parse().map_err(|e| bad(&e))?,
            "--give-up-after" => o.give_up_after = v.parse().map_err(|e| bad(&e))?,
            "--report" => o.report = v.parse().map_err(|e| bad(&e))?,
            _ => return Err(format!("unknown option {a}")),
        }
    }
    if o.ports == 0 {
        return Err("--ports must be at least 1".into());
    }
    for (name, p) in [("--drop-in", o.drop_in), ("--drop-out", o.drop_out)] {
        if !(0.0..1.0).contains(&p) {
            return Err(format!("{name} is a probability in [0, 1)"));
        }
    }
    if o.notify_rate < 0.0 || o.probe_rate < 0.0 {
        return Err("rates are not negative".into());
    }
    if o.port != 0 && usize::from(o.port) + o.ports > 65536 {
        return Err("--port + --ports must not exceed 65536".into());
    }
    Ok(o)
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    gets: AtomicU64,
    not_found: AtomicU64,
    observe_registrations: AtomicU64,
    observers: AtomicU64,
    notifications: AtomicU64,
    notify_acks: AtomicU64,
    notify_rsts: AtomicU64,
    pings: AtomicU64,
    dropped_in: AtomicU64,
    dropped_out: AtomicU64,
    malformed: AtomicU64,
    exchanges_ok: AtomicU64,
    exchanges_failed: AtomicU64,
    exchanges_open: AtomicU64,
    late_transmissions: AtomicU64,
    send_errors: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl Counters {
    fn line(&self, what: &str, start: Instant) -> String {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        format!(
            "{what} t={:.3} requests={} gets={} not_found={} observe_registrations={} observers={} \
             notifications={} notify_acks={} notify_rsts={} pings={} dropped_in={} dropped_out={} \
             malformed={} exchanges_ok={} exchanges_failed={} exchanges_open={} late_transmissions={} send_errors={}",
            start.elapsed().as_secs_f64(),
            g(&self.requests),
            g(&self.gets),
            g(&self.not_found),
            g(&self.observe_registrations),
            g(&self.observers),
            g(&self.notifications),
            g(&self.notify_acks),
            g(&self.notify_rsts),
            g(&self.pings),
            g(&self.dropped_in),
            g(&self.dropped_out),
            g(&self.malformed),
            g(&self.exchanges_ok),
            g(&self.exchanges_failed),
            g(&self.exchanges_open),
            g(&self.late_transmissions),
            g(&self.send_errors),
        )
    }
}

// ---------------------------------------------------------------------------------------
// encoding (RFC 7252 §3), by hand

const CON: u8 = 0;
const NON: u8 = 1;
const ACK: u8 = 2;
const RST: u8 = 3;
const CONTENT: u8 = 0x45; // 2.05
const NOT_FOUND: u8 = 0x84; // 4.04
const NOT_ALLOWED: u8 = 0x85; // 4.05
const BAD_REQUEST: u8 = 0x80; // 4.00
const OPT_OBSERVE: u16 = 6;
const OPT_CONTENT_FORMAT: u16 = 12;
const OPT_MAX_AGE: u16 = 14;
const JSON: u32 = 50;

fn uint_bytes(v: u32) -> ([u8; 4], usize) {
    let b = v.to_be_bytes();
    let skip = b.iter().take_while(|x| **x == 0).count();
    let mut out = [0u8; 4];
    out[..4 - skip].copy_from_slice(&b[skip..]);
    (out, 4 - skip)
}

fn nibble(v: u16) -> (u8, Option<u8>, Option<u16>) {
    match v {
        0..=12 => (v as u8, None, None),
        13..=268 => (13, Some((v - 13) as u8), None),
        _ => (14, None, Some(v - 269)),
    }
}

/// Appends one option (delta from the previous option number).
fn put_option(out: &mut Vec<u8>, last: &mut u16, number: u16, value: &[u8]) {
    let (d, d1, d2) = nibble(number - *last);
    let (l, l1, l2) = nibble(value.len() as u16);
    out.push(d << 4 | l);
    for (b, w) in [(d1, d2), (l1, l2)] {
        if let Some(b) = b {
            out.push(b);
        }
        if let Some(w) = w {
            out.extend_from_slice(&w.to_be_bytes());
        }
    }
    out.extend_from_slice(value);
    *last = number;
}

/// A message with the options a 2.05 of ours can carry.
#[allow(clippy::too_many_arguments)]
fn encode(
    out: &mut Vec<u8>,
    mtype: u8,
    code: u8,
    mid: u16,
    token: &[u8],
    observe: Option<u32>,
    content_format: Option<u32>,
    max_age: Option<u32>,
    payload: &[u8],
) {
    out.clear();
    out.push(0x40 | mtype << 4 | token.len() as u8);
    out.push(code);
    out.extend_from_slice(&mid.to_be_bytes());
    out.extend_from_slice(token);
    let mut last = 0;
    for (n, v) in [
        (OPT_OBSERVE, observe),
        (OPT_CONTENT_FORMAT, content_format),
        (OPT_MAX_AGE, max_age),
    ] {
        if let Some(v) = v {
            let (b, len) = uint_bytes(v);
            put_option(out, &mut last, n, &b[..len]);
        }
    }
    if !payload.is_empty() {
        out.push(0xff);
        out.extend_from_slice(payload);
    }
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// `{"v":n,"ts":µs}` into `out`.
fn payload(out: &mut Vec<u8>, n: u64) {
    use std::io::Write;
    out.clear();
    let _ = write!(out, "{{\"v\":{n},\"ts\":{}}}", now_us());
}

// ---------------------------------------------------------------------------------------
// one port: one server

#[derive(Clone, Copy)]
struct Observer {
    peer: SocketAddr,
    token: [u8; 8],
    tkl: u8,
    seq: u32,
}

impl Observer {
    fn token(&self) -> &[u8] {
        &self.token[..usize::from(self.tkl)]
    }
}

#[derive(Default)]
struct Resource {
    reads: u64,
    observer: Option<Observer>,
}

/// One confirmable request followed from its first transmission (`--exchanges`).
struct Track {
    first: Instant,
    tx: u32,
    done: bool,
    /// Seconds from the first transmission to each later one.
    at: Vec<f64>,
}

struct Server {
    index: usize,
    /// Notifications per second (f64 bits), changed with `rate R` on standard input.
    rate: Arc<AtomicU64>,
    sock: UdpSocket,
    opts: Rc<Options>,
    counters: Arc<Counters>,
    start: Instant,
    /// `/r/0` … `/r/<N-1>`, then `/lat`.
    resources: Vec<Resource>,
    observed: usize,
    cursor: usize,
    next_mid: u16,
    rng: StdRng,
    /// Outstanding confirmable notifications: message id → resource.
    notified: HashMap<u16, usize>,
    tracks: HashMap<(SocketAddr, u16), Track>,
    out: Vec<u8>,
    body: Vec<u8>,
}

enum Path {
    Resource(usize),
    Unknown,
}

impl Server {
    fn probe(&self) -> usize {
        self.opts.resources
    }

    fn path(&self, p: &Packet) -> Path {
        let Some(segs) = p.get_option(CoapOption::UriPath) else {
            return Path::Unknown;
        };
        let mut it = segs.iter();
        match (it.next().map(Vec::as_slice), it.next(), it.next()) {
            (Some(b"lat"), None, None) => Path::Resource(self.probe()),
            (Some(b"r"), Some(n), None) => std::str::from_utf8(n)
                .ok()
                .and_then(|s| s.parse::<usize>().ok())
                .filter(|i| *i < self.opts.resources)
                .map_or(Path::Unknown, Path::Resource),
            _ => Path::Unknown,
        }
    }

    fn mid(&mut self) -> u16 {
        self.next_mid = self.next_mid.wrapping_add(1);
        self.next_mid
    }

    /// Sends `self.out` unless the drop rule says otherwise; whether it went.
    fn send(&mut self, peer: SocketAddr) -> bool {
        if self.opts.drop_out > 0.0 && self.rng.random_bool(self.opts.drop_out) {
            bump(&self.counters.dropped_out);
            return false;
        }
        // Never waits: on loopback a datagram is handed to the receiver's queue at once
        // (and dropped there if it is full); the send buffer is 4 MiB besides.
        if self.sock.try_send_to(&self.out, peer).is_err() {
            bump(&self.counters.send_errors);
            return false;
        }
        true
    }

    /// Takes up to `max` datagrams that are waiting, without waiting for more.
    fn drain(&mut self, buf: &mut [u8], max: usize) {
        for _ in 0..max {
            match self.sock.try_recv_from(buf) {
                Ok((n, peer)) => self.on_datagram(peer, &buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                // ICMP errors (port unreachable) surface here; none is fatal.
                Err(_) => {}
            }
        }
    }

    /// Notes a transmission of a confirmable request (before the drop rule).
    fn track_transmission(&mut self, peer: SocketAddr, mid: u16) {
        let now = Instant::now();
        let fresh = || Track {
            first: now,
            tx: 0,
            done: false,
            at: Vec::new(),
        };
        let t = self.tracks.entry((peer, mid)).or_insert_with(|| {
            bump(&self.counters.exchanges_open);
            fresh()
        });
        if t.done && now.duration_since(t.first) > Duration::from_secs(300) {
            // The message id came round again: a new exchange.
            *t = fresh();
            bump(&self.counters.exchanges_open);
        }
        if t.done {
            bump(&self.counters.late_transmissions);
        }
        if t.tx > 0 {
            t.at.push(now.duration_since(t.first).as_secs_f64());
        }
        t.tx += 1;
    }

    /// Records the outcome of the transmission just tracked: answered (and the answer not
    /// dropped) or not.
    fn track_outcome(&mut self, peer: SocketAddr, mid: u16, answered: bool) {
        let Some(t) = self.tracks.get_mut(&(peer, mid)) else {
            return;
        };
        if t.done {
            return;
        }
        let start = t.first.duration_since(self.start).as_secs_f64();
        let retx: Vec<String> = t.at.iter().map(|a| format!("{a:.3}")).collect();
        let retx = if retx.is_empty() {
            "-".to_string()
        } else {
            retx.join(",")
        };
        if answered {
            t.done = true;
            self.counters.exchanges_open.fetch_sub(1, Ordering::Relaxed);
            bump(&self.counters.exchanges_ok);
            println!(
                "exchange port={} mid={mid} start={start:.6} tx={} retx_at={retx} outcome=ok latency={:.6}",
                self.index,
                t.tx,
                t.first.elapsed().as_secs_f64()
            );
        } else if t.tx >= self.opts.give_up_after {
            t.done = true;
            self.counters.exchanges_open.fetch_sub(1, Ordering::Relaxed);
            bump(&self.counters.exchanges_failed);
            println!(
                "exchange port={} mid={mid} start={start:.6} tx={} retx_at={retx} outcome=failed",
                self.index, t.tx
            );
        }
    }

    fn on_datagram(&mut self, peer: SocketAddr, buf: &[u8]) {
        let track = self.opts.exchanges
            && buf.len() >= 4
            && buf[0] >> 6 == 1
            && (buf[0] >> 4) & 3 == CON
            && buf[1] != 0
            && buf[1] >> 5 == 0;
        let mid_raw = if buf.len() >= 4 {
            u16::from_be_bytes([buf[2], buf[3]])
        } else {
            0
        };
        if track {
            self.track_transmission(peer, mid_raw);
        }
        if self.opts.drop_in > 0.0 && self.rng.random_bool(self.opts.drop_in) {
            bump(&self.counters.dropped_in);
            if track {
                self.track_outcome(peer, mid_raw, false);
            }
            return;
        }
        let answered = self.handle(peer, buf);
        if track {
            self.track_outcome(peer, mid_raw, answered);
        }
    }

    /// Handles a datagram that was not dropped; whether an answer went out.
    fn handle(&mut self, peer: SocketAddr, buf: &[u8]) -> bool {
        let p = match Packet::from_bytes(buf) {
            Ok(p) => p,
            Err(_) => {
                bump(&self.counters.malformed);
                return false;
            }
        };
        let mid = p.header.message_id;
        let mtype = p.header.get_type();
        match (mtype, p.header.code) {
            (MessageType::Acknowledgement, MessageClass::Empty) => {
                if self.notified.remove(&mid).is_some() {
                    bump(&self.counters.notify_acks);
                }
                false
            }
            (MessageType::Reset, MessageClass::Empty) => {
                if let Some(r) = self.notified.remove(&mid) {
                    bump(&self.counters.notify_rsts);
                    if self.resources[r].observer.take().is_some() {
                        self.observed -= 1;
                        self.counters.observers.fetch_sub(1, Ordering::Relaxed);
                    }
                }
                false
            }
            (MessageType::Confirmable, MessageClass::Empty) => {
                bump(&self.counters.pings);
                encode(&mut self.out, RST, 0, mid, &[], None, None, None, &[]);
                self.send(peer)
            }
            (MessageType::Confirmable | MessageType::NonConfirmable, MessageClass::Request(m)) => {
                bump(&self.counters.requests);
                let con = mtype == MessageType::Confirmable;
                let (atype, amid) = if con { (ACK, mid) } else { (NON, self.mid()) };
                let token = p.get_token().to_vec();
                if m != RequestType::Get {
                    encode(
                        &mut self.out,
                        atype,
                        NOT_ALLOWED,
                        amid,
                        &token,
                        None,
                        None,
                        None,
                        &[],
                    );
                    return self.send(peer);
                }
                bump(&self.counters.gets);
                let Path::Resource(r) = self.path(&p) else {
                    bump(&self.counters.not_found);
                    encode(
                        &mut self.out,
                        atype,
                        NOT_FOUND,
                        amid,
                        &token,
                        None,
                        None,
                        None,
                        &[],
                    );
                    return self.send(peer);
                };
                let observe = match p.get_observe_value() {
                    None => None,
                    Some(Ok(v)) => Some(v),
                    Some(Err(_)) => {
                        encode(
                            &mut self.out,
                            atype,
                            BAD_REQUEST,
                            amid,
                            &token,
                            None,
                            None,
                            None,
                            &[],
                        );
                        return self.send(peer);
                    }
                };
                let res = &mut self.resources[r];
                let mut seq = None;
                match observe {
                    Some(0) if token.len() <= 8 => {
                        let mut t = [0u8; 8];
                        t[..token.len()].copy_from_slice(&token);
                        let had = res.observer.is_some();
                        let s = res
                            .observer
                            .map_or(1, |o| o.seq.wrapping_add(1) & 0xff_ffff);
                        res.observer = Some(Observer {
                            peer,
                            token: t,
                            tkl: token.len() as u8,
                            seq: s,
                        });
                        seq = Some(s);
                        bump(&self.counters.observe_registrations);
                        if !had {
                            self.observed += 1;
                            self.counters.observers.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Some(1) if res.observer.take().is_some() => {
                        self.observed -= 1;
                        self.counters.observers.fetch_sub(1, Ordering::Relaxed);
                    }
                    _ => {}
                }
                res.reads += 1;
                let n = res.reads;
                payload(&mut self.body, n);
                encode(
                    &mut self.out,
                    atype,
                    CONTENT,
                    amid,
                    &token,
                    seq,
                    Some(JSON),
                    Some(self.opts.max_age),
                    &self.body,
                );
                self.send(peer)
            }
            _ => {
                // Responses, and ACK/RST with content: nothing a server expects.
                bump(&self.counters.malformed);
                false
            }
        }
    }

    /// One notification of resource `r` to its observer, if it has one.
    fn notify(&mut self, r: usize) {
        let Some(o) = self.resources[r].observer.as_mut() else {
            return;
        };
        o.seq = o.seq.wrapping_add(1) & 0xff_ffff;
        let o = *o;
        self.resources[r].reads += 1;
        let n = self.resources[r].reads;
        let mid = self.mid();
        payload(&mut self.body, n);
        let mtype = if self.opts.notify_con { CON } else { NON };
        encode(
            &mut self.out,
            mtype,
            CONTENT,
            mid,
            o.token(),
            Some(o.seq),
            Some(JSON),
            Some(self.opts.max_age),
            &self.body,
        );
        if self.send(o.peer) {
            bump(&self.counters.notifications);
            if self.opts.notify_con {
                self.notified.insert(mid, r);
            }
        }
    }

    /// `n` notifications, round-robin over the observed `/r/<i>`; what came in meanwhile
    /// is taken every 16 (the ACKs must not overflow the socket's queue).
    fn notify_round(&mut self, n: u64, buf: &mut [u8]) {
        let total = self.opts.resources;
        for i in 0..n {
            if i % 16 == 15 {
                self.drain(buf, 64);
            }
            if self.observed == 0
                || (self.observed == 1 && self.resources[self.probe()].observer.is_some())
            {
                return;
            }
            // at most one lap to find the next observed resource
            for _ in 0..total {
                let r = self.cursor;
                self.cursor = (self.cursor + 1) % total;
                if self.resources[r].observer.is_some() {
                    self.notify(r);
                    break;
                }
            }
        }
    }
}

async fn serve(mut s: Server) {
    let mut buf = vec![0u8; 65_536];
    let tick = Duration::from_millis(1);
    let mut notify_iv = tokio::time::interval(tick);
    notify_iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let probe_every = if s.opts.probe_rate > 0.0 {
        Duration::from_secs_f64(1.0 / s.opts.probe_rate)
    } else {
        Duration::from_secs(3600)
    };
    let mut probe_iv = tokio::time::interval(probe_every);
    probe_iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // No 1 ms ticker on a server started without notifications (the loss phase runs 200).
    let notifying = s.opts.notify_rate > 0.0;
    let mut owed = 0.0f64;
    let mut last = Instant::now();
    loop {
        tokio::select! {
            r = s.sock.readable() => {
                if r.is_ok() {
                    s.drain(&mut buf, 1024);
                }
            }
            _ = notify_iv.tick(), if notifying => {
                let rate = f64::from_bits(s.rate.load(Ordering::Relaxed));
                let now = Instant::now();
                owed += rate * now.duration_since(last).as_secs_f64();
                last = now;
                if s.observed == 0 {
                    owed = 0.0;
                }
                // never more than 20 ms' worth at once
                owed = owed.min(rate * 0.02 + 1.0);
                let n = owed.floor();
                owed -= n;
                s.notify_round(n as u64, &mut buf);
            }
            _ = probe_iv.tick(), if s.opts.probe_rate > 0.0 => {
                let p = s.probe();
                s.notify(p);
            }
        }
    }
}

/// A UDP socket with 4 MiB buffers each way (as far as net.core.rmem_max / wmem_max
/// allow): the ACKs of thousands of notifications a second must not overflow its queue
/// while the thread is busy sending, or be counted as notifications not handled.
fn bind(host: &str, port: u16) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let addr: SocketAddr = format!("{host}:{port}")
        .parse()
        .or_else(|_| format!("[{host}]:{port}").parse())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    let _ = s.set_recv_buffer_size(4 << 20);
    let _ = s.set_send_buffer_size(4 << 20);
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    UdpSocket::from_std(s.into())
}

async fn run(o: Options) -> std::io::Result<()> {
    let start = Instant::now();
    let counters = Arc::new(Counters::default());
    let opts = Rc::new(o.clone());
    let rate = Arc::new(AtomicU64::new(o.notify_rate.to_bits()));
    {
        // `rate R` lines on standard input change the notification rate.
        let rate = rate.clone();
        std::thread::spawn(move || {
            for line in std::io::stdin().lines() {
                let Ok(line) = line else { break };
                let mut w = line.split_whitespace();
                match (w.next(), w.next().map(str::parse::<f64>)) {
                    (Some("rate"), Some(Ok(r))) if r >= 0.0 => {
                        rate.store(r.to_bits(), Ordering::Relaxed);
                        println!("rate {r}");
                    }
                    _ => eprintln!("bench_server: unknown command {line:?}"),
                }
            }
        });
    }
    let local = tokio::task::LocalSet::new();
    for i in 0..o.ports {
        let port = if o.port == 0 { 0 } else { o.port + i as u16 };
        let sock = bind(&o.host, port)?;
        println!("listening port_index={i} address={}", sock.local_addr()?);
        let s = Server {
            index: i,
            rate: rate.clone(),
            sock,
            opts: opts.clone(),
            counters: counters.clone(),
            start,
            resources: (0..=o.resources).map(|_| Resource::default()).collect(),
            observed: 0,
            cursor: 0,
            next_mid: (i as u16).wrapping_mul(7919),
            rng: StdRng::seed_from_u64(o.seed.wrapping_add(i as u64)),
            notified: HashMap::new(),
            tracks: HashMap::new(),
            out: Vec::with_capacity(256),
            body: Vec::with_capacity(64),
        };
        local.spawn_local(serve(s));
    }
    println!("ready ports={} resources={}", o.ports, o.resources);
    if o.report > 0.0 {
        let c = counters.clone();
        let every = Duration::from_secs_f64(o.report);
        local.spawn_local(async move {
            let mut iv = tokio::time::interval(every);
            iv.tick().await;
            loop {
                iv.tick().await;
                println!("{}", c.line("stats", start));
            }
        });
    }
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    local
        .run_until(async {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        })
        .await;
    println!("{}", counters.line("final", start));
    Ok(())
}

fn main() {
    let o = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("bench_server: {e}");
            }
            eprintln!(
                "usage: bench_server [--host H] [--port P] [--ports N] [--resources N] \
                 [--notify-rate R] [--notify-type con|non] [--probe-rate R] [--max-age S] \
                 [--drop-in P] [--drop-out P] [--seed S] [--exchanges] [--give-up-after N] \
                 [--report SECONDS]"
            );
            std::process::exit(2);
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Err(e) = rt.block_on(run(o)) {
        eprintln!("bench_server: {e}");
        std::process::exit(1);
    }
}
