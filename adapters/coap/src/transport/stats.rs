//! Counters of what the transport dropped, repeated or refused, and the rate limit of the
//! log lines about them. Counters only grow; read them with [`super::Endpoint::stats`].

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use tokio::time::Instant;

/// A snapshot of the endpoint's counters (since it was bound).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Datagrams dropped because they are not valid CoAP (truncated header, version ≠ 1,
    /// token length 9–15, bad option delta or length, bytes after an empty message …).
    pub malformed: u64,
    /// Confirmable or non-confirmable messages received again (same peer and message id
    /// within EXCHANGE_LIFETIME / NON_LIFETIME): answered as before, not processed again.
    pub duplicates: u64,
    /// Retransmissions of our confirmable messages.
    pub retransmissions: u64,
    /// Reset messages we sent: responses or notifications for no request we hold, CoAP
    /// pings, requests (we are a client), undecodable confirmable messages.
    pub resets_sent: u64,
    /// ACK, RST or piggybacked responses that match no outstanding message (late or
    /// repeated): ignored.
    pub unmatched: u64,
    /// Notifications not taken because the observation's buffer was full (a confirmable one
    /// is left unacknowledged, so the server sends it again).
    pub overflow: u64,
    /// Notifications discarded as older than one already delivered (RFC 7641 §3.4).
    pub stale_notifications: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub malformed: AtomicU64,
    pub duplicates: AtomicU64,
    pub retransmissions: AtomicU64,
    pub resets_sent: AtomicU64,
    pub unmatched: AtomicU64,
    pub overflow: AtomicU64,
    pub stale_notifications: AtomicU64,
}

impl Counters {
    pub fn bump(c: &AtomicU64) {
        c.fetch_add(1, Relaxed);
    }

    pub fn snapshot(&self) -> Stats {
        Stats {
            malformed: self.malformed.load(Relaxed),
            duplicates: self.duplicates.load(Relaxed),
            retransmissions: self.retransmissions.load(Relaxed),
            resets_sent: self.resets_sent.load(Relaxed),
            unmatched: self.unmatched.load(Relaxed),
            overflow: self.overflow.load(Relaxed),
            stale_notifications: self.stale_notifications.load(Relaxed),
        }
    }
}

/// At most one warning per `interval` about bad datagrams; the ones held back are counted
/// and reported with the next line. A device that sends garbage at line rate must not turn
/// the log into the bottleneck.
#[derive(Debug)]
pub(crate) struct RateLimitedLog {
    interval: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimitedLog {
    pub fn new(interval: Duration) -> Self {
        RateLimitedLog {
            interval,
            last: None,
            suppressed: 0,
        }
    }

    /// Whether a line may be written now; counts the ones held back.
    fn allow(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self.last.is_some_and(|t| now < t + self.interval) {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }

    pub fn malformed(&mut self, peer: SocketAddr, what: &str) {
        if let Some(suppressed) = self.allow() {
            tracing::warn!(%peer, error = what, suppressed, "dropped a malformed CoAP datagram");
        }
    }

    pub fn socket_error(&mut self, error: &std::io::Error) {
        if let Some(suppressed) = self.allow() {
            tracing::warn!(%error, suppressed, "CoAP socket receive error");
        }
    }
}
