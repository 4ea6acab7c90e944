//! XEP-0323 readouts: turning the device model's readings into `<fields>` and running
//! one readout (scheduled start, cache or fresh read, timeout, failures last).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use fieldgate_api::{
    AdapterError, AdapterRequest, FieldSpec, FieldType, Quality, Reading, Reason, Value,
};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_xmpp::minidom::Element;
use xmpp_parsers::ns;

use crate::xmpp::link::Outbound;
use crate::xmpp::payload::common::{FieldQos, FieldTypes, NodeRef};
use crate::xmpp::payload::sensordata::{
    Failure, Field, FieldValue, Fields, NodeData, NumericValue, ReadoutError, Started, Timestamp,
};
use crate::xmpp::payload::xsd::XsDateTime;
use crate::xmpp::size;
use crate::xmpp::stanza::{clip, BuilderExt};

/// Digits kept for a double whose field configures no `decimals`.
const MAX_DECIMALS: usize = 15;

/// Writes `value` of field `spec` as an XEP-0323 field with the given type flags.
pub fn to_field(spec: &FieldSpec, value: &Value, quality: Quality, types: FieldTypes) -> Field {
    let unit = || spec.unit.as_deref().unwrap_or_default().to_owned();
    let numeric = |v: f64| FieldValue::Numeric {
        value: NumericValue::new(v, spec.decimals.unwrap_or_else(|| natural_decimals(v))),
        unit: unit(),
    };
    let fv = match (spec.kind, value) {
        (_, Value::Bool(b)) => FieldValue::Boolean(*b),
        (FieldType::Double, Value::Int(v)) => numeric(f64::from(*v)),
        (FieldType::Double, Value::Long(v)) => numeric(*v as f64),
        (_, Value::Int(v)) => FieldValue::Int(*v),
        (_, Value::Long(v)) => FieldValue::Long(*v),
        (_, Value::Double(v)) => numeric(*v),
        (_, Value::String(s)) => FieldValue::String(s.clone()),
        (_, Value::Enum(s)) => FieldValue::Enum {
            value: s.clone(),
            data_type: spec.name.to_string(),
        },
        (_, Value::Timestamp(t)) => FieldValue::DateTime(XsDateTime::from_system_time(*t)),
    };
    let qos = match quality {
        Quality::Good => FieldQos::AUTOMATIC_READOUT,
        Quality::Stale => FieldQos::AUTOMATIC_ESTIMATE,
        Quality::Bad => FieldQos::ERROR,
    };
    let mut f = Field::new(spec.name.to_string(), fv)
        .with_types(types)
        .with_qos(qos);
    if spec.writable {
        f = f.with_writable(true);
    }
    f
}

/// The decimals a double shows in its shortest exact form (`4.5` → 1), capped.
fn natural_decimals(v: f64) -> u8 {
    let s = format!("{v}");
    s.split_once('.')
        .map_or(0, |(_, frac)| frac.len().min(MAX_DECIMALS)) as u8
}

/// Everything one readout needs, captured by the gateway when it accepts the request, so
/// the readout runs in its own task without touching the registry.
pub struct Readout {
    /// The client's sequence number.
    pub seqnr: u64,
    /// The device's full JID (messages come from it).
    pub from: String,
    /// The requester's full JID.
    pub to: String,
    /// The node id: the device id.
    pub node: String,
    /// Start no earlier than this (XEP-0323 `when`, turned into a monotonic instant when
    /// the request was accepted, so a wall-clock step does not move it).
    pub when: Option<Instant>,
    /// The device's field catalogue.
    pub specs: Arc<[FieldSpec]>,
    /// Momentary fields wanted, in catalogue order.
    pub wanted: Vec<Arc<str>>,
    /// The last known values of the wanted fields; those younger than `max_age` when
    /// the readout starts (after `when`) are served instead of asking the device.
    pub cached: HashMap<Arc<str>, Reading>,
    /// Freshness limit for `cached`.
    pub max_age: Duration,
    /// Fields requested by name that the device does not have.
    pub unknown: Vec<String>,
    /// Status and identity fields, already built.
    pub extra: Vec<Field>,
    /// The device's adapter, for fields not served from the cache.
    pub adapter: Option<mpsc::Sender<AdapterRequest>>,
    /// How long to wait for the device.
    pub timeout: Duration,
    /// Bound on each message sent, in bytes (`max_outbound_stanza_size`).
    pub max_stanza: usize,
    /// Whether the requester may see the detailed error texts (it holds the control
    /// right), or only the public ones.
    pub detailed: bool,
    /// What history adds: stored samples or period aggregates, after the momentary
    /// values and before the failures.
    pub history: Option<crate::history::readout::HistoryPart>,
}

