//! XEP-0203 delayed delivery, added to messages the gateway wrote as text (change events
//! kept while the component link was down) when they finally leave.

use std::time::SystemTime;

use crate::xmpp::payload::xsd::XsDateTime;
use crate::xmpp::stanza_text::{push_attr, push_attr_display};

/// The delayed-delivery namespace.
pub const NS: &str = "urn:xmpp:delay";

/// The bytes a `<delay>` from `from` adds to a message at most: a message that may be
/// delayed later is written this much under the outbound size bound.
pub fn room(from: &str) -> usize {
    // `<delay xmlns='urn:xmpp:delay' from='' stamp=''/>` and the longest stamp
    // (nanoseconds and an offset); `from` escaped may grow six-fold at worst.
    48 + 36 + 6 * from.len()
}

/// `message`, one `<message>…</message>` as written by the gateway, with a `<delay>`
/// saying it was meant for delivery at `stamp`, delayed by `from`, as its last child.
/// A text that is not a message written so is returned as it was.
pub fn add(message: &str, from: &str, stamp: SystemTime) -> String {
    let Some(end) = message.rfind("</message>") else {
        return message.to_owned();
    };
    let mut out = String::with_capacity(message.len() + room(from));
    out.push_str(&message[..end]);
    out.push_str("<delay xmlns='");
    out.push_str(NS);
    out.push('\'');
    push_attr(&mut out, "from", from);
    push_attr_display(&mut out, "stamp", XsDateTime::from_system_time(stamp));
    out.push_str("/>");
    out.push_str(&message[end..]);
    out
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use xmpp_parsers::delay::Delay;

    use super::*;
    use crate::xmpp::stanza_text::parse;

    #[test]
    fn a_delay_is_the_message_s_last_child_and_parses_as_xep_0203() {
        let msg = "<message from='pump@gw.example.org/gw' to='alice@example.org/x'>\
                   <fields xmlns='urn:xmpp:iot:sensordata' seqnr='1' done='true'/></message>";
        let stamp = UNIX_EPOCH + Duration::from_millis(1_790_000_000_123);
        let text = add(msg, "gw.example.org", stamp);
        assert!(text.len() <= msg.len() + room("gw.example.org"), "{text}");
        let el = parse(&text).expect("well-formed");
        let children: Vec<_> = el.children().map(|c| c.name().to_owned()).collect();
        assert_eq!(children, ["fields", "delay"]);
        let delay = Delay::try_from(el.get_child("delay", NS).unwrap().clone()).unwrap();
        assert_eq!(delay.from.unwrap().to_string(), "gw.example.org");
        assert_eq!(delay.stamp.0.timestamp_millis(), 1_790_000_000_123);
        // not a message: left alone
        assert_eq!(add("<iq/>", "gw.example.org", stamp), "<iq/>");
    }

    #[test]
    fn the_room_kept_free_is_enough_for_the_longest_stamp() {
        let from = "a'b&c.example.org";
        let msg = "<message><x/></message>";
        let far = UNIX_EPOCH + Duration::new(253_402_300_799, 999_999_999);
        assert!(add(msg, from, far).len() <= msg.len() + room(from));
    }
}
