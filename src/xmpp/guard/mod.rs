//! Bounds on what the server may hand the gateway: every inbound stanza is checked at
//! the byte level ([`scanner`]) on its way from the socket to the XML parser ([`io`]);
//! one that breaks a bound reaches the gateway as its routing header and a [`Refusal`].

pub mod io;
pub mod scanner;

use std::fmt;

use tokio_xmpp::minidom::Element;

use crate::xmpp::stanza::BuilderExt;

/// The namespace of the [`Refusal`] marker. Internal: it never leaves the gateway.
pub const NS: &str = "urn:fieldgate:guard";

/// Bounds on one inbound stanza.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bytes from the stanza's `<` to its last `>`.
    pub max_stanza_bytes: usize,
    /// Elements nested below the stanza element (`<iq><query/></iq>` is 1).
    pub max_depth: usize,
    /// One attribute value, as written (escaped).
    pub max_attribute_bytes: usize,
    /// One element or attribute name.
    pub max_name_bytes: usize,
}

/// The parser tokio-xmpp builds refuses, as a fatal stream error, any name or attribute
/// value of 8,192 bytes or more (rxml's default token limit); values are checked here as
/// written, which is never shorter than decoded.
pub const MAX_ATTRIBUTE_BYTES: usize = 8000;
/// No XMPP name comes close; a long one is an attack or a bug.
pub const MAX_NAME_BYTES: usize = 1024;

impl Limits {
    /// The limits with the given stanza size and depth, and the fixed token bounds.
    pub fn new(max_stanza_bytes: usize, max_depth: usize) -> Limits {
        Limits {
            max_stanza_bytes,
            max_depth,
            max_attribute_bytes: MAX_ATTRIBUTE_BYTES,
            max_name_bytes: MAX_NAME_BYTES,
        }
    }

    /// The number a violation broke (0 for restricted XML, which has none, and for a busy
    /// sender, which the inbound queue bounds, not the scanner).
    pub fn limit_of(&self, v: Violation) -> usize {
        match v {
            Violation::Size => self.max_stanza_bytes,
            Violation::Depth => self.max_depth,
            Violation::Attribute => self.max_attribute_bytes,
            Violation::Name => self.max_name_bytes,
            Violation::Restricted | Violation::Busy => 0,
        }
    }
}

/// Which bound a stanza broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Violation {
    /// Larger than `max_stanza_bytes`.
    Size,
    /// Nested deeper than `max_depth`.
    Depth,
    /// An attribute value longer than `max_attribute_bytes`.
    Attribute,
    /// A name longer than `max_name_bytes`.
    Name,
    /// A comment, processing instruction or DTD, which XMPP forbids (RFC 6120 §11.1).
    Restricted,
    /// More than `limit` stanzas of the sender wait to be served (a flood): the stanza
    /// is answered `resource-constraint` without being looked at.
    Busy,
}

impl Violation {
    /// The name used in the marker and in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Violation::Size => "size",
            Violation::Depth => "depth",
            Violation::Attribute => "attribute",
            Violation::Name => "name",
            Violation::Restricted => "restricted",
            Violation::Busy => "busy",
        }
    }

    fn parse(s: &str) -> Option<Violation> {
        [
            Violation::Size,
            Violation::Depth,
            Violation::Attribute,
            Violation::Name,
            Violation::Restricted,
            Violation::Busy,
        ]
        .into_iter()
        .find(|v| v.as_str() == s)
    }
}

/// `<refused xmlns='urn:fieldgate:guard' reason='depth' limit='64' size='42012'/>`: put
/// by the scanner in place of a stanza's content when the stanza broke a bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    /// The bound broken.
    pub violation: Violation,
    /// Its value.
    pub limit: usize,
    /// The size of the refused stanza, in bytes.
    pub size: usize,
}

impl Refusal {
    /// The refusal marker in `stanza`, if the guard replaced it.
    pub fn of(stanza: &Element) -> Option<Refusal> {
        stanza
            .get_child("refused", NS)
            .and_then(|el| Refusal::try_from(el).ok())
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.violation {
            Violation::Size => write!(f, "stanza larger than {} bytes", self.limit),
            Violation::Depth => write!(f, "elements nested deeper than {} levels", self.limit),
            Violation::Attribute => {
                write!(f, "an attribute value longer than {} bytes", self.limit)
            }
            Violation::Name => write!(f, "a name longer than {} bytes", self.limit),
            Violation::Restricted => {
                f.write_str("a comment, processing instruction or DTD (not allowed in XMPP)")
            }
            Violation::Busy => write!(
                f,
                "more than {} of your stanzas are waiting to be served; try again later",
                self.limit
            ),
        }
    }
}

/// Why an element is not a [`Refusal`].
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("not a guard refusal marker")]
pub struct NotARefusal;

impl TryFrom<&Element> for Refusal {
    type Error = NotARefusal;

    fn try_from(el: &Element) -> Result<Refusal, NotARefusal> {
        if !el.is("refused", NS) {
            return Err(NotARefusal);
        }
        Ok(Refusal {
            violation: el
                .attr("reason")
                .and_then(Violation::parse)
                .ok_or(NotARefusal)?,
            limit: number(el, "limit")?,
            size: number(el, "size")?,
        })
    }
}

fn number(el: &Element, attr: &str) -> Result<usize, NotARefusal> {
    el.attr(attr)
        .and_then(|l| l.parse().ok())
        .ok_or(NotARefusal)
}

impl From<Refusal> for Element {
    fn from(r: Refusal) -> Element {
        Element::builder("refused", NS)
            .a("reason", r.violation.as_str())
            .a("limit", r.limit.to_string())
            .a("size", r.size.to_string())
            .build()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_marker_round_trips() {
        let el: Element = "<iq xmlns='jabber:component:accept' id='1'>\
             <refused xmlns='urn:fieldgate:guard' reason='depth' limit='64' size='9000'/></iq>"
            .parse()
            .unwrap();
        let r = Refusal::of(&el).unwrap();
        assert_eq!(
            r,
            Refusal {
                violation: Violation::Depth,
                limit: 64,
                size: 9000
            }
        );
        assert_eq!(Element::from(r), *el.children().next().unwrap());
        assert_eq!(r.to_string(), "elements nested deeper than 64 levels");
        let other: Element = "<refused xmlns='urn:x' reason='depth' limit='1'/>"
            .parse()
            .unwrap();
        assert_eq!(Refusal::try_from(&other), Err(NotARefusal));
        let bad: Element = "<refused xmlns='urn:fieldgate:guard' reason='deep' limit='1'/>"
            .parse()
            .unwrap();
        assert_eq!(Refusal::try_from(&bad), Err(NotARefusal));
    }
}
