//! fieldgate-loadgen: many c2s sessions sending XEP-0199 pings or XEP-0323 readouts to one
//! JID, timing each request until it is complete, and printing `key: value` lines.
//!
//! A readout counts as done only when the iq result carrying `<accepted seqnr>` arrived AND a
//! `<fields seqnr done='true'>` message ended it with exactly `--fields` fields in all its
//! `<fields>` messages; anything else (iq error, `<failure>`, wrong field count, timeout,
//! disconnection) is a failure, counted and printed with its reason.
//!
//! Client: each session is a plain-TCP c2s stream (TCP_NODELAY) driven directly on
//! tokio-xmpp 6's `XmlStream` (the layer the gateway's component link uses too): stream
//! header, SASL through `tokio_xmpp::client_login` (the strongest mechanism the server offers, SCRAM
//! or PLAIN), stream restart, resource binding, then our own iq ids (`lg<seqnr>`, findable
//! in a server log) and raw `Element`s both ways; requests started together go out in one
//! flush. Not tokio-xmpp's `Client`: its event pipeline (StanzaStream worker → client worker
//! → event channel) lost every stanza of a session from some point on in about 1 of 80 short
//! sessions here, while the server's log shows the replies sent and the socket drained by
//! the client.
//!
//! Diagnostics go to stderr: every request that times out (mode, session JID, iq id, time
//! since the session's last reply), a write not flushed within 5 s, elements that answer
//! nothing of ours, a lost connection, and the libraries' warnings.
//!
//! Phases: the sessions connect once; then, for each target in `--target` (a comma list),
//! each mode in `--mode` (a comma list) runs for `--duration` or until `--count` requests
//! were started, all of it repeated `--rounds` times (interleaving ping and readout phases,
//! and the targets, in one run against drift). A phase stops starting requests at its end,
//! then waits for the ones in flight. Figures are printed per phase (`phaseN_*`) and per
//! target and mode over all its phases (`ping_*`, `readout_*`; `<label>_ping_*`, ... for a
//! target given as `label=JID`). Readouts
//! also report the two halves: request → iq result (`*_accepted_ms_*`) and request →
//! `<fields done='true'>` (`*_fields_ms_*`).

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::fs;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use sasl::common::{ChannelBinding, Credentials};
use tokio::io::BufStream;
use tokio::net::TcpStream;
use tokio_xmpp::jid::BareJid;
use tokio_xmpp::minidom::Element;
use tokio_xmpp::xmlstream::{
    initiate_stream, FallibleStreamElement, ReadError, StreamHeader, Timeouts, XmlStream,
};

use fieldgate_loadgen::{
    parse_duration, print_kv, Opts, NS_BIND, NS_CLIENT, NS_PING, NS_SENSORDATA, NS_STANZAS,
};

const USAGE: &str = "\
usage: fieldgate-loadgen --server HOST:PORT --user PATTERN --password PW
                         --target [LABEL=]JID[,..] [--mode ping|readout[,..]] [--rounds N]
                         [--concurrency N] [--inflight N] [--duration 10s] [--count N]
                         [--fields N] [--first N] [--warmup 2s] [--timeout 10s]
                         [--connect-parallel N] [--watch name:pid[,name:pid..]]
                         [--dump-fields FILE]

  --user PATTERN      account JIDs; `{}` is replaced by the session index
                      (--first, --first+1, ...), e.g. 'bench{}@example.test'
  --target JID        where the requests go (a device JID); a comma list runs the
                      --mode phases against each in turn; a target's figures are named
                      `<LABEL>_ping_*`, `<LABEL>_readout_*` (`ping_*`, ... without label)
  --mode              ping (XEP-0199) or readout (XEP-0323 momentary, all fields);
                      a comma list runs one phase per entry, repeated --rounds times
  --concurrency N     c2s sessions (default 1)
  --inflight N        requests each session keeps in flight (default 1, at most 64)
  --duration D        length of each phase (default 10s, or no limit with --count)
  --count N           requests per phase over all sessions; with --duration too, the
                      phase ends at whichever limit comes first
  --fields N          fields a complete readout must carry (default 10)
  --warmup D          before the phases, one unreported phase per mode of this length
  --timeout D         a request not complete after this is a failure (default 10s)
  --connect-parallel N  sessions logging in at once (default 8)
  --watch name:pid    report CPU seconds (utime+stime) per phase and VmHWM/VmRSS of
                      these processes, e.g. gateway:1234,prosody:5678
  --dump-fields FILE  write the first `<fields done='true'>` that holds a whole readout
                      (--fields fields) to FILE, as received (the ideal component's
                      template: fieldgate-null-component --fields-template)
