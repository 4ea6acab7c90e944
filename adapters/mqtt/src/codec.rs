//! Payload codecs: a message's bytes to field values, and a command's value to bytes.
//!
//! Every topic has one payload format, shared by all the fields it feeds:
//!
//! - **plain**: the payload is the value, as text. It must be UTF-8; surrounding ASCII
//!   whitespace (spaces, tabs, line ends) is trimmed.
//! - **JSON**: each field names its value by an RFC 6901 JSON pointer (`/temperature`,
//!   `/state/battery`, `/sensors/0`; `~1` stands for `/` and `~0` for `~` in a key; the
//!   empty pointer is the whole document). The message is parsed once, whatever the
//!   number of fields. A topic may also name where the message carries its time (see
//!   below).
//! - **SenML**: the payload is a SenML JSON pack (RFC 8428), and a field names its record:
//!   the record whose full name (base name `bn` followed by name `n`) is the field's
//!   record name, or whose own `n` is. Base fields (`bn`, `bt`, `bv`, `bver`, ...) apply
//!   to their record and to all later ones until changed. The value is `v` plus the base
//!   value `bv`, or `vs` (text), `vb` (boolean), or `vd` (data, taken as its base64
//!   text). The time is `bt` plus `t`; a time below 2^28 (268,435,456) counts from the
//!   message's arrival (`-60` is a minute before it, a record without a time is "now"),
//!   and a larger one is Unix seconds. When a pack holds several records of one field (a
//!   time series), the field takes the latest one; of records with the same time, the
//!   last in the pack. Units (`u`, `bu`), sums (`s`, `bs`) and update times (`ut`) are
//!   not used. A pack of a later SenML version than 10 (`bver`), or holding a field
//!   whose name ends in `_` (an extension a receiver must understand), a record with
//!   more than one value, a field of the wrong JSON type (`"v":"21"`) or a time beyond
//!   any range, is refused as a whole.
//!
//! An empty payload (or one of whitespace only) yields no value in any format: it is how
//! MQTT clears a retained message.
//!
//! # What a field accepts
//!
//! A field absent from a message keeps its last value; so does a field whose JSON value is
//! `null` (Zigbee2MQTT reports values it does not know as `null`). A value that is there
//! but cannot be read as the field's type is reported for that field alone; the other
//! fields of the message are still taken. "Text" below means a JSON string or, in a plain
//! payload, the payload; numbers in text are decimal (`21`, `-3.5`, `2.1e1`) with
//! surrounding whitespace ignored.
//!
//! | Field type  | Accepts |
//! |-------------|---------|
//! | `bool`      | `true`/`false`; the numbers 0 and 1; the text `true`/`false`, `on`/`off`, `yes`/`no`, `1`/`0` in any letter case (`ON`, `Off`) |
//! | `int`       | a whole number from −2,147,483,648 to 2,147,483,647, as a number or text (`21`, `21.0`, `"21"`, `2.1e1`) |
//! | `long`      | a whole number from −2^63 to 2^63−1, likewise |
//! | `double`    | any finite number, as a number or text; `NaN` and infinities are refused |
//! | `string`    | text as it is (a JSON string is not trimmed); a JSON number or boolean as its shortest JSON text (`21.50` gives `21.5`, `true`) |
//! | `enum`      | what `string` accepts, if it is exactly (letter case included) one of the field's labels |
//! | `timestamp` | an RFC 3339 time with `Z` or an offset (`2024-05-01T14:00:00+02:00`), or Unix seconds as a number or text (fractions allowed) |
//!
//! A whole-number field refuses a fraction (`21.5`) and a number beyond its range rather
//! than round or clip it. A whole number written as a fraction or with an exponent
//! (`21.0`, `2.1e1`) is accepted up to ±2^53 (9,007,199,254,740,992); beyond, such a
//! number is not exact and is refused as out of range: a large `long` is written in
//! digits. Times must fall within the years 1970 to 9999.
//!
//! # Message time
//!
//! A value is stamped with its time in the message (a SenML record's time, or a JSON
//! topic's timestamp), else with the message's arrival. A JSON topic's timestamp is found
//! by a pointer and is an RFC 3339 time, or a number (or numeric text) of Unix seconds or
//! milliseconds as configured. A message without it is stamped with its arrival; one
//! whose timestamp is there but unreadable is refused as a whole.
//!
//! # Commands
//!
//! A command is encoded by a [`Template`]: plain (the value as text: a double with the
//! field's decimals, a bool as `true`/`false`), or a JSON object holding the value at a
//! pointer, with an object made for every step of the pointer (`/a/b` gives
//! `{"a":{"b":21.5}}`; array indices are not made, `0` is a key like any other). In JSON,
//! numbers and booleans are JSON numbers and booleans (a double rounded to the field's
//! decimals), text and labels JSON strings, times RFC 3339 strings to the second. Where
//! a device wants its own words for on and off (`ON`/`OFF`), they replace `true` and
//! `false`, as text in both forms. [`same_value`] decides whether the device's echo of a
//! command confirms it.
//!
//! # Availability
//!
//! [`Availability`] reads a device's online/offline messages: the payload, trimmed,
//! compared exactly with the configured words, or, with a pointer, the JSON value there
//! (a string, or a boolean or number as its JSON text). With a pointer, a payload that
//! is not JSON is compared as plain text, so that Zigbee2MQTT's two availability forms,
//! `online` and `{"state":"online"}`, are both understood.
//!
//! Nothing here panics, whatever the payload; an error quotes at most 64 bytes of it.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fieldgate_api::{FieldSpec, FieldType, Value};
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::{Map, Number, Value as Json};

/// The most bytes of a payload an error message quotes.
const QUOTE_MAX: usize = 64;

/// The first second of year 10000, in Unix seconds: times are kept below it, where they
/// can still be written as RFC 3339.
const END_OF_TIME: u64 = 253_402_300_800;

/// The largest float up to which every whole number is exact (2^53).
const EXACT_FLOAT: f64 = 9_007_199_254_740_992.0;

/// SenML times below this (2^28 s, about 8.5 years) count from now (RFC 8428 §4.5.3).
const SENML_RELATIVE_BELOW: f64 = 268_435_456.0;

// ---------------------------------------------------------------------------------------
// JSON pointers

/// An RFC 6901 JSON pointer, checked and split into its reference tokens once, when the
/// configuration is read, so that a message is not spent on it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Pointer {
    text: String,
    tokens: Vec<Token>,
}

/// One reference token, unescaped, with its value as an array index where it is one.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Token {
    key: String,
    index: Option<usize>,
}

/// Why a text is not a JSON pointer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PointerError {
    /// A non-empty pointer must begin with `/`.
    #[error("a JSON pointer is empty or begins with '/'")]
    NoLeadingSlash,
    /// `~` not followed by `0` or `1`.
    #[error("'~' at byte {0} of the JSON pointer is not followed by 0 or 1")]
    BadEscape(usize),
}

impl Pointer {
    /// Checks and splits a pointer (`""`, `/temperature`, `/a~1b/0`).
    pub fn parse(text: &str) -> Result<Self, PointerError> {
        let mut tokens = Vec::new();
        if !text.is_empty() {
            let Some(rest) = text.strip_prefix('/') else {
                return Err(PointerError::NoLeadingSlash);
            };
            let mut offset = 1;
            for raw in rest.split('/') {
                let mut key = String::with_capacity(raw.len());
                let mut chars = raw.char_indices();
                while let Some((i, c)) = chars.next() {
                    if c == '~' {
                        match chars.next() {
                            Some((_, '0')) => key.push('~'),
                            Some((_, '1')) => key.push('/'),
                            _ => return Err(PointerError::BadEscape(offset + i)),
                        }
                    } else {
                        key.push(c);
                    }
                }
                tokens.push(Token {
                    index: array_index(&key),
                    key,
                });
                offset += raw.len() + 1;
            }
        }
        Ok(Pointer {
            text: text.to_owned(),
            tokens,
        })
    }

    /// The pointer to the whole document.
    pub fn root() -> Self {
        Pointer {
            text: String::new(),
            tokens: Vec::new(),
        }
    }

    /// The pointer as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether this is the pointer to the whole document.
    pub fn is_root(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The node the pointer refers to in a decoded message, if there is one.
    fn find<'a, 'de>(&self, doc: &'a Node<'de>) -> Option<&'a Node<'de>> {
        self.tokens.iter().try_fold(doc, |node, token| match node {
            // The last of duplicate keys, as serde_json keeps it.
            Node::Object(members) => members
                .iter()
                .rev()
                .find(|(key, _)| *key == token.key)
                .map(|(_, value)| value),
            Node::Array(items) => token.index.and_then(|i| items.get(i)),
            _ => None,
        })
    }

    /// Where this pointer is, for error messages.
    fn place(&self) -> String {
        if self.is_root() {
            "at the JSON root".to_owned()
        } else {
            format!("at {}", self.text)
        }
    }
}

/// A token's array index: RFC 6901 allows `0` or digits without a leading zero.
fn array_index(token: &str) -> Option<usize> {
    let digits = token.bytes().all(|b| b.is_ascii_digit());
    if !digits || token.is_empty() || (token.len() > 1 && token.starts_with('0')) {
        return None;
    }
    token.parse().ok()
}

impl FromStr for Pointer {
    type Err = PointerError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Pointer::parse(s)
    }
}

impl TryFrom<String> for Pointer {
    type Error = PointerError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        Pointer::parse(&s)
    }
}

impl fmt::Display for Pointer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

// ---------------------------------------------------------------------------------------
// Decoders

/// A topic's payload format; all fields fed by one topic share it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// The payload is the value, as UTF-8 text.
    Plain,
    /// A JSON document; fields are found by pointers.
    Json,
    /// A SenML JSON pack (RFC 8428); fields are found by record name.
    Senml,
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Plain => "plain",
            Format::Json => "JSON",
            Format::Senml => "SenML",
        })
    }
}

/// Where one field's value is in a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Locator {
    /// The whole payload: a plain payload, or the whole JSON document.
    Whole,
    /// JSON: the value at a pointer (the root pointer is the whole document).
    Pointer(Pointer),
    /// SenML: the record whose full name (`bn` + `n`) is this, or whose own `n` is.
    Senml(String),
}

impl Locator {
    /// Where this locator points, for error messages.
    fn place(&self) -> String {
        match self {
            Locator::Whole => "in the payload".to_owned(),
            Locator::Pointer(p) => p.place(),
            Locator::Senml(name) => format!("in SenML record {}", quoted(name)),
        }
    }

    /// What kind of locator this is, for error messages.
    fn what(&self) -> &'static str {
        match self {
            Locator::Whole => "the whole payload",
            Locator::Pointer(_) => "a JSON pointer",
            Locator::Senml(_) => "a SenML record name",
        }
    }

    /// Whether this locator can find a value in a payload of `format`.
    fn fits(&self, format: Format) -> bool {
        matches!(
            (self, format),
            (Locator::Whole, Format::Plain | Format::Json)
                | (Locator::Pointer(_), Format::Json)
                | (Locator::Senml(_), Format::Senml)
        )
    }
}

/// The unit of a number that is a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TimeUnit {
    /// Unix seconds, fractions allowed.
    #[default]
    Seconds,
    /// Unix milliseconds, fractions allowed.
    Millis,
}

/// Where a JSON topic's messages carry their time, and how: an RFC 3339 time, or a number
/// (or numeric text) in `unit`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimestampSpec {
    /// Where the time is.
    pub pointer: Pointer,
    /// The unit of a numeric time.
    pub unit: TimeUnit,
}

/// How one field is read from its topic's messages.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldDecoder {
    /// The field's type.
    pub kind: FieldType,
    /// Where its value is.
    pub locator: Locator,
    /// The labels of an enum field (unused for other types).
    pub labels: Vec<String>,
}

/// How a topic's messages are read: its format, where its messages carry their time, and
/// the fields it feeds.
#[derive(Debug, Clone, PartialEq)]
pub struct TopicDecoder {
    /// The payload format.
    pub format: Format,
    /// Where a JSON message carries its time, if it does.
    pub timestamp: Option<TimestampSpec>,
    /// The fields, found in every message; results refer to them by index.
    pub fields: Vec<FieldDecoder>,
}

/// What one message said.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Decoded {
    /// The values found: (index in [`TopicDecoder::fields`], value, time of the value), in
    /// the order of the fields.
    pub values: Vec<(usize, Value, SystemTime)>,
    /// The fields whose value was there but unreadable, and why.
    pub errors: Vec<(usize, DecodeError)>,
}

/// Why a topic's decoder cannot work as configured.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SetupError {
    /// A field's locator does not fit the topic's format.
    #[error("field {index}: {what} cannot locate a value in a {format} payload")]
    Locator {
        /// The field's index.
        index: usize,
        /// The locator's kind.
        what: &'static str,
        /// The topic's format.
        format: Format,
    },
    /// A SenML field names no record.
    #[error("field {index}: the SenML record name is empty")]
    EmptyName {
        /// The field's index.
        index: usize,
    },
    /// An enum field without labels.
    #[error("field {index}: an enum field needs labels")]
    NoLabels {
        /// The field's index.
        index: usize,
    },
    /// A timestamp pointer on a topic that is not JSON.
    #[error("a timestamp pointer needs the JSON format, not {0}")]
    Timestamp(Format),
}

impl TopicDecoder {
    /// Checks that every field can be found in the topic's format; meant for the
    /// configuration, so that a mistake is not reported with every message.
    pub fn validate(&self) -> Result<(), SetupError> {
        if self.timestamp.is_some() && self.format != Format::Json {
            return Err(SetupError::Timestamp(self.format));
        }
        for (index, field) in self.fields.iter().enumerate() {
            if !field.locator.fits(self.format) {
                return Err(SetupError::Locator {
                    index,
                    what: field.locator.what(),
                    format: self.format,
                });
            }
            if matches!(&field.locator, Locator::Senml(name) if name.is_empty()) {
                return Err(SetupError::EmptyName { index });
            }
            if field.kind == FieldType::Enum && field.labels.is_empty() {
                return Err(SetupError::NoLabels { index });
            }
        }
        Ok(())
    }

