//! Fuzz target bodies, shared by the cargo-fuzz targets in `fuzz/` and by the regular test
//! that replays their corpora (`tests/fuzz_corpus.rs`), so CI exercises every committed
//! input without a fuzzer.
//!
//! Each target takes arbitrary bytes and must never panic; where it is cheap it also checks
//! an invariant and panics (a finding) when it breaks: payloads written back and parsed
//! again give the same value, the guard scanner's output does not depend on how its input
//! was split and stays well-formed, configuration errors point inside the text.
//!
//! Not part of the gateway's API: the module is public only so the fuzz crate can link it.

use std::collections::HashMap;
use std::fmt::Debug;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use fieldgate_api::{FieldSpec, FieldType, Quality, Reading, Value};
use tokio_xmpp::minidom::{rxml, Element};
use xmpp_parsers::disco::{DiscoInfoQuery, DiscoItemsQuery, Item};
use xmpp_parsers::jid::Jid;

use crate::xmpp::disco::{self, DeviceDisco};
use crate::xmpp::guard::scanner::Scanner;
use crate::xmpp::guard::{Limits, Refusal};
use crate::xmpp::parameters;
use crate::xmpp::payload::common::{parse_boolean, parse_int, parse_long};
use crate::xmpp::payload::control::{
    Color, ControlForm, GetForm, ParamError, ParamKind, ParameterValue, Set, SetResponse,
};
use crate::xmpp::payload::events::{Subscribe, Unsubscribe};
use crate::xmpp::payload::sensordata::{
    Accepted, Cancel, Cancelled, Done, Failure, Field, Fields, NumericValue, Req, Started,
};
use crate::xmpp::payload::xsd::{
    format_double, format_duration, parse_double, parse_duration, XsDate, XsDateTime, XsTime,
};
use crate::xmpp::stanza::{clip, Header, ECHO_MAX};
use crate::xmpp::subscription::{numeric, Subscription};

/// Elements nested deeper than this are not handed to minidom: its tree and `Drop` recurse
/// per level, and in the gateway the guard scanner refuses such stanzas before any parser
/// sees them (the default inbound depth bound is far lower).
const MAX_XML_DEPTH: usize = 256;

/// Parses `data` as one XML element, or `None` when it is not one (or nests deeper than the
/// guard would let through).
pub fn xml(data: &[u8]) -> Option<Element> {
    let text = std::str::from_utf8(data).ok()?;
    // Depth first, with rxml's streaming parser, which keeps no tree.
    let mut reader = rxml::Reader::new(data);
    let mut depth = 0usize;
    loop {
        match reader.read() {
            Ok(Some(rxml::Event::StartElement(..))) => {
                depth += 1;
                if depth > MAX_XML_DEPTH {
                    return None;
                }
            }
            Ok(Some(rxml::Event::EndElement(..))) => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    break;
                }
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
    Element::from_str(text).ok()
}

/// `el` and its descendants, document order, at most `max` of them.
fn elements(el: &Element, max: usize) -> Vec<&Element> {
    let mut out = vec![];
    let mut stack = vec![el];
    while let Some(e) = stack.pop() {
        if out.len() >= max {
            break;
        }
        out.push(e);
        let children: Vec<_> = e.children().collect();
        stack.extend(children.into_iter().rev());
    }
    out
}

/// Parses `el` as `T`; on success writes it back, as an element and as text, and checks
/// both parse to the same value.
fn round_trip<'a, T>(el: &'a Element) -> Option<T>
where
    T: TryFrom<&'a Element> + Clone + Debug + PartialEq + Into<Element>,
    <T as TryFrom<&'a Element>>::Error: std::fmt::Display,
    T: TryFrom<Element>,
    <T as TryFrom<Element>>::Error: Debug,
{
    let parsed = match T::try_from(el) {
        Ok(p) => p,
        Err(e) => {
            // Error messages go back to the sender: they must be printable.
            let _ = e.to_string();
            return None;
        }
    };
    let written: Element = parsed.clone().into();
    let again = T::try_from(written.clone()).expect("a written payload parses");
    assert_eq!(
        again,
        parsed,
        "element round trip of {}",
        String::from(&written)
    );
    let text = String::from(&written);
    let reparsed: Element = text.parse().expect("a written payload is well-formed XML");
    let again = T::try_from(reparsed).expect("a written payload parses from its text");
    assert_eq!(again, parsed, "text round trip of {text}");
    Some(parsed)
}

