//! Pieces shared by the IoT payloads: the parse errors, the field-type and quality-of-service
//! flag sets of XEP-0323 (reused by the events ProtoXEP), provisioning tokens, node
//! references, and the small attribute helpers the parsers are written with.

use tokio_xmpp::minidom::{Element, ElementBuilder};

use crate::xmpp::stanza::BuilderExt;

/// Why an attribute value (or a value in a data form) is not of its XML Schema type.
///
/// The offending value itself is carried by [`ParseError::InvalidAttribute`]; this says what
/// was expected instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    /// Not `true`, `false`, `1` or `0`.
    #[error("expected xs:boolean: 'true', 'false', '1' or '0'")]
    Boolean,
    /// Not a non-negative integer that fits in 64 bits.
    #[error("expected an unsigned integer (0 to 18446744073709551615)")]
    Unsigned,
    /// Not a 32-bit signed integer.
    #[error("expected xs:int, an integer from -2147483648 to 2147483647")]
    Int,
    /// Not a 64-bit signed integer.
    #[error("expected xs:long, an integer from -9223372036854775808 to 9223372036854775807")]
    Long,
    /// Not in the lexical space of xs:double.
    #[error("expected xs:double, a decimal number such as 4.20, -1.5E3, INF or NaN")]
    Double,
    /// A number that must be finite is INF, -INF or NaN.
    #[error("expected a finite number, not INF or NaN")]
    NotFinite,
    /// A number that must be strictly positive is zero, negative or NaN.
    #[error("expected a number greater than zero")]
    NotPositive,
    /// Not an xs:dateTime; the text says which part is wrong.
    #[error("expected xs:dateTime (YYYY-MM-DDThh:mm:ss[.fff][Z|±hh:mm]): {0}")]
    DateTime(&'static str),
    /// Not an xs:date; the text says which part is wrong.
    #[error("expected xs:date (YYYY-MM-DD[Z|±hh:mm]): {0}")]
    Date(&'static str),
    /// Not an xs:time; the text says which part is wrong.
    #[error("expected xs:time (hh:mm:ss[.fff][Z|±hh:mm]): {0}")]
    Time(&'static str),
    /// Not an xs:duration we can represent; the text says why.
    #[error("expected xs:duration such as PT1M30S or P1DT2H: {0}")]
    Duration(&'static str),
    /// Not six or eight hexadecimal digits.
    #[error("expected a colour as RRGGBB or RRGGBBAA hexadecimal digits")]
    Color,
    /// A data-form validation datatype we cannot map to a control parameter type.
    #[error("unsupported datatype for a control parameter")]
    Datatype,
}

/// Why an element is not a valid IoT payload. Every variant names the element and, where it
/// applies, the attribute and the offending value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The element is not the one the parser handles (other name or other namespace).
    #[error("expected <{expected} xmlns='{expected_ns}'/>, found <{name} xmlns='{ns}'/>")]
    WrongElement {
        /// The element name the parser handles.
        expected: &'static str,
        /// The namespace the parser handles.
        expected_ns: &'static str,
        /// The name that was found.
        name: String,
        /// The namespace that was found.
        ns: String,
    },
    /// A required attribute is absent.
    #[error("<{element}/> lacks the required attribute '{attribute}'")]
    MissingAttribute {
        /// The element lacking it.
        element: &'static str,
        /// The missing attribute.
        attribute: &'static str,
    },
    /// An attribute is present but its value is not of the required type. (The message
    /// repeats only the first bytes of the value: it goes back to the sender.)
    #[error("<{element}/> has an invalid {attribute}='{}': {reason}", crate::xmpp::stanza::clip(.value))]
    InvalidAttribute {
        /// The element carrying it.
        element: &'static str,
        /// The attribute name.
        attribute: &'static str,
        /// The value as received.
        value: String,
        /// What was expected instead.
        reason: ValueError,
    },
    /// A child element in the protocol's own namespace that is not allowed here
    /// (children in foreign namespaces are ignored as extensions).
    #[error("<{parent}/> may not contain <{child}/>")]
    UnexpectedChild {
        /// The parent element.
        parent: &'static str,
        /// The offending child's name.
        child: String,
    },
    /// A child of `<timestamp/>` that is not one of the ten XEP-0323 field types.
    #[error(
        "<timestamp/> contains <{0}/>, which is not a field type \
         (boolean, date, dateTime, duration, enum, int, long, numeric, string, time)"
    )]
    UnknownFieldType(String),
    /// A child of `<set/>` that is neither `<node/>` nor one of the ten XEP-0325 parameter types.
    #[error(
        "<set/> contains <{0}/>, which is not a control parameter type \
         (boolean, color, date, dateTime, double, duration, int, long, string, time)"
    )]
    UnknownParameterType(String),
    /// A child that may occur at most once occurs more than once.
    #[error("<{parent}/> contains more than one <{child}/>")]
    DuplicateChild {
        /// The parent element.
        parent: &'static str,
        /// The repeated child.
        child: &'static str,
    },
    /// An embedded `jabber:x:data` form is invalid.
    #[error("invalid data form: {0}")]
    InvalidForm(String),
}

