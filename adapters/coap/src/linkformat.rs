//! RFC 6690 link format, as servers describe their resources at `/.well-known/core`:
//! `</sensors/temp>;rt="temperature-c";if="sensor";ct=0;obs,</a>;ct="50 60"`.
//!
//! Lenient where servers differ (aiocoap quotes `ct="50"`, libcoap writes `ct=0`; some put
//! spaces or line breaks between links) and strict where a mistake would mislead: a link
//! without `<…>` or an unterminated quote ends parsing with an error naming the offset.

/// One link: the resource's path and its attributes in order (a flag such as `obs` has
/// no value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// The target as written between `<` and `>` (`/sensors/temp`).
    pub target: String,
    /// `(name, value)` pairs; the value unquoted, `None` for a bare name.
    pub attrs: Vec<(String, Option<String>)>,
}

impl Link {
    /// The first value of attribute `name`.
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| v.as_deref())
    }

    /// Whether attribute `name` is present (with or without a value).
    pub fn has(&self, name: &str) -> bool {
        self.attrs.iter().any(|(n, _)| n == name)
    }

    /// The Content-Formats the link names (`ct`, a space-separated list).
    pub fn content_formats(&self) -> Vec<u16> {
        self.attr("ct")
            .map(|v| {
                v.split_whitespace()
                    .filter_map(|c| c.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The path segments of the target (`/a/b` → `["a", "b"]`), if it is a path on the
    /// same server.
    pub fn path(&self) -> Option<Vec<String>> {
        let p = self.target.strip_prefix('/')?;
        Some(
            p.split('/')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
        )
    }
}

/// Why a link-format document could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("link format: {what} at byte {at}")]
pub struct LinkFormatError {
    /// What was expected.
    pub what: &'static str,
    /// Where.
    pub at: usize,
}

/// Parses a link-format document.
pub fn parse(text: &str) -> Result<Vec<Link>, LinkFormatError> {
    let b = text.as_bytes();
    let mut i = 0;
    let mut links = Vec::new();
    let skip_ws = |i: &mut usize| {
        while *i < b.len() && b[*i].is_ascii_whitespace() {
            *i += 1;
        }
    };
    loop {
        skip_ws(&mut i);
        if i >= b.len() {
            break;
        }
        if b[i] != b'<' {
            return Err(LinkFormatError { what: "'<'", at: i });
        }
        let close = text[i + 1..]
            .find('>')
            .ok_or(LinkFormatError { what: "'>'", at: i })?;
        let target = text[i + 1..i + 1 + close].to_owned();
        i += close + 2;
        let mut attrs = Vec::new();
        loop {
            skip_ws(&mut i);
            if i >= b.len() || b[i] == b',' {
                i += 1;
                break;
            }
            if b[i] != b';' {
                return Err(LinkFormatError {
                    what: "';' or ','",
                    at: i,
                });
            }
            i += 1;
            skip_ws(&mut i);
            let start = i;
            while i < b.len() && !matches!(b[i], b'=' | b';' | b',') && !b[i].is_ascii_whitespace()
            {
                i += 1;
            }
            let name = text[start..i].to_owned();
            if name.is_empty() {
                return Err(LinkFormatError {
                    what: "an attribute name",
                    at: start,
                });
            }
            skip_ws(&mut i);
            let value = if i < b.len() && b[i] == b'=' {
                i += 1;
                skip_ws(&mut i);
                if i < b.len() && b[i] == b'"' {
                    let mut v = String::new();
                    i += 1;
                    let mut closed = false;
                    while i < b.len() {
                        match b[i] {
                            b'"' => {
                                closed = true;
                                i += 1;
                                break;
                            }
                            b'\\' if i + 1 < b.len() => {
                                let c = text[i + 1..].chars().next().unwrap_or('\\');
                                v.push(c);
                                i += 1 + c.len_utf8();
                            }
                            _ => {
                                let c = text[i..].chars().next().unwrap_or('\u{fffd}');
                                v.push(c);
                                i += c.len_utf8();
                            }
                        }
                    }
                    if !closed {
                        return Err(LinkFormatError {
                            what: "a closing '\"'",
                            at: i,
                        });
                    }
                    Some(v)
                } else {
                    let start = i;
                    while i < b.len() && !matches!(b[i], b';' | b',') {
                        i += 1;
                    }
                    Some(text[start..i].trim().to_owned())
                }
            } else {
                None
            };
            attrs.push((name, value));
        }
        links.push(Link { target, attrs });
    }
    Ok(links)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_servers_styles_parse() {
        let l = parse(
            "</time>;if=\"clock\";rt=\"ticks\";title=\"Internal Clock\";ct=0;obs,</async>;ct=0,\
             </example_data>;title=\"Example Data\";ct=0;obs",
        )
        .unwrap();
        assert_eq!(l.len(), 3);
        assert_eq!(l[0].target, "/time");
        assert!(l[0].has("obs"));
        assert_eq!(l[0].attr("title"), Some("Internal Clock"));
        assert_eq!(l[0].content_formats(), [0]);
        assert_eq!(l[2].path().unwrap(), ["example_data"]);
        let l = parse("</sensor>; ct=\"50 60\"; obs, \n </large>;sz=10240").unwrap();
        assert_eq!(l[0].content_formats(), [50, 60]);
        assert_eq!(l[1].attr("sz"), Some("10240"));
    }

    #[test]
    fn commas_and_semicolons_inside_quotes_stay_in_the_value() {
        let l = parse("</a>;title=\"x, y; z \\\"q\\\"\",</b>").unwrap();
        assert_eq!(l[0].attr("title"), Some("x, y; z \"q\""));
        assert_eq!(l[1].target, "/b");
    }

    #[test]
    fn damage_is_an_error_with_its_place() {
        assert_eq!(parse("/a>").unwrap_err().at, 0);
        assert!(parse("</a").is_err());
        assert!(parse("</a>;title=\"open").is_err());
        assert!(parse("</a> x").is_err());
        assert!(parse("</a>;=1").is_err());
        assert!(parse("").unwrap().is_empty());
        // never panics on odd bytes
        for s in ["<", "<>", "<>;", "<>;a=\"\\", "<é>;é=é", "<>;a=\"é\\é\""] {
            let _ = parse(s);
        }
    }
}
