//! Change-event subscriptions (the IoT events ProtoXEP): when a subscription is due.
//!
//! A subscription names the fields it wants reported and, optionally, per-field change
//! thresholds. An event is due when a threshold is crossed (measured from the values of the
//! last event, or from `currentValue`), or when `maxInterval` has passed since the last
//! event; never sooner than `minInterval` after it. A subscription without thresholds
//! reports on `maxInterval` only.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fieldgate_api::{DeviceId, Reading, Value};

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
    /// Builds a subscription from the request. `floor` bounds `minInterval` from below.
    pub fn new(
        requester: String,
        device: DeviceId,
        req: &Subscribe,
        floor: Duration,
        now: Instant,
    ) -> Subscription {
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
            min_interval: req.min_interval.unwrap_or(floor).max(floor),
            max_interval: req.max_interval,
            last_sent: now,
            pending: false,
            immediate: req.req,
        }
    }

    /// Whether the subscription can ever fire.
    pub fn is_useful(&self) -> bool {
        !self.conditions.is_empty() || self.max_interval.is_some()
    }

    /// Records `values` as seen and tells whether an event is due at `now`.
    pub fn evaluate(&mut self, values: &HashMap<Arc<str>, Reading>, now: Instant) -> bool {
        for c in &mut self.conditions {
            let Some(v) = values.get(c.name.as_str()).and_then(|r| numeric(&r.value)) else {
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
        self.due(now)
    }

    /// Whether an event is due at `now` from what is already known.
    pub fn due(&self, now: Instant) -> bool {
        let since = now.saturating_duration_since(self.last_sent);
        self.immediate
            || (self.pending && since >= self.min_interval)
            || self.max_interval.is_some_and(|max| since >= max)
    }

    /// The next instant at which [`Subscription::due`] may turn true without new values.
    pub fn next_deadline(&self) -> Option<Instant> {
        let pending = self.pending.then(|| self.last_sent + self.min_interval);
        let max = self.max_interval.map(|m| self.last_sent + m);
        match (pending, max) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Records that an event with `values` went out at `now`: thresholds are measured from
    /// these values from now on.
    pub fn sent(&mut self, values: &HashMap<Arc<str>, Reading>, now: Instant) {
        self.last_sent = now;
        self.pending = false;
        self.immediate = false;
        for c in &mut self.conditions {
            if let Some(v) = values.get(c.name.as_str()).and_then(|r| numeric(&r.value)) {
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
    use std::time::SystemTime;

    fn values(v: f64) -> HashMap<Arc<str>, Reading> {
        let mut m = HashMap::new();
        m.insert(
            "t".into(),
            Reading::new("t", Value::Double(v), SystemTime::now()),
        );
        m
    }

    fn sub(changed_up: Option<f64>, min: Duration, max: Option<Duration>) -> Subscription {
        let mut req = Subscribe::new(1, FieldTypes::MOMENTARY);
        let mut f = FieldCondition::new("t");
        f.changed_up = changed_up;
        req.fields.push(f);
        req.min_interval = Some(min);
        req.max_interval = max;
        Subscription::new(
            "a@x/r".into(),
            "d".into(),
            &req,
            Duration::ZERO,
            Instant::now(),
        )
    }

    #[test]
    fn threshold_crossing_fires_after_min_interval() {
        let t0 = Instant::now();
        let mut s = sub(Some(1.0), Duration::from_secs(5), None);
        s.last_sent = t0;
        assert!(!s.evaluate(&values(10.0), t0)); // first sample sets the reference
        assert!(!s.evaluate(&values(10.5), t0 + Duration::from_secs(6)));
        // Crossed, but only 2 s after the last event: held back.
        s.last_sent = t0 + Duration::from_secs(5);
        assert!(!s.evaluate(&values(11.2), t0 + Duration::from_secs(7)));
        assert_eq!(s.next_deadline(), Some(t0 + Duration::from_secs(10)));
        assert!(s.due(t0 + Duration::from_secs(10)));
        s.sent(&values(11.2), t0 + Duration::from_secs(10));
        // Now measured from 11.2: a fall does not count (changedUp only).
        assert!(!s.evaluate(&values(5.0), t0 + Duration::from_secs(20)));
    }

    #[test]
    fn max_interval_fires_without_change_and_conditionless_needs_it() {
        let t0 = Instant::now();
        let mut s = sub(None, Duration::ZERO, Some(Duration::from_secs(60)));
        s.last_sent = t0;
        assert!(s.is_useful());
        assert!(!s.evaluate(&values(1.0), t0 + Duration::from_secs(59)));
        assert!(s.evaluate(&values(1.0), t0 + Duration::from_secs(60)));
        assert!(!sub(None, Duration::ZERO, None).is_useful());
    }

    #[test]
    fn booleans_count_as_zero_and_one() {
        assert_eq!(numeric(&Value::Bool(true)), Some(1.0));
        assert_eq!(numeric(&Value::String("x".into())), None);
    }
}
