//! Who waits for what: the routing table of the receive task. An ACK or RST is matched by
//! (peer, message id) of the message it answers; a response or notification by
//! (peer, token) (RFC 7252 §4.2, §5.3.2). A [`Registration`] owns its entries and removes
//! them when dropped, so an exchange or observation that is abandoned (its future dropped,
//! its owner gone) leaves nothing behind: later messages for it match nothing and are
//! reset, which is what tells a server to stop notifying (RFC 7641 §3.6).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::codec::{Message, Token};
use super::endpoint::Inner;
use super::error::TransportError;
use super::ids::Ids;

/// What the receive task hands to an exchange or an observation.
#[derive(Debug)]
pub(crate) enum Event {
    /// An empty ACK for our message id.
    Ack,
    /// A Reset for our message id.
    Reset,
    /// A response: piggybacked in an ACK (matched by message id), or separate / a
    /// notification (matched by token); with the time it arrived.
    Response(Box<Message>, Instant),
}

#[derive(Debug)]
pub(crate) struct TokenRoute {
    pub tx: mpsc::Sender<Event>,
    /// How long a CON and a NON from this peer are remembered for duplicate detection.
    pub con_lifetime: Duration,
    pub non_lifetime: Duration,
}

#[derive(Debug, Default)]
pub(crate) struct Routes {
    pub by_mid: HashMap<(SocketAddr, u16), mpsc::Sender<Event>>,
    pub by_token: HashMap<(SocketAddr, Token), TokenRoute>,
}

impl Routes {
    pub fn clear(&mut self) {
        self.by_mid.clear();
        self.by_token.clear();
    }
}

/// A token (and, while a message is outstanding, a message id) registered for one peer,
/// with the channel its messages arrive on.
#[derive(Debug)]
pub(crate) struct Registration {
    inner: Arc<Inner>,
    pub peer: SocketAddr,
    pub token: Token,
    mid: Option<u16>,
    tx: mpsc::Sender<Event>,
    pub rx: mpsc::Receiver<Event>,
}

impl Registration {
    /// Registers a fresh random token (or `token`, to re-register or deregister an
    /// observation with its own token) for `peer`. `capacity` bounds the messages
    /// buffered for the owner.
    pub fn new(
        inner: &Arc<Inner>,
        peer: SocketAddr,
        token: Option<Token>,
        capacity: usize,
        dedup: (Duration, Duration),
    ) -> Result<Registration, TransportError> {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let mut st = inner.state.lock().expect("endpoint state poisoned");
        if inner.cancel.is_cancelled() {
            return Err(TransportError::Stopped);
        }
        let token = match token {
            Some(t) => {
                if st.routes.by_token.contains_key(&(peer, t)) {
                    return Err(TransportError::Invalid(format!(
                        "token {t:?} is already in use for {peer}"
                    )));
                }
                t
            }
            None => Ids::token(inner.cfg.token_len, |t| {
                st.routes.by_token.contains_key(&(peer, *t))
            }),
        };
        st.routes.by_token.insert(
            (peer, token),
            TokenRoute {
                tx: tx.clone(),
                con_lifetime: dedup.0,
                non_lifetime: dedup.1,
            },
        );
        drop(st);
        Ok(Registration {
            inner: inner.clone(),
            peer,
            token,
            mid: None,
            tx,
            rx,
        })
    }

    /// Allocates the next message id for the peer and routes ACK/RST for it here.
    pub fn bind_mid(&mut self) -> u16 {
        self.release_mid();
        let mut st = self.inner.state.lock().expect("endpoint state poisoned");
        let st = &mut *st;
        let peer = self.peer;
        let by_mid = &st.routes.by_mid;
        let mid = st.ids.next_mid(peer, |m| by_mid.contains_key(&(peer, m)));
        st.routes.by_mid.insert((peer, mid), self.tx.clone());
        self.mid = Some(mid);
        mid
    }

    /// Stops routing ACK/RST for the current message id here.
    pub fn release_mid(&mut self) {
        if let Some(mid) = self.mid.take() {
            let mut st = self.inner.state.lock().expect("endpoint state poisoned");
            if st
                .routes
                .by_mid
                .get(&(self.peer, mid))
                .is_some_and(|tx| tx.same_channel(&self.tx))
            {
                st.routes.by_mid.remove(&(self.peer, mid));
            }
        }
    }

    pub fn inner(&self) -> &Arc<Inner> {
        &self.inner
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let Ok(mut st) = self.inner.state.lock() else {
            return;
        };
        if let Some(mid) = self.mid.take() {
            if st
                .routes
                .by_mid
                .get(&(self.peer, mid))
                .is_some_and(|tx| tx.same_channel(&self.tx))
            {
                st.routes.by_mid.remove(&(self.peer, mid));
            }
        }
        let key = (self.peer, self.token);
        if st
            .routes
            .by_token
            .get(&key)
            .is_some_and(|r| r.tx.same_channel(&self.tx))
        {
            st.routes.by_token.remove(&key);
        }
    }
}
