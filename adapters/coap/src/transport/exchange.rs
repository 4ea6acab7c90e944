//! One message exchange: a request out, its response back (RFC 7252 §4.2–4.3, §5.2).
//!
//! Confirmable: sent, then retransmitted with the same message id when no ACK came within
//! the timeout: the first timeout random in [ACK_TIMEOUT, ACK_TIMEOUT × ACK_RANDOM_FACTOR],
//! doubled after each retransmission; after MAX_RETRANSMIT retransmissions and one more
//! timeout, [`TransportError::Timeout`]. The transmissions happen at t₀, t₀+T, t₀+3T,
//! t₀+7T, t₀+15T and the give-up at t₀+31T (T the first timeout): the deadlines are kept
//! on that schedule, not restarted from whenever the task ran.
//!
//! The answer can be a piggybacked response (an ACK carrying it, matched by message id and
//! checked against the token), an empty ACK and later a separate response (matched by
//! token; the receive task ACKs it if it is CON), a separate response whose ACK was lost
//! (it acknowledges the request as well), or a Reset ([`TransportError::Reset`]).
//!
//! Non-confirmable: sent once; a response (or Reset) is awaited for
//! [`TransmissionParams::response_timeout`], as is a separate response after an empty ACK.

use std::net::SocketAddr;
use std::sync::Arc;

use coap_lite::{MessageType, Packet};
use tokio::time::{sleep_until, Instant};

use super::codec::{self, Message};
use super::endpoint::Inner;
use super::error::TransportError;
use super::params::TransmissionParams;
use super::routes::{Event, Registration};
use super::stats::Counters;

/// Runs one exchange on `reg` (whose token the packet gets). The packet's type
/// (CON/NON) decides the reliability. The registration keeps its token route afterwards,
/// so an observation can go on receiving on it.
pub(crate) async fn exchange(
    reg: &mut Registration,
    mut packet: Packet,
    params: &TransmissionParams,
) -> Result<(Message, Instant), TransportError> {
    let inner = reg.inner().clone();
    let con = packet.header.get_type() == MessageType::Confirmable;
    packet.header.message_id = reg.bind_mid();
    packet.set_token(reg.token.as_slice().to_vec());
    let bytes = codec::encode(&packet)?;
    let result = run(&inner, reg, &bytes, con, params).await;
    reg.release_mid();
    result
}

async fn run(
    inner: &Arc<Inner>,
    reg: &mut Registration,
    bytes: &[u8],
    con: bool,
    params: &TransmissionParams,
) -> Result<(Message, Instant), TransportError> {
    let peer = reg.peer;
    transmit(inner, peer, bytes).await?;
    let first = Instant::now();
    let mut timeout = params.initial_timeout();
    let mut acked = !con;
    let mut deadline = if con {
        first + timeout
    } else {
        first + params.response_timeout
    };
    let mut retransmissions = 0;
    loop {
        tokio::select! {
            // Messages first: a response that arrived together with the timer must win.
            biased;
            _ = inner.cancel.cancelled() => return Err(TransportError::Stopped),
            ev = reg.rx.recv() => match ev {
                None => return Err(TransportError::Stopped),
                Some(Event::Ack) => {
                    if !acked {
                        acked = true;
                        reg.release_mid();
                        deadline = Instant::now() + params.response_timeout;
                        tracing::trace!(%peer, "empty ACK: waiting for the separate response");
                    }
                }
                Some(Event::Reset) => return Err(TransportError::Reset),
                Some(Event::Response(msg, at)) => {
                    if msg.mtype == MessageType::Acknowledgement && msg.token != reg.token {
                        // It acknowledges our message but answers another token: not our
                        // response (RFC 7252 §5.3.2). Take it as an empty ACK.
                        tracing::debug!(%peer, token = ?msg.token, "piggybacked response with a foreign token");
                        if !acked {
                            acked = true;
                            reg.release_mid();
                            deadline = Instant::now() + params.response_timeout;
                        }
                        continue;
                    }
                    return Ok((*msg, at));
                }
            },
            _ = sleep_until(deadline) => {
                if acked {
                    return Err(TransportError::NoResponse { waited: params.response_timeout });
                }
                if retransmissions >= params.max_retransmit {
                    return Err(TransportError::Timeout { retransmissions });
                }
                transmit(inner, peer, bytes).await?;
                retransmissions += 1;
                Counters::bump(&inner.counters.retransmissions);
                timeout *= 2;
                deadline += timeout;
                tracing::debug!(%peer, retransmissions, next_timeout = ?timeout, "CoAP retransmission");
            }
        }
    }
}

async fn transmit(inner: &Inner, peer: SocketAddr, bytes: &[u8]) -> Result<(), TransportError> {
    inner.send(peer, bytes).await?;
    // One scheduler pass, so that a datagram already queued for us (on loopback the
    // answer can be there at once) is seen before the next timer. Costs nothing in
    // production; keeps tokio's paused test clock from jumping past the answer.
    tokio::task::yield_now().await;
    Ok(())
}

/// One exchange from start to end: waits for the server's NSTART turn, registers a fresh
/// token, runs the exchange, and releases both.
pub(crate) async fn round_trip(
    inner: &Arc<Inner>,
    peer: SocketAddr,
    packet: Packet,
    params: &TransmissionParams,
) -> Result<Message, TransportError> {
    let _turn = turn(inner, peer, params).await?;
    let mut reg = Registration::new(inner, peer, None, 4, lifetimes(params))?;
    exchange(&mut reg, packet, params).await.map(|(m, _)| m)
}

/// Waits for the server's NSTART turn, or for the endpoint to stop.
pub(crate) async fn turn(
    inner: &Arc<Inner>,
    peer: SocketAddr,
    params: &TransmissionParams,
) -> Result<super::queue::Permit, TransportError> {
    tokio::select! {
        _ = inner.cancel.cancelled() => Err(TransportError::Stopped),
        p = inner.queues.acquire(peer, params.nstart) => Ok(p),
    }
}

/// The duplicate-detection lifetimes of CON and NON messages under `params`.
pub(crate) fn lifetimes(params: &TransmissionParams) -> (std::time::Duration, std::time::Duration) {
    (params.exchange_lifetime(), params.non_lifetime())
}
