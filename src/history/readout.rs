//! History's part of an XEP-0323 readout: the stored samples of the wanted fields in a
//! time range (`historical`, `historicalOther`, `historicalSecond`), or one value per
//! period (`historicalMinute` … `historicalYear`: the mean, stamped with the period's
//! start, beside `<name>.min` and `<name>.max`), written as `<fields>` messages in time
//! order, each within the outbound size bound, streamed as they fill.

use std::path::PathBuf;
use std::time::SystemTime;

use fieldgate_api::{FieldSpec, FieldType, Quality, Reason, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::periods::Period;
use super::store::{from_millis, Reader, Stored};
use crate::xmpp::fields_text::FieldsMessages;
use crate::xmpp::link::Outbound;
use crate::xmpp::payload::common::FieldTypes;
use crate::xmpp::payload::sensordata::{Field, FieldValue, NumericValue};
use crate::xmpp::readout::to_field;

/// The period types and their periods.
pub const PERIODS: [(FieldTypes, Period); 7] = [
    (FieldTypes::HISTORICAL_MINUTE, Period::Minute),
    (FieldTypes::HISTORICAL_HOUR, Period::Hour),
    (FieldTypes::HISTORICAL_DAY, Period::Day),
    (FieldTypes::HISTORICAL_WEEK, Period::Week),
    (FieldTypes::HISTORICAL_MONTH, Period::Month),
    (FieldTypes::HISTORICAL_QUARTER, Period::Quarter),
    (FieldTypes::HISTORICAL_YEAR, Period::Year),
];

/// What a readout asks of history.
#[derive(Debug, Clone)]
pub struct HistoryPart {
    /// The store.
    pub file: PathBuf,
    /// The device id.
    pub device: String,
    /// The wanted fields, in catalogue order.
    pub fields: Vec<FieldSpec>,
    /// The range, ms since the epoch, both ends included.
    pub from: i64,
    /// See `from`.
    pub to: i64,
    /// Whether the samples themselves are wanted.
    pub raw: bool,
    /// The periods whose aggregates are wanted, with their field type.
    pub periods: Vec<(FieldTypes, Period)>,
    /// The most values one readout returns.
    pub max_values: u64,
}

/// Where the messages go.
pub struct Sink<'a> {
    /// The message layout (from, to, seqnr, node, size bound).
    pub spec: FieldsMessages<'a>,
    /// The link's queue (waited on: a long history is paced by the link).
    pub out: &'a mpsc::Sender<Outbound>,
    /// The readout's cancellation.
    pub cancel: &'a CancellationToken,
}