";

// ---- command line -----------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Mode {
    Ping,
    Readout,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Ping => "ping",
            Mode::Readout => "readout",
        }
    }
}

/// One place requests go: a device JID, and the label its figures are named with.
#[derive(Clone, Debug)]
struct Target {
    /// `None`: figures named `ping_*`, `readout_*`; else `<label>_ping_*`, ...
    label: Option<String>,
    jid: BareJid,
}

impl Target {
    /// The name prefix of this target's figures in `mode`.
    fn key(&self, mode: Mode) -> String {
        match &self.label {
            Some(l) => format!("{l}_{}", mode.name()),
            None => mode.name().to_owned(),
        }
    }
}

#[derive(Clone)]
struct Args {
    server: String,
    user: String,
    password: String,
    targets: Vec<Target>,
    modes: Vec<Mode>,
    rounds: usize,
    concurrency: usize,
    inflight: usize,
    /// Phase length limit (`None`: --count only).
    duration: Option<Duration>,
    count: Option<u64>,
    fields: usize,
    first: usize,
    warmup: Duration,
    timeout: Duration,
    connect_parallel: usize,
    watch: Vec<(String, u32)>,
    dump_fields: Option<PathBuf>,
}

fn parse_target(s: &str) -> Result<Target, String> {
    let (label, jid) = match s.split_once('=') {
        Some((l, j)) => (Some(l.trim().to_owned()), j),
        None => (None, s),
    };
    if label
        .as_deref()
        .is_some_and(|l| l.is_empty() || !l.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
    {
        return Err(format!("--target: bad label in {s:?} (letters, digits, _)"));
    }
    let jid = jid
        .trim()
        .parse()
        .map_err(|e| format!("--target {s:?}: {e}"))?;
    Ok(Target { label, jid })
}

fn parse_args() -> Result<Args, String> {
    let mut o = Opts::from_env(USAGE)?;
    let server = o.need("server")?;
    let user = o.need("user")?;
    let password = o.need("password")?;
    let targets = o
        .need("target")?
        .split(',')
        .map(parse_target)
        .collect::<Result<Vec<_>, _>>()?;
    let mut labels: Vec<_> = targets.iter().map(|t| t.label.as_deref()).collect();
    labels.sort();
    labels.dedup();
    if labels.len() < targets.len() {
        return Err("--target: each target needs its own label (one may have none)".into());
    }
    let modes = o
        .take("mode")
        .unwrap_or_else(|| "ping".into())
        .split(',')
        .map(|m| match m.trim() {
            "ping" => Ok(Mode::Ping),
            "readout" => Ok(Mode::Readout),
            other => Err(format!("--mode: unknown mode {other:?}")),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let rounds = o.num("rounds", 1)?.max(1);
    let concurrency = o.num("concurrency", 1)?.max(1);
    let inflight = o.num("inflight", 1)?.clamp(1, 64);
    let duration = o.take("duration").map(|d| parse_duration(&d)).transpose()?;
    let count = o
        .take("count")
        .map(|s| {
            s.parse::<u64>()
                .map_err(|_| format!("--count: not a number: {s:?}"))
        })
        .transpose()?;
    let duration = match (duration, count) {
        (None, None) => Some(Duration::from_secs(10)),
        (d, _) => d,
    };
    let fields = o.num("fields", 10)?;
    let first = o.num("first", 0)?;
    let warmup = parse_duration(&o.take("warmup").unwrap_or_else(|| "0s".into()))?;
    let timeout = parse_duration(&o.take("timeout").unwrap_or_else(|| "10s".into()))?;
    let connect_parallel = o.num("connect-parallel", 8)?.max(1);
    let watch = o
        .take("watch")
        .unwrap_or_default()
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| {
            let (n, p) = s
                .split_once(':')
                .ok_or(format!("--watch: {s:?} is not name:pid"))?;
            Ok((
                n.to_owned(),
                p.parse()
                    .map_err(|_| format!("--watch: bad pid in {s:?}"))?,
            ))
        })
        .collect::<Result<Vec<_>, String>>()?;
    let dump_fields = o.take("dump-fields").map(PathBuf::from);
    o.finish()?;
    if !user.contains("{}") && concurrency > 1 {
        return Err("--user must contain {} when --concurrency > 1".into());
    }
    Ok(Args {
        server,
        user,
        password,
        targets,
        modes,
        rounds,
        concurrency,
        inflight,
        duration,
        count,
        fields,
        first,
        warmup,
        timeout,
        connect_parallel,
        watch,
        dump_fields,
    })
}

// ---- /proc ------------------------------------------------------------------------------

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Some(ticks as f64 / hz)
}

/// A `Vm*` line of /proc/<pid>/status, in kB.
fn vm_kb(pid: &str, key: &str) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// The watched processes plus ourselves.
fn watched(args: &Args) -> Vec<(String, String)> {
    let mut w: Vec<(String, String)> = args
        .watch
        .iter()
        .map(|(n, p)| (n.clone(), p.to_string()))
        .collect();
    w.push(("loadgen".into(), "self".into()));
    w
}

fn cpu_snapshot(w: &[(String, String)]) -> Vec<Option<f64>> {
    w.iter().map(|(_, p)| cpu_seconds(p)).collect()
}

// ---- library log lines ------------------------------------------------------------------

/// Prints the libraries' warnings (tokio-xmpp: a stanza it could not parse and dropped, a
/// stream error, a reconnect) on stderr: a lost reply must not go unexplained.
struct StderrLog;

impl log::Log for StderrLog {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= log::Level::Warn
    }

    fn log(&self, r: &log::Record) {
        if self.enabled(r.metadata()) {
            eprintln!("{} {}: {}", r.level(), r.target(), r.args());
        }
    }

    fn flush(&self) {}
}

