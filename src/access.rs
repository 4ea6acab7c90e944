//! Who may subscribe to, read and control which device.
//!
//! Lists name bare JIDs (`alice@example.org`), whole domains (`example.org`) or anyone
//! (`"*"`). The gateway-wide `[access]` lists apply to every device unless the device's own
//! `[device.access]` sets the same right, which then replaces (not extends) it. An empty
//! list admits nobody, which is the default: a fresh install exposes nothing.

use std::fmt;

use xmpp_parsers::jid::BareJid;

/// One right a requester may hold on a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Right {
    /// Subscribe to the device's presence.
    Subscribe,
    /// Read its values (XEP-0323, events).
    Read,
    /// Change its values (XEP-0325).
    Control,
}

impl fmt::Display for Right {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Right::Subscribe => "subscribe",
            Right::Read => "read",
            Right::Control => "control",
        })
    }
}

/// One entry of an access list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// `"*"`: everyone the XMPP server lets through.
    Anyone,
    /// Every JID of this domain.
    Domain(String),
    /// Exactly this bare JID.
    Jid(BareJid),
}

impl Entry {
    /// Parses `*`, a domain or a bare JID; `None` when it is none of these.
    pub fn parse(s: &str) -> Result<Entry, String> {
        let s = s.trim();
        if s == "*" {
            return Ok(Entry::Anyone);
        }
        if s.contains('/') {
            return Err(format!(
                "{s:?} has a resource; use a bare JID (user@domain) or a domain"
            ));
        }
        if s.contains('*') {
            // A JID may well contain '*', so "*.example.org" would be taken as a domain of
            // that name and silently admit nobody.
            return Err(format!(
                "{s:?} is no pattern: an entry is \"*\" (anyone), a domain (which admits \
                 all its accounts, e.g. \"example.org\") or a bare JID"
            ));
        }
        let jid = BareJid::new(s).map_err(|e| format!("{s:?} is not a JID or domain: {e}"))?;
        Ok(match jid.node() {
            None => Entry::Domain(jid.domain().as_str().to_owned()),
            Some(_) => Entry::Jid(jid),
        })
    }

    fn admits(&self, who: &BareJid) -> bool {
        match self {
            Entry::Anyone => true,
            Entry::Domain(d) => who.domain().as_str() == d,
            Entry::Jid(j) => j == who,
        }
    }
}

/// The three lists of one scope (the gateway, or one device's overrides).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Lists {
    /// Who may subscribe to presence.
    pub subscribe: Option<Vec<Entry>>,
    /// Who may read.
    pub read: Option<Vec<Entry>>,
    /// Who may control.
    pub control: Option<Vec<Entry>>,
}

impl Lists {
    fn get(&self, right: Right) -> Option<&Vec<Entry>> {
        match right {
            Right::Subscribe => self.subscribe.as_ref(),
            Right::Read => self.read.as_ref(),
            Right::Control => self.control.as_ref(),
        }
    }
}

/// Decides a request against the gateway lists and a device's overrides.
///
/// `Err` carries a sentence for the log saying why the request was refused.
pub fn check(gateway: &Lists, device: &Lists, right: Right, who: &BareJid) -> Result<(), String> {
    let (list, scope) = match device.get(right) {
        Some(l) => (l.as_slice(), "device.access"),
        None => (gateway.get(right).map_or(&[][..], Vec::as_slice), "access"),
    };
    if list.iter().any(|e| e.admits(who)) {
        Ok(())
    } else if list.is_empty() {
        Err(format!(
            "{scope}.{right} is empty (the default admits nobody)"
        ))
    } else {
        Err(format!("{who} is not admitted by {scope}.{right}"))
    }
}

/// Whether `who` holds any right on the device: such a requester may see it in disco.
pub fn may_see(gateway: &Lists, device: &Lists, who: &BareJid) -> bool {
    [Right::Subscribe, Right::Read, Right::Control]
        .into_iter()
        .any(|r| check(gateway, device, r, who).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jid(s: &str) -> BareJid {
        BareJid::new(s).unwrap()
    }

    #[test]
    fn entries_parse() {
        assert_eq!(Entry::parse("*"), Ok(Entry::Anyone));
        assert_eq!(
            Entry::parse("Example.ORG"),
            Ok(Entry::Domain("example.org".into()))
        );
        assert_eq!(
            Entry::parse("Alice@example.org"),
            Ok(Entry::Jid(jid("alice@example.org")))
        );
        assert!(Entry::parse("alice@example.org/phone").is_err());
        assert!(Entry::parse("a b@example.org").is_err());
        // a wildcard pattern would be a domain of that name, admitting nobody
        for pattern in ["*.example.test", "*@example.org", "alice@*"] {
            let e = Entry::parse(pattern).unwrap_err();
            assert!(e.contains("no pattern") && e.contains("domain"), "{e}");
        }
    }

    #[test]
    fn device_lists_replace_gateway_lists() {
        let gw = Lists {
            subscribe: Some(vec![Entry::Domain("example.org".into())]),
            read: Some(vec![Entry::Anyone]),
            control: None,
        };
        let dev = Lists {
            subscribe: Some(vec![Entry::Jid(jid("bob@other.org"))]),
            ..Lists::default()
        };
        let alice = jid("alice@example.org");
        let bob = jid("bob@other.org");
        assert!(check(&gw, &Lists::default(), Right::Subscribe, &alice).is_ok());
        let why = check(&gw, &dev, Right::Subscribe, &alice).unwrap_err();
        assert!(why.contains("device.access.subscribe"), "{why}");
        assert!(check(&gw, &dev, Right::Subscribe, &bob).is_ok());
        assert!(check(&gw, &dev, Right::Read, &bob).is_ok());
        let why = check(&gw, &dev, Right::Control, &alice).unwrap_err();
        assert!(why.contains("admits nobody"), "{why}");
        assert!(may_see(&gw, &dev, &alice));
        assert!(!may_see(&Lists::default(), &Lists::default(), &alice));
    }
}
