//! Whether event subscribers are still there: the server keeps no presence of theirs
//! towards a device, so each is pinged now and then and forgotten when it stops answering.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use fieldgate_api::DeviceId;
use tokio_xmpp::minidom::Element;

use super::outbox::{self, Checked};
use super::Gateway;
use crate::xmpp::stanza::Header;

/// How often the liveness of subscribers is looked at.
pub(super) const LIVENESS_TICK: Duration = Duration::from_secs(1);
/// How long a liveness ping may stay unanswered.
const LIVENESS_TIMEOUT: Duration = Duration::from_secs(20);
const LIVENESS_ID: &str = "fg-live-";

/// The liveness probe state of one subscriber.
#[derive(Default)]
pub(super) struct Liveness {
    pub(super) last_probe: Option<Instant>,
    pub(super) outstanding: Option<(String, Instant)>,
}

pub(super) fn ping(from: &str, to: &str, id: &str) -> Element {
    use crate::xmpp::stanza::BuilderExt;
    Element::builder("iq", xmpp_parsers::ns::COMPONENT)
        .a("type", "get")
        .a("id", id)
        .a("from", from)
        .a("to", to)
        .append(Element::builder("ping", xmpp_parsers::ns::PING).build())
        .build()
}

impl Gateway {
    /// Pings subscribers now and then; one that does not answer loses its subscriptions.
    /// Requesters holding subscriptions or queued readouts are pinged every
    /// `[events] liveness_interval` to learn whether they are still there: the server
    /// keeps no presence for them towards the device, and what they hold would otherwise
    /// be held for good.
    pub(super) async fn probe_subscribers(&mut self, now: Instant) {
        for who in self.outbox.overdue(now) {
            self.forget_requester(&who, "no answer to the ping before its kept events");
        }
        // A ping cannot be answered while the link is down: waiting for one then would
        // end every subscription an outage outlasts.
        if !self.link_up {
            return;
        }
        let every = self.cfg.events.liveness_interval;
        let mut requesters: HashMap<String, DeviceId> = HashMap::new();
        for s in self.subscriptions.values() {
            requesters
                .entry(s.requester.clone())
                .or_insert_with(|| s.device.clone());
        }
        // A readout queued for later (`when`) is held for a requester who may be gone.
        for ((who, _), s) in &self.sessions {
            requesters
                .entry(who.clone())
                .or_insert_with(|| s.device.clone());
        }
        self.liveness.retain(|who, _| requesters.contains_key(who));
        let mut gone = Vec::new();
        let mut pings = Vec::new();
        for (who, device) in requesters {
            let l = self.liveness.entry(who.clone()).or_default();
            match &l.outstanding {
                Some((_, sent)) if now.duration_since(*sent) > LIVENESS_TIMEOUT.min(every) => {
                    gone.push(who)
                }
                Some(_) => {}
                None if l.last_probe.is_none_or(|t| now.duration_since(t) >= every) => {
                    self.next_iq += 1;
                    let id = format!("{LIVENESS_ID}{}", self.next_iq);
                    l.last_probe = Some(now);
                    l.outstanding = Some((id.clone(), now));
                    if let Some(dev) = self.devices.get(&device) {
                        pings.push(ping(&dev.full, &who, &id));
                    }
                }
                None => {}
            }
        }
        for who in gone {
            self.liveness.remove(&who);
            self.forget_requester(&who, "no answer to a liveness ping");
        }
        for p in pings {
            self.send(p).await;
        }
    }

    /// An iq result or error addressed to us: only answers to our liveness pings matter.
    pub(super) async fn on_iq_response(&mut self, h: &Header) {
        if let Some(id) =
            h.id.as_deref()
                .filter(|id| id.starts_with(outbox::CHECK_ID))
        {
            self.on_check_answer(h, id).await;
            return;
        }
        let Some(id) = h.id.as_deref().filter(|id| id.starts_with(LIVENESS_ID)) else {
            return;
        };
        let who = h.from.to_string();
        let matches = self
            .liveness
            .get(&who)
            .and_then(|l| l.outstanding.as_ref())
            .is_some_and(|(sent, _)| sent == id);
        if !matches {
            return;
        }
        if h.type_.as_deref() == Some("error") {
            self.liveness.remove(&who);
            self.forget_requester(&who, "liveness ping bounced");
        } else if let Some(l) = self.liveness.get_mut(&who) {
            l.outstanding = None;
        }
    }

    /// The link went down: pings out now will not be answered.
    pub(super) fn link_went_down(&mut self) {
        self.liveness.clear();
        self.outbox.link_down();
    }