// ---- connection -------------------------------------------------------------------------

/// One c2s session's XML stream, read as raw elements after login.
type Stream = XmlStream<BufStream<TcpStream>, Element>;

struct Session {
    index: usize,
    stream: Stream,
    /// Our full JID, as bound.
    jid: String,
    seqnr: u64,
    /// When the last reply of any kind arrived (diagnostics).
    last_reply: Option<Instant>,
    /// Why the session is unusable (connection lost), if it is.
    broken: Option<String>,
}

/// Plain TCP with TCP_NODELAY, stream header, SASL (tokio-xmpp's `client_login`: the strongest
/// mechanism the server offers, SCRAM or PLAIN), stream restart, resource binding.
async fn login(args: &Args, jid: &BareJid) -> Result<(Stream, String), String> {
    let timeouts = Timeouts {
        read_timeout: Duration::from_secs(300),
        response_timeout: Duration::from_secs(60),
    };
    let header = || StreamHeader {
        to: Some(Cow::Owned(jid.domain().to_string())),
        from: None,
        id: None,
    };
    let tcp = TcpStream::connect(&args.server)
        .await
        .map_err(|e| format!("connect {}: {e}", args.server))?;
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    let pending = initiate_stream(BufStream::new(tcp), NS_CLIENT, header(), timeouts)
        .await
        .map_err(|e| format!("stream header: {e}"))?;
    let (features, stream) = pending
        .recv_features::<FallibleStreamElement>()
        .await
        .map_err(|e| format!("stream features: {e}"))?;
    let creds = Credentials::default()
        .with_username(jid.node().map_or("", |n| n.as_str()))
        .with_password(args.password.clone())
        .with_channel_binding(ChannelBinding::None);
    let stream = tokio_xmpp::client_login(stream, features.sasl_mechanisms, creds)
        .await
        .map_err(|e| format!("authentication: {e} (wrong password or no such account?)"))?;
    let (_, mut stream) = stream
        .send_header(header())
        .await
        .map_err(|e| format!("stream restart: {e}"))?
        .recv_features::<Element>()
        .await
        .map_err(|e| format!("stream features after login: {e}"))?;
    let bind: Element =
        format!("<iq xmlns='{NS_CLIENT}' type='set' id='bind'><bind xmlns='{NS_BIND}'/></iq>")
            .parse()
            .expect("bind XML");
    stream.send(&bind).await.map_err(|e| format!("bind: {e}"))?;
    loop {
        match stream.next().await {
            Some(Ok(el)) if el.name() == "iq" && el.attr("id") == Some("bind") => {
                let full = el
                    .get_child("bind", NS_BIND)
                    .and_then(|b| b.get_child("jid", NS_BIND))
                    .map(|j| j.text())
                    .filter(|_| el.attr("type") == Some("result"))
                    .ok_or_else(|| format!("bind refused: {}", String::from(&el)))?;
                return Ok((stream, full));
            }
            Some(Ok(_)) | Some(Err(ReadError::SoftTimeout)) => continue,
            Some(Err(e)) => return Err(format!("bind: {e}")),
            None => return Err("bind: connection closed".into()),
        }
    }
}

