//! Error replies the IoT handlers share (RFC 6120 conditions with a text).

use tokio_xmpp::minidom::Element;
use xmpp_parsers::stanza_error::{DefinedCondition, ErrorType};

use crate::xmpp::stanza::Header;

pub(super) fn bad_request(h: &Header, text: &str) -> Element {
    h.error(ErrorType::Modify, DefinedCondition::BadRequest, text, None)
}

pub(super) fn forbidden(h: &Header, text: &str, beside: Vec<Element>) -> Element {
    h.error_with(
        ErrorType::Cancel,
        DefinedCondition::Forbidden,
        text,
        vec![],
        beside,
    )
}

pub(super) fn not_found(h: &Header, text: &str, beside: Vec<Element>) -> Element {
    h.error_with(
        ErrorType::Cancel,
        DefinedCondition::ItemNotFound,
        text,
        vec![],
        beside,
    )
}
