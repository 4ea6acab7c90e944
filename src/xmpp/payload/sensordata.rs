//! XEP-0323 sensor data (`urn:xmpp:iot:sensordata`, v0.6): the read-out request `<req/>`,
//! its answers `<accepted/>`, `<started/>`, `<fields/>`, `<failure/>`, `<done/>`, and the
//! cancellation pair `<cancel/>` / `<cancelled/>`.
//!
//! Flow: iq get `<req/>` → iq result `<accepted/>` → (queued) message `<started/>` →
//! messages `<fields/>` / `<failure/>` → `done='true'` on the last one or a `<done/>`.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use tokio_xmpp::minidom::Element;

use super::common::{
    check_element, flag, optional, parse_boolean, parse_int, parse_long, parsed, put_flag,
    required, required_parsed, seqnr, try_from_owned, FieldQos, FieldTypes, NodeRef, ParseError,
    Tokens, ValueError,
};
use super::xsd::{format_duration, is_decimal_lexical, parse_duration, XsDate, XsDateTime, XsTime};
use crate::xmpp::stanza::BuilderExt;

/// The XEP-0323 namespace.
pub const NS: &str = "urn:xmpp:iot:sensordata";

/// The names of the ten field elements, for error messages.
const FIELD_ELEMENTS: &str = "boolean|date|dateTime|duration|enum|int|long|numeric|string|time";

/// A read-out request, `<req/>` (iq get). Flags, nodes and field names are hints: the
/// device may return more.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Req {
    /// Sequence number chosen by the client; unique per client only, so a read-out is
    /// keyed by (requester full JID, seqnr).
    pub seqnr: u64,
    /// Requested field types (a union).
    pub types: FieldTypes,
    /// `all='true'`: every field type.
    pub all: bool,
    /// `historical='true'`: every historical field type.
    pub historical: bool,
    /// `from`: oldest historical value wanted.
    pub from: Option<XsDateTime>,
    /// `to`: newest historical value wanted.
    pub to: Option<XsDateTime>,
    /// `when`: perform the read-out at this time (the answer is then `queued`).
    pub when: Option<XsDateTime>,
    /// XEP-0324 provisioning tokens.
    pub tokens: Tokens,
    /// `<node/>` children: the nodes to read (empty: the device itself).
    pub nodes: Vec<NodeRef>,
    /// `<field name/>` children: the field names wanted (empty: all).
    pub fields: Vec<String>,
}

impl Req {
    /// A request for `types` with no other restriction.
    pub fn new(seqnr: u64, types: FieldTypes) -> Req {
        Req {
            seqnr,
            types,
            all: false,
            historical: false,
            from: None,
            to: None,
            when: None,
            tokens: Tokens::default(),
            nodes: vec![],
            fields: vec![],
        }
    }

    /// The field types to return: the flags with `all` and `historical` expanded, and a
    /// request naming no type read as a request for every type.
    pub fn requested_types(&self) -> FieldTypes {
        self.types.requested(self.all, self.historical)
    }
}

impl TryFrom<&Element> for Req {
    type Error = ParseError;

    fn try_from(el: &Element) -> Result<Req, ParseError> {
        check_element(el, "req", NS)?;
        let mut nodes = vec![];
        let mut fields = vec![];
        for child in el.children().filter(|c| c.ns() == NS) {
            match child.name() {
                "node" => nodes.push(NodeRef::parse(child, "node")?),
                "field" => fields.push(required(child, "field", "name")?.to_owned()),
                other => {
                    return Err(ParseError::UnexpectedChild {
                        parent: "req",
                        child: other.to_owned(),
                    })
                }
            }
        }
        let dt = |a| parsed(el, "req", a, XsDateTime::from_str);
        Ok(Req {
            seqnr: seqnr(el, "req")?,
            types: FieldTypes::parse(el, "req")?,
            all: flag(el, "req", "all")?,
            historical: flag(el, "req", "historical")?,
            from: dt("from")?,
            to: dt("to")?,
            when: dt("when")?,
            tokens: Tokens::parse(el),
            nodes,
            fields,
        })
    }
}

impl From<Req> for Element {
    fn from(r: Req) -> Element {
        let mut b = Element::builder("req", NS).a("seqnr", r.seqnr);
        b = r.types.write(b);
        b = put_flag(b, "all", r.all);
        b = put_flag(b, "historical", r.historical);
        b = b
            .a("from", r.from.map(|t| t.to_string()))
            .a("to", r.to.map(|t| t.to_string()))
            .a("when", r.when.map(|t| t.to_string()));
        b = r.tokens.write(b);
        b.append_all(r.nodes.iter().map(|n| n.to_element(NS)))
            .append_all(
                r.fields
                    .iter()
                    .map(|f| Element::builder("field", NS).a("name", f.as_str()).build()),
            )
            .build()
    }
}

/// Declares a payload that is only a `seqnr`.
macro_rules! seqnr_payload {
    ($(#[$meta:meta])* $t:ident, $name:literal) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub struct $t {
            /// The sequence number of the request this belongs to.
            pub seqnr: u64,
        }

        impl $t {
            /// The payload for `seqnr`.
            pub fn new(seqnr: u64) -> $t {
                $t { seqnr }
            }
        }

        impl TryFrom<&Element> for $t {
            type Error = ParseError;

            fn try_from(el: &Element) -> Result<$t, ParseError> {
                check_element(el, $name, NS)?;
                Ok($t { seqnr: seqnr(el, $name)? })
            }
        }

        impl From<$t> for Element {
            fn from(p: $t) -> Element {
                Element::builder($name, NS).a("seqnr", p.seqnr).build()
            }
        }
    };
}

seqnr_payload!(
    /// `<started/>` (message): a queued read-out has begun.
    Started,
    "started"
);
seqnr_payload!(
    /// `<done/>` (message): the read-out is complete (alternative to `done='true'`; slixmpp
    /// only honours the attribute).
    Done,
    "done"
);
seqnr_payload!(
    /// `<cancel/>` (iq get): cancel a queued or running read-out.
    Cancel,
    "cancel"
);
seqnr_payload!(
    /// `<cancelled/>` (iq result): the answer to `<cancel/>`.
    Cancelled,
    "cancelled"
);

/// `<accepted/>` (iq result): the request was accepted; `queued` when it runs later
/// (a `<started/>` follows when it begins).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Accepted {
    /// The request's sequence number.
    pub seqnr: u64,
    /// `queued='true'`: the read-out is scheduled, not running.
    pub queued: bool,
}

