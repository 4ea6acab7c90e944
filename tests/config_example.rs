//! The shipped example must stay valid, and every option the gateway reads must be
//! documented: each key of each section, the adapters' included, written as a TOML key
//! (set, or commented out) in its own section — of `config.example.toml`, or, for an
//! adapter, of a TOML block in its `adapters/<kind>/README.md`. The options come from the
//! schema itself (`fieldgate::config::options`), so a new option without documentation
//! fails here.
//!
//! The example configures a device of every adapter kind, so it needs them all.
#![cfg(all(feature = "sim", feature = "modbus"))]

use std::collections::BTreeSet;
use std::path::Path;

use fieldgate::config;

type Documented = BTreeSet<(String, String)>;

#[test]
fn example_config_parses() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.example.toml");
    let cfg = config::load(&path).expect("config.example.toml must be valid");
    assert_eq!(cfg.xmpp.domain, "gw.example.org");
    assert_eq!(cfg.devices.len(), 2);
    assert!(cfg.devices[0].fields.iter().any(|f| f.writable));
}

#[test]
fn every_option_is_documented_in_its_section() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut documented =
        documented_keys(&std::fs::read_to_string(root.join("config.example.toml")).unwrap());
    for kind in fieldgate::adapters::compiled() {
        let readme = root.join("adapters").join(kind.name()).join("README.md");
        if let Ok(text) = std::fs::read_to_string(&readme) {
            for block in toml_blocks(&text) {
                documented.extend(documented_keys(&block));
            }
        }
    }
    let mut missing = Vec::new();
    for (section, keys) in config::options() {
        for key in keys {
            if !documented.contains(&(section.to_owned(), key.to_owned())) {
                missing.push(if section.is_empty() {
                    key.to_owned()
                } else {
                    format!("{section}.{key}")
                });
            }
        }
    }
    assert!(
        missing.is_empty(),
        "options not documented as TOML keys in their section: {missing:?}"
    );
}

#[test]
fn the_documentation_reader_matches_keys_in_sections_not_substrings() {
    let doc = documented_keys(
        "# timeout_extra = 1\n[xmpp]\n# keepalive = \"30s\"\nserver = \"x\" # secret = no\n\
         # The resource, as in resource = \"gw\"\n[[device.field]]\nsim = { kind = \"sine\", period = \"1m\" }\n",
    );
    let has = |s: &str, k: &str| doc.contains(&(s.to_owned(), k.to_owned()));
    assert!(has("xmpp", "keepalive") && has("xmpp", "server"));
    assert!(has("", "timeout_extra"));
    assert!(
        has("", "xmpp") && has("device", "field"),
        "headers document their table"
    );
    assert!(has("device.field.sim", "kind") && has("device.field.sim", "period"));
    assert!(
        !has("xmpp", "secret"),
        "a key in a trailing comment is not a key"
    );
    assert!(!has("xmpp", "resource"), "a key inside prose is not a key");
    assert!(
        !has("xmpp", "timeout_extra"),
        "keys belong to their section"
    );
}

/// The (section, key) pairs a TOML text (comments uncommented) writes: `key = value`
/// lines in the section of the last header, the tables headers name (`[a.b]` documents
/// `b` in `a`), and the keys of inline tables (`sim = { kind = ... }` documents `kind`
/// in `<section>.sim`).
fn documented_keys(text: &str) -> Documented {
    let mut out = Documented::new();
    let mut section = String::new();
    for line in text.lines() {
        let l = line.trim_start_matches(['#', ' ']).trim_end();
        if let Some(header) = header(l) {
            let (parent, name) = header.rsplit_once('.').unwrap_or(("", header));
            out.insert((parent.to_owned(), name.to_owned()));
            section = header.to_owned();
            continue;
        }
        let Some((key, value)) = l.split_once('=') else {
            continue;
        };
        let key = key.trim_end();
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        out.insert((section.clone(), key.to_owned()));
        let value = value.trim_start();
        if value.starts_with('{') {
            // Parse the inline table as TOML: its keys, not words that look like keys.
            let doc: toml_edit::DocumentMut = format!("x = {value}")
                .parse()
                .unwrap_or_else(|e| panic!("documented inline table does not parse: {l}: {e}"));
            if let Some(t) = doc["x"].as_inline_table() {
                let inner = if section.is_empty() {
                    key.to_owned()
                } else {
                    format!("{section}.{key}")
                };
                for (k, _) in t.iter() {
                    out.insert((inner.clone(), k.to_owned()));
                }
            }
        }
    }
    out
}

/// `a.b` of a `[a.b]` or `[[a.b]]` line (a trailing comment allowed).
fn header(line: &str) -> Option<&str> {
    let line = line.split(" #").next().unwrap_or(line).trim_end();
    let inner = line
        .strip_prefix("[[")
        .and_then(|l| l.strip_suffix("]]"))
        .or_else(|| line.strip_prefix('[').and_then(|l| l.strip_suffix(']')))?;
    inner
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
        .then_some(inner)
}

/// The fenced ```toml blocks of a Markdown text.
fn toml_blocks(text: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        match (&mut current, line.trim_end()) {
            (None, "```toml") => current = Some(String::new()),
            (Some(_), "```") => blocks.extend(current.take()),
            (Some(b), l) => {
                b.push_str(l);
                b.push('\n');
            }
            (None, _) => {}
        }
    }
    blocks
}
