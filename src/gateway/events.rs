//! The IoT events engine: accepting subscriptions, and sending events as the data
//! arrives. A polled device's subscribers are served from its polls (a subscription adds
//! no bus traffic); a device that reports only when asked is read for the subscribed
//! fields alone, as often as its subscriptions need. Deadlines (`maxInterval`, changes
//! held back by `minInterval`) are kept on a timeline, not checked on a tick.

use std::time::{Duration, Instant, SystemTime};

use fieldgate_api::{DeviceId, Reporting};
use tokio_xmpp::minidom::Element;
use xmpp_parsers::stanza_error::{DefinedCondition, ErrorType};

use super::outbox;
use super::readouts::{extra_fields, for_this_node, EXTRA_NAMES};
use super::replies::{bad_request, forbidden, not_found};
use super::subscriptions::{SubKey, Wake};
use super::tasks::Done;
use super::{Device, Gateway};
use crate::access::{self, Right};
use crate::xmpp::delay;
use crate::xmpp::fields_text::FieldsMessages;
use crate::xmpp::payload::common::FieldTypes;
use crate::xmpp::payload::events::Subscribe;
use crate::xmpp::payload::sensordata::{Accepted, Field};
use crate::xmpp::readout::{self, to_field};
use crate::xmpp::stanza::{clip, Header};
use crate::xmpp::subscription::{numeric, Subscription};

/// How a device's values arrive, as the events engine needs it.
fn poll_period(dev: &Device) -> Option<Duration> {
    match dev.cfg.reporting {
        Reporting::Polled(p) => Some(p),
        Reporting::OnRequest | Reporting::Pushed => None,
    }
}

/// The numeric value of field `name` in `dev`'s cache.
fn value_in(dev: &Device) -> impl Fn(&str) -> Option<f64> + '_ {
    |name| dev.cache.get(name).and_then(|r| numeric(&r.value))
}

impl Gateway {
    /// Accepts (or refuses) a subscription; the reply, and the key of a subscription to
    /// start once the reply is on its way.
    pub(super) fn on_subscribe(
        &mut self,
        h: &Header,
        id: &DeviceId,
        payload: &Element,
    ) -> (Element, Option<SubKey>) {
        if self.refuse(h, id, Right::Read).is_some() {
            return (forbidden(h, "you may not read this device", vec![]), None);
        }
        let req = match Subscribe::try_from(payload) {
            Ok(r) => r,
            Err(e) => return (bad_request(h, &e.to_string()), None),
        };
        if !for_this_node(&req.nodes, id) {
            return (not_found(h, "no such node on this device", vec![]), None);
        }
        let dev = &self.devices[id];
        if let Some(f) = req
            .fields
            .iter()
            .find(|f| !dev.cache.knows(&f.name) && !EXTRA_NAMES.contains(&f.name.as_str()))
        {
            let text = format!("no field named {:?}", clip(&f.name));
            return (not_found(h, &text, vec![]), None);
        }
        let requester = h.from.to_string();
        let key = (requester.clone(), req.seqnr);
        let held = self.subscriptions.held_by(&requester);
        let max = self.cfg.events.max_per_requester;
        if !self.subscriptions.contains_key(&key) && held >= max {
            let text = format!("{held} subscriptions held; at most {max} per user");
            let e = h.error(
                ErrorType::Wait,
                DefinedCondition::ResourceConstraint,
                &text,
                None,
            );
            return (e, None);
        }
        let sub = Subscription::new(
            requester,
            id.clone(),
            &req,
            self.cfg.events.min_interval,
            Instant::now(),
        );
        if !sub.is_useful() && !sub.immediate {
            let e = bad_request(
                h,
                "the subscription has no field condition (changedBy/changedUp/changedDown) \
                 and no maxInterval: it would never report",
            );
            return (e, None);
        }
        tracing::info!(device = %id, from = %h.from, seqnr = req.seqnr, "event subscription accepted");
        self.subscriptions.insert(key.clone(), sub);
        (h.result(Some(Accepted::new(req.seqnr).into())), Some(key))
    }

