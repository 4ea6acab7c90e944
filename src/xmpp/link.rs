//! The XEP-0114 component link: connect, handshake, keep-alive, reconnect.
//!
//! `tokio_xmpp::Component` ends its stream on any read error — a soft read timeout or one
//! stanza that does not parse — so a plain `while let Some(..)` loop would silently stop
//! serving. We drive tokio-xmpp's lower-level `XmlStream` ourselves instead, reading raw
//! `minidom::Element`s: soft timeouts become keep-alive pings, a bad stanza is handed on
//! (the router answers it with an error) and only a dead socket or a closed stream ends a
//! connection, after which we reconnect with capped, jittered exponential back-off.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fieldgate_api::backoff;
use futures::{SinkExt, StreamExt};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_xmpp::minidom::Element;
use tokio_xmpp::xmlstream::{initiate_stream, ReadError, StreamHeader, Timeouts, XmlStream};
use xmpp_parsers::component::Handshake;
use xmpp_parsers::jid::{BareJid, Jid};
use xmpp_parsers::ns;

use crate::config::XmppConfig;
use crate::log_limit::LogLimiter;
use crate::xmpp::fair::{self, FairReceiver, FairSender};
use crate::xmpp::guard::io::{GuardStats, Guarded, RawOut};
use crate::xmpp::guard::Limits;
use crate::xmpp::size::encoded_len;
use crate::xmpp::stanza::BuilderExt;
use crate::xmpp::tls;

/// Link state, published to the gateway through a `watch` channel so a state change can
/// never be lost or block the link behind a full stanza queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkState {
    /// Not connected (yet, or any more); the text says why.
    Down(String),
    /// Connected and authenticated; the number counts connections since start, so the
    /// gateway notices a reconnect even if it missed the `Down` in between.
    Up(u64),
}

/// Counters of the link, for logs and benchmarks.
#[derive(Debug, Default)]
pub struct LinkStats {
    /// Inbound stanzas dropped because the gateway's queue was full.
    pub inbound_dropped: AtomicU64,
    /// Outbound stanzas discarded because the link was down.
    pub outbound_discarded: AtomicU64,
    /// Successful connections.
    pub connects: AtomicU64,
    /// Inbound stanzas refused for breaking a bound.
    pub guard: Arc<GuardStats>,
    /// Outbound stanzas over the size bound, not sent.
    pub outbound_oversized: AtomicU64,
    /// Outbound stanzas that could not be serialised, not sent.
    pub outbound_unencodable: AtomicU64,
}

/// What the gateway hands the link: one stanza, or several that must leave in the same
/// write. A readout's `accepted` result and its `<fields>` are such a pair: if the server
/// reads them apart, it writes them to the client apart, and with Nagle's algorithm on
/// the client's socket (Prosody's default) the second waits for the client's delayed ACK,
/// about 40 ms.
#[derive(Debug, PartialEq)]
pub enum Outbound {
    /// One stanza.
    One(Element),
    /// Stanzas written together, in order.
    Batch(Vec<Element>),
    /// Stanzas the gateway serialised itself (in the stream's default namespace, within
    /// `max_outbound_stanza_size` each), written together, in order.
    Text(Vec<String>),
    /// Serialised stanzas whose arrival at the server the gateway wants to learn: once
    /// the server has answered a ping written after them, [`LinkChannels::receipts`]
    /// reaches `tag`. Tags rise in the order the gateway sends them.
    Tracked {
        /// The gateway's number for these stanzas.
        tag: u64,
        /// The stanzas, as for [`Outbound::Text`].
        stanzas: Vec<String>,
    },
}

impl Outbound {
    /// How many stanzas this is.
    pub fn len(&self) -> usize {
        match self {
            Outbound::One(_) => 1,
            Outbound::Batch(v) => v.len(),
            Outbound::Text(v) => v.len(),
            Outbound::Tracked { stanzas, .. } => stanzas.len(),
        }
    }

    /// Whether this carries no stanza.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The stanzas, in order (serialised ones parsed back: for tests and diagnostics).
    pub fn into_vec(self) -> Vec<Element> {
        match self {
            Outbound::One(el) => vec![el],
            Outbound::Batch(v) => v,
            Outbound::Text(v) | Outbound::Tracked { stanzas: v, .. } => v
                .iter()
                .filter_map(|s| crate::xmpp::stanza_text::parse(s))
                .collect(),
        }
    }
}

impl From<Element> for Outbound {
    fn from(el: Element) -> Self {
        Outbound::One(el)
    }
}

impl From<Vec<Element>> for Outbound {
    fn from(els: Vec<Element>) -> Self {
        Outbound::Batch(els)
    }
}

/// The gateway's handles to the link task.
pub struct LinkChannels {
    /// Stanzas received from the server, senders served in turn.
    pub inbound: FairReceiver,
    /// Stanzas to send. Dropping every sender closes the stream cleanly and ends the task.
    pub outbound: mpsc::Sender<Outbound>,
    /// Current link state.
    pub state: watch::Receiver<LinkState>,
    /// Counters.
    pub stats: Arc<LinkStats>,
    /// New settings (after a reload): the link reconnects with them at once.
    pub settings: watch::Sender<XmppConfig>,
    /// The highest [`Outbound::Tracked`] tag the server is known to have processed: it
    /// answered a ping written after it. Stanzas written but not receipted when a
    /// connection ends may or may not have reached the server.
    pub receipts: watch::Receiver<u64>,
}