/// Implements `TryFrom<Element>` by delegating to the `TryFrom<&Element>` impl, so payloads
/// can be parsed from a borrowed or an owned element.
macro_rules! try_from_owned {
    ($($t:ty),+ $(,)?) => {$(
        impl TryFrom<tokio_xmpp::minidom::Element> for $t {
            type Error = $crate::xmpp::payload::common::ParseError;
            fn try_from(el: tokio_xmpp::minidom::Element) -> Result<Self, Self::Error> {
                <$t>::try_from(&el)
            }
        }
    )+};
}
pub(crate) use try_from_owned;

/// Fails unless `el` is `<name xmlns='ns'/>`.
pub(crate) fn check_element(
    el: &Element,
    name: &'static str,
    ns: &'static str,
) -> Result<(), ParseError> {
    if el.is(name, ns) {
        Ok(())
    } else {
        Err(ParseError::WrongElement {
            expected: name,
            expected_ns: ns,
            name: el.name().to_owned(),
            ns: el.ns(),
        })
    }
}

/// The value of a required attribute.
pub(crate) fn required<'a>(
    el: &'a Element,
    element: &'static str,
    attribute: &'static str,
) -> Result<&'a str, ParseError> {
    el.attr(attribute)
        .ok_or(ParseError::MissingAttribute { element, attribute })
}

/// The value of an optional string attribute.
pub(crate) fn optional(el: &Element, attribute: &'static str) -> Option<String> {
    el.attr(attribute).map(str::to_owned)
}

/// Parses an optional attribute with `parse`, naming element, attribute and value on failure.
pub(crate) fn parsed<T>(
    el: &Element,
    element: &'static str,
    attribute: &'static str,
    parse: impl FnOnce(&str) -> Result<T, ValueError>,
) -> Result<Option<T>, ParseError> {
    match el.attr(attribute) {
        None => Ok(None),
        Some(value) => parse(value)
            .map(Some)
            .map_err(|reason| ParseError::InvalidAttribute {
                element,
                attribute,
                value: value.to_owned(),
                reason,
            }),
    }
}

/// Parses a required attribute with `parse`.
pub(crate) fn required_parsed<T>(
    el: &Element,
    element: &'static str,
    attribute: &'static str,
    parse: impl FnOnce(&str) -> Result<T, ValueError>,
) -> Result<T, ParseError> {
    parsed(el, element, attribute, parse)?
        .ok_or(ParseError::MissingAttribute { element, attribute })
}

/// An optional xs:boolean attribute, `false` when absent.
pub(crate) fn flag(
    el: &Element,
    element: &'static str,
    attribute: &'static str,
) -> Result<bool, ParseError> {
    Ok(parsed(el, element, attribute, parse_boolean)?.unwrap_or(false))
}

