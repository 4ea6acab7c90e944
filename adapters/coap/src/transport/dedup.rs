//! Duplicate detection of incoming confirmable and non-confirmable messages
//! (RFC 7252 §4.5): a message is a duplicate if the same peer sent the same message id
//! within EXCHANGE_LIFETIME (CON) or NON_LIFETIME (NON). A duplicate is not processed
//! again; a duplicated CON gets the same ACK again (its first ACK was lost, or it crossed
//! ours).
//!
//! Memory is bounded by `capacity` entries. When full, the oldest entry goes first (an
//! early eviction can only let a very late duplicate through, which the layers above
//! tolerate: a second response to a finished request matches nothing and is reset, a
//! repeated notification fails the freshness check).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug)]
struct Entry {
    expires: Instant,
    /// What we answered (an empty ACK), sent again for each duplicate.
    reply: Option<Vec<u8>>,
}

/// Whether a message was seen before.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Seen {
    New,
    /// Seen before; answer with this again, if anything.
    Duplicate(Option<Vec<u8>>),
}

#[derive(Debug)]
pub(crate) struct Dedup {
    map: HashMap<(SocketAddr, u16), Entry>,
    /// Insertion order, for expiry and eviction.
    order: VecDeque<(Instant, SocketAddr, u16)>,
    capacity: usize,
}

impl Dedup {
    pub fn new(capacity: usize) -> Self {
        Dedup {
            map: HashMap::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn check(&mut self, peer: SocketAddr, mid: u16, now: Instant) -> Seen {
        self.expire(now);
        match self.map.get(&(peer, mid)) {
            Some(e) if e.expires > now => Seen::Duplicate(e.reply.clone()),
            _ => Seen::New,
        }
    }

    pub fn record(
        &mut self,
        peer: SocketAddr,
        mid: u16,
        lifetime: Duration,
        reply: Option<Vec<u8>>,
        now: Instant,
    ) {
        self.expire(now);
        while self.map.len() >= self.capacity {
            match self.order.pop_front() {
                Some((exp, p, m)) => self.remove_if(p, m, exp),
                None => break,
            }
        }
        let expires = now + lifetime;
        self.map.insert((peer, mid), Entry { expires, reply });
        self.order.push_back((expires, peer, mid));
    }

    fn remove_if(&mut self, peer: SocketAddr, mid: u16, expires: Instant) {
        // The key may have been recorded again since; remove only the entry this order
        // slot stands for.
        if self
            .map
            .get(&(peer, mid))
            .is_some_and(|e| e.expires == expires)
        {
            self.map.remove(&(peer, mid));
        }
    }

    fn expire(&mut self, now: Instant) {
        // Entries are in insertion order; their lifetimes differ (CON / NON), so an
        // expired one may wait behind a live one: `check` compares `expires` anyway, and
        // the capacity bounds what waits.
        while let Some(&(exp, p, m)) = self.order.front() {
            if exp > now {
                break;
            }
            self.order.pop_front();
            self.remove_if(p, m, exp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> SocketAddr {
        SocketAddr::from(([10, 0, 0, 1], 5683))
    }

    #[test]
    fn duplicate_within_lifetime_gets_the_same_reply() {
        let t0 = Instant::now();
        let mut d = Dedup::new(16);
        assert_eq!(d.check(peer(), 7, t0), Seen::New);
        d.record(
            peer(),
            7,
            Duration::from_secs(247),
            Some(vec![0x60, 0, 0, 7]),
            t0,
        );
        let later = t0 + Duration::from_secs(246);
        assert_eq!(
            d.check(peer(), 7, later),
            Seen::Duplicate(Some(vec![0x60, 0, 0, 7]))
        );
        assert_eq!(d.check(peer(), 8, later), Seen::New);
        let other = SocketAddr::from(([10, 0, 0, 2], 5683));
        assert_eq!(d.check(other, 7, later), Seen::New);
        assert_eq!(d.check(peer(), 7, t0 + Duration::from_secs(247)), Seen::New);
        assert_eq!(d.len(), 0, "expired entries are dropped");
    }

    #[test]
    fn non_lifetime_and_con_lifetime_mixed() {
        let t0 = Instant::now();
        let mut d = Dedup::new(16);
        d.record(peer(), 1, Duration::from_secs(247), None, t0);
        d.record(peer(), 2, Duration::from_secs(145), None, t0);
        let t = t0 + Duration::from_secs(200);
        assert_eq!(d.check(peer(), 2, t), Seen::New, "NON_LIFETIME passed");
        assert_eq!(d.check(peer(), 1, t), Seen::Duplicate(None));
    }

    #[test]
    fn memory_is_bounded() {
        let t0 = Instant::now();
        let mut d = Dedup::new(100);
        for mid in 0..10_000u16 {
            d.record(peer(), mid, Duration::from_secs(247), None, t0);
            assert!(d.len() <= 100);
        }
        assert!(d.order.len() <= 100);
        assert_eq!(d.check(peer(), 9_999, t0), Seen::Duplicate(None));
        assert_eq!(d.check(peer(), 0, t0), Seen::New, "the oldest was evicted");
    }
}
