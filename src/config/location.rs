//! Where a configuration error is: file, line, column and the dotted key path
//! (`device[2].field[0].type`), worked out from source spans and back.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use fieldgate_api::config::ConfigIssue;
use toml::Spanned;

/// A configuration error, located in its file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: cannot read: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML or breaks a rule.
    #[error("{}", .0)]
    Invalid(Box<Located>),
}

/// An error at a place in the configuration file.
#[derive(Debug)]
pub struct Located {
    /// The file.
    pub path: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// 1-based column (characters).
    pub column: usize,
    /// The key concerned (`device[2].id`), when known.
    pub key: Option<String>,
    /// What is wrong.
    pub message: String,
    /// The offending source line, for context.
    pub source_line: String,
}

impl fmt::Display for Located {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.path.display(), self.line, self.column)?;
        if let Some(key) = &self.key {
            write!(f, "{key}: ")?;
        }
        write!(f, "{}", self.message)
    }
}

impl ConfigError {
    /// The offending source line with a caret under the column, for terminals; log lines
    /// keep to the one-line `Display`.
    pub fn snippet(&self) -> Option<String> {
        match self {
            ConfigError::Invalid(l) if !l.source_line.is_empty() => {
                let pad = " ".repeat(l.column.saturating_sub(1));
                Some(format!("    {}\n    {pad}^", l.source_line))
            }
            _ => None,
        }
    }
}

/// The source span of the value at a dotted key path (`device[2].modbus.connection`), if
/// the path is written in the file.
pub(super) fn span_of(text: &str, path: &str) -> Option<Range<usize>> {
    use toml_edit::{Item, Table, Value};

    enum Node<'a> {
        Table(&'a Table),
        Value(&'a Value),
    }
    let doc = toml_edit::ImDocument::parse(text).ok()?;
    let mut node = Node::Table(doc.as_table());
    for seg in path.split('.') {
        let (name, index) = match seg.split_once('[') {
            Some((n, rest)) => (n, Some(rest.trim_end_matches(']').parse::<usize>().ok()?)),
            None => (seg, None),
        };
        node = match (node, index) {
            (Node::Table(t), _) => match (t.get(name)?, index) {
                (Item::Table(sub), None) => Node::Table(sub),
                (Item::ArrayOfTables(a), Some(i)) => Node::Table(a.get(i)?),
                (Item::Value(Value::Array(a)), Some(i)) => Node::Value(a.get(i)?),
                (Item::Value(v), None) => Node::Value(v),
                _ => return None,
            },
            (Node::Value(Value::InlineTable(t)), _) => match (t.get(name)?, index) {
                (Value::Array(a), Some(i)) => Node::Value(a.get(i)?),
                (v, None) => Node::Value(v),
                _ => return None,
            },
            (Node::Value(_), _) => return None,
        };
    }
    match node {
        Node::Table(t) => t.span(),
        Node::Value(v) => v.span(),
    }
}

/// The dotted key path (`device[2].field[0].type`) of the innermost key or value whose
/// source covers `span`; `None` when the text is not TOML at all (a syntax error).
pub(super) fn key_at(text: &str, span: &Range<usize>) -> Option<String> {
    use toml_edit::{Item, Table, Value};

    let covers = |s: Option<Range<usize>>| {
        s.is_some_and(|s| s.start <= span.start && (span.start < s.end || s == *span))
    };
    fn value(v: &Value, path: String, at: &dyn Fn(Option<Range<usize>>) -> bool) -> Option<String> {
        match v {
            Value::InlineTable(t) => t.iter().find_map(|(k, v)| {
                let key = t.key(k).and_then(|k| k.span());
                let p = format!("{path}.{k}");
                value(v, p.clone(), at).or_else(|| (at(key) || at(v.span())).then_some(p))
            }),
            Value::Array(a) => a.iter().enumerate().find_map(|(i, v)| {
                let p = format!("{path}[{i}]");
                value(v, p.clone(), at).or_else(|| at(v.span()).then_some(p))
            }),
            _ => None,
        }
    }
    fn table(t: &Table, prefix: &str, at: &dyn Fn(Option<Range<usize>>) -> bool) -> Option<String> {
        let join = |k: &str| {
            if prefix.is_empty() {
                k.to_owned()
            } else {
                format!("{prefix}.{k}")
            }
        };
        let inner = t.iter().find_map(|(k, item)| {
            let p = join(k);
            let key = t.key(k).and_then(|k| k.span());
            match item {
                Item::Table(sub) => {
                    table(sub, &p, at).or_else(|| (at(key) || at(sub.span())).then_some(p))
                }
                Item::ArrayOfTables(arr) => arr.iter().enumerate().find_map(|(i, sub)| {
                    let p = format!("{p}[{i}]");
                    table(sub, &p, at).or_else(|| at(sub.span()).then_some(p))
                }),
                Item::Value(v) => {
                    value(v, p.clone(), at).or_else(|| (at(key) || at(v.span())).then_some(p))
                }
                Item::None => None,
            }
        });
        inner
    }
    let doc = toml_edit::ImDocument::parse(text).ok()?;
    table(doc.as_table(), "", &covers)
}

/// `key =` with nothing after it on the line: the TOML parser only says which characters
/// it expected there. Returns the dotted key path and a message that names the problem.
pub(super) fn missing_value(text: &str, at: usize) -> Option<(String, String)> {
    let at = at.min(text.len());
    if !text.is_char_boundary(at) {
        return None;
    }
    let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[at..].find('\n').map_or(text.len(), |i| at + i);
    let before = text[line_start..at].trim_end();
    let after = text[at..line_end].trim_start();
    let written_key = before.strip_suffix('=')?.trim();
    if written_key.is_empty() || !(after.is_empty() || after.starts_with('#')) {
        return None;
    }
    // With a placeholder value the text parses as far as this line, so the key path
    // (with its table and array indices) can be read off it.
    let patched = format!("{}0{}", &text[..at], &text[at..]);
    let key = key_at(&patched, &(at..at + 1)).unwrap_or_else(|| written_key.to_owned());
    let message = format!(
        "`{written_key}` has no value: write one after `=`, or leave the line out for the default"
    );
    Some((key, message))
}

/// The error for a file that is not UTF-8, at the first bad byte.
pub(super) fn invalid_utf8(path: &Path, e: std::string::FromUtf8Error) -> ConfigError {
    let at = e.utf8_error().valid_up_to();
    let bytes = e.into_bytes();
    let bad = bytes[at];
    // The lossy copy is identical up to the bad byte, so positions and the key path
    // worked out on it hold for the file.
    let text = String::from_utf8_lossy(&bytes);
    let ctx = Ctx { path, text: &text };
    ctx.error(
        at..at + 1,
        key_at(&text, &(at..at + 1)),
        format!("invalid UTF-8 (byte 0x{bad:02x}): the file must be UTF-8 text"),
    )
}

/// The file being validated: errors are located in it.
pub(super) struct Ctx<'a> {
    pub(super) path: &'a Path,
    pub(super) text: &'a str,
}