/// The required `seqnr` attribute. The schema says xs:int, clients send any digits: we keep
/// it as `u64` and reject anything that is not a non-negative integer.
pub(crate) fn seqnr(el: &Element, element: &'static str) -> Result<u64, ParseError> {
    required_parsed(el, element, "seqnr", |v| {
        v.trim().parse::<u64>().map_err(|_| ValueError::Unsigned)
    })
}

/// Parses xs:boolean (`true`, `false`, `1`, `0`, surrounding whitespace allowed).
pub fn parse_boolean(s: &str) -> Result<bool, ValueError> {
    match s.trim() {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(ValueError::Boolean),
    }
}

/// Parses xs:int.
pub fn parse_int(s: &str) -> Result<i32, ValueError> {
    s.trim().parse().map_err(|_| ValueError::Int)
}

/// Parses xs:long.
pub fn parse_long(s: &str) -> Result<i64, ValueError> {
    s.trim().parse().map_err(|_| ValueError::Long)
}

/// Adds `attribute='true'` when `on`, nothing otherwise (the schema default is false).
pub(crate) fn put_flag(b: ElementBuilder, attribute: &str, on: bool) -> ElementBuilder {
    if on {
        b.a(attribute, "true")
    } else {
        b
    }
}

bitflags::bitflags! {
    /// The XEP-0323 field types (the `fieldTypes` attribute group), as carried by fields, by
    /// `<req/>` and by the events `<subscribe/>`. In a request several types are a union; on
    /// a field they are an intersection (a historical status value is both).
    #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
    pub struct FieldTypes: u16 {
        /// `momentary`: measured at the time of the read-out.
        const MOMENTARY = 1;
        /// `peak`: a maximum or minimum over a period.
        const PEAK = 1 << 1;
        /// `status`: status information (health, runtime, signal strength, ...).
        const STATUS = 1 << 2;
        /// `computed`: computed rather than measured.
        const COMPUTED = 1 << 3;
        /// `identity`: identifies the device (serial number, meter ID, ...). Read from
        /// either `identity` or `identification` (one example of XEP-0323 uses the latter);
        /// written as `identity`.
        const IDENTITY = 1 << 4;
        /// `historicalSecond`.
        const HISTORICAL_SECOND = 1 << 5;
        /// `historicalMinute`.
        const HISTORICAL_MINUTE = 1 << 6;
        /// `historicalHour`.
        const HISTORICAL_HOUR = 1 << 7;
        /// `historicalDay`.
        const HISTORICAL_DAY = 1 << 8;
        /// `historicalWeek`.
        const HISTORICAL_WEEK = 1 << 9;
        /// `historicalMonth`.
        const HISTORICAL_MONTH = 1 << 10;
        /// `historicalQuarter`.
        const HISTORICAL_QUARTER = 1 << 11;
        /// `historicalYear`.
        const HISTORICAL_YEAR = 1 << 12;
        /// `historicalOther`: historical, period not important.
        const HISTORICAL_OTHER = 1 << 13;
    }
}

