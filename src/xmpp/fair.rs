//! The queue of inbound stanzas between the component link and the gateway, served in
//! turn per sender (bare JID): one requester flooding the gateway waits behind its own
//! stanzas, not in front of everybody else's, and when the queue is full it is the
//! flooder's excess that goes. An iq request that goes is kept as its routing header with
//! a `busy` refusal marker (a few hundred bytes), so that it is still answered
//! (`resource-constraint`): a client is never left waiting for an answer the protocol
//! owes it. Beyond a bound of such markers too, stanzas are dropped, counted.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;
use tokio_xmpp::minidom::Element;

use crate::xmpp::guard::{Refusal, Violation};

/// Why a stanza was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropped {
    /// Its sender already has as many stanzas waiting as one sender may.
    SenderFull,
    /// The queue was full and this sender had the most waiting.
    QueueFull,
}

/// One sender's stanzas; `true` marks a refusal marker standing for a stanza that went.
#[derive(Default)]
struct SenderQueue {
    items: VecDeque<(Element, bool)>,
    markers: usize,
}

impl SenderQueue {
    fn stanzas(&self) -> usize {
        self.items.len() - self.markers
    }
}

/// Refusal markers one sender may have waiting, and all senders together.
const MARKERS_PER_SENDER: usize = 4096;
const MARKERS: usize = 16_384;

struct State {
    queues: HashMap<Arc<str>, SenderQueue>,
    /// Senders with stanzas waiting, in the order they are served.
    turn: VecDeque<Arc<str>>,
    /// Stanzas (not markers) waiting.
    len: usize,
    markers: usize,
    closed: bool,
}

struct Shared {
    state: Mutex<State>,
    ready: Notify,
    per_sender: usize,
    total: usize,
}

/// The link's end.
pub struct FairSender(Arc<Shared>);

/// The gateway's end.
pub struct FairReceiver(Arc<Shared>);

/// A queue of at most `total` stanzas, at most `per_sender` of them from one sender.
pub fn channel(per_sender: usize, total: usize) -> (FairSender, FairReceiver) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            queues: HashMap::new(),
            turn: VecDeque::new(),
            len: 0,
            markers: 0,
            closed: false,
        }),
        ready: Notify::new(),
        per_sender: per_sender.max(1),
        total: total.max(1),
    });
    (FairSender(shared.clone()), FairReceiver(shared))
}

