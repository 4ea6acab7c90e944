//! Service discovery (XEP-0030) and entity capabilities (XEP-0115).

use xmpp_parsers::caps::{compute_disco, hash_caps, Caps};
use xmpp_parsers::disco::{DiscoInfoResult, Identity};
use xmpp_parsers::hashes::Algo;
use xmpp_parsers::ns;

/// The caps `node` we advertise: the project's address.
pub const CAPS_NODE: &str = "https://github.com/fieldgate/fieldgate";

/// Features every device JID offers.
const DEVICE_FEATURES: &[&str] = &[ns::DISCO_INFO, ns::PING, ns::VERSION, ns::CAPS];

/// What a device JID answers to disco#info, and the caps that go into its presence.
#[derive(Debug, Clone)]
pub struct DeviceDisco {
    /// The disco#info result (without node).
    pub info: DiscoInfoResult,
    /// The XEP-0115 element for presence, hashing `info`.
    pub caps: Caps,
    /// `node#ver`, the node a caps-driven disco#info asks for.
    pub caps_node: String,
}

impl DeviceDisco {
    /// Builds the disco identity (client/bot named after the device) and features, plus
    /// `extra` features that the device's capabilities add (sensor data, control, ...).
    pub fn new(name: &str, extra: &[&str]) -> DeviceDisco {
        let info = DiscoInfoResult {
            node: None,
            identities: vec![Identity::new("client", "bot", "en", name)],
            features: DEVICE_FEATURES
                .iter()
                .chain(extra)
                .map(|f| f.to_string())
                .collect(),
            extensions: vec![],
        };
        let hash =
            hash_caps(&compute_disco(&info), Algo::Sha_1).expect("SHA-1 is always available");
        let caps = Caps::new(CAPS_NODE, hash);
        let caps_node = format!("{CAPS_NODE}#{}", base64_ver(&caps.ver));
        DeviceDisco {
            info,
            caps,
            caps_node,
        }
    }

    /// The result for a disco#info query with `node`: `None` for the plain query or our
    /// caps node, else the node is unknown.
    pub fn answer(&self, node: Option<&str>) -> Option<DiscoInfoResult> {
        match node {
            None => Some(self.info.clone()),
            Some(n) if n == self.caps_node => Some(DiscoInfoResult {
                node: Some(n.to_owned()),
                ..self.info.clone()
            }),
            Some(_) => None,
        }
    }
}

/// disco#info of the component domain itself.
pub fn domain_info() -> DiscoInfoResult {
    DiscoInfoResult {
        node: None,
        identities: vec![
            Identity::new("component", "generic", "en", "fieldgate"),
            Identity::new("gateway", "x-fieldbus", "en", "fieldgate field-bus gateway"),
        ],
        features: [ns::DISCO_INFO, ns::DISCO_ITEMS, ns::PING, ns::VERSION]
            .iter()
            .map(|f| f.to_string())
            .collect(),
        extensions: vec![],
    }
}

fn base64_ver(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_xmpp::minidom::Element;

    #[test]
    fn caps_ver_matches_the_xep_0115_worked_example() {
        // XEP-0115 §5.2: "client/pc//Exodus 0.9.1<" + features → QgayPKawpkPSDYmwT/WM94uAlu0=
        let info = DiscoInfoResult {
            node: None,
            identities: vec![Identity::new("client", "pc", "", "Exodus 0.9.1")],
            features: [
                "http://jabber.org/protocol/caps",
                "http://jabber.org/protocol/disco#info",
                "http://jabber.org/protocol/disco#items",
                "http://jabber.org/protocol/muc",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
            extensions: vec![],
        };
        let mut info = info;
        info.identities[0].lang = None;
        let hash = hash_caps(&compute_disco(&info), Algo::Sha_1).unwrap();
        assert_eq!(base64_ver(&hash.hash), "QgayPKawpkPSDYmwT/WM94uAlu0=");
    }

    #[test]
    fn device_disco_answers_its_caps_node_only() {
        let d = DeviceDisco::new("Pump 3", &[]);
        assert!(d.answer(None).is_some());
        let via_caps = d.answer(Some(&d.caps_node)).unwrap();
        assert_eq!(via_caps.node.as_deref(), Some(d.caps_node.as_str()));
        assert!(d.answer(Some("other#x")).is_none());
        let el: Element = d.info.clone().into();
        assert!(el.children().any(|c| c.is("identity", ns::DISCO_INFO)
            && c.attr("name") == Some("Pump 3")
            && c.attr("category") == Some("client")));
        let caps: Element = d.caps.clone().into();
        assert_eq!(caps.attr("hash"), Some("sha-1"));
        assert_eq!(caps.attr("node"), Some(CAPS_NODE));
    }
}