    /// Reads one message, received at `arrival`.
    ///
    /// `Err` when the payload as a whole is unusable: a plain payload that is not UTF-8,
    /// a JSON payload that is not JSON, a SenML payload that is not a pack, an unreadable
    /// timestamp. Otherwise the values found; a field absent from the message is neither
    /// a value nor an error, and a field whose value cannot be read is an error beside
    /// the others' values.
    pub fn decode(&self, payload: &[u8], arrival: SystemTime) -> Result<Decoded, DecodeError> {
        let mut out = Decoded {
            values: Vec::with_capacity(self.fields.len()),
            errors: Vec::new(),
        };
        if payload.trim_ascii().is_empty() {
            return Ok(out);
        }
        match self.format {
            Format::Plain => self.decode_plain(payload, arrival, &mut out)?,
            Format::Json => self.decode_json(payload, arrival, &mut out)?,
            Format::Senml => self.decode_senml(payload, arrival, &mut out)?,
        }
        Ok(out)
    }

    fn decode_plain(
        &self,
        payload: &[u8],
        arrival: SystemTime,
        out: &mut Decoded,
    ) -> Result<(), DecodeError> {
        let text = std::str::from_utf8(payload)
            .map_err(|e| DecodeError::NotUtf8 {
                offset: e.valid_up_to(),
            })?
            .trim_ascii();
        for (i, field) in self.fields.iter().enumerate() {
            match &field.locator {
                Locator::Whole => out.put(i, field.convert(Scalar::Text(text)), arrival),
                other => out.errors.push((i, misplaced(other, self.format))),
            }
        }
        Ok(())
    }

    fn decode_json(
        &self,
        payload: &[u8],
        arrival: SystemTime,
        out: &mut Decoded,
    ) -> Result<(), DecodeError> {
        let doc: Node = serde_json::from_slice(payload).map_err(json_error)?;
        let stamp = match &self.timestamp {
            Some(spec) => spec.read(&doc)?.unwrap_or(arrival),
            None => arrival,
        };
        for (i, field) in self.fields.iter().enumerate() {
            let found = match &field.locator {
                Locator::Whole => Some(&doc),
                Locator::Pointer(p) => p.find(&doc),
                other => {
                    out.errors.push((i, misplaced(other, self.format)));
                    continue;
                }
            };
            if let Some(scalar) = found.and_then(Scalar::of) {
                out.put(i, field.convert(scalar), stamp);
            }
        }
        Ok(())
    }

    fn decode_senml(
        &self,
        payload: &[u8],
        arrival: SystemTime,
        out: &mut Decoded,
    ) -> Result<(), DecodeError> {
        let senml::Pack(records) = serde_json::from_slice(payload).map_err(senml_error)?;
        let arrival_secs = arrival
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());

        let mut latest: Vec<Option<Candidate>> = vec![None; self.fields.len()];
        let mut bn = "";
        let mut bt = 0.0;
        let mut bv = None;
        for (index, record) in records.iter().enumerate() {
            if let Some(b) = &record.bn {
                bn = b;
            }
            if let Some(b) = record.bt {
                bt = b;
            }
            if let Some(b) = &record.bv {
                bv = Some(b);
            }
            if record.value.is_none() {
                continue;
            }
            let n = record.n.as_deref().unwrap_or("");
            let time = bt + record.t.unwrap_or(0.0);
            if !time.is_finite() {
                return Err(DecodeError::NotSenml {
                    reason: format!("record {index}: its time is not a finite number"),
                });
            }
            // Relative and absolute times compared on one scale.
            let order = if time < SENML_RELATIVE_BELOW {
                arrival_secs + time
            } else {
                time
            };
            for (slot, field) in latest.iter_mut().zip(&self.fields) {
                let Locator::Senml(name) = &field.locator else {
                    continue;
                };
                let own = record.n.is_some() && n == name;
                let full =
                    bn.len() + n.len() == name.len() && name.starts_with(bn) && name.ends_with(n);
                if !(own || full) {
                    continue;
                }
                // `>=`: of records with the same time, the last in the pack.
                if slot.is_none_or(|c| order >= c.order) {
                    *slot = Some(Candidate {
                        record,
                        time,
                        order,
                        bv,
                    });
                }
            }
        }

        for (i, (field, slot)) in self.fields.iter().zip(latest).enumerate() {
            if !field.locator.fits(Format::Senml) {
                out.errors.push((i, misplaced(&field.locator, self.format)));
                continue;
            }
            let Some(Candidate {
                record, time, bv, ..
            }) = slot
            else {
                continue;
            };
            let stamp = match senml_time(time, arrival) {
                Some(stamp) => stamp,
                None => {
                    out.errors.push((
                        i,
                        DecodeError::BadTime {
                            at: field.locator.place(),
                            reason: format!("record time {time} is before 1970 or after 9999"),
                        },
                    ));
                    continue;
                }
            };
            let sum;
            let scalar = match &record.value {
                Some(senml::RecordValue::Number(v)) => match bv {
                    None => Scalar::Num(v),
                    Some(base) => match add(base, v) {
                        Some(s) => {
                            sum = s;
                            Scalar::Num(&sum)
                        }
                        None => {
                            out.errors.push((
                                i,
                                DecodeError::NotFinite {
                                    at: field.locator.place(),
                                    value: format!("{base} + {v}"),
                                },
                            ));
                            continue;
                        }
                    },
                },
                Some(senml::RecordValue::Text(s) | senml::RecordValue::Data(s)) => Scalar::Text(s),
                Some(senml::RecordValue::Bool(b)) => Scalar::Bool(*b),
                None => continue,
            };
            out.put(i, field.convert(scalar), stamp);
        }
        Ok(())
    }
}

/// The latest record of a SenML field so far.
#[derive(Clone, Copy)]
struct Candidate<'r, 'de> {
    record: &'r senml::Record<'de>,
    /// Its resolved time (`bt` + `t`).
    time: f64,
    /// That time on the scale of absolute times, to compare relative and absolute ones.
    order: f64,
    /// The base value in force at the record.
    bv: Option<&'r Number>,
}

impl Decoded {
    fn put(&mut self, index: usize, value: Result<Value, DecodeError>, time: SystemTime) {
        match value {
            Ok(value) => self.values.push((index, value, time)),
            Err(e) => self.errors.push((index, e)),
        }
    }
}

/// The error of a field whose locator does not fit the topic's format (a configuration
/// mistake [`TopicDecoder::validate`] catches).
fn misplaced(locator: &Locator, format: Format) -> DecodeError {
    DecodeError::Locator {
        what: locator.what(),
        format,
    }
}

/// A SenML record's resolved time as a point in time: relative to `arrival` below 2^28,
/// else Unix seconds; `None` outside 1970–9999.
fn senml_time(time: f64, arrival: SystemTime) -> Option<SystemTime> {
    let stamp = if time < SENML_RELATIVE_BELOW {
        let offset = Duration::try_from_secs_f64(time.abs()).ok()?;
        if time < 0.0 {
            arrival.checked_sub(offset)?
        } else {
            arrival.checked_add(offset)?
        }
    } else {
        UNIX_EPOCH.checked_add(Duration::try_from_secs_f64(time).ok()?)?
    };
    in_range(stamp)
}

/// `base + v`, exact for whole numbers within i64; `None` if not finite.
fn add(base: &Number, v: &Number) -> Option<Number> {
    if let (Some(a), Some(b)) = (base.as_i64(), v.as_i64()) {
        if let Some(sum) = a.checked_add(b) {
            return Some(sum.into());
        }
    }
    Number::from_f64(base.as_f64()? + v.as_f64()?)
}