/// Queue sizes: large enough for a presence burst of thousands of devices.
const INBOUND_QUEUE: usize = 4096;
/// Inbound stanzas one sender (bare JID) may have waiting: more than any client waits
/// for at once, a fraction of the queue, so one flooder cannot fill it.
const INBOUND_PER_SENDER: usize = 512;
const OUTBOUND_QUEUE: usize = 64;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// "component link down" lines logged per window at most; the rest are counted, and the
/// count is written on the next line logged.
const DOWN_LOG_BURST: u32 = 6;
const DOWN_LOG_WINDOW: Duration = Duration::from_secs(60);
const KEEPALIVE_ID_PREFIX: &str = "fg-ka-";
const WINDOW_ID_PREFIX: &str = "fg-fc-";

/// Starts the link task. It runs until every outbound sender is dropped (then it closes
/// the stream politely) or `shutdown` is cancelled (then it stops at once).
pub fn spawn(
    config: XmppConfig,
    shutdown: CancellationToken,
) -> (LinkChannels, tokio::task::JoinHandle<()>) {
    let (in_tx, in_rx) = fair::channel(INBOUND_PER_SENDER, INBOUND_QUEUE);
    let (out_tx, out_rx) = mpsc::channel(OUTBOUND_QUEUE);
    let (state_tx, state_rx) = watch::channel(LinkState::Down("not connected yet".into()));
    let stats = Arc::new(LinkStats::default());
    let (settings_tx, settings_rx) = watch::channel(config);
    let (receipts_tx, receipts_rx) = watch::channel(0);
    let task = tokio::spawn(run(
        settings_rx,
        in_tx,
        out_rx,
        Published {
            state: state_tx,
            receipts: receipts_tx,
            stats: stats.clone(),
        },
        shutdown,
    ));
    (
        LinkChannels {
            inbound: in_rx,
            outbound: out_tx,
            state: state_rx,
            stats,
            settings: settings_tx,
            receipts: receipts_rx,
        },
        task,
    )
}

/// The socket under the XML stream: plain TCP, or TLS over it (`[xmpp] tls`).
type Transport =
    tokio_util::either::Either<tokio::net::TcpStream, Box<crate::xmpp::tls::TlsStream>>;

type Stream = XmlStream<tokio::io::BufStream<Guarded<Transport>>, Element>;

/// Why a connection ended.
enum End {
    /// The gateway dropped its sender: we are done.
    Finished,
    /// Cancelled.
    Cancelled,
    /// The connection failed; reconnect.
    Lost(String),
    /// The settings changed; reconnect with them now.
    Reconfigure,
}

/// What the link publishes to the gateway.
struct Published {
    state: watch::Sender<LinkState>,
    receipts: watch::Sender<u64>,
    stats: Arc<LinkStats>,
}

impl Published {
    fn receipt(&self, tag: u64) {
        self.receipts.send_if_modified(|r| {
            let newer = tag > *r;
            if newer {
                *r = tag;
            }
            newer
        });
    }
}

async fn run(
    mut settings: watch::Receiver<XmppConfig>,
    inbound: FairSender,
    mut outbound: mpsc::Receiver<Outbound>,
    publish: Published,
    shutdown: CancellationToken,
) {
    let state = &publish.state;
    let stats = &publish.stats;
    let mut attempt: u32 = 0;
    let mut down_log = DownLog::default();
    loop {
        let config = settings.borrow_and_update().clone();
        let connected = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = tokio::time::timeout(CONNECT_TIMEOUT, connect(&config, &stats.guard)) => {
                r.unwrap_or_else(|_| Err(format!("no answer within {CONNECT_TIMEOUT:?}")))
            }
        };
        let reason = match connected {
            Ok(connected) => {
                let up_since = Instant::now();
                let n = stats.connects.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::info!(server = %config.server, domain = %config.domain,
                    connection = n, "component link up");
                down_log.up();
                state.send_replace(LinkState::Up(n));
                let ended = serve(
                    connected,
                    &config,
                    &mut settings,
                    &inbound,
                    &mut outbound,
                    &publish,
                    &shutdown,
                )
                .await;
                match ended {
                    End::Finished | End::Cancelled => {
                        state.send_replace(LinkState::Down("shutting down".into()));
                        return;
                    }
                    End::Reconfigure => {
                        tracing::info!("component link settings changed: reconnecting");
                        state.send_replace(LinkState::Down("reconfiguring".into()));
                        attempt = 0;
                        continue;
                    }
                    End::Lost(why) => {
                        attempt = attempt_after(attempt, up_since.elapsed(), stable(&config));
                        why
                    }
                }
            }
            Err(why) => why,
        };
        let delay = backoff(attempt, config.reconnect_min, config.reconnect_max);
        attempt = attempt.saturating_add(1);
        match down_log.allow(&reason, Instant::now()) {
            Some(suppressed) => tracing::warn!(server = %config.server, reason = %reason,
                retry_in_ms = delay.as_millis() as u64, suppressed, "component link down"),
            None => tracing::debug!(server = %config.server, reason = %reason,
                retry_in_ms = delay.as_millis() as u64, "component link down"),
        }
        state.send_replace(LinkState::Down(reason));
        // Keep draining the outbound queue while down, so the gateway never blocks on a
        // link that is away; everything it sends now is re-announced after reconnecting.
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = &mut sleep => break,
                _ = changed(&mut settings) => { attempt = 0; break; }
                out = outbound.recv() => match out {
                    Some(out) => { stats.outbound_discarded.fetch_add(out.len() as u64, Ordering::Relaxed); }
                    None => return,
                },
            }
        }
    }
}