    /// The link is up again: each subscriber with events kept for it is pinged, and
    /// gets them once it answers (see [`outbox`]).
    pub(super) async fn check_held_subscribers(&mut self) {
        let now = Instant::now();
        let who = self.outbox.link_up(now);
        if who.is_empty() {
            return;
        }
        tracing::info!(
            events = self.outbox.len(),
            subscribers = who.len(),
            "component link back: checking the subscribers of the events kept"
        );
        for (who, from) in who {
            self.next_iq += 1;
            let id = format!("{}{}", outbox::CHECK_ID, self.next_iq);
            self.send(ping(&from, &who, &id)).await;
            self.outbox.checking_with(who, id, now);
        }
    }

    async fn on_check_answer(&mut self, h: &Header, id: &str) {
        let who = h.from.to_string();
        let ok = h.type_.as_deref() == Some("result");
        let subs = &self.subscriptions;
        let checked = self
            .outbox
            .answered(&who, id, ok, |k| subs.contains_key(k), Instant::now());
        match checked {
            None => {}
            Some(Checked::Gone) => {
                self.forget_requester(&who, "its session ended while the link was down")
            }
            Some(Checked::Deliver(out)) => {
                if !out.is_empty() {
                    tracing::info!(requester = %who, events = out.len(),
                        "events kept while the link was down delivered");
                }
                for o in out {
                    let _ = self.out.send(o).await;
                }
            }
        }
    }
}

#[cfg(all(test, feature = "sim"))]
mod tests {
    use super::super::testing::{device, el, gateway, iq, ALICE, DOMAIN};
    use super::*;
    use crate::xmpp::link::Outbound;

    fn subscribed(t: &mut super::super::testing::TestGateway) {
        let sub = el(&format!(
            "<subscribe xmlns='{}' seqnr='1' maxInterval='PT1M'/>",
            crate::xmpp::payload::events::NS
        ));
        t.gw.on_subscribe(&iq("get", ALICE, "pump"), &"pump".into(), &sub);
        assert_eq!(t.gw.subscriptions.len(), 1);
    }

    fn sent_ping(out: &mut tokio::sync::mpsc::Receiver<Outbound>) -> String {
        let Ok(Outbound::One(p)) = out.try_recv() else {
            panic!("a ping was sent")
        };
        assert_eq!(p.attr("to"), Some(ALICE));
        assert!(p.has_child("ping", xmpp_parsers::ns::PING));
        p.attr("id").unwrap().to_owned()
    }

    fn answer(id: &str, type_: &str) -> Header {
        let el: Element = format!(
            "<iq xmlns='jabber:component:accept' type='{type_}' id='{id}' from='{ALICE}' to='pump@{DOMAIN}/gw'/>"
        )
        .parse()
        .unwrap();
        Header::parse(&el).unwrap()
    }

    #[tokio::test]
    async fn a_subscriber_that_answers_keeps_its_subscriptions() {
        let mut t = gateway(&device("pump"));
        subscribed(&mut t);
        let t0 = Instant::now();
        t.gw.probe_subscribers(t0).await;
        let id = sent_ping(&mut t.out);
        t.gw.on_iq_response(&answer(&id, "result")).await;
        // long after the timeout: nothing outstanding, so nothing is forgotten
        t.gw.probe_subscribers(t0 + LIVENESS_TIMEOUT * 2).await;
        assert_eq!(t.gw.subscriptions.len(), 1);
        // and the next probe comes after [events] liveness_interval
        t.gw.probe_subscribers(t0 + t.gw.cfg.events.liveness_interval)
            .await;
        sent_ping(&mut t.out);
    }

    #[tokio::test]
    async fn a_silent_or_bounced_subscriber_is_forgotten() {
        let mut t = gateway(&device("pump"));
        subscribed(&mut t);
        let t0 = Instant::now();
        t.gw.probe_subscribers(t0).await;
        sent_ping(&mut t.out);
        t.gw.probe_subscribers(t0 + LIVENESS_TIMEOUT).await;
        assert_eq!(t.gw.subscriptions.len(), 1, "not before the timeout");
        t.gw.probe_subscribers(t0 + LIVENESS_TIMEOUT + Duration::from_millis(1))
            .await;
        assert!(t.gw.subscriptions.is_empty());

        subscribed(&mut t);
        t.gw.probe_subscribers(t0).await;
        let id = sent_ping(&mut t.out);
        // an answer to somebody else's ping id changes nothing
        t.gw.on_iq_response(&answer("fg-live-999", "error")).await;
        assert_eq!(t.gw.subscriptions.len(), 1);
        t.gw.on_iq_response(&answer(&id, "error")).await;
        assert!(t.gw.subscriptions.is_empty());
    }
}
