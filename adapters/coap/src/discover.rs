//! `fieldgate coap-discover coap://host[:port]`: reads the server's `/.well-known/core`
//! (RFC 6690, block-wise if long) and writes a configuration skeleton for the resources
//! it lists, guessing each field's type from the `rt`, `if` and `ct` attributes and
//! whether to observe from `obs`. A skeleton, not a finished file: it says what it
//! guessed in comments.

use std::fmt::Write;

use crate::linkformat::{self, Link};
use crate::transport::{BlockConfig, Endpoint, EndpointConfig, Request, TransmissionParams};

/// Reads `address`'s resources and returns the skeleton.
pub async fn discover(address: &str) -> Result<String, String> {
    let a = crate::address::parse(address)?;
    let peer = a
        .resolve()
        .await
        .map_err(|e| format!("{}: {e}", a.authority()))?;
    let cancel = tokio_util::sync::CancellationToken::new();
    let endpoint = Endpoint::bind(EndpointConfig::default(), cancel.clone())
        .map_err(|e| format!("cannot open a UDP socket: {e}"))?;
    let mut req = Request::get("/.well-known/core");
    req.accept = Some(40);
    let resp = endpoint
        .request(
            peer,
            req,
            &TransmissionParams::default(),
            BlockConfig {
                block_size: 1024,
                max_body: 1 << 20,
            },
        )
        .await
        .map_err(|e| format!("{address}/.well-known/core: {e}"));
    cancel.cancel();
    let resp = resp?;
    if !resp.is_success() {
        return Err(format!(
            "{address}/.well-known/core answered {}",
            resp.code_string()
        ));
    }
    let text =
        String::from_utf8(resp.payload).map_err(|_| "the link format is not UTF-8".to_owned())?;
    let links = linkformat::parse(&text).map_err(|e| e.to_string())?;
    Ok(skeleton(address, &links))
}

/// The type a link's attributes suggest, and why.
fn guess(link: &Link) -> (&'static str, String) {
    let rt = link.attr("rt").unwrap_or("").to_ascii_lowercase();
    let cts = link.content_formats();
    if cts.iter().any(|c| matches!(c, 110 | 112)) {
        return ("double", "a SenML pack: one field per record name".into());
    }
    // A clock (libcoap's /time: if="clock", rt="ticks") answers with a date as text,
    // whatever its rt says.
    let iface = link.attr("if").unwrap_or("").to_ascii_lowercase();
    if ["clock", "time", "date"].iter().any(|w| iface.contains(w)) {
        return ("string", format!("if={iface:?}: a clock, read as text"));
    }
    for (words, kind) in [
        (
            &["switch", "onoff", "bool", "state", "led", "relay"][..],
            "bool",
        ),
        (&["count", "counter", "ticks", "seq"][..], "long"),
        (
            &[
                "temp", "humid", "press", "volt", "current", "power", "energy", "level", "lux",
            ][..],
            "double",
        ),
    ] {
        if words.iter().any(|w| rt.contains(w)) {
            return (kind, format!("rt={rt:?}"));
        }
    }
    ("string", "nothing to tell the type by: check it".into())
}

/// A field name from a path (`/sensors/temp-1` → `temp_1`).
fn field_name(link: &Link) -> String {
    let last = link
        .path()
        .and_then(|p| p.last().cloned())
        .unwrap_or_else(|| "value".into());
    let name: String = last
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    if name.is_empty() {
        "value".into()
    } else {
        name
    }
}

/// The configuration skeleton for `links` found at `address`.
pub fn skeleton(address: &str, links: &[Link]) -> String {
    let mut s = String::new();
    let resources: Vec<&Link> = links
        .iter()
        .filter(|l| l.path().is_some() && !l.target.starts_with("/.well-known/"))
        .collect();
    let observe = resources.iter().any(|l| l.has("obs"));
    let _ = writeln!(
        s,
        "# {} resources found at {address}/.well-known/core",
        resources.len()
    );
    let _ = writeln!(
        s,
        "[[device]]\nid = \"coap-device\"\nname = \"CoAP device\"\nadapter = \"coap\""
    );
    let _ = writeln!(s, "[device.coap]\naddress = \"{address}\"");
    if observe {
        let _ = writeln!(s, "# some resources are observable (obs): observe them");
        let _ = writeln!(s, "observe = true");
    }
    for l in resources {
        let (kind, why) = guess(l);
        let _ = writeln!(s);
        let mut about = vec![format!("{} ({why})", l.target)];
        for k in ["rt", "if", "ct", "title"] {
            if let Some(v) = l.attr(k) {
                about.push(format!("{k}={v:?}"));
            }
        }
        if l.has("obs") {
            about.push("obs".into());
        }
        let _ = writeln!(s, "# {}", about.join(", "));
        let _ = writeln!(
            s,
            "[[device.field]]\nname = \"{}\"\ntype = \"{kind}\"",
            field_name(l)
        );
        let _ = writeln!(
            s,
            "coap = {{ path = \"{}\" }}",
            l.target.replace('"', "\\\"")
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_skeleton_names_what_it_guessed_and_parses_as_toml() {
        let links = linkformat::parse(
            "</.well-known/core>;ct=40,</sensors/temp>;rt=\"temperature-c\";ct=0;obs,\
             </led>;rt=\"light-switch\",</pack>;ct=110,</x>",
        )
        .unwrap();
        let s = skeleton("coap://127.0.0.1:5683", &links);
        let v: toml::Value = toml::from_str(&s).expect(&s);
        let fields = v["device"][0]["field"].as_array().unwrap();
        assert_eq!(fields.len(), 4, "{s}");
        assert_eq!(fields[0]["name"].as_str(), Some("temp"));
        assert_eq!(fields[0]["type"].as_str(), Some("double"));
        assert_eq!(fields[1]["type"].as_str(), Some("bool"));
        assert_eq!(fields[3]["type"].as_str(), Some("string"));
        assert_eq!(v["device"][0]["coap"]["observe"].as_bool(), Some(true));
        assert!(s.contains("check it"));
    }
}
