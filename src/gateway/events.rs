//! The IoT events engine: accepting subscriptions, sampling devices for them, sending
//! the events that are due (split to fit the stanza bound).

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use fieldgate_api::{DeviceId, Reading};
use tokio_xmpp::minidom::Element;
use xmpp_parsers::stanza_error::{DefinedCondition, ErrorType};

use super::readouts::{extra_fields, for_this_node, EXTRA_NAMES};
use super::replies::{bad_request, forbidden, not_found};
use super::tasks::Done;
use super::Gateway;
use crate::access::{self, Right};
use crate::xmpp::payload::common::{FieldTypes, NodeRef};
use crate::xmpp::payload::events::Subscribe;
use crate::xmpp::payload::sensordata::{Accepted, Field, Fields};
use crate::xmpp::readout::{self, to_field};
use crate::xmpp::stanza::{clip, Header};
use crate::xmpp::subscription::Subscription;

/// How often the events engine looks for due subscriptions and devices to sample.
pub(super) const EVENTS_TICK: Duration = Duration::from_millis(100);

impl Gateway {
    pub(super) fn on_subscribe(&mut self, h: &Header, id: &DeviceId, payload: &Element) -> Element {
        if self.refuse(h, id, Right::Read).is_some() {
            return forbidden(h, "you may not read this device", vec![]);
        }
        let req = match Subscribe::try_from(payload) {
            Ok(r) => r,
            Err(e) => return bad_request(h, &e.to_string()),
        };
        if !for_this_node(&req.nodes, id) {
            return not_found(h, "no such node on this device", vec![]);
        }
        let dev = &self.devices[id];
        if let Some(f) = req
            .fields
            .iter()
            .find(|f| !dev.cache.knows(&f.name) && !EXTRA_NAMES.contains(&f.name.as_str()))
        {
            return not_found(h, &format!("no field named {:?}", clip(&f.name)), vec![]);
        }
        let requester = h.from.to_string();
        let key = (requester.clone(), req.seqnr);
        let held = self
            .subscriptions
            .keys()
            .filter(|k| k.0 == requester)
            .count();
        let max = self.cfg.events.max_per_requester;
        if !self.subscriptions.contains_key(&key) && held >= max {
            return h.error(
                ErrorType::Wait,
                DefinedCondition::ResourceConstraint,
                &format!("{held} subscriptions held; at most {max} per requester"),
                None,
            );
        }
        let sub = Subscription::new(
            requester,
            id.clone(),
            &req,
            self.cfg.events.sample_interval,
            Instant::now(),
        );
        if !sub.is_useful() && !sub.immediate {
            return bad_request(
                h,
                "the subscription has no field condition (changedBy/changedUp/changedDown) \
                 and no maxInterval: it would never report",
            );
        }
        tracing::info!(device = %id, from = %h.from, seqnr = req.seqnr, "event subscription accepted");
        self.subscriptions.insert(key, sub);
        if let Some(dev) = self.devices.get_mut(id) {
            dev.last_sample = None; // sample now: reference values and req='true'
        }
        h.result(Some(Accepted::new(req.seqnr).into()))
    }

