//! Observe (RFC 7641), client side.
//!
//! [`Endpoint::observe`](super::Endpoint::observe) sends GET with Observe = 0 and keeps
//! the token's route open; notifications arrive on it in a bounded channel (the receive
//! task has already acknowledged the confirmable ones, answered duplicates and reset
//! notifications for observations we no longer hold). [`Observation::next`] hands them
//! over in order of arrival and discards the stale ones by the rule of §3.4: a
//! notification is fresher than the last delivered one if its 24-bit sequence number V2
//! and the last one V1 satisfy (V1 < V2 and V2 − V1 < 2²³) or (V1 > V2 and V1 − V2 > 2²³),
//! or if it arrived more than 128 s after it. A notification without Observe (an error
//! code, or the server ending the relation) is the last one.
//!
//! Silence is not detected here: [`Observation::last_notification_at`] and
//! [`Observation::max_age`] let the owner re-register ([`Observation::reregister`]) when
//! nothing came for Max-Age plus a margin (a server restart loses its observers without a
//! word). [`Observation::cancel`] deregisters explicitly (GET with Observe = 1); dropping
//! an observation deregisters passively (its next notification is reset).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::Instant;

use super::block::{self, BlockConfig};
use super::codec::{self, Extra, Token};
use super::endpoint::Endpoint;
use super::error::TransportError;
use super::exchange::{exchange, lifetimes, turn};
use super::params::TransmissionParams;
use super::routes::{Event, Registration};
use super::stats::Counters;
use super::types::{Method, Request, Response};

/// The Observe sequence number space: 24 bits.
const SEQ_MASK: u32 = 0x00ff_ffff;
const HALF: u32 = 1 << 23;
/// After this long, any notification is fresher than the last (RFC 7641 §3.4).
const FRESHNESS_WINDOW: Duration = Duration::from_secs(128);

/// Whether a notification (`v2`, arrived `t2`) is fresher than the last one delivered
/// (`v1`, arrived `t1`), by RFC 7641 §3.4.
pub(crate) fn is_fresher(v1: u32, t1: Instant, v2: u32, t2: Instant) -> bool {
    let (v1, v2) = (v1 & SEQ_MASK, v2 & SEQ_MASK);
    (v1 < v2 && v2 - v1 < HALF) || (v1 > v2 && v1 - v2 > HALF) || t2 > t1 + FRESHNESS_WINDOW
}

/// One notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    /// The notification, its body complete (Block2 fetched).
    pub response: Response,
    /// When its (first) datagram arrived.
    pub arrived: Instant,
    /// The observation ended with this one: it carried no Observe option or an error code.
    /// [`Observation::next`] returns `None` from now on.
    pub last: bool,
}

/// A live observation of one resource. Not `Clone`: one owner reads the notifications.
#[derive(Debug)]
pub struct Observation {
    endpoint: Endpoint,
    peer: SocketAddr,
    req: Request,
    params: TransmissionParams,
    block: BlockConfig,
    token: Token,
    /// `None` once the observation has ended.
    reg: Option<Registration>,
    first: Response,
    last_seq: Option<u32>,
    last_at: Instant,
    max_age: Duration,
}

pub(crate) async fn register(
    endpoint: Endpoint,
    peer: SocketAddr,
    req: Request,
    params: TransmissionParams,
    block: BlockConfig,
) -> Result<Observation, TransportError> {
    if req.method != Method::Get {
        return Err(TransportError::Invalid(format!(
            "Observe registers with GET, not {}",
            req.method
        )));
    }
    let mut obs = Observation {
        endpoint,
        peer,
        req,
        params,
        block,
        token: Token::default(),
        reg: None,
        first: Response::default(),
        last_seq: None,
        last_at: Instant::now(),
        max_age: super::params::DEFAULT_MAX_AGE,
    };
    let inner = obs.endpoint.inner().clone();
    let reg = Registration::new(
        &inner,
        peer,
        None,
        inner.cfg.notification_buffer,
        lifetimes(&obs.params),
    )?;
    obs.first = obs.register_on(reg).await?;
    Ok(obs)
}