impl FieldTypes {
    /// Each type with its attribute name.
    pub const ATTRIBUTES: [(&'static str, FieldTypes); 14] = [
        ("momentary", FieldTypes::MOMENTARY),
        ("peak", FieldTypes::PEAK),
        ("status", FieldTypes::STATUS),
        ("computed", FieldTypes::COMPUTED),
        ("identity", FieldTypes::IDENTITY),
        ("historicalSecond", FieldTypes::HISTORICAL_SECOND),
        ("historicalMinute", FieldTypes::HISTORICAL_MINUTE),
        ("historicalHour", FieldTypes::HISTORICAL_HOUR),
        ("historicalDay", FieldTypes::HISTORICAL_DAY),
        ("historicalWeek", FieldTypes::HISTORICAL_WEEK),
        ("historicalMonth", FieldTypes::HISTORICAL_MONTH),
        ("historicalQuarter", FieldTypes::HISTORICAL_QUARTER),
        ("historicalYear", FieldTypes::HISTORICAL_YEAR),
        ("historicalOther", FieldTypes::HISTORICAL_OTHER),
    ];

    /// Every `historical*` type set (what `historical='true'` in a request means).
    pub const HISTORICAL: FieldTypes = FieldTypes::HISTORICAL_SECOND
        .union(FieldTypes::HISTORICAL_MINUTE)
        .union(FieldTypes::HISTORICAL_HOUR)
        .union(FieldTypes::HISTORICAL_DAY)
        .union(FieldTypes::HISTORICAL_WEEK)
        .union(FieldTypes::HISTORICAL_MONTH)
        .union(FieldTypes::HISTORICAL_QUARTER)
        .union(FieldTypes::HISTORICAL_YEAR)
        .union(FieldTypes::HISTORICAL_OTHER);

    /// The union a request asks for, expanding the request-only `all` (every type) and
    /// `historical` attributes. A request that names no type at all is read as a request for all types
    /// (the flags are only hints, and XEP-0323 leaves this case open).
    pub fn requested(self, all: bool, historical: bool) -> FieldTypes {
        let mut out = if all { FieldTypes::all() } else { self };
        if historical {
            out |= FieldTypes::HISTORICAL;
        }
        if out.is_empty() {
            FieldTypes::all()
        } else {
            out
        }
    }

    /// Reads the type attributes of `el` (`identification` counts as `identity`).
    pub(crate) fn parse(el: &Element, element: &'static str) -> Result<FieldTypes, ParseError> {
        let mut types = FieldTypes::empty();
        for (name, t) in FieldTypes::ATTRIBUTES {
            types.set(t, flag(el, element, name)?);
        }
        if flag(el, element, "identification")? {
            types |= FieldTypes::IDENTITY;
        }
        Ok(types)
    }

    /// Writes the set types as `name='true'`.
    pub(crate) fn write(self, mut b: ElementBuilder) -> ElementBuilder {
        for (name, t) in FieldTypes::ATTRIBUTES {
            b = put_flag(b, name, self.contains(t));
        }
        b
    }
}

bitflags::bitflags! {
    /// The XEP-0323 quality-of-service flags of a field (`fieldQoS` attribute group). A
    /// field without any flag is to be read as `automaticReadout`.
    #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
    pub struct FieldQos: u16 {
        /// `missing`: the value is missing.
        const MISSING = 1;
        /// `inProgress`: being measured or calculated; not final.
        const IN_PROGRESS = 1 << 1;
        /// `automaticEstimate`.
        const AUTOMATIC_ESTIMATE = 1 << 2;
        /// `manualEstimate`.
        const MANUAL_ESTIMATE = 1 << 3;
        /// `manualReadout`.
        const MANUAL_READOUT = 1 << 4;
        /// `automaticReadout`: read automatically (the usual case).
        const AUTOMATIC_READOUT = 1 << 5;
        /// `timeOffset`: the clock was corrected during the measurement period.
        const TIME_OFFSET = 1 << 6;
        /// `warning`: a warning was logged during the measurement period.
        const WARNING = 1 << 7;
        /// `error`: an error was logged during the measurement period.
        const ERROR = 1 << 8;
        /// `signed`: signed by an operator.
        const SIGNED = 1 << 9;
        /// `invoiced`.
        const INVOICED = 1 << 10;
        /// `endOfSeries`.
        const END_OF_SERIES = 1 << 11;
        /// `powerFailure`: a power failure was recorded during the measurement period.
        const POWER_FAILURE = 1 << 12;
        /// `invoiceConfirmed`.
        const INVOICE_CONFIRMED = 1 << 13;
    }
}

impl FieldQos {
    /// Each flag with its attribute name.
    pub const ATTRIBUTES: [(&'static str, FieldQos); 14] = [
        ("missing", FieldQos::MISSING),
        ("inProgress", FieldQos::IN_PROGRESS),
        ("automaticEstimate", FieldQos::AUTOMATIC_ESTIMATE),
        ("manualEstimate", FieldQos::MANUAL_ESTIMATE),
        ("manualReadout", FieldQos::MANUAL_READOUT),
        ("automaticReadout", FieldQos::AUTOMATIC_READOUT),
        ("timeOffset", FieldQos::TIME_OFFSET),
        ("warning", FieldQos::WARNING),
        ("error", FieldQos::ERROR),
        ("signed", FieldQos::SIGNED),
        ("invoiced", FieldQos::INVOICED),
        ("endOfSeries", FieldQos::END_OF_SERIES),
        ("powerFailure", FieldQos::POWER_FAILURE),
        ("invoiceConfirmed", FieldQos::INVOICE_CONFIRMED),
    ];

    /// Reads the QoS attributes of `el`.
    pub(crate) fn parse(el: &Element, element: &'static str) -> Result<FieldQos, ParseError> {
        let mut qos = FieldQos::empty();
        for (name, q) in FieldQos::ATTRIBUTES {
            qos.set(q, flag(el, element, name)?);
        }
        Ok(qos)
    }

    /// Writes the set flags as `name='true'`.
    pub(crate) fn write(self, mut b: ElementBuilder) -> ElementBuilder {
        for (name, q) in FieldQos::ATTRIBUTES {
            b = put_flag(b, name, self.contains(q));
        }
        b
    }
}

/// The XEP-0324 provisioning tokens a request may carry (`serviceToken`, `deviceToken`,
/// `userToken`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Tokens {
    /// `serviceToken`.
    pub service_token: Option<String>,
    /// `deviceToken`.
    pub device_token: Option<String>,
    /// `userToken`.
    pub user_token: Option<String>,
}

impl Tokens {
    /// True when no token is present.
    pub fn is_empty(&self) -> bool {
        self.service_token.is_none() && self.device_token.is_none() && self.user_token.is_none()
    }