async fn connect(args: &Args, index: usize) -> Result<Session, String> {
    let jid_text = args.user.replace("{}", &index.to_string());
    let jid: BareJid = jid_text.parse().map_err(|e| format!("{jid_text}: {e}"))?;
    let (stream, full) = tokio::time::timeout(Duration::from_secs(30), login(args, &jid))
        .await
        .map_err(|_| format!("{jid_text}: no session within 30 s"))?
        .map_err(|e| format!("{jid_text}: {e}"))?;
    Ok(Session {
        index,
        stream,
        jid: full,
        seqnr: 0,
        last_reply: None,
        broken: None,
    })
}

// ---- one phase in one session -----------------------------------------------------------

struct PhaseCtl {
    mode: Mode,
    /// Where requests go (a bare JID).
    target: String,
    inflight: usize,
    /// End of the phase (`None`: --count only).
    deadline: Option<Instant>,
    /// Requests still to start over all sessions (count mode), else `None`.
    remaining: Option<AtomicI64>,
    fields: usize,
    timeout: Duration,
    /// --dump-fields.
    dump_fields: Option<PathBuf>,
}

/// Whether --dump-fields was written (once per process).
static FIELDS_DUMPED: AtomicBool = AtomicBool::new(false);

impl PhaseCtl {
    fn may_start(&self) -> bool {
        self.deadline.is_none_or(|d| Instant::now() < d)
            && self
                .remaining
                .as_ref()
                .is_none_or(|r| r.fetch_sub(1, Ordering::Relaxed) > 0)
    }
}

#[derive(Default)]
struct Stats {
    started: u64,
    ok: u64,
    failed: u64,
    /// Replies to requests already given up (timed out).
    late: u64,
    /// Stanzas that are no reply to any request of ours.
    unexpected: u64,
    /// Microseconds, request sent → complete, of the successful requests.
    lat_us: Vec<u32>,
    /// Readouts: microseconds, request sent → iq result (`<accepted>`), of the successful ones.
    accepted_us: Vec<u32>,
    /// Readouts: microseconds, request sent → `<fields done='true'>`, of the successful ones.
    fields_us: Vec<u32>,
    /// Failure reason → count.
    reasons: BTreeMap<String, u64>,
    /// Time the last request of the phase completed (or failed).
    last_end: Option<Instant>,
}

impl Stats {
    fn fail(&mut self, why: impl Into<String>) {
        self.failed += 1;
        *self.reasons.entry(why.into()).or_default() += 1;
        self.last_end = Some(Instant::now());
    }

    fn ok(&mut self, started: Instant) {
        let now = Instant::now();
        self.ok += 1;
        self.lat_us.push(
            now.duration_since(started)
                .as_micros()
                .min(u32::MAX as u128) as u32,
        );
        self.last_end = Some(now);
    }

    fn readout_parts(&mut self, p: &Pending) {
        let us = |t: Option<Instant>| {
            t.map_or(0, |t| {
                t.duration_since(p.started)
                    .as_micros()
                    .min(u32::MAX as u128) as u32
            })
        };
        self.accepted_us.push(us(p.accepted_at));
        self.fields_us.push(us(p.done_at));
    }

    fn merge(&mut self, o: Stats) {
        self.started += o.started;
        self.ok += o.ok;
        self.failed += o.failed;
        self.late += o.late;
        self.unexpected += o.unexpected;
        self.lat_us.extend(o.lat_us);
        self.accepted_us.extend(o.accepted_us);
        self.fields_us.extend(o.fields_us);
        for (k, v) in o.reasons {
            *self.reasons.entry(k).or_default() += v;
        }
        self.last_end = self.last_end.max(o.last_end);
    }
}

/// One request in flight.
struct Pending {
    started: Instant,
    /// Readouts: the iq result with `<accepted>` arrived.
    accepted: bool,
    accepted_at: Option<Instant>,
    /// Readouts: when the `<fields done='true'>` arrived.
    done_at: Option<Instant>,
    /// Readouts: fields received so far.
    fields: usize,
    /// Readouts: a `<fields done='true'>` arrived.
    done: bool,
}

/// Longest wait for a request to be written to the socket (normally microseconds); a
/// longer one means the client's transmit path is stuck, reported apart from lost replies.
const SEND_TIMEOUT: Duration = Duration::from_secs(5);

/// Our iq ids: `lg<seqnr>` (unique per session), so a reply maps back to its request and a
/// request can be found in a server log by id.
fn iq_id(seqnr: u64) -> String {
    format!("lg{seqnr}")
}

fn seqnr_of(id: &str) -> Option<u64> {
    id.strip_prefix("lg")?.parse().ok()
}

