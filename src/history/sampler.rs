//! Which readings become samples: one device's fields that are kept, each with its rule
//! (a change beyond the deadband, every value, or once per interval) and what it last
//! stored.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fieldgate_api::{FieldSpec, Reading, Value};

use super::policy::{FieldHistory, Sampling};
use super::store::{millis, Stored};
use super::writer::Record;

/// A value as the store keeps it: bools as 0/1, times as ms since the epoch. `None` for
/// a value SQLite cannot hold as a number (NaN).
pub fn stored(v: &Value) -> Option<Stored> {
    Some(match v {
        Value::Bool(b) => Stored::Int(i64::from(*b)),
        Value::Int(i) => Stored::Int(i64::from(*i)),
        Value::Long(i) => Stored::Int(*i),
        Value::Double(f) if f.is_nan() => return None,
        Value::Double(f) => Stored::Real(*f),
        Value::String(s) | Value::Enum(s) => Stored::Text(s.clone()),
        Value::Timestamp(t) => Stored::Int(millis(*t)),
    })
}

struct Kept {
    rule: FieldHistory,
    last: Option<(Stored, Instant)>,
}

/// The kept fields of one device.
pub struct DeviceSampler {
    device: Arc<str>,
    fields: HashMap<Arc<str>, Kept>,
}

impl DeviceSampler {
    /// The sampler of `device`, whose fields `specs` have `history` (same order); `None`
    /// when none is kept.
    pub fn new(
        device: &Arc<str>,
        specs: &[FieldSpec],
        history: &[Option<FieldHistory>],
    ) -> Option<DeviceSampler> {
        let fields: HashMap<Arc<str>, Kept> = specs
            .iter()
            .zip(history)
            .filter_map(|(s, h)| h.map(|rule| (s.name.clone(), Kept { rule, last: None })))
            .collect();
        (!fields.is_empty()).then(|| DeviceSampler {
            device: device.clone(),
            fields,
        })
    }

    /// The record to store for `r`, if its rule says so (`now`: when it arrived).
    pub fn offer(&mut self, r: &Reading, now: Instant) -> Option<Record> {
        let k = self.fields.get_mut(&*r.field)?;
        let value = stored(&r.value)?;
        let take = match (&k.rule.sample, &k.last) {
            (_, None) | (Sampling::Every, _) => true,
            (Sampling::Change { deadband }, Some((last, _))) => changed(last, &value, *deadband),
            (Sampling::Interval(every), Some((_, at))) => {
                now.saturating_duration_since(*at) >= *every
            }
        };
        if !take {
            return None;
        }
        k.last = Some((value.clone(), now));
        Some(Record {
            device: self.device.clone(),
            field: r.field.clone(),
            t: millis(r.timestamp),
            value,
        })
    }

    /// How often a device that reports only when asked is read for these fields: the
    /// shortest interval rule, or `default`.
    pub fn read_period(&self, default: Duration) -> Duration {
        self.fields
            .values()
            .map(|k| match k.rule.sample {
                Sampling::Interval(d) => d,
                _ => default,
            })
            .min()
            .unwrap_or(default)
    }

    /// The names of the kept fields.
    pub fn fields(&self) -> impl Iterator<Item = &Arc<str>> {
        self.fields.keys()
    }
}

fn changed(last: &Stored, now: &Stored, deadband: f64) -> bool {
    let num = |s: &Stored| match s {
        Stored::Int(i) => Some(*i as f64),
        Stored::Real(f) => Some(*f),
        Stored::Text(_) => None,
    };
    match (num(last), num(now)) {
        (Some(a), Some(b)) if deadband > 0.0 => (a - b).abs() > deadband,
        _ => last != now,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fieldgate_api::FieldType;
    use std::time::SystemTime;

    fn spec(name: &str) -> FieldSpec {
        FieldSpec::new(name, FieldType::Double)
    }

    fn reading(field: &str, v: Value) -> Reading {
        Reading::new(field, v, SystemTime::now())
    }

    fn keep(sample: Sampling) -> Option<FieldHistory> {
        Some(FieldHistory {
            keep: Duration::from_secs(3600),
            sample,
        })
    }

    #[test]
    fn change_with_a_deadband_every_and_interval() {
        let specs = [spec("t"), spec("u"), spec("v"), spec("w")];
        let rules = [
            keep(Sampling::Change { deadband: 0.5 }),
            keep(Sampling::Every),
            keep(Sampling::Interval(Duration::from_secs(10))),
            None,
        ];
        let mut s = DeviceSampler::new(&"d".into(), &specs, &rules).unwrap();
        let t0 = Instant::now();
        let took = |s: &mut DeviceSampler, f: &str, v: f64, at: Duration| {
            s.offer(&reading(f, Value::Double(v)), t0 + at).is_some()
        };
        // Deadband: the first, then only moves of more than 0.5 from the last stored.
        let got: Vec<bool> = [1.0, 1.4, 1.6, 1.2, 2.2]
            .iter()
            .map(|v| took(&mut s, "t", *v, Duration::ZERO))
            .collect();
        assert_eq!(got, vec![true, false, true, false, true]);
        assert!(took(&mut s, "u", 1.0, Duration::ZERO) && took(&mut s, "u", 1.0, Duration::ZERO));
        assert!(took(&mut s, "v", 1.0, Duration::ZERO));
        assert!(!took(&mut s, "v", 2.0, Duration::from_secs(9)));
        assert!(took(&mut s, "v", 2.0, Duration::from_secs(10)));
        assert!(!took(&mut s, "w", 1.0, Duration::ZERO), "not kept");
        assert!(!took(&mut s, "nope", 1.0, Duration::ZERO));
        assert_eq!(
            s.read_period(Duration::from_secs(30)),
            Duration::from_secs(10)
        );
    }

    #[test]
    fn non_numbers_are_stored_when_they_change() {
        let specs = [spec("s")];
        let mut s = DeviceSampler::new(
            &"d".into(),
            &specs,
            &[keep(Sampling::Change { deadband: 3.0 })],
        )
        .unwrap();
        let now = Instant::now();
        let mut take = |v: &str| {
            s.offer(&reading("s", Value::String(v.into())), now)
                .map(|r| r.value)
        };
        assert_eq!(take("on"), Some(Stored::Text("on".into())));
        assert_eq!(take("on"), None);
        assert_eq!(take("off"), Some(Stored::Text("off".into())));
        assert!(DeviceSampler::new(&"d".into(), &specs, &[None]).is_none());
        assert_eq!(stored(&Value::Double(f64::NAN)), None);
        assert_eq!(stored(&Value::Bool(true)), Some(Stored::Int(1)));
    }
}
