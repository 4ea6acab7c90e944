//! A device's `address`: `coap://host[:port]`, as RFC 7252 §6.1 writes a server (no path,
//! query or user part here: resources are named per field). `coaps://` is refused until
//! DTLS is supported.

/// The default CoAP port (RFC 7252 §6.1).
pub const DEFAULT_PORT: u16 = 5683;

/// Host and port of a `coap://` address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    /// A host name, an IPv4 address, or an IPv6 address without brackets.
    pub host: String,
    /// The port.
    pub port: u16,
}

impl Address {
    /// `host:port` as `lookup_host` takes it (IPv6 in brackets).
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// Reads `coap://host[:port]`; why not, in a sentence.
pub fn parse(text: &str) -> Result<Address, String> {
    let rest = match text.split_once("://") {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("coap") => rest,
        Some((scheme, _)) if scheme.eq_ignore_ascii_case("coaps") => {
            return Err("coaps:// (DTLS) is not supported yet; use coap://".into())
        }
        Some((scheme, _)) => return Err(format!("{scheme:?} is not a CoAP scheme: use coap://")),
        None => return Err("write the address as coap://host[:port]".into()),
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains(['/', '?', '#', '@']) {
        return Err(
            "the address names the server only (coap://host[:port]); resources go in each \
             field's path"
                .into(),
        );
    }
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (h, after) = v6.split_once(']').ok_or("an IPv6 address ends with ']'")?;
        h.parse::<std::net::Ipv6Addr>()
            .map_err(|_| format!("{h:?} is not an IPv6 address"))?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or("':' before the port")?),
        };
        (h.to_owned(), port)
    } else {
        match rest.rsplit_once(':') {
            Some((h, p)) => (h.to_owned(), Some(p)),
            None => (rest.to_owned(), None),
        }
    };
    if host.is_empty() {
        return Err("the address has no host".into());
    }
    let port = match port {
        None => DEFAULT_PORT,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("{p:?} is not a port"))?,
    };
    Ok(Address { host, port })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_are_read_with_their_ports() {
        let a = parse("coap://127.0.0.1:5700").unwrap();
        assert_eq!((a.host.as_str(), a.port), ("127.0.0.1", 5700));
        assert_eq!(parse("coap://sensor.local").unwrap().port, 5683);
        let a = parse("coap://[::1]:6000/").unwrap();
        assert_eq!((a.host.as_str(), a.port), ("::1", 6000));
        assert_eq!(a.authority(), "[::1]:6000");
        assert_eq!(parse("COAP://[fd00::1]").unwrap().port, 5683);
    }

    #[test]
    fn what_is_not_a_server_is_refused_with_a_reason() {
        assert!(parse("coaps://h").unwrap_err().contains("DTLS"));
        assert!(parse("http://h").is_err());
        assert!(parse("h:5683").is_err());
        assert!(parse("coap://h/sensors").unwrap_err().contains("field"));
        assert!(parse("coap://h:0").is_err());
        assert!(parse("coap://h:99999").is_err());
        assert!(parse("coap://[::1").is_err());
        assert!(parse("coap://[nope]:1").is_err());
        assert!(parse("coap://").is_err());
    }
}