/// The "component link down" lines. A server that stays away, or fails our certificate
/// check on every attempt, would otherwise write a line per back-off step for as long as
/// it lasts; but a reason that changes (the server is back and refuses us now) is logged
/// at once, as is the first after the link was up.
struct DownLog {
    limiter: LogLimiter,
    /// The last reason logged, digits left out: the same failure says other times,
    /// addresses or counts on each attempt.
    last: Option<String>,
}

impl Default for DownLog {
    fn default() -> Self {
        DownLog {
            limiter: LogLimiter::new(DOWN_LOG_BURST, DOWN_LOG_WINDOW),
            last: None,
        }
    }
}

impl DownLog {
    /// Whether to log `reason` now: `Some` with the lines left out since the last.
    fn allow(&mut self, reason: &str, now: Instant) -> Option<u64> {
        let shape: String = reason.chars().filter(|c| !c.is_ascii_digit()).collect();
        if self.last.as_deref() == Some(shape.as_str()) {
            return self.limiter.allow(now);
        }
        self.last = Some(shape);
        Some(self.limiter.always(now))
    }

    /// The link came up: whatever ends it next is news.
    fn up(&mut self) {
        self.last = None;
    }
}

/// How long a connection must have lasted for the back-off to start over: a server that
/// takes the handshake and drops the link at once must not be hammered at
/// `reconnect_min` for ever.
fn stable(config: &XmppConfig) -> Duration {
    config.reconnect_max.max(Duration::from_secs(10))
}

/// The reconnect attempt to count from after a connection that lasted `lasted`.
fn attempt_after(attempt: u32, lasted: Duration, stable: Duration) -> u32 {
    if lasted >= stable {
        0
    } else {
        attempt
    }
}

async fn connect(config: &XmppConfig, guard: &Arc<GuardStats>) -> Result<(Stream, RawOut), String> {
    // Resolve names here so `server = "xmpp.local:5347"` works without pulling in a DNS
    // resolver crate.
    let mut addrs = tokio::net::lookup_host(&config.server)
        .await
        .map_err(|e| format!("cannot resolve {}: {e}", config.server))?;
    let addr = addrs
        .next()
        .ok_or_else(|| format!("{} resolves to no address", config.server))?;
    let jid: Jid = BareJid::new(&config.domain)
        .map_err(|e| format!("bad domain: {e}"))?
        .into();
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    // A readout answers with an iq result and then a message; with Nagle's algorithm the
    // second small write waits for the server's delayed ACK (~40 ms on Linux).
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!(error = %e, "cannot disable Nagle's algorithm on the component link");
    }
    #[cfg(unix)]
    let fd = std::os::fd::AsRawFd::as_raw_fd(&tcp);
    // With TLS, the handshake comes first and nothing else is ever tried on this
    // socket: a refused certificate ends the attempt, and the next attempt (after the
    // back-off) is TLS again. There is no fallback to plaintext.
    let tls_name = config.tls_name();
    let transport: Transport = match (&config.tls, tls_name) {
        (Some(settings), Some(name)) => {
            tokio_util::either::Either::Right(Box::new(tls::handshake(tcp, settings, name).await?))
        }
        _ => tokio_util::either::Either::Left(tcp),
    };
    // Every byte from the server is bounded before tokio-xmpp's parser sees it: the
    // parser cannot be configured, and a stanza beyond its limits would end the stream
    // or, nested deep enough, the process (see `guard`).
    let limits = Limits::new(config.max_inbound_stanza_size, config.max_inbound_depth);
    #[allow(unused_mut)]
    let mut guarded = Guarded::new(transport, limits, guard.clone());
    #[cfg(unix)]
    guarded.quick_acks(fd);
    let raw = guarded.raw();
    let io = tokio::io::BufStream::new(guarded);
    let header = StreamHeader {
        to: Some(jid.domain().as_str().into()),
        from: None,
        id: None,
    };
    let mut pending = initiate_stream(io, ns::COMPONENT, header, timeouts(config.keepalive))
        .await
        .map_err(|e| {
            // A TLS 1.3 server judges the client certificate after the client's side of
            // the handshake is done: its verdict arrives on the first read.
            match tls_name.and_then(|name| tls::verdict(&e, name)) {
                Some(why) => why,
                // A TLS listener hangs up on (ejabberd), resets (Prosody's direct-TLS
                // port) or answers in binary the plaintext stream header it cannot read.
                None if config.tls.is_none()
                    && matches!(
                        e.kind(),
                        std::io::ErrorKind::UnexpectedEof
                            | std::io::ErrorKind::InvalidData
                            | std::io::ErrorKind::ConnectionReset
                    ) =>
                {
                    format!(
                        "no stream from {addr}: {e} (if the server's component listener \
                         expects TLS, set tls in [xmpp])"
                    )
                }
                None => format!("no stream from {addr}: {e}"),
            }
        })?;
    let header = pending.take_header();
    let id = header
        .id
        .ok_or("the server sent no stream id")?
        .into_owned();
    let mut stream: Stream = pending.skip_features();
    let handshake = Handshake::from_stream_id_and_password(id, &config.secret);
    stream
        .send(&handshake)
        .await
        .map_err(|e| format!("handshake not sent: {e}"))?;
    loop {
        match stream.next().await {
            Some(Ok(el)) if el.is("handshake", ns::COMPONENT) => return Ok((stream, raw)),
            Some(Ok(el)) if el.name() == "error" && el.ns() == ns::STREAM => {
                let condition = el
                    .children()
                    .next()
                    .map_or("unknown", |c| c.name())
                    .to_owned();
                let hint = match condition.as_str() {
                    "not-authorized" => " (wrong component secret?)",
                    "host-unknown" => " (is the component domain declared on the server?)",
                    "conflict" => " (another process is connected as this component)",
                    _ => "",
                };
                return Err(format!("handshake refused: {condition}{hint}"));
            }
            Some(Ok(el)) => return Err(format!("unexpected <{}/> during handshake", el.name())),
            Some(Err(ReadError::SoftTimeout)) => continue,
            Some(Err(ReadError::HardError(e))) => {
                return Err(match tls_name.and_then(|name| tls::verdict(&e, name)) {
                    Some(why) => why,
                    None => format!("handshake failed: {e}"),
                })
            }
            Some(Err(e)) => return Err(format!("handshake failed: {e}")),
            None => return Err("the server closed the stream during the handshake".into()),
        }
    }
}