impl Observation {
    /// Sends GET with Observe = `observe` (0 register, 1 deregister) with `reg`'s token,
    /// in the server's NSTART turn.
    async fn send_on(
        &self,
        reg: &mut Registration,
        observe: u32,
    ) -> Result<(codec::Message, Instant), TransportError> {
        let inner = self.endpoint.inner().clone();
        let _turn = turn(&inner, self.peer, &self.params).await?;
        let packet = codec::request_packet(
            &self.req,
            &[],
            Extra {
                observe: Some(observe),
                block2: block::early_block2(&self.req, &self.block),
                ..Default::default()
            },
        );
        exchange(reg, packet, &self.params).await
    }

    /// Registers on `reg` and makes it this observation's route if the server accepts.
    /// Returns the complete first response.
    async fn register_on(&mut self, mut reg: Registration) -> Result<Response, TransportError> {
        let (msg, at) = self.send_on(&mut reg, 0).await?;
        let seq = codec::observe(&msg.packet)?;
        let inner = self.endpoint.inner().clone();
        let resp =
            block::download_rest(&inner, self.peer, &self.req, &self.params, &self.block, msg)
                .await?;
        self.token = reg.token;
        self.last_seq = seq;
        self.last_at = at;
        self.max_age = resp.max_age_or_default();
        // Without Observe in the answer the server does not keep us (RFC 7641 §3.1).
        self.reg = (seq.is_some() && resp.is_success()).then_some(reg);
        Ok(resp)
    }

    /// This observation's route, emptied (what was buffered is superseded by the answer
    /// about to be asked for), or a new one with the same token.
    fn take_route(&mut self) -> Result<Registration, TransportError> {
        match self.reg.take() {
            Some(mut reg) => {
                while reg.rx.try_recv().is_ok() {}
                Ok(reg)
            }
            None => {
                let inner = self.endpoint.inner().clone();
                Registration::new(
                    &inner,
                    self.peer,
                    Some(self.token),
                    inner.cfg.notification_buffer,
                    lifetimes(&self.params),
                )
            }
        }
    }

    /// The response to the registration (or to the last [`Observation::reregister`]).
    pub fn first(&self) -> &Response {
        &self.first
    }

    /// The server this observation is with.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// Whether notifications can still come: false once a notification ended it, the
    /// server declined Observe, a re-registration failed, or the endpoint stopped.
    pub fn is_active(&self) -> bool {
        self.reg.is_some() && !self.endpoint.is_stopped()
    }

    /// When the last fresh notification (or the registration's answer) arrived.
    pub fn last_notification_at(&self) -> Instant {
        self.last_at
    }

    /// Max-Age of the last notification (60 s when it had none): the server promises a
    /// notification at least this often while the value is fresh.
    pub fn max_age(&self) -> Duration {
        self.max_age
    }

    /// When to re-register if nothing comes: last notification + Max-Age + `margin`.
    pub fn silence_deadline(&self, margin: Duration) -> Instant {
        self.last_at + self.max_age + margin
    }

