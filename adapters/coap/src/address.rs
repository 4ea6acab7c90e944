//! A device's `address`: `coap://host[:port]`, as RFC 7252 §6.1 writes a server (no path,
//! query or user part here: resources are named per field). `coaps://` is refused until
//! DTLS is supported.

/// The default CoAP port (RFC 7252 §6.1).
pub const DEFAULT_PORT: u16 = 5683;

/// Host and port of a `coap://` address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    /// A host name, an IPv4 address, or an IPv6 address without brackets (or zone).
    pub host: String,
    /// The port.
    pub port: u16,
    /// The zone of a scoped IPv6 address (`fe80::1%eth0`, RFC 6874 `%25eth0` in a URI):
    /// an interface name or index. A link-local address means nothing without one.
    pub zone: Option<String>,
}

impl Address {
    /// `host:port` (IPv6 in brackets, with its zone), for messages.
    pub fn authority(&self) -> String {
        match (&self.zone, self.host.contains(':')) {
            (Some(z), _) => format!("[{}%{z}]:{}", self.host, self.port),
            (None, true) => format!("[{}]:{}", self.host, self.port),
            (None, false) => format!("{}:{}", self.host, self.port),
        }
    }

    /// The server's socket address: a literal as is (a zone looked up as an interface,
    /// which may appear only later: a Thread or 6LoWPAN interface comes up after the
    /// gateway), a name through the resolver.
    pub async fn resolve(&self) -> std::io::Result<std::net::SocketAddr> {
        use std::io::{Error, ErrorKind};
        if let Some(zone) = &self.zone {
            let ip: std::net::Ipv6Addr = self.host.parse().map_err(Error::other)?;
            let scope = scope_id(zone)?;
            // The kernel uses (and reports back on answers) a scope for link-local
            // addresses only; kept on any other, it would not match the answers' source.
            let link_local = ip.segments()[0] & 0xffc0 == 0xfe80;
            let scope = if link_local { scope } else { 0 };
            return Ok(std::net::SocketAddrV6::new(ip, self.port, 0, scope).into());
        }
        let host = if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        };
        tokio::net::lookup_host(host)
            .await?
            .next()
            .ok_or_else(|| Error::new(ErrorKind::NotFound, "no address"))
    }
}

/// The interface index of an IPv6 zone: a number, or an interface name (its index read
/// from sysfs, Linux).
fn scope_id(zone: &str) -> std::io::Result<u32> {
    use std::io::{Error, ErrorKind};
    if let Ok(n) = zone.parse::<u32>() {
        return Ok(n);
    }
    let bad = || {
        Error::new(
            ErrorKind::NotFound,
            format!("no network interface {zone:?}"),
        )
    };
    if zone.contains(['/', '.']) {
        return Err(bad());
    }
    std::fs::read_to_string(format!("/sys/class/net/{zone}/ifindex"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(bad)
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
    let (host, port, zone) = if let Some(v6) = rest.strip_prefix('[') {
        let (h, after) = v6.split_once(']').ok_or("an IPv6 address ends with ']'")?;
        // RFC 6874 writes the zone as `%25zone` in a URI; a bare `%zone` is what people
        // type (and what `ip addr` prints), so both are read.
        let (h, zone) = match h.split_once('%') {
            Some((h, z)) => {
                let z = z.strip_prefix("25").filter(|z| !z.is_empty()).unwrap_or(z);
                if z.is_empty()
                    || !z
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
                {
                    return Err(format!("{z:?} is not a zone (an interface name or index)"));
                }
                (h, Some(z.to_owned()))
            }
            None => (h, None),
        };
        h.parse::<std::net::Ipv6Addr>()
            .map_err(|_| format!("{h:?} is not an IPv6 address"))?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or("':' before the port")?),
        };
        (h.to_owned(), port, zone)
    } else {
        match rest.rsplit_once(':') {
            Some((h, p)) => (h.to_owned(), Some(p), None),
            None => (rest.to_owned(), None, None),
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
    Ok(Address { host, port, zone })
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

    #[tokio::test]
    async fn scoped_ipv6_addresses_keep_their_zone() {
        let a = parse("coap://[fe80::1%25lo]:5700").unwrap();
        assert_eq!(
            (a.host.as_str(), a.zone.as_deref()),
            ("fe80::1", Some("lo"))
        );
        assert_eq!(a.authority(), "[fe80::1%lo]:5700");
        assert_eq!(
            parse("coap://[fe80::1%lo]").unwrap(),
            Address {
                port: 5683,
                ..a.clone()
            }
        );
        let lo: u32 = std::fs::read_to_string("/sys/class/net/lo/ifindex")
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        match a.resolve().await.unwrap() {
            std::net::SocketAddr::V6(s) => {
                assert_eq!(
                    (s.ip().to_string(), s.port(), s.scope_id()),
                    ("fe80::1".into(), 5700, lo)
                );
            }
            other => panic!("{other}"),
        }
        let n = parse("coap://[fe80::2%7]")
            .unwrap()
            .resolve()
            .await
            .unwrap();
        assert!(matches!(n, std::net::SocketAddr::V6(s) if s.scope_id() == 7));
        // Not link-local: the zone names the interface but is no part of the address.
        let g = parse("coap://[::1%25lo]:9")
            .unwrap()
            .resolve()
            .await
            .unwrap();
        assert!(matches!(g, std::net::SocketAddr::V6(s) if s.scope_id() == 0));
        let missing = parse("coap://[fe80::1%nosuchif0]").unwrap().resolve().await;
        assert!(missing.unwrap_err().to_string().contains("nosuchif0"));
        assert!(parse("coap://[fe80::1%]").is_err());
        assert!(parse("coap://[fe80::1%../x]").is_err());
        // A name resolves through the resolver; a literal as is.
        let v4 = parse("coap://127.0.0.1:9")
            .unwrap()
            .resolve()
            .await
            .unwrap();
        assert_eq!(v4, std::net::SocketAddr::from(([127, 0, 0, 1], 9)));
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
