//! Texts that peers see, in two versions: a sentence for anyone who may see the device,
//! and the same with the particulars an adapter knows (host names, ports, serial device
//! paths), for the log and for peers holding the control right.
//!
//! A gateway on a federated XMPP network may admit subscribers it knows little about:
//! presence status goes to all of them, so it must not map the plant's network for them.
//! The adapter says what is public; the core decides who sees more.

use std::fmt;

/// A reason (why a device is unreachable, why a request failed), public and detailed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Reason {
    public: String,
    detailed: Option<String>,
}

impl Reason {
    /// A reason with nothing to hide: the same text for everyone.
    pub fn new(public: impl Into<String>) -> Self {
        Reason {
            public: public.into(),
            detailed: None,
        }
    }

    /// A reason whose full text (`detailed`) names what not every peer may learn; `public`
    /// says the same without it.
    pub fn with_detail(public: impl Into<String>, detailed: impl Into<String>) -> Self {
        Reason {
            public: public.into(),
            detailed: Some(detailed.into()),
        }
    }

    /// The text for anyone who may see the device.
    pub fn public(&self) -> &str {
        &self.public
    }

    /// The full text, for the log and for peers holding the control right.
    pub fn detailed(&self) -> &str {
        self.detailed.as_deref().unwrap_or(&self.public)
    }

    /// The text `detailed` or not.
    pub fn text(&self, detailed: bool) -> &str {
        if detailed {
            self.detailed()
        } else {
            self.public()
        }
    }

    /// Both texts with `prefix` in front (`"connection plc: "`).
    pub fn prefixed(&self, prefix: &str) -> Reason {
        Reason {
            public: format!("{prefix}{}", self.public),
            detailed: self.detailed.as_ref().map(|d| format!("{prefix}{d}")),
        }
    }
}

/// The detailed text: `Display` is what the log shows.
impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.detailed())
    }
}

impl From<String> for Reason {
    fn from(s: String) -> Self {
        Reason::new(s)
    }
}

impl From<&str> for Reason {
    fn from(s: &str) -> Self {
        Reason::new(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_detail_stays_out_of_the_public_text() {
        let r = Reason::with_detail("cannot connect", "cannot connect to 10.0.0.5:502")
            .prefixed("connection plc: ");
        assert_eq!(r.public(), "connection plc: cannot connect");
        assert_eq!(
            r.detailed(),
            "connection plc: cannot connect to 10.0.0.5:502"
        );
        assert_eq!(r.to_string(), r.detailed());
        assert_eq!(r.text(false), r.public());
        let plain = Reason::new("simulated outage");
        assert_eq!(plain.detailed(), "simulated outage");
    }
}
