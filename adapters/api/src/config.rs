//! What an adapter is handed of the configuration file, and how it reports a mistake.
//!
//! The core reads the file once, with the source position of every key and value. An
//! adapter gets its own parts as [`ConfigNode`]s — its top-level section (`[modbus]`), a
//! device's `[device.<kind>]` table, a field's `<kind> = { ... }` — and deserializes them
//! with serde into its own structs (`toml::Spanned` works inside them). What it finds
//! wrong it returns as a [`ConfigIssue`] naming the key path and, where it knows it, the
//! source span; the core turns that into `FILE:LINE:COL: key.path: message`.

use std::cell::Cell;
use std::fmt;
use std::ops::Range;

use serde::de::{self, Deserialize, DeserializeOwned, Deserializer, IntoDeserializer, Visitor};

pub use toml::Spanned;

/// A part of the configuration file: a TOML item with the source spans of everything in
/// it, and the dotted key path it sits at (`device[2].modbus`).
#[derive(Debug, Clone)]
pub struct ConfigNode<'a> {
    part: Part<'a>,
    path: String,
}

/// What a node points at: TOML keeps tables of `[[x]]` arrays, and values of inline
/// arrays, apart from items.
#[derive(Debug, Clone, Copy)]
enum Part<'a> {
    Item(&'a toml_edit::Item),
    Table(&'a toml_edit::Table),
    Value(&'a toml_edit::Value),
}

impl<'a> ConfigNode<'a> {
    /// The item found at `path` (as the core writes key paths).
    pub fn new(item: &'a toml_edit::Item, path: impl Into<String>) -> ConfigNode<'a> {
        ConfigNode {
            part: Part::Item(item),
            path: path.into(),
        }
    }

    /// The entry `key` of this table (`[x]` or `{ ... }`), if written.
    pub fn get(&self, key: &str) -> Option<ConfigNode<'a>> {
        let table: &'a dyn toml_edit::TableLike = match self.part {
            Part::Item(i) => i.as_table_like()?,
            Part::Table(t) => t,
            Part::Value(v) => v.as_inline_table()?,
        };
        Some(ConfigNode::new(table.get(key)?, self.key(key)))
    }

    /// The entries of this array (`[[x]]` tables or `[ ... ]` values), with their paths
    /// (`modbus.connection[2]`); empty if this is no array.
    pub fn entries(&self) -> Vec<ConfigNode<'a>> {
        let at = |i: usize, part| ConfigNode {
            part,
            path: format!("{}[{i}]", self.path),
        };
        match self.part {
            Part::Item(toml_edit::Item::ArrayOfTables(a)) => a
                .iter()
                .enumerate()
                .map(|(i, t)| at(i, Part::Table(t)))
                .collect(),
            Part::Item(toml_edit::Item::Value(toml_edit::Value::Array(a)))
            | Part::Value(toml_edit::Value::Array(a)) => a
                .iter()
                .enumerate()
                .map(|(i, v)| at(i, Part::Value(v)))
                .collect(),
            _ => Vec::new(),
        }
    }

    /// The key path of this part (`device[2].modbus`).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Where this part is written in the file, if it is.
    pub fn span(&self) -> Option<Range<usize>> {
        match self.part {
            Part::Item(i) => i.span(),
            Part::Table(t) => t.span(),
            Part::Value(v) => v.span(),
        }
    }

    /// Deserializes this part into `T`. An error (an unknown key, a wrong type, a missing
    /// key) comes back located: at the offending key or value where serde says which,
    /// else at this part.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, ConfigIssue> {
        // (A table turned into a value keeps the positions of what is in it, not its
        // own: `Spanned` works for values inside, not for the part itself, whose span
        // is `span()`.)
        let value = match self.part {
            Part::Item(i) => match i.clone().into_value() {
                Ok(v) => v,
                Err(_) => return Err(self.issue("", "expected a value or a table")),
            },
            Part::Table(t) => toml_edit::Value::InlineTable(t.clone().into_inline_table()),
            Part::Value(v) => v.clone(),
        };
        T::deserialize(value.into_deserializer()).map_err(|e| ConfigIssue {
            // Key paths of serde's errors are worked out by the core from the span.
            key: if e.span().is_some() {
                None
            } else {
                Some(self.path.clone())
            },
            span: e.span().or_else(|| self.span()),
            message: e.message().trim_end().to_owned(),
        })
    }

    /// The path of `key` below this part (`""`: this part itself).
    pub fn key(&self, key: &str) -> String {
        if key.is_empty() {
            self.path.clone()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    /// An issue with `key` below this part; the core finds where it is written.
    pub fn issue(&self, key: &str, message: impl Into<String>) -> ConfigIssue {
        ConfigIssue::new(self.key(key), message)
    }

    /// An issue with `key` below this part whose value is at `span` (a `toml::Spanned`
    /// value's span): the error points at the key where it is written, or at the value
    /// when that is more precise (an entry of a list).
    pub fn issue_at(
        &self,
        span: Range<usize>,
        key: &str,
        message: impl Into<String>,
    ) -> ConfigIssue {
        ConfigIssue::at(span, self.key(key), message)
    }
}

/// A mistake in the configuration, at a key path and, where known, a source span.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    /// The dotted key path (`device[2].modbus.unit`); `None` when only the span is
    /// known (the core then names the key written there).
    pub key: Option<String>,
    /// Where in the file; `None` to let the core look the key up.
    pub span: Option<Range<usize>>,
    /// What is wrong.
    pub message: String,
}