/// The iq get of one request.
fn request(mode: Mode, target: &str, seqnr: u64) -> Element {
    let payload = match mode {
        Mode::Ping => format!("<ping xmlns='{NS_PING}'/>"),
        Mode::Readout => {
            format!("<req xmlns='{NS_SENSORDATA}' seqnr='{seqnr}' momentary='true'/>")
        }
    };
    format!(
        "<iq xmlns='{NS_CLIENT}' type='get' id='{}' to='{target}'>{payload}</iq>",
        iq_id(seqnr)
    )
    .parse()
    .expect("request XML")
}

/// Fields inside one `<fields>`: node → timestamp → field elements.
fn count_fields(fields: &Element) -> usize {
    fields
        .children()
        .filter(|n| n.name() == "node")
        .flat_map(|n| n.children().filter(|t| t.name() == "timestamp"))
        .map(|t| t.children().count())
        .sum()
}

/// --dump-fields: writes `fields` (a whole readout in one element) the first time.
fn dump_fields(ctl: &PhaseCtl, fields: &Element) {
    let Some(path) = &ctl.dump_fields else { return };
    if FIELDS_DUMPED.swap(true, Ordering::Relaxed) {
        return;
    }
    if let Err(e) = fs::write(path, String::from(fields)) {
        eprintln!("--dump-fields {}: {e}", path.display());
    }
}

/// `iq error <type>/<condition> (<text>)` of an error reply.
fn error_text(iq: &Element) -> String {
    let err = iq.get_child("error", NS_CLIENT);
    let kind = err.and_then(|e| e.attr("type")).unwrap_or("?");
    let mut s = format!("iq error {kind}/");
    let conditions = err
        .into_iter()
        .flat_map(|e| e.children())
        .filter(|c| c.ns() == NS_STANZAS);
    let mut text = None;
    for c in conditions {
        if c.name() == "text" {
            text = Some(c.text());
        } else {
            s.push_str(c.name());
        }
    }
    if let Some(t) = text {
        let _ = write!(s, " ({t})");
    }
    s
}