/// Unknown fields a failure names one by one; the rest are counted in one more error.
const LISTED_UNKNOWN: usize = 10;

/// A `<message>` from a device carrying one IoT payload.
pub fn message(from: &str, to: &str, payload: Element) -> Element {
    Element::builder("message", ns::COMPONENT)
        .a("from", from)
        .a("to", to)
        .append(payload)
        .build()
}

/// `payload` (a `<fields>` or `<failure>`) in as many messages from `from` to `to` as
/// keep each within `limit` bytes; `levels` is how deep its units sit (3 for the fields
/// of `<fields>`, 1 for the errors of `<failure>`). See [`size::split`].
pub fn messages_within(
    from: &str,
    to: &str,
    payload: Element,
    levels: usize,
    limit: usize,
) -> Vec<Element> {
    let empty = Element::builder("message", ns::COMPONENT)
        .a("from", from)
        .a("to", to)
        .build();
    // `<message …/>` becomes `<message …>` + payload + `</message>`.
    let wrapper = size::encoded_len(&empty) + "message".len() + 2;
    size::split(payload, levels, limit.saturating_sub(wrapper))
        .into_iter()
        .map(|p| message(from, to, p))
        .collect()
}

/// Flags the payload of the last message `done='true'`: it ends the readout (or event).
pub fn mark_done(messages: &mut [Element]) {
    if let Some(payload) = messages.last_mut().and_then(|m| m.children_mut().next()) {
        payload.set_attr(
            tokio_xmpp::minidom::rxml::Namespace::NONE,
            tokio_xmpp::minidom::rxml::xml_ncname!("done").to_owned(),
            "true",
        );
    }
}

impl Readout {
    fn message(&self, payload: Element) -> Element {
        message(&self.from, &self.to, payload)
    }

    /// The cached values of wanted fields still fresh at `started`: freshness is judged
    /// when the readout starts, not when it was accepted, so a scheduled readout does not
    /// serve values that went stale while it waited.
    fn fresh_cached(&self, started: Instant) -> HashMap<Arc<str>, Reading> {
        self.cached
            .iter()
            .filter(|(_, r)| self.is_fresh(r, started))
            .map(|(k, r)| (k.clone(), r.clone()))
            .collect()
    }

    /// Ages are measured on the monotonic clock: a value stamped in the future by a
    /// clock that stepped back is not fresh forever, nor one stamped before a forward
    /// step stale at once.
    fn is_fresh(&self, r: &Reading, at: Instant) -> bool {
        at.saturating_duration_since(r.taken) <= self.max_age
    }

    /// The messages that complete the readout right away, when nothing has to be waited
    /// for: no `when`, and every wanted value cached and fresh. Saves a task, and sends the
    /// `<fields>` right behind the `accepted` result, in the same write.
    pub fn complete_from_cache(&self) -> Option<Vec<Element>> {
        if self.when.is_some() || self.history.is_some() {
            return None;
        }
        let now = Instant::now();
        let fresh = |r: &Reading| self.is_fresh(r, now);
        if !self
            .wanted
            .iter()
            .all(|n| self.cached.get(n).is_some_and(fresh))
        {
            return None;
        }
        // Every wanted value is cached and fresh, and `cached` holds nothing else.
        Some(self.finish(&self.cached, self.unknown_failures(), SystemTime::now()))
    }

