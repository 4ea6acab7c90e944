//! The "IoT Events" ProtoXEP (`urn:xmpp:iot:events`, v0.0.1): `<subscribe/>` and
//! `<unsubscribe/>`.
//!
//! The rest of the exchange reuses XEP-0323: a subscription is accepted with
//! [`sensordata::Accepted`](super::sensordata::Accepted) (iq result), every event is a
//! [`sensordata::Fields`](super::sensordata::Fields) message carrying the subscription's
//! `seqnr` (with `done='true'` on its last message), and `<unsubscribe/>` is answered with an
//! empty iq result whether the subscription existed or not. The gateway keys subscriptions by
//! (subscriber full JID, seqnr): a new `subscribe` with a seqnr in use replaces that one.

use std::time::Duration;

use tokio_xmpp::minidom::Element;

use super::common::{
    check_element, flag, parsed, put_flag, required, seqnr, try_from_owned, FieldTypes, NodeRef,
    ParseError, Tokens, ValueError,
};
use super::xsd::{format_double, format_duration, parse_double, parse_duration};
use crate::xmpp::stanza::BuilderExt;

/// The events namespace.
pub const NS: &str = "urn:xmpp:iot:events";

/// A change condition on one field, `<field name changedBy changedUp changedDown
/// currentValue/>`. A field without condition only asks for the field to be included in
/// events. Magnitudes are in the field's own unit (booleans count 0/1, strings and enums
/// count any change as 1, durations and times in seconds).
#[derive(Debug, Clone, PartialEq)]
pub struct FieldCondition {
    /// `name`.
    pub name: String,
    /// `currentValue`: the reference the change is measured from (default: the field's
    /// value when the subscription arrives).
    pub current_value: Option<f64>,
    /// `changedBy`: change in either direction that triggers an event; overrides the two
    /// below. (The spec's example misspells it `changeBy`, which is read too.)
    pub changed_by: Option<f64>,
    /// `changedUp`: upward change that triggers an event.
    pub changed_up: Option<f64>,
    /// `changedDown`: downward change that triggers an event.
    pub changed_down: Option<f64>,
}

impl FieldCondition {
    /// A field to include, without a change condition.
    pub fn new(name: impl Into<String>) -> FieldCondition {
        FieldCondition {
            name: name.into(),
            current_value: None,
            changed_by: None,
            changed_up: None,
            changed_down: None,
        }
    }

    /// The effective (upward, downward) thresholds: `changedBy` for both when present,
    /// otherwise `changedUp` and `changedDown`; `None` means changes that way do not trigger.
    pub fn thresholds(&self) -> (Option<f64>, Option<f64>) {
        match self.changed_by {
            Some(by) => (Some(by), Some(by)),
            None => (self.changed_up, self.changed_down),
        }
    }

    /// True when some change of this field triggers an event.
    pub fn has_condition(&self) -> bool {
        self.thresholds() != (None, None)
    }

    fn parse(el: &Element) -> Result<FieldCondition, ParseError> {
        let positive = |v: &str| {
            let v = parse_double(v)?;
            if v > 0.0 {
                Ok(v)
            } else {
                Err(ValueError::NotPositive)
            }
        };
        let changed_by = match parsed(el, "field", "changedBy", positive)? {
            Some(v) => Some(v),
            None => parsed(el, "field", "changeBy", positive)?,
        };
        Ok(FieldCondition {
            name: required(el, "field", "name")?.to_owned(),
            current_value: parsed(el, "field", "currentValue", |v| {
                let v = parse_double(v)?;
                if v.is_finite() {
                    Ok(v)
                } else {
                    Err(ValueError::NotFinite)
                }
            })?,
            changed_by,
            changed_up: parsed(el, "field", "changedUp", positive)?,
            changed_down: parsed(el, "field", "changedDown", positive)?,
        })
    }

