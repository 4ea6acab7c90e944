//! Message ids and tokens (RFC 7252 §4.4, §5.3.1).
//!
//! Message ids: one counter per peer, starting at a random value so that a restarted
//! gateway does not reuse the ids of its previous life (the server's duplicate detection
//! would answer our new request with the old response), incremented per message. An id
//! still waiting for its ACK is skipped.
//!
//! Tokens: random, `token_len` (4–8) bytes, unique among the tokens held for that peer
//! (the caller checks the routing table). Random tokens keep an off-path attacker from
//! guessing them and a late response from an old exchange from matching a new one.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::Instant;

use super::codec::Token;

/// A peer's counter is forgotten after this long unused (then any id it used has expired
/// from every duplicate cache). The default EXCHANGE_LIFETIME.
const FORGET_AFTER: Duration = Duration::from_secs(247);
/// Forgotten counters are swept when the table reaches this many peers.
const SWEEP_AT: usize = 1024;

#[derive(Debug)]
struct PeerIds {
    next: u16,
    used: Instant,
}

#[derive(Debug, Default)]
pub(crate) struct Ids {
    peers: HashMap<SocketAddr, PeerIds>,
    sweep_at: usize,
}

impl Ids {
    /// The next message id for `peer` for which `in_use` is false.
    pub fn next_mid(&mut self, peer: SocketAddr, in_use: impl Fn(u16) -> bool) -> u16 {
        let now = Instant::now();
        if self.peers.len() >= self.sweep_at.max(SWEEP_AT) {
            self.peers
                .retain(|_, p| now.duration_since(p.used) < FORGET_AFTER);
            self.sweep_at = self.peers.len() * 2;
        }
        let p = self.peers.entry(peer).or_insert_with(|| PeerIds {
            next: rand::random(),
            used: now,
        });
        p.used = now;
        // At most 65,536 ids can be in use; the table of outstanding messages is far
        // smaller, so this ends at once in practice.
        for _ in 0..=u16::MAX as u32 {
            let mid = p.next;
            p.next = p.next.wrapping_add(1);
            if !in_use(mid) {
                return mid;
            }
        }
        p.next
    }

    /// A fresh random token of `len` bytes (clamped to 4–8) for which `in_use` is false.
    pub fn token(len: u8, in_use: impl Fn(&Token) -> bool) -> Token {
        let len = len.clamp(4, 8) as usize;
        loop {
            let mut b = [0u8; 8];
            rand::fill(&mut b[..len]);
            let t = Token::new(&b[..len]).expect("at most 8 bytes");
            if !in_use(&t) {
                return t;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn mids_are_sequential_per_peer_from_a_random_start() {
        let mut ids = Ids::default();
        let a0 = ids.next_mid(addr(1), |_| false);
        let a1 = ids.next_mid(addr(1), |_| false);
        assert_eq!(a1, a0.wrapping_add(1));
        let starts: HashSet<u16> = (0..50u16)
            .map(|p| ids.next_mid(addr(100 + p), |_| false))
            .collect();
        assert!(starts.len() > 40, "starting ids must be random: {starts:?}");
    }

    #[test]
    fn mids_in_use_are_skipped() {
        let mut ids = Ids::default();
        let a0 = ids.next_mid(addr(1), |_| false);
        let busy = a0.wrapping_add(1);
        let a1 = ids.next_mid(addr(1), |m| m == busy);
        assert_eq!(a1, a0.wrapping_add(2));
    }

    #[test]
    fn tokens_are_random_sized_and_unique() {
        for len in [0u8, 4, 6, 8, 12] {
            let t = Ids::token(len, |_| false);
            assert_eq!(t.as_slice().len(), (len.clamp(4, 8)) as usize);
        }
        let first = Ids::token(8, |_| false);
        let next = Ids::token(8, |t| *t == first);
        assert_ne!(first, next);
        let many: HashSet<Token> = (0..1000).map(|_| Ids::token(4, |_| false)).collect();
        assert!(many.len() > 990);
    }
}
