//! The endpoint: one UDP socket per address family (IPv4, IPv6), shared by every device;
//! one receive task that decodes each datagram, drops malformed ones, answers duplicates,
//! pings and strays, and routes the rest to the exchange or observation waiting for it.
//! The task is stopped by the endpoint's `CancellationToken` (or when the last handle is
//! dropped); waiting calls then return [`TransportError::Stopped`].

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use coap_lite::MessageType;
use tokio::net::UdpSocket;
use tokio::sync::mpsc::error::TrySendError;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::TaskTracker;

use super::block::{self, BlockConfig};
use super::codec::{self, Message};
use super::dedup::{Dedup, Seen};
use super::error::TransportError;
use super::ids::Ids;
use super::observe::{self, Observation};
use super::params::TransmissionParams;
use super::queue::Queues;
use super::routes::{Event, Routes};
use super::stats::{Counters, RateLimitedLog, Stats};
use super::types::{Request, Response};

/// Socket and table settings of an [`Endpoint`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointConfig {
    /// Local address of the IPv4 socket; `None` for no IPv4. Default `0.0.0.0:0` (any
    /// port: we are a client).
    pub bind_v4: Option<SocketAddr>,
    /// Local address of the IPv6 socket (IPV6_V6ONLY); `None` for no IPv6. Default
    /// `[::]:0`. When the default cannot be bound (a host without IPv6) the endpoint runs
    /// without it and logs why; an address set explicitly must bind.
    pub bind_v6: Option<SocketAddr>,
    /// Token length in bytes, 4–8 (default 8). Tokens are random (RFC 7252 §5.3.1).
    pub token_len: u8,
    /// Most message ids remembered for duplicate detection (default 8192 entries, about
    /// 50 bytes each).
    pub dedup_capacity: usize,
    /// Notifications buffered per observation before the transport stops taking them
    /// (default 32). A confirmable one that does not fit is left unacknowledged, so the
    /// server sends it again; a non-confirmable one is dropped and counted.
    pub notification_buffer: usize,
    /// At most one log line per this interval about malformed datagrams (default 10 s).
    pub log_interval: Duration,
    /// The sockets' receive buffer (SO_RCVBUF), in bytes; `None` keeps the system's
    /// default (`net.core.rmem_default`, 208 KiB on Debian). Default 4 MiB: room for a
    /// burst of some 5,000 datagrams while the thread is busy (the default buffer lost 0.7 %
    /// of notifications at 30,000 a second). The kernel caps it at `net.core.rmem_max`;
    /// a capped buffer is logged once, naming the sysctl.
    pub receive_buffer: Option<usize>,
}

impl Default for EndpointConfig {
    fn default() -> Self {
        EndpointConfig {
            bind_v4: Some(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))),
            bind_v6: Some(SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0))),
            token_len: 8,
            dedup_capacity: 8192,
            notification_buffer: 32,
            log_interval: Duration::from_secs(10),
            receive_buffer: Some(4 << 20),
        }
    }
}

#[derive(Debug)]
pub(crate) struct State {
    pub routes: Routes,
    pub ids: Ids,
    pub dedup: Dedup,
}

#[derive(Debug)]
pub(crate) struct Inner {
    v4: Option<UdpSocket>,
    v6: Option<UdpSocket>,
    pub cfg: EndpointConfig,
    /// Never held across an await.
    pub state: Mutex<State>,
    pub counters: Counters,
    pub queues: Queues,
    pub cancel: CancellationToken,
    tasks: TaskTracker,
}

/// A CoAP client endpoint. Cheap to clone (an `Arc`); every clone drives the same sockets.
/// Stopped when the `CancellationToken` given to [`Endpoint::bind`] is cancelled, or when
/// the last clone (including those held by [`Observation`]s) is dropped.
#[derive(Debug, Clone)]
pub struct Endpoint {
    inner: Arc<Inner>,
    _stop_on_drop: Arc<DropGuard>,
}