    /// Starts an accepted subscription: references from the values known, a first event
    /// now if `req='true'` and the values are fresh, and the device sampled if it reports
    /// only when asked.
    pub(super) async fn start_subscription(&mut self, key: &SubKey) {
        let now = Instant::now();
        let Some(sub) = self.subscriptions.get_mut(key) else {
            return;
        };
        let Some(dev) = self.devices.get(&sub.device) else {
            return;
        };
        let id = sub.device.clone();
        sub.evaluate(value_in(dev));
        let immediate = sub.immediate;
        let fresh = {
            let limit = dev.max_age.max(poll_period(dev).unwrap_or_default());
            dev.specs.iter().filter(|s| sub.wants(&s.name)).all(|s| {
                dev.cache
                    .get(&s.name)
                    .is_some_and(|r| now.saturating_duration_since(r.taken) <= limit)
            })
        };
        let on_request = dev.cfg.reporting == Reporting::OnRequest;
        let watches = !sub.conditions.is_empty();
        if immediate && fresh {
            self.send_event(key, now).await;
        } else if immediate && on_request {
            self.start_sample(&id);
        }
        if on_request
            && watches
            && self
                .subscriptions
                .scheduled(&Wake::Sample(id.clone()))
                .is_none()
        {
            let period = self.sample_period(&id);
            self.subscriptions
                .schedule(Wake::Sample(id.clone()), Some(now + period));
        }
        self.reschedule(key);
    }

    /// Ends a subscription on the subscriber's request.
    pub(super) fn unsubscribe(&mut self, key: &SubKey) {
        self.outbox.forget_key(key);
        if self.subscriptions.remove(key).is_some() {
            tracing::info!(requester = %key.0, seqnr = key.1, "event subscription ended by its subscriber");
        }
    }

    /// Does what is due on the timeline.
    pub(super) async fn on_wake(&mut self) {
        let now = Instant::now();
        for w in self.subscriptions.take_due(now) {
            match w {
                Wake::Subscription(k) => self.on_deadline(&k, now).await,
                Wake::Sample(id) => {
                    let period = self.sample_period(&id);
                    if self.subscriptions.of_device(&id).iter().any(|k| {
                        self.subscriptions
                            .get(k)
                            .is_some_and(|s| !s.conditions.is_empty())
                    }) {
                        self.start_sample(&id);
                        self.subscriptions
                            .schedule(Wake::Sample(id), Some(now + period));
                    }
                }
            }
        }
    }

    /// A subscription's deadline passed without new values.
    async fn on_deadline(&mut self, key: &SubKey, now: Instant) {
        let Some(sub) = self.subscriptions.get(key) else {
            return;
        };
        let Some(dev) = self.devices.get(&sub.device) else {
            return;
        };
        if !sub.due(now) {
            self.reschedule(key);
            return;
        }
        // A device that reports only when asked is asked now; the event goes out when
        // the values arrive (or the read fails).
        if !sub.pending && dev.cfg.reporting == Reporting::OnRequest {
            let id = sub.device.clone();
            self.start_sample(&id);
            return;
        }
        self.send_event(key, now).await;
    }

    /// The period at which a device that reports only when asked is read for the
    /// subscriptions watching its values for changes.
    fn sample_period(&self, id: &DeviceId) -> Duration {
        let floor = self.cfg.events.sample_interval;
        self.subscriptions
            .of_device(id)
            .iter()
            .filter_map(|k| self.subscriptions.get(k))
            .filter(|s| !s.conditions.is_empty())
            .map(|s| s.min_interval.max(floor))
            .min()
            .unwrap_or(floor)
    }

    /// Reads the fields a device's subscriptions want (all of them if one wants every
    /// field), unless a read for them is under way.
    pub(super) fn start_sample(&mut self, id: &DeviceId) {
        let keys = self.subscriptions.of_device(id);
        let adapter = match self.devices.get(id) {
            Some(dev) => self.requests_of(dev),
            None => return,
        };
        let Some(dev) = self.devices.get_mut(id) else {
            return;
        };
        if dev.sampling || keys.is_empty() {
            return;
        }
        let subs: Vec<&Subscription> = keys
            .iter()
            .filter_map(|k| self.subscriptions.get(k))
            .collect();
        let all = subs.iter().any(|s| s.fields.is_empty());
        let fields: Vec<String> = dev
            .specs
            .iter()
            .filter(|f| all || subs.iter().any(|s| s.fields.contains(&*f.name)))
            .map(|f| f.name.to_string())
            .collect();
        if fields.is_empty() {
            return;
        }
        dev.sampling = true;
        let timeout = self.cfg.readout.timeout;
        let id = id.clone();
        self.tasks.spawn(async move {
            let (fresh, error) = readout::read_for_cache(adapter, &id, fields, timeout).await;
            Done::Sample {
                device: id,
                fresh,
                error,
            }
        });
    }