impl TimestampSpec {
    /// The message's time: `None` if it carries none, `Err` if it is unreadable.
    fn read(&self, doc: &Node) -> Result<Option<SystemTime>, DecodeError> {
        let bad = |reason: String| DecodeError::BadTime {
            at: self.pointer.place(),
            reason,
        };
        match self.pointer.find(doc) {
            None | Some(Node::Null) => Ok(None),
            Some(Node::Number(n)) => number_time(n, self.unit).map(Some).map_err(bad),
            Some(Node::String(s)) => text_time(s, self.unit).map(Some).map_err(bad),
            Some(other) => Err(bad(format!("expected a time, got {}", kind_of(other)))),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Messages as trees

/// A JSON message as the decoder reads it: `serde_json::Value`, but with strings and keys
/// borrowed from the payload where they hold no escapes, and objects as lists of members
/// (a message's objects are small: a search of a short list is cheaper than building a
/// map, and most messages are read once and dropped).
#[derive(Debug)]
enum Node<'de> {
    Null,
    Bool(bool),
    Number(Number),
    String(Cow<'de, str>),
    Array(Vec<Node<'de>>),
    Object(Vec<(Cow<'de, str>, Node<'de>)>),
}

impl<'de> Deserialize<'de> for Node<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct NodeVisitor;
        impl<'de> Visitor<'de> for NodeVisitor {
            type Value = Node<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Node<'de>, E> {
                Ok(Node::Null)
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Node<'de>, E> {
                Ok(Node::Bool(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Node<'de>, E> {
                Ok(Node::Number(v.into()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Node<'de>, E> {
                Ok(Node::Number(v.into()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Node<'de>, E> {
                // serde_json refuses numbers beyond f64 itself; this is for other sources.
                Number::from_f64(v)
                    .map(Node::Number)
                    .ok_or_else(|| E::custom("a number is not finite"))
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Node<'de>, E> {
                Ok(Node::String(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Node<'de>, E> {
                Ok(Node::String(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Node<'de>, E> {
                Ok(Node::String(Cow::Owned(v)))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node<'de>, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(Node::Array(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node<'de>, A::Error> {
                let mut members = Vec::new();
                while let Some(Text(key)) = map.next_key()? {
                    members.push((key, map.next_value()?));
                }
                Ok(Node::Object(members))
            }
        }
        // serde_json bounds the nesting (128 levels) before a visitor recurses.
        d.deserialize_any(NodeVisitor)
    }
}

/// A string borrowed from the payload where it has no escapes.
struct Text<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Text<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct TextVisitor;
        impl<'de> Visitor<'de> for TextVisitor {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(v)))
            }
        }
        d.deserialize_str(TextVisitor)
    }
}

// ---------------------------------------------------------------------------------------
// Values

/// A value found in a message, before it is read as a field's type.
#[derive(Debug, Clone, Copy)]
enum Scalar<'a> {
    Bool(bool),
    Num(&'a Number),
    Text(&'a str),
    /// An object or an array (named), which no field type accepts.
    Composite(&'static str),
}

impl<'a> Scalar<'a> {
    /// `None` for JSON null, which counts as absent.
    fn of(node: &'a Node) -> Option<Self> {
        Some(match node {
            Node::Null => return None,
            Node::Bool(b) => Scalar::Bool(*b),
            Node::Number(n) => Scalar::Num(n),
            Node::String(s) => Scalar::Text(s),
            Node::Array(_) => Scalar::Composite("an array"),
            Node::Object(_) => Scalar::Composite("an object"),
        })
    }

    /// The scalar described for an error message, quoting at most [`QUOTE_MAX`] bytes.
    fn describe(self) -> String {
        match self {
            Scalar::Bool(b) => format!("{b}"),
            Scalar::Num(n) => format!("the number {n}"),
            Scalar::Text(s) => format!("the text {}", quoted(s)),
            Scalar::Composite(what) => what.to_owned(),
        }
    }

    /// The value alone, as an error message shows it (`21.5`, `"warm"`).
    fn shown(self) -> String {
        match self {
            Scalar::Num(n) => n.to_string(),
            Scalar::Text(s) => quoted(s.trim_ascii()),
            other => other.describe(),
        }
    }

    /// The text of a string-like scalar: text as is, numbers and booleans as JSON writes
    /// them.
    fn text(self) -> Option<Cow<'a, str>> {
        match self {
            Scalar::Text(s) => Some(Cow::Borrowed(s)),
            Scalar::Num(n) => Some(Cow::Owned(n.to_string())),
            Scalar::Bool(b) => Some(Cow::Borrowed(if b { "true" } else { "false" })),
            Scalar::Composite(_) => None,
        }
    }
}

/// Why a found value does not fit its field (the place is added by the caller).
enum Misfit {
    WrongType(&'static str),
    NotWhole(String),
    OutOfRange(String),
    NotFinite(String),
    NotALabel(String),
    BadTime(String),
}

impl FieldDecoder {
    /// Reads a found value as this field's type, by the rules of the module documentation.
    fn convert(&self, found: Scalar) -> Result<Value, DecodeError> {
        self.convert_inner(found).map_err(|misfit| {
            let at = self.locator.place();
            let kind = self.kind;
            match misfit {
                Misfit::WrongType(expected) => DecodeError::WrongType {
                    at,
                    expected,
                    got: found.describe(),
                },
                Misfit::NotWhole(value) => DecodeError::NotWhole { at, value, kind },
                Misfit::OutOfRange(value) => DecodeError::OutOfRange { at, value, kind },
                Misfit::NotFinite(value) => DecodeError::NotFinite { at, value },
                Misfit::NotALabel(value) => DecodeError::NotALabel {
                    at,
                    value,
                    labels: self.labels.join(", "),
                },
                Misfit::BadTime(reason) => DecodeError::BadTime { at, reason },
            }
        })
    }

    fn convert_inner(&self, found: Scalar) -> Result<Value, Misfit> {
        match self.kind {
            FieldType::Bool => boolean(found).map(Value::Bool),
            FieldType::Int => whole(found, i32::MIN.into(), i32::MAX.into())
                .and_then(|v| i32::try_from(v).map_err(|_| Misfit::OutOfRange(v.to_string())))
                .map(Value::Int),
            FieldType::Long => whole(found, i64::MIN, i64::MAX).map(Value::Long),
            FieldType::Double => double(found).map(Value::Double),
            FieldType::String => found
                .text()
                .map(|t| Value::String(t.into_owned()))
                .ok_or(Misfit::WrongType("text")),
            FieldType::Enum => {
                let text = found.text().ok_or(Misfit::WrongType("a label"))?;
                match self.labels.iter().find(|l| **l == *text) {
                    Some(label) => Ok(Value::Enum(label.clone())),
                    None => Err(Misfit::NotALabel(quoted(&text))),
                }
            }
            FieldType::Timestamp => match found {
                Scalar::Num(n) => number_time(n, TimeUnit::Seconds),
                Scalar::Text(s) => text_time(s, TimeUnit::Seconds),
                _ => return Err(Misfit::WrongType("a time")),
            }
            .map(Value::Timestamp)
            .map_err(Misfit::BadTime),
        }
    }
}

fn boolean(found: Scalar) -> Result<bool, Misfit> {
    const TRUE: [&str; 4] = ["true", "on", "yes", "1"];
    const FALSE: [&str; 4] = ["false", "off", "no", "0"];
    let wrong = Misfit::WrongType("a boolean");
    match found {
        Scalar::Bool(b) => Ok(b),
        Scalar::Num(n) => match n.as_f64() {
            Some(0.0) => Ok(false),
            Some(1.0) => Ok(true),
            _ => Err(wrong),
        },
        Scalar::Text(s) => {
            let s = s.trim_ascii();
            if TRUE.iter().any(|w| s.eq_ignore_ascii_case(w)) {
                Ok(true)
            } else if FALSE.iter().any(|w| s.eq_ignore_ascii_case(w)) {
                Ok(false)
            } else {
                Err(wrong)
            }
        }
        Scalar::Composite(_) => Err(wrong),
    }
}

/// A whole number within `min..=max`, from a JSON number or numeric text.
fn whole(found: Scalar, min: i64, max: i64) -> Result<i64, Misfit> {
    let within = |v: i128, shown: &dyn Fn() -> String| {
        if (i128::from(min)..=i128::from(max)).contains(&v) {
            // In range of an i64 by the check.
            i64::try_from(v).map_err(|_| Misfit::OutOfRange(shown()))
        } else {
            Err(Misfit::OutOfRange(shown()))
        }
    };
    let from_float = |v: f64, shown: &dyn Fn() -> String| {
        if !v.is_finite() {
            Err(Misfit::NotFinite(shown()))
        } else if v.fract() != 0.0 {
            Err(Misfit::NotWhole(shown()))
        } else if v.abs() > EXACT_FLOAT {
            // Beyond 2^53 a float is not exact: -9223372036854775809 would read as i64::MIN.
            Err(Misfit::OutOfRange(shown()))
        } else {
            within(v as i128, shown)
        }
    };
    let shown = || found.shown();
    match found {
        Scalar::Num(n) => {
            if let Some(v) = n.as_i64() {
                within(v.into(), &shown)
            } else if let Some(v) = n.as_u64() {
                within(v.into(), &shown)
            } else {
                from_float(n.as_f64().unwrap_or(f64::NAN), &shown)
            }
        }
        Scalar::Text(s) => {
            let s = s.trim_ascii();
            if let Ok(v) = s.parse::<i128>() {
                within(v, &shown)
            } else if let Ok(v) = s.parse::<f64>() {
                from_float(v, &shown)
            } else {
                Err(Misfit::WrongType("a whole number"))
            }
        }
        _ => Err(Misfit::WrongType("a whole number")),
    }
}

fn double(found: Scalar) -> Result<f64, Misfit> {
    let v = match found {
        Scalar::Num(n) => n.as_f64(),
        Scalar::Text(s) => s.trim_ascii().parse::<f64>().ok(),
        _ => None,
    };
    match v {
        Some(v) if v.is_finite() => Ok(v),
        Some(_) => Err(Misfit::NotFinite(found.shown())),
        None => Err(Misfit::WrongType("a number")),
    }
}

// ---------------------------------------------------------------------------------------
// Times

/// `t` if it lies within the years 1970 to 9999 (what RFC 3339 and the gateway's
/// formatting can write).
fn in_range(t: SystemTime) -> Option<SystemTime> {
    let since = t.duration_since(UNIX_EPOCH).ok()?;
    (since.as_secs() < END_OF_TIME).then_some(t)
}

/// A JSON number as a Unix time in `unit`; whole numbers exactly.
fn number_time(n: &Number, unit: TimeUnit) -> Result<SystemTime, String> {
    let out_of_range = || format!("{n} is before 1970 or after 9999");
    let since = if let Some(v) = n.as_u64() {
        Some(match unit {
            TimeUnit::Seconds => Duration::from_secs(v),
            TimeUnit::Millis => Duration::from_millis(v),
        })
    } else {
        float_duration(n.as_f64().unwrap_or(f64::NAN), unit)
    };
    since
        .and_then(|d| UNIX_EPOCH.checked_add(d))
        .and_then(in_range)
        .ok_or_else(out_of_range)
}

fn float_duration(v: f64, unit: TimeUnit) -> Option<Duration> {
    let secs = match unit {
        TimeUnit::Seconds => v,
        TimeUnit::Millis => v / 1000.0,
    };
    // Refuses negative, NaN and overflowing values.
    Duration::try_from_secs_f64(secs).ok()
}

/// A time as text: a number in `unit`, else RFC 3339.
fn text_time(s: &str, unit: TimeUnit) -> Result<SystemTime, String> {
    let trimmed = s.trim_ascii();
    if let Ok(n) = trimmed.parse::<Number>() {
        return number_time(&n, unit)
            .map_err(|_| format!("{} is before 1970 or after 9999", quoted(s)));
    }
    parse_rfc3339(trimmed).map_err(|why| format!("{} {why}", quoted(s)))
}

/// Parses an RFC 3339 time with `Z` or a numeric offset. humantime reads only UTC times:
/// the offset is taken off here, and applied to its result.
fn parse_rfc3339(s: &str) -> Result<SystemTime, &'static str> {
    // The longest sensible form, with nanoseconds and an offset, is 35 bytes.
    const MAX: usize = 40;
    let b = s.as_bytes();
    if b.len() > MAX || b.len() < 20 {
        return Err("is not an RFC 3339 time");
    }
    let mut buf = [0u8; MAX];
    buf[..b.len()].copy_from_slice(b);
    let mut len = b.len();
    // RFC 3339 allows lowercase separators; humantime does not.
    if buf[10] == b't' {
        buf[10] = b'T';
    }
    let offset: i64 = match buf[len - 1] {
        b'Z' | b'z' => {
            buf[len - 1] = b'Z';
            0
        }
        _ => {
            let tail = &buf[len - 6..len];
            let sign = match tail[0] {
                b'+' => 1,
                b'-' => -1,
                _ => return Err("has no time zone (Z or ±hh:mm)"),
            };
            let digits = [tail[1], tail[2], tail[4], tail[5]];
            if tail[3] != b':' || !digits.iter().all(u8::is_ascii_digit) {
                return Err("has no time zone (Z or ±hh:mm)");
            }
            let [h1, h2, m1, m2] = digits.map(|d| i64::from(d - b'0'));
            let (hours, minutes) = (h1 * 10 + h2, m1 * 10 + m2);
            if hours > 23 || minutes > 59 {
                return Err("has an offset out of range");
            }
            buf[len - 6] = b'Z';
            len -= 5;
            sign * (hours * 3600 + minutes * 60)
        }
    };
    let utc = std::str::from_utf8(&buf[..len]).map_err(|_| "is not an RFC 3339 time")?;
    let local = humantime::parse_rfc3339(utc).map_err(|e| match e {
        humantime::TimestampError::OutOfRange => "is before 1970 or after 9999",
        _ => "is not an RFC 3339 time",
    })?;
    let shift = Duration::from_secs(offset.unsigned_abs());
    // Local time = UTC + offset.
    let t = if offset >= 0 {
        local.checked_sub(shift)
    } else {
        local.checked_add(shift)
    };
    t.and_then(in_range).ok_or("is before 1970 or after 9999")
}

// ---------------------------------------------------------------------------------------
// Errors

/// Why a message, or one field's value in it, could not be read.
///
/// `at` texts say where the value was (`at /temperature`, `in SenML record "temp"`,
/// `in the payload`); quoted payload content is cut to 64 bytes and escaped.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    /// A plain payload that is not UTF-8.
    #[error("payload is not UTF-8 (invalid byte at offset {offset})")]
    NotUtf8 {
        /// Where the first invalid byte is.
        offset: usize,
    },
    /// A payload that is not JSON.
    #[error("not valid JSON at line {line} column {column}: {reason}")]
    NotJson {
        /// Line of the error, from 1.
        line: usize,
        /// Column of the error, from 1.
        column: usize,
        /// What is wrong there.
        reason: String,
    },
    /// JSON that is not a SenML pack.
    #[error("not a SenML pack: {reason}")]
    NotSenml {
        /// What is wrong.
        reason: String,
    },
    /// A value of the wrong JSON type (or text that is not what the field needs).
    #[error("expected {expected} {at}, got {got}")]
    WrongType {
        /// Where the value was.
        at: String,
        /// What the field accepts.
        expected: &'static str,
        /// What was there.
        got: String,
    },
    /// A fraction for a whole-number field.
    #[error("value {value} {at} is not a whole number, as {} field needs", article(*.kind))]
    NotWhole {
        /// Where the value was.
        at: String,
        /// The value.
        value: String,
        /// The field's type.
        kind: FieldType,
    },
    /// A number beyond the field type's range.
    #[error("value {value} {at} is out of range for {} field", article(*.kind))]
    OutOfRange {
        /// Where the value was.
        at: String,
        /// The value.
        value: String,
        /// The field's type.
        kind: FieldType,
    },
    /// NaN or an infinity.
    #[error("value {value} {at} is not a finite number")]
    NotFinite {
        /// Where the value was.
        at: String,
        /// The value.
        value: String,
    },
    /// Text that is none of an enum field's labels.
    #[error("{value} {at} is not one of the labels {labels}")]
    NotALabel {
        /// Where the value was.
        at: String,
        /// The text, quoted.
        value: String,
        /// The labels, comma-separated.
        labels: String,
    },
    /// A time that cannot be read or lies outside 1970–9999.
    #[error("unreadable time {at}: {reason}")]
    BadTime {
        /// Where the time was.
        at: String,
        /// Why it cannot be read.
        reason: String,
    },
    /// A field's locator does not fit the topic's format (a configuration mistake).
    #[error("{what} cannot locate a value in a {format} payload")]
    Locator {
        /// The locator's kind.
        what: &'static str,
        /// The topic's format.
        format: Format,
    },
}

/// "an int", "a double": a field type with its article.
fn article(kind: FieldType) -> &'static str {
    match kind {
        FieldType::Bool => "a bool",
        FieldType::Int => "an int",
        FieldType::Long => "a long",
        FieldType::Double => "a double",
        FieldType::String => "a string",
        FieldType::Enum => "an enum",
        FieldType::Timestamp => "a timestamp",
    }
}

fn kind_of(node: &Node) -> &'static str {
    match node {
        Node::Null => "null",
        Node::Bool(_) => "a boolean",
        Node::Number(_) => "a number",
        Node::String(_) => "a string",
        Node::Array(_) => "an array",
        Node::Object(_) => "an object",
    }
}

/// At most [`QUOTE_MAX`] bytes of untrusted text, quoted, with control and invisible
/// characters escaped, and `…` when cut.
fn quoted(s: &str) -> String {
    let cut = floor_char_boundary(s, QUOTE_MAX);
    let mut out = format!("{:?}", &s[..cut]);
    if cut < s.len() {
        out.push('…');
    }
    out
}

/// `s` cut to at most `max` bytes, at a character boundary, with `…` when cut.
fn bounded(s: &str, max: usize) -> String {
    let cut = floor_char_boundary(s, max);
    let mut out = s[..cut].to_owned();
    if cut < s.len() {
        out.push('…');
    }
    out
}

fn floor_char_boundary(s: &str, max: usize) -> usize {
    let mut cut = s.len().min(max);
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    cut
}

/// A serde_json error as the reason, without the position serde_json appends.
fn json_reason(e: &serde_json::Error) -> String {
    let text = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    // serde_json's own texts are short; a message quoting the payload (an invalid type's
    // string) is cut.
    bounded(text.strip_suffix(&suffix).unwrap_or(&text), QUOTE_MAX + 32)
}

fn json_error(e: serde_json::Error) -> DecodeError {
    DecodeError::NotJson {
        line: e.line(),
        column: e.column(),
        reason: json_reason(&e),
    }
}

/// JSON syntax errors are "not JSON"; JSON that is not a pack is "not SenML".
fn senml_error(e: serde_json::Error) -> DecodeError {
    match e.classify() {
        serde_json::error::Category::Data => DecodeError::NotSenml {
            reason: format!(
                "{} at line {} column {}",
                json_reason(&e),
                e.line(),
                e.column()
            ),
        },
        _ => json_error(e),
    }
}

// ---------------------------------------------------------------------------------------
// SenML

/// SenML records, read straight from the payload: names borrowed where they need no
/// unescaping, unknown fields skipped without being built.
mod senml {
    use std::borrow::Cow;
    use std::fmt;

    use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
    use serde::Deserialize;
    use serde_json::Number;

    use super::Text;

    /// The highest SenML version understood (RFC 8428's).
    const VERSION: u64 = 10;

    /// A SenML pack: its records in order.
    pub(super) struct Pack<'de>(pub(super) Vec<Record<'de>>);

    /// The fields of one record the decoder uses.
    #[derive(Default)]
    pub(super) struct Record<'de> {
        pub(super) bn: Option<Cow<'de, str>>,
        pub(super) bt: Option<f64>,
        pub(super) bv: Option<Number>,
        pub(super) n: Option<Cow<'de, str>>,
        pub(super) t: Option<f64>,
        pub(super) value: Option<RecordValue<'de>>,
    }

    /// A record's value, by the field it came in.
    pub(super) enum RecordValue<'de> {
        /// `v`.
        Number(Number),
        /// `vs`.
        Text(Cow<'de, str>),
        /// `vb`.
        Bool(bool),
        /// `vd`, base64 text.
        Data(Cow<'de, str>),
    }

    /// A record's key.
    enum Key {
        Bn,
        Bt,
        Bv,
        Bver,
        N,
        T,
        V,
        Vs,
        Vb,
        Vd,
        /// A known field the decoder does not use, or an optional extension.
        Ignored,
        /// An extension that must be understood (its name ends in `_`), quoted.
        Mandatory(String),
    }

    impl<'de> Deserialize<'de> for Key {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct KeyVisitor;
            impl Visitor<'_> for KeyVisitor {
                type Value = Key;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("a SenML field name")
                }
                fn visit_str<E: de::Error>(self, key: &str) -> Result<Key, E> {
                    Ok(match key {
                        "bn" => Key::Bn,
                        "bt" => Key::Bt,
                        "bv" => Key::Bv,
                        "bver" => Key::Bver,
                        "n" => Key::N,
                        "t" => Key::T,
                        "v" => Key::V,
                        "vs" => Key::Vs,
                        "vb" => Key::Vb,
                        "vd" => Key::Vd,
                        k if k.ends_with('_') => Key::Mandatory(super::quoted(k)),
                        _ => Key::Ignored,
                    })
                }
            }
            d.deserialize_str(KeyVisitor)
        }
    }

    /// Sets a field met once at most.
    fn once<T, E: de::Error>(slot: &mut Option<T>, value: T, name: &'static str) -> Result<(), E> {
        if slot.is_some() {
            return Err(E::duplicate_field(name));
        }
        *slot = Some(value);
        Ok(())
    }

    impl<'de> Deserialize<'de> for Record<'de> {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct RecordVisitor;
            impl<'de> Visitor<'de> for RecordVisitor {
                type Value = Record<'de>;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("a SenML record (an object)")
                }
                fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Record<'de>, A::Error> {
                    let mut r = Record::default();
                    let mut values = 0;
                    while let Some(key) = map.next_key::<Key>()? {
                        let value = match key {
                            Key::Bn => {
                                once(&mut r.bn, map.next_value::<Text>()?.0, "bn")?;
                                continue;
                            }
                            Key::Bt => {
                                once(&mut r.bt, map.next_value()?, "bt")?;
                                continue;
                            }
                            Key::Bv => {
                                once(&mut r.bv, map.next_value()?, "bv")?;
                                continue;
                            }
                            Key::N => {
                                once(&mut r.n, map.next_value::<Text>()?.0, "n")?;
                                continue;
                            }
                            Key::T => {
                                once(&mut r.t, map.next_value()?, "t")?;
                                continue;
                            }
                            Key::Bver => {
                                let version: u64 = map.next_value()?;
                                if version > VERSION {
                                    return Err(de::Error::custom(format_args!(
                                        "SenML version {version} is not supported (only {VERSION})"
                                    )));
                                }
                                continue;
                            }
                            Key::Ignored => {
                                map.next_value::<IgnoredAny>()?;
                                continue;
                            }
                            Key::Mandatory(name) => {
                                return Err(de::Error::custom(format_args!(
                                    "unsupported mandatory field {name}"
                                )));
                            }
                            Key::V => RecordValue::Number(map.next_value()?),
                            Key::Vs => RecordValue::Text(map.next_value::<Text>()?.0),
                            Key::Vb => RecordValue::Bool(map.next_value()?),
                            Key::Vd => RecordValue::Data(map.next_value::<Text>()?.0),
                        };
                        values += 1;
                        if values > 1 {
                            return Err(de::Error::custom("a record has more than one value"));
                        }
                        r.value = Some(value);
                    }
                    Ok(r)
                }
            }
            d.deserialize_map(RecordVisitor)
        }
    }

    impl<'de> Deserialize<'de> for Pack<'de> {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct PackVisitor;
            impl<'de> Visitor<'de> for PackVisitor {
                type Value = Pack<'de>;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("a SenML pack (an array of records)")
                }
                fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Pack<'de>, A::Error> {
                    let mut records = Vec::new();
                    while let Some(record) = seq.next_element()? {
                        records.push(record);
                    }
                    Ok(Pack(records))
                }
            }
            d.deserialize_seq(PackVisitor)
        }
    }
}

