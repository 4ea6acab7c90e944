//! The event subscriptions the gateway holds, found by key, by device and by the bare JID
//! that holds them, and the instants at which the events engine must act without new
//! values (a `maxInterval` falling due, a held-back change, a device to sample).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Instant;

use fieldgate_api::DeviceId;

use super::per_user::PerUser;
use crate::xmpp::subscription::Subscription;

/// A subscription's key: (requester full JID, seqnr).
pub(super) type SubKey = (String, u64);

/// Something the events engine does at an instant.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) enum Wake {
    /// Look at a subscription: a deadline passed.
    Subscription(SubKey),
    /// Read a device that reports only when asked, for its subscriptions.
    Sample(DeviceId),
}

/// Every subscription, indexed.
#[derive(Default)]
pub(super) struct Subscriptions {
    by_key: HashMap<SubKey, Subscription>,
    by_device: HashMap<DeviceId, HashSet<SubKey>>,
    /// Subscriptions held per bare JID (all its resources together).
    per_user: PerUser,
    wakes: HashMap<Wake, Instant>,
    timeline: BTreeSet<(Instant, Wake)>,
}

impl Subscriptions {
    #[cfg(all(test, feature = "sim"))]
    pub(super) fn len(&self) -> usize {
        self.by_key.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    pub(super) fn contains_key(&self, k: &SubKey) -> bool {
        self.by_key.contains_key(k)
    }

    pub(super) fn get(&self, k: &SubKey) -> Option<&Subscription> {
        self.by_key.get(k)
    }

    pub(super) fn get_mut(&mut self, k: &SubKey) -> Option<&mut Subscription> {
        self.by_key.get_mut(k)
    }

    pub(super) fn values(&self) -> impl Iterator<Item = &Subscription> {
        self.by_key.values()
    }

    /// How many subscriptions the user of `jid` (full or bare) holds.
    pub(super) fn held_by(&self, jid: &str) -> usize {
        self.per_user.held(jid)
    }

    /// The keys of the subscriptions to device `id`.
    pub(super) fn of_device(&self, id: &DeviceId) -> Vec<SubKey> {
        self.by_device
            .get(id)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Whether device `id` has subscriptions.
    pub(super) fn watch(&self, id: &DeviceId) -> bool {
        self.by_device.contains_key(id)
    }

    /// Adds or replaces (a renewal under the same key) a subscription.
    pub(super) fn insert(&mut self, k: SubKey, s: Subscription) {
        let device = s.device.clone();
        if let Some(old) = self.remove(&k) {
            drop(old);
        }
        self.per_user.take(&k.0);
        self.by_device.entry(device).or_default().insert(k.clone());
        self.by_key.insert(k, s);
    }

    pub(super) fn remove(&mut self, k: &SubKey) -> Option<Subscription> {
        let s = self.by_key.remove(k)?;
        if let Some(keys) = self.by_device.get_mut(&s.device) {
            keys.remove(k);
            if keys.is_empty() {
                self.by_device.remove(&s.device);
                self.schedule(Wake::Sample(s.device.clone()), None);
            }
        }
        self.per_user.give_back(&k.0);
        self.schedule(Wake::Subscription(k.clone()), None);
        Some(s)
    }

    /// Keeps the subscriptions for which `keep` is true; returns the keys of the others.
    pub(super) fn retain(
        &mut self,
        mut keep: impl FnMut(&SubKey, &Subscription) -> bool,
    ) -> Vec<SubKey> {
        let gone: Vec<SubKey> = self
            .by_key
            .iter()
            .filter(|(k, s)| !keep(k, s))
            .map(|(k, _)| k.clone())
            .collect();
        for k in &gone {
            self.remove(k);
        }
        gone
    }

    /// Sets (or, with `None`, clears) when `w` is due.
    pub(super) fn schedule(&mut self, w: Wake, at: Option<Instant>) {
        if let Some(old) = self.wakes.remove(&w) {
            self.timeline.remove(&(old, w.clone()));
        }
        if let Some(at) = at {
            self.timeline.insert((at, w.clone()));
            self.wakes.insert(w, at);
        }
    }

    /// When `w` is due, if scheduled.
    pub(super) fn scheduled(&self, w: &Wake) -> Option<Instant> {
        self.wakes.get(w).copied()
    }

    /// The earliest scheduled instant.
    pub(super) fn next_wake(&self) -> Option<Instant> {
        self.timeline.first().map(|(t, _)| *t)
    }

    /// Takes what is due at `now`, earliest first.
    pub(super) fn take_due(&mut self, now: Instant) -> Vec<Wake> {
        let mut due = Vec::new();
        while let Some((t, _)) = self.timeline.first() {
            if *t > now {
                break;
            }
            let (_, w) = self.timeline.pop_first().expect("not empty");
            self.wakes.remove(&w);
            due.push(w);
        }
        due
    }
}