/// Every attribute value of every element of `el`, bounded.
fn attribute_values(el: &Element) -> Vec<&str> {
    elements(el, 1024)
        .into_iter()
        .flat_map(|e| e.attrs().into_iter().map(|(_, v)| v.as_str()))
        .take(4096)
        .collect()
}

/// `s` parsed with `parse`, written with `write` and parsed again gives the same value.
fn value_round_trip<T: PartialEq + Debug, E>(
    s: &str,
    parse: impl Fn(&str) -> Result<T, E>,
    write: impl Fn(&T) -> String,
) {
    if let Ok(v) = parse(s) {
        let text = write(&v);
        match parse(&text) {
            Ok(again) => assert_eq!(again, v, "{s:?} written as {text:?}"),
            Err(_) => panic!("{s:?} parsed, but its written form {text:?} does not"),
        }
    }
}

/// The XML Schema and XEP value parsers on one string: xs:dateTime, xs:date, xs:time,
/// xs:duration, xs:double, xs:boolean, xs:int, xs:long, numeric field values and colours;
/// each written back must parse to the same value.
pub fn values(s: &str) {
    value_round_trip(s, XsDateTime::from_str, ToString::to_string);
    value_round_trip(s, XsDate::from_str, ToString::to_string);
    value_round_trip(s, XsTime::from_str, ToString::to_string);
    value_round_trip(s, parse_duration, |d| format_duration(*d));
    value_round_trip(s, Color::from_str, ToString::to_string);
    value_round_trip(s, parse_boolean, ToString::to_string);
    value_round_trip(s, parse_int, ToString::to_string);
    value_round_trip(s, parse_long, ToString::to_string);
    // NaN is not equal to itself: compare the bits (every NaN is written `NaN`).
    value_round_trip(
        s,
        |t| parse_double(t).map(|v| if v.is_nan() { f64::NAN } else { v }.to_bits()),
        |b| format_double(f64::from_bits(*b)),
    );
    if let Ok(n) = NumericValue::from_str(s) {
        let _ = (n.as_f64(), n.decimals());
        assert_eq!(NumericValue::from_str(n.as_str()).as_ref(), Ok(&n));
    }
    if let Ok(t) = XsDateTime::from_str(s) {
        let _ = (t.unix_time(), t.to_system_time(), t.date(), t.time());
    }
    for kind in ALL_KINDS {
        if let Ok(v) = ParameterValue::parse(kind, s) {
            assert_eq!(
                ParameterValue::parse(kind, &v.to_text()).as_ref(),
                Ok(&v),
                "{kind:?} {s:?}"
            );
        }
    }
}

const ALL_KINDS: [ParamKind; 11] = [
    ParamKind::Bool,
    ParamKind::Int,
    ParamKind::Long,
    ParamKind::Double,
    ParamKind::String,
    ParamKind::Enum,
    ParamKind::Date,
    ParamKind::Time,
    ParamKind::DateTime,
    ParamKind::Duration,
    ParamKind::Color,
];

/// XEP-0323: every element of the document parsed as each sensor-data payload, with round
/// trips, and every attribute value through the value parsers.
pub fn sensordata(data: &[u8]) {
    let Some(root) = xml(data) else { return };
    for el in elements(&root, 256) {
        round_trip::<Req>(el).map(|r| r.requested_types());
        round_trip::<Accepted>(el);
        round_trip::<Started>(el);
        round_trip::<Done>(el);
        round_trip::<Cancel>(el);
        round_trip::<Cancelled>(el);
        round_trip::<Field>(el);
        round_trip::<Fields>(el);
        round_trip::<Failure>(el);
    }
    for v in attribute_values(&root) {
        values(v);
    }
}

/// A catalogue with one field of every type, writable or not, with and without bounds, for
/// checking `<set/>` against.
fn catalogue() -> Vec<FieldSpec> {
    let mut specs = vec![];
    for (name, kind) in [
        ("bool", FieldType::Bool),
        ("int", FieldType::Int),
        ("long", FieldType::Long),
        ("double", FieldType::Double),
        ("string", FieldType::String),
        ("enum", FieldType::Enum),
        ("ts", FieldType::Timestamp),
    ] {
        let mut s = FieldSpec::new(name, kind);
        s.writable = true;
        specs.push(s.clone());
        s.name = format!("{name}_bounded").into();
        s.min = Some(-10.5);
        s.max = Some(100.0);
        s.decimals = Some(2);
        s.values = vec!["on".into(), "off".into()];
        specs.push(s.clone());
        s.name = format!("{name}_ro").into();
        s.writable = false;
        specs.push(s);
    }
    specs
}