impl Endpoint {
    /// Binds the sockets and starts the receive task. Must be called within a tokio
    /// runtime. `cancel` stops the endpoint (a child token is used, so cancelling the
    /// endpoint never cancels the caller's).
    pub fn bind(cfg: EndpointConfig, cancel: CancellationToken) -> io::Result<Endpoint> {
        if !(4..=8).contains(&cfg.token_len) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("token_len must be 4 to 8 bytes, not {}", cfg.token_len),
            ));
        }
        let v4 = match cfg.bind_v4 {
            Some(a) if a.is_ipv4() => Some(bind_socket(a, cfg.receive_buffer)?),
            Some(a) => return Err(invalid(format!("bind_v4 {a} is not an IPv4 address"))),
            None => None,
        };
        let v6 = match cfg.bind_v6 {
            Some(a) if a.is_ipv6() => match bind_socket(a, cfg.receive_buffer) {
                Ok(s) => Some(s),
                Err(e) if cfg.bind_v6 == EndpointConfig::default().bind_v6 => {
                    tracing::warn!(error = %e, "no IPv6 CoAP socket: IPv6 devices unreachable");
                    None
                }
                Err(e) => return Err(e),
            },
            Some(a) => return Err(invalid(format!("bind_v6 {a} is not an IPv6 address"))),
            None => None,
        };
        if v4.is_none() && v6.is_none() {
            return Err(invalid("neither an IPv4 nor an IPv6 socket".into()));
        }
        let cancel = cancel.child_token();
        let inner = Arc::new(Inner {
            v4,
            v6,
            state: Mutex::new(State {
                routes: Routes::default(),
                ids: Ids::default(),
                dedup: Dedup::new(cfg.dedup_capacity),
            }),
            counters: Counters::default(),
            queues: Queues::default(),
            cancel: cancel.clone(),
            tasks: TaskTracker::new(),
            cfg,
        });
        inner.tasks.spawn(receive_task(inner.clone()));
        inner.tasks.close();
        Ok(Endpoint {
            inner,
            _stop_on_drop: Arc::new(cancel.drop_guard()),
        })
    }

    /// The IPv4 socket's local address, if there is one.
    pub fn local_addr_v4(&self) -> Option<SocketAddr> {
        self.inner.v4.as_ref().and_then(|s| s.local_addr().ok())
    }

    /// The IPv6 socket's local address, if there is one.
    pub fn local_addr_v6(&self) -> Option<SocketAddr> {
        self.inner.v6.as_ref().and_then(|s| s.local_addr().ok())
    }

    /// The receive buffer of the IPv4 socket (or else the IPv6 one) as the kernel reports
    /// it (Linux counts its bookkeeping too: twice what was set).
    pub fn receive_buffer(&self) -> Option<usize> {
        let s = self.inner.v4.as_ref().or(self.inner.v6.as_ref())?;
        socket2::SockRef::from(s).recv_buffer_size().ok()
    }

    /// The counters so far.
    pub fn stats(&self) -> Stats {
        self.inner.counters.snapshot()
    }

    /// Whether the endpoint was stopped.
    pub fn is_stopped(&self) -> bool {
        self.inner.cancel.is_cancelled()
    }

    /// Resolves when the endpoint is stopped and its receive task has ended.
    pub async fn closed(&self) {
        self.inner.cancel.cancelled().await;
        self.inner.tasks.wait().await;
    }

    /// Sends `req` to `peer` and returns its response, block-wise transfers included:
    /// a payload larger than `block.block_size` goes up in Block1 blocks (shrinking them
    /// when the server answers 4.13), and a response in Block2 blocks is fetched to the
    /// end (at most `block.max_body` bytes). Waits its turn in the server's NSTART queue
    /// for every message exchange. A 4.xx/5.xx answer is an `Ok(Response)`.
    ///
    /// Cancel-safe: dropping the future abandons the exchange (a later answer is reset).
    pub async fn request(
        &self,
        peer: SocketAddr,
        req: Request,
        params: &TransmissionParams,
        block: BlockConfig,
    ) -> Result<Response, TransportError> {
        check(&req, params, &block)?;
        block::request(&self.inner, normalize(peer), &req, params, &block).await
    }

    /// Registers an observation (RFC 7641): GET with Observe = 0. Returns once the first
    /// response is in ([`Observation::first`]); later notifications come from
    /// [`Observation::next`]. If the first response has no Observe option the server does
    /// not offer it for this resource: the observation is then inactive
    /// ([`Observation::is_active`] is false) and the caller should poll instead.
    pub async fn observe(
        &self,
        peer: SocketAddr,
        req: Request,
        params: &TransmissionParams,
        block: BlockConfig,
    ) -> Result<Observation, TransportError> {
        check(&req, params, &block)?;
        observe::register(self.clone(), normalize(peer), req, params.clone(), block).await
    }

    pub(crate) fn inner(&self) -> &Arc<Inner> {
        &self.inner
    }
}