impl Accepted {
    /// An immediate (not queued) acceptance.
    pub fn new(seqnr: u64) -> Accepted {
        Accepted {
            seqnr,
            queued: false,
        }
    }
}

impl TryFrom<&Element> for Accepted {
    type Error = ParseError;

    fn try_from(el: &Element) -> Result<Accepted, ParseError> {
        check_element(el, "accepted", NS)?;
        Ok(Accepted {
            seqnr: seqnr(el, "accepted")?,
            queued: flag(el, "accepted", "queued")?,
        })
    }
}

impl From<Accepted> for Element {
    fn from(a: Accepted) -> Element {
        put_flag(
            Element::builder("accepted", NS).a("seqnr", a.seqnr),
            "queued",
            a.queued,
        )
        .build()
    }
}

/// A numeric field value as written: an xs:double lexical form whose number of decimals is
/// part of the value (`10.00` ≠ `10`: the precision of the reading). Equality is textual.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NumericValue(String);

impl NumericValue {
    /// `value` written with exactly `decimals` digits after the point (`4.2`, 2 → `4.20`);
    /// NaN and the infinities become `NaN`, `INF`, `-INF`.
    pub fn new(value: f64, decimals: u8) -> NumericValue {
        if value.is_nan() {
            NumericValue("NaN".into())
        } else if value.is_infinite() {
            NumericValue(if value > 0.0 { "INF" } else { "-INF" }.into())
        } else {
            NumericValue(format!("{value:.*}", usize::from(decimals)))
        }
    }

    /// The text as it will be written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The number.
    pub fn as_f64(&self) -> f64 {
        super::xsd::parse_double(&self.0).unwrap_or(f64::NAN)
    }

    /// The digits after the decimal point of the mantissa (`4.20` → 2, `12345` → 0,
    /// `1.5E3` → 1).
    pub fn decimals(&self) -> u8 {
        let mantissa = self.0.split(['e', 'E']).next().unwrap_or("");
        match mantissa.split_once('.') {
            Some((_, frac)) => u8::try_from(frac.len()).unwrap_or(u8::MAX),
            None => 0,
        }
    }
}

impl FromStr for NumericValue {
    type Err = ValueError;

    /// Accepts the xs:double lexical space (trimmed), keeping the text as it is.
    fn from_str(s: &str) -> Result<NumericValue, ValueError> {
        let t = s.trim();
        if matches!(t, "INF" | "+INF" | "-INF" | "NaN") || is_decimal_lexical(t) {
            Ok(NumericValue(t.to_owned()))
        } else {
            Err(ValueError::Double)
        }
    }
}

impl fmt::Display for NumericValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The typed value of a field; the variant decides the element name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldValue {
    /// `<numeric value unit/>`: a number with its precision and a unit (may be empty).
    Numeric {
        /// The value, decimals preserved.
        value: NumericValue,
        /// The physical unit (`°C`, `bar`, ...); empty for unitless values.
        unit: String,
    },
    /// `<boolean value/>`.
    Boolean(bool),
    /// `<date value/>`.
    Date(XsDate),
    /// `<dateTime value/>`.
    DateTime(XsDateTime),
    /// `<duration value/>`.
    Duration(Duration),
    /// `<enum value dataType/>`.
    Enum {
        /// The enumeration value.
        value: String,
        /// Identifies the enumeration type.
        data_type: String,
    },
    /// `<int value/>` (32-bit).
    Int(i32),
    /// `<long value/>` (64-bit).
    Long(i64),
    /// `<string value/>`.
    String(String),
    /// `<time value/>`.
    Time(XsTime),
}

impl FieldValue {
    /// The element name of this field type.
    pub fn element_name(&self) -> &'static str {
        match self {
            FieldValue::Numeric { .. } => "numeric",
            FieldValue::Boolean(_) => "boolean",
            FieldValue::Date(_) => "date",
            FieldValue::DateTime(_) => "dateTime",
            FieldValue::Duration(_) => "duration",
            FieldValue::Enum { .. } => "enum",
            FieldValue::Int(_) => "int",
            FieldValue::Long(_) => "long",
            FieldValue::String(_) => "string",
            FieldValue::Time(_) => "time",
        }
    }

    /// A numeric value with `decimals` digits after the point and a unit.
    pub fn numeric(value: f64, decimals: u8, unit: impl Into<String>) -> FieldValue {
        FieldValue::Numeric {
            value: NumericValue::new(value, decimals),
            unit: unit.into(),
        }
    }

    /// The `value` attribute as written.
    pub fn value_text(&self) -> String {
        match self {
            FieldValue::Numeric { value, .. } => value.to_string(),
            FieldValue::Boolean(v) => v.to_string(),
            FieldValue::Date(v) => v.to_string(),
            FieldValue::DateTime(v) => v.to_string(),
            FieldValue::Duration(v) => format_duration(*v),
            FieldValue::Enum { value, .. } => value.clone(),
            FieldValue::Int(v) => v.to_string(),
            FieldValue::Long(v) => v.to_string(),
            FieldValue::String(v) => v.clone(),
            FieldValue::Time(v) => v.to_string(),
        }
    }
}

/// One field of sensor data: a named, typed value with its field types, quality of service
/// and localisation hints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    /// `name` (unlocalised).
    pub name: String,
    /// The value; its variant is the element name.
    pub value: FieldValue,
    /// The field types (an intersection: all apply).
    pub types: FieldTypes,
    /// The quality-of-service flags (none set means automaticReadout).
    pub qos: FieldQos,
    /// `writable`: whether a control parameter of the same name exists (`None`: unknown).
    pub writable: Option<bool>,
    /// `module`: the language module of `string_ids`.
    pub module: Option<String>,
    /// `stringIds`: localisation steps `ID[|module][|seed],...`, kept as text.
    pub string_ids: Option<String>,
    /// `localizationSeed` (not in the v0.6 schema; older drafts had it), kept as text.
    pub localization_seed: Option<String>,
}

impl Field {
    /// A field with no types, `automaticReadout` quality and no localisation.
    pub fn new(name: impl Into<String>, value: FieldValue) -> Field {
        Field {
            name: name.into(),
            value,
            types: FieldTypes::empty(),
            qos: FieldQos::AUTOMATIC_READOUT,
            writable: None,
            module: None,
            string_ids: None,
            localization_seed: None,
        }
    }

    /// This field with `types`.
    pub fn with_types(mut self, types: FieldTypes) -> Field {
        self.types = types;
        self
    }

