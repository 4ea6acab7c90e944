//! Presence as the XMPP server does not keep it for components: subscriptions answered
//! under the access policy (and persisted before `subscribed` goes out), probes, and each
//! device's presence announced, broadcast on changes and withdrawn.

use std::time::Instant;

use fieldgate_api::{DeviceId, Reachability};
use tokio_xmpp::minidom::Element;

use super::{Device, Gateway};
use crate::access::{self, Right};
use crate::state::{Change, Commit, Failed};
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

    /// Records a subscriber in memory; false if already there.
    fn add_subscriber(&mut self, device: &str, who: &str) -> bool {
        let added = self
            .subscribers
            .entry(device.to_owned())
            .or_default()
            .insert(who.to_owned());
        self.n_subscriptions += usize::from(added);
        added
    }

    /// Forgets a subscriber in memory; false if not there.
    fn remove_subscriber(&mut self, device: &str, who: &str) -> bool {
        let removed = self
            .subscribers
            .get_mut(device)
            .is_some_and(|s| s.remove(who));
        self.n_subscriptions -= usize::from(removed);
        removed
    }

    /// Persists the removal of `who` from `device`, then sends `replies`. A removal is
    /// never refused: it waits for room in the persister's queue (the persister never
    /// waits for the actor, so this cannot deadlock).
    async fn commit_removal(&self, device: &str, who: &str, replies: Vec<Element>) {
        let c = Commit {
            changes: vec![Change::Remove {
                device: device.to_owned(),
                jid: who.to_owned(),
            }],
            then_send: replies,
        };
        let _ = self.commits.send(c).await;
    }

    /// A new subscription: admitted under [`crate::config::Config::max_subscriptions`]
    /// and handed to the persister, whose write releases `replies` (`subscribed` among
    /// them). Refused with `unsubscribed` when the bound is reached or the persister is
    /// too far behind: nothing is promised that is not stored.
    async fn subscribe(&mut self, id: &DeviceId, from: &str, replies: Vec<Element>) {
        let bare = self.devices[id].bare.clone();
        let refusal = if self.n_subscriptions >= self.cfg.max_subscriptions {
            Some("the gateway holds [access] max_subscriptions subscriptions")
        } else {
            let c = Commit {
                changes: vec![Change::Add {
                    device: id.to_string(),
                    jid: from.to_owned(),
                }],
                then_send: replies,
            };
            match self.commits.try_send(c) {
                Ok(()) => None,
                Err(_) => {
                    self.commits_refused += 1;
                    Some("subscriber file writes are behind")
                }
            }
        };
        match refusal {
            None => {
                self.add_subscriber(id, from);
                tracing::info!(device = %id, subscriber = %from, "subscription approved");
            }
            Some(why) => {
                // Anyone may cause this under `subscribe = ["*"]`: rate-limited per sender.
                if let Some(suppressed) = self.refused_log.allow(from, Instant::now()) {
                    tracing::warn!(device = %id, from = %from, reason = why,
                        subscriptions = self.n_subscriptions,
                        max_subscriptions = self.cfg.max_subscriptions,
                        refused_queue_full = self.commits_refused, suppressed, "subscribe refused");
                }
                self.send(presence::subscription("unsubscribed", &bare, from))
                    .await;
            }
        }
    }

    /// A subscription whose write failed: taken back, and the subscriber told so, having
    /// had no `subscribed`. (One who subscribed twice while the write was under way got
    /// `subscribed` for the second request; the `unsubscribed` sent here retracts it.)
    pub(super) async fn on_failed_save(&mut self, f: Failed<Element>) {
        for ch in f.commit.changes {
            let Change::Add { device, jid } = ch else {
                continue;
            };
            self.remove_subscriber(&device, &jid);
            tracing::warn!(device = %device, subscriber = %jid, error = %f.error,
                "subscription refused: it could not be saved");
            let bare = format!("{device}@{}", self.domain());
            self.send(presence::subscription("unsubscribed", &bare, &jid))
                .await;
        }
    }

    pub(super) async fn on_presence(&mut self, h: &Header) {
        if matches!(h.type_.as_deref(), Some("unavailable" | "error")) {
            self.forget_requester(&h.from.to_string(), "went offline");
        }
        let Some(node) = h.to.node() else { return };
        let from = h.from.to_bare().to_string();
        // A device the sender may not see (and is no subscriber of) answers exactly as one
        // that does not exist: the answers must not tell which devices exist.
        let visible = self.device_at(node.as_str()).filter(|d| {
            access::may_see(&self.cfg.access, &d.cfg.access, &h.from.to_bare())
                || self
                    .subscribers
                    .get(&*d.cfg.id)
                    .is_some_and(|s| s.contains(&from))
        });
        let Some(dev) = visible else {
            if matches!(h.type_.as_deref(), Some("subscribe" | "probe")) {
                if h.type_.as_deref() == Some("subscribe") {
                    let why = if self.device_at(node.as_str()).is_some() {
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
                    let known = self
                        .subscribers
                        .get(&*id)
                        .is_some_and(|s| s.contains(&from));
                    let dev = &self.devices[&id];
                    let replies = vec![
                        presence::subscription("subscribed", &bare, &from),
                        Self::presence_of(dev, &from),
                    ];
                    if known {
                        for r in replies {
                            self.send(r).await;
                        }
                    } else {
                        self.subscribe(&id, &from, replies).await;
                    }
                }
                Err(why) => {
                    tracing::info!(device = %id, from = %from, reason = %why, "subscribe refused");
                    self.send(presence::subscription("unsubscribed", &bare, &from))
                        .await;
                }
            },
            Some("unsubscribe") => {
                let removed = self.remove_subscriber(&id, &from);
                let full = self.devices[&id].full.clone();
                let bye = presence::unavailable(&full, &from, "unsubscribed");
                if removed {
                    tracing::info!(device = %id, subscriber = %from, "unsubscribed");
                    self.commit_removal(&id, &from, vec![bye]).await;
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
        if !self.remove_subscriber(id, who) {
            return;
        }
        tracing::info!(device = %id, subscriber = %who, "subscription revoked by access policy");
        let replies = self.devices.get(id).map_or_else(Vec::new, |dev| {
            vec![
                presence::unavailable(&dev.full, who, "access revoked"),
                presence::subscription("unsubscribed", &dev.bare, who),
            ]
        });
        self.commit_removal(id, who, replies).await;
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

    /// Everything sent until `n` stanzas are out (or two seconds passed), written out.
    async fn sent(t: &mut super::super::testing::TestGateway, n: usize) -> Vec<String> {
        let mut out = Vec::new();
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(2);
        while out.len() < n {
            match tokio::time::timeout_at(deadline, t.out.recv()).await {
                Ok(Some(o)) => out.extend(o.into_vec().iter().map(String::from)),
                _ => break,
            }
        }
        out
    }

    fn of_type(out: &[String], type_: &str) -> usize {
        out.iter()
            .filter(|s| {
                s.contains(&format!("type='{type_}'")) || s.contains(&format!("type=\"{type_}\""))
            })
            .count()
    }

    #[tokio::test]
    async fn under_subscribe_anyone_the_subscriptions_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = super::super::testing::gateway_with(
            "subscribe = [\"*\"]\nmax_subscriptions = 2\n",
            &device("pump"),
        );
        let (persister, _failed) = t.persist(dir.path());
        for u in ["u1", "u2"] {
            let from = format!("{u}@fed.example/x");
            t.gw.on_presence(&presence("subscribe", &from, "pump"))
                .await;
        }
        // each gets `subscribed` and the device's presence, once saved
        let out = sent(&mut t, 4).await;
        assert_eq!(of_type(&out, "subscribed"), 2, "{out:?}");
        t.gw.on_presence(&presence("subscribe", "u3@fed.example/x", "pump"))
            .await;
        let out = sent(&mut t, 1).await;
        assert_eq!(of_type(&out, "unsubscribed"), 1, "{out:?}");
        assert_eq!(of_type(&out, "subscribed"), 0, "{out:?}");
        assert_eq!(t.gw.subscribers["pump"].len(), 2);
        // one who is already subscribed still gets an answer at the bound
        t.gw.on_presence(&presence("subscribe", "u1@fed.example/y", "pump"))
            .await;
        assert_eq!(of_type(&sent(&mut t, 2).await, "subscribed"), 1);
        // an unsubscription makes room
        t.gw.on_presence(&presence("unsubscribe", "u2@fed.example/x", "pump"))
            .await;
        sent(&mut t, 1).await;
        t.gw.on_presence(&presence("subscribe", "u3@fed.example/x", "pump"))
            .await;
        assert_eq!(of_type(&sent(&mut t, 2).await, "subscribed"), 1);
        let t_commits = std::mem::replace(&mut t.gw.commits, tokio::sync::mpsc::channel(1).0);
        drop(t_commits);
        persister.await.unwrap();
        let on_file = crate::state::load(dir.path()).unwrap();
        let want: Vec<_> = ["u1@fed.example", "u3@fed.example"]
            .map(String::from)
            .into();
        assert_eq!(on_file["pump"].iter().cloned().collect::<Vec<_>>(), want);
    }

    #[tokio::test]
    async fn a_subscription_that_cannot_be_saved_is_refused() {
        use super::super::testing::ALICE;
        let dir = tempfile::tempdir().unwrap();
        // A directory where the temporary file should go: the write fails, also as root.
        std::fs::create_dir(dir.path().join("subscribers.json.tmp")).unwrap();
        let mut t = gateway(&device("pump"));
        let (_persister, mut failed) = t.persist(dir.path());
        t.gw.on_presence(&presence("subscribe", ALICE, "pump"))
            .await;
        let f = tokio::time::timeout(std::time::Duration::from_secs(5), failed.recv())
            .await
            .expect("the failure handed back")
            .unwrap();
        t.gw.on_failed_save(f).await;
        let out = sent(&mut t, 1).await;
        assert_eq!(of_type(&out, "subscribed"), 0, "{out:?}");
        assert_eq!(of_type(&out, "unsubscribed"), 1, "{out:?}");
        assert!(t.gw.subscribers.get("pump").is_none_or(|s| s.is_empty()));
        assert_eq!(t.gw.n_subscriptions, 0);
    }
}