/// Read timeouts derived from the keep-alive interval: we ping every `keepalive`, so a
/// silent stream for twice that, plus one more `keepalive` after a soft-timeout ping,
/// means the server is gone.
fn timeouts(keepalive: Duration) -> Timeouts {
    Timeouts {
        read_timeout: keepalive * 2,
        response_timeout: keepalive,
    }
}

async fn serve(
    (mut stream, raw): (Stream, RawOut),
    config: &XmppConfig,
    settings: &mut watch::Receiver<XmppConfig>,
    inbound: &FairSender,
    outbound: &mut mpsc::Receiver<Outbound>,
    publish: &Published,
    shutdown: &CancellationToken,
) -> End {
    let stats = &*publish.stats;
    let mut keepalive = tokio::time::interval(config.keepalive);
    keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    keepalive.tick().await;
    let mut ping_seq: u64 = 0;
    let mut last_heard = Instant::now();
    let mut writer = Writer {
        limit: config.max_outbound_stanza_size,
        raw,
        unflushed: false,
        written: 0,
        last_tag: 0,
        stats,
        log: LogLimiter::new(10, Duration::from_secs(60)),
    };
    // Whether written stanzas wait to be flushed. The flush is polled together with the
    // read side: a server slow to take what we write must not stop us reading what it
    // sends (it would queue other users' requests behind a flooder's answers).
    let mut flushing = false;
    let mut closed = false;
    let mut window = Window::default();
    loop {
        let receipt_at = window.receipt_due(writer.last_tag);
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return End::Cancelled,
            _ = changed(settings) => {
                close(&mut stream).await;
                return End::Reconfigure;
            }
            io = read_or_flush(&mut stream, flushing) => match io {
                Io::Flushed(Err(e)) => return End::Lost(format!("write failed: {e}")),
                Io::Flushed(Ok(())) => {
                    flushing = false;
                    if closed {
                        close(&mut stream).await;
                        return End::Finished;
                    }
                }
                Io::Read(item) => match item {
                    Some(Ok(el)) => {
                        last_heard = Instant::now();
                        if window.answered(&el) {
                            publish.receipt(window.receipt);
                            continue;
                        }
                        if is_keepalive_reply(&el) {
                            continue;
                        }
                        if el.name() == "error" && el.ns() == ns::STREAM {
                            let condition = el.children().next().map_or("unknown", |c| c.name());
                            return End::Lost(format!("stream error from server: {condition}"));
                        }
                        if let Err((why, el)) = inbound.push(el) {
                            let n = stats.inbound_dropped.fetch_add(1, Ordering::Relaxed) + 1;
                            // The first drop and every power of two: a flood is one line a
                            // doubling, with the sender that caused the last one.
                            if n.is_power_of_two() {
                                tracing::warn!(dropped_total = n, stanza = el.name(),
                                    sender = fair::sender_of(&el), reason = ?why,
                                    "gateway inbound queue: stanza dropped");
                            }
                        }
                    }
                    Some(Err(ReadError::SoftTimeout)) => {
                        tracing::debug!("link silent: sending keep-alive ping");
                        ping_seq += 1;
                        if let Err(e) = stream.feed(&ping(config, ping_seq)).await {
                            return End::Lost(format!("write failed: {e}"));
                        }
                        flushing = true;
                    }
                    Some(Err(ReadError::ParseError(e))) => {
                        // Non-fatal by tokio-xmpp's contract: the stream goes on.
                        tracing::warn!(error = %e, "unparseable element from server ignored");
                    }
                    Some(Err(ReadError::HardError(e))) => return End::Lost(format!("read failed: {e}")),
                    Some(Err(ReadError::StreamFooterReceived)) | None => {
                        return End::Lost("the server closed the stream".into())
                    }
                },
            },
            _ = window.stalled(), if !window.open(writer.written) => {
                tracing::warn!(window = WINDOW,
                    "the server did not answer a flow-control ping: writing on regardless");
                window.forget();
            }
            out = outbound.recv(), if !flushing && !closed && window.open(writer.written) => {
                let Some(out) = out else {
                    close(&mut stream).await;
                    return End::Finished;
                };
                // Batch whatever else is queued into one flush: a presence burst for a
                // thousand devices goes out in a few writes, not a thousand.
                if let Err(e) = writer.feed(&mut stream, out).await {
                    return End::Lost(format!("write failed: {e}"));
                }
                for _ in 0..256 {
                    match outbound.try_recv() {
                        Ok(out) => if let Err(e) = writer.feed(&mut stream, out).await {
                            return End::Lost(format!("write failed: {e}"));
                        },
                        Err(mpsc::error::TryRecvError::Empty) => break,
                        Err(mpsc::error::TryRecvError::Disconnected) => { closed = true; break; }
                    }
                }
                writer.unflushed = false;
                if let Some(marker) = window.marker(writer.written, writer.last_tag, config) {
                    if let Err(e) = stream.feed(&marker).await {
                        return End::Lost(format!("write failed: {e}"));
                    }
                }
                flushing = true;
            }
            _ = keepalive.tick() => {
                if last_heard.elapsed() > config.keepalive * 3 {
                    return End::Lost(format!(
                        "no traffic from the server for {:?}", last_heard.elapsed()));
                }
                ping_seq += 1;
                if let Err(e) = stream.feed(&ping(config, ping_seq)).await {
                    return End::Lost(format!("write failed: {e}"));
                }
                flushing = true;
            }
            _ = tokio::time::sleep_until(receipt_at.unwrap_or_else(Instant::now).into()),
                if receipt_at.is_some() => {
                let marker = window.receipt_ping(writer.last_tag, config);
                if let Err(e) = stream.feed(&marker).await {
                    return End::Lost(format!("write failed: {e}"));
                }
                flushing = true;
            }
        }
    }
}