    /// New values of device `id` are in its cache: feeds them to its subscriptions and
    /// sends the events now due. `polled` says they came from the device's own poll.
    pub(super) async fn evaluate_subscriptions(&mut self, id: &DeviceId, polled: bool) {
        let Some(dev) = self.devices.get(id) else {
            return;
        };
        let arrival = if polled { poll_period(dev) } else { None };
        let now = Instant::now();
        for k in self.subscriptions.of_device(id) {
            let (Some(sub), Some(dev)) = (self.subscriptions.get_mut(&k), self.devices.get(id))
            else {
                continue;
            };
            sub.evaluate(value_in(dev));
            let owed = arrival.is_some_and(|p| sub.owed_on_arrival(now, p));
            if owed || sub.due(now) {
                self.send_event(&k, now).await;
            } else {
                self.reschedule(&k);
            }
        }
    }

    /// Puts a subscription's next deadline on the timeline.
    fn reschedule(&mut self, key: &SubKey) {
        let Some(sub) = self.subscriptions.get(key) else {
            return;
        };
        let grace = self
            .devices
            .get(&sub.device)
            .and_then(|d| poll_period(d))
            .unwrap_or_default();
        let at = sub.wake(grace);
        self.subscriptions
            .schedule(Wake::Subscription(key.clone()), at);
    }

    /// Sends the event of subscription `key` with the values cached now.
    pub(super) async fn send_event(&mut self, key: &SubKey, now: Instant) {
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
            for (spec, r) in dev.cache.iter() {
                if let Some(r) = r.filter(|_| sub.wants(&spec.name)) {
                    fields.push((
                        r.timestamp,
                        to_field(spec, &r.value, r.quality, FieldTypes::MOMENTARY),
                    ));
                }
            }
        }
        let stamp = SystemTime::now();
        // When the values were read: the stamp of the event's delay, if it waits.
        let read = fields.iter().map(|(t, _)| *t).max().unwrap_or(stamp);
        fields.extend(
            extra_fields(dev, &sub.types, detailed)
                .into_iter()
                .filter(|f| sub.wants(&f.name))
                .map(|f| (stamp, f)),
        );
        let written = FieldsMessages {
            from: &dev.full,
            to: &key.0,
            seqnr: sub.seqnr,
            node_id: &dev.cfg.id,
            // Room for the `<delay>` it gets if it has to wait for the link.
            limit: self
                .cfg
                .xmpp
                .max_outbound_stanza_size
                .saturating_sub(delay::room(self.domain())),
        }
        .write(fields);
        if written.oversized > 0 {
            tracing::warn!(device = %sub.device, requester = %key.0, fields = written.oversized,
                "event fields too large for max_outbound_stanza_size left out");
        }
        if let Some(sub) = self.subscriptions.get_mut(key) {
            sub.sent(value_in(dev), now);
        }
        let event = outbox::Event {
            key: key.clone(),
            from: dev.full.clone(),
            stamp: read,
            messages: written.messages,
        };
        self.reschedule(key);
        if let Some(out) = self.outbox.push(event, self.link_up, now) {
            let _ = self.out.send(out).await;
        }
    }

    /// Drops subscriptions whose holder lost the right to read, or whose device is gone
    /// (after a reload), and says so in the log.
    pub(super) fn enforce_read_access(&mut self) {
        let gw = &self.cfg.access;
        let devices = &self.devices;
        let mut ended: Vec<(SubKey, DeviceId, &'static str)> = Vec::new();
        self.subscriptions.retain(|(who, seqnr), s| {
            let keep = match devices.get(&s.device) {
                None => Err("device removed"),
                Some(dev) => xmpp_parsers::jid::Jid::new(who)
                    .is_ok_and(|j| {
                        access::check(gw, &dev.cfg.access, Right::Read, &j.to_bare()).is_ok()
                    })
                    .then_some(())
                    .ok_or("read right revoked"),
            };
            if let Err(why) = keep {
                ended.push(((who.clone(), *seqnr), s.device.clone(), why));
            }
            keep.is_ok()
        });
        for ((who, seqnr), device, why) in ended {
            tracing::info!(device = %device, requester = %who, seqnr, reason = why,
                "event subscription ended by a configuration reload");
        }
    }
}