    fn to_element(&self) -> Element {
        let num = |v: Option<f64>| v.map(format_double);
        Element::builder("field", NS)
            .a("name", self.name.as_str())
            .a("currentValue", num(self.current_value))
            .a("changedBy", num(self.changed_by))
            .a("changedUp", num(self.changed_up))
            .a("changedDown", num(self.changed_down))
            .build()
    }
}

/// `<subscribe/>` (iq get): subscribe to events built from sensor data, like a standing
/// XEP-0323 `<req/>`. Keyed by (subscriber full JID, node); `seqnr` is reused in every event.
#[derive(Debug, Clone, PartialEq)]
pub struct Subscribe {
    /// Sequence number chosen by the subscriber, echoed in every event.
    pub seqnr: u64,
    /// Requested field types (a union).
    pub types: FieldTypes,
    /// `all='true'`: every field type.
    pub all: bool,
    /// `historical='true'`: every historical field type.
    pub historical: bool,
    /// `maxAge`: how far back historical values in an event may go.
    pub max_age: Option<Duration>,
    /// `minInterval`: events no more often than this.
    pub min_interval: Option<Duration>,
    /// `maxInterval`: an event at least this often, conditions met or not. (The spec's
    /// example misspells it `maxInternval`, which is read too.)
    pub max_interval: Option<Duration>,
    /// `req='true'`: send an event at once, as a read-out would.
    pub req: bool,
    /// XEP-0324 provisioning tokens.
    pub tokens: Tokens,
    /// `<node/>` children: subscribe to each of these nodes individually.
    pub nodes: Vec<NodeRef>,
    /// `<field/>` children: fields to include and their change conditions.
    pub fields: Vec<FieldCondition>,
}

impl Subscribe {
    /// A subscription to `types` with no intervals, conditions or nodes.
    pub fn new(seqnr: u64, types: FieldTypes) -> Subscribe {
        Subscribe {
            seqnr,
            types,
            all: false,
            historical: false,
            max_age: None,
            min_interval: None,
            max_interval: None,
            req: false,
            tokens: Tokens::default(),
            nodes: vec![],
            fields: vec![],
        }
    }

    /// The field types to report, as [`FieldTypes::requested`].
    pub fn requested_types(&self) -> FieldTypes {
        self.types.requested(self.all, self.historical)
    }
}

impl TryFrom<&Element> for Subscribe {
    type Error = ParseError;

    fn try_from(el: &Element) -> Result<Subscribe, ParseError> {
        check_element(el, "subscribe", NS)?;
        let mut nodes = vec![];
        let mut fields = vec![];
        for child in el.children().filter(|c| c.ns() == NS) {
            match child.name() {
                "node" => nodes.push(NodeRef::parse(child, "node")?),
                "field" => fields.push(FieldCondition::parse(child)?),
                other => {
                    return Err(ParseError::UnexpectedChild {
                        parent: "subscribe",
                        child: other.to_owned(),
                    })
                }
            }
        }
        let duration = |a| parsed(el, "subscribe", a, parse_duration);
        Ok(Subscribe {
            seqnr: seqnr(el, "subscribe")?,
            types: FieldTypes::parse(el, "subscribe")?,
            all: flag(el, "subscribe", "all")?,
            historical: flag(el, "subscribe", "historical")?,
            max_age: duration("maxAge")?,
            min_interval: duration("minInterval")?,
            max_interval: match duration("maxInterval")? {
                Some(d) => Some(d),
                None => duration("maxInternval")?,
            },
            req: flag(el, "subscribe", "req")?,
            tokens: Tokens::parse(el),
            nodes,
            fields,
        })
    }
}

impl From<Subscribe> for Element {
    fn from(s: Subscribe) -> Element {
        let mut b = Element::builder("subscribe", NS).a("seqnr", s.seqnr);
        b = s.types.write(b);
        b = put_flag(b, "all", s.all);
        b = put_flag(b, "historical", s.historical);
        b = b
            .a("maxAge", s.max_age.map(format_duration))
            .a("minInterval", s.min_interval.map(format_duration))
            .a("maxInterval", s.max_interval.map(format_duration));
        b = put_flag(b, "req", s.req);
        b = s.tokens.write(b);
        b.append_all(s.nodes.iter().map(|n| n.to_element(NS)))
            .append_all(s.fields.iter().map(FieldCondition::to_element))
            .build()
    }
}