// ---------------------------------------------------------------------------------------
// Availability

/// How a device says it is online or offline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Availability {
    /// Where a JSON payload holds the word; `None` for a plain payload.
    pub pointer: Option<Pointer>,
    /// The word for online.
    pub online: String,
    /// The word for offline.
    pub offline: String,
}

impl Availability {
    /// `Some(true)` for online, `Some(false)` for offline, `None` for anything else.
    pub fn decode(&self, payload: &[u8]) -> Option<bool> {
        let json;
        let word: Cow<[u8]> = match &self.pointer {
            None => Cow::Borrowed(payload.trim_ascii()),
            Some(pointer) => match serde_json::from_slice::<Node>(payload) {
                Ok(doc) => {
                    json = doc;
                    match pointer.find(&json)? {
                        Node::String(s) => Cow::Borrowed(s.as_bytes()),
                        Node::Bool(true) => Cow::Borrowed(b"true"),
                        Node::Bool(false) => Cow::Borrowed(b"false"),
                        Node::Number(n) => Cow::Owned(n.to_string().into_bytes()),
                        _ => return None,
                    }
                }
                // Zigbee2MQTT's legacy form, a bare word, beside its JSON form.
                Err(_) => Cow::Borrowed(payload.trim_ascii()),
            },
        };
        if *word == *self.online.as_bytes() {
            Some(true)
        } else if *word == *self.offline.as_bytes() {
            Some(false)
        } else {
            None
        }
    }
}

// ---------------------------------------------------------------------------------------
// Commands

/// How a command's value is written into a payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Template {
    /// The value as text.
    Plain,
    /// A JSON object holding the value at the pointer (the root pointer: the value alone).
    Json {
        /// Where the value goes.
        pointer: Pointer,
    },
}

/// Why a value cannot be encoded for its field.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EncodeError {
    /// A value of another type than the field's.
    #[error("{value} value cannot be written to {} field", article(*.kind))]
    WrongType {
        /// The value's type.
        value: &'static str,
        /// The field's type.
        kind: FieldType,
    },
    /// A long too large for an int field.
    #[error("value {value} is out of range for {} field", article(*.kind))]
    OutOfRange {
        /// The value.
        value: String,
        /// The field's type.
        kind: FieldType,
    },
    /// NaN or an infinity.
    #[error("value {0} is not a finite number")]
    NotFinite(f64),
    /// A label that is not one of the field's.
    #[error("{value} is not one of the labels {labels}")]
    NotALabel {
        /// The label, quoted.
        value: String,
        /// The field's labels, comma-separated.
        labels: String,
    },
    /// A time outside 1970–9999.
    #[error("the time is before 1970 or after 9999")]
    TimeOutOfRange,
}

/// A value checked against its field, in the form it is written.
enum Out<'a> {
    Bool(bool),
    Whole(i64),
    Double(f64),
    Text(&'a str),
    Time(SystemTime),
}

fn value_type(value: &Value) -> &'static str {
    match value {
        Value::Bool(_) => "a bool",
        Value::Int(_) => "an int",
        Value::Long(_) => "a long",
        Value::Double(_) => "a double",
        Value::String(_) => "a string",
        Value::Enum(_) => "an enum",
        Value::Timestamp(_) => "a timestamp",
    }
}

fn checked<'a>(spec: &FieldSpec, value: &'a Value) -> Result<Out<'a>, EncodeError> {
    Ok(match (spec.kind, value) {
        (FieldType::Bool, Value::Bool(b)) => Out::Bool(*b),
        (FieldType::Int, Value::Int(v)) => Out::Whole((*v).into()),
        (FieldType::Int, Value::Long(v)) => match i32::try_from(*v) {
            Ok(v) => Out::Whole(v.into()),
            Err(_) => {
                return Err(EncodeError::OutOfRange {
                    value: v.to_string(),
                    kind: spec.kind,
                })
            }
        },
        (FieldType::Long, Value::Int(v)) => Out::Whole((*v).into()),
        (FieldType::Long, Value::Long(v)) => Out::Whole(*v),
        (FieldType::Double, Value::Int(_) | Value::Long(_) | Value::Double(_)) => {
            let v = value.as_f64().unwrap_or(f64::NAN);
            if !v.is_finite() {
                return Err(EncodeError::NotFinite(v));
            }
            Out::Double(v)
        }
        (FieldType::String, Value::String(s) | Value::Enum(s)) => Out::Text(s),
        (FieldType::Enum, Value::String(s) | Value::Enum(s)) => {
            if !spec.values.is_empty() && !spec.values.contains(s) {
                return Err(EncodeError::NotALabel {
                    value: quoted(s),
                    labels: spec.values.join(", "),
                });
            }
            Out::Text(s)
        }
        (FieldType::Timestamp, Value::Timestamp(t)) => {
            Out::Time(in_range(*t).ok_or(EncodeError::TimeOutOfRange)?)
        }
        _ => {
            return Err(EncodeError::WrongType {
                value: value_type(value),
                kind: spec.kind,
            })
        }
    })
}

/// Encodes a command's value for the field `spec` by `template`; `bools` are the
/// device's words for on and off, if it has its own.
pub fn encode(
    template: &Template,
    spec: &FieldSpec,
    value: &Value,
    bools: Option<(&str, &str)>,
) -> Result<Vec<u8>, EncodeError> {
    let out = checked(spec, value)?;
    let word = |b: bool| match bools {
        Some((on, off)) => Some(if b { on } else { off }),
        None => None,
    };
    match template {
        Template::Plain => Ok(match out {
            Out::Bool(b) => word(b)
                .unwrap_or(if b { "true" } else { "false" })
                .as_bytes()
                .to_vec(),
            Out::Whole(v) => v.to_string().into_bytes(),
            Out::Double(v) => Value::Double(v).display_with(spec.decimals).into_bytes(),
            Out::Text(s) => s.as_bytes().to_vec(),
            Out::Time(t) => humantime::format_rfc3339_seconds(t)
                .to_string()
                .into_bytes(),
        }),
        Template::Json { pointer } => {
            let mut doc = match out {
                Out::Bool(b) => match word(b) {
                    Some(w) => Json::String(w.to_owned()),
                    None => Json::Bool(b),
                },
                Out::Whole(v) => Json::Number(v.into()),
                Out::Double(v) => {
                    // Rounded as the field writes it: 21.456 with one decimal is 21.5.
                    let v = match spec.decimals {
                        Some(d) => format!("{:.*}", usize::from(d), v).parse().unwrap_or(v),
                        None => v,
                    };
                    Json::Number(Number::from_f64(v).ok_or(EncodeError::NotFinite(v))?)
                }
                Out::Text(s) => Json::String(s.to_owned()),
                Out::Time(t) => Json::String(humantime::format_rfc3339_seconds(t).to_string()),
            };
            for token in pointer.tokens.iter().rev() {
                let mut object = Map::new();
                object.insert(token.key.clone(), doc);
                doc = Json::Object(object);
            }
            Ok(doc.to_string().into_bytes())
        }
    }
}

/// Whether a device's echo confirms a written value: numbers compared as numbers (an int
/// echo confirms a double written), a double within half a unit of the field's last
/// decimal (or, without decimals, within a relative 10⁻⁹); text and labels exactly (a
/// string confirms an enum of the same label); times to the second, as they are written;
/// booleans exactly.
pub fn same_value(spec: &FieldSpec, written: &Value, echoed: &Value) -> bool {
    use Value::{Bool, Double, Enum, Int, Long, String, Timestamp};
    match (written, echoed) {
        (Int(_) | Long(_), Int(_) | Long(_)) => whole_of(written) == whole_of(echoed),
        (Int(_) | Long(_) | Double(_), Int(_) | Long(_) | Double(_)) => {
            let (Some(a), Some(b)) = (written.as_f64(), echoed.as_f64()) else {
                return false;
            };
            close(a, b, spec.decimals)
        }
        (String(a) | Enum(a), String(b) | Enum(b)) => a == b,
        (Bool(a), Bool(b)) => a == b,
        (Timestamp(a), Timestamp(b)) => {
            match (a.duration_since(UNIX_EPOCH), b.duration_since(UNIX_EPOCH)) {
                (Ok(a), Ok(b)) => a.as_secs() == b.as_secs(),
                _ => a == b,
            }
        }
        _ => false,
    }
}

fn whole_of(v: &Value) -> Option<i64> {
    match v {
        Value::Int(v) => Some((*v).into()),
        Value::Long(v) => Some(*v),
        _ => None,
    }
}

