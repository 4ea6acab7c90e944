//! A device's online/offline messages.

use std::borrow::Cow;

use crate::pointer::Pointer;
use crate::tree::Node;

/// How a device says it is online or offline: the payload, trimmed, compared exactly with
/// the configured words, or, with a pointer, the JSON value there (a string, or a boolean
/// or number as its JSON text). With a pointer, a payload that is not JSON is compared as
/// plain text, so that Zigbee2MQTT's two availability forms, `online` and
/// `{"state":"online"}`, are both understood.
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::ptr;

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
}