/// XEP-0325: every element parsed as each control payload (including submitted and
/// returned data forms), with round trips; a parsed `<set/>` validated against a catalogue
/// and its form values parsed as every parameter type.
pub fn control(data: &[u8]) {
    let Some(root) = xml(data) else { return };
    let specs = catalogue();
    for el in elements(&root, 256) {
        if let Some(set) = round_trip::<Set>(el) {
            match parameters::validate(&specs, &set) {
                Ok(values) => assert!(values.len() <= set.params.len() + set.form_values().len()),
                Err(failures) => {
                    for f in failures {
                        let _ = f.kind.response_code();
                        // Failures repeat a bounded part of what was sent.
                        assert!(f.name.len() <= ECHO_MAX + '…'.len_utf8(), "{:?}", f.name);
                    }
                }
            }
            for (_, text) in set.form_values() {
                values(&text);
            }
        }
        round_trip::<SetResponse>(el);
        round_trip::<ParamError>(el);
        round_trip::<GetForm>(el);
        if let Ok(form) = ControlForm::try_from(el) {
            // A form read back loses nothing the builder writes.
            let again = ControlForm::try_from(Element::from(form.clone()))
                .expect("a written control form parses");
            assert_eq!(again, form);
        }
    }
    for v in attribute_values(&root) {
        values(v);
    }
    // The getForm answer for the catalogue, with current values taken from the input.
    let texts = attribute_values(&root);
    let form = parameters::form("fuzz", &specs, |name| {
        let i = name.len() % texts.len().max(1);
        let value = match texts.get(i) {
            Some(t) if name.starts_with("double") => Value::Double(parse_double(t).ok()?),
            Some(t) => Value::String((*t).to_owned()),
            None => return None,
        };
        Some(Reading::new(name, value, SystemTime::UNIX_EPOCH))
    });
    let el = Element::from(form);
    let _ = ControlForm::try_from(&el).expect("the getForm answer reads back");
}

/// IoT events: every element parsed as `<subscribe/>` and `<unsubscribe/>`, with round
/// trips; a parsed subscription built and evaluated against readings from the input.
pub fn events(data: &[u8]) {
    let Some(root) = xml(data) else { return };
    let now = Instant::now();
    for el in elements(&root, 256) {
        if let Some(s) = round_trip::<Subscribe>(el) {
            let _ = s.requested_types();
            let mut sub =
                Subscription::new("a@b/c".into(), "d".into(), &s, Duration::from_secs(1), now);
            let _ = sub.is_useful();
            let mut readings: HashMap<Arc<str>, Reading> = HashMap::new();
            for (i, f) in s.fields.iter().enumerate() {
                let _ = (f.thresholds(), f.has_condition());
                let value = match i % 4 {
                    0 => Value::Double(f.current_value.unwrap_or(0.0) + 1e3),
                    1 => Value::Bool(true),
                    2 => Value::Long(i64::MAX),
                    _ => Value::String(f.name.clone()),
                };
                let reading = Reading {
                    quality: Quality::Stale,
                    ..Reading::new(f.name.as_str(), value, SystemTime::UNIX_EPOCH)
                };
                readings.insert(f.name.as_str().into(), reading);
            }
            let value_of = |name: &str| readings.get(name).and_then(|r| numeric(&r.value));
            for step in [0u64, 1, 3600, u32::MAX.into()] {
                let t = now.checked_add(Duration::from_secs(step)).unwrap_or(now);
                sub.evaluate(value_of);
                let _ = (
                    sub.due(t),
                    sub.owed_on_arrival(t, Duration::from_secs(1)),
                    sub.wake(Duration::from_secs(1)),
                );
                sub.sent(value_of, t);
            }
            for f in &s.fields {
                let _ = sub.wants(&f.name);
            }
        }
        round_trip::<Unsubscribe>(el);
    }
    for v in attribute_values(&root) {
        values(v);
    }
}