    /// This field with `qos`.
    pub fn with_qos(mut self, qos: FieldQos) -> Field {
        self.qos = qos;
        self
    }

    /// This field with `writable` set.
    pub fn with_writable(mut self, writable: bool) -> Field {
        self.writable = Some(writable);
        self
    }
}

impl TryFrom<&Element> for Field {
    type Error = ParseError;

    fn try_from(el: &Element) -> Result<Field, ParseError> {
        if el.ns() != NS {
            return Err(ParseError::WrongElement {
                expected: FIELD_ELEMENTS,
                expected_ns: NS,
                name: el.name().to_owned(),
                ns: el.ns(),
            });
        }
        // The element name, as a static string for error messages.
        let e: &'static str = match el.name() {
            "numeric" => "numeric",
            "boolean" => "boolean",
            "date" => "date",
            "dateTime" => "dateTime",
            "duration" => "duration",
            "enum" => "enum",
            "int" => "int",
            "long" => "long",
            "string" => "string",
            "time" => "time",
            other => return Err(ParseError::UnknownFieldType(other.to_owned())),
        };
        let value = match e {
            "numeric" => FieldValue::Numeric {
                value: required_parsed(el, e, "value", NumericValue::from_str)?,
                unit: required(el, e, "unit")?.to_owned(),
            },
            "boolean" => FieldValue::Boolean(required_parsed(el, e, "value", parse_boolean)?),
            "date" => FieldValue::Date(required_parsed(el, e, "value", XsDate::from_str)?),
            "dateTime" => {
                FieldValue::DateTime(required_parsed(el, e, "value", XsDateTime::from_str)?)
            }
            "duration" => FieldValue::Duration(required_parsed(el, e, "value", parse_duration)?),
            "enum" => FieldValue::Enum {
                value: required(el, e, "value")?.to_owned(),
                data_type: required(el, e, "dataType")?.to_owned(),
            },
            "int" => FieldValue::Int(required_parsed(el, e, "value", parse_int)?),
            "long" => FieldValue::Long(required_parsed(el, e, "value", parse_long)?),
            "string" => FieldValue::String(required(el, e, "value")?.to_owned()),
            _ => FieldValue::Time(required_parsed(el, e, "value", XsTime::from_str)?),
        };
        Ok(Field {
            name: required(el, e, "name")?.to_owned(),
            value,
            types: FieldTypes::parse(el, e)?,
            qos: FieldQos::parse(el, e)?,
            writable: parsed(el, e, "writable", parse_boolean)?,
            module: optional(el, "module"),
            string_ids: optional(el, "stringIds"),
            localization_seed: optional(el, "localizationSeed"),
        })
    }
}

impl From<Field> for Element {
    fn from(f: Field) -> Element {
        let mut b = Element::builder(f.value.element_name(), NS)
            .a("name", f.name)
            .a("value", f.value.value_text());
        match f.value {
            FieldValue::Numeric { unit, .. } => b = b.a("unit", unit),
            FieldValue::Enum { data_type, .. } => b = b.a("dataType", data_type),
            _ => {}
        }
        b = f.types.write(b);
        b = f.qos.write(b);
        b.a("writable", f.writable.map(|w| w.to_string()))
            .a("module", f.module)
            .a("stringIds", f.string_ids)
            .a("localizationSeed", f.localization_seed)
            .build()
    }
}

impl Field {
    /// Appends the field as XML text (in the sensor-data namespace, which its parent
    /// declares): what `Element::from(self)` would write, without building the element.
    pub fn write_text(&self, out: &mut String) {
        use crate::xmpp::stanza_text::{push_attr, push_attr_display};
        out.push('<');
        out.push_str(self.value.element_name());
        push_attr(out, "name", &self.name);
        match &self.value {
            FieldValue::Numeric { value, unit } => {
                push_attr(out, "value", value.as_str());
                push_attr(out, "unit", unit);
            }
            FieldValue::Enum { value, data_type } => {
                push_attr(out, "value", value);
                push_attr(out, "dataType", data_type);
            }
            FieldValue::Boolean(v) => push_attr_display(out, "value", v),
            FieldValue::Int(v) => push_attr_display(out, "value", v),
            FieldValue::Long(v) => push_attr_display(out, "value", v),
            FieldValue::String(v) => push_attr(out, "value", v),
            other => push_attr(out, "value", &other.value_text()),
        }
        for (name, t) in FieldTypes::ATTRIBUTES {
            if self.types.contains(t) {
                push_attr_display(out, name, "true");
            }
        }
        for (name, q) in FieldQos::ATTRIBUTES {
            if self.qos.contains(q) {
                push_attr_display(out, name, "true");
            }
        }
        if let Some(w) = self.writable {
            push_attr_display(out, "writable", w);
        }
        for (name, v) in [
            ("module", &self.module),
            ("stringIds", &self.string_ids),
            ("localizationSeed", &self.localization_seed),
        ] {
            if let Some(v) = v {
                push_attr(out, name, v);
            }
        }
        out.push_str("/>");
    }
}

/// `<timestamp value/>`: the fields sampled at one instant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timestamp {
    /// `value`: when the fields were sampled.
    pub value: XsDateTime,
    /// The fields, in document order.
    pub fields: Vec<Field>,
}

impl Timestamp {
    /// Fields sampled at `value`.
    pub fn new(value: XsDateTime, fields: Vec<Field>) -> Timestamp {
        Timestamp { value, fields }
    }

    fn parse(el: &Element) -> Result<Timestamp, ParseError> {
        Ok(Timestamp {
            value: required_parsed(el, "timestamp", "value", XsDateTime::from_str)?,
            fields: el
                .children()
                .filter(|c| c.ns() == NS)
                .map(Field::try_from)
                .collect::<Result<_, _>>()?,
        })
    }

    fn into_element(self) -> Element {
        Element::builder("timestamp", NS)
            .a("value", self.value.to_string())
            .append_all(self.fields.into_iter().map(Element::from))
            .build()
    }
}

/// `<node/>` inside `<fields/>`: one node's timestamps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeData {
    /// Which node (`nodeId`, `sourceId`, `cacheType`).
    pub node: NodeRef,
    /// Its timestamps, in document order.
    pub timestamps: Vec<Timestamp>,
}

impl NodeData {
    /// The node with its timestamps.
    pub fn new(node: NodeRef, timestamps: Vec<Timestamp>) -> NodeData {
        NodeData { node, timestamps }
    }