    pub(crate) fn parse(el: &Element) -> Tokens {
        Tokens {
            service_token: optional(el, "serviceToken"),
            device_token: optional(el, "deviceToken"),
            user_token: optional(el, "userToken"),
        }
    }

    pub(crate) fn write(&self, b: ElementBuilder) -> ElementBuilder {
        b.a("serviceToken", self.service_token.as_deref())
            .a("deviceToken", self.device_token.as_deref())
            .a("userToken", self.user_token.as_deref())
    }
}

/// A `<node nodeId sourceId cacheType/>` reference (XEP-0326 addressing of a node behind a
/// concentrator). The element lives in the namespace of whichever payload contains it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NodeRef {
    /// `nodeId` (required).
    pub node_id: String,
    /// `sourceId`: the data source holding the node.
    pub source_id: Option<String>,
    /// `cacheType`: narrows the kind of node.
    pub cache_type: Option<String>,
}

impl NodeRef {
    /// A reference by node ID only.
    pub fn new(node_id: impl Into<String>) -> NodeRef {
        NodeRef {
            node_id: node_id.into(),
            source_id: None,
            cache_type: None,
        }
    }

    /// Reads the node attributes of `el` (an element named `element` in the error).
    pub(crate) fn parse(el: &Element, element: &'static str) -> Result<NodeRef, ParseError> {
        Ok(NodeRef {
            node_id: required(el, element, "nodeId")?.to_owned(),
            source_id: optional(el, "sourceId"),
            cache_type: optional(el, "cacheType"),
        })
    }

    /// Adds the node attributes to `b`.
    pub(crate) fn write(&self, b: ElementBuilder) -> ElementBuilder {
        b.a("nodeId", self.node_id.as_str())
            .a("sourceId", self.source_id.as_deref())
            .a("cacheType", self.cache_type.as_deref())
    }

