//! Presence as the XMPP server does not keep it for components: subscriptions answered
//! under the access policy (and persisted before `subscribed` goes out), probes, and each
//! device's presence announced, broadcast on changes and withdrawn.

use std::sync::Arc;

use fieldgate_api::{DeviceId, Reachability};
use tokio_xmpp::minidom::Element;

use super::{Device, Gateway};
use crate::access::{self, Right};
use crate::state::Commit;
use crate::xmpp::presence;
use crate::xmpp::stanza::Header;

impl Gateway {
    /// The presence a device shows right now, addressed to `to`.
    pub(super) fn presence_of(dev: &Device, to: &str) -> Element {
        match &dev.reach {
            Some(Reachability::Reachable) => presence::available(&dev.full, to, &dev.caps),
            // Seen by every subscriber: the public text only.
            Some(Reachability::Unreachable(why)) => {
                presence::unavailable(&dev.full, to, why.public())
            }
            None => presence::unavailable(&dev.full, to, "starting: device state not known yet"),
        }
    }

    pub(super) async fn broadcast(&self, id: &DeviceId) {
        let Some(dev) = self.devices.get(id) else {
            return;
        };
        for sub in self.subscribers.get(&**id).into_iter().flatten() {
            self.send(Self::presence_of(dev, sub)).await;
        }
    }

    pub(super) async fn announce_all(&self) {
        let mut sent = 0usize;
        for id in &self.order {
            let dev = &self.devices[id];
            if dev.reach.is_none() {
                continue;
            }
            for sub in self.subscribers.get(&**id).into_iter().flatten() {
                self.send(Self::presence_of(dev, sub)).await;
                sent += 1;
            }
        }
        tracing::info!(
            presences = sent,
            devices = self.order.len(),
            "presence announced"
        );
    }

    pub(super) async fn withdraw_all(&self, why: &str) {
        for id in &self.order {
            let dev = &self.devices[id];
            for sub in self.subscribers.get(&**id).into_iter().flatten() {
                self.send(presence::unavailable(&dev.full, sub, why)).await;
            }
        }
    }

    /// Persists the subscriber map, then sends `replies`.
    pub(super) async fn commit(&self, replies: Vec<Element>) {
        let c = Commit {
            snapshot: Arc::new(self.subscribers.clone()),
            then_send: replies,
        };
        let _ = self.commits.send(c).await;
    }

    pub(super) async fn on_presence(&mut self, h: &Header) {
        if matches!(h.type_.as_deref(), Some("unavailable" | "error")) {
            self.forget_requester(&h.from.to_string(), "went offline");
        }
        let Some(node) = h.to.node() else { return };
        let from = h.from.to_bare().to_string();
        // A device the sender may not see (and is no subscriber of) answers exactly as one
        // that does not exist: the answers must not tell which devices exist.
        let visible = self.devices.get(node.as_str()).filter(|d| {
            access::may_see(&self.cfg.access, &d.cfg.access, &h.from.to_bare())
                || self
                    .subscribers
                    .get(&*d.cfg.id)
                    .is_some_and(|s| s.contains(&from))
        });
        let Some(dev) = visible else {
            if matches!(h.type_.as_deref(), Some("subscribe" | "probe")) {
                if h.type_.as_deref() == Some("subscribe") {
                    let why = if self.devices.contains_key(node.as_str()) {
                        "the access policy admits no right for the sender"
                    } else {
                        "no such device"
                    };
                    tracing::info!(from = %from, device = %node, reason = why, "subscribe refused");
                }
                let to_bare = h.to.to_bare().to_string();
                self.send(presence::subscription("unsubscribed", &to_bare, &from))
                    .await;
            }
            return;
        };
        let id = dev.cfg.id.clone();
        let allowed = access::check(
            &self.cfg.access,
            &dev.cfg.access,
            Right::Subscribe,
            &h.from.to_bare(),
        );
        let bare = dev.bare.clone();
        match h.type_.as_deref() {
            Some("subscribe") => match allowed {
                Ok(()) => {
                    let is_new = self
                        .subscribers
                        .entry(id.to_string())
                        .or_default()
                        .insert(from.clone());
                    let dev = &self.devices[&id];
                    let replies = vec![
                        presence::subscription("subscribed", &bare, &from),
                        Self::presence_of(dev, &from),
                    ];
                    if is_new {
                        tracing::info!(device = %id, subscriber = %from, "subscription approved");
                        self.commit(replies).await;
                    } else {
                        for r in replies {
                            self.send(r).await;
                        }
                    }
                }
                Err(why) => {
                    tracing::info!(device = %id, from = %from, reason = %why, "subscribe refused");
                    self.send(presence::subscription("unsubscribed", &bare, &from))
                        .await;
                }
            },
            Some("unsubscribe") => {
                let removed = self
                    .subscribers
                    .get_mut(&*id)
                    .is_some_and(|s| s.remove(&from));
                let full = self.devices[&id].full.clone();
                let bye = presence::unavailable(&full, &from, "unsubscribed");
                if removed {
                    tracing::info!(device = %id, subscriber = %from, "unsubscribed");
                    self.commit(vec![bye]).await;
                } else {
                    self.send(bye).await;
                }
            }
            Some("probe") => {
                let subscribed = self
                    .subscribers
                    .get(&*id)
                    .is_some_and(|s| s.contains(&from));
                if subscribed && allowed.is_ok() {
                    let p = Self::presence_of(&self.devices[&id], &h.from.to_string());
                    self.send(p).await;
                } else {
                    if subscribed {
                        // The policy changed since the subscription was approved.
                        self.revoke(&id, &from).await;
                    }
                    self.send(presence::subscription("unsubscribed", &bare, &from))
                        .await;
                }
            }
            // Available / unavailable presence of users and subscription answers need no
            // reply from a device.
            _ => {}
        }
    }