    fn parse(el: &Element) -> Result<NodeData, ParseError> {
        let mut timestamps = vec![];
        for child in el.children().filter(|c| c.ns() == NS) {
            if child.name() != "timestamp" {
                return Err(ParseError::UnexpectedChild {
                    parent: "node",
                    child: child.name().to_owned(),
                });
            }
            timestamps.push(Timestamp::parse(child)?);
        }
        Ok(NodeData {
            node: NodeRef::parse(el, "node")?,
            timestamps,
        })
    }

    fn into_element(self) -> Element {
        self.node
            .write(Element::builder("node", NS))
            .append_all(self.timestamps.into_iter().map(Timestamp::into_element))
            .build()
    }
}

/// `<fields/>` (message): read-out data; `done` on the last message of a read-out (or of an
/// event, for subscriptions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fields {
    /// The request's sequence number.
    pub seqnr: u64,
    /// `done='true'`: this message ends the read-out.
    pub done: bool,
    /// The nodes read, in document order.
    pub nodes: Vec<NodeData>,
}

impl Fields {
    /// One node's fields sampled at one instant, in a single message.
    pub fn single(
        seqnr: u64,
        node: NodeRef,
        timestamp: XsDateTime,
        fields: Vec<Field>,
        done: bool,
    ) -> Fields {
        Fields {
            seqnr,
            done,
            nodes: vec![NodeData::new(node, vec![Timestamp::new(timestamp, fields)])],
        }
    }
}

impl TryFrom<&Element> for Fields {
    type Error = ParseError;

    fn try_from(el: &Element) -> Result<Fields, ParseError> {
        check_element(el, "fields", NS)?;
        let mut nodes = vec![];
        for child in el.children().filter(|c| c.ns() == NS) {
            if child.name() != "node" {
                return Err(ParseError::UnexpectedChild {
                    parent: "fields",
                    child: child.name().to_owned(),
                });
            }
            nodes.push(NodeData::parse(child)?);
        }
        Ok(Fields {
            seqnr: seqnr(el, "fields")?,
            done: flag(el, "fields", "done")?,
            nodes,
        })
    }
}

impl From<Fields> for Element {
    fn from(f: Fields) -> Element {
        put_flag(
            Element::builder("fields", NS).a("seqnr", f.seqnr),
            "done",
            f.done,
        )
        .append_all(f.nodes.into_iter().map(NodeData::into_element))
        .build()
    }
}

/// `<error nodeId timestamp>text</error>` inside `<failure/>`: why a node could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadoutError {
    /// The node that failed.
    pub node: NodeRef,
    /// When it failed. (The schema types this xs:string; every example uses xs:dateTime,
    /// which is what we require and write.)
    pub timestamp: XsDateTime,
    /// Human-readable reason.
    pub message: String,
}

impl ReadoutError {
    /// An error for `node` at `timestamp`.
    pub fn new(node: NodeRef, timestamp: XsDateTime, message: impl Into<String>) -> ReadoutError {
        ReadoutError {
            node,
            timestamp,
            message: message.into(),
        }
    }
}

/// `<failure/>` (message): read-out errors; `done` when it ends the read-out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The request's sequence number.
    pub seqnr: u64,
    /// `done='true'`: this message ends the read-out.
    pub done: bool,
    /// The errors, in document order.
    pub errors: Vec<ReadoutError>,
}

impl Failure {
    /// One node's error in a single message.
    pub fn single(
        seqnr: u64,
        node: NodeRef,
        timestamp: XsDateTime,
        message: impl Into<String>,
        done: bool,
    ) -> Failure {
        Failure {
            seqnr,
            done,
            errors: vec![ReadoutError::new(node, timestamp, message)],
        }
    }
}

impl TryFrom<&Element> for Failure {
    type Error = ParseError;

    fn try_from(el: &Element) -> Result<Failure, ParseError> {
        check_element(el, "failure", NS)?;
        let mut errors = vec![];
        for child in el.children().filter(|c| c.ns() == NS) {
            if child.name() != "error" {
                return Err(ParseError::UnexpectedChild {
                    parent: "failure",
                    child: child.name().to_owned(),
                });
            }
            errors.push(ReadoutError {
                node: NodeRef::parse(child, "error")?,
                timestamp: required_parsed(child, "error", "timestamp", XsDateTime::from_str)?,
                message: child.text(),
            });
        }
        Ok(Failure {
            seqnr: seqnr(el, "failure")?,
            done: flag(el, "failure", "done")?,
            errors,
        })
    }
}

impl From<Failure> for Element {
    fn from(f: Failure) -> Element {
        put_flag(
            Element::builder("failure", NS).a("seqnr", f.seqnr),
            "done",
            f.done,
        )
        .append_all(f.errors.into_iter().map(|e| {
            e.node
                .write(Element::builder("error", NS))
                .a("timestamp", e.timestamp.to_string())
                .append(e.message)
                .build()
        }))
        .build()
    }
}

try_from_owned!(Req, Started, Done, Cancel, Cancelled, Accepted, Field, Fields, Failure);

#[cfg(test)]
mod tests {
    use super::*;

    fn el(xml: &str) -> Element {
        xml.parse().unwrap()
    }

    /// Parses `xml` as `T`, writes it back and checks the element is unchanged.
    fn round_trip<T>(xml: &str) -> T
    where
        T: TryFrom<Element, Error = ParseError> + Into<Element> + Clone + fmt::Debug + PartialEq,
    {
        let original = el(xml);
        let parsed = T::try_from(original.clone()).unwrap();
        let written: Element = parsed.clone().into();
        assert_eq!(written, original, "{xml}");
        assert_eq!(T::try_from(written).unwrap(), parsed);
        parsed
    }

    fn dt(s: &str) -> XsDateTime {
        s.parse().unwrap()
    }

