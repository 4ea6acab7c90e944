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
//!   whose name ends in `_` (an extension a receiver must understand), or a record with
//!   more than one value, is refused as a whole.
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
//! | `string`    | text as it is (a JSON string is not trimmed); a JSON number or boolean as its JSON text (`21.5`, `true`) |
//! | `enum`      | what `string` accepts, if it is exactly (letter case included) one of the field's labels |
//! | `timestamp` | an RFC 3339 time with `Z` or an offset (`2024-05-01T14:00:00+02:00`), or Unix seconds as a number or text (fractions allowed) |
//!
//! A whole-number field refuses a fraction (`21.5`) and a number beyond its range rather
//! than round or clip it. Times must fall within the years 1970 to 9999.
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
use serde::Deserialize;
use serde_json::{Map, Number, Value as Json};

/// The most bytes of a payload an error message quotes.
const QUOTE_MAX: usize = 64;

/// The first second of year 10000, in Unix seconds: times are kept below it, where they
/// can still be written as RFC 3339.
const END_OF_TIME: u64 = 253_402_300_800;

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

    /// The value the pointer refers to in `doc`, if there is one.
    pub fn resolve<'a>(&self, doc: &'a Json) -> Option<&'a Json> {
        self.tokens.iter().try_fold(doc, |node, token| match node {
            Json::Object(map) => map.get(token.key.as_str()),
            Json::Array(items) => token.index.and_then(|i| items.get(i)),
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
        let doc: Json = serde_json::from_slice(payload).map_err(json_error)?;
        let stamp = match &self.timestamp {
            Some(spec) => spec.read(&doc)?.unwrap_or(arrival),
            None => arrival,
        };
        for (i, field) in self.fields.iter().enumerate() {
            let found = match &field.locator {
                Locator::Whole => Some(&doc),
                Locator::Pointer(p) => p.resolve(&doc),
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

        // Each field's latest record: (record, its resolved time, that time on the scale
        // of absolute times, the base value then).
        let mut latest: Vec<Option<(&senml::Record, f64, f64, Option<&Number>)>> =
            vec![None; self.fields.len()];
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
                let full = bn.len() + n.len() == name.len()
                    && name.starts_with(bn)
                    && name.ends_with(n);
                if !(own || full) {
                    continue;
                }
                // `>=`: of records with the same time, the last in the pack.
                if slot.is_none_or(|(_, _, latest, _)| order >= latest) {
                    *slot = Some((record, time, order, bv));
                }
            }
        }

        for (i, (field, slot)) in self.fields.iter().zip(latest).enumerate() {
            if !field.locator.fits(Format::Senml) {
                out.errors.push((i, misplaced(&field.locator, self.format)));
                continue;
            }
            let Some((record, time, _, bv)) = slot else {
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
                Some(senml::RecordValue::Text(s) | senml::RecordValue::Data(s)) => {
                    Scalar::Text(s)
                }
                Some(senml::RecordValue::Bool(b)) => Scalar::Bool(*b),
                None => continue,
            };
            out.put(i, field.convert(scalar), stamp);
        }
        Ok(())
    }
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
    fn read(&self, doc: &Json) -> Result<Option<SystemTime>, DecodeError> {
        let bad = |reason: String| DecodeError::BadTime {
            at: self.pointer.place(),
            reason,
        };
        match self.pointer.resolve(doc) {
            None | Some(Json::Null) => Ok(None),
            Some(Json::Number(n)) => number_time(n, self.unit).map(Some).map_err(bad),
            Some(Json::String(s)) => text_time(s, self.unit).map(Some).map_err(bad),
            Some(other) => Err(bad(format!("expected a time, got {}", kind_of(other)))),
        }
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
    fn of(json: &'a Json) -> Option<Self> {
        Some(match json {
            Json::Null => return None,
            Json::Bool(b) => Scalar::Bool(*b),
            Json::Number(n) => Scalar::Num(n),
            Json::String(s) => Scalar::Text(s),
            Json::Array(_) => Scalar::Composite("an array"),
            Json::Object(_) => Scalar::Composite("an object"),
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
            Some(v) if v == 0.0 => Ok(false),
            Some(v) if v == 1.0 => Ok(true),
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
        } else {
            // Saturating: a float beyond i128 is out of any range anyway.
            within(v as i128, shown)
        }
    };
    match found {
        Scalar::Num(n) => {
            let shown = || n.to_string();
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
            let shown = || quoted(s);
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
    let (v, shown) = match found {
        Scalar::Num(n) => (n.as_f64(), n.to_string()),
        Scalar::Text(s) => {
            let s = s.trim_ascii();
            (s.parse::<f64>().ok(), quoted(s))
        }
        _ => (None, String::new()),
    };
    match v {
        Some(v) if v.is_finite() => Ok(v),
        Some(_) => Err(Misfit::NotFinite(shown)),
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
        return number_time(&n, unit).map_err(|_| format!("{} is before 1970 or after 9999", quoted(s)));
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

fn kind_of(json: &Json) -> &'static str {
    match json {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "an array",
        Json::Object(_) => "an object",
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
    bounded(text.strip_suffix(&suffix).unwrap_or(&text), 2 * QUOTE_MAX)
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
            Some(pointer) => match serde_json::from_slice::<Json>(payload) {
                Ok(doc) => {
                    json = doc;
                    match pointer.resolve(&json)? {
                        Json::String(s) => Cow::Borrowed(s.as_bytes()),
                        Json::Bool(true) => Cow::Borrowed(b"true"),
                        Json::Bool(false) => Cow::Borrowed(b"false"),
                        Json::Number(n) => Cow::Owned(n.to_string().into_bytes()),
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
        (Timestamp(a), Timestamp(b)) => match (a.duration_since(UNIX_EPOCH), b.duration_since(UNIX_EPOCH)) {
            (Ok(a), Ok(b)) => a.as_secs() == b.as_secs(),
            _ => a == b,
        },
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
