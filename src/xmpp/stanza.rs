//! Classifying inbound stanzas and building replies and RFC 6120 errors.

use tokio_xmpp::minidom::Element;
use xmpp_parsers::jid::Jid;
use xmpp_parsers::ns;
use xmpp_parsers::stanza_error::{DefinedCondition, ErrorType, StanzaError};

/// The three stanza kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `<iq/>`
    Iq,
    /// `<message/>`
    Message,
    /// `<presence/>`
    Presence,
}

/// The routing header of an inbound stanza: who, to whom, what type, which id.
#[derive(Debug, Clone)]
pub struct Header {
    /// Stanza kind.
    pub kind: Kind,
    /// The sender, as the server stamped it.
    pub from: Jid,
    /// The addressee: the component domain or a JID under it.
    pub to: Jid,
    /// The `type` attribute, if any.
    pub type_: Option<String>,
    /// The `id` attribute, if any.
    pub id: Option<String>,
}

/// Why a stanza cannot even be routed; it is logged and dropped, because without a valid
/// `from` there is nobody to send an error to.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// Not iq, message or presence (or not in the component namespace).
    #[error("not a stanza: <{0}/>")]
    NotAStanza(String),
    /// `from` missing or not a JID.
    #[error("missing or invalid 'from'")]
    BadFrom,
    /// `to` missing or not a JID.
    #[error("missing or invalid 'to'")]
    BadTo,
}

impl Header {
    /// Reads the routing header of `el`.
    pub fn parse(el: &Element) -> Result<Header, HeaderError> {
        let kind = match (el.name(), el.ns().as_str()) {
            ("iq", ns::COMPONENT) => Kind::Iq,
            ("message", ns::COMPONENT) => Kind::Message,
            ("presence", ns::COMPONENT) => Kind::Presence,
            (name, _) => return Err(HeaderError::NotAStanza(name.to_owned())),
        };
        let jid = |a: &str| el.attr(a).and_then(|v| Jid::new(v).ok());
        Ok(Header {
            kind,
            from: jid("from").ok_or(HeaderError::BadFrom)?,
            to: jid("to").ok_or(HeaderError::BadTo)?,
            type_: el.attr("type").map(str::to_owned),
            id: el.attr("id").map(str::to_owned),
        })
    }

    /// The iq `result` answering this request, from the JID it was addressed to.
    pub fn result(&self, payload: Option<Element>) -> Element {
        let mut b = self.reply_builder("result");
        if let Some(p) = payload {
            b = b.append(p);
        }
        b.build()
    }

    /// The `error` answering this request, with an RFC 6120 condition and a text.
    pub fn error(
        &self,
        type_: ErrorType,
        condition: DefinedCondition,
        text: &str,
        extra: Option<Element>,
    ) -> Element {
        let mut err = StanzaError::new(type_, condition, "en", text);
        err.other = extra;
        self.reply_builder("error")
            .append(Element::from(err))
            .build()
    }

    /// An error reply whose `<error>` also holds `inside` (e.g. one XEP-0325 `paramError`
    /// per failing parameter) and whose stanza holds `beside` next to it (the
    /// `setResponse` older clients look for).
    pub fn error_with(
        &self,
        type_: ErrorType,
        condition: DefinedCondition,
        text: &str,
        inside: Vec<Element>,
        beside: Vec<Element>,
    ) -> Element {
        let mut err: Element = StanzaError::new(type_, condition, "en", text).into();
        for e in inside {
            err.append_child(e);
        }
        let mut b = self.reply_builder("error");
        for e in beside {
            b = b.append(e);
        }
        b.append(err).build()
    }

    fn reply_builder(&self, type_: &str) -> tokio_xmpp::minidom::ElementBuilder {
        let name = match self.kind {
            Kind::Iq => "iq",
            Kind::Message => "message",
            Kind::Presence => "presence",
        };
        let mut b = Element::builder(name, ns::COMPONENT)
            .a("type", type_)
            .a("from", self.to.to_string())
            .a("to", self.from.to_string());
        if let Some(id) = &self.id {
            b = b.a("id", id.as_str());
        }
        b
    }
}

/// How much of a requester's own text (a field or parameter name) an error repeats.
pub const ECHO_MAX: usize = 64;

/// `s` as an error text may repeat it: at most [`ECHO_MAX`] bytes, cut at a character
/// boundary and marked with `…`. An error reply never carries more than a bounded part
/// of the request.
pub fn clip(s: &str) -> std::borrow::Cow<'_, str> {
    if s.len() <= ECHO_MAX {
        return s.into();
    }
    let mut end = ECHO_MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end]).into()
}

/// `ElementBuilder::attr` takes an `NcName`; our attribute names are fixed literals.
pub trait BuilderExt {
    /// Sets attribute `name` (a valid XML name) to `value`.
    fn a(self, name: &str, value: impl tokio_xmpp::minidom::IntoAttributeValue) -> Self;
}

impl BuilderExt for tokio_xmpp::minidom::ElementBuilder {
    fn a(self, name: &str, value: impl tokio_xmpp::minidom::IntoAttributeValue) -> Self {
        // An absent optional attribute costs nothing, not even checking its name.
        let Some(value) = value.into_attribute_value() else {
            return self;
        };
        let name = tokio_xmpp::minidom::rxml::NcName::try_from(name)
            .expect("attribute names used by the gateway are valid XML names");
        self.attr(name, value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn el(xml: &str) -> Element {
        xml.parse().unwrap()
    }

    #[test]
    fn headers_parse_and_errors_address_the_sender() {
        let req = el("<iq xmlns='jabber:component:accept' type='get' id='a1' \
             from='alice@example.org/app' to='pump3@gw.example.org'><x xmlns='urn:x'/></iq>");
        let h = Header::parse(&req).unwrap();
        assert_eq!(h.kind, Kind::Iq);
        let err = h.error(
            ErrorType::Cancel,
            DefinedCondition::ServiceUnavailable,
            "no such thing",
            None,
        );
        let expected = el("<iq xmlns='jabber:component:accept' type='error' id='a1' \
             from='pump3@gw.example.org' to='alice@example.org/app'>\
             <error type='cancel'><service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>\
             <text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas' xml:lang='en'>no such thing</text>\
             </error></iq>");
        assert_eq!(err, expected);
        let res = h.result(None);
        assert_eq!(res.attr("type"), Some("result"));
        assert_eq!(res.attr("to"), Some("alice@example.org/app"));
    }

    #[test]
    fn echoed_text_is_clipped_at_a_character_boundary() {
        assert_eq!(clip("short"), "short");
        let long = "é".repeat(40); // 80 bytes
        let c = clip(&long);
        assert_eq!(c, format!("{}…", "é".repeat(32)));
    }

    #[test]
    fn unroutable_stanzas_are_refused() {
        assert_eq!(
            Header::parse(&el(
                "<iq xmlns='jabber:component:accept' type='get' to='gw.x'/>"
            ))
            .unwrap_err(),
            HeaderError::BadFrom
        );
        assert_eq!(
            Header::parse(&el(
                "<iq xmlns='jabber:component:accept' from='a@b' to='@@'/>"
            ))
            .unwrap_err(),
            HeaderError::BadTo
        );
        assert!(matches!(
            Header::parse(&el("<foo xmlns='jabber:component:accept'/>")),
            Err(HeaderError::NotAStanza(_))
        ));
    }
}