#[cfg(all(test, feature = "sim"))]
mod tests {
    use super::super::testing::{condition, device, el, gateway, iq, ALICE, BOB, MALLORY};
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
        assert_eq!(condition(&r.0).as_deref(), Some("forbidden"));
        let r = t.gw.on_subscribe(
            &h,
            &id,
            &subscribe(1, "", "<field name='nosuch' changedBy='1'/>"),
        );
        assert_eq!(condition(&r.0).as_deref(), Some("item-not-found"));
        // no threshold and no maxInterval: it would never report
        let r =
            t.gw.on_subscribe(&h, &id, &subscribe(1, "", "<field name='level'/>"));
        assert_eq!(condition(&r.0).as_deref(), Some("bad-request"));
        assert!(t.gw.subscriptions.is_empty());
        let r = t.gw.on_subscribe(&h, &id, &subscribe(1, "", by_change));
        assert_eq!(condition(&r.0), None);
        let r =
            t.gw.on_subscribe(&h, &id, &subscribe(2, "maxInterval='PT1M'", ""));
        assert_eq!(condition(&r.0), None);
        assert_eq!(t.gw.subscriptions.len(), 2);
    }

    #[tokio::test]
    async fn subscriptions_per_user_are_bounded() {
        let mut t = gateway(&device("pump"));
        let id: DeviceId = "pump".into();
        let h = iq("get", ALICE, "pump");
        let max = t.gw.cfg.events.max_per_requester as u64;
        for seqnr in 0..max {
            let r =
                t.gw.on_subscribe(&h, &id, &subscribe(seqnr, "maxInterval='PT1M'", ""));
            assert_eq!(condition(&r.0), None);
        }
        let r =
            t.gw.on_subscribe(&h, &id, &subscribe(max, "maxInterval='PT1M'", ""));
        assert_eq!(condition(&r.0).as_deref(), Some("resource-constraint"));
        // renewing one held is not a new one
        let r =
            t.gw.on_subscribe(&h, &id, &subscribe(0, "maxInterval='PT2M'", ""));
        assert_eq!(condition(&r.0), None);
        // the bound is per user: another resource of alice shares it
        let other = iq("get", "alice@example.org/phone", "pump");
        let r =
            t.gw.on_subscribe(&other, &id, &subscribe(0, "maxInterval='PT1M'", ""));
        assert_eq!(condition(&r.0).as_deref(), Some("resource-constraint"));
        // ... until one is given back
        t.gw.unsubscribe(&(ALICE.to_owned(), 3));
        let r =
            t.gw.on_subscribe(&other, &id, &subscribe(0, "maxInterval='PT1M'", ""));
        assert_eq!(condition(&r.0), None);
        assert_eq!(
            t.gw.subscriptions.held_by("alice@example.org"),
            max as usize
        );
    }
    #[tokio::test]
    async fn a_subscription_ended_by_a_reload_is_logged() {
        let mut t = gateway(&device("pump"));
        let id: DeviceId = "pump".into();
        let bob = iq("get", BOB, "pump");
        let (r, _) =
            t.gw.on_subscribe(&bob, &id, &subscribe(4, "maxInterval='PT1M'", ""));
        assert_eq!(condition(&r), None);
        // The reloaded policy lets bob read no more.
        t.gw.cfg.access.read = Some(vec![
            crate::access::Entry::parse("alice@example.org").unwrap()
        ]);
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
        let sink = log.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || LogSink(sink.clone()))
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, || t.gw.enforce_read_access());
        assert_eq!(t.gw.subscriptions.held_by(BOB), 0);
        let text = String::from_utf8(log.lock().unwrap().clone()).unwrap();
        assert!(
            text.contains("event subscription ended by a configuration reload")
                && text.contains("read right revoked")
                && text.contains("bob@example.org/"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn a_device_read_for_its_subscribers_is_asked_for_their_fields_only() {
        let mut t = gateway(&device("pump"));
        let id: DeviceId = "pump".into();
        let h = iq("get", ALICE, "pump");
        let (r, key) = t.gw.on_subscribe(
            &h,
            &id,
            &subscribe(1, "", "<field name='level' changedBy='1'/>"),
        );
        assert_eq!(condition(&r), None);
        t.gw.start_subscription(&key.unwrap()).await;
        t.gw.start_sample(&id);
        let done = t.gw.tasks.join_next().await.unwrap().unwrap();
        let Done::Sample { fresh, .. } = done else {
            panic!("a sample");
        };
        let names: Vec<&str> = fresh.iter().map(|r| &*r.field).collect();
        assert_eq!(names, ["level"], "setpoint and label were not asked for");
    }

    struct LogSink(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for LogSink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
}

#[cfg(all(test, feature = "sim"))]
mod polled_tests {
    use std::time::{Duration, Instant, SystemTime};

    use fieldgate_api::{DeviceEvent, EventKind, Reading, Reporting, Value};

    use super::super::testing::{device, el, gateway, iq, TestGateway, ALICE};
    use crate::xmpp::payload::sensordata::NS as SD;

    const EV: &str = crate::xmpp::payload::events::NS;

    /// A gateway whose `pump` is polled every `period`, events floored at the period.
    fn polled(period: Duration) -> TestGateway {
        let mut t = gateway(&device("pump"));
        t.gw.cfg.events.min_interval = period;
        let dev = t.gw.devices.get_mut("pump").unwrap();
        dev.cfg.reporting = Reporting::Polled(period);
        t
    }

    async fn poll(t: &mut TestGateway, level: i32) {
        let ev = DeviceEvent {
            device: "pump".into(),
            kind: EventKind::Readings(vec![Reading::new(
                "level",
                Value::Int(level),
                SystemTime::now(),
            )]),
        };
        t.gw.on_event(ev).await;
    }

    /// The `level` values of the events sent so far.
    fn sent(t: &mut TestGateway) -> Vec<String> {
        let mut v = vec![];
        while let Ok(out) = t.out.try_recv() {
            for m in out.into_vec() {
                if let Some(f) = m.get_child("fields", SD) {
                    for n in f
                        .children()
                        .flat_map(|n| n.children())
                        .flat_map(|t| t.children())
                    {
                        if n.attr("name") == Some("level") {
                            v.push(n.attr("value").unwrap_or_default().to_owned());
                        }
                    }
                }
            }
        }
        v
    }

    #[tokio::test]
    async fn a_polled_device_s_polls_drive_its_events() {
        let period = Duration::from_millis(100);
        let mut t = polled(period);
        let sub = el(&format!(
            "<subscribe xmlns='{EV}' seqnr='1' momentary='true' maxInterval='PT0.1S'>\
             <field name='level'/></subscribe>"
        ));
        let (reply, key) =
            t.gw.on_subscribe(&iq("get", ALICE, "pump"), &"pump".into(), &sub);
        assert_eq!(super::super::testing::condition(&reply), None);
        t.gw.start_subscription(&key.unwrap()).await;
        let t0 = Instant::now();
        for i in 1..=5 {
            // Polls jitter: every other one comes 3 ms early, less than the floor after
            // the last event. It is delivered all the same, at once.
            let jitter = Duration::from_millis(3 * (i % 2) as u64);
            tokio::time::sleep_until((t0 + period * i - jitter).into()).await;
            poll(&mut t, i as i32).await;
        }
        // One event per poll, each sent as its poll arrived: no read was started.
        assert_eq!(sent(&mut t), ["1", "2", "3", "4", "5"]);
        assert!(t.gw.tasks.is_empty(), "no read of a polled device");
    }

    /// A subscription of alice's to every change of `level`.
    async fn subscribed(t: &mut TestGateway) {
        let sub = el(&format!(
            "<subscribe xmlns='{EV}' seqnr='1' momentary='true'>\
             <field name='level' changedBy='1'/></subscribe>"
        ));
        let (reply, key) =
            t.gw.on_subscribe(&iq("get", ALICE, "pump"), &"pump".into(), &sub);
        assert_eq!(super::super::testing::condition(&reply), None);
        t.gw.start_subscription(&key.unwrap()).await;
    }

    /// The id of the check ping sent to alice.
    fn check_ping(t: &mut TestGateway) -> String {
        let out = t.out.try_recv().expect("a check ping").into_vec();
        let ping = &out[0];
        assert_eq!(ping.attr("to"), Some(ALICE));
        assert!(ping.has_child("ping", xmpp_parsers::ns::PING));
        ping.attr("id").unwrap().to_owned()
    }

    fn answer(id: &str, type_: &str) -> crate::xmpp::stanza::Header {
        let el = el(&format!(
            "<iq xmlns='jabber:component:accept' type='{type_}' id='{id}' from='{ALICE}' \
             to='pump@{}/gw'/>",
            super::super::testing::DOMAIN
        ));
        crate::xmpp::stanza::Header::parse(&el).unwrap()
    }

    #[tokio::test]
    async fn events_due_while_the_link_is_down_follow_the_reconnect_with_delays() {
        let period = Duration::from_millis(10);
        let mut t = polled(period);
        subscribed(&mut t).await;
        poll(&mut t, 0).await;
        tokio::time::sleep(period).await;
        poll(&mut t, 1).await;
        assert_eq!(sent(&mut t).last().map(String::as_str), Some("1"));
        t.gw.link_up = false;
        t.gw.link_went_down();
        for level in 2..=4 {
            tokio::time::sleep(period).await;
            poll(&mut t, level).await;
        }
        assert!(
            t.out.try_recv().is_err(),
            "nothing written while the link is down"
        );
        t.gw.link_up = true;
        t.gw.check_held_subscribers().await;
        let id = check_ping(&mut t);
        // a change while the check is out waits behind the kept ones
        tokio::time::sleep(period).await;
        poll(&mut t, 5).await;
        assert!(t.out.try_recv().is_err());
        t.gw.on_iq_response(&answer(&id, "result")).await;
        let mut levels = vec![];
        let mut delays = vec![];
        while let Ok(out) = t.out.try_recv() {
            for m in out.into_vec() {
                let f = m.get_child("fields", SD).unwrap();
                for n in f
                    .children()
                    .flat_map(|n| n.children())
                    .flat_map(|t| t.children())
                {
                    levels.push(n.attr("value").unwrap().to_owned());
                }
                let d = m
                    .get_child("delay", crate::xmpp::delay::NS)
                    .expect("a delay");
                assert_eq!(d.attr("from"), Some(super::super::testing::DOMAIN));
                delays.push(d.attr("stamp").unwrap().to_owned());
            }
        }
        // "1" was written on the connection that broke and never confirmed: sent again
        assert_eq!(levels, ["1", "2", "3", "4", "5"]);
        let mut sorted = delays.clone();
        sorted.sort();
        assert_eq!(delays, sorted, "in the order the values were read");
    }

    #[tokio::test]
    async fn a_subscriber_whose_session_ended_gets_nothing_and_loses_its_subscription() {
        let period = Duration::from_millis(10);
        let mut t = polled(period);
        subscribed(&mut t).await;
        poll(&mut t, 0).await;
        sent(&mut t);
        t.gw.link_up = false;
        t.gw.link_went_down();
        tokio::time::sleep(period).await;
        poll(&mut t, 2).await;
        t.gw.link_up = true;
        t.gw.check_held_subscribers().await;
        let id = check_ping(&mut t);
        t.gw.on_iq_response(&answer(&id, "error")).await;
        assert!(
            t.out.try_recv().is_err(),
            "nothing for a session that ended"
        );
        assert!(t.gw.subscriptions.is_empty());
        assert_eq!(t.gw.outbox.len(), 0);
    }
}