/// Runs one phase in one session: keeps `ctl.inflight` requests in flight until the phase
/// ends, then waits for them (or their timeout).
async fn run_phase(mut s: Session, ctl: Arc<PhaseCtl>) -> (Session, Stats) {
    let mut st = Stats::default();
    if s.broken.is_some() {
        return (s, st);
    }
    let mut pending: HashMap<u64, Pending> = HashMap::new();
    let expect = ctl.fields;

    // Ends a readout whose iq result and done-flagged fields have both arrived.
    let settle = |pending: &mut HashMap<u64, Pending>, st: &mut Stats, seqnr: u64| {
        let Some(p) = pending.get(&seqnr) else { return };
        if !(p.accepted && p.done) {
            return;
        }
        let p = pending.remove(&seqnr).unwrap();
        if p.fields == expect {
            st.ok(p.started);
            st.readout_parts(&p);
        } else {
            st.fail(format!("done with {} fields, expected {expect}", p.fields));
        }
    };

    'phase: loop {
        // Start requests: written in one flush when several go at once.
        let mut queued = 0;
        while pending.len() < ctl.inflight && ctl.may_start() {
            s.seqnr += 1;
            let seqnr = s.seqnr;
            let el = request(ctl.mode, &ctl.target, seqnr);
            st.started += 1;
            let started = Instant::now();
            if let Err(e) = s.stream.feed(&el).await {
                st.fail(format!("not sent: {e}"));
                s.broken = Some(format!("write failed: {e}"));
                break 'phase;
            }
            queued += 1;
            pending.insert(
                seqnr,
                Pending {
                    started,
                    accepted: false,
                    accepted_at: None,
                    done_at: None,
                    fields: 0,
                    done: false,
                },
            );
        }
        if queued > 0 {
            match tokio::time::timeout(SEND_TIMEOUT, SinkExt::<&Element>::flush(&mut s.stream))
                .await
            {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    s.broken = Some(format!("write failed: {e}"));
                    break 'phase;
                }
                Err(_) => {
                    eprintln!(
                        "stalled: {} not written to the socket within {SEND_TIMEOUT:?} (session {})",
                        s.jid, s.index
                    );
                    s.broken = Some(format!("not written within {SEND_TIMEOUT:?}"));
                    break 'phase;
                }
            }
        }
        if pending.is_empty() {
            break;
        }
        let oldest = pending.values().map(|p| p.started).min().unwrap();
        let expiry = tokio::time::Instant::from_std(oldest + ctl.timeout);
        tokio::select! {
            item = s.stream.next() => {
                let el = match item {
                    Some(Ok(el)) => el,
                    Some(Err(ReadError::SoftTimeout)) => continue,
                    Some(Err(ReadError::ParseError(e))) => {
                        // Not fatal: the stream goes on after the element.
                        eprintln!("unparseable element (session {}): {e}", s.index);
                        st.unexpected += 1;
                        continue;
                    }
                    Some(Err(e)) => {
                        s.broken = Some(format!("connection lost: {e}"));
                        break 'phase;
                    }
                    None => {
                        s.broken = Some("connection closed".into());
                        break 'phase;
                    }
                };
                match el.name() {
                    "iq" => {
                        let kind = el.attr("type").unwrap_or("");
                        if !matches!(kind, "result" | "error") {
                            st.unexpected += 1;
                            if st.unexpected <= 3 {
                                eprintln!("unexpected (session {}): {}", s.index, String::from(&el));
                            }
                            continue;
                        }
                        s.last_reply = Some(Instant::now());
                        let Some(seqnr) = el
                            .attr("id")
                            .and_then(seqnr_of)
                            .filter(|n| pending.contains_key(n))
                        else {
                            st.late += 1;
                            continue;
                        };
                        match (ctl.mode, kind) {
                            (_, "error") => {
                                pending.remove(&seqnr);
                                st.fail(error_text(&el));
                            }
                            (Mode::Ping, _) => {
                                let p = pending.remove(&seqnr).unwrap();
                                st.ok(p.started);
                            }
                            (Mode::Readout, _) => {
                                let good = el.get_child("accepted", NS_SENSORDATA).is_some_and(
                                    |a| a.attr("seqnr") == Some(seqnr.to_string().as_str()),
                                );
                                if good {
                                    let p = pending.get_mut(&seqnr).unwrap();
                                    p.accepted = true;
                                    p.accepted_at = Some(Instant::now());
                                    settle(&mut pending, &mut st, seqnr);
                                } else {
                                    pending.remove(&seqnr);
                                    st.fail("iq result without <accepted seqnr> of the request");
                                }
                            }
                        }
                    }
                    "message" => {
                        s.last_reply = Some(Instant::now());
                        for el in el.children().filter(|c| c.ns() == NS_SENSORDATA) {
                            let Some(seqnr) = el.attr("seqnr").and_then(|v| v.parse::<u64>().ok())
                            else {
                                continue;
                            };
                            let Some(p) = pending.get_mut(&seqnr) else {
                                st.late += 1;
                                continue;
                            };
                            match el.name() {
                                "fields" => {
                                    let n = count_fields(el);
                                    p.fields += n;
                                    if el.attr("done") == Some("true") {
                                        if n == expect {
                                            dump_fields(&ctl, el);
                                        }
                                        p.done = true;
                                        p.done_at = Some(Instant::now());
                                    }
                                    settle(&mut pending, &mut st, seqnr);
                                }
                                "done" => {
                                    p.done = true;
                                    p.done_at = Some(Instant::now());
                                    settle(&mut pending, &mut st, seqnr);
                                }
                                "failure" => {
                                    let text =
                                        el.children().next().map(|e| e.text()).unwrap_or_default();
                                    pending.remove(&seqnr);
                                    st.fail(format!("<failure>: {text}"));
                                }
                                _ => {} // <started>
                            }
                        }
                    }
                    _ => {
                        // presence, or a stream-level element
                        st.unexpected += 1;
                        if st.unexpected <= 3 {
                            eprintln!("unexpected (session {}): {}", s.index, String::from(&el));
                        }
                    }
                }
            }
            _ = tokio::time::sleep_until(expiry) => {
                let now = Instant::now();
                let expired: Vec<u64> = pending
                    .iter()
                    .filter(|(_, p)| now.duration_since(p.started) >= ctl.timeout)
                    .map(|(k, _)| *k)
                    .collect();
                for k in expired {
                    let p = pending.remove(&k).unwrap();
                    // Where it got stuck, for the log (stderr): which session, which request.
                    eprintln!(
                        "timeout: {} {} id {} sent {:.3}s ago (session {}, last reply {:.3}s ago)",
                        ctl.mode.name(),
                        s.jid,
                        iq_id(k),
                        now.duration_since(p.started).as_secs_f64(),
                        s.index,
                        s.last_reply.map_or(f64::NAN, |t| now.duration_since(t).as_secs_f64()),
                    );
                    st.fail(match ctl.mode {
                        Mode::Ping => "timeout".to_owned(),
                        Mode::Readout => format!(
                            "timeout (accepted: {}, fields: {}, done: {})",
                            p.accepted, p.fields, p.done
                        ),
                    });
                }
            }
        }
    }
    if let Some(why) = &s.broken {
        eprintln!("session {} ({}) unusable: {why}", s.index, s.jid);
        for _ in pending.drain() {
            st.fail(why.clone());
        }
    }
    (s, st)
}

