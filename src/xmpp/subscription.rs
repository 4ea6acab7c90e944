//! Change-event subscriptions (the IoT events ProtoXEP): when a subscription is due.
//!
//! A subscription names the fields it wants reported and, optionally, per-field change
//! thresholds. An event is due when a threshold is crossed (measured from the values of the
//! last event, or from `currentValue`), or when `maxInterval` has passed since the last
//! event; never sooner than `minInterval` after it. A subscription without thresholds
//! reports on `maxInterval` only.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use fieldgate_api::{DeviceId, Value};

use crate::xmpp::payload::common::FieldTypes;
use crate::xmpp::payload::events::Subscribe;

/// One threshold condition.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    /// The field watched.
    pub name: String,
    /// Rise that triggers an event.
    pub up: Option<f64>,
    /// Fall that triggers an event.
    pub down: Option<f64>,
    /// The value changes are measured from; `None` until the first sample.
    pub reference: Option<f64>,
}

/// One active subscription.
#[derive(Debug, Clone)]
pub struct Subscription {
    /// Requester's full JID.
    pub requester: String,
    /// The requester's sequence number, reused by every event.
    pub seqnr: u64,
    /// The device.
    pub device: DeviceId,
    /// Field types to report.
    pub types: FieldTypes,
    /// Fields to report (empty: every field).
    pub fields: HashSet<String>,
    /// Thresholds.
    pub conditions: Vec<Condition>,
    /// Least time between events.
    pub min_interval: Duration,
    /// Most time between events.
    pub max_interval: Option<Duration>,
    /// When the next `maxInterval` event is due: deadlines advance by the interval, so
    /// events keep their rhythm whatever delays one of them.
    pub next_max: Option<Instant>,
    /// When the last event went out.
    pub last_sent: Instant,
    /// A condition was met while `min_interval` held the event back.
    pub pending: bool,
    /// Report at the next opportunity regardless of conditions (`req='true'`).
    pub immediate: bool,
}

/// The numeric view of a value for thresholds: booleans count as 0 / 1.
pub fn numeric(v: &Value) -> Option<f64> {
    match v {
        Value::Bool(b) => Some(if *b { 1.0 } else { 0.0 }),
        other => other.as_f64(),
    }
}

impl Subscription {
    /// Builds a subscription from the request. `floor` bounds both intervals from below:
    /// `maxInterval='PT0S'` must not become a flood.
    pub fn new(
        requester: String,
        device: DeviceId,
        req: &Subscribe,
        floor: Duration,
        now: Instant,
    ) -> Subscription {
        let min_interval = req.min_interval.unwrap_or(floor).max(floor);
        let max_interval = req.max_interval.map(|m| m.max(min_interval));
        Subscription {
            requester,
            seqnr: req.seqnr,
            device,
            types: req.requested_types(),
            fields: req.fields.iter().map(|f| f.name.clone()).collect(),
            conditions: req
                .fields
                .iter()
                .filter(|f| f.has_condition())
                .map(|f| {
                    let (up, down) = f.thresholds();
                    Condition {
                        name: f.name.clone(),
                        up,
                        down,
                        reference: f.current_value,
                    }
                })
                .collect(),
            min_interval,
            max_interval,
            next_max: max_interval.map(|m| now + m),
            // The first event, too, waits `minInterval` (`req='true'` aside).
            last_sent: now,
            pending: false,
            immediate: req.req,
        }
    }

    /// Whether the subscription can ever fire.
    pub fn is_useful(&self) -> bool {
        !self.conditions.is_empty() || self.max_interval.is_some()
    }

    /// Records the current values (`value_of` a field, numerically) and notes whether a
    /// threshold was crossed since the last event.
    pub fn evaluate(&mut self, value_of: impl Fn(&str) -> Option<f64>) {
        for c in &mut self.conditions {
            let Some(v) = value_of(&c.name) else {
                continue;
            };
            match c.reference {
                None => c.reference = Some(v),
                Some(reference) => {
                    let d = v - reference;
                    if c.up.is_some_and(|up| d >= up) || c.down.is_some_and(|down| -d >= down) {
                        self.pending = true;
                    }
                }
            }
        }
    }

    /// Values of a device polled every `period` arrived at `now`: whether a `maxInterval`
    /// deadline that would pass before the next poll is owed these values now, rather
    /// than stale ones at the deadline. Not held back by `minInterval`: such events come
    /// one per deadline (deadlines are at least the floor apart), each with a poll of its
    /// own, and holding one back would tie the events to the moment of subscribing
    /// instead of to the polls, up to a poll period late.
    pub fn owed_on_arrival(&self, now: Instant, period: Duration) -> bool {
        self.next_max.is_some_and(|d| now + period > d)
    }

    /// Whether an event is due at `now`.
    pub fn due(&self, now: Instant) -> bool {
        if self.immediate {
            return true;
        }
        if now < self.last_sent + self.min_interval {
            return false;
        }
        self.pending || self.next_max.is_some_and(|d| now >= d)
    }