/// How much the gateway has written that the server may not have processed yet. The
/// kernel and the server's own buffers would otherwise hold megabytes of a flooder's
/// answers, which the server works through in order, every other user's behind them.
/// Every half window a ping goes to the server; it answers once it has processed what
/// came before, and writing waits while more than a window is unanswered. What waits
/// stays in the gateway's queue, in front of which the gateway decides (in turn per user).
const WINDOW: u64 = 64 * 1024;
/// How long an unanswered window ping holds writing up before it is given up on.
const WINDOW_PATIENCE: Duration = Duration::from_secs(5);
/// The shortest time between two receipt pings: under a stream of events, a ping per
/// round trip would be a stanza for the server per event or two.
const RECEIPT_INTERVAL: Duration = Duration::from_millis(100);

///
/// The same pings are the receipts of [`Outbound::Tracked`] stanzas: a server that
/// answers a ping has processed everything written before it on the stream.
#[derive(Default)]
struct Window {
    next_id: u64,
    /// Pings sent, oldest first: (id, bytes written when it was sent, the last tag
    /// written by then, when).
    pending: std::collections::VecDeque<(u64, u64, u64, Instant)>,
    /// Bytes the server has processed (as of the last answered ping).
    acked: u64,
    /// Bytes written when the last ping went out.
    marked: u64,
    /// The last tag written when the last ping went out.
    marked_tag: u64,
    /// The highest tag the server is known to have processed.
    receipt: u64,
    /// When the last ping went out.
    last_ping: Option<Instant>,
}

impl Window {
    /// Whether more may be written now.
    fn open(&self, written: u64) -> bool {
        written.saturating_sub(self.acked) < WINDOW
    }

    /// A ping to send, if half a window was written since the last one.
    fn marker(&mut self, written: u64, tag: u64, config: &XmppConfig) -> Option<Element> {
        if written.saturating_sub(self.marked) < WINDOW / 2 {
            return None;
        }
        Some(self.ping(written, tag, config))
    }

    /// When to ping for the tracked stanzas written since the last ping (up to `tag`):
    /// `None` while a ping is out (its answer comes first) or nothing is to be receipted.
    /// At most one receipt ping per round trip and per [`RECEIPT_INTERVAL`], however many
    /// events are written.
    fn receipt_due(&self, tag: u64) -> Option<Instant> {
        if tag <= self.marked_tag || !self.pending.is_empty() {
            return None;
        }
        Some(
            self.last_ping
                .map_or_else(Instant::now, |t| t + RECEIPT_INTERVAL),
        )
    }