    #[test]
    fn spec_request_examples() {
        // §3.1 read-out of momentary values.
        let r = Req::try_from(el(
            "<req xmlns='urn:xmpp:iot:sensordata' seqnr='1' momentary='true'/>",
        ))
        .unwrap();
        assert_eq!(r, Req::new(1, FieldTypes::MOMENTARY));
        assert_eq!(r.requested_types(), FieldTypes::MOMENTARY);

        // §3.4 read-out all, scheduled.
        let r = Req::try_from(el(
            "<req xmlns='urn:xmpp:iot:sensordata' seqnr='4' all='true' when='2013-03-07T19:00:00'/>",
        ))
        .unwrap();
        assert!(r.all && r.types.is_empty());
        assert_eq!(r.when, Some(dt("2013-03-07T19:00:00")));
        assert_eq!(r.requested_types(), FieldTypes::all());

        // §3.6 specific nodes and fields, with whitespace between children.
        let r = Req::try_from(el(
            "<req xmlns='urn:xmpp:iot:sensordata' seqnr='6' momentary='true'>
                <node nodeId='Device04'/>
                <field name='Energy'/>
                <field name='Power'/>
              </req>",
        ))
        .unwrap();
        assert_eq!(r.nodes, vec![NodeRef::new("Device04")]);
        assert_eq!(r.fields, vec!["Energy".to_owned(), "Power".to_owned()]);
    }

    #[test]
    fn requests_round_trip() {
        let r: Req = round_trip(
            "<req xmlns='urn:xmpp:iot:sensordata' seqnr='17' momentary='true' \
             historicalDay='true' historical='true' from='2026-11-20T00:00:00Z' \
             to='2026-11-21T00:00:00+01:00' when='2026-11-21T20:15:03.250Z' \
             serviceToken='s' deviceToken='d' userToken='u'>\
             <node nodeId='pump3' sourceId='MeteringTopology' cacheType='Pump'/>\
             <node nodeId='pump4'/><field name='Pressure'/></req>",
        );
        assert_eq!(r.tokens.user_token.as_deref(), Some("u"));
        assert_eq!(r.nodes[0].source_id.as_deref(), Some("MeteringTopology"));
        let built = Req {
            all: true,
            from: Some(dt("2013-03-07T16:00:00Z")),
            nodes: vec![NodeRef::new("n1")],
            fields: vec!["Temperature".into()],
            ..Req::new(u64::MAX, FieldTypes::IDENTITY)
        };
        assert_eq!(Req::try_from(Element::from(built.clone())).unwrap(), built);
    }

    #[test]
    fn identification_is_accepted_and_written_as_identity() {
        let r = Req::try_from(el(
            "<req xmlns='urn:xmpp:iot:sensordata' seqnr='2' identification='true'/>",
        ))
        .unwrap();
        assert!(r.types.contains(FieldTypes::IDENTITY));
        assert_eq!(
            Element::from(r),
            el("<req xmlns='urn:xmpp:iot:sensordata' seqnr='2' identity='true'/>")
        );
        let f = Field::try_from(el(
            "<string xmlns='urn:xmpp:iot:sensordata' name='Device ID' identification='true' \
             automaticReadout='true' value='Device01'/>",
        ))
        .unwrap();
        assert!(f.types.contains(FieldTypes::IDENTITY));
        assert_eq!(Element::from(f).attr("identity"), Some("true"));
    }

    #[test]
    fn invalid_requests_are_refused_precisely() {
        let err = |xml: &str| Req::try_from(el(xml)).unwrap_err();
        assert_eq!(
            err("<req xmlns='urn:xmpp:iot:sensordata' momentary='true'/>"),
            ParseError::MissingAttribute {
                element: "req",
                attribute: "seqnr"
            }
        );
        assert_eq!(
            err("<req xmlns='urn:xmpp:iot:sensordata' seqnr='x7'/>"),
            ParseError::InvalidAttribute {
                element: "req",
                attribute: "seqnr",
                value: "x7".into(),
                reason: ValueError::Unsigned
            }
        );
        assert_eq!(
            err("<req xmlns='urn:xmpp:iot:sensordata' seqnr='1' momentary='yes'/>").to_string(),
            "<req/> has an invalid momentary='yes': expected xs:boolean: 'true', 'false', '1' or '0'"
        );
        assert_eq!(
            err("<req xmlns='urn:xmpp:iot:sensordata' seqnr='1' from='yesterday'/>"),
            ParseError::InvalidAttribute {
                element: "req",
                attribute: "from",
                value: "yesterday".into(),
                reason: ValueError::DateTime("the year must have four digits")
            }
        );
        assert_eq!(
            err("<req xmlns='urn:xmpp:iot:sensordata' seqnr='1' when='2013-02-30T00:00:00'/>")
                .to_string(),
            "<req/> has an invalid when='2013-02-30T00:00:00': expected xs:dateTime \
             (YYYY-MM-DDThh:mm:ss[.fff][Z|±hh:mm]): that day does not exist in that month"
        );
        assert_eq!(
            err("<req xmlns='urn:xmpp:iot:sensordata' seqnr='1'><node/></req>"),
            ParseError::MissingAttribute {
                element: "node",
                attribute: "nodeId"
            }
        );
        assert_eq!(
            err("<req xmlns='urn:xmpp:iot:sensordata' seqnr='1'><field/></req>"),
            ParseError::MissingAttribute {
                element: "field",
                attribute: "name"
            }
        );
        assert_eq!(
            err("<req xmlns='urn:xmpp:iot:sensordata' seqnr='1'><nodes/></req>"),
            ParseError::UnexpectedChild {
                parent: "req",
                child: "nodes".into()
            }
        );
        assert_eq!(
            err("<req xmlns='urn:xmpp:iot:control' seqnr='1'/>").to_string(),
            "expected <req xmlns='urn:xmpp:iot:sensordata'/>, found <req xmlns='urn:xmpp:iot:control'/>"
        );
        // Foreign-namespace children are extensions and are ignored.
        let r = Req::try_from(el(
            "<req xmlns='urn:xmpp:iot:sensordata' seqnr='1'><x xmlns='urn:example'/></req>",
        ))
        .unwrap();
        assert!(r.nodes.is_empty() && r.fields.is_empty());
    }