    /// The requester's misnamed fields: the first few by name (clipped), the rest
    /// counted, so that thousands of unknown filters cannot make a reply thousands of
    /// errors long.
    fn unknown_failures(&self) -> Vec<(String, Reason)> {
        let mut v: Vec<(String, Reason)> = self
            .unknown
            .iter()
            .take(LISTED_UNKNOWN)
            .map(|n| (clip(n).into_owned(), "unknown field".into()))
            .collect();
        if self.unknown.len() > LISTED_UNKNOWN {
            let more = self.unknown.len() - LISTED_UNKNOWN;
            v.push((format!("{more} more"), "unknown fields, not listed".into()));
        }
        v
    }

    /// Runs the readout: waits for `when`, reads what the cache cannot serve, sends
    /// `<fields>` and, last, `<failure>`, the last one flagged `done`. Returns the fresh
    /// readings for the cache and the first error, if any. Stops silently when cancelled.
    pub async fn run(
        self,
        out: mpsc::Sender<Outbound>,
        cancel: CancellationToken,
    ) -> (Vec<Reading>, Option<Reason>) {
        if let Some(when) = self.when {
            if when > Instant::now() {
                tokio::select! {
                    _ = cancel.cancelled() => return (vec![], None),
                    _ = tokio::time::sleep_until(when.into()) => {}
                }
                let _ = out
                    .send(self.message(Started::new(self.seqnr).into()).into())
                    .await;
            }
        }
        let mut values = self.fresh_cached(Instant::now());
        let mut failures = self.unknown_failures();
        let misnamed = failures.len();
        let to_read: Vec<String> = self
            .wanted
            .iter()
            .filter(|n| !values.contains_key(*n))
            .map(|n| n.to_string())
            .collect();
        let mut fresh = Vec::new();
        if !to_read.is_empty() {
            let outcome = tokio::select! {
                _ = cancel.cancelled() => return (vec![], None),
                o = read(self.adapter.as_ref(), &self.node, to_read.clone(), self.timeout) => o,
            };
            match outcome {
                Ok(o) => {
                    for (name, err) in o.failures {
                        failures.push((name, err.reason()));
                    }
                    for r in o.readings {
                        fresh.push(r.clone());
                        values.insert(r.field.clone(), r);
                    }
                }
                Err(e) => failures.extend(to_read.iter().map(|n| (n.clone(), e.reason()))),
            }
        }
        // A field the requester misnamed is its mistake, not the device's last error.
        let first_error = failures
            .get(misnamed)
            .map(|(n, why)| why.prefixed(&format!("{n}: ")));
        let Some(history) = self.history.clone() else {
            let messages = self.finish(&values, failures, SystemTime::now());
            let _ = out.send(messages.into()).await;
            return (fresh, first_error);
        };
        // Momentary values first, then history (streamed from a blocking thread: the
        // store is read synchronously), then failures; `done` on the very last message.
        let now = SystemTime::now();
        let momentary = self.fields_part(&values, now);
        if !momentary.is_empty() {
            let _ = out.send(momentary.into()).await;
        }
        let more = !failures.is_empty();
        let (from, to, node, seqnr, limit) = (
            self.from.clone(),
            self.to.clone(),
            self.node.clone(),
            self.seqnr,
            self.max_stanza,
        );
        let (hout, hcancel) = (out.clone(), cancel.clone());
        let answered = tokio::task::spawn_blocking(move || {
            let sink = crate::history::readout::Sink {
                spec: crate::xmpp::fields_text::FieldsMessages {
                    from: &from,
                    to: &to,
                    seqnr,
                    node_id: &node,
                    limit,
                },
                out: &hout,
                cancel: &hcancel,
            };
            history.answer(&sink, more)
        })
        .await;
        if cancel.is_cancelled() {
            return (fresh, first_error);
        }
        match answered {
            Ok(f) => failures.extend(f),
            Err(e) => failures.push(("history".into(), Reason::new(format!("history: {e}")))),
        }
        if !failures.is_empty() {
            let mut messages = self.failure_part(failures, now);
            mark_done(&mut messages);
            let _ = out.send(messages.into()).await;
        }
        (fresh, first_error)
    }