    /// The receipt ping for tracked stanzas up to `tag`.
    fn receipt_ping(&mut self, tag: u64, config: &XmppConfig) -> Element {
        self.ping(self.marked, tag, config)
    }

    fn ping(&mut self, written: u64, tag: u64, config: &XmppConfig) -> Element {
        self.next_id += 1;
        self.last_ping = Some(Instant::now());
        self.marked = self.marked.max(written);
        self.marked_tag = self.marked_tag.max(tag);
        self.pending
            .push_back((self.next_id, written, tag, Instant::now()));
        Element::builder("iq", ns::COMPONENT)
            .a("type", "get")
            .a("id", format!("{WINDOW_ID_PREFIX}{}", self.next_id))
            .a("from", config.domain.as_str())
            .a("to", config.ping_target.as_str())
            .append(Element::builder("ping", ns::PING).build())
            .build()
    }

    /// Takes the server's answer to a window ping (result or error alike).
    fn answered(&mut self, el: &Element) -> bool {
        let Some(id) = el
            .attr("id")
            .and_then(|id| id.strip_prefix(WINDOW_ID_PREFIX))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            return false;
        };
        if el.name() != "iq" || !matches!(el.attr("type"), Some("result" | "error")) {
            return false;
        }
        while let Some(&(n, bytes, tag, _)) = self.pending.front() {
            if n > id {
                break;
            }
            self.acked = self.acked.max(bytes);
            // An error answer says as much as a result: the server read the ping, and
            // what was written before it.
            self.receipt = self.receipt.max(tag);
            self.pending.pop_front();
        }
        true
    }

    /// Resolves when the oldest unanswered ping has waited too long.
    async fn stalled(&self) {
        match self.pending.front() {
            Some(&(_, _, _, sent)) => {
                tokio::time::sleep_until((sent + WINDOW_PATIENCE).into()).await
            }
            None => std::future::pending().await,
        }
    }

    /// Treats every ping sent as answered, for writing; not for receipts, which only
    /// an answer gives.
    fn forget(&mut self) {
        if let Some(&(_, bytes, _, _)) = self.pending.back() {
            self.acked = self.acked.max(bytes);
        }
        self.pending.clear();
        // What those pings were to receipt is asked about again by the next one.
        self.marked_tag = self.receipt;
    }
}

/// What [`read_or_flush`] saw first.
enum Io {
    Read(Option<Result<Element, ReadError>>),
    Flushed(std::io::Result<()>),
}

/// The next stanza from the server or, if `flushing`, the end of the flush, whichever
/// comes first.
fn read_or_flush(
    stream: &mut Stream,
    flushing: bool,
) -> impl std::future::Future<Output = Io> + '_ {
    std::future::poll_fn(move |cx| {
        if let std::task::Poll::Ready(item) = stream.poll_next_unpin(cx) {
            return std::task::Poll::Ready(Io::Read(item));
        }
        if flushing {
            if let std::task::Poll::Ready(r) = SinkExt::<&Element>::poll_flush_unpin(stream, cx) {
                return std::task::Poll::Ready(Io::Flushed(r));
            }
        }
        std::task::Poll::Pending
    })
}

/// Resolves when new settings arrive; never, once the gateway has dropped the sender
/// (it is shutting down, and the closing outbound queue ends the link).
async fn changed(settings: &mut watch::Receiver<XmppConfig>) {
    if settings.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// The last line of defence on the way out: no stanza over the size bound reaches the
/// server (it would close the stream), and none that cannot be written as XML ends the
/// link.
struct Writer<'a> {
    limit: usize,
    /// Where serialised stanzas go, once the stream's own are flushed.
    raw: RawOut,
    /// Elements were fed since the last flush.
    unflushed: bool,
    /// Bytes of stanzas written on this connection.
    written: u64,
    /// The tag of the last [`Outbound::Tracked`] written on this connection.
    last_tag: u64,
    stats: &'a LinkStats,
    log: LogLimiter,
}

