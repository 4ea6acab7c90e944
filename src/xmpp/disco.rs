//! Service discovery (XEP-0030) and entity capabilities (XEP-0115).

use tokio_xmpp::minidom::Element;
use xmpp_parsers::caps::{compute_disco, hash_caps, Caps};
use xmpp_parsers::disco::{DiscoInfoResult, Identity, Item};
use xmpp_parsers::hashes::Algo;
use xmpp_parsers::ns;
use xmpp_parsers::rsm::{First, SetQuery, SetResult};

use crate::xmpp::size::encoded_len_in;

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
        let caps_node = format!("{CAPS_NODE}#{}", hash.to_base64());
        let caps = Caps::new(CAPS_NODE, hash);
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
        features: [
            ns::DISCO_INFO,
            ns::DISCO_ITEMS,
            ns::PING,
            ns::RSM,
            ns::VERSION,
        ]
        .iter()
        .map(|f| f.to_string())
        .collect(),
        extensions: vec![],
    }
}

/// Why a page of disco#items cannot be given.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum PageError {
    /// `after` or `before` names no item of the list (XEP-0059 §2.5: item-not-found).
    #[error("no item {0:?} in the list")]
    UnknownItem(String),
}

/// One page of `items` (XEP-0059 result set management): the page `rsm` asks for, if any,
/// and never more than fits in `budget` bytes. A request without `<set/>` whose answer
/// fits gets every item and no `<set/>`, as before paging existed; otherwise the result
/// carries `<set/>` with the first and last item of the page and the total count, so a
/// client can ask for the next page with `<after/>`.
pub fn page(
    items: Vec<Item>,
    rsm: Option<&SetQuery>,
    budget: usize,
) -> Result<(Vec<Item>, Option<SetResult>), PageError> {
    let total = items.len();
    let position = |uid: &str| {
        items
            .iter()
            .position(|i| i.jid.as_str() == uid)
            .ok_or_else(|| PageError::UnknownItem(crate::xmpp::stanza::clip(uid).into_owned()))
    };
    let max = rsm.and_then(|q| q.max).unwrap_or(usize::MAX);
    // The page's range before the size bound: [start, end).
    let (start, end) = match rsm {
        Some(SetQuery {
            before: Some(before),
            ..
        }) => {
            let end = if before.is_empty() {
                total
            } else {
                position(before)?
            };
            (end.saturating_sub(max), end)
        }
        Some(q) => {
            let start = match (&q.after, q.index) {
                (Some(after), _) => position(after)? + 1,
                (None, Some(index)) => index.min(total),
                (None, None) => 0,
            };
            (start, start.saturating_add(max).min(total))
        }
        None => (0, total),
    };
    let mut used = 0;
    let mut taken = 0;
    for item in &items[start..end] {
        let size = encoded_len_in(&Element::from(item.clone()), ns::DISCO_ITEMS);
        if taken > 0 && used + size > budget {
            break;
        }
        used += size;
        taken += 1;
    }
    let whole = rsm.is_none() && taken == total;
    let page: Vec<Item> = items.into_iter().skip(start).take(taken).collect();
    if whole {
        return Ok((page, None));
    }
    let set = SetResult {
        first: page.first().map(|i| First {
            index: Some(start),
            item: i.jid.to_string(),
        }),
        last: page.last().map(|i| i.jid.to_string()),
        count: Some(total),
    };
    Ok((page, Some(set)))
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
        assert_eq!(hash.to_base64(), "QgayPKawpkPSDYmwT/WM94uAlu0=");
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
        // The node a caps-driven query names carries the ver that presence advertises.
        assert_eq!(
            d.caps_node,
            format!("{CAPS_NODE}#{}", caps.attr("ver").unwrap())
        );
    }

    fn items(n: usize) -> Vec<Item> {
        (0..n)
            .map(|i| Item {
                jid: xmpp_parsers::jid::Jid::new(&format!("dev{i:04}@gw.example.org")).unwrap(),
                node: None,
                name: Some(format!("Device {i}")),
            })
            .collect()
    }

    fn query(max: Option<usize>, after: Option<&str>, before: Option<&str>) -> SetQuery {
        SetQuery {
            max,
            after: after.map(str::to_owned),
            before: before.map(str::to_owned),
            index: None,
        }
    }

    #[test]
    fn a_list_that_fits_is_given_whole_without_a_set() {
        let (page, set) = page(items(10), None, 64 * 1024).unwrap();
        assert_eq!(page.len(), 10);
        assert_eq!(set, None);
    }

    #[test]
    fn a_long_list_is_paged_under_the_budget_and_can_be_walked() {
        let budget = 4096;
        let (first, set) = page(items(1000), None, budget).unwrap();
        let set = set.expect("a page says where it is");
        assert_eq!(set.count, Some(1000));
        assert_eq!(set.first.as_ref().unwrap().index, Some(0));
        assert!(first.len() > 10 && first.len() < 1000);
        let size: usize = first
            .iter()
            .map(|i| encoded_len_in(&Element::from(i.clone()), ns::DISCO_ITEMS))
            .sum();
        assert!(size <= budget);
        // walk the rest with <after/>
        let mut seen = first.len();
        let mut last = set.last.unwrap();
        while seen < 1000 {
            let (p, s) = page(items(1000), Some(&query(None, Some(&last), None)), budget).unwrap();
            assert!(!p.is_empty());
            assert_eq!(
                s.as_ref().unwrap().first.as_ref().unwrap().index,
                Some(seen)
            );
            seen += p.len();
            last = s.unwrap().last.unwrap_or_default();
        }
        assert_eq!(seen, 1000);
    }

    #[test]
    fn max_before_and_unknown_items() {
        let (p, s) = page(items(100), Some(&query(Some(5), None, None)), 1 << 20).unwrap();
        assert_eq!(p.len(), 5);
        assert_eq!(s.unwrap().last.as_deref(), Some("dev0004@gw.example.org"));
        // the last page
        let (p, s) = page(items(100), Some(&query(Some(3), None, Some(""))), 1 << 20).unwrap();
        assert_eq!(p[0].jid.as_str(), "dev0097@gw.example.org");
        assert_eq!(s.unwrap().first.unwrap().index, Some(97));
        // the page before an item
        let (p, _) = page(
            items(100),
            Some(&query(Some(2), None, Some("dev0010@gw.example.org"))),
            1 << 20,
        )
        .unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(p[1].jid.as_str(), "dev0009@gw.example.org");
        assert!(matches!(
            page(
                items(3),
                Some(&query(None, Some("nobody@x"), None)),
                1 << 20
            ),
            Err(PageError::UnknownItem(_))
        ));
        // past the end: an empty page, still with the count
        let (p, s) = page(
            items(3),
            Some(&query(None, Some("dev0002@gw.example.org"), None)),
            1 << 20,
        )
        .unwrap();
        assert!(p.is_empty());
        assert_eq!(s.unwrap().count, Some(3));
    }
}