impl Ctx<'_> {
    /// An error at `span`, about `key`.
    pub(super) fn error(
        &self,
        span: Range<usize>,
        key: Option<String>,
        message: String,
    ) -> ConfigError {
        let at = span.start.min(self.text.len());
        let before = &self.text[..at];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = self.text[line_start..at].chars().count() + 1;
        let source_line = self.text[line_start..]
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned();
        ConfigError::Invalid(Box::new(Located {
            path: self.path.to_owned(),
            line,
            column,
            key,
            message,
            source_line,
        }))
    }

    /// An error about `key`, whose value is `s`.
    pub(super) fn at<T>(
        &self,
        s: &Spanned<T>,
        key: &str,
        message: impl Into<String>,
    ) -> ConfigError {
        self.at_span(s.span(), key, message)
    }

    /// An error about `key`, whose value is written at `own`: points at the key itself
    /// where it is written, unless `own` is already inside it (one entry of a list is
    /// more precise than the list).
    pub(super) fn at_span(
        &self,
        own: Range<usize>,
        key: &str,
        message: impl Into<String>,
    ) -> ConfigError {
        let span = match span_of(self.text, key) {
            Some(k) if !(own.start >= k.start && own.end <= k.end) => k,
            _ => own,
        };
        self.error(span, Some(key.to_owned()), message.into())
    }

    /// An error about `key`, wherever it is written (else at the start of the file).
    pub(super) fn at_key(&self, key: &str, message: impl Into<String>) -> ConfigError {
        let span = span_of(self.text, key).unwrap_or(0..0);
        self.error(span, Some(key.to_owned()), message.into())
    }

    /// An adapter's [`ConfigIssue`], located like the core's own errors.
    pub(super) fn issue(&self, issue: ConfigIssue) -> ConfigError {
        match (issue.span, issue.key) {
            (Some(span), Some(key)) => self.at_span(span, &key, issue.message),
            (None, Some(key)) => self.at_key(&key, issue.message),
            (Some(span), None) => {
                let key = key_at(self.text, &span);
                self.error(span, key, issue.message)
            }
            (None, None) => self.error(0..0, None, issue.message),
        }
    }
}
