//! Presence stanzas sent on behalf of devices.

use tokio_xmpp::minidom::Element;
use xmpp_parsers::ns;

use crate::xmpp::stanza::BuilderExt;

/// `subscribed`, `unsubscribed`, ... from a device's bare JID.
pub fn subscription(type_: &str, from_bare: &str, to: &str) -> Element {
    Element::builder("presence", ns::COMPONENT)
        .a("type", type_)
        .a("from", from_bare)
        .a("to", to)
        .build()
}

/// Available presence from a device's full JID, carrying its caps.
pub fn available(from_full: &str, to: &str, caps: &Element) -> Element {
    Element::builder("presence", ns::COMPONENT)
        .a("from", from_full)
        .a("to", to)
        .append(caps.clone())
        .build()
}

/// Unavailable presence from a device's full JID, with the reason as status text.
pub fn unavailable(from_full: &str, to: &str, reason: &str) -> Element {
    Element::builder("presence", ns::COMPONENT)
        .a("type", "unavailable")
        .a("from", from_full)
        .a("to", to)
        .append(
            Element::builder("status", ns::COMPONENT)
                .append(reason)
                .build(),
        )
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unavailable_carries_the_reason() {
        let p = unavailable("pump3@gw.x/gw", "alice@x", "Modbus timeout");
        let expected: Element = "<presence xmlns='jabber:component:accept' type='unavailable' \
             from='pump3@gw.x/gw' to='alice@x'><status>Modbus timeout</status></presence>"
            .parse()
            .unwrap();
        assert_eq!(p, expected);
    }
}