fn check(
    req: &Request,
    params: &TransmissionParams,
    block: &BlockConfig,
) -> Result<(), TransportError> {
    params.validate().map_err(TransportError::Invalid)?;
    block.validate().map_err(TransportError::Invalid)?;
    // RFC 7252 §5.10: Uri-Path and Uri-Query values are 0–255 bytes.
    if let Some(s) = req.path.iter().chain(&req.query).find(|s| s.len() > 255) {
        return Err(TransportError::Invalid(format!(
            "a Uri-Path or Uri-Query value has {} bytes (255 at most)",
            s.len()
        )));
    }
    Ok(())
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

fn bind_socket(addr: SocketAddr, receive_buffer: Option<usize>) -> io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let domain = if addr.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let s = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        // The IPv4 socket handles IPv4: no v4-mapped addresses here, and both sockets can
        // use the same port.
        s.set_only_v6(true)?;
    }
    if let Some(want) = receive_buffer {
        // Not fatal: a smaller buffer only loses more datagrams in a burst.
        match s
            .set_recv_buffer_size(want)
            .and_then(|()| s.recv_buffer_size())
        {
            // Linux reports twice what it granted (its bookkeeping counts too).
            Ok(got) if got < want.saturating_mul(2) => tracing::info!(
                wanted = want,
                got = got / 2,
                "CoAP receive buffer capped by net.core.rmem_max: raise it (sysctl) to take \
                 larger bursts of datagrams"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cannot set the CoAP receive buffer"),
        }
    }
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    UdpSocket::from_std(s.into())
}

/// The routing key of a peer: IPv6 flow labels vary per datagram and are not part of
/// the endpoint's identity; the scope id (link-local) is.
pub(crate) fn normalize(peer: SocketAddr) -> SocketAddr {
    match peer {
        SocketAddr::V6(a) => {
            if let Some(v4) = a.ip().to_ipv4_mapped() {
                SocketAddr::from((v4, a.port()))
            } else {
                SocketAddr::V6(SocketAddrV6::new(*a.ip(), a.port(), 0, a.scope_id()))
            }
        }
        v4 => v4,
    }
}

impl Inner {
    fn socket_for(&self, peer: SocketAddr) -> Result<&UdpSocket, TransportError> {
        let s = if peer.is_ipv4() { &self.v4 } else { &self.v6 };
        s.as_ref().ok_or_else(|| {
            TransportError::Io(format!(
                "no {} socket for {peer}",
                if peer.is_ipv4() { "IPv4" } else { "IPv6" }
            ))
        })
    }

    /// Sends one datagram.
    pub async fn send(&self, peer: SocketAddr, bytes: &[u8]) -> Result<(), TransportError> {
        let s = self.socket_for(peer)?;
        s.send_to(bytes, peer).await?;
        Ok(())
    }

    /// Sends an ACK or RST from the receive task without waiting: if the socket buffer is
    /// full the message is lost like any datagram, and the peer retransmits.
    fn send_now(&self, peer: SocketAddr, bytes: &[u8]) {
        if let Ok(s) = self.socket_for(peer) {
            if let Err(e) = s.try_send_to(bytes, peer) {
                tracing::debug!(%peer, error = %e, "could not send an ACK/RST");
            }
        }
    }

    fn reset(&self, peer: SocketAddr, mid: u16) {
        Counters::bump(&self.counters.resets_sent);
        self.send_now(peer, &codec::empty(MessageType::Reset, mid));
    }

    /// Handles one received datagram. Returns whether it sent something.
    fn on_datagram(&self, peer: SocketAddr, buf: &[u8], log: &mut RateLimitedLog) -> bool {
        let now = Instant::now();
        let peer = normalize(peer);
        let msg = match codec::decode(buf) {
            Ok(m) => m,
            Err(e) => {
                Counters::bump(&self.counters.malformed);
                log.malformed(peer, &e.what);
                if let Some(mid) = e.con_mid {
                    // RFC 7252 §4.2: a CON that cannot be processed is rejected.
                    self.reset(peer, mid);
                    return true;
                }
                return false;
            }
        };
        match msg.mtype {
            MessageType::Acknowledgement | MessageType::Reset => {
                self.on_ack_or_reset(peer, msg, now, log);
                false
            }
            MessageType::Confirmable | MessageType::NonConfirmable => {
                self.on_con_or_non(peer, msg, now, log)
            }
        }
    }

