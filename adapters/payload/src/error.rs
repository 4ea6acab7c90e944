//! Why a message, or one field's value in it, could not be read; and the quoting of
//! untrusted text in such messages.

use fieldgate_api::FieldType;

use crate::cbor::CborError;
use crate::decode::Format;

/// The most bytes of a payload an error message quotes.
pub(crate) const QUOTE_MAX: usize = 64;

/// Why a message, or one field's value in it, could not be read.
///
/// `at` texts say where the value was (`at /temperature`, `in SenML record "temp"`,
/// `in the payload`); quoted payload content is cut to 64 bytes and escaped.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    /// A plain payload that is not UTF-8.
    #[error("payload is not UTF-8 (invalid byte at offset {offset})")]
    NotUtf8 {
        /// Where the first invalid byte is.
        offset: usize,
    },
    /// A payload that is not JSON.
    #[error("not valid JSON at line {line} column {column}: {reason}")]
    NotJson {
        /// Line of the error, from 1.
        line: usize,
        /// Column of the error, from 1.
        column: usize,
        /// What is wrong there.
        reason: String,
    },
    /// A payload that is not one well-formed CBOR item (RFC 8949), or one nested deeper
    /// than 128 levels.
    #[error("not valid CBOR at byte {offset}: {reason}")]
    NotCbor {
        /// The offset of the item at fault, from 0.
        offset: usize,
        /// What is wrong there.
        reason: String,
    },
    /// JSON or CBOR that is not a SenML pack.
    #[error("not a SenML pack: {reason}")]
    NotSenml {
        /// What is wrong.
        reason: String,
    },
    /// A value of the wrong type (or text that is not what the field needs).
    #[error("expected {expected} {at}, got {got}")]
    WrongType {
        /// Where the value was.
        at: String,
        /// What the field accepts.
        expected: &'static str,
        /// What was there.
        got: String,
    },
    /// A fraction for a whole-number field.
    #[error("value {value} {at} is not a whole number, as {} field needs", article(*.kind))]
    NotWhole {
        /// Where the value was.
        at: String,
        /// The value.
        value: String,
        /// The field's type.
        kind: FieldType,
    },
    /// A number beyond the field type's range.
    #[error("value {value} {at} is out of range for {} field", article(*.kind))]
    OutOfRange {
        /// Where the value was.
        at: String,
        /// The value.
        value: String,
        /// The field's type.
        kind: FieldType,
    },
    /// NaN or an infinity.
    #[error("value {value} {at} is not a finite number")]
    NotFinite {
        /// Where the value was.
        at: String,
        /// The value.
        value: String,
    },
    /// Text that is none of an enum field's labels.
    #[error("{value} {at} is not one of the labels {labels}")]
    NotALabel {
        /// Where the value was.
        at: String,
        /// The text, quoted.
        value: String,
        /// The labels, comma-separated.
        labels: String,
    },
    /// A time that cannot be read or lies outside 1970–9999.
    #[error("unreadable time {at}: {reason}")]
    BadTime {
        /// Where the time was.
        at: String,
        /// Why it cannot be read.
        reason: String,
    },
    /// A field's locator does not fit the topic's format (a configuration mistake).
    #[error("{what} cannot locate a value in a {format} payload")]
    Locator {
        /// The locator's kind.
        what: &'static str,
        /// The topic's format.
        format: Format,
    },
}

impl From<CborError> for DecodeError {
    fn from(e: CborError) -> Self {
        DecodeError::NotCbor {
            offset: e.offset,
            reason: bounded(&e.reason, QUOTE_MAX + 32),
        }
    }
}

/// "an int", "a double": a field type with its article.
pub(crate) fn article(kind: FieldType) -> &'static str {
    match kind {
        FieldType::Bool => "a bool",
        FieldType::Int => "an int",
        FieldType::Long => "a long",
        FieldType::Double => "a double",
        FieldType::String => "a string",
        FieldType::Enum => "an enum",
        FieldType::Timestamp => "a timestamp",
    }
}

/// At most [`QUOTE_MAX`] bytes of untrusted text, quoted, with control and invisible
/// characters escaped, and `…` when cut.
pub(crate) fn quoted(s: &str) -> String {
    let cut = floor_char_boundary(s, QUOTE_MAX);
    let mut out = format!("{:?}", &s[..cut]);
    if cut < s.len() {
        out.push('…');
    }
    out
}

/// `s` cut to at most `max` bytes, at a character boundary, with `…` when cut.
pub(crate) fn bounded(s: &str, max: usize) -> String {
    let cut = floor_char_boundary(s, max);
    let mut out = s[..cut].to_owned();
    if cut < s.len() {
        out.push('…');
    }
    out
}

fn floor_char_boundary(s: &str, max: usize) -> usize {
    let mut cut = s.len().min(max);
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    cut
}

/// A serde_json error as the reason, without the position serde_json appends.
pub(crate) fn json_reason(e: &serde_json::Error) -> String {
    let text = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    // serde_json's own texts are short; a message quoting the payload (an invalid type's
    // string) is cut.
    bounded(text.strip_suffix(&suffix).unwrap_or(&text), QUOTE_MAX + 32)
}

pub(crate) fn json_error(e: serde_json::Error) -> DecodeError {
    DecodeError::NotJson {
        line: e.line(),
        column: e.column(),
        reason: json_reason(&e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_are_cut_at_a_character_boundary() {
        assert_eq!(quoted(&"é".repeat(40)), format!("{:?}…", "é".repeat(32)));
        assert_eq!(quoted("ok"), "\"ok\"");
        assert_eq!(quoted("a\u{7}"), "\"a\\u{7}\"");
        assert_eq!(bounded("éé", 3), "é…");
    }

    #[test]
    fn cbor_errors_are_bounded() {
        let e = DecodeError::from(CborError {
            offset: 3,
            reason: "x".repeat(1000),
        });
        assert!(e.to_string().len() < 200, "{e}");
        assert!(e.to_string().starts_with("not valid CBOR at byte 3: xxx"));
    }
}