// ---- phases -----------------------------------------------------------------------------

fn percentile(sorted: &[u32], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    // nearest rank
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1] as f64 / 1000.0
}

/// Latency and rate lines of one mode or phase.
fn print_stats(prefix: &str, st: &mut Stats, wall: f64) {
    st.lat_us.sort_unstable();
    print_kv(&format!("{prefix}_started"), st.started);
    print_kv(&format!("{prefix}_ok"), st.ok);
    print_kv(&format!("{prefix}_failed"), st.failed);
    print_kv(&format!("{prefix}_late"), st.late);
    print_kv(&format!("{prefix}_unexpected"), st.unexpected);
    print_kv(&format!("{prefix}_wall_s"), format!("{wall:.3}"));
    print_kv(
        &format!("{prefix}_rate_per_s"),
        format!("{:.1}", st.ok as f64 / wall),
    );
    for (name, q) in [("p50", 0.50), ("p90", 0.90), ("p99", 0.99), ("p999", 0.999)] {
        print_kv(
            &format!("{prefix}_lat_ms_{name}"),
            format!("{:.3}", percentile(&st.lat_us, q)),
        );
    }
    for (part, v) in [
        ("accepted", &mut st.accepted_us),
        ("fields", &mut st.fields_us),
    ] {
        if v.is_empty() {
            continue;
        }
        v.sort_unstable();
        for (name, q) in [("p50", 0.50), ("p99", 0.99)] {
            print_kv(
                &format!("{prefix}_{part}_ms_{name}"),
                format!("{:.3}", percentile(v, q)),
            );
        }
    }
    let mean = st.lat_us.iter().map(|&v| v as f64).sum::<f64>() / st.lat_us.len().max(1) as f64;
    print_kv(
        &format!("{prefix}_lat_ms_mean"),
        format!("{:.3}", mean / 1000.0),
    );
    print_kv(
        &format!("{prefix}_lat_ms_max"),
        format!(
            "{:.3}",
            st.lat_us.last().copied().unwrap_or(0) as f64 / 1000.0
        ),
    );
}

async fn phase(
    args: &Args,
    sessions: Vec<Session>,
    target: &Target,
    mode: Mode,
) -> (Vec<Session>, Stats, f64) {
    let ctl = Arc::new(PhaseCtl {
        mode,
        target: target.jid.to_string(),
        inflight: args.inflight,
        deadline: args.duration.map(|d| Instant::now() + d),
        remaining: args.count.map(|c| AtomicI64::new(c as i64)),
        fields: args.fields,
        timeout: args.timeout,
        dump_fields: args.dump_fields.clone(),
    });
    let t0 = Instant::now();
    let handles: Vec<_> = sessions
        .into_iter()
        .map(|s| tokio::spawn(run_phase(s, ctl.clone())))
        .collect();
    let mut total = Stats::default();
    let mut back = Vec::with_capacity(handles.len());
    for h in handles {
        let (s, st) = h.await.expect("session task panicked");
        back.push(s);
        total.merge(st);
    }
    back.sort_by_key(|s| s.index);
    // Rate over the time requests were being completed: start → last completion.
    let end = total.last_end.unwrap_or_else(Instant::now);
    let wall = end.duration_since(t0).as_secs_f64().max(1e-9);
    (back, total, wall)
}