    fn on_ack_or_reset(
        &self,
        peer: SocketAddr,
        msg: Message,
        now: Instant,
        log: &mut RateLimitedLog,
    ) {
        let event = match (msg.mtype, msg.is_empty(), msg.is_response()) {
            (MessageType::Acknowledgement, true, _) => Event::Ack,
            (MessageType::Reset, true, _) => Event::Reset,
            (MessageType::Acknowledgement, false, true) => {
                Event::Response(Box::new(msg.clone()), now)
            }
            _ => {
                // A RST with content, or an ACK carrying a request: format errors.
                Counters::bump(&self.counters.malformed);
                log.malformed(peer, "ACK/RST with an unexpected code");
                return;
            }
        };
        let st = self.state.lock().expect("endpoint state poisoned");
        match st.routes.by_mid.get(&(peer, msg.mid)) {
            Some(tx) => {
                // The exchange reads its channel until it is done; a full channel means a
                // flood of repeats for one message id, and dropping them is harmless.
                let _ = tx.try_send(event);
            }
            None => Counters::bump(&self.counters.unmatched),
        }
    }

    fn on_con_or_non(
        &self,
        peer: SocketAddr,
        msg: Message,
        now: Instant,
        log: &mut RateLimitedLog,
    ) -> bool {
        let con = msg.mtype == MessageType::Confirmable;
        if msg.is_empty() {
            if con {
                // A CoAP ping (RFC 7252 §4.3): answered with a Reset.
                self.reset(peer, msg.mid);
                return true;
            }
            Counters::bump(&self.counters.malformed);
            log.malformed(peer, "empty non-confirmable message");
            return false;
        }
        if msg.is_request() {
            // We serve no resources.
            if con {
                self.reset(peer, msg.mid);
                return true;
            }
            Counters::bump(&self.counters.unmatched);
            return false;
        }
        let mut st = self.state.lock().expect("endpoint state poisoned");
        if let Seen::Duplicate(reply) = st.dedup.check(peer, msg.mid, now) {
            drop(st);
            Counters::bump(&self.counters.duplicates);
            if let Some(reply) = reply {
                self.send_now(peer, &reply);
                return true;
            }
            return false;
        }
        let (mid, token) = (msg.mid, msg.token);
        let Some(route) = st.routes.by_token.get(&(peer, token)) else {
            drop(st);
            // A response or notification for nothing we hold (an abandoned exchange, a
            // cancelled observation, a server that lost track): reject it, so that the
            // server stops (RFC 7641 §3.6).
            self.reset(peer, mid);
            return true;
        };
        let lifetime = if con {
            route.con_lifetime
        } else {
            route.non_lifetime
        };
        match route.tx.try_send(Event::Response(Box::new(msg), now)) {
            Ok(()) => {
                let ack = con.then(|| codec::empty(MessageType::Acknowledgement, mid));
                st.dedup.record(peer, mid, lifetime, ack.clone(), now);
                drop(st);
                if let Some(ack) = ack {
                    self.send_now(peer, &ack);
                    return true;
                }
                false
            }
            Err(TrySendError::Full(_)) => {
                // The owner is behind. Not acknowledged and not remembered: a CON comes
                // again after the server's timeout, when there may be room.
                drop(st);
                Counters::bump(&self.counters.overflow);
                false
            }
            Err(TrySendError::Closed(_)) => {
                st.routes.by_token.remove(&(peer, token));
                drop(st);
                self.reset(peer, mid);
                true
            }
        }
    }
}

async fn recv_from(s: Option<&UdpSocket>, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
    match s {
        Some(s) => s.recv_from(buf).await,
        None => std::future::pending().await,
    }
}

async fn receive_task(inner: Arc<Inner>) {
    // 64 KiB: a datagram larger than the buffer would be cut short silently.
    let mut buf4 = vec![0u8; 65_536];
    let mut buf6 = vec![0u8; 65_536];
    let mut log = RateLimitedLog::new(inner.cfg.log_interval);
    let mut errors = RateLimitedLog::new(inner.cfg.log_interval);
    loop {
        let r = tokio::select! {
            _ = inner.cancel.cancelled() => break,
            r = recv_from(inner.v4.as_ref(), &mut buf4) => r.map(|(n, p)| (&buf4[..n], p)),
            r = recv_from(inner.v6.as_ref(), &mut buf6) => r.map(|(n, p)| (&buf6[..n], p)),
        };
        match r {
            Ok((bytes, peer)) => {
                if inner.on_datagram(peer, bytes, &mut log) {
                    // Let the runtime see the datagram we just sent before it moves on
                    // (keeps tokio's paused test clock from jumping past it).
                    tokio::task::yield_now().await;
                }
            }
            Err(e) => {
                // ICMP errors can surface here (e.g. ECONNREFUSED); none is fatal.
                errors.socket_error(&e);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    // Stopped: drop every route, so whoever waits sees the channel close.
    if let Ok(mut st) = inner.state.lock() {
        st.routes.clear();
    }
    tracing::debug!("CoAP endpoint stopped");
}