/// `<unsubscribe/>` (iq get): end the subscription with this `seqnr`; answered with an empty
/// iq result even if there was none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Unsubscribe {
    /// The subscription's sequence number.
    pub seqnr: u64,
}

impl Unsubscribe {
    /// The payload for `seqnr`.
    pub fn new(seqnr: u64) -> Unsubscribe {
        Unsubscribe { seqnr }
    }
}

impl TryFrom<&Element> for Unsubscribe {
    type Error = ParseError;

    fn try_from(el: &Element) -> Result<Unsubscribe, ParseError> {
        check_element(el, "unsubscribe", NS)?;
        Ok(Unsubscribe {
            seqnr: seqnr(el, "unsubscribe")?,
        })
    }
}

impl From<Unsubscribe> for Element {
    fn from(u: Unsubscribe) -> Element {
        Element::builder("unsubscribe", NS)
            .a("seqnr", u.seqnr)
            .build()
    }
}

try_from_owned!(Subscribe, Unsubscribe);

#[cfg(test)]
mod tests {
    use super::*;

    fn el(xml: &str) -> Element {
        xml.parse().unwrap()
    }

    fn sub(xml: &str) -> Result<Subscribe, ParseError> {
        Subscribe::try_from(el(xml))
    }

    fn mins(m: u64) -> Option<Duration> {
        Some(Duration::from_secs(60 * m))
    }