/// Stanzas, presence and disco as the gateway reads them: the routing header of every
/// element, the guard's refusal marker, disco#info and disco#items queries (and paging
/// the items with a query's result-set request), and `clip` on every attribute value.
pub fn presence_disco(data: &[u8]) {
    let Some(root) = xml(data) else { return };
    let device = DeviceDisco::new("pump", &[crate::xmpp::payload::sensordata::NS]);
    let items: Vec<Item> = (0..20)
        .map(|i| Item {
            jid: Jid::new(&format!("dev{i}@gw.example.org")).expect("a JID"),
            node: None,
            name: Some(format!("device {i}")),
        })
        .collect();
    for el in elements(&root, 256) {
        if let Ok(h) = Header::parse(el) {
            // The replies the gateway builds from a header must be well-formed.
            let reply = h.result(None);
            let _: Element = String::from(&reply).parse().expect("a result is XML");
            let _ = h.to.node().map(|n| n.to_string());
            let _ = h.from.to_bare().to_string();
            let _ = Refusal::of(el);
        }
        if let Ok(r) = Refusal::try_from(el) {
            let _ = r.to_string();
            assert_eq!(Refusal::try_from(&Element::from(r)), Ok(r));
        }
        if let Ok(q) = DiscoInfoQuery::try_from(el.clone()) {
            let _ = device.answer(q.node.as_deref());
        }
        if let Ok(q) = DiscoItemsQuery::try_from(el.clone()) {
            for budget in [0, 300, 100_000] {
                if let Ok((page, rsm)) = disco::page(items.clone(), q.rsm.as_ref(), budget) {
                    assert!(page.len() <= items.len());
                    if let Some(max) = q.rsm.as_ref().and_then(|r| r.max) {
                        assert!(page.len() <= max, "{} items for max {max}", page.len());
                    }
                    let _ = rsm.map(Element::from);
                }
            }
        }
    }
    for v in attribute_values(&root) {
        let c = clip(v);
        assert!(c.len() <= ECHO_MAX + '…'.len_utf8());
    }
}

/// A tiny deterministic generator (SplitMix64): the mutation loop of the corpus test, and
/// the chunk splits of [`stanza_guard`], must not depend on a crate.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }
}

/// The start of the stream as the server sends it to a component.
const STREAM_HEADER: &str = "<?xml version='1.0'?><stream:stream xmlns='jabber:component:accept' \
    xmlns:stream='http://etherx.jabber.org/streams' id='fuzz' from='gw.example.org'>";

/// Whether `doc` is a well-formed XML document for rxml (the parser tokio-xmpp uses).
fn well_formed(doc: &[u8]) -> bool {
    let mut reader = rxml::Reader::new(doc);
    loop {
        match reader.read() {
            Ok(Some(_)) => {}
            Ok(None) => return true,
            Err(_) => return false,
        }
    }
}

/// The inbound guard: a stream header, then the input as stream content, then the stream
/// footer, scanned whole and in chunks of random sizes (the first byte seeds the split and
/// picks small limits, so every bound gets broken). The output and the refusals must not
/// depend on the split; when the input stream is well-formed, so is the output, nothing
/// is held back at its end, and with no refusal the output is the input.
pub fn stanza_guard(data: &[u8]) {
    let Some((&seed, body)) = data.split_first() else {
        return;
    };
    let mut rng = Rng::new(u64::from(seed) ^ (data.len() as u64) << 8);
    let limits = Limits {
        max_stanza_bytes: 64 + rng.below(4096),
        max_depth: rng.below(12),
        max_attribute_bytes: 4 + rng.below(128),
        max_name_bytes: 2 + rng.below(40),
    };
    let mut input = STREAM_HEADER.as_bytes().to_vec();
    input.extend_from_slice(body);
    input.extend_from_slice(b"</stream:stream>");

    let mut whole = Scanner::new(limits);
    let mut out = Vec::new();
    whole.feed(&input, &mut out);
    let refused = whole.take_refused();

    let max_chunk = 1 + rng.below(64);
    let mut split = Scanner::new(limits);
    let mut out_split = Vec::new();
    let mut rest = &input[..];
    let mut refused_split = vec![];
    while !rest.is_empty() {
        let n = (1 + rng.below(max_chunk)).min(rest.len());
        split.feed(&rest[..n], &mut out_split);
        refused_split.extend(split.take_refused());
        rest = &rest[n..];
    }
    assert_eq!(
        String::from_utf8_lossy(&out_split),
        String::from_utf8_lossy(&out),
        "output depends on the chunk split (chunks of 1 to {max_chunk} bytes)"
    );
    assert_eq!(refused_split, refused, "refusals depend on the chunk split");
    assert_eq!(split.between_stanzas(), whole.between_stanzas());

    if well_formed(&input) {
        assert!(
            well_formed(&out),
            "well-formed input, malformed output: {:?}",
            String::from_utf8_lossy(&out)
        );
        assert!(
            whole.between_stanzas(),
            "bytes held back after the stream ended"
        );
        if refused.is_empty() {
            assert_eq!(out, input);
        }
    }
}