    /// Drops a subscriber who lost the right to subscribe, telling them so.
    pub(super) async fn revoke(&mut self, id: &DeviceId, who: &str) {
        if let Some(s) = self.subscribers.get_mut(&**id) {
            s.remove(who);
        }
        let Some(dev) = self.devices.get(id) else {
            return;
        };
        tracing::info!(device = %id, subscriber = %who, "subscription revoked by access policy");
        let replies = vec![
            presence::unavailable(&dev.full, who, "access revoked"),
            presence::subscription("unsubscribed", &dev.bare, who),
        ];
        self.commit(replies).await;
    }
}

#[cfg(all(test, feature = "sim"))]
mod tests {
    use super::super::testing::{device, gateway, MALLORY};
    use super::*;

    fn presence(type_: &str, from: &str, to: &str) -> Header {
        let el: Element = format!(
            "<presence xmlns='jabber:component:accept' type='{type_}' from='{from}' \
             to='{to}@{}'/>",
            super::super::testing::DOMAIN
        )
        .parse()
        .unwrap();
        Header::parse(&el).unwrap()
    }

    /// What the gateway sends for `type_` to `to`, written out, the device's name masked.
    async fn answer(
        t: &mut super::super::testing::TestGateway,
        type_: &str,
        to: &str,
    ) -> Vec<String> {
        t.gw.on_presence(&presence(type_, MALLORY, to)).await;
        let mut out = Vec::new();
        while let Ok(o) = t.out.try_recv() {
            for el in o.into_vec() {
                out.push(String::from(&el).replace(to, "DEVICE"));
            }
        }
        out
    }

    #[tokio::test]
    async fn a_device_the_sender_may_not_see_answers_like_no_device() {
        let mut t = gateway(&device("pump"));
        for type_ in ["subscribe", "probe", "unsubscribe", "unsubscribed"] {
            let hidden = answer(&mut t, type_, "pump").await;
            let absent = answer(&mut t, type_, "nosuch").await;
            assert_eq!(hidden, absent, "{type_}");
            if type_ != "unsubscribe" && type_ != "unsubscribed" {
                assert_eq!(hidden.len(), 1, "{type_}: {hidden:?}");
                assert!(
                    hidden[0].contains("type=\"unsubscribed\"")
                        || hidden[0].contains("type='unsubscribed'")
                );
            }
        }
        assert!(t.gw.subscribers.is_empty());
    }
}