    #[test]
    fn spec_examples() {
        // Momentary values every five minutes, with an immediate first event.
        let s = sub("<subscribe xmlns='urn:xmpp:iot:events' seqnr='1' momentary='true' maxInterval='PT5M' req='true'/>")
            .unwrap();
        assert_eq!(
            s,
            Subscribe {
                max_interval: mins(5),
                req: true,
                ..Subscribe::new(1, FieldTypes::MOMENTARY)
            }
        );

        // Changes to field values.
        let s = sub("<subscribe xmlns='urn:xmpp:iot:events' seqnr='1' momentary='true' maxInterval='PT15M' minInterval='PT5S'>
                <field name='Light' changedBy='5'/>
                <field name='Motion' changedBy='1' currentValue='0'/>
                <field name='Temperature'/>
            </subscribe>")
        .unwrap();
        assert_eq!(s.max_interval, mins(15));
        assert_eq!(s.min_interval, Some(Duration::from_secs(5)));
        assert_eq!(s.fields[0].thresholds(), (Some(5.0), Some(5.0)));
        assert_eq!(s.fields[1].current_value, Some(0.0));
        assert!(!s.fields[2].has_condition());

        // Historical data correlated to events.
        let s = sub("<subscribe xmlns='urn:xmpp:iot:events' seqnr='1' all='true' minInterval='PT1M' maxAge='PT5M'>
                <field name='Temperature'/>
                <field name='Light'/>
                <field name='Motion' changedUp='1'/>
            </subscribe>")
        .unwrap();
        assert!(s.all);
        assert_eq!(s.requested_types(), FieldTypes::all());
        assert_eq!(s.max_age, mins(5));
        assert_eq!(s.fields[2].thresholds(), (Some(1.0), None));

        // Nodes behind a concentrator; the example's typos maxInternval and changeBy are read.
        let s = sub("<subscribe xmlns='urn:xmpp:iot:events' seqnr='1' momentary='true' minInterval='PT5S' maxInternval='PT1H'>
                <node nodeId='DI1'/>
                <node nodeId='DI2'/>
                <node nodeId='DI3'/>
                <node nodeId='DI4'/>
                <field name='State' changeBy='1' currentValue='0'/>
            </subscribe>")
        .unwrap();
        assert_eq!(s.max_interval, mins(60));
        assert_eq!(s.nodes.len(), 4);
        assert_eq!(s.fields[0].changed_by, Some(1.0));

        let u = Unsubscribe::try_from(el("<unsubscribe xmlns='urn:xmpp:iot:events' seqnr='1'/>"))
            .unwrap();
        assert_eq!(u, Unsubscribe::new(1));
    }

    #[test]
    fn round_trips() {
        let xml =
            "<subscribe xmlns='urn:xmpp:iot:events' seqnr='42' status='true' historical='true' \
                   maxAge='P1D' minInterval='PT1M30S' maxInterval='PT1H' req='true' userToken='u'>\
                   <node nodeId='pump3' cacheType='Pump'/>\
                   <field name='Pressure' currentValue='4.2' changedUp='0.5' changedDown='0.25'/>\
                   <field name='Running' changedBy='1'/><field name='Temperature'/></subscribe>";
        let s = sub(xml).unwrap();
        assert_eq!(s.fields[0].thresholds(), (Some(0.5), Some(0.25)));
        assert_eq!(Element::from(s.clone()), el(xml));
        // Typos are read but the correct names are written.
        let typo = sub(
            "<subscribe xmlns='urn:xmpp:iot:events' seqnr='1' maxInternval='PT1H'>\
                        <field name='S' changeBy='2'/></subscribe>",
        )
        .unwrap();
        assert_eq!(
            Element::from(typo),
            el(
                "<subscribe xmlns='urn:xmpp:iot:events' seqnr='1' maxInterval='PT1H'>\
                <field name='S' changedBy='2'/></subscribe>"
            )
        );
        let built = Subscribe {
            min_interval: Some(Duration::from_millis(500)),
            fields: vec![FieldCondition {
                current_value: Some(-1.5),
                changed_by: Some(0.1),
                ..FieldCondition::new("X")
            }],
            nodes: vec![NodeRef::new("n")],
            ..Subscribe::new(7, FieldTypes::MOMENTARY)
        };
        assert_eq!(
            Subscribe::try_from(Element::from(built.clone())).unwrap(),
            built
        );
        let xml = "<unsubscribe xmlns='urn:xmpp:iot:events' seqnr='18446744073709551615'/>";
        let u = Unsubscribe::try_from(el(xml)).unwrap();
        assert_eq!(u.seqnr, u64::MAX);
        assert_eq!(Element::from(u), el(xml));
    }

    #[test]
    fn invalid_subscriptions_are_refused_precisely() {
        assert_eq!(
            sub("<subscribe xmlns='urn:xmpp:iot:events' momentary='true'/>").unwrap_err(),
            ParseError::MissingAttribute {
                element: "subscribe",
                attribute: "seqnr"
            }
        );
        assert_eq!(
            sub("<subscribe xmlns='urn:xmpp:iot:events' seqnr='one'/>").unwrap_err(),
            ParseError::InvalidAttribute {
                element: "subscribe",
                attribute: "seqnr",
                value: "one".into(),
                reason: ValueError::Unsigned
            }
        );
        assert_eq!(
            sub("<subscribe xmlns='urn:xmpp:iot:events' seqnr='1' req='yes'/>").unwrap_err(),
            ParseError::InvalidAttribute {
                element: "subscribe",
                attribute: "req",
                value: "yes".into(),
                reason: ValueError::Boolean
            }
        );
        assert_eq!(
            sub("<subscribe xmlns='urn:xmpp:iot:events' seqnr='1' maxInterval='300'/>")
                .unwrap_err()
                .to_string(),
            "<subscribe/> has an invalid maxInterval='300': expected xs:duration such as \
             PT1M30S or P1DT2H: must start with 'P'"
        );
        assert!(matches!(
            sub("<subscribe xmlns='urn:xmpp:iot:events' seqnr='1' maxAge='P1M'/>").unwrap_err(),
            ParseError::InvalidAttribute {
                attribute: "maxAge",
                reason: ValueError::Duration(_),
                ..
            }
        ));
        assert!(matches!(
            sub("<subscribe xmlns='urn:xmpp:iot:events' seqnr='1' minInterval='-PT5S'/>")
                .unwrap_err(),
            ParseError::InvalidAttribute {
                attribute: "minInterval",
                reason: ValueError::Duration("negative durations are not supported"),
                ..
            }
        ));
        let field = |attrs: &str| {
            sub(&format!(
                "<subscribe xmlns='urn:xmpp:iot:events' seqnr='1'><field {attrs}/></subscribe>"
            ))
            .unwrap_err()
        };
        assert_eq!(
            field("changedBy='1'"),
            ParseError::MissingAttribute {
                element: "field",
                attribute: "name"
            }
        );
        for (attr, bad) in [
            ("changedBy", "0"),
            ("changedUp", "-5"),
            ("changedDown", "NaN"),
            ("changeBy", "-1"),
        ] {
            assert_eq!(
                field(&format!("name='x' {attr}='{bad}'")),
                ParseError::InvalidAttribute {
                    element: "field",
                    attribute: attr,
                    value: bad.into(),
                    reason: ValueError::NotPositive
                }
            );
        }
        assert_eq!(
            field("name='x' changedBy='five'"),
            ParseError::InvalidAttribute {
                element: "field",
                attribute: "changedBy",
                value: "five".into(),
                reason: ValueError::Double
            }
        );
        assert_eq!(
            field("name='x' currentValue='INF'"),
            ParseError::InvalidAttribute {
                element: "field",
                attribute: "currentValue",
                value: "INF".into(),
                reason: ValueError::NotFinite
            }
        );
        assert_eq!(
            sub("<subscribe xmlns='urn:xmpp:iot:events' seqnr='1'><numeric name='x'/></subscribe>")
                .unwrap_err(),
            ParseError::UnexpectedChild {
                parent: "subscribe",
                child: "numeric".into()
            }
        );
        assert!(matches!(
            sub("<subscribe xmlns='urn:xmpp:iot:sensordata' seqnr='1'/>").unwrap_err(),
            ParseError::WrongElement {
                expected: "subscribe",
                expected_ns: NS,
                ..
            }
        ));
        assert!(matches!(
            Unsubscribe::try_from(el("<unsubscribe xmlns='urn:xmpp:iot:events' seqnr='-1'/>")),
            Err(ParseError::InvalidAttribute {
                attribute: "seqnr",
                ..
            })
        ));
    }

    #[test]
    fn malformed_elements_never_panic() {
        let docs = [
            "<subscribe xmlns='urn:xmpp:iot:events' seqnr='1' maxAge='P'/>",
            "<subscribe xmlns='urn:xmpp:iot:events' seqnr='1' maxAge='PT\u{663}S'/>",
            "<subscribe xmlns='urn:xmpp:iot:events' seqnr='1' minInterval='PT1.S'/>",
            "<subscribe xmlns='urn:xmpp:iot:events' seqnr='1' maxInterval='P18446744073709551615D'/>",
            "<subscribe xmlns='urn:xmpp:iot:events' seqnr='1'><field name='x' changedBy='1e'/></subscribe>",
            "<subscribe xmlns='urn:xmpp:iot:events' seqnr='1'><field name='x' currentValue=''/></subscribe>",
            "<subscribe xmlns='urn:xmpp:iot:events' seqnr='1'><node/></subscribe>",
            "<unsubscribe xmlns='urn:xmpp:iot:events'/>",
            "<unsubscribe xmlns='urn:xmpp:iot:events' seqnr='1e3'/>",
        ];
        for xml in docs {
            let e = el(xml);
            assert!(Subscribe::try_from(&e).is_err(), "{xml}");
            assert!(Unsubscribe::try_from(&e).is_err(), "{xml}");
        }
    }
}