/// The configuration loader on arbitrary text: it must answer with a configuration or an
/// error whose line and column lie inside the text.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // `secret_file` reads the named file: a fuzzer could name /dev/zero or a FIFO.
    if text.contains("secret_file") {
        return;
    }
    match crate::config::parse(Path::new("/nonexistent/fuzz.toml"), text) {
        Ok(cfg) => {
            let _ = cfg.summary();
        }
        Err(e) => {
            let _ = (e.to_string(), e.snippet());
            if let crate::config::ConfigError::Invalid(l) = &e {
                let lines = text.split('\n').count();
                assert!(
                    (1..=lines).contains(&l.line),
                    "line {} of {lines}: {e}",
                    l.line
                );
                assert!(l.column >= 1);
                let line_text = text.split('\n').nth(l.line - 1).unwrap_or_default();
                assert!(
                    l.column <= line_text.chars().count() + 1,
                    "column {} of {:?}: {e}",
                    l.column,
                    line_text
                );
            }
        }
    }
}

/// Runs `target` on every file of `dir` (a corpus), then on `mutations` inputs derived from
/// them by a seeded mutator (byte flips, insertions, deletions, splices), stopping early
/// once `budget` has passed. Returns how many inputs ran. For the regular test suite: a
/// short, deterministic stand-in for the fuzzer.
pub fn replay_corpus(
    dir: &Path,
    target: impl Fn(&[u8]),
    seed: u64,
    mutations: usize,
    budget: Duration,
) -> usize {
    let mut inputs: Vec<Vec<u8>> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
            .filter_map(|e| std::fs::read(e.path()).ok())
            .collect(),
        Err(_) => vec![],
    };
    // Directory order is the file system's: sort so a seed means the same inputs everywhere.
    inputs.sort();
    for input in &inputs {
        target(input);
    }
    let start = Instant::now();
    let mut rng = Rng::new(seed);
    let mut ran = inputs.len();
    if inputs.is_empty() {
        return ran;
    }
    const TOKENS: &[&[u8]] = &[
        b"<",
        b">",
        b"/>",
        b"</",
        b"'",
        b"\"",
        b"=",
        b"&amp;",
        b"&#",
        b";",
        b"]]>",
        b"<![CDATA[",
        b"-",
        b"+",
        b".",
        b"E",
        b"T",
        b":",
        b"Z",
        b"P",
        b"\n",
        b"[",
        b"]",
        b"#",
        b"\\",
        b"\xff",
        b"\xc3\xa9",
        b"0",
        b"9",
        b"99999999999999999999",
        b"NaN",
        b"INF",
    ];
    for _ in 0..mutations {
        if start.elapsed() > budget {
            break;
        }
        let mut m = inputs[rng.below(inputs.len())].clone();
        for _ in 0..1 + rng.below(4) {
            let at = rng.below(m.len() + 1);
            match rng.below(5) {
                0 if at < m.len() => m[at] ^= 1 << rng.below(8),
                1 => {
                    let t = TOKENS[rng.below(TOKENS.len())];
                    m.splice(at..at, t.iter().copied());
                }
                2 if at < m.len() => {
                    let end = (at + 1 + rng.below(8)).min(m.len());
                    m.drain(at..end);
                }
                3 => {
                    let other = &inputs[rng.below(inputs.len())];
                    let from = rng.below(other.len() + 1);
                    let to = (from + rng.below(64)).min(other.len());
                    m.splice(at..at, other[from..to].iter().copied());
                }
                _ if at < m.len() => m[at] = rng.next_u64() as u8,
                _ => {}
            }
        }
        target(&m);
        ran += 1;
    }
    ran
}