    /// When to look at the subscription again without new values: a held-back change,
    /// or the `maxInterval` deadline plus `grace` (a polled device's period: its next
    /// poll should have served the deadline by then).
    pub fn wake(&self, grace: Duration) -> Option<Instant> {
        let earliest = self.last_sent + self.min_interval;
        let pending = self.pending.then_some(earliest);
        let max = self.next_max.map(|d| (d + grace).max(earliest));
        match (pending, max) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Records that an event went out at `now` with the current values (`value_of`):
    /// thresholds are measured from these values from now on.
    pub fn sent(&mut self, value_of: impl Fn(&str) -> Option<f64>, now: Instant) {
        self.last_sent = now;
        self.pending = false;
        self.immediate = false;
        if let (Some(d), Some(m)) = (self.next_max, self.max_interval) {
            // Early by up to a poll period, or late: the next deadline is one interval
            // after this one, unless the subscription fell a whole interval behind.
            let next = if d <= now + m { d + m } else { d };
            self.next_max = Some(if next <= now { now + m } else { next });
        }
        for c in &mut self.conditions {
            if let Some(v) = value_of(&c.name) {
                c.reference = Some(v);
            }
        }
    }

    /// Whether the subscription reports field `name`.
    pub fn wants(&self, name: &str) -> bool {
        self.fields.is_empty() || self.fields.contains(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xmpp::payload::events::FieldCondition;

    fn sub(
        changed_up: Option<f64>,
        min: Duration,
        max: Option<Duration>,
        t0: Instant,
    ) -> Subscription {
        let mut req = Subscribe::new(1, FieldTypes::MOMENTARY);
        let mut f = FieldCondition::new("t");
        f.changed_up = changed_up;
        req.fields.push(f);
        req.min_interval = Some(min);
        req.max_interval = max;
        Subscription::new("a@x/r".into(), "d".into(), &req, Duration::ZERO, t0)
    }

    fn v(x: f64) -> impl Fn(&str) -> Option<f64> {
        move |_| Some(x)
    }

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn threshold_crossing_fires_after_min_interval() {
        let t0 = Instant::now();
        let mut s = sub(Some(1.0), 5 * S, None, t0);
        s.sent(v(10.0), t0); // the first values set the reference
        s.evaluate(v(10.5));
        assert!(!s.due(t0 + 6 * S));
        s.sent(v(10.0), t0 + 5 * S);
        // Crossed, but only 2 s after the last event: held back until 10 s.
        s.evaluate(v(11.2));
        assert!(!s.due(t0 + 7 * S));
        assert_eq!(s.wake(Duration::ZERO), Some(t0 + 10 * S));
        assert!(s.due(t0 + 10 * S));
        s.sent(v(11.2), t0 + 10 * S);
        // Now measured from 11.2: a fall does not count (changedUp only).
        s.evaluate(v(5.0));
        assert!(!s.due(t0 + 20 * S));
    }

    #[test]
    fn max_interval_deadlines_advance_by_the_interval() {
        let t0 = Instant::now();
        let mut s = sub(None, Duration::ZERO, Some(S), t0);
        assert!(s.is_useful());
        assert!(!s.due(t0 + S / 2));
        // Sent 30 ms late: the next deadline is still t0 + 2 s, not t0 + 2.03 s.
        let late = t0 + S + Duration::from_millis(30);
        assert!(s.due(late));
        s.sent(v(1.0), late);
        assert_eq!(s.next_max, Some(t0 + 2 * S));
        // A poll every second arriving 10 ms before the deadline serves it.
        let early = t0 + 2 * S - Duration::from_millis(10);
        assert!(!s.due(early));
        assert!(s.owed_on_arrival(early, S));
        s.sent(v(1.0), early);
        // One arriving a whole period before the deadline is not.
        assert!(!s.owed_on_arrival(early + Duration::from_millis(5), S));
        assert_eq!(s.next_max, Some(t0 + 3 * S));
        // ... and the deadline's own wake-up waits a poll period for it.
        assert_eq!(s.wake(S), Some(t0 + 4 * S));
        // A subscription a whole interval behind starts over from now.
        let stalled = t0 + 10 * S;
        s.sent(v(1.0), stalled);
        assert_eq!(s.next_max, Some(stalled + S));
        assert!(!sub(None, Duration::ZERO, None, t0).is_useful());
    }

    #[test]
    fn the_floor_bounds_both_intervals() {
        let mut req = Subscribe::new(1, FieldTypes::MOMENTARY);
        req.max_interval = Some(Duration::ZERO);
        req.min_interval = Some(Duration::from_millis(1));
        let s = Subscription::new("a@x/r".into(), "d".into(), &req, S, Instant::now());
        assert_eq!(s.min_interval, S);
        assert_eq!(s.max_interval, Some(S));
    }

    #[test]
    fn booleans_count_as_zero_and_one() {
        assert_eq!(numeric(&Value::Bool(true)), Some(1.0));
        assert_eq!(numeric(&Value::String("x".into())), None);
    }
}