async fn run(args: Args) -> Result<(), String> {
    let w = watched(&args);
    print_kv(
        "client",
        "tokio-xmpp 6 XmlStream (login with tokio_xmpp::client_login), plain TCP with TCP_NODELAY",
    );
    print_kv("sessions", args.concurrency);
    print_kv("inflight_per_session", args.inflight);
    for t in &args.targets {
        match &t.label {
            Some(l) => print_kv(&format!("{l}_target"), &t.jid),
            None => print_kv("target", &t.jid),
        }
    }
    if let Some(c) = args.count {
        print_kv("phase_count", c);
    }
    if let Some(d) = args.duration {
        print_kv("phase_duration_s", d.as_secs_f64());
    }

    let t = Instant::now();
    let indices: Vec<usize> = (args.first..args.first + args.concurrency).collect();
    let results: Vec<Result<Session, String>> = futures::stream::iter(indices)
        .map(|i| connect(&args, i))
        .buffer_unordered(args.connect_parallel)
        .collect()
        .await;
    let mut sessions = Vec::with_capacity(results.len());
    for r in results {
        sessions.push(r?);
    }
    sessions.sort_by_key(|s| s.index);
    print_kv("connect_s", format!("{:.3}", t.elapsed().as_secs_f64()));

    if !args.warmup.is_zero() {
        let mut wargs_modes = args.modes.clone();
        wargs_modes.sort();
        wargs_modes.dedup();
        let warm = Args {
            duration: Some(args.warmup),
            count: None,
            modes: vec![],
            watch: vec![],
            ..args.clone()
        };
        for target in &args.targets {
            for &m in &wargs_modes {
                let (s, st, _) = phase(&warm, sessions, target, m).await;
                sessions = s;
                let k = target.key(m);
                print_kv(&format!("warmup_{k}_ok"), st.ok);
                print_kv(&format!("warmup_{k}_failed"), st.failed);
                for (i, (why, c)) in st.reasons.iter().enumerate() {
                    print_kv(
                        &format!("warmup_{k}_failure_{}", i + 1),
                        format!("{c} x {why}"),
                    );
                }
            }
        }
    }

    // (target index, mode) → stats, wall time, CPU seconds per watched process
    let mut per_kind: BTreeMap<(usize, Mode), (Stats, f64, Vec<f64>)> = BTreeMap::new();
    let mut failures: Vec<String> = Vec::new();
    let mut n = 0;
    for _ in 0..args.rounds {
        for (ti, target) in args.targets.iter().enumerate() {
            for &m in &args.modes {
                n += 1;
                let c0 = cpu_snapshot(&w);
                let (s, mut st, wall) = phase(&args, sessions, target, m).await;
                sessions = s;
                let c1 = cpu_snapshot(&w);
                let p = format!("phase{n}");
                print_kv(&format!("{p}_mode"), m.name());
                print_kv(&format!("{p}_target"), &target.jid);
                print_stats(&p, &mut st, wall);
                let entry = per_kind
                    .entry((ti, m))
                    .or_insert_with(|| (Stats::default(), 0.0, vec![0.0; w.len()]));
                for (i, (name, _)) in w.iter().enumerate() {
                    if let (Some(a), Some(b)) = (c0[i], c1[i]) {
                        print_kv(&format!("{p}_cpu_s_{name}"), format!("{:.3}", b - a));
                        entry.2[i] += b - a;
                    }
                }
                for (why, c) in &st.reasons {
                    failures.push(format!("phase {n} ({}): {c} x {why}", target.key(m)));
                }
                entry.0.merge(st);
                entry.1 += wall;
            }
        }
    }
    for ((ti, m), (st, wall, cpu)) in per_kind.iter_mut() {
        let p = args.targets[*ti].key(*m);
        print_kv(&format!("{p}_phases"), args.rounds);
        print_stats(&p, st, *wall);
        for (i, (name, _)) in w.iter().enumerate() {
            print_kv(&format!("{p}_cpu_s_{name}"), format!("{:.3}", cpu[i]));
            if st.ok > 0 {
                print_kv(
                    &format!("{p}_cpu_us_per_request_{name}"),
                    format!("{:.1}", cpu[i] * 1e6 / st.ok as f64),
                );
            }
        }
    }
    for (name, pid) in &w {
        if let Some(v) = vm_kb(pid, "VmHWM") {
            print_kv(&format!("vmhwm_kb_{name}"), v);
        }
        if let Some(v) = vm_kb(pid, "VmRSS") {
            print_kv(&format!("vmrss_kb_{name}"), v);
        }
    }
    if let Some(path) = &args.dump_fields {
        if FIELDS_DUMPED.load(Ordering::Relaxed) {
            print_kv("fields_dumped_to", path.display());
        } else {
            failures.push(format!(
                "--dump-fields: no complete <fields done='true'> to write to {}",
                path.display()
            ));
        }
    }
    print_kv("failures_total", failures.len());
    for (i, f) in failures.iter().enumerate() {
        print_kv(&format!("failure_{}", i + 1), f);
    }

    // Close the sessions cleanly (bounded: the figures are already out).
    let closing = futures::future::join_all(sessions.into_iter().map(|mut s| async move {
        let _ = s.stream.shutdown().await;
    }));
    let _ = tokio::time::timeout(Duration::from_secs(5), closing).await;
    Ok(())
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}\n\n{USAGE}");
            std::process::exit(2);
        }
    };
    if log::set_logger(&StderrLog).is_ok() {
        log::set_max_level(log::LevelFilter::Warn);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Err(e) = rt.block_on(run(args)) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