    /// `<node/>` in namespace `ns`.
    pub(crate) fn to_element(&self, ns: &str) -> Element {
        self.write(Element::builder("node", ns)).build()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn el(xml: &str) -> Element {
        xml.parse().unwrap()
    }

    #[test]
    fn booleans_follow_xs_boolean() {
        assert_eq!(parse_boolean("true"), Ok(true));
        assert_eq!(parse_boolean(" 1 "), Ok(true));
        assert_eq!(parse_boolean("0"), Ok(false));
        assert_eq!(parse_boolean("false"), Ok(false));
        for bad in ["yes", "True", "TRUE", "", "2", "on"] {
            assert_eq!(parse_boolean(bad), Err(ValueError::Boolean), "{bad}");
        }
    }

    #[test]
    fn integers_have_their_ranges() {
        assert_eq!(parse_int("-2147483648"), Ok(i32::MIN));
        assert_eq!(parse_int("+5"), Ok(5));
        assert_eq!(parse_int("2147483648"), Err(ValueError::Int));
        assert_eq!(parse_int("1.0"), Err(ValueError::Int));
        assert_eq!(parse_long("500000000000000"), Ok(500_000_000_000_000));
        assert_eq!(parse_long("9223372036854775808"), Err(ValueError::Long));
    }

    #[test]
    fn type_flags_parse_alias_and_expand() {
        let e = el("<x xmlns='u' momentary='1' identification='true' historicalDay='false'/>");
        let t = FieldTypes::parse(&e, "x").unwrap();
        assert!(
            t.contains(FieldTypes::MOMENTARY)
                && t.contains(FieldTypes::IDENTITY)
                && !t.contains(FieldTypes::HISTORICAL_DAY)
        );
        let written = t.write(Element::builder("x", "u")).build();
        assert_eq!(
            written,
            el("<x xmlns='u' momentary='true' identity='true'/>")
        );
        assert_eq!(
            FieldTypes::empty().requested(false, false),
            FieldTypes::all()
        );
        assert_eq!(
            FieldTypes::empty().requested(true, false),
            FieldTypes::all()
        );
        let h = FieldTypes::MOMENTARY.requested(false, true);
        assert!(
            h.contains(FieldTypes::MOMENTARY)
                && h.contains(FieldTypes::HISTORICAL_YEAR)
                && !h.contains(FieldTypes::PEAK)
        );
        assert_eq!(
            FieldTypes::HISTORICAL_DAY.requested(false, false),
            FieldTypes::HISTORICAL_DAY
        );
        assert!(FieldTypes::MOMENTARY.intersects(h));
        assert!(!FieldTypes::STATUS.intersects(h));
        // Every type has its attribute, and all() sets every one of them.
        let named = FieldTypes::ATTRIBUTES
            .iter()
            .fold(FieldTypes::empty(), |acc, (_, t)| acc | *t);
        assert_eq!(named, FieldTypes::all());
        assert_eq!(FieldTypes::all().iter().count(), 14);
    }

    #[test]
    fn bad_flag_values_are_named() {
        let e = el("<req xmlns='u' momentary='yes'/>");
        assert_eq!(
            FieldTypes::parse(&e, "req").unwrap_err(),
            ParseError::InvalidAttribute {
                element: "req",
                attribute: "momentary",
                value: "yes".into(),
                reason: ValueError::Boolean,
            }
        );
        let e = el("<numeric xmlns='u' automaticReadout='TRUE'/>");
        let err = FieldQos::parse(&e, "numeric").unwrap_err();
        assert_eq!(
            err.to_string(),
            "<numeric/> has an invalid automaticReadout='TRUE': \
             expected xs:boolean: 'true', 'false', '1' or '0'"
        );
    }

    #[test]
    fn seqnr_must_be_an_unsigned_integer() {
        assert_eq!(seqnr(&el("<a xmlns='u' seqnr='17'/>"), "a"), Ok(17));
        assert_eq!(
            seqnr(&el("<a xmlns='u'/>"), "a"),
            Err(ParseError::MissingAttribute {
                element: "a",
                attribute: "seqnr"
            })
        );
        for bad in ["abc", "-1", "", "1.5", "18446744073709551616"] {
            let e = Element::builder("a", "u").a("seqnr", bad).build();
            assert!(
                matches!(
                    seqnr(&e, "a"),
                    Err(ParseError::InvalidAttribute {
                        attribute: "seqnr",
                        reason: ValueError::Unsigned,
                        ..
                    })
                ),
                "{bad}"
            );
        }
    }
}