    /// Starts reads of devices whose subscriptions need fresh values, and sends due events.
    pub(super) async fn events_tick(&mut self) {
        let now = Instant::now();
        let mut period: HashMap<DeviceId, Duration> = HashMap::new();
        for s in self.subscriptions.values() {
            let p = period.entry(s.device.clone()).or_insert(s.min_interval);
            *p = (*p).min(s.min_interval);
        }
        for (id, p) in period {
            let p = p.max(self.cfg.events.sample_interval);
            let Some(dev) = self.devices.get_mut(&id) else {
                continue;
            };
            if dev.sampling || dev.last_sample.is_some_and(|t| now.duration_since(t) < p) {
                continue;
            }
            dev.last_sample = Some(now);
            let fresh_enough = |r: &Reading| {
                SystemTime::now()
                    .duration_since(r.timestamp)
                    .unwrap_or_default()
                    < p
            };
            let stale: Vec<String> = dev
                .specs
                .iter()
                .filter(|s| !dev.cache.get(&s.name).is_some_and(fresh_enough))
                .map(|s| s.name.to_string())
                .collect();
            if stale.is_empty() {
                // An adapter that polls by itself keeps the cache fresh: nothing to read.
                self.evaluate_subscriptions(&id).await;
                continue;
            }
            dev.sampling = true;
            let adapter = dev.adapter.as_ref().map(|a| a.requests.clone());
            let timeout = self.cfg.readout.timeout;
            self.tasks.spawn(async move {
                let (fresh, error) =
                    match readout::read(adapter.as_ref(), &id, stale, timeout).await {
                        Ok(o) => (
                            o.readings,
                            o.failures
                                .first()
                                .map(|(n, e)| e.reason().prefixed(&format!("{n}: "))),
                        ),
                        Err(e) => (vec![], Some(e.reason())),
                    };
                Done::Sample {
                    device: id,
                    fresh,
                    error,
                }
            });
        }
        self.probe_subscribers(now).await;
        // Deadlines (maxInterval, held-back changes) pass without new values too.
        let due: Vec<(String, u64)> = self
            .subscriptions
            .iter()
            .filter(|(_, s)| s.due(now) && !s.immediate)
            .map(|(k, _)| k.clone())
            .collect();
        for k in due {
            self.send_event(&k, now).await;
        }
    }

    /// Feeds a device's current values to its subscriptions and sends the events now due.
    pub(super) async fn evaluate_subscriptions(&mut self, id: &DeviceId) {
        let Some(dev) = self.devices.get(id) else {
            return;
        };
        let now = Instant::now();
        let mut due = Vec::new();
        for (k, s) in self
            .subscriptions
            .iter_mut()
            .filter(|(_, s)| &s.device == id)
        {
            let values = dev
                .cache
                .subset(s.conditions.iter().map(|c| c.name.as_str()));
            if s.evaluate(&values, now) {
                due.push(k.clone());
            }
        }
        for k in due {
            self.send_event(&k, now).await;
        }
    }

    pub(super) async fn send_event(&mut self, key: &(String, u64), now: Instant) {
        let Some(sub) = self.subscriptions.get(key) else {
            return;
        };
        let Some(dev) = self.devices.get(&sub.device) else {
            return;
        };
        // A subscriber who lost the right to read loses the subscription.
        let who = xmpp_parsers::jid::Jid::new(&key.0).map(|j| j.to_bare());
        let may = |right| {
            who.as_ref()
                .is_ok_and(|w| access::check(&self.cfg.access, &dev.cfg.access, right, w).is_ok())
        };
        let allowed = may(Right::Read);
        let detailed = may(Right::Control);
        if !allowed {
            tracing::info!(device = %sub.device, requester = %key.0, "subscription ended: read right revoked");
            self.subscriptions.remove(key);
            return;
        }
        let mut fields: Vec<(SystemTime, Field)> = Vec::new();
        if sub.types.contains(FieldTypes::MOMENTARY) {
            for spec in dev.specs.iter().filter(|s| sub.wants(&s.name)) {
                if let Some(r) = dev.cache.get(&spec.name) {
                    fields.push((
                        r.timestamp,
                        to_field(spec, &r.value, r.quality, FieldTypes::MOMENTARY),
                    ));
                }
            }
        }
        let stamp = SystemTime::now();
        fields.extend(
            extra_fields(dev, &sub.types, detailed)
                .into_iter()
                .filter(|f| sub.wants(&f.name))
                .map(|f| (stamp, f)),
        );
        let node = NodeRef::new(dev.cfg.id.to_string());
        let payload = Fields {
            seqnr: sub.seqnr,
            done: false,
            nodes: readout::node_data(&node, fields).into_iter().collect(),
        };
        let limit = self.cfg.xmpp.max_outbound_stanza_size;
        let mut msgs = readout::messages_within(&dev.full, &key.0, payload.into(), 3, limit);
        readout::mark_done(&mut msgs);
        let values = dev
            .cache
            .subset(sub.conditions.iter().map(|c| c.name.as_str()));
        if let Some(sub) = self.subscriptions.get_mut(key) {
            sub.sent(&values, now);
        }
        let _ = self.out.send(msgs.into()).await;
    }