impl HistoryPart {
    /// Writes the answer (blocking: run it on a blocking thread). The last message is
    /// flagged `done` unless `more` (failures follow) or something failed here; what
    /// failed is returned, to go in the readout's `<failure>`.
    pub fn answer(&self, sink: &Sink<'_>, more: bool) -> Vec<(String, Reason)> {
        let mut failures = Vec::new();
        let mut stream = sink.spec.stream();
        let mut sent = 0u64;
        let mut stopped = false;
        let send = |msgs: Vec<String>| -> bool {
            msgs.is_empty() || sink.out.blocking_send(Outbound::Text(msgs)).is_ok()
        };
        match Reader::open(&self.file) {
            Ok(None) => {} // nothing was ever kept
            Err(e) => failures.push((
                "history".to_owned(),
                Reason::new(format!("the history store cannot be read: {e}")),
            )),
            Ok(Some(reader)) => {
                let mut series = Vec::new();
                let mut specs = Vec::new();
                for f in &self.fields {
                    match reader.series_id(&self.device, &f.name) {
                        Ok(Some(id)) => {
                            series.push(id);
                            specs.push(f);
                        }
                        Ok(None) => {}
                        Err(e) => failures
                            .push((f.name.to_string(), Reason::new(format!("history: {e}")))),
                    }
                }
                if self.raw && !series.is_empty() {
                    let r = reader.merged(&series, self.from, self.to, |k, t, v| {
                        if sent >= self.max_values || sink.cancel.is_cancelled() {
                            stopped = true;
                            return false;
                        }
                        sent += 1;
                        let f = sample_field(specs[k], &v, FieldTypes::HISTORICAL_OTHER);
                        stream.push(from_millis(t), &f);
                        let ready = stream.take();
                        send(ready) || {
                            stopped = true;
                            false
                        }
                    });
                    if let Err(e) = r {
                        failures.push(("history".into(), Reason::new(format!("history: {e}"))));
                    }
                }
                for (types, period) in &self.periods {
                    if stopped {
                        break;
                    }
                    // One period type at a time, all fields merged by period start.
                    let numeric: Vec<usize> = (0..series.len())
                        .filter(|k| specs[*k].kind.is_numeric())
                        .collect();
                    let ids: Vec<i64> = numeric.iter().map(|k| series[*k]).collect();
                    let mut rows: Vec<(i64, usize, super::store::Aggregate)> = Vec::new();
                    match reader.aggregate(&ids, self.from, self.to, |t| period.start(t)) {
                        Ok(per_series) => {
                            for (k, aggs) in numeric.iter().zip(per_series) {
                                rows.extend(aggs.into_iter().map(|a| (a.start, *k, a)));
                            }
                        }
                        Err(e) => {
                            failures.push(("history".into(), Reason::new(format!("history: {e}"))))
                        }
                    }
                    rows.sort_by_key(|(t, k, _)| (*t, *k));
                    for (t, k, a) in rows {
                        if sent >= self.max_values || sink.cancel.is_cancelled() {
                            stopped = true;
                            break;
                        }
                        sent += 1;
                        let at = from_millis(t);
                        for f in aggregate_fields(specs[k], &a, *types) {
                            stream.push(at, &f);
                        }
                        if !send(stream.take()) {
                            stopped = true;
                            break;
                        }
                    }
                }
            }
        }
        if stopped && sent >= self.max_values {
            failures.push((
                "history".into(),
                Reason::new(format!(
                    "more than {} values in the range: ask for a shorter one (or a period type)",
                    self.max_values
                )),
            ));
        }
        if sink.cancel.is_cancelled() {
            return failures;
        }
        let rest = stream.finish(!more && failures.is_empty());
        send(rest.messages);
        failures
    }
}

/// A stored sample as a field of `spec`'s type.
fn sample_field(spec: &FieldSpec, v: &Stored, types: FieldTypes) -> Field {
    let value = match (spec.kind, v) {
        (FieldType::Bool, Stored::Int(i)) => Value::Bool(*i != 0),
        (FieldType::Int, Stored::Int(i)) => Value::Int(i32::try_from(*i).unwrap_or_default()),
        (FieldType::Long, Stored::Int(i)) => Value::Long(*i),
        (FieldType::Double, Stored::Int(i)) => Value::Double(*i as f64),
        (FieldType::Timestamp, Stored::Int(i)) => Value::Timestamp(from_millis(*i)),
        (FieldType::Enum, Stored::Text(s)) => Value::Enum(s.clone()),
        (_, Stored::Real(f)) => Value::Double(*f),
        (_, Stored::Int(i)) => Value::Long(*i),
        (_, Stored::Text(s)) => Value::String(s.clone()),
    };
    to_field(spec, &value, Quality::Good, types)
}

/// A period's mean under the field's name, and its extremes as `<name>.min`/`.max`.
fn aggregate_fields(
    spec: &FieldSpec,
    a: &super::store::Aggregate,
    types: FieldTypes,
) -> [Field; 3] {
    // The mean of integers is not an integer: means are numeric, with one more decimal
    // than the field's (at least one).
    let decimals = spec.decimals.unwrap_or(0).saturating_add(1).min(15);
    let unit = spec.unit.as_deref().unwrap_or_default().to_owned();
    let numeric = |name: String, v: f64, d: u8, t: FieldTypes| {
        Field::new(
            name,
            FieldValue::Numeric {
                value: NumericValue::new(v, d),
                unit: unit.clone(),
            },
        )
        .with_types(t)
        .with_qos(crate::xmpp::payload::common::FieldQos::AUTOMATIC_READOUT)
    };
    let d = spec.decimals.unwrap_or(0);
    [
        numeric(
            spec.name.to_string(),
            a.mean,
            decimals,
            types | FieldTypes::COMPUTED,
        ),
        numeric(
            format!("{}.min", spec.name),
            a.min,
            d,
            types | FieldTypes::PEAK,
        ),
        numeric(
            format!("{}.max", spec.name),
            a.max,
            d,
            types | FieldTypes::PEAK,
        ),
    ]
}

/// `t` in ms since the epoch (for `from`/`to`).
pub fn ms(t: SystemTime) -> i64 {
    super::store::millis(t)
}