    /// The `<fields>` messages of `values` and the extra fields (none if there are
    /// none), not flagged `done`.
    fn fields_part(&self, values: &HashMap<Arc<str>, Reading>, now: SystemTime) -> Vec<Element> {
        let wanted: HashSet<&str> = self.wanted.iter().map(|n| &**n).collect();
        let mut stamped: Vec<(SystemTime, Field)> = Vec::new();
        for spec in self.specs.iter() {
            if let Some(r) = values.get(&spec.name) {
                if wanted.contains(&*spec.name) {
                    let f = to_field(spec, &r.value, r.quality, FieldTypes::MOMENTARY);
                    stamped.push((r.timestamp, f));
                }
            }
        }
        stamped.extend(self.extra.iter().cloned().map(|f| (now, f)));
        let Some(node) = node_data(&NodeRef::new(self.node.clone()), stamped) else {
            return vec![];
        };
        let fields = Fields {
            seqnr: self.seqnr,
            done: false,
            nodes: vec![node],
        };
        messages_within(&self.from, &self.to, fields.into(), 3, self.max_stanza)
    }

    /// The `<failure>` messages for `failures`, not flagged `done`.
    fn failure_part(&self, failures: Vec<(String, Reason)>, now: SystemTime) -> Vec<Element> {
        let node = NodeRef::new(self.node.clone());
        let ts = XsDateTime::from_system_time(now);
        let failure = Failure {
            seqnr: self.seqnr,
            done: false,
            errors: failures
                .into_iter()
                .map(|(name, why)| {
                    let why = why.text(self.detailed);
                    ReadoutError::new(node.clone(), ts, format!("{name}: {why}"))
                })
                .collect(),
        };
        messages_within(&self.from, &self.to, failure.into(), 1, self.max_stanza)
    }

    /// The `<fields>` messages with `values` (wanted fields, catalogue order) and the
    /// extra fields, then `<failure>` messages for `failures`, each within `max_stanza`;
    /// the last one is flagged `done`.
    fn finish(
        &self,
        values: &HashMap<Arc<str>, Reading>,
        failures: Vec<(String, Reason)>,
        now: SystemTime,
    ) -> Vec<Element> {
        let mut messages = self.fields_part(values, now);
        // slixmpp's plugin stops at the first <failure>, so values go first, failures last;
        // with neither, one empty <fields> says `done`.
        if messages.is_empty() && failures.is_empty() {
            let empty = Fields {
                seqnr: self.seqnr,
                done: false,
                nodes: vec![],
            };
            messages.push(self.message(empty.into()));
        }
        if !failures.is_empty() {
            messages.extend(self.failure_part(failures, now));
        }
        mark_done(&mut messages);
        messages
    }
}

/// One `<node>` with a `<timestamp>` per distinct instant (as written, to the
/// millisecond), fields in the given order within each; `None` when there are no fields.
pub fn node_data(node: &NodeRef, fields: Vec<(SystemTime, Field)>) -> Option<NodeData> {
    let mut groups: Vec<Timestamp> = Vec::new();
    for (t, f) in fields {
        let t = XsDateTime::from_system_time(t);
        match groups.iter_mut().find(|g| g.value == t) {
            Some(g) => g.fields.push(f),
            None => groups.push(Timestamp::new(t, vec![f])),
        }
    }
    (!groups.is_empty()).then(|| NodeData::new(node.clone(), groups))
}