    #[test]
    fn small_payloads_round_trip() {
        assert_eq!(
            round_trip::<Accepted>("<accepted xmlns='urn:xmpp:iot:sensordata' seqnr='1'/>"),
            Accepted::new(1)
        );
        assert!(
            round_trip::<Accepted>(
                "<accepted xmlns='urn:xmpp:iot:sensordata' seqnr='4' queued='true'/>"
            )
            .queued
        );
        assert_eq!(
            round_trip::<Started>("<started xmlns='urn:xmpp:iot:sensordata' seqnr='4'/>"),
            Started::new(4)
        );
        assert_eq!(
            round_trip::<Done>("<done xmlns='urn:xmpp:iot:sensordata' seqnr='4'/>"),
            Done::new(4)
        );
        assert_eq!(
            round_trip::<Cancel>("<cancel xmlns='urn:xmpp:iot:sensordata' seqnr='8'/>"),
            Cancel::new(8)
        );
        assert_eq!(
            round_trip::<Cancelled>("<cancelled xmlns='urn:xmpp:iot:sensordata' seqnr='8'/>"),
            Cancelled::new(8)
        );
        // `queued='false'` parses; the default is not written.
        let a = Accepted::try_from(el(
            "<accepted xmlns='urn:xmpp:iot:sensordata' seqnr='2' queued='false'/>",
        ))
        .unwrap();
        assert!(!a.queued);
        assert!(matches!(
            Done::try_from(el("<done xmlns='urn:xmpp:iot:sensordata'/>")),
            Err(ParseError::MissingAttribute {
                element: "done",
                attribute: "seqnr"
            })
        ));
        assert!(matches!(
            Cancel::try_from(el("<cancelled xmlns='urn:xmpp:iot:sensordata' seqnr='1'/>")),
            Err(ParseError::WrongElement {
                expected: "cancel",
                ..
            })
        ));
        assert!(matches!(
            Accepted::try_from(el(
                "<accepted xmlns='urn:xmpp:iot:sensordata' seqnr='1' queued='maybe'/>"
            )),
            Err(ParseError::InvalidAttribute {
                attribute: "queued",
                ..
            })
        ));
    }

