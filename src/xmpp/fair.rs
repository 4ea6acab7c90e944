//! The queue of inbound stanzas between the component link and the gateway, served in
//! turn per sender (bare JID): one requester flooding the gateway waits behind its own
//! stanzas, not in front of everybody else's, and when the queue is full it is the
//! flooder's excess that is dropped.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;
use tokio_xmpp::minidom::Element;

/// Why a stanza was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropped {
    /// Its sender already has as many stanzas waiting as one sender may.
    SenderFull,
    /// The queue was full and this sender had the most waiting.
    QueueFull,
}

struct State {
    queues: HashMap<Arc<str>, VecDeque<Element>>,
    /// Senders with stanzas waiting, in the order they are served.
    turn: VecDeque<Arc<str>>,
    len: usize,
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
    /// Queues `el` behind the other stanzas of its sender. When the queue is full, the
    /// sender with the most waiting loses its newest stanza (which may be `el`).
    pub fn push(&self, el: Element) -> Result<(), (Dropped, Element)> {
        let key = sender_of(&el);
        let mut st = self.0.lock();
        let waiting = st.queues.get(key).map_or(0, VecDeque::len);
        if waiting >= self.0.per_sender {
            return Err((Dropped::SenderFull, el));
        }
        if st.len >= self.0.total {
            let (longest, most) = st
                .queues
                .iter()
                .map(|(k, q)| (k.clone(), q.len()))
                .max_by_key(|(_, n)| *n)
                .unwrap_or_else(|| (Arc::from(""), 0));
            if most <= waiting + 1 {
                return Err((Dropped::QueueFull, el));
            }
            if let Some(q) = st.queues.get_mut(&longest) {
                q.pop_back();
                st.len -= 1;
            }
        }
        let key: Arc<str> = key.into();
        {
            let st = &mut *st;
            let q = st.queues.entry(key.clone()).or_default();
            if q.is_empty() {
                st.turn.push_back(key);
            }
            q.push_back(el);
            st.len += 1;
        }
        drop(st);
        self.0.ready.notify_one();
        Ok(())
    }
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
            let Some(el) = q.pop_front() else {
                st.queues.remove(&key);
                continue;
            };
            if q.is_empty() {
                st.queues.remove(&key);
            } else {
                st.turn.push_back(key);
            }
            st.len -= 1;
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
