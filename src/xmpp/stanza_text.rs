//! Writing stanzas as text directly, for the few the gateway sends by the thousand (change
//! events): building an element tree per value and serialising it cost several
//! microseconds a value; appending escaped text costs a fraction of one.
//!
//! Text written here sits in the component stream's default namespace
//! (`jabber:component:accept`), so a top-level stanza carries no `xmlns`.

use std::fmt::Write;

use tokio_xmpp::minidom::Element;
use xmpp_parsers::ns;

/// Appends `value` escaped for an attribute in single quotes. Characters XML 1.0 does not
/// allow (most C0 controls) become U+FFFD: a device's odd string must not cost the
/// whole stanza. Tabs and line breaks are written as references, which attribute value
/// normalisation would otherwise turn into spaces.
pub fn push_attr_value(out: &mut String, value: &str) {
    let needs = |b: u8| matches!(b, b'&' | b'<' | b'>' | b'\'' | b'"') || b < 0x20;
    if !value.bytes().any(needs) && !value.contains(['\u{FFFE}', '\u{FFFF}']) {
        out.push_str(value);
        return;
    }
    for c in value.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\'' => out.push_str("&apos;"),
            '"' => out.push_str("&quot;"),
            '\t' => out.push_str("&#9;"),
            '\n' => out.push_str("&#10;"),
            '\r' => out.push_str("&#13;"),
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
}

/// Appends ` name='value'` (escaped).
pub fn push_attr(out: &mut String, name: &str, value: &str) {
    out.push(' ');
    out.push_str(name);
    out.push_str("='");
    push_attr_value(out, value);
    out.push('\'');
}

/// Appends ` name='value'` for anything that displays without characters to escape
/// (numbers, dates).
pub fn push_attr_display(out: &mut String, name: &str, value: impl std::fmt::Display) {
    let _ = write!(out, " {name}='{value}'");
}

/// Parses a stanza written as text (in the stream's default namespace) back into an
/// element; `None` if it is not well-formed. For tests and diagnostics.
pub fn parse(text: &str) -> Option<Element> {
    let doc = format!("<stream xmlns='{}'>{text}</stream>", ns::COMPONENT);
    let root: Element = doc.parse().ok()?;
    root.children().next().cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attribute_values_survive_a_round_trip() {
        for v in [
            "plain",
            "a'b\"c<d>&e",
            "tab\there\nnew\rline",
            "bell\u{7}null\u{0}",
            "°C µs ✓",
        ] {
            let mut s = String::from("<message");
            push_attr(&mut s, "to", v);
            s.push_str("/>");
            let el = parse(&s).expect("well-formed");
            let want = v.replace(['\u{7}', '\u{0}'], "\u{FFFD}");
            assert_eq!(el.attr("to"), Some(want.as_str()), "{v:?}");
            assert_eq!(el.ns(), ns::COMPONENT);
        }
    }
}