/// Whom a stanza counts against: the bare JID of its `from` (a sender cannot multiply
/// it by opening resources); stanzas without one share a key.
pub fn sender_of(el: &Element) -> &str {
    let from = el.attr("from").unwrap_or_default();
    from.split_once('/').map_or(from, |(bare, _)| bare)
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl FairSender {
    /// Queues `el` behind the other stanzas of its sender. When the sender already has
    /// its share waiting, or the queue is full and this sender has the most waiting, a
    /// stanza goes (the newest): an iq request becomes a refusal marker, anything else is
    /// dropped and returned.
    pub fn push(&self, el: Element) -> Result<(), (Dropped, Element)> {
        let key: Arc<str> = sender_of(&el).into();
        let mut st = self.0.lock();
        let st = &mut *st;
        let waiting = st.queues.get(&key).map_or(0, SenderQueue::stanzas);
        if waiting >= self.0.per_sender {
            return st.refuse(key, el, Dropped::SenderFull, self.0.per_sender);
        }
        if st.len >= self.0.total {
            let (longest, most) = st
                .queues
                .iter()
                .map(|(k, q)| (k.clone(), q.stanzas()))
                .max_by_key(|(_, n)| *n)
                .unwrap_or_else(|| (Arc::from(""), 0));
            if most <= waiting + 1 {
                return st.refuse(key, el, Dropped::QueueFull, self.0.per_sender);
            }
            // The longest queue gives up its newest stanza for this one.
            let evicted = st.queues.get_mut(&longest).and_then(|q| {
                let at = q.items.iter().rposition(|(_, marker)| !marker)?;
                q.items.remove(at).map(|(e, _)| e)
            });
            if let Some(e) = evicted {
                st.len -= 1;
                let _ = st.refuse(longest, e, Dropped::QueueFull, self.0.per_sender);
            }
        }
        st.enqueue(key, el, false);
        self.0.ready.notify_one();
        Ok(())
    }
}

impl State {
    fn enqueue(&mut self, key: Arc<str>, el: Element, marker: bool) {
        let q = self.queues.entry(key.clone()).or_default();
        if q.items.is_empty() {
            self.turn.push_back(key);
        }
        q.items.push_back((el, marker));
        if marker {
            q.markers += 1;
            self.markers += 1;
        } else {
            self.len += 1;
        }
    }

    /// `el` does not get a place: an iq request is kept as a refusal marker while there
    /// is room for one; anything else goes.
    fn refuse(
        &mut self,
        key: Arc<str>,
        el: Element,
        why: Dropped,
        limit: usize,
    ) -> Result<(), (Dropped, Element)> {
        let room = self.markers < MARKERS
            && self
                .queues
                .get(&key)
                .is_none_or(|q| q.markers < MARKERS_PER_SENDER);
        match busy_marker(&el, limit).filter(|_| room) {
            Some(marker) => {
                self.enqueue(key, marker, true);
                Ok(())
            }
            None => Err((why, el)),
        }
    }
}

/// The routing header of an iq request with a `busy` refusal in place of its payload;
/// `None` for anything that is owed no answer.
fn busy_marker(el: &Element, limit: usize) -> Option<Element> {
    let request = el.name() == "iq"
        && matches!(el.attr("type"), Some("get" | "set"))
        && el.attr("id").is_some();
    if !request {
        return None;
    }
    let mut b = Element::builder("iq", el.ns());
    for name in ["from", "to", "id", "type"] {
        if let Some(v) = el.attr(name) {
            b = b.attr(tokio_xmpp::minidom::rxml::NcName::try_from(name).ok()?, v);
        }
    }
    let refusal = Refusal {
        violation: Violation::Busy,
        limit,
        size: 0,
    };
    Some(b.append(Element::from(refusal)).build())
}

impl Drop for FairSender {
    fn drop(&mut self) {
        self.0.lock().closed = true;
        self.0.ready.notify_one();
    }
}

impl FairReceiver {
    /// The next stanza, senders served in turn; `None` once the link has gone and the
    /// queue is empty.
    pub async fn recv(&mut self) -> Option<Element> {
        loop {
            if let Some(el) = self.try_recv() {
                return Some(el);
            }
            if self.0.lock().closed {
                return None;
            }
            // `notify_one` keeps a permit when nobody waits: no wake-up is lost between
            // the check above and this wait.
            self.0.ready.notified().await;
        }
    }

    fn try_recv(&mut self) -> Option<Element> {
        let mut st = self.0.lock();
        let st = &mut *st;
        while let Some(key) = st.turn.pop_front() {
            let Some(q) = st.queues.get_mut(&key) else {
                continue;
            };
            let Some((el, marker)) = q.items.pop_front() else {
                st.queues.remove(&key);
                continue;
            };
            if marker {
                q.markers -= 1;
                st.markers -= 1;
            } else {
                st.len -= 1;
            }
            if q.items.is_empty() {
                st.queues.remove(&key);
            } else {
                st.turn.push_back(key);
            }
            return Some(el);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iq(from: &str, id: usize) -> Element {
        format!("<iq xmlns='jabber:component:accept' from='{from}' id='{id}'/>")
            .parse()
            .unwrap()
    }

    fn drain(rx: &mut FairReceiver) -> Vec<(String, String)> {
        std::iter::from_fn(|| rx.try_recv())
            .map(|e| {
                (
                    sender_of(&e).to_owned(),
                    e.attr("id").unwrap_or_default().to_owned(),
                )
            })
            .collect()
    }

    #[test]
    fn senders_are_served_in_turn() {
        let (tx, mut rx) = channel(100, 1000);
        for i in 0..5 {
            tx.push(iq("flood@x/a", i)).unwrap();
        }
        tx.push(iq("alice@x/r", 0)).unwrap();
        tx.push(iq("flood@x/b", 5)).unwrap();
        tx.push(iq("alice@x/r", 1)).unwrap();
        let order: Vec<String> = drain(&mut rx)
            .into_iter()
            .map(|(s, id)| format!("{s}:{id}"))
            .collect();
        assert_eq!(
            order,
            [
                "flood@x:0",
                "alice@x:0",
                "flood@x:1",
                "alice@x:1",
                "flood@x:2",
                "flood@x:3",
                "flood@x:4",
                "flood@x:5"
            ]
        );
    }

    #[test]
    fn the_flooder_loses_its_excess_not_the_others() {
        let (tx, mut rx) = channel(8, 10);
        let mut dropped = vec![];
        for i in 0..20 {
            if let Err((why, _)) = tx.push(iq("flood@x/a", i)) {
                dropped.push(why);
            }
        }
        assert_eq!(dropped.len(), 12);
        assert!(dropped.iter().all(|d| *d == Dropped::SenderFull));
        // the queue has room for two more; then a newcomer pushes the flooder's out
        for i in 0..4 {
            tx.push(iq("alice@x/r", i)).unwrap();
        }
        let got = drain(&mut rx);
        let alice = got.iter().filter(|(s, _)| s == "alice@x").count();
        let flood = got.iter().filter(|(s, _)| s == "flood@x").count();
        assert_eq!((alice, flood), (4, 6));
        // the flooder's oldest stanzas were kept, its newest went
        assert_eq!(got[0].1, "0");
    }

    #[test]
    fn a_request_that_does_not_fit_is_still_answered() {
        let (tx, mut rx) = channel(2, 100);
        let get = |id: usize| -> Element {
            format!(
                "<iq xmlns='jabber:component:accept' type='get' from='flood@x/a' \
                 to='pump@gw' id='q{id}'><ping xmlns='urn:xmpp:ping'/></iq>"
            )
            .parse()
            .unwrap()
        };
        for i in 0..5 {
            tx.push(get(i)).unwrap();
        }
        let got: Vec<Element> = std::iter::from_fn(|| rx.try_recv()).collect();
        assert_eq!(got.len(), 5);
        assert!(
            Refusal::of(&got[1]).is_none(),
            "the first two are served whole"
        );
        for m in &got[2..] {
            let r = Refusal::of(m).expect("a busy marker");
            assert_eq!((r.violation, r.limit), (Violation::Busy, 2));
            assert_eq!(m.attr("to"), Some("pump@gw"));
            assert_eq!(m.attr("type"), Some("get"));
            assert!(!m.has_child("ping", "urn:xmpp:ping"), "the payload is gone");
        }
        assert_eq!(got[4].attr("id"), Some("q4"));
    }

    #[tokio::test]
    async fn recv_waits_and_ends_when_the_link_goes() {
        let (tx, mut rx) = channel(8, 8);
        let waiter = tokio::spawn(async move {
            let first = rx.recv().await.map(|e| e.attr("id").unwrap().to_owned());
            let end = rx.recv().await;
            (first, end.is_none())
        });
        tokio::task::yield_now().await;
        tx.push(iq("a@x/r", 7)).unwrap();
        drop(tx);
        assert_eq!(waiter.await.unwrap(), (Some("7".to_owned()), true));
    }
}