    /// Drops subscriptions whose holder lost the right to read (after a reload).
    pub(super) fn enforce_read_access(&mut self) {
        let gw = &self.cfg.access;
        let devices = &self.devices;
        self.subscriptions.retain(|(who, _), s| {
            let Some(dev) = devices.get(&s.device) else {
                return false;
            };
            xmpp_parsers::jid::Jid::new(who).is_ok_and(|j| {
                access::check(gw, &dev.cfg.access, Right::Read, &j.to_bare()).is_ok()
            })
        });
    }
}

#[cfg(all(test, feature = "sim"))]
mod tests {
    use super::super::testing::{condition, device, el, gateway, iq, ALICE, MALLORY};
    use super::*;

    const EV: &str = crate::xmpp::payload::events::NS;

    fn subscribe(seqnr: u64, attrs: &str, fields: &str) -> Element {
        el(&format!(
            "<subscribe xmlns='{EV}' seqnr='{seqnr}' momentary='true' {attrs}>{fields}</subscribe>"
        ))
    }

    #[tokio::test]
    async fn a_subscription_is_accepted_only_if_it_can_ever_report() {
        let mut t = gateway(&device("pump"));
        let id: DeviceId = "pump".into();
        let h = iq("get", ALICE, "pump");
        let by_change = "<field name='level' changedBy='1'/>";
        let r = t.gw.on_subscribe(
            &iq("get", MALLORY, "pump"),
            &id,
            &subscribe(1, "", by_change),
        );
        assert_eq!(condition(&r).as_deref(), Some("forbidden"));
        let r = t.gw.on_subscribe(
            &h,
            &id,
            &subscribe(1, "", "<field name='nosuch' changedBy='1'/>"),
        );
        assert_eq!(condition(&r).as_deref(), Some("item-not-found"));
        // no threshold and no maxInterval: it would never report
        let r =
            t.gw.on_subscribe(&h, &id, &subscribe(1, "", "<field name='level'/>"));
        assert_eq!(condition(&r).as_deref(), Some("bad-request"));
        assert!(t.gw.subscriptions.is_empty());
        let r = t.gw.on_subscribe(&h, &id, &subscribe(1, "", by_change));
        assert_eq!(condition(&r), None);
        let r =
            t.gw.on_subscribe(&h, &id, &subscribe(2, "maxInterval='PT1M'", ""));
        assert_eq!(condition(&r), None);
        assert_eq!(t.gw.subscriptions.len(), 2);
    }

    #[tokio::test]
    async fn subscriptions_per_requester_are_bounded() {
        let mut t = gateway(&device("pump"));
        let id: DeviceId = "pump".into();
        let h = iq("get", ALICE, "pump");
        let max = t.gw.cfg.events.max_per_requester as u64;
        for seqnr in 0..max {
            let r =
                t.gw.on_subscribe(&h, &id, &subscribe(seqnr, "maxInterval='PT1M'", ""));
            assert_eq!(condition(&r), None);
        }
        let r =
            t.gw.on_subscribe(&h, &id, &subscribe(max, "maxInterval='PT1M'", ""));
        assert_eq!(condition(&r).as_deref(), Some("resource-constraint"));
        // renewing one held is not a new one
        let r =
            t.gw.on_subscribe(&h, &id, &subscribe(0, "maxInterval='PT2M'", ""));
        assert_eq!(condition(&r), None);
        // another requester has its own budget
        let other = iq("get", "alice@example.org/phone", "pump");
        let r =
            t.gw.on_subscribe(&other, &id, &subscribe(0, "maxInterval='PT1M'", ""));
        assert_eq!(condition(&r), None);
    }
}