impl Writer<'_> {
    /// Queues `out` on the stream; the caller flushes. The stream is buffered
    /// (`BufStream`), so what is fed before one flush leaves in one write.
    async fn feed(&mut self, stream: &mut Stream, out: Outbound) -> std::io::Result<()> {
        match out {
            Outbound::One(el) => self.feed_one(stream, el).await,
            Outbound::Batch(els) => {
                for el in els {
                    self.feed_one(stream, el).await?;
                }
                Ok(())
            }
            Outbound::Tracked { tag, stanzas } => {
                self.last_tag = self.last_tag.max(tag);
                self.feed_text(stream, stanzas).await
            }
            Outbound::Text(texts) => self.feed_text(stream, texts).await,
        }
    }

    async fn feed_text(&mut self, stream: &mut Stream, texts: Vec<String>) -> std::io::Result<()> {
        if self.unflushed {
            // What the stream holds goes first: stanzas keep their order.
            SinkExt::<&Element>::flush(stream).await?;
            self.unflushed = false;
        }
        for t in texts {
            if t.len() > self.limit {
                self.stats
                    .outbound_oversized
                    .fetch_add(1, Ordering::Relaxed);
                if let Some(suppressed) = self.log.allow(Instant::now()) {
                    tracing::error!(
                        bytes = t.len(),
                        limit = self.limit,
                        suppressed,
                        "outbound stanza over max_outbound_stanza_size not sent"
                    );
                }
                continue;
            }
            self.written += t.len() as u64;
            self.raw.push(t.as_bytes());
        }
        Ok(())
    }

    async fn feed_one(&mut self, stream: &mut Stream, el: Element) -> std::io::Result<()> {
        self.unflushed = true;
        let size = encoded_len(&el);
        self.written += size as u64;
        if size > self.limit {
            self.stats
                .outbound_oversized
                .fetch_add(1, Ordering::Relaxed);
            if let Some(suppressed) = self.log.allow(Instant::now()) {
                tracing::error!(
                    stanza = el.name(),
                    to = el.attr("to"),
                    bytes = size,
                    limit = self.limit,
                    suppressed,
                    "outbound stanza over max_outbound_stanza_size not sent"
                );
            }
            return match too_large(&el, size, self.limit) {
                Some(error) => stream.feed(&error).await,
                None => Ok(()),
            };
        }
        match stream.feed(&el).await {
            // The element could not be serialised (a character XML does not allow, say,
            // from a device's string register); tokio-xmpp rewound its buffer, so the
            // stream is intact: lose this stanza, not the link.
            Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => {
                self.stats
                    .outbound_unencodable
                    .fetch_add(1, Ordering::Relaxed);
                if let Some(suppressed) = self.log.allow(Instant::now()) {
                    tracing::error!(stanza = el.name(), to = el.attr("to"), error = %e, suppressed,
                        "outbound stanza cannot be written as XML: not sent");
                }
                Ok(())
            }
            r => r,
        }
    }
}

/// What replaces an iq answer too large to send: an error saying so, from and to the
/// same JIDs, so the requester is not left waiting. Anything else is dropped.
fn too_large(el: &Element, size: usize, limit: usize) -> Option<Element> {
    if el.name() != "iq" || !matches!(el.attr("type"), Some("result" | "error")) {
        return None;
    }
    let text = format!("the answer is {size} bytes, more than the {limit} this gateway sends");
    let err = xmpp_parsers::stanza_error::StanzaError::new(
        xmpp_parsers::stanza_error::ErrorType::Wait,
        xmpp_parsers::stanza_error::DefinedCondition::ResourceConstraint,
        "en",
        text,
    );
    Some(
        Element::builder("iq", ns::COMPONENT)
            .a("type", "error")
            .a("from", el.attr("from"))
            .a("to", el.attr("to"))
            .a("id", el.attr("id"))
            .append(Element::from(err))
            .build(),
    )
}

async fn close(stream: &mut Stream) {
    // The footer tells the server we leave on purpose; a dead peer must not hold up a
    // shutdown, hence the bound.
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        if stream.shutdown().await.is_err() {
            return;
        }
        // RFC 6120 §4.4: read (and drop) until the server closes its stream too. Dropping
        // the socket with stanzas of the server's still unread turns the close into a TCP
        // reset, and the server then drops what it had read from us but not yet routed
        // (the devices' unavailable presences, sent just before).
        while let Some(item) = stream.next().await {
            if matches!(
                item,
                Err(ReadError::StreamFooterReceived | ReadError::HardError(_))
            ) {
                break;
            }
        }
    })
    .await;
}

fn ping(config: &XmppConfig, seq: u64) -> Element {
    Element::builder("iq", ns::COMPONENT)
        .a("type", "get")
        .a("id", format!("{KEEPALIVE_ID_PREFIX}{seq}"))
        .a("from", config.domain.as_str())
        .a("to", config.ping_target.as_str())
        .append(Element::builder("ping", ns::PING).build())
        .build()
}