/// Reads `fields` for the gateway's own purposes (an events sample, a history read):
/// the readings, and the first failure as the device's last error.
pub async fn read_for_cache(
    adapter: Option<mpsc::Sender<AdapterRequest>>,
    device: &str,
    fields: Vec<String>,
    timeout: Duration,
) -> (Vec<Reading>, Option<Reason>) {
    match read(adapter.as_ref(), device, fields, timeout).await {
        Ok(o) => (
            o.readings,
            o.failures
                .first()
                .map(|(n, e)| e.reason().prefixed(&format!("{n}: "))),
        ),
        Err(e) => (vec![], Some(e.reason())),
    }
}

/// Asks the adapter for `fields`, bounded by `timeout`.
pub async fn read(
    adapter: Option<&mpsc::Sender<AdapterRequest>>,
    device: &str,
    fields: Vec<String>,
    timeout: Duration,
) -> Result<fieldgate_api::ReadOutcome, AdapterError> {
    let adapter = adapter.ok_or(AdapterError::Stopped)?;
    let (reply, rx) = oneshot::channel();
    let req = AdapterRequest::Read {
        device: device.into(),
        fields: Some(fields),
        reply,
    };
    let ask = async {
        adapter.send(req).await.map_err(|_| AdapterError::Stopped)?;
        rx.await.map_err(|_| AdapterError::Stopped)
    };
    match tokio::time::timeout(timeout, ask).await {
        Ok(r) => r,
        Err(_) => Err(AdapterError::Timeout(format!(
            "no answer from the device within {}",
            humantime::format_duration(timeout)
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(kind: FieldType) -> FieldSpec {
        FieldSpec {
            unit: Some("bar".into()),
            ..FieldSpec::new("p", kind)
        }
    }

    #[test]
    fn doubles_keep_configured_decimals_and_units() {
        let s = FieldSpec {
            decimals: Some(2),
            ..spec(FieldType::Double)
        };
        let f = to_field(
            &s,
            &Value::Double(10.0),
            Quality::Good,
            FieldTypes::MOMENTARY,
        );
        let el: Element = f.into();
        assert_eq!(el.name(), "numeric");
        assert_eq!(el.attr("value"), Some("10.00"));
        assert_eq!(el.attr("unit"), Some("bar"));
        assert_eq!(el.attr("momentary"), Some("true"));
        assert_eq!(el.attr("automaticReadout"), Some("true"));
        let f = to_field(
            &spec(FieldType::Double),
            &Value::Double(4.5),
            Quality::Good,
            FieldTypes::MOMENTARY,
        );
        assert_eq!(Element::from(f).attr("value"), Some("4.5"));
    }

    #[test]
    fn integer_types_and_writable_flag() {
        let s = FieldSpec {
            writable: true,
            ..spec(FieldType::Long)
        };
        let el: Element = to_field(
            &s,
            &Value::Long(1 << 40),
            Quality::Stale,
            FieldTypes::MOMENTARY,
        )
        .into();
        assert_eq!(el.name(), "long");
        assert_eq!(el.attr("writable"), Some("true"));
        assert_eq!(el.attr("automaticEstimate"), Some("true"));
        let el: Element = to_field(
            &spec(FieldType::Int),
            &Value::Int(-3),
            Quality::Good,
            FieldTypes::MOMENTARY,
        )
        .into();
        assert_eq!((el.name(), el.attr("value")), ("int", Some("-3")));
    }

    fn readout(cached_at: SystemTime, unknown: &[&str]) -> Readout {
        let specs: Arc<[FieldSpec]> = vec![spec(FieldType::Double)].into();
        let mut cached = HashMap::new();
        cached.insert(
            "p".into(),
            Reading::new("p", Value::Double(1.25), cached_at),
        );
        Readout {
            seqnr: 7,
            from: "d@gw/gw".into(),
            to: "a@x/r".into(),
            node: "d".into(),
            when: None,
            specs,
            wanted: vec!["p".into()],
            cached,
            unknown: unknown.iter().map(|n| n.to_string()).collect(),
            extra: vec![],
            adapter: None,
            timeout: Duration::from_millis(50),
            max_age: Duration::from_secs(60),
            max_stanza: 64 * 1024,
            detailed: false,
            history: None,
        }
    }

    #[test]
    fn fresh_cached_values_complete_a_readout_at_once() {
        let r = readout(SystemTime::now(), &[]);
        let msgs = r.complete_from_cache().expect("served from the cache");
        assert_eq!(msgs.len(), 1);
        let fields = msgs[0]
            .get_child("fields", crate::xmpp::payload::sensordata::NS)
            .unwrap();
        assert_eq!(fields.attr("done"), Some("true"));
        assert_eq!(fields.attr("seqnr"), Some("7"));
        assert_eq!(msgs[0].attr("to"), Some("a@x/r"));

        // an unknown field still completes at once: values first, failure last
        let msgs = readout(SystemTime::now(), &["nope"])
            .complete_from_cache()
            .unwrap();
        assert_eq!(msgs.len(), 2);
        assert!(msgs[1]
            .get_child("failure", crate::xmpp::payload::sensordata::NS)
            .is_some());

        // a stale value has to be read: no answer from the cache
        let stale = aged(readout(SystemTime::now(), &[]), 61);
        assert!(stale.complete_from_cache().is_none());
        // nor for a scheduled readout
        let mut later = readout(SystemTime::now(), &[]);
        later.when = Some(Instant::now() + Duration::from_secs(5));
        assert!(later.complete_from_cache().is_none());
    }

    /// `r` with its cached value received `secs` seconds ago.
    fn aged(mut r: Readout, secs: u64) -> Readout {
        for v in r.cached.values_mut() {
            v.taken = Instant::now() - Duration::from_secs(secs);
        }
        r
    }

    #[test]
    fn freshness_follows_the_monotonic_clock_not_the_stamps() {
        let hour = Duration::from_secs(3600);
        // Stamped before the wall clock stepped back an hour: its stamp is in the future,
        // but it is 61 s old and must be read again (it used to be fresh for an hour).
        let r = aged(readout(SystemTime::now() + hour, &[]), 61);
        assert!(r.complete_from_cache().is_none());
        // Stamped before a forward step: an hour old by the stamps, 1 s old in fact.
        let r = aged(readout(SystemTime::now() - hour, &[]), 1);
        assert!(r.complete_from_cache().is_some());
    }

    #[tokio::test]
    async fn failures_come_last_and_carry_done() {
        let (out, mut rx) = mpsc::channel(8);
        let r = readout(SystemTime::now(), &["nope"]);
        let (fresh, err) = r.run(out, CancellationToken::new()).await;
        assert!(fresh.is_empty());
        // the requester's misnamed field is reported to it, not kept as the device's error
        assert_eq!(err, None);
        // one batch: the link writes both at once
        let batch = rx.recv().await.unwrap().into_vec();
        assert_eq!(batch.len(), 2);
        let fields = batch[0]
            .get_child("fields", crate::xmpp::payload::sensordata::NS)
            .unwrap();
        assert_eq!(fields.attr("done"), None);
        let failure = batch[1]
            .get_child("failure", crate::xmpp::payload::sensordata::NS)
            .unwrap();
        assert_eq!(failure.attr("done"), Some("true"));
        assert!(failure
            .children()
            .next()
            .unwrap()
            .text()
            .contains("unknown field"));
    }

    /// A link-down failure names the host and port only to a requester allowed to see
    /// them (one holding the control right); the device's last error keeps both texts.
    #[tokio::test]
    async fn failure_texts_keep_host_names_for_the_detailed_view() {
        for detailed in [false, true] {
            let (tx, mut requests) = mpsc::channel(1);
            tokio::spawn(async move {
                if let Some(AdapterRequest::Read { fields, reply, .. }) = requests.recv().await {
                    let why = Reason::with_detail(
                        "connection plc: cannot connect",
                        "connection plc: cannot connect to 10.1.2.3:502",
                    );
                    let failures = fields
                        .unwrap_or_default()
                        .into_iter()
                        .map(|f| (f, AdapterError::LinkDown(why.clone())))
                        .collect();
                    let _ = reply.send(fieldgate_api::ReadOutcome {
                        readings: vec![],
                        failures,
                    });
                }
            });
            let mut r = aged(readout(SystemTime::now(), &[]), 61);
            r.adapter = Some(tx);
            r.detailed = detailed;
            let (out, mut rx) = mpsc::channel(8);
            let (_, err) = r.run(out, CancellationToken::new()).await;
            let batch = rx.recv().await.unwrap().into_vec();
            let failure = batch
                .iter()
                .find_map(|m| m.get_child("failure", crate::xmpp::payload::sensordata::NS))
                .unwrap();
            let text = failure.children().next().unwrap().text();
            assert!(
                text.starts_with("p: link down: connection plc: cannot connect"),
                "{text}"
            );
            assert_eq!(text.contains("10.1.2.3:502"), detailed, "{text}");
            let err = err.unwrap();
            assert!(!err.public().contains("10.1.2.3"), "{err:?}");
            assert!(err.detailed().contains("10.1.2.3:502"), "{err:?}");
        }
    }

    #[test]
    fn a_large_readout_is_split_under_the_bound_with_done_on_the_last() {
        let n = 6000;
        let specs: Arc<[FieldSpec]> = (0..n)
            .map(|i| FieldSpec::new(format!("register{i:04}"), FieldType::Int))
            .collect::<Vec<_>>()
            .into();
        let now = SystemTime::now();
        let cached: HashMap<Arc<str>, Reading> = specs
            .iter()
            .enumerate()
            .map(|(i, s)| {
                (
                    s.name.clone(),
                    Reading::new(&*s.name, Value::Int(i as i32), now),
                )
            })
            .collect();
        let mut r = readout(now, &[]);
        r.wanted = specs.iter().map(|s| s.name.clone()).collect();
        r.specs = specs;
        r.cached = cached;
        let limit = 16 * 1024;
        r.max_stanza = limit;
        let msgs = r.complete_from_cache().unwrap();
        assert!(msgs.len() >= 10, "{} messages", msgs.len());
        let mut seen = 0;
        for (i, m) in msgs.iter().enumerate() {
            assert!(size::encoded_len(m) <= limit);
            let fields = m
                .get_child("fields", crate::xmpp::payload::sensordata::NS)
                .unwrap();
            let done = fields.attr("done") == Some("true");
            assert_eq!(done, i == msgs.len() - 1);
            let parsed = Fields::try_from(fields).unwrap();
            seen += parsed.nodes[0]
                .timestamps
                .iter()
                .map(|t| t.fields.len())
                .sum::<usize>();
        }
        assert_eq!(seen, n);
    }

    #[test]
    fn thousands_of_unknown_fields_collapse_into_a_few_errors() {
        let names: Vec<String> = (0..11_500).map(|i| format!("nosuch{i}")).collect();
        let mut r = readout(SystemTime::now(), &[]);
        r.unknown = names;
        r.unknown[0] = "x".repeat(5000);
        let msgs = r.complete_from_cache().unwrap();
        assert_eq!(msgs.len(), 2);
        let failure = Failure::try_from(
            msgs[1]
                .get_child("failure", crate::xmpp::payload::sensordata::NS)
                .unwrap(),
        )
        .unwrap();
        assert!(failure.done);
        assert_eq!(failure.errors.len(), LISTED_UNKNOWN + 1);
        assert!(failure.errors[0].message.len() < 100, "the name is clipped");
        assert_eq!(
            failure.errors[LISTED_UNKNOWN].message,
            "11490 more: unknown fields, not listed"
        );
        assert!(size::encoded_len(&msgs[1]) < 4096);
    }
}