    #[test]
    fn spec_fields_examples() {
        // §3.4, second and third messages (the spec's "..." line removed).
        let f = Fields::try_from(el("<fields xmlns='urn:xmpp:iot:sensordata' seqnr='4'>
                <node nodeId='Device01'>
                  <timestamp value='2013-03-07T19:00:00'>
                    <numeric name='Temperature' momentary='true' automaticReadout='true' value='23.4' unit='°C'/>
                    <numeric name='Runtime' status='true' automaticReadout='true' value='12345' unit='h'/>
                    <string name='Device ID' identification='true' automaticReadout='true' value='Device01'/>
                  </timestamp>
                </node>
              </fields>"))
        .unwrap();
        assert_eq!(f.seqnr, 4);
        assert!(!f.done);
        let ts = &f.nodes[0].timestamps[0];
        assert_eq!(ts.value, dt("2013-03-07T19:00:00"));
        assert_eq!(
            ts.fields[0],
            Field::new("Temperature", FieldValue::numeric(23.4, 1, "°C"))
                .with_types(FieldTypes::MOMENTARY)
        );
        assert_eq!(
            ts.fields[1].value,
            FieldValue::Numeric {
                value: "12345".parse().unwrap(),
                unit: "h".into()
            }
        );
        assert_eq!(
            ts.fields[2],
            Field::new("Device ID", FieldValue::String("Device01".into()))
                .with_types(FieldTypes::IDENTITY)
        );

        let f = Fields::try_from(el("<fields xmlns='urn:xmpp:iot:sensordata' seqnr='4'>
                <node nodeId='Device01'>
                  <timestamp value='2013-03-07T18:00:00'>
                    <numeric name='Temperature' historicalHour='true' automaticReadout='true' value='24.5' unit='°C'/>
                  </timestamp>
                  <timestamp value='2013-03-07T00:00:00'>
                    <numeric name='Temperature' historicalHour='true' historicalDay='true' automaticReadout='true' value='25.2' unit='°C'/>
                  </timestamp>
                </node>
              </fields>"))
        .unwrap();
        let stamps = &f.nodes[0].timestamps;
        assert_eq!(stamps.len(), 2);
        assert!(stamps[1].fields[0]
            .types
            .contains(FieldTypes::HISTORICAL_DAY));

        // §7.2 localised field names.
        let f = Fields::try_from(el(
            "<fields xmlns='urn:xmpp:iot:sensordata' seqnr='7' done='true'>
                <node nodeId='Device05'>
                  <timestamp value='2013-03-07T22:20:45'>
                    <numeric name='Temperature, Min' momentary='true' automaticReadout='true'
                      value='23.4' unit='°C' module='Whatchamacallit' stringIds='1,2'/>
                  </timestamp>
                </node>
              </fields>",
        ))
        .unwrap();
        assert!(f.done);
        let field = &f.nodes[0].timestamps[0].fields[0];
        assert_eq!(field.module.as_deref(), Some("Whatchamacallit"));
        assert_eq!(field.string_ids.as_deref(), Some("1,2"));
    }

    #[test]
    fn every_field_type_round_trips() {
        let f: Fields = round_trip(
            "<fields xmlns='urn:xmpp:iot:sensordata' seqnr='17' done='true'>\
             <node nodeId='pump3' sourceId='modbus' cacheType='pump'>\
             <timestamp value='2026-11-21T20:15:03Z'>\
             <numeric name='Pressure' momentary='true' automaticReadout='true' value='4.20' unit='bar'/>\
             <numeric name='Ratio' computed='true' automaticEstimate='true' value='-1.5E3' unit=''/>\
             <boolean name='Running' momentary='true' automaticReadout='true' value='true' writable='true'/>\
             <date name='Installed' identity='true' value='2013-05-01'/>\
             <dateTime name='Last service' status='true' value='2013-04-02T08:00:00+02:00'/>\
             <duration name='Runtime' status='true' value='P1DT2H' writable='false'/>\
             <enum name='Mode' momentary='true' value='Auto' dataType='PumpMode'/>\
             <int name='Speed' peak='true' value='-2147483648'/>\
             <long name='Pulses' historicalOther='true' value='500000000000000'/>\
             <string name='Serial' identity='true' value='SN 1234' module='m' stringIds='3||A1' localizationSeed='A1'/>\
             <time name='Alarm' momentary='true' value='08:00:00'/>\
             </timestamp><timestamp value='2026-11-21T20:00:00Z'>\
             <numeric name='Pressure' historicalMinute='true' missing='true' inProgress='true' automaticEstimate='true' \
             manualEstimate='true' manualReadout='true' timeOffset='true' warning='true' error='true' \
             signed='true' invoiced='true' endOfSeries='true' powerFailure='true' \
             invoiceConfirmed='true' value='0' unit='bar'/>\
             </timestamp></node><node nodeId='pump4'/></fields>",
        );
        let fields = &f.nodes[0].timestamps[0].fields;
        assert_eq!(fields.len(), 11);
        assert_eq!(fields[2].writable, Some(true));
        assert_eq!(
            fields[5].value,
            FieldValue::Duration(Duration::from_secs(93_600))
        );
        assert_eq!(fields[7].value, FieldValue::Int(i32::MIN));
        assert_eq!(fields[8].value, FieldValue::Long(500_000_000_000_000));
        assert_eq!(fields[9].localization_seed.as_deref(), Some("A1"));
        let all_qos = f.nodes[0].timestamps[1].fields[0].qos;
        assert!(all_qos.iter().count() == 13 && !all_qos.contains(FieldQos::AUTOMATIC_READOUT));
        assert!(f.nodes[1].timestamps.is_empty());
    }

    #[test]
    fn numeric_precision_is_preserved() {
        let v: NumericValue = "10.00".parse().unwrap();
        assert_ne!(v, "10".parse().unwrap());
        assert_eq!(v.decimals(), 2);
        assert_eq!(v.as_f64(), 10.0);
        assert_eq!(NumericValue::new(4.2, 2).as_str(), "4.20");
        assert_eq!(NumericValue::new(10.0, 0).as_str(), "10");
        assert_eq!(NumericValue::new(-0.125, 1).as_str(), "-0.1");
        assert_eq!(NumericValue::new(f64::NAN, 2).as_str(), "NaN");
        assert_eq!(NumericValue::new(f64::NEG_INFINITY, 2).as_str(), "-INF");
        assert_eq!("1.5E3".parse::<NumericValue>().unwrap().decimals(), 1);
        assert_eq!("1.5E3".parse::<NumericValue>().unwrap().as_f64(), 1500.0);
        assert_eq!(" 7 ".parse::<NumericValue>().unwrap().as_str(), "7");
        let built = Field::new("T", FieldValue::numeric(23.0, 2, "°C"));
        assert_eq!(Element::from(built).attr("value"), Some("23.00"));
        let f = Field::try_from(el(
            "<numeric xmlns='urn:xmpp:iot:sensordata' name='E' value='123.200' unit='MWh'/>",
        ))
        .unwrap();
        assert_eq!(Element::from(f).attr("value"), Some("123.200"));
    }

    #[test]
    fn built_fields_parse_back_equal() {
        let fields = Fields::single(
            9,
            NodeRef::new("pump3"),
            dt("2026-11-21T20:15:03.123Z"),
            vec![
                Field::new("Pressure", FieldValue::numeric(4.2, 2, "bar"))
                    .with_types(FieldTypes::MOMENTARY),
                Field::new("Running", FieldValue::Boolean(false))
                    .with_types(FieldTypes::MOMENTARY)
                    .with_writable(true),
                Field::new(
                    "Uptime",
                    FieldValue::Duration(Duration::from_millis(90_500)),
                )
                .with_types(FieldTypes::STATUS)
                .with_qos(FieldQos::AUTOMATIC_READOUT | FieldQos::WARNING),
                Field::new(
                    "Mode",
                    FieldValue::Enum {
                        value: "Off".into(),
                        data_type: "Mode".into(),
                    },
                ),
                Field::new("Now", FieldValue::DateTime(XsDateTime::now())),
                Field::new("Day", FieldValue::Date("2026-01-31".parse().unwrap())),
                Field::new("At", FieldValue::Time("23:59:59.5Z".parse().unwrap())),
            ],
            true,
        );
        let el = Element::from(fields.clone());
        assert_eq!(Fields::try_from(&el).unwrap(), fields);
        assert_eq!(
            el.get_child("node", NS)
                .and_then(|n| n.get_child("timestamp", NS))
                .and_then(|t| t.get_child("duration", NS))
                .and_then(|d| d.attr("value")),
            Some("PT1M30.5S")
        );
    }

    #[test]
    fn invalid_fields_are_refused_precisely() {
        let err = |xml: &str| Fields::try_from(el(xml)).unwrap_err();
        let wrap = |field: &str| {
            format!(
                "<fields xmlns='urn:xmpp:iot:sensordata' seqnr='1'><node nodeId='n'>\
                 <timestamp value='2013-03-07T16:24:30'>{field}</timestamp></node></fields>"
            )
        };
        assert_eq!(
            err(&wrap("<timeSpan name='x' value='PT1S'/>")),
            ParseError::UnknownFieldType("timeSpan".into())
        );
        assert_eq!(
            err(&wrap("<numeric name='x' value='1.0'/>")),
            ParseError::MissingAttribute {
                element: "numeric",
                attribute: "unit"
            }
        );
        assert_eq!(
            err(&wrap("<numeric name='x' value='1,5' unit='bar'/>")),
            ParseError::InvalidAttribute {
                element: "numeric",
                attribute: "value",
                value: "1,5".into(),
                reason: ValueError::Double
            }
        );
        assert_eq!(
            err(&wrap("<int name='x' value='2147483648'/>")),
            ParseError::InvalidAttribute {
                element: "int",
                attribute: "value",
                value: "2147483648".into(),
                reason: ValueError::Int
            }
        );
        assert_eq!(
            err(&wrap("<boolean value='true'/>")),
            ParseError::MissingAttribute {
                element: "boolean",
                attribute: "name"
            }
        );
        assert_eq!(
            err(&wrap("<boolean name='x' value='on'/>")),
            ParseError::InvalidAttribute {
                element: "boolean",
                attribute: "value",
                value: "on".into(),
                reason: ValueError::Boolean
            }
        );
        assert_eq!(
            err(&wrap("<enum name='x' value='A'/>")),
            ParseError::MissingAttribute {
                element: "enum",
                attribute: "dataType"
            }
        );
        assert_eq!(
            err(&wrap("<duration name='x' value='P1M'/>")).to_string(),
            "<duration/> has an invalid value='P1M': expected xs:duration such as PT1M30S or \
             P1DT2H: years and months have no fixed length; use days (P30D) or smaller units"
        );
        assert!(matches!(
            err(&wrap("<date name='x' value='2013-13-01'/>")),
            ParseError::InvalidAttribute {
                element: "date",
                reason: ValueError::Date("the month must be 01 to 12"),
                ..
            }
        ));
        assert!(matches!(
            err(&wrap("<time name='x' value='25:00:00'/>")),
            ParseError::InvalidAttribute {
                element: "time",
                reason: ValueError::Time("the hour must be 00 to 23"),
                ..
            }
        ));
        assert!(matches!(
            err(&wrap("<string name='x' value='v' writable='yes'/>")),
            ParseError::InvalidAttribute {
                element: "string",
                attribute: "writable",
                ..
            }
        ));
        assert!(matches!(
            err(&wrap("<string name='x' value='v' warning='1.0'/>")),
            ParseError::InvalidAttribute {
                element: "string",
                attribute: "warning",
                ..
            }
        ));
        assert_eq!(
            err(
                "<fields xmlns='urn:xmpp:iot:sensordata' seqnr='1'><node nodeId='n'>\
                 <timestamp value='now'/></node></fields>"
            ),
            ParseError::InvalidAttribute {
                element: "timestamp",
                attribute: "value",
                value: "now".into(),
                reason: ValueError::DateTime("the year must have four digits")
            }
        );
        assert_eq!(
            err(
                "<fields xmlns='urn:xmpp:iot:sensordata' seqnr='1'><node nodeId='n'>\
                 <timestamp/></node></fields>"
            ),
            ParseError::MissingAttribute {
                element: "timestamp",
                attribute: "value"
            }
        );
        assert_eq!(
            err(
                "<fields xmlns='urn:xmpp:iot:sensordata' seqnr='1'><node nodeId='n'>\
                 <numeric name='x' value='1' unit='u'/></node></fields>"
            ),
            ParseError::UnexpectedChild {
                parent: "node",
                child: "numeric".into()
            }
        );
        assert_eq!(
            err("<fields xmlns='urn:xmpp:iot:sensordata' seqnr='1'><timestamp value='2013-03-07T16:24:30'/></fields>"),
            ParseError::UnexpectedChild {
                parent: "fields",
                child: "timestamp".into()
            }
        );
        assert_eq!(
            err("<fields xmlns='urn:xmpp:iot:sensordata' done='true'/>"),
            ParseError::MissingAttribute {
                element: "fields",
                attribute: "seqnr"
            }
        );
        assert!(matches!(
            err("<fields xmlns='urn:xmpp:iot:sensordata' seqnr='1' done='yes'/>"),
            ParseError::InvalidAttribute {
                attribute: "done",
                ..
            }
        ));
        assert!(matches!(
            Field::try_from(el(
                "<numeric xmlns='urn:xmpp:iot:control' name='x' value='1' unit=''/>"
            )),
            Err(ParseError::WrongElement { .. })
        ));
    }

    #[test]
    fn failures_round_trip() {
        // §3.2 (the spec example, compacted).
        let f: Failure = round_trip(
            "<failure xmlns='urn:xmpp:iot:sensordata' seqnr='2' done='true'>\
             <error nodeId='Device01' timestamp='2013-03-07T17:13:30'>Timeout.</error></failure>",
        );
        assert_eq!(
            f,
            Failure::single(
                2,
                NodeRef::new("Device01"),
                dt("2013-03-07T17:13:30"),
                "Timeout.",
                true
            )
        );
        let built = Failure {
            seqnr: 3,
            done: false,
            errors: vec![ReadoutError {
                node: NodeRef {
                    node_id: "n".into(),
                    source_id: Some("s".into()),
                    cache_type: None,
                },
                timestamp: XsDateTime::now(),
                message: "Modbus exception 2 <illegal address> & more".into(),
            }],
        };
        assert_eq!(
            Failure::try_from(Element::from(built.clone())).unwrap(),
            built
        );
        assert!(matches!(
            Failure::try_from(el(
                "<failure xmlns='urn:xmpp:iot:sensordata' seqnr='2'><error nodeId='x'>t</error></failure>"
            )),
            Err(ParseError::MissingAttribute {
                element: "error",
                attribute: "timestamp"
            })
        ));
        assert!(matches!(
            Failure::try_from(el(
                "<failure xmlns='urn:xmpp:iot:sensordata' seqnr='2'><error timestamp='2013-03-07T17:13:30'/></failure>"
            )),
            Err(ParseError::MissingAttribute {
                element: "error",
                attribute: "nodeId"
            })
        ));
    }

    #[test]
    fn malformed_elements_never_panic() {
        let docs = [
            "<req xmlns='urn:xmpp:iot:sensordata' seqnr=''/>",
            "<req xmlns='urn:xmpp:iot:sensordata' seqnr='1' from='2013-03-07T16:24:3'/>",
            "<req xmlns='urn:xmpp:iot:sensordata' seqnr='1' to='\u{1F600}'/>",
            "<req xmlns='urn:xmpp:iot:sensordata' seqnr='99999999999999999999999'/>",
            "<fields xmlns='urn:xmpp:iot:sensordata' seqnr='1'><node nodeId='n'><timestamp value='2013-03-07T16:24:30.'/></node></fields>",
            "<fields xmlns='urn:xmpp:iot:sensordata' seqnr='1'><node nodeId='n'><timestamp value='2013-03-07T16:24:30'><numeric name='x' value='' unit=''/></timestamp></node></fields>",
            "<fields xmlns='urn:xmpp:iot:sensordata' seqnr='1'><node nodeId='n'><timestamp value='2013-03-07T16:24:30'><duration name='x' value='P\u{e9}T'/></timestamp></node></fields>",
            "<fields xmlns='urn:xmpp:iot:sensordata' seqnr='1'><node nodeId='n'><timestamp value='2013-03-07T16:24:30'><duration name='x' value='PT18446744073709551616S'/></timestamp></node></fields>",
            "<fields xmlns='urn:xmpp:iot:sensordata' seqnr='1'><node nodeId='n'><timestamp value='2013-03-07T16:24:30'><long name='x' value='-'/></timestamp></node></fields>",
            "<fields xmlns='urn:xmpp:iot:sensordata' seqnr='1'><node nodeId='n'><timestamp value='2013-03-07T16:24:30'><date name='x' value='2013-03-07-'/></timestamp></node></fields>",
            "<fields xmlns='urn:xmpp:iot:sensordata' seqnr='1'><node nodeId='n'><timestamp value='2013-03-07T16:24:30'><time name='x' value='1'/></timestamp></node></fields>",
            "<failure xmlns='urn:xmpp:iot:sensordata' seqnr='1'><error nodeId='n' timestamp='2013-03-07T16:24:30+14:01'/></failure>",
            "<accepted xmlns='urn:xmpp:iot:sensordata' seqnr=' '/>",
            "<cancel xmlns='urn:xmpp:iot:sensordata' seqnr='0x10'/>",
        ];
        for xml in docs {
            let e = el(xml);
            let results = [
                Req::try_from(&e).is_err(),
                Fields::try_from(&e).is_err(),
                Failure::try_from(&e).is_err(),
                Accepted::try_from(&e).is_err(),
                Cancel::try_from(&e).is_err(),
            ];
            assert!(results.iter().all(|&failed| failed), "{xml}");
        }
    }
}