/// Any answer to our ping, result or error, proves the link alive and is not routed on.
fn is_keepalive_reply(el: &Element) -> bool {
    el.name() == "iq"
        && matches!(el.attr("type"), Some("result" | "error"))
        && el
            .attr("id")
            .is_some_and(|id| id.starts_with(KEEPALIVE_ID_PREFIX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let min = Duration::from_millis(250);
        let max = Duration::from_secs(3);
        for _ in 0..50 {
            let d0 = backoff(0, min, max);
            assert!(d0 >= Duration::from_millis(200) && d0 <= Duration::from_millis(300));
            let d3 = backoff(3, min, max);
            assert!(d3 >= Duration::from_millis(1600) && d3 <= Duration::from_millis(2400));
            let d30 = backoff(30, min, max);
            assert!(
                d30 >= Duration::from_millis(2400) && d30 <= max,
                "never above the cap"
            );
        }
    }

    #[test]
    fn the_back_off_starts_over_only_after_a_stable_connection() {
        let stable = Duration::from_secs(10);
        // dropped right after the handshake: keep backing off
        assert_eq!(attempt_after(5, Duration::from_millis(50), stable), 5);
        assert_eq!(attempt_after(5, Duration::from_secs(10), stable), 0);
    }

    #[test]
    fn link_down_lines_are_limited_but_a_new_reason_is_logged_at_once() {
        let t0 = Instant::now();
        let mut log = DownLog::default();
        let expired = |n: u32| format!("TLS: expired: valid until 2020, the clock says {n}");
        for n in 0..DOWN_LOG_BURST {
            assert_eq!(log.allow(&expired(n), t0), Some(0), "the first lines pass");
        }
        for n in 0..10 {
            assert_eq!(
                log.allow(&expired(100 + n), t0),
                None,
                "then they are counted"
            );
        }
        // another reason is news, and says how many lines were left out
        assert_eq!(
            log.allow("cannot connect to 10.0.0.5:5347: refused", t0),
            Some(10)
        );
        assert_eq!(
            log.allow("cannot connect to 10.0.0.5:5347: refused", t0),
            None
        );
        // as is any reason after the link was up
        log.up();
        assert_eq!(
            log.allow("cannot connect to 10.0.0.5:5347: refused", t0),
            Some(1)
        );
        assert_eq!(log.allow(&expired(7), t0 + DOWN_LOG_WINDOW), Some(0));
    }

    fn window_config() -> XmppConfig {
        let text = "[xmpp]\nserver = \"127.0.0.1:5347\"\ndomain = \"gw.example.org\"\n\
                    secret = \"s\"\n[state]\ndir = \"/nonexistent\"\n";
        crate::config::parse(std::path::Path::new("t.toml"), text)
            .unwrap()
            .xmpp
    }

    fn answer(ping: &Element, type_: &str) -> Element {
        format!(
            "<iq xmlns='jabber:component:accept' type='{type_}' id='{}'/>",
            ping.attr("id").unwrap()
        )
        .parse()
        .unwrap()
    }

    #[test]
    fn tracked_stanzas_are_receipted_by_the_answer_to_a_ping_written_after_them() {
        let config = window_config();
        let mut w = Window::default();
        // nothing tracked written: no receipt ping
        assert!(w.receipt_due(0).is_none());
        let t0 = Instant::now();
        let due = w.receipt_due(3).expect("a ping for tags up to 3");
        assert!(due <= Instant::now());
        let p1 = w.receipt_ping(3, &config);
        // one ping out at a time, however many are written meanwhile
        assert!(w.receipt_due(5).is_none());
        assert_eq!(w.receipt, 0, "nothing receipted before the answer");
        // an error answer says the server read it all the same
        assert!(w.answered(&answer(&p1, "error")));
        assert_eq!(w.receipt, 3);
        // then one for 4 and 5, not sooner than RECEIPT_INTERVAL after the last
        assert!(w.receipt_due(5).unwrap() >= t0 + RECEIPT_INTERVAL);
        let p2 = w.receipt_ping(5, &config);
        // a flow-control stall gives up on the ping for writing, not for receipts ...
        w.forget();
        assert_eq!(w.receipt, 3);
        // ... and the next ping asks again
        assert!(w.receipt_due(5).is_some());
        let p3 = w.receipt_ping(5, &config);
        assert!(
            w.answered(&answer(&p2, "result")),
            "a late answer still counts"
        );
        assert!(w.answered(&answer(&p3, "result")));
        assert_eq!(w.receipt, 5);
        // a window ping carries the tags written before it too
        let big = w.marker(WINDOW, 9, &config).expect("half a window written");
        assert!(w.answered(&answer(&big, "result")));
        assert_eq!(w.receipt, 9);
    }

    #[test]
    fn keepalive_replies_are_recognised() {
        let reply: Element =
            "<iq xmlns='jabber:component:accept' type='error' id='fg-ka-3' from='example.org'/>"
                .parse()
                .unwrap();
        assert!(is_keepalive_reply(&reply));
        let other: Element = "<iq xmlns='jabber:component:accept' type='result' id='q1'/>"
            .parse()
            .unwrap();
        assert!(!is_keepalive_reply(&other));
    }

    #[test]
    fn an_oversized_iq_answer_becomes_a_small_error() {
        let result: Element = "<iq xmlns='jabber:component:accept' type='result' id='q7' \
             from='gw.example.org' to='a@b/c'><query xmlns='urn:x'/></iq>"
            .parse()
            .unwrap();
        let err = too_large(&result, 700_000, 65_536).unwrap();
        assert_eq!(err.attr("type"), Some("error"));
        assert_eq!(err.attr("id"), Some("q7"));
        assert_eq!(err.attr("to"), Some("a@b/c"));
        assert_eq!(err.attr("from"), Some("gw.example.org"));
        let e = err.get_child("error", ns::COMPONENT).unwrap();
        assert!(e.has_child("resource-constraint", ns::XMPP_STANZAS));
        assert!(encoded_len(&err) < 1024);
        // a message or a request is dropped, not answered
        let msg: Element = "<message xmlns='jabber:component:accept' to='a@b'/>"
            .parse()
            .unwrap();
        assert!(too_large(&msg, 700_000, 65_536).is_none());
        let get: Element = "<iq xmlns='jabber:component:accept' type='get' id='1'/>"
            .parse()
            .unwrap();
        assert!(too_large(&get, 700_000, 65_536).is_none());
    }
}