    /// The next fresh notification; `None` when the observation has ended (a last
    /// notification was returned before) or the endpoint stopped. Stale notifications are
    /// counted ([`super::Stats::stale_notifications`]) and skipped.
    ///
    /// Cancel-safe while waiting (use it under `tokio::time::timeout_at` with
    /// [`Observation::silence_deadline`]); if dropped while the remaining blocks of a
    /// block-wise notification are being fetched, that notification is lost.
    pub async fn next(&mut self) -> Option<Notification> {
        loop {
            let reg = self.reg.as_mut()?;
            let inner = self.endpoint.inner().clone();
            let ev = tokio::select! {
                // What is already buffered is still delivered after a stop.
                biased;
                ev = reg.rx.recv() => ev,
                _ = inner.cancel.cancelled() => None,
            };
            let (msg, at) = match ev {
                None => {
                    self.reg = None;
                    return None;
                }
                Some(Event::Response(m, at)) => (m, at),
                Some(Event::Ack | Event::Reset) => continue,
            };
            let seq = match codec::observe(&msg.packet) {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(peer = %self.peer, error = %e, "notification with a bad Observe value");
                    Counters::bump(&inner.counters.malformed);
                    continue;
                }
            };
            if let (Some(v1), Some(v2)) = (self.last_seq, seq) {
                if !is_fresher(v1, self.last_at, v2, at) {
                    Counters::bump(&inner.counters.stale_notifications);
                    tracing::debug!(peer = %self.peer, last = v1, got = v2, "stale notification discarded");
                    continue;
                }
            }
            let response = match block::download_rest(
                &inner,
                self.peer,
                &self.req,
                &self.params,
                &self.block,
                *msg,
            )
            .await
            {
                Ok(r) => r,
                Err(TransportError::Stopped) => {
                    self.reg = None;
                    return None;
                }
                Err(e) => {
                    // The notification's remaining blocks could not be fetched; the next
                    // notification may do better, and silence leads to re-registration.
                    tracing::warn!(peer = %self.peer, error = %e, "block-wise notification incomplete");
                    continue;
                }
            };
            let last = seq.is_none() || !response.is_success();
            if last {
                self.reg = None;
            } else {
                self.last_seq = seq;
                self.last_at = at;
                self.max_age = response.max_age_or_default();
            }
            return Some(Notification {
                response,
                arrived: at,
                last,
            });
        }
    }

    /// Registers again with the same token (RFC 7641 §3.3.1), e.g. after Max-Age of
    /// silence: a server that restarted gets us back, one that did not just answers. The
    /// route stays in place meanwhile (no notification is reset); notifications buffered
    /// and not yet read are dropped, the answer supersedes them. Returns the fresh
    /// response (also [`Observation::first`]); freshness starts over from it. On error the
    /// observation has ended; observe anew later.
    pub async fn reregister(&mut self) -> Result<Response, TransportError> {
        let reg = self.take_route()?;
        let r = self.register_on(reg).await?;
        self.first = r.clone();
        Ok(r)
    }

    /// Ends the observation explicitly: GET with Observe = 1 and the same token
    /// (RFC 7641 §3.6), so the server stops at once. The answer is not returned.
    pub async fn cancel(mut self) -> Result<(), TransportError> {
        let mut reg = self.take_route()?;
        self.send_on(&mut reg, 1).await.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freshness_rule_of_rfc_7641_section_3_4() {
        let t = Instant::now();
        let soon = t + Duration::from_secs(1);
        assert!(is_fresher(1, t, 2, soon));
        assert!(!is_fresher(2, t, 1, soon), "older");
        assert!(!is_fresher(5, t, 5, soon), "same");
        // Wrap-around of the 24-bit space: 2^24 − 1 → 0 is newer.
        assert!(is_fresher(SEQ_MASK, t, 0, soon));
        assert!(!is_fresher(0, t, SEQ_MASK, soon));
        // Exactly half the space apart counts as neither.
        assert!(!is_fresher(0, t, HALF, soon));
        assert!(!is_fresher(HALF, t, 0, soon));
        assert!(is_fresher(0, t, HALF - 1, soon));
        assert!(is_fresher(HALF + 1, t, 0, soon));
        // After 128 s anything is fresher (the server may have restarted).
        assert!(!is_fresher(100, t, 3, t + Duration::from_secs(128)));
        assert!(is_fresher(100, t, 3, t + Duration::from_secs(129)));
        // Values beyond 24 bits are reduced.
        assert!(is_fresher(1 << 24, t, 1, soon));
    }
}