fn close(a: f64, b: f64, decimals: Option<u8>) -> bool {
    if !a.is_finite() || !b.is_finite() {
        return false;
    }
    let scale = a.abs().max(b.abs());
    let diff = (a - b).abs();
    match decimals {
        Some(d) => {
            let half = 0.5 * 10f64.powi(-i32::from(d));
            // Slack for the error of the subtraction itself: 21.55 - 21.5 is a hair above
            // 0.05 in binary.
            diff <= half * (1.0 + 1e-9) + 4.0 * f64::EPSILON * scale
        }
        None => diff <= 1e-9 * scale,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    /// An arrival time for the tests: 2024-05-01T12:00:00Z.
    const NOW: u64 = 1_714_564_800;

    fn ptr(p: &str) -> Pointer {
        Pointer::parse(p).unwrap()
    }

    fn field(kind: FieldType, locator: Locator) -> FieldDecoder {
        FieldDecoder {
            kind,
            locator,
            labels: Vec::new(),
        }
    }

    fn json_field(kind: FieldType, pointer: &str) -> FieldDecoder {
        field(kind, Locator::Pointer(ptr(pointer)))
    }

    fn senml_field(kind: FieldType, name: &str) -> FieldDecoder {
        field(kind, Locator::Senml(name.into()))
    }

    fn topic(format: Format, fields: Vec<FieldDecoder>) -> TopicDecoder {
        TopicDecoder {
            format,
            timestamp: None,
            fields,
        }
    }

    /// Decodes one plain payload for one field of `kind`.
    fn plain(kind: FieldType, payload: &[u8]) -> Result<Value, DecodeError> {
        let t = topic(Format::Plain, vec![field(kind, Locator::Whole)]);
        one(t.decode(payload, at(NOW)).unwrap())
    }

    /// Decodes `{"x": <json>}` for one field of `kind` at `/x`.
    fn json(kind: FieldType, value: &str) -> Result<Value, DecodeError> {
        let t = topic(Format::Json, vec![json_field(kind, "/x")]);
        one(t
            .decode(format!(r#"{{"x":{value}}}"#).as_bytes(), at(NOW))
            .unwrap())
    }

    /// The one result of a one-field decode.
    fn one(d: Decoded) -> Result<Value, DecodeError> {
        match (d.values.as_slice(), d.errors.as_slice()) {
            ([(0, v, _)], []) => Ok(v.clone()),
            ([], [(0, e)]) => Err(e.clone()),
            other => panic!("expected one result, got {other:?}"),
        }
    }

    // -- pointers ------------------------------------------------------------------------

    /// A found node as text, for comparisons.
    fn show(node: Option<&Node>) -> Option<String> {
        node.map(|n| match n {
            Node::Null => "null".to_owned(),
            Node::Bool(b) => b.to_string(),
            Node::Number(n) => n.to_string(),
            Node::String(s) => format!("{s:?}"),
            Node::Array(items) => format!("[{}]", items.len()),
            Node::Object(members) => format!("{{{}}}", members.len()),
        })
    }

    #[test]
    fn pointers_follow_rfc_6901() {
        let doc: Node = serde_json::from_str(
            r#"{"foo":["bar","baz"],"":0,"a/b":1,"m~n":8," ":7,"x":{"y":{"z":3}},"01":9}"#,
        )
        .unwrap();
        let get = |p: &str| show(ptr(p).find(&doc));
        let some = |s: &str| Some(s.to_owned());
        assert_eq!(get(""), some("{7}"));
        assert_eq!(get("/foo"), some("[2]"));
        assert_eq!(get("/foo/0"), some("\"bar\""));
        assert_eq!(get("/foo/1"), some("\"baz\""));
        assert_eq!(get("/"), some("0"));
        assert_eq!(get("/a~1b"), some("1"));
        assert_eq!(get("/m~0n"), some("8"));
        assert_eq!(get("/ "), some("7"));
        assert_eq!(get("/x/y/z"), some("3"));
        assert_eq!(get("/01"), some("9"));
        // Array indices: no leading zeros, no '-', no sign, in bounds.
        assert_eq!(get("/foo/01"), None);
        assert_eq!(get("/foo/-"), None);
        assert_eq!(get("/foo/+1"), None);
        assert_eq!(get("/foo/2"), None);
        assert_eq!(get("/foo/99999999999999999999999"), None);
        assert_eq!(get("/x/y/z/w"), None);
        assert_eq!(get("/missing"), None);
    }

    #[test]
    fn messages_keep_the_last_duplicate_and_unescape_keys() {
        let doc: Node =
            serde_json::from_str(r#"{"a":1,"a":2,"\u0062":"\u00e9\n","c":[null,true]}"#).unwrap();
        assert_eq!(show(ptr("/a").find(&doc)), Some("2".into()));
        assert_eq!(show(ptr("/b").find(&doc)), Some("\"é\\n\"".into()));
        assert_eq!(show(ptr("/c/0").find(&doc)), Some("null".into()));
        assert_eq!(show(ptr("/c/1").find(&doc)), Some("true".into()));
        // Borrowed where there is nothing to unescape.
        let doc: Node = serde_json::from_str(r#"{"k":"plain"}"#).unwrap();
        let Some(Node::String(Cow::Borrowed("plain"))) = ptr("/k").find(&doc) else {
            panic!("not borrowed: {doc:?}");
        };
    }

    #[test]
    fn pointer_escapes_decode_in_order() {
        // "~01" is "~1" unescaped once, not "/".
        let p = ptr("/~01");
        assert_eq!(p.tokens[0].key, "~1");
        assert_eq!(p.as_str(), "/~01");
        assert_eq!(p.to_string(), "/~01");
    }

    #[test]
    fn bad_pointers_are_refused() {
        assert_eq!(Pointer::parse("a"), Err(PointerError::NoLeadingSlash));
        assert_eq!(Pointer::parse("/a~"), Err(PointerError::BadEscape(2)));
        assert_eq!(Pointer::parse("/a/b~2"), Err(PointerError::BadEscape(4)));
        assert_eq!(Pointer::parse("/é~x"), Err(PointerError::BadEscape(3)));
        assert!(Pointer::parse("").unwrap().is_root());
        assert_eq!(Pointer::root(), ptr(""));
        let p: Pointer = serde_json::from_str(r#""/state""#).unwrap();
        assert_eq!(p, ptr("/state"));
        assert!(serde_json::from_str::<Pointer>(r#""state""#).is_err());
    }

    // -- plain ---------------------------------------------------------------------------

    #[test]
    fn plain_payloads_are_trimmed_text() {
        assert_eq!(plain(FieldType::Int, b" 21\r\n"), Ok(Value::Int(21)));
        assert_eq!(plain(FieldType::Double, b"21.5"), Ok(Value::Double(21.5)));
        assert_eq!(
            plain(FieldType::Double, b"-2e-3"),
            Ok(Value::Double(-0.002))
        );
        assert_eq!(
            plain(FieldType::Long, b"-9223372036854775808"),
            Ok(Value::Long(i64::MIN))
        );
        assert_eq!(plain(FieldType::Bool, b"ON"), Ok(Value::Bool(true)));
        assert_eq!(
            plain(FieldType::String, b"\tidle \n"),
            Ok(Value::String("idle".into()))
        );
        assert_eq!(
            plain(FieldType::String, "Küche 😀".as_bytes()),
            Ok(Value::String("Küche 😀".into()))
        );
        let t = plain(FieldType::Timestamp, b"2024-05-01T12:00:00Z");
        assert_eq!(t, Ok(Value::Timestamp(at(NOW))));
    }

    #[test]
    fn plain_values_are_stamped_with_arrival() {
        let t = topic(Format::Plain, vec![field(FieldType::Int, Locator::Whole)]);
        let d = t.decode(b"7", at(NOW)).unwrap();
        assert_eq!(d.values, vec![(0, Value::Int(7), at(NOW))]);
    }

    #[test]
    fn plain_payloads_must_be_utf8() {
        let t = topic(
            Format::Plain,
            vec![field(FieldType::String, Locator::Whole)],
        );
        let e = t.decode(b"ab\xff\xfe", at(NOW)).unwrap_err();
        assert_eq!(e, DecodeError::NotUtf8 { offset: 2 });
        assert_eq!(
            e.to_string(),
            "payload is not UTF-8 (invalid byte at offset 2)"
        );
        // A truncated multi-byte character.
        assert_eq!(
            t.decode("é".as_bytes()[..1].as_ref(), at(NOW)).unwrap_err(),
            DecodeError::NotUtf8 { offset: 0 }
        );
    }

    #[test]
    fn empty_payloads_yield_nothing() {
        for format in [Format::Plain, Format::Json, Format::Senml] {
            let t = topic(format, vec![field(FieldType::String, Locator::Whole)]);
            for payload in [&b""[..], b"  \r\n\t"] {
                assert_eq!(
                    t.decode(payload, at(NOW)),
                    Ok(Decoded::default()),
                    "{format}"
                );
            }
        }
    }

    #[test]
    fn plain_garbage_is_reported_per_field() {
        assert!(matches!(
            plain(FieldType::Int, b"abc"),
            Err(DecodeError::WrongType { .. })
        ));
        assert!(matches!(
            plain(FieldType::Double, b"NaN"),
            Err(DecodeError::NotFinite { .. })
        ));
        assert!(matches!(
            plain(FieldType::Double, b"inf"),
            Err(DecodeError::NotFinite { .. })
        ));
        assert!(matches!(
            plain(FieldType::Double, b"-Infinity"),
            Err(DecodeError::NotFinite { .. })
        ));
        assert!(matches!(
            plain(FieldType::Double, b"1e400"),
            Err(DecodeError::NotFinite { .. })
        ));
        assert!(matches!(
            plain(FieldType::Double, b"21.5 C"),
            Err(DecodeError::WrongType { .. })
        ));
        assert!(matches!(
            plain(FieldType::Int, b"0x10"),
            Err(DecodeError::WrongType { .. })
        ));
        assert!(matches!(
            plain(FieldType::Bool, b"maybe"),
            Err(DecodeError::WrongType { .. })
        ));
    }

    // -- type rules ----------------------------------------------------------------------

    #[test]
    fn bools_accept_the_usual_words() {
        for (text, want) in [
            ("true", true),
            ("false", false),
            ("1", true),
            ("0", false),
            ("1.0", true),
            ("0.0", false),
            ("\"ON\"", true),
            ("\"off\"", false),
            ("\"Yes\"", true),
            ("\"NO\"", false),
            ("\"True\"", true),
            ("\"FALSE\"", false),
            ("\"1\"", true),
            ("\"0\"", false),
            ("\" on \"", true),
        ] {
            assert_eq!(json(FieldType::Bool, text), Ok(Value::Bool(want)), "{text}");
        }
        for text in ["2", "-1", "0.5", "\"toggle\"", "\"\"", "[]", "{}", "\"y\""] {
            let e = json(FieldType::Bool, text).unwrap_err();
            assert!(
                matches!(
                    e,
                    DecodeError::WrongType {
                        expected: "a boolean",
                        ..
                    }
                ),
                "{text}: {e}"
            );
        }
    }

    #[test]
    fn ints_take_whole_numbers_in_range() {
        for (text, want) in [
            ("21", 21),
            ("-21", -21),
            ("21.0", 21),
            ("2.1e1", 21),
            ("1e3", 1000),
            ("-0", 0),
            ("\"21\"", 21),
            ("\" -21 \"", -21),
            ("\"21.0\"", 21),
            ("\"+21\"", 21),
            ("2147483647", i32::MAX),
            ("-2147483648", i32::MIN),
        ] {
            assert_eq!(json(FieldType::Int, text), Ok(Value::Int(want)), "{text}");
        }
        for text in [
            "2147483648",
            "-2147483649",
            "3000000000",
            "\"3000000000\"",
            "1e10",
            "18446744073709551615",
        ] {
            let e = json(FieldType::Int, text).unwrap_err();
            assert!(
                matches!(
                    e,
                    DecodeError::OutOfRange {
                        kind: FieldType::Int,
                        ..
                    }
                ),
                "{text}: {e}"
            );
        }
        for text in ["21.5", "\"21.5\"", "-0.1", "1e-3"] {
            let e = json(FieldType::Int, text).unwrap_err();
            assert!(matches!(e, DecodeError::NotWhole { .. }), "{text}: {e}");
        }
        for text in ["\"NaN\"", "\"inf\""] {
            let e = json(FieldType::Int, text).unwrap_err();
            assert!(matches!(e, DecodeError::NotFinite { .. }), "{text}: {e}");
        }
        for text in ["true", "\"abc\"", "\"\"", "[1]", "{\"a\":1}"] {
            let e = json(FieldType::Int, text).unwrap_err();
            assert!(matches!(e, DecodeError::WrongType { .. }), "{text}: {e}");
        }
    }

    #[test]
    fn longs_are_exact_to_the_last_digit() {
        for (text, want) in [
            ("9007199254740993", 9_007_199_254_740_993),
            ("9223372036854775807", i64::MAX),
            ("-9223372036854775808", i64::MIN),
            ("\"9223372036854775807\"", i64::MAX),
            ("3000000000", 3_000_000_000),
            ("9007199254740992.0", 9_007_199_254_740_992),
            ("-9.007199254740992e15", -9_007_199_254_740_992),
        ] {
            assert_eq!(json(FieldType::Long, text), Ok(Value::Long(want)), "{text}");
        }
        for text in [
            "9223372036854775808",
            "18446744073709551615",
            "-9223372036854775809",
            "123456789012345678901234567890",
            "\"123456789012345678901234567890123456789012345678901234567890\"",
            "1e300",
            "\"1e300\"",
            // Not exact as floats.
            "1e18",
            "9007199254740993.0",
            "\"9007199254740994.0\"",
        ] {
            let e = json(FieldType::Long, text).unwrap_err();
            assert!(
                matches!(
                    e,
                    DecodeError::OutOfRange {
                        kind: FieldType::Long,
                        ..
                    }
                ),
                "{text}: {e}"
            );
        }
    }

    #[test]
    fn doubles_take_finite_numbers() {
        for (text, want) in [
            ("21.5", 21.5),
            ("21", 21.0),
            ("-1e-300", -1e-300),
            ("18446744073709551615", 18_446_744_073_709_551_615.0),
            ("\"21.5\"", 21.5),
            ("\" 1e3 \"", 1000.0),
        ] {
            assert_eq!(
                json(FieldType::Double, text),
                Ok(Value::Double(want)),
                "{text}"
            );
        }
        for text in [
            "\"NaN\"",
            "\"nan\"",
            "\"inf\"",
            "\"-infinity\"",
            "\"1e400\"",
        ] {
            let e = json(FieldType::Double, text).unwrap_err();
            assert!(matches!(e, DecodeError::NotFinite { .. }), "{text}: {e}");
        }
        for text in ["true", "\"warm\"", "[21.5]", "{}"] {
            let e = json(FieldType::Double, text).unwrap_err();
            assert!(
                matches!(
                    e,
                    DecodeError::WrongType {
                        expected: "a number",
                        ..
                    }
                ),
                "{text}: {e}"
            );
        }
    }

    #[test]
    fn strings_take_text_and_scalars_as_their_json_text() {
        assert_eq!(
            json(FieldType::String, r#"" idle ""#),
            Ok(Value::String(" idle ".into()))
        );
        assert_eq!(
            json(FieldType::String, r#""a\"b\u00e9""#),
            Ok(Value::String("a\"bé".into()))
        );
        assert_eq!(
            json(FieldType::String, "21.5"),
            Ok(Value::String("21.5".into()))
        );
        assert_eq!(
            json(FieldType::String, "21"),
            Ok(Value::String("21".into()))
        );
        assert_eq!(
            json(FieldType::String, "false"),
            Ok(Value::String("false".into()))
        );
        assert!(matches!(
            json(FieldType::String, "[]"),
            Err(DecodeError::WrongType { .. })
        ));
        assert!(matches!(
            json(FieldType::String, "{}"),
            Err(DecodeError::WrongType { .. })
        ));
    }

    #[test]
    fn enums_take_exact_labels() {
        let mut f = json_field(FieldType::Enum, "/mode");
        f.labels = vec!["auto".into(), "manual".into(), "1".into()];
        let t = topic(Format::Json, vec![f]);
        let get = |payload: &str| one(t.decode(payload.as_bytes(), at(NOW)).unwrap());
        assert_eq!(get(r#"{"mode":"auto"}"#), Ok(Value::Enum("auto".into())));
        assert_eq!(get(r#"{"mode":1}"#), Ok(Value::Enum("1".into())));
        let e = get(r#"{"mode":"Auto"}"#).unwrap_err();
        assert_eq!(
            e.to_string(),
            r#""Auto" at /mode is not one of the labels auto, manual, 1"#
        );
        assert!(matches!(
            get(r#"{"mode":{}}"#),
            Err(DecodeError::WrongType { .. })
        ));
    }

    #[test]
    fn timestamps_take_rfc3339_and_unix_seconds() {
        let want = Ok(Value::Timestamp(at(NOW)));
        for text in [
            "\"2024-05-01T12:00:00Z\"",
            "\"2024-05-01t12:00:00z\"",
            "\"2024-05-01T14:00:00+02:00\"",
            "\"2024-05-01T07:30:00-04:30\"",
            "\"2024-05-01T12:00:00+00:00\"",
            "\"2024-05-01T12:00:00-00:00\"",
            "1714564800",
            "1714564800.0",
            "\"1714564800\"",
        ] {
            assert_eq!(json(FieldType::Timestamp, text), want, "{text}");
        }
        assert_eq!(
            json(FieldType::Timestamp, "\"2024-05-01T12:00:00.250Z\""),
            Ok(Value::Timestamp(at(NOW) + Duration::from_millis(250)))
        );
        assert_eq!(
            json(FieldType::Timestamp, "\"2024-05-01T14:00:00.5+02:00\""),
            Ok(Value::Timestamp(at(NOW) + Duration::from_millis(500)))
        );
        assert_eq!(
            json(FieldType::Timestamp, "1714564800.5"),
            Ok(Value::Timestamp(at(NOW) + Duration::from_millis(500)))
        );
        assert_eq!(
            json(FieldType::Timestamp, "0"),
            Ok(Value::Timestamp(UNIX_EPOCH))
        );
        for text in [
            "\"yesterday\"",
            "\"2024-05-01T12:00:00\"",
            "\"2024-05-01 12:00:00Z\"",
            "\"2024-05-01T12:00:00+2:00\"",
            "\"2024-05-01T12:00:00+24:00\"",
            "\"2024-05-01T12:00:00+02:60\"",
            "\"2024-13-01T12:00:00Z\"",
            "\"2024-02-30T12:00:00Z\"",
            "\"1969-12-31T23:59:59Z\"",
            "\"1970-01-01T00:30:00+01:00\"",
            "\"9999-12-31T23:00:00-02:00\"",
            "\"2024-05-01T12:00:00.12345678901234567890123456789Z\"",
            "\"2024-05-01T12:00:00Zé\"",
            "\"2024-05-01Té2:00:00Z\"",
            "\"é024-05-01T12:00:00+01:00\"",
            "\"\"",
            "-1",
            "\"-1\"",
            "1e12",
            "1e300",
            "\"NaN\"",
        ] {
            let e = json(FieldType::Timestamp, text).unwrap_err();
            assert!(matches!(e, DecodeError::BadTime { .. }), "{text}: {e}");
        }
        assert!(matches!(
            json(FieldType::Timestamp, "true"),
            Err(DecodeError::WrongType { .. })
        ));
        assert_eq!(
            json(FieldType::Timestamp, "\"9999-12-31T23:59:59Z\""),
            Ok(Value::Timestamp(at(END_OF_TIME - 1)))
        );
        // Values are always writable as RFC 3339 (humantime panics before 1970).
        let Ok(Value::Timestamp(t)) = json(FieldType::Timestamp, "253402300799.9") else {
            panic!()
        };
        assert!(!humantime::format_rfc3339(t).to_string().is_empty());
    }

    // -- JSON ----------------------------------------------------------------------------

    fn zigbee_topic() -> TopicDecoder {
        topic(
            Format::Json,
            vec![
                json_field(FieldType::Double, "/temperature"),
                json_field(FieldType::Double, "/humidity"),
                json_field(FieldType::Int, "/battery"),
                json_field(FieldType::Int, "/linkquality"),
                json_field(FieldType::Bool, "/state"),
            ],
        )
    }

    #[test]
    fn a_json_object_feeds_all_its_fields() {
        let d = zigbee_topic()
            .decode(
                br#"{"battery":97,"humidity":45.2,"linkquality":120,"state":"ON","temperature":21.5}"#,
                at(NOW),
            )
            .unwrap();
        assert_eq!(
            d.values,
            vec![
                (0, Value::Double(21.5), at(NOW)),
                (1, Value::Double(45.2), at(NOW)),
                (2, Value::Int(97), at(NOW)),
                (3, Value::Int(120), at(NOW)),
                (4, Value::Bool(true), at(NOW)),
            ]
        );
        assert!(d.errors.is_empty());
    }

    #[test]
    fn absent_and_null_fields_are_skipped() {
        let d = zigbee_topic()
            .decode(br#"{"temperature":21.5,"battery":null,"other":1}"#, at(NOW))
            .unwrap();
        assert_eq!(d.values, vec![(0, Value::Double(21.5), at(NOW))]);
        assert!(d.errors.is_empty());
        // A document of another shape altogether: nothing there, nothing wrong.
        for payload in ["[1,2]", "21", "\"x\"", "null", "{}"] {
            let d = zigbee_topic().decode(payload.as_bytes(), at(NOW)).unwrap();
            assert_eq!(d, Decoded::default(), "{payload}");
        }
    }

    #[test]
    fn a_wrong_value_does_not_spoil_its_neighbours() {
        let d = zigbee_topic()
            .decode(
                br#"{"temperature":"warm","humidity":45.2,"battery":3000000000,"linkquality":12.5,"state":"OFF"}"#,
                at(NOW),
            )
            .unwrap();
        assert_eq!(
            d.values,
            vec![
                (1, Value::Double(45.2), at(NOW)),
                (4, Value::Bool(false), at(NOW))
            ]
        );
        let texts: Vec<_> = d.errors.iter().map(|(i, e)| (*i, e.to_string())).collect();
        assert_eq!(
            texts,
            vec![
                (
                    0,
                    r#"expected a number at /temperature, got the text "warm""#.to_owned()
                ),
                (
                    2,
                    "value 3000000000 at /battery is out of range for an int field".to_owned()
                ),
                (
                    3,
                    "value 12.5 at /linkquality is not a whole number, as an int field needs"
                        .to_owned()
                ),
            ]
        );
    }

    #[test]
    fn nested_pointers_and_the_whole_document() {
        let t = topic(
            Format::Json,
            vec![
                json_field(FieldType::Int, "/update/state/0"),
                json_field(FieldType::String, "/a~1b"),
                field(FieldType::Double, Locator::Whole),
                json_field(FieldType::Double, ""),
            ],
        );
        let d = t
            .decode(br#"{"update":{"state":[4,5]},"a/b":"x"}"#, at(NOW))
            .unwrap();
        assert_eq!(
            d.values,
            vec![
                (0, Value::Int(4), at(NOW)),
                (1, Value::String("x".into()), at(NOW))
            ]
        );
        assert_eq!(d.errors.len(), 2);
        assert_eq!(
            d.errors[0].1.to_string(),
            "expected a number in the payload, got an object"
        );
        assert_eq!(
            d.errors[1].1.to_string(),
            "expected a number at the JSON root, got an object"
        );
        let d = t.decode(b" 21.5 ", at(NOW)).unwrap();
        assert_eq!(
            d.values,
            vec![
                (2, Value::Double(21.5), at(NOW)),
                (3, Value::Double(21.5), at(NOW))
            ]
        );
    }

    #[test]
    fn not_json_is_refused_with_its_position() {
        let t = zigbee_topic();
        let e = t.decode(br#"{"temperature" 21}"#, at(NOW)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "not valid JSON at line 1 column 16: expected `:`"
        );
        let e = t.decode(b"{\n  \"a\": tru }", at(NOW)).unwrap_err();
        assert!(matches!(e, DecodeError::NotJson { line: 2, .. }), "{e}");
        for payload in [
            &b"\xff\xfe\x00garbage"[..],
            b"online",
            b"{\"a\":1}{",
            b"{\"a\":\"\xff\"}",
            b"{\"a\":NaN}",
            b"{\"a\":1e400}",
            b"\x00\x01\x02",
        ] {
            let e = t.decode(payload, at(NOW)).unwrap_err();
            assert!(matches!(e, DecodeError::NotJson { .. }), "{payload:?}: {e}");
        }
    }

    #[test]
    fn deep_nesting_is_refused_without_overflowing_the_stack() {
        let t = zigbee_topic();
        let deep = vec![b'['; 1 << 20];
        let e = t.decode(&deep, at(NOW)).unwrap_err();
        assert!(e.to_string().contains("recursion limit"), "{e}");
        let deep = r#"{"a":"#.repeat(100_000);
        assert!(t.decode(deep.as_bytes(), at(NOW)).is_err());
        // Nesting within the limit is fine.
        let ok = format!("{}1{}", "[".repeat(100), "]".repeat(100));
        assert!(t.decode(ok.as_bytes(), at(NOW)).is_ok());
    }

    #[test]
    fn errors_quote_little_of_hostile_payloads() {
        let huge = format!(r#"{{"x":"{}"}}"#, r"\u0007A".repeat(1 << 20));
        for kind in [
            FieldType::Int,
            FieldType::Double,
            FieldType::Bool,
            FieldType::Timestamp,
        ] {
            let t = topic(Format::Json, vec![json_field(kind, "/x")]);
            let e = one(t.decode(huge.as_bytes(), at(NOW)).unwrap()).unwrap_err();
            let text = e.to_string();
            assert!(text.len() < 300, "{kind:?}: {} bytes", text.len());
            assert!(
                !text.contains('\u{7}'),
                "control characters are escaped: {text}"
            );
        }
        let mut f = json_field(FieldType::Enum, "/x");
        f.labels = vec!["a".into()];
        let e = one(topic(Format::Json, vec![f])
            .decode(huge.as_bytes(), at(NOW))
            .unwrap());
        assert!(e.unwrap_err().to_string().len() < 300);
        // Cut at a character boundary.
        assert_eq!(quoted(&"é".repeat(40)), format!("{:?}…", "é".repeat(32)));
        assert_eq!(quoted("ok"), "\"ok\"");
    }

    #[test]
    fn json_timestamps_stamp_the_message() {
        let mut t = zigbee_topic();
        t.timestamp = Some(TimestampSpec {
            pointer: ptr("/last_seen"),
            unit: TimeUnit::Millis,
        });
        let d = t
            .decode(br#"{"temperature":21.5,"last_seen":1714564800250}"#, at(0))
            .unwrap();
        assert_eq!(
            d.values,
            vec![(0, Value::Double(21.5), at(NOW) + Duration::from_millis(250))]
        );
        let d = t
            .decode(
                br#"{"temperature":21.5,"last_seen":"2024-05-01T14:00:00+02:00"}"#,
                at(0),
            )
            .unwrap();
        assert_eq!(d.values[0].2, at(NOW));
        let d = t
            .decode(
                br#"{"temperature":21.5,"last_seen":"1714564800000"}"#,
                at(0),
            )
            .unwrap();
        assert_eq!(d.values[0].2, at(NOW));
        // Absent or null: the arrival.
        for payload in [
            r#"{"temperature":21.5}"#,
            r#"{"temperature":21.5,"last_seen":null}"#,
        ] {
            let d = t.decode(payload.as_bytes(), at(NOW)).unwrap();
            assert_eq!(d.values[0].2, at(NOW));
        }
        // There but unreadable: the message is refused.
        for payload in [
            r#"{"temperature":21.5,"last_seen":"soon"}"#,
            r#"{"temperature":21.5,"last_seen":-5}"#,
            r#"{"temperature":21.5,"last_seen":1e300}"#,
            r#"{"temperature":21.5,"last_seen":{}}"#,
            r#"{"temperature":21.5,"last_seen":true}"#,
        ] {
            let e = t.decode(payload.as_bytes(), at(NOW)).unwrap_err();
            assert!(matches!(e, DecodeError::BadTime { .. }), "{payload}: {e}");
        }
        t.timestamp = Some(TimestampSpec {
            pointer: ptr("/ts"),
            unit: TimeUnit::Seconds,
        });
        let d = t
            .decode(br#"{"temperature":21.5,"ts":1714564800.5}"#, at(0))
            .unwrap();
        assert_eq!(d.values[0].2, at(NOW) + Duration::from_millis(500));
        let e = t.decode(br#"{"ts":"x"}"#, at(0)).unwrap_err();
        assert_eq!(
            e.to_string(),
            r#"unreadable time at /ts: "x" is not an RFC 3339 time"#
        );
    }

    // -- SenML ---------------------------------------------------------------------------

    fn senml(fields: Vec<FieldDecoder>, payload: &str) -> Result<Decoded, DecodeError> {
        topic(Format::Senml, fields).decode(payload.as_bytes(), at(NOW))
    }

    #[test]
    fn senml_rfc_examples() {
        // RFC 8428 §5.1.1, a single datapoint.
        let d = senml(
            vec![senml_field(
                FieldType::Double,
                "urn:dev:ow:10e2073a01080063",
            )],
            r#"[{"n":"urn:dev:ow:10e2073a01080063","u":"Cel","v":23.1}]"#,
        )
        .unwrap();
        assert_eq!(d.values, vec![(0, Value::Double(23.1), at(NOW))]);
        // §5.1.2, multiple datapoints with a base name and a base time.
        let d = senml(
            vec![
                senml_field(FieldType::Double, "urn:dev:ow:10e2073a01080063:voltage"),
                senml_field(FieldType::Double, "current"),
            ],
            r#"[
                {"bn":"urn:dev:ow:10e2073a01080063:","bt":1.276020076001e+09,"bu":"A","bver":5,
                 "n":"voltage","u":"V","v":120.1},
                {"n":"current","t":-5,"v":1.2},
                {"n":"current","t":-4,"v":1.3},
                {"n":"current","t":-3,"v":1.4},
                {"n":"current","t":-2,"v":1.5},
                {"n":"current","t":-1,"v":1.6},
                {"n":"current","v":1.7}
            ]"#,
        )
        .unwrap();
        let base = UNIX_EPOCH + Duration::from_secs_f64(1.276020076001e9);
        assert_eq!(
            d.values,
            vec![
                (0, Value::Double(120.1), base),
                (1, Value::Double(1.7), base)
            ]
        );
        assert!(d.errors.is_empty());
    }

    #[test]
    fn senml_takes_the_latest_record_of_a_series() {
        let fields = vec![senml_field(FieldType::Int, "temp")];
        // Out of order in the pack: the latest time wins, not the last record.
        let d = senml(
            fields.clone(),
            r#"[{"n":"temp","t":1714564810,"v":2},{"n":"temp","t":1714564800,"v":1}]"#,
        )
        .unwrap();
        assert_eq!(d.values, vec![(0, Value::Int(2), at(NOW + 10))]);
        // The same time: the last record.
        let d = senml(fields.clone(), r#"[{"n":"temp","v":1},{"n":"temp","v":2}]"#).unwrap();
        assert_eq!(d.values, vec![(0, Value::Int(2), at(NOW))]);
        // Relative and absolute times on one scale.
        let d = senml(
            fields.clone(),
            r#"[{"n":"temp","t":-60,"v":1},{"n":"temp","t":1714564700,"v":2},{"n":"temp","t":-120,"v":3}]"#,
        )
        .unwrap();
        assert_eq!(d.values, vec![(0, Value::Int(1), at(NOW - 60))]);
        // The latest record's value is taken even if it is wrong.
        let d = senml(
            fields,
            r#"[{"n":"temp","v":1},{"n":"temp","t":1,"vs":"x"}]"#,
        )
        .unwrap();
        assert!(d.values.is_empty());
        assert!(matches!(d.errors[0].1, DecodeError::WrongType { .. }));
    }

    #[test]
    fn senml_relative_times_count_from_arrival() {
        let fields = vec![senml_field(FieldType::Int, "a")];
        for (record, want) in [
            (r#"{"n":"a","v":1}"#, at(NOW)),
            (r#"{"n":"a","t":-60,"v":1}"#, at(NOW - 60)),
            (r#"{"n":"a","t":30,"v":1}"#, at(NOW + 30)),
            (
                r#"{"n":"a","t":-0.5,"v":1}"#,
                at(NOW) - Duration::from_millis(500),
            ),
            (r#"{"bt":-10,"n":"a","t":-5,"v":1}"#, at(NOW - 15)),
            (r#"{"n":"a","t":268435455,"v":1}"#, at(NOW + 268_435_455)),
            (r#"{"n":"a","t":268435456,"v":1}"#, at(268_435_456)),
            (r#"{"bt":1714564000,"n":"a","t":800,"v":1}"#, at(NOW)),
        ] {
            let d = senml(fields.clone(), &format!("[{record}]")).unwrap();
            assert_eq!(d.values, vec![(0, Value::Int(1), want)], "{record}");
        }
        for record in [
            r#"{"n":"a","t":1e300,"v":1}"#,
            r#"{"n":"a","t":-1e300,"v":1}"#,
            r#"{"n":"a","t":-2000000000,"v":1}"#,
            r#"{"n":"a","t":1e12,"v":1}"#,
        ] {
            let d = senml(fields.clone(), &format!("[{record}]")).unwrap();
            assert!(d.values.is_empty(), "{record}");
            assert!(
                matches!(d.errors[..], [(0, DecodeError::BadTime { .. })]),
                "{record}"
            );
        }
        let e = senml(fields, r#"[{"bt":1.7e308,"n":"a","t":1.7e308,"v":1}]"#).unwrap_err();
        assert!(matches!(e, DecodeError::NotSenml { .. }), "{e}");
    }

    #[test]
    fn senml_base_fields_carry_over() {
        let d = senml(
            vec![
                senml_field(FieldType::Double, "dev1:a"),
                senml_field(FieldType::Double, "dev1:b"),
                senml_field(FieldType::Long, "dev2:c"),
                senml_field(FieldType::Long, "dev2:d"),
                senml_field(FieldType::String, "dev2:e"),
            ],
            r#"[
                {"bn":"dev1:","bv":10,"n":"a","v":1.5},
                {"n":"b","v":2},
                {"bn":"dev2:","bv":9223372036854775800,"n":"c","v":7},
                {"bv":0.5,"n":"d","v":1},
                {"n":"e","vs":"text","bv":100}
            ]"#,
        )
        .unwrap();
        assert_eq!(
            d.values,
            vec![
                (0, Value::Double(11.5), at(NOW)),
                (1, Value::Double(12.0), at(NOW)),
                (2, Value::Long(9_223_372_036_854_775_807), at(NOW)),
                (4, Value::String("text".into()), at(NOW)),
            ]
        );
        // 0.5 + 1 is not a whole number.
        assert!(matches!(d.errors[..], [(3, DecodeError::NotWhole { .. })]));
        // A base value that overflows i64 is added as floats; beyond f64, not finite.
        let d = senml(
            vec![senml_field(FieldType::Double, "x")],
            r#"[{"bv":1.7e308,"n":"x","v":1.7e308}]"#,
        )
        .unwrap();
        assert!(matches!(d.errors[..], [(0, DecodeError::NotFinite { .. })]));
    }

    #[test]
    fn senml_names_match_in_full_or_by_own_name() {
        let fields = vec![
            senml_field(FieldType::Int, "urn:dev:mac:0024befffe804ff1:temp"),
            senml_field(FieldType::Int, "hum"),
            senml_field(FieldType::Int, "urn:dev:mac:0024befffe804ff1:"),
        ];
        let d = senml(
            fields.clone(),
            r#"[{"bn":"urn:dev:mac:0024befffe804ff1:","n":"temp","v":21},{"n":"hum","v":40},{"v":1}]"#,
        )
        .unwrap();
        assert_eq!(
            d.values,
            vec![
                (0, Value::Int(21), at(NOW)),
                (1, Value::Int(40), at(NOW)),
                (2, Value::Int(1), at(NOW)),
            ]
        );
        // Prefixes and suffixes alone do not match.
        let d = senml(
            fields,
            r#"[{"bn":"urn:dev:mac:0024befffe804ff1","n":"temp","v":21},{"n":"humidity","v":40},{"n":"temp","v":1}]"#,
        )
        .unwrap();
        assert_eq!(d, Decoded::default());
    }

    #[test]
    fn senml_value_kinds() {
        let mut mode = senml_field(FieldType::Enum, "mode");
        mode.labels = vec!["auto".into()];
        let d = senml(
            vec![
                senml_field(FieldType::Bool, "on"),
                senml_field(FieldType::String, "msg"),
                mode,
                senml_field(FieldType::String, "blob"),
                senml_field(FieldType::Bool, "sw"),
                senml_field(FieldType::Double, "absent"),
                senml_field(FieldType::Double, "t"),
            ],
            r#"[{"n":"on","vb":true},{"n":"msg","vs":"h\u00e9"},{"n":"mode","vs":"auto"},
                {"n":"blob","vd":"aGk="},{"n":"sw","v":1},{"n":"absent","s":5},{"n":"t","vs":"21.5"},
                {"n":"x","ut":5,"u":"Cel","bs":1,"ext":{"deep":[1,2]},"v":1}]"#,
        )
        .unwrap();
        assert_eq!(
            d.values,
            vec![
                (0, Value::Bool(true), at(NOW)),
                (1, Value::String("hé".into()), at(NOW)),
                (2, Value::Enum("auto".into()), at(NOW)),
                (3, Value::String("aGk=".into()), at(NOW)),
                (4, Value::Bool(true), at(NOW)),
                (6, Value::Double(21.5), at(NOW)),
            ]
        );
        assert!(d.errors.is_empty());
        let d = senml(
            vec![senml_field(FieldType::Bool, "on")],
            r#"[{"n":"on","v":21.5}]"#,
        )
        .unwrap();
        assert_eq!(
            d.errors[0].1.to_string(),
            r#"expected a boolean in SenML record "on", got the number 21.5"#
        );
    }

    #[test]
    fn malformed_packs_are_refused() {
        let fields = vec![senml_field(FieldType::Double, "a")];
        for (payload, says) in [
            (r#"{"n":"a","v":1}"#, "expected a SenML pack"),
            (r#"[1]"#, "expected a SenML record"),
            (r#"[{"n":"a","v":"1"}]"#, "invalid type"),
            (r#"[{"n":"a","v":1,"vs":"x"}]"#, "more than one value"),
            (r#"[{"n":"a","v":1,"v":2}]"#, "more than one value"),
            (r#"[{"n":"a","n":"b","v":1}]"#, "duplicate field"),
            (
                r#"[{"n":"a","v":1,"foo_":1}]"#,
                "unsupported mandatory field \"foo_\"",
            ),
            (r#"[{"bver":11,"n":"a","v":1}]"#, "SenML version 11"),
            (r#"[{"bver":-1,"n":"a","v":1}]"#, "invalid"),
            (r#"[{"n":1,"v":1}]"#, "invalid type"),
            (r#"[{"n":"a","v":null}]"#, "invalid type"),
            (r#"[{"n":"a","t":"now","v":1}]"#, "invalid type"),
        ] {
            let e = senml(fields.clone(), payload).unwrap_err();
            assert!(matches!(e, DecodeError::NotSenml { .. }), "{payload}: {e}");
            assert!(e.to_string().contains(says), "{payload}: {e}");
        }
        let e = senml(fields.clone(), r#"[{"n":"a","v":1},"#).unwrap_err();
        assert!(matches!(e, DecodeError::NotJson { .. }), "{e}");
        let deep = format!("[{{\"x\":{}", "[".repeat(1 << 20));
        assert!(senml(fields.clone(), &deep).is_err());
        let deep = "[".repeat(1 << 20);
        assert!(senml(fields.clone(), &deep).is_err());
        // A hostile string in an error is cut.
        let payload = format!(r#"[{{"n":"a","v":"{}"}}]"#, "x".repeat(1 << 20));
        let e = senml(fields.clone(), &payload).unwrap_err();
        assert!(e.to_string().len() < 300, "{e}");
        let payload = format!(r#"[{{"n":"a","v":1,"{}_":1}}]"#, "x".repeat(1 << 20));
        let e = senml(fields, &payload).unwrap_err();
        assert!(e.to_string().len() < 300, "{e}");
    }

    #[test]
    fn senml_records_without_value_are_skipped() {
        let d = senml(
            vec![senml_field(FieldType::Double, "a")],
            r#"[{"bn":"dev:","bt":1714564800},{"n":"a","s":10},[]]"#,
        );
        // `[]` is not a record.
        assert!(d.is_err());
        let d = senml(
            vec![senml_field(FieldType::Double, "dev:a")],
            r#"[{"bn":"dev:","bt":1714564800},{"n":"a","s":10},{"n":"a","t":5,"v":1}]"#,
        )
        .unwrap();
        assert_eq!(d.values, vec![(0, Value::Double(1.0), at(NOW + 5))]);
        assert_eq!(
            senml(vec![senml_field(FieldType::Double, "a")], "[]"),
            Ok(Decoded::default())
        );
    }

    // -- configuration -------------------------------------------------------------------

    #[test]
    fn locators_must_fit_the_format() {
        let mut t = topic(Format::Plain, vec![json_field(FieldType::Int, "/x")]);
        assert_eq!(
            t.validate().unwrap_err().to_string(),
            "field 0: a JSON pointer cannot locate a value in a plain payload"
        );
        // Were it used anyway, every message would say so for that field.
        let d = t.decode(b"1", at(NOW)).unwrap();
        assert_eq!(
            d.errors[0].1.to_string(),
            "a JSON pointer cannot locate a value in a plain payload"
        );
        t.format = Format::Senml;
        assert!(t.validate().is_err());
        assert_eq!(t.decode(b"[]", at(NOW)).unwrap().errors.len(), 1);
        t.format = Format::Json;
        t.fields.push(senml_field(FieldType::Int, "x"));
        assert!(matches!(
            t.validate(),
            Err(SetupError::Locator { index: 1, .. })
        ));
        assert_eq!(t.decode(b"{\"x\":1}", at(NOW)).unwrap().errors.len(), 1);

        let t = topic(Format::Senml, vec![senml_field(FieldType::Int, "")]);
        assert_eq!(t.validate(), Err(SetupError::EmptyName { index: 0 }));
        let t = topic(Format::Plain, vec![field(FieldType::Enum, Locator::Whole)]);
        assert_eq!(t.validate(), Err(SetupError::NoLabels { index: 0 }));
        let mut t = topic(Format::Senml, vec![senml_field(FieldType::Int, "a")]);
        assert_eq!(t.validate(), Ok(()));
        t.timestamp = Some(TimestampSpec {
            pointer: ptr("/t"),
            unit: TimeUnit::Seconds,
        });
        assert_eq!(t.validate(), Err(SetupError::Timestamp(Format::Senml)));
        assert!(zigbee_topic().validate().is_ok());
    }

    #[test]
    fn formats_and_units_read_from_configuration() {
        let f: Format = serde_json::from_str(r#""senml""#).unwrap();
        assert_eq!(f, Format::Senml);
        let u: TimeUnit = serde_json::from_str(r#""millis""#).unwrap();
        assert_eq!(u, TimeUnit::Millis);
    }

    // -- availability --------------------------------------------------------------------

    #[test]
    fn availability_plain_and_json() {
        let plain = Availability {
            pointer: None,
            online: "online".into(),
            offline: "offline".into(),
        };
        assert_eq!(plain.decode(b"online"), Some(true));
        assert_eq!(plain.decode(b" offline\n"), Some(false));
        assert_eq!(plain.decode(b"Online"), None);
        assert_eq!(plain.decode(b""), None);
        assert_eq!(plain.decode(b"\xff\xfe"), None);
        assert_eq!(plain.decode(br#"{"state":"online"}"#), None);

        let z2m = Availability {
            pointer: Some(ptr("/state")),
            ..plain.clone()
        };
        assert_eq!(z2m.decode(br#"{"state":"online"}"#), Some(true));
        assert_eq!(z2m.decode(br#"{"state":"offline"}"#), Some(false));
        // Zigbee2MQTT's legacy bare word.
        assert_eq!(z2m.decode(b"online"), Some(true));
        assert_eq!(z2m.decode(b"offline\r\n"), Some(false));
        assert_eq!(z2m.decode(br#"{"state":"Online"}"#), None);
        assert_eq!(z2m.decode(br#"{"status":"online"}"#), None);
        assert_eq!(z2m.decode(br#"{"state":{"x":"online"}}"#), None);
        assert_eq!(z2m.decode(br#""online""#), None);
        assert_eq!(z2m.decode(b"\xff garbage"), None);
        assert_eq!(z2m.decode(&vec![b'['; 1 << 20]), None);

        let flag = Availability {
            pointer: Some(ptr("/connected")),
            online: "true".into(),
            offline: "false".into(),
        };
        assert_eq!(flag.decode(br#"{"connected":true}"#), Some(true));
        assert_eq!(flag.decode(br#"{"connected":false}"#), Some(false));
        assert_eq!(flag.decode(br#"{"connected":"true"}"#), Some(true));
        assert_eq!(flag.decode(br#"{"connected":null}"#), None);
        let number = Availability {
            pointer: Some(ptr("/up")),
            online: "1".into(),
            offline: "0".into(),
        };
        assert_eq!(number.decode(br#"{"up":1}"#), Some(true));
        assert_eq!(number.decode(br#"{"up":0}"#), Some(false));
        assert_eq!(number.decode(br#"{"up":1.0}"#), None);
    }

    // -- commands ------------------------------------------------------------------------

    fn spec(kind: FieldType) -> FieldSpec {
        FieldSpec {
            writable: true,
            ..FieldSpec::new("f", kind)
        }
    }

    fn text(
        template: &Template,
        spec: &FieldSpec,
        value: Value,
        bools: Option<(&str, &str)>,
    ) -> String {
        String::from_utf8(encode(template, spec, &value, bools).unwrap()).unwrap()
    }

    #[test]
    fn plain_commands_are_text() {
        let p = &Template::Plain;
        let double = FieldSpec {
            decimals: Some(2),
            ..spec(FieldType::Double)
        };
        assert_eq!(text(p, &double, Value::Double(21.5), None), "21.50");
        assert_eq!(text(p, &double, Value::Int(3), None), "3.00");
        assert_eq!(
            text(p, &spec(FieldType::Double), Value::Double(21.25), None),
            "21.25"
        );
        assert_eq!(text(p, &spec(FieldType::Int), Value::Int(-7), None), "-7");
        assert_eq!(
            text(p, &spec(FieldType::Long), Value::Long(i64::MAX), None),
            "9223372036854775807"
        );
        assert_eq!(
            text(p, &spec(FieldType::Bool), Value::Bool(true), None),
            "true"
        );
        assert_eq!(
            text(p, &spec(FieldType::Bool), Value::Bool(false), None),
            "false"
        );
        assert_eq!(
            text(
                p,
                &spec(FieldType::Bool),
                Value::Bool(true),
                Some(("ON", "OFF"))
            ),
            "ON"
        );
        assert_eq!(
            text(
                p,
                &spec(FieldType::Bool),
                Value::Bool(false),
                Some(("ON", "OFF"))
            ),
            "OFF"
        );
        assert_eq!(
            text(
                p,
                &spec(FieldType::String),
                Value::String("hé".into()),
                None
            ),
            "hé"
        );
        let mode = FieldSpec {
            values: vec!["auto".into(), "manual".into()],
            ..spec(FieldType::Enum)
        };
        assert_eq!(text(p, &mode, Value::Enum("auto".into()), None), "auto");
        assert_eq!(
            text(p, &mode, Value::String("manual".into()), None),
            "manual"
        );
        assert_eq!(
            text(
                p,
                &spec(FieldType::Timestamp),
                Value::Timestamp(at(NOW) + Duration::from_millis(5)),
                None
            ),
            "2024-05-01T12:00:00Z"
        );
    }

    #[test]
    fn json_commands_nest_at_the_pointer() {
        let j = |p: &str| Template::Json { pointer: ptr(p) };
        assert_eq!(
            text(
                &j("/state"),
                &spec(FieldType::Bool),
                Value::Bool(true),
                None
            ),
            r#"{"state":true}"#
        );
        assert_eq!(
            text(
                &j("/state"),
                &spec(FieldType::Bool),
                Value::Bool(false),
                Some(("ON", "OFF"))
            ),
            r#"{"state":"OFF"}"#
        );
        assert_eq!(
            text(&j("/a/b"), &spec(FieldType::Int), Value::Int(5), None),
            r#"{"a":{"b":5}}"#
        );
        assert_eq!(
            text(
                &j("/a~1b/c~0d/0"),
                &spec(FieldType::Long),
                Value::Long(-1),
                None
            ),
            r#"{"a/b":{"c~d":{"0":-1}}}"#
        );
        assert_eq!(
            text(&j(""), &spec(FieldType::Double), Value::Double(21.5), None),
            "21.5"
        );
        assert_eq!(
            text(
                &j("/"),
                &spec(FieldType::String),
                Value::String("x\"y".into()),
                None
            ),
            r#"{"":"x\"y"}"#
        );
        let double = FieldSpec {
            decimals: Some(1),
            ..spec(FieldType::Double)
        };
        assert_eq!(
            text(
                &j("/current_heating_setpoint"),
                &double,
                Value::Double(21.456),
                None
            ),
            r#"{"current_heating_setpoint":21.5}"#
        );
        assert_eq!(
            text(&j("/x"), &double, Value::Long(3), None),
            r#"{"x":3.0}"#
        );
        assert_eq!(
            text(
                &j("/brightness"),
                &spec(FieldType::Int),
                Value::Int(254),
                None
            ),
            r#"{"brightness":254}"#
        );
        assert_eq!(
            text(
                &j("/t"),
                &spec(FieldType::Timestamp),
                Value::Timestamp(at(NOW)),
                None
            ),
            r#"{"t":"2024-05-01T12:00:00Z"}"#
        );
        let mode = FieldSpec {
            values: vec!["auto".into()],
            ..spec(FieldType::Enum)
        };
        assert_eq!(
            text(&j("/mode"), &mode, Value::Enum("auto".into()), None),
            r#"{"mode":"auto"}"#
        );
    }

    #[test]
    fn commands_that_do_not_fit_are_refused() {
        let p = &Template::Plain;
        let j = &Template::Json { pointer: ptr("/x") };
        for t in [p, j] {
            assert!(matches!(
                encode(t, &spec(FieldType::Double), &Value::Double(f64::NAN), None),
                Err(EncodeError::NotFinite(v)) if v.is_nan()
            ));
            assert!(matches!(
                encode(
                    t,
                    &spec(FieldType::Double),
                    &Value::Double(f64::INFINITY),
                    None
                ),
                Err(EncodeError::NotFinite(_))
            ));
            let e =
                encode(t, &spec(FieldType::Int), &Value::Long(3_000_000_000), None).unwrap_err();
            assert_eq!(
                e.to_string(),
                "value 3000000000 is out of range for an int field"
            );
            let e = encode(t, &spec(FieldType::Double), &Value::Bool(true), None).unwrap_err();
            assert_eq!(
                e.to_string(),
                "a bool value cannot be written to a double field"
            );
            assert!(encode(t, &spec(FieldType::Int), &Value::Double(1.0), None).is_err());
            assert!(encode(t, &spec(FieldType::Bool), &Value::Int(1), None).is_err());
            let mode = FieldSpec {
                values: vec!["auto".into()],
                ..spec(FieldType::Enum)
            };
            let e = encode(t, &mode, &Value::Enum("off".into()), None).unwrap_err();
            assert_eq!(e.to_string(), r#""off" is not one of the labels auto"#);
            for time in [UNIX_EPOCH - Duration::from_secs(1), at(END_OF_TIME)] {
                assert_eq!(
                    encode(
                        t,
                        &spec(FieldType::Timestamp),
                        &Value::Timestamp(time),
                        None
                    ),
                    Err(EncodeError::TimeOutOfRange)
                );
            }
        }
    }

    #[test]
    fn encoded_commands_decode_to_the_same_value() {
        let double = FieldSpec {
            decimals: Some(1),
            ..spec(FieldType::Double)
        };
        for (s, v) in [
            (double.clone(), Value::Double(21.5)),
            (spec(FieldType::Int), Value::Int(-5)),
            (spec(FieldType::Long), Value::Long(i64::MIN)),
            (spec(FieldType::Bool), Value::Bool(true)),
            (spec(FieldType::String), Value::String("x y".into())),
            (spec(FieldType::Timestamp), Value::Timestamp(at(NOW))),
        ] {
            for (template, format, locator) in [
                (Template::Plain, Format::Plain, Locator::Whole),
                (
                    Template::Json {
                        pointer: ptr("/a/b"),
                    },
                    Format::Json,
                    Locator::Pointer(ptr("/a/b")),
                ),
            ] {
                let payload = encode(&template, &s, &v, None).unwrap();
                let t = topic(format, vec![field(s.kind, locator)]);
                let back = one(t.decode(&payload, at(NOW)).unwrap()).unwrap();
                assert!(
                    same_value(&s, &v, &back),
                    "{v:?} via {template:?}: {back:?}"
                );
            }
        }
    }

    // -- confirmation --------------------------------------------------------------------

    #[test]
    fn echoes_confirm_by_value() {
        let any = spec(FieldType::Double);
        let one_decimal = FieldSpec {
            decimals: Some(1),
            ..spec(FieldType::Double)
        };
        // Numbers across types.
        assert!(same_value(&any, &Value::Int(3), &Value::Long(3)));
        assert!(same_value(&any, &Value::Long(3), &Value::Double(3.0)));
        assert!(same_value(&any, &Value::Double(3.0), &Value::Int(3)));
        assert!(!same_value(&any, &Value::Int(3), &Value::Long(4)));
        assert!(same_value(
            &any,
            &Value::Long(i64::MAX),
            &Value::Long(i64::MAX)
        ));
        assert!(!same_value(
            &any,
            &Value::Long(i64::MAX),
            &Value::Long(i64::MAX - 1)
        ));
        // Doubles with decimals: within half a unit of the last decimal.
        assert!(same_value(
            &one_decimal,
            &Value::Double(21.5),
            &Value::Double(21.54)
        ));
        assert!(same_value(
            &one_decimal,
            &Value::Double(21.5),
            &Value::Double(21.55)
        ));
        assert!(same_value(
            &one_decimal,
            &Value::Double(21.5),
            &Value::Double(21.45)
        ));
        assert!(!same_value(
            &one_decimal,
            &Value::Double(21.5),
            &Value::Double(21.56)
        ));
        assert!(!same_value(
            &one_decimal,
            &Value::Double(21.5),
            &Value::Double(21.6)
        ));
        let none = FieldSpec {
            decimals: Some(0),
            ..spec(FieldType::Double)
        };
        assert!(same_value(&none, &Value::Double(21.0), &Value::Int(21)));
        assert!(same_value(&none, &Value::Double(21.4), &Value::Int(21)));
        assert!(!same_value(&none, &Value::Double(21.6), &Value::Int(21)));
        // Without decimals: relative 1e-9.
        assert!(same_value(
            &any,
            &Value::Double(0.1 + 0.2),
            &Value::Double(0.3)
        ));
        assert!(same_value(
            &any,
            &Value::Double(1e12),
            &Value::Double(1e12 + 1e2)
        ));
        assert!(!same_value(
            &any,
            &Value::Double(1e12),
            &Value::Double(1e12 + 1e4)
        ));
        assert!(!same_value(
            &any,
            &Value::Double(21.5),
            &Value::Double(21.51)
        ));
        assert!(same_value(&any, &Value::Double(0.0), &Value::Double(-0.0)));
        assert!(!same_value(
            &any,
            &Value::Double(f64::NAN),
            &Value::Double(f64::NAN)
        ));
        assert!(!same_value(
            &one_decimal,
            &Value::Double(f64::INFINITY),
            &Value::Double(f64::INFINITY)
        ));
        // Others exactly.
        let s = spec(FieldType::String);
        assert!(same_value(
            &s,
            &Value::String("a".into()),
            &Value::String("a".into())
        ));
        assert!(!same_value(
            &s,
            &Value::String("a".into()),
            &Value::String("A".into())
        ));
        assert!(same_value(
            &s,
            &Value::String("auto".into()),
            &Value::Enum("auto".into())
        ));
        assert!(same_value(&s, &Value::Bool(true), &Value::Bool(true)));
        assert!(!same_value(&s, &Value::Bool(true), &Value::Bool(false)));
        assert!(!same_value(&s, &Value::Bool(true), &Value::Int(1)));
        assert!(!same_value(&s, &Value::String("1".into()), &Value::Int(1)));
        // Times to the second.
        let t = spec(FieldType::Timestamp);
        let stamp = at(NOW) + Duration::from_millis(700);
        assert!(same_value(
            &t,
            &Value::Timestamp(stamp),
            &Value::Timestamp(at(NOW))
        ));
        assert!(!same_value(
            &t,
            &Value::Timestamp(stamp),
            &Value::Timestamp(at(NOW + 1))
        ));
    }

    // -- hostile input -------------------------------------------------------------------

    #[test]
    fn mangled_payloads_never_panic() {
        // Valid payloads with bytes overwritten, dropped and repeated, by a fixed
        // pseudo-random sequence (xorshift), through every decoder.
        let mut mode = json_field(FieldType::Enum, "/m");
        mode.labels = vec!["a".into()];
        let mut json_topic = topic(
            Format::Json,
            vec![
                json_field(FieldType::Bool, "/b"),
                json_field(FieldType::Int, "/i"),
                json_field(FieldType::Long, "/l/0"),
                json_field(FieldType::Double, "/d"),
                json_field(FieldType::String, "/s"),
                json_field(FieldType::Timestamp, "/t"),
                mode,
            ],
        );
        json_topic.timestamp = Some(TimestampSpec {
            pointer: ptr("/ts"),
            unit: TimeUnit::Millis,
        });
        let kinds = [
            FieldType::Bool,
            FieldType::Int,
            FieldType::Long,
            FieldType::Double,
            FieldType::String,
            FieldType::Timestamp,
        ];
        let senml_topic = topic(
            Format::Senml,
            kinds.iter().map(|k| senml_field(*k, "d:x")).collect(),
        );
        let plain_topic = topic(
            Format::Plain,
            kinds.iter().map(|k| field(*k, Locator::Whole)).collect(),
        );
        let availability = Availability {
            pointer: Some(ptr("/state")),
            online: "online".into(),
            offline: "offline".into(),
        };
        let seeds: [&[u8]; 4] = [
            br#"{"b":"ON","i":21,"l":[9007199254740993],"d":-2.5e3,"s":"h\u00e9","t":"2024-05-01T14:00:00+02:00","m":"a","ts":1714564800000}"#,
            br#"[{"bn":"d:","bt":1714564800,"bv":1,"n":"x","v":20.5,"t":-1},{"n":"x","vs":"1","t":2},{"n":"x","vb":true}]"#,
            b"2024-05-01T12:00:00.123456789Z",
            br#"{"state":"online"}"#,
        ];
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for round in 0..4000 {
            let mut payload = seeds[round % seeds.len()].to_vec();
            for _ in 0..(next() % 4 + 1) {
                let at = (next() as usize) % payload.len().max(1);
                let byte = next() as u8;
                match next() % 3 {
                    0 if !payload.is_empty() => payload[at] = byte,
                    1 if !payload.is_empty() => {
                        payload.remove(at);
                    }
                    _ => payload.insert(at, byte),
                }
            }
            for t in [&json_topic, &senml_topic, &plain_topic] {
                if let Ok(d) = t.decode(&payload, at(NOW)) {
                    for (_, value, stamp) in &d.values {
                        // Whatever is returned can be written out.
                        let _ = value.to_string();
                        assert!(in_range(*stamp).is_some());
                    }
                    for (_, e) in &d.errors {
                        assert!(e.to_string().len() < 400, "{e}");
                    }
                }
            }
            let _ = availability.decode(&payload);
        }
    }
}