impl ConfigIssue {
    /// An issue with `key`, wherever it is written.
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> ConfigIssue {
        ConfigIssue {
            key: Some(key.into()),
            span: None,
            message: message.into(),
        }
    }

    /// An issue with `key` whose value is written at `span`.
    pub fn at(
        span: Range<usize>,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> ConfigIssue {
        ConfigIssue {
            key: Some(key.into()),
            span: Some(span),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(key) = &self.key {
            write!(f, "{key}: ")?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigIssue {}

/// A kind's top-level section read as `T` (`T::default()` when it is not written), and
/// the tables of its array `list` (`[[<kind>.<list>]]`) in order: their spans locate what
/// is wrong with each entry.
pub fn section_with_list<'a, T: DeserializeOwned + Default>(
    section: Option<&ConfigNode<'a>>,
    list: &str,
) -> Result<(T, Vec<ConfigNode<'a>>), ConfigIssue> {
    match section {
        Some(s) => Ok((
            s.parse::<T>()?,
            s.get(list).map(|c| c.entries()).unwrap_or_default(),
        )),
        None => Ok((T::default(), Vec::new())),
    }
}

/// The keys a serde-derived struct reads (its field names, renames applied), asked of the
/// struct itself, so that lists of options (for unknown-key checks, for documentation
/// checks) cannot disagree with the schema. Empty for types serde does not read as a
/// struct (enums, maps, flattened structs).
pub fn keys_of<'de, T: Deserialize<'de>>() -> &'static [&'static str] {
    struct Probe(Cell<&'static [&'static str]>);

    impl<'de> Deserializer<'de> for &Probe {
        type Error = de::value::Error;

        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(de::Error::custom("probe"))
        }

        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _name: &'static str,
            fields: &'static [&'static str],
            _visitor: V,
        ) -> Result<V::Value, Self::Error> {
            self.0.set(fields);
            Err(de::Error::custom("probe"))
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map enum
            identifier ignored_any
        }
    }

    let probe = Probe(Cell::new(&[]));
    let _ = T::deserialize(&probe);
    probe.0.get()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Section {
        name: Spanned<String>,
        #[serde(default)]
        size: Option<u32>,
        #[serde(default)]
        inner: Option<Inner>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        level: Spanned<u8>,
    }

    const TEXT: &str = "[x]\nname = \"plc\"\n\n[device.x]\nname = \"dev\"\ninner = { level = 3 }\n";

    fn doc() -> toml_edit::ImDocument<&'static str> {
        toml_edit::ImDocument::parse(TEXT).unwrap()
    }

    #[test]
    fn parts_keep_their_source_positions() {
        let doc = doc();
        let item = &doc["device"]["x"];
        let node = ConfigNode::new(item, "device.x");
        let s: Section = node.parse().unwrap();
        assert_eq!(&TEXT[s.name.span()], "\"dev\"");
        assert_eq!(s.size, None);
        assert_eq!(&TEXT[s.inner.unwrap().level.span()], "3");
        let top: Section = ConfigNode::new(&doc["x"], "x").parse().unwrap();
        assert_eq!(&TEXT[top.name.span()], "\"plc\"");
    }

    #[test]
    fn serde_errors_are_located() {
        let text = "[x]\nname = \"a\"\nsize = \"big\"\ncolour = 1\n";
        let doc = toml_edit::ImDocument::parse(text).unwrap();
        let e = ConfigNode::new(&doc["x"], "x")
            .parse::<Section>()
            .unwrap_err();
        let span = e.span.clone().unwrap();
        assert!(
            text[span.start..].starts_with("\"big\"") || text[span.start..].starts_with("colour")
        );
        let missing = toml_edit::ImDocument::parse("[x]\nsize = 1\n").unwrap();
        let e = ConfigNode::new(&missing["x"], "x")
            .parse::<Section>()
            .unwrap_err();
        assert!(e.message.contains("name"), "{}", e.message);
        assert!(e.span.is_some(), "falls back to the section");
    }

    #[test]
    fn tables_of_arrays_keep_their_positions() {
        let text = "[[m.c]]\nname = \"a\"\n[[m.c]]\nname = \"b\"\n[m]\nd = [{ name = \"c\" }]\n";
        let doc = toml_edit::ImDocument::parse(text).unwrap();
        let m = ConfigNode::new(&doc["m"], "m");
        let c = m.get("c").unwrap().entries();
        assert_eq!(c.len(), 2);
        assert_eq!(c[1].path(), "m.c[1]");
        assert!(text[c[1].span().unwrap()].contains("\"b\""));
        let d = m.get("d").unwrap().entries();
        assert_eq!(&text[d[0].span().unwrap()], "{ name = \"c\" }");
        #[derive(serde::Deserialize)]
        struct N {
            name: Spanned<String>,
        }
        let n: N = c[0].parse().unwrap();
        assert_eq!(&text[n.name.span()], "\"a\"");
        let n: N = d[0].parse().unwrap();
        assert_eq!(&text[n.name.span()], "\"c\"");
    }

    #[test]
    fn issues_name_their_key() {
        let doc = doc();
        let node = ConfigNode::new(&doc["x"], "modbus");
        assert_eq!(node.issue("unit", "bad").to_string(), "modbus.unit: bad");
        assert_eq!(node.issue("", "bad").key.as_deref(), Some("modbus"));
        let at = node.issue_at(4..9, "name", "taken");
        assert_eq!(at.span, Some(4..9));
    }
}
