//! A byte-level scanner that bounds every stanza before an XML parser sees it.
//!
//! It knows just enough XML to find element boundaries (start and end tags, quoted
//! attribute values, CDATA, comments, processing instructions) and tracks, per stanza
//! (an element one level below the stream root): its size, how deep elements nest inside
//! it, and the length of every name and attribute value. A stanza within bounds passes
//! through byte for byte. A stanza that breaks one is dropped as it streams in (never
//! held whole, never parsed into a tree) and replaced by an empty copy of its start tag,
//! routing attributes only, holding one `<refused xmlns='urn:fieldgate:guard'/>` that
//! says which bound it broke, so the gateway can answer the sender.
//!
//! Why here and not in the parser: tokio-xmpp builds its rxml parser itself with default
//! options (a name or attribute value over 8,192 bytes is a fatal error that ends the
//! stream), and the tree builders and `Drop` of minidom recurse once per nesting level, so
//! a deep enough stanza overflows the stack. Neither can be configured from outside.
//! The scanner runs in time linear in the input and memory bounded by the stanza limit.

use super::{Limits, Violation};

/// The lexical state between two bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lex {
    /// Character data.
    Text,
    /// Just after `<`.
    Open,
    /// In a start tag's name.
    StartName,
    /// In a start tag, between attributes.
    InTag,
    /// In an attribute name.
    AttrName,
    /// After an attribute name, before `=`.
    AfterAttrName,
    /// After `=`, before the opening quote.
    BeforeValue,
    /// In an attribute value delimited by this quote.
    Value(u8),
    /// After `/` in a start tag: `>` must follow.
    SelfClose,
    /// In an end tag, up to `>`.
    EndTag,
    /// After `<!`: this many bytes of `--` or `[CDATA[` matched so far.
    Bang(u8),
    /// In a comment; the number of `-` just seen (up to 2).
    Comment(u8),
    /// In a CDATA section; the number of `]` just seen (up to 2).
    Cdata(u8),
    /// In a processing instruction; whether `?` was just seen.
    Pi(bool),
    /// In another `<!...>` declaration, up to `>`.
    Decl,
}

const CDATA_OPEN: &[u8] = b"[CDATA[";

/// What a refused stanza's replacement repeats of its start tag: the element name, if it
/// is a stanza's (`iq`, `message`, `presence`), and the attributes an error reply needs,
/// as written (escaped, with their quotes), each at most once.
#[derive(Debug, Default)]
struct Header {
    /// The element name (only its first bytes: longer names are no stanza's).
    name: Vec<u8>,
    /// ` name='value'` pairs kept so far.
    attrs: Vec<u8>,
    /// Which of [`KEPT`] are in `attrs`, as bits.
    kept: u8,
    /// The attribute being read, if it may be one to keep.
    keeping: bool,
    /// Where the attribute being read starts in `attrs`, to take it back.
    attr_start: usize,
    /// Whether the start tag is complete.
    done: bool,
}

/// The attributes a refused stanza's replacement keeps.
const KEPT: [&[u8]; 5] = [b"from", b"to", b"id", b"type", b"xmlns"];

/// Bound on one kept attribute, `name='value'`: a JID is at most 3,071 bytes (RFC 7622);
/// an `id` longer than that is not echoed.
const MAX_KEPT_ATTR: usize = 3 * 1024 + 16;

/// One stanza while it streams through.
#[derive(Debug, Default)]
struct Stanza {
    /// Its bytes so far, until a bound is broken.
    buf: Vec<u8>,
    /// All its bytes so far.
    size: usize,
    /// The first bound broken.
    violation: Option<Violation>,
    header: Header,
}

/// What happened to one stanza that broke a bound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// The bound broken.
    pub violation: Violation,
    /// The stanza's size in bytes.
    pub size: usize,
    /// Whether a replacement went on to the parser (otherwise the stanza is gone: its
    /// name was too long to repeat).
    pub replaced: bool,
}

/// The scanner; feed it the bytes read from the server, in order.
#[derive(Debug)]
pub struct Scanner {
    limits: Limits,
    lex: Lex,
    /// Open elements, the stream root included.
    depth: usize,
    /// Length of the name or attribute value being read.
    token: usize,
    /// A `<` at stanza level whose meaning the next byte decides.
    pending_open: bool,
    stanza: Option<Stanza>,
    /// Stanzas refused since the last [`Scanner::take_refused`].
    refused: Vec<Refused>,
}

impl Scanner {
    /// A scanner at the start of a stream.
    pub fn new(limits: Limits) -> Scanner {
        Scanner {
            limits,
            lex: Lex::Text,
            depth: 0,
            token: 0,
            pending_open: false,
            stanza: None,
            refused: Vec::new(),
        }
    }

    /// The stanzas refused since the last call.
    pub fn take_refused(&mut self) -> Vec<Refused> {
        std::mem::take(&mut self.refused)
    }

    /// Scans `input`, appending to `out` what may go on to the parser. Bytes of a
    /// stanza are held back until its end (at most the stanza limit).
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) {
        let mut i = 0;
        while i < input.len() {
            // Runs of plain bytes are taken in one step.
            let run = match self.lex {
                Lex::Text => memchr::memchr(b'<', &input[i..]),
                Lex::Value(q) => memchr::memchr(q, &input[i..]),
                _ => Some(0),
            };
            let mut run = run.unwrap_or(input.len() - i);
            if let Lex::Value(_) = self.lex {
                // Stop before the byte that breaks the attribute bound and take that byte
                // alone: the bound reported is then the one a byte-by-byte scan breaks
                // first, however the input was split (found by fuzzing: a run breaking
                // both bounds was reported as `attribute`, the same bytes in small reads
                // as `size`). Once broken, runs are whole again.
                let max = self.limits.max_attribute_bytes;
                if self.token <= max {
                    run = run.min((max - self.token).max(1));
                }
            }
            if run > 0 {
                let bytes = &input[i..i + run];
                if let Lex::Value(_) = self.lex {
                    self.token += run;
                    self.keep_header_bytes(bytes);
                    if self.token > self.limits.max_attribute_bytes {
                        self.violate(Violation::Attribute);
                    }
                }
                self.sink(bytes, out);
                i += run;
                continue;
            }
            let b = input[i];
            i += 1;
            self.byte(b, out);
        }
    }

    /// Whether the scanner is at stream level: no stanza is being held back.
    pub fn between_stanzas(&self) -> bool {
        self.stanza.is_none() && !self.pending_open
    }

    fn byte(&mut self, b: u8, out: &mut Vec<u8>) {
        if self.pending_open {
            self.pending_open = false;
            if !matches!(b, b'/' | b'!' | b'?') && !is_space(b) {
                self.stanza = Some(Stanza::default());
            }
            self.sink(b"<", out);
        }
        match self.lex {
            Lex::Text => {
                // b == b'<'
                self.lex = Lex::Open;
                if self.depth == 1 && self.stanza.is_none() {
                    self.pending_open = true;
                    return;
                }
            }
            Lex::Open => match b {
                b'/' => {
                    self.lex = Lex::EndTag;
                    self.token = 0;
                }
                b'!' => self.lex = Lex::Bang(0),
                b'?' => {
                    self.lex = Lex::Pi(false);
                    self.restricted();
                }
                _ => {
                    self.lex = Lex::StartName;
                    self.token = 1;
                    let top = self.is_stanza_top();
                    if let Some(s) = self.stanza.as_mut() {
                        if top {
                            s.header.name.push(b);
                        }
                        // Elements nested below the stanza element.
                        let nested = self.depth.saturating_sub(1);
                        if nested > self.limits.max_depth {
                            self.violate(Violation::Depth);
                        }
                    }
                }
            },
            Lex::StartName => {
                if is_space(b) {
                    self.lex = Lex::InTag;
                } else if b == b'/' {
                    self.lex = Lex::SelfClose;
                } else if b == b'>' {
                    self.open_element(out);
                    self.lex = Lex::Text;
                    return;
                } else {
                    self.token += 1;
                    if self.is_stanza_top() {
                        if let Some(s) = self.stanza.as_mut() {
                            if s.header.name.len() <= b"presence".len() {
                                s.header.name.push(b);
                            }
                        }
                    }
                    self.check_name();
                }
            }
            Lex::InTag => {
                if b == b'/' {
                    self.lex = Lex::SelfClose;
                } else if b == b'>' {
                    self.open_element(out);
                    self.lex = Lex::Text;
                    return;
                } else if !is_space(b) {
                    self.lex = Lex::AttrName;
                    self.token = 1;
                    self.start_header_attr(b);
                }
            }
            Lex::AttrName => {
                if b == b'=' {
                    self.lex = Lex::BeforeValue;
                    self.header_attr_byte(b);
                } else if is_space(b) {
                    self.lex = Lex::AfterAttrName;
                } else {
                    self.token += 1;
                    self.header_attr_byte(b);
                    self.check_name();
                }
            }
            Lex::AfterAttrName => {
                if b == b'=' {
                    self.lex = Lex::BeforeValue;
                    self.header_attr_byte(b);
                } else if !is_space(b) {
                    // Not XML; the parser will say so. Resynchronise on the tag.
                    self.lex = Lex::InTag;
                }
            }
            Lex::BeforeValue => {
                if b == b'\'' || b == b'"' {
                    self.lex = Lex::Value(b);
                    self.token = 0;
                    self.header_attr_byte(b);
                } else if !is_space(b) {
                    self.lex = Lex::InTag;
                }
            }
            Lex::Value(_) => {
                // The closing quote (runs of other bytes are taken in `feed`).
                self.header_attr_byte(b);
                self.end_header_attr();
                self.lex = Lex::InTag;
            }
            Lex::SelfClose => {
                if b == b'>' {
                    self.sink(&[b], out);
                    self.lex = Lex::Text;
                    let top = self.is_stanza_top();
                    if let Some(s) = self.stanza.as_mut() {
                        if top {
                            s.header.done = true;
                        }
                    }
                    if top {
                        self.end_stanza(out);
                    }
                    return;
                }
                self.lex = Lex::InTag;
            }
            Lex::EndTag => {
                if b == b'>' {
                    self.sink(&[b], out);
                    self.lex = Lex::Text;
                    self.depth = self.depth.saturating_sub(1);
                    if self.depth == 1 && self.stanza.is_some() {
                        self.end_stanza(out);
                    }
                    return;
                }
                self.token += 1;
                self.check_name();
            }
            Lex::Bang(n) => {
                let n = usize::from(n);
                if n == 0 && b == b'-' {
                    self.lex = Lex::Bang(100);
                } else if n == 100 {
                    // `<!-`: a comment if another `-` follows.
                    self.lex = if b == b'-' {
                        Lex::Comment(0)
                    } else {
                        Lex::Decl
                    };
                    self.restricted();
                } else if n < CDATA_OPEN.len() && b == CDATA_OPEN[n] {
                    self.lex = if n + 1 == CDATA_OPEN.len() {
                        Lex::Cdata(0)
                    } else {
                        Lex::Bang(n as u8 + 1)
                    };
                } else {
                    self.lex = if b == b'>' { Lex::Text } else { Lex::Decl };
                    self.restricted();
                }
            }
            Lex::Comment(dashes) => {
                self.lex = match b {
                    b'-' => Lex::Comment((dashes + 1).min(2)),
                    b'>' if dashes == 2 => Lex::Text,
                    _ => Lex::Comment(0),
                };
            }
            Lex::Cdata(brackets) => {
                self.lex = match b {
                    b']' => Lex::Cdata((brackets + 1).min(2)),
                    b'>' if brackets == 2 => Lex::Text,
                    _ => Lex::Cdata(0),
                };
            }
            Lex::Pi(q) => {
                self.lex = match b {
                    b'?' => Lex::Pi(true),
                    b'>' if q => Lex::Text,
                    _ => Lex::Pi(false),
                };
            }
            Lex::Decl => {
                if b == b'>' {
                    self.lex = Lex::Text;
                }
            }
        }
        self.sink(&[b], out);
    }

    /// Whether the tag being read is the stanza element's own start tag.
    fn is_stanza_top(&self) -> bool {
        self.depth == 1 && self.stanza.as_ref().is_some_and(|s| !s.header.done)
    }

    /// `>` of a start tag: the element is open.
    fn open_element(&mut self, out: &mut Vec<u8>) {
        self.sink(b">", out);
        if self.is_stanza_top() {
            if let Some(s) = self.stanza.as_mut() {
                s.header.done = true;
            }
        }
        self.depth += 1;
    }

    /// Comments, processing instructions and DTDs are not allowed in XMPP (RFC 6120
    /// §11.1); in a stanza they get the stanza refused instead of ending the stream.
    fn restricted(&mut self) {
        if self.stanza.is_some() {
            self.violate(Violation::Restricted);
        }
    }

    fn check_name(&mut self) {
        if self.token > self.limits.max_name_bytes {
            self.violate(Violation::Name);
        }
    }

    fn violate(&mut self, v: Violation) {
        if let Some(s) = self.stanza.as_mut() {
            if s.violation.is_none() {
                s.violation = Some(v);
                s.buf = Vec::new();
            }
        }
    }

    /// Passes `bytes` on, holds them with the stanza, or drops them with a refused one.
    fn sink(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        match self.stanza.as_mut() {
            None => out.extend_from_slice(bytes),
            Some(s) => {
                s.size += bytes.len();
                if s.violation.is_none() {
                    if s.size > self.limits.max_stanza_bytes {
                        s.violation = Some(Violation::Size);
                        s.buf = Vec::new();
                    } else {
                        s.buf.extend_from_slice(bytes);
                    }
                }
            }
        }
    }

    /// The first byte of an attribute name in the stanza's start tag.
    fn start_header_attr(&mut self, b: u8) {
        if !self.is_stanza_top() {
            return;
        }
        if let Some(s) = self.stanza.as_mut() {
            let h = &mut s.header;
            h.attr_start = h.attrs.len();
            h.keeping = KEPT.iter().any(|k| k[0] == b);
            if h.keeping {
                h.attrs.push(b' ');
                h.attrs.push(b);
            }
        }
    }

    fn header_attr_byte(&mut self, b: u8) {
        self.keep_header_bytes(&[b]);
    }

    fn keep_header_bytes(&mut self, bytes: &[u8]) {
        if !self.is_stanza_top() {
            return;
        }
        if let Some(s) = self.stanza.as_mut() {
            let h = &mut s.header;
            if !h.keeping {
                return;
            }
            if h.attrs.len() - h.attr_start + bytes.len() > MAX_KEPT_ATTR {
                h.attrs.truncate(h.attr_start);
                h.keeping = false;
            } else {
                h.attrs.extend_from_slice(bytes);
            }
        }
    }

    /// After an attribute's closing quote: keep it only if it is one an error reply needs.
    fn end_header_attr(&mut self) {
        if !self.is_stanza_top() {
            return;
        }
        let max_value = self.limits.max_attribute_bytes;
        if let Some(s) = self.stanza.as_mut() {
            let h = &mut s.header;
            if !h.keeping {
                return;
            }
            h.keeping = false;
            let attr = &h.attrs[h.attr_start + 1..];
            let eq = attr.iter().position(|&c| c == b'=').unwrap_or(attr.len());
            let (name, value) = (&attr[..eq], attr.get(eq + 2..attr.len() - 1));
            let slot = KEPT.iter().position(|k| *k == name);
            match (slot, value) {
                (Some(i), Some(v))
                    if h.kept & (1 << i) == 0 && v.len() <= max_value && safe_value(v) =>
                {
                    h.kept |= 1 << i
                }
                _ => h.attrs.truncate(h.attr_start),
            }
        }
    }

    /// The stanza element closed: pass it on, or its replacement.
    fn end_stanza(&mut self, out: &mut Vec<u8>) {
        let Some(s) = self.stanza.take() else { return };
        let Some(violation) = s.violation else {
            out.extend_from_slice(&s.buf);
            return;
        };
        let name = s.header.name;
        let replaced = match matches!(&name[..], b"iq" | b"message" | b"presence") {
            true => {
                out.push(b'<');
                out.extend_from_slice(&name);
                out.extend_from_slice(&s.header.attrs);
                out.extend_from_slice(b"><refused xmlns='");
                out.extend_from_slice(super::NS.as_bytes());
                out.extend_from_slice(b"' reason='");
                out.extend_from_slice(violation.as_str().as_bytes());
                out.extend_from_slice(b"' limit='");
                out.extend_from_slice(self.limits.limit_of(violation).to_string().as_bytes());
                out.extend_from_slice(b"' size='");
                out.extend_from_slice(s.size.to_string().as_bytes());
                out.extend_from_slice(b"'/></");
                out.extend_from_slice(&name);
                out.push(b'>');
                true
            }
            false => false,
        };
        self.refused.push(Refused {
            violation,
            size: s.size,
            replaced,
        });
    }
}

/// Whether an attribute value, as written between its quotes, can be repeated in the
/// replacement without making it malformed: UTF-8, no `<`, no control character, and
/// only predefined or numeric references. A stanza the server forwarded always passes;
/// a value that does not is left out rather than risk the stream.
fn safe_value(v: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(v) else {
        return false;
    };
    let mut rest = text;
    while let Some(amp) = rest.find('&') {
        let after = &rest[amp + 1..];
        let Some(semi) = after.find(';') else {
            return false;
        };
        let name = &after[..semi];
        let ok = match name.strip_prefix('#') {
            Some(num) => match num.strip_prefix('x') {
                Some(hex) => !hex.is_empty() && hex.bytes().all(|c| c.is_ascii_hexdigit()),
                None => !num.is_empty() && num.bytes().all(|c| c.is_ascii_digit()),
            },
            None => matches!(name, "amp" | "lt" | "gt" | "quot" | "apos"),
        };
        if !ok || name.len() > 8 {
            return false;
        }
        rest = &after[semi + 1..];
    }
    !text
        .bytes()
        .any(|c| c == b'<' || (c < 0x20 && !matches!(c, b'\t' | b'\n' | b'\r')))
}

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "<?xml version='1.0'?><stream:stream xmlns='jabber:component:accept' \
        xmlns:stream='http://etherx.jabber.org/streams' id='abc' from='gw.example.org'>";

    fn limits() -> Limits {
        Limits {
            max_stanza_bytes: 4096,
            max_depth: 8,
            max_attribute_bytes: 64,
            max_name_bytes: 32,
        }
    }

    /// Runs `input` through a scanner in chunks of `chunk` bytes.
    fn scan_chunked(input: &str, chunk: usize) -> (String, Vec<Refused>) {
        let mut s = Scanner::new(limits());
        let mut out = Vec::new();
        for part in input.as_bytes().chunks(chunk.max(1)) {
            s.feed(part, &mut out);
        }
        (String::from_utf8(out).unwrap(), s.take_refused())
    }

    /// Runs `input` through a scanner at every chunk size, checking they all agree, and
    /// checks each refusal's `size` against its record (then masks it for comparisons).
    fn scan(input: &str) -> (String, Vec<Refused>) {
        let whole = scan_chunked(input, input.len());
        for chunk in [1, 2, 3, 5, 7, 64] {
            assert_eq!(scan_chunked(input, chunk), whole, "chunk size {chunk}");
        }
        let (mut out, refused) = whole;
        for r in refused.iter().filter(|r| r.replaced) {
            let attr = format!(" size='{}'/>", r.size);
            let at = out.find(&attr).expect("the replacement carries the size");
            out.replace_range(at..at + attr.len(), " size='?'/>");
        }
        (out, refused)
    }

    #[test]
    fn stanzas_within_bounds_pass_byte_for_byte() {
        let input = format!(
            "{HEADER} <iq type=\"get\" id='a&apos;1' from='a@b/c' to='gw.example.org'>\
             <ping xmlns='urn:xmpp:ping' a='x&gt;y/z'/></iq>\n\
             <message to='d@gw.example.org'><body>1 &lt; 2 &amp; 3 > 2 <![CDATA[<not/> a ]] tag]]></body></message>\
             <presence/></stream:stream>"
        );
        let (out, refused) = scan(&input);
        assert_eq!(out, input);
        assert!(refused.is_empty());
    }

    #[test]
    fn a_stanza_is_held_until_its_end() {
        let mut s = Scanner::new(limits());
        let mut out = Vec::new();
        s.feed(HEADER.as_bytes(), &mut out);
        assert_eq!(out, HEADER.as_bytes());
        out.clear();
        s.feed(b" <message to='x'><body>hi", &mut out);
        assert_eq!(out, b" ");
        assert!(!s.between_stanzas());
        s.feed(b"</body></message>", &mut out);
        assert_eq!(out, b" <message to='x'><body>hi</body></message>");
        assert!(s.between_stanzas());
    }

    /// What a refused stanza turns into; `size` is left out of the comparison.
    fn replacement(head: &str, reason: &str, limit: usize, name: &str) -> String {
        format!("{head}><refused xmlns='urn:fieldgate:guard' reason='{reason}' limit='{limit}' size='?'/></{name}>")
    }

    #[test]
    fn too_deep_is_replaced_by_its_routing_header() {
        let deep = format!(
            "<message from='a@b/c' to='nosuch@gw.example.org' id='m1' lang='en'><x xmlns='urn:x'>{}{}</x></message>",
            "<a>".repeat(20),
            "</a>".repeat(20)
        );
        let input = format!("{HEADER}{deep}<presence/>");
        let (out, refused) = scan(&input);
        let expected = format!(
            "{HEADER}{}<presence/>",
            replacement(
                "<message from='a@b/c' to='nosuch@gw.example.org' id='m1'",
                "depth",
                8,
                "message"
            )
        );
        assert_eq!(out, expected);
        assert_eq!(refused.len(), 1);
        assert_eq!(refused[0].violation, Violation::Depth);
        assert_eq!(refused[0].size, deep.len());
        assert!(refused[0].replaced);
    }

    #[test]
    fn depth_counts_from_the_stanza_element() {
        // 8 levels below the stanza pass, 9 do not.
        let nest = |n: usize| format!("<iq id='d'>{}{}</iq>", "<a>".repeat(n), "</a>".repeat(n));
        let (out, refused) = scan(&format!("{HEADER}{}", nest(8)));
        assert_eq!(out, format!("{HEADER}{}", nest(8)));
        assert!(refused.is_empty());
        let (_, refused) = scan(&format!("{HEADER}{}", nest(9)));
        assert_eq!(refused[0].violation, Violation::Depth);
        // self-closing elements do not nest
        let flat = format!("{HEADER}<iq id='d'>{}</iq>", "<a/>".repeat(100));
        assert_eq!(scan(&flat).0, flat);
    }

    #[test]
    fn long_attribute_values_and_names_are_refused() {
        let long = "x".repeat(65);
        let (out, refused) = scan(&format!(
            "{HEADER}<iq type='set' id='i' from='a@b/c' to='d@gw'><set v='{long}'/></iq>"
        ));
        assert_eq!(
            out,
            format!(
                "{HEADER}{}",
                replacement(
                    "<iq type='set' id='i' from='a@b/c' to='d@gw'",
                    "attribute",
                    64,
                    "iq"
                )
            )
        );
        assert_eq!(refused[0].violation, Violation::Attribute);
        // exactly at the bound passes
        let ok = format!("{HEADER}<iq id='{}'/>", "y".repeat(64));
        assert_eq!(scan(&ok).0, ok);
        // an overlong id is not echoed, the rest of the header is kept
        let (out, _) = scan(&format!(
            "{HEADER}<message to='d@gw' id='{long}' from='a@b/c'/>"
        ));
        assert_eq!(
            out,
            format!(
                "{HEADER}{}",
                replacement(
                    "<message to='d@gw' from='a@b/c'",
                    "attribute",
                    64,
                    "message"
                )
            )
        );
        let (_, refused) = scan(&format!("{HEADER}<iq><{} /></iq>", "n".repeat(33)));
        assert_eq!(refused[0].violation, Violation::Name);
        let (_, refused) = scan(&format!("{HEADER}<iq {}='1'/>", "n".repeat(33)));
        assert_eq!(refused[0].violation, Violation::Name);
    }

    #[test]
    fn the_bound_reported_does_not_depend_on_the_reads() {
        // Found by fuzzing: a value breaking the attribute bound after the stanza broke
        // the size bound was reported as `attribute` when it came in one read, as `size`
        // when it came in small ones. It is the bound broken first, in any reads.
        let limits = Limits {
            max_stanza_bytes: 70,
            max_attribute_bytes: 127,
            ..limits()
        };
        let input = format!("{HEADER}<iq id='i'><set v='{}'/></iq>", "x".repeat(300));
        for chunk in [input.len(), 1, 7, 64] {
            let mut s = Scanner::new(limits);
            let mut out = Vec::new();
            for part in input.as_bytes().chunks(chunk) {
                s.feed(part, &mut out);
            }
            assert_eq!(s.take_refused()[0].violation, Violation::Size, "{chunk}");
        }
        // And the attribute bound when it breaks first, in any reads.
        let (_, refused) = scan(&format!("{HEADER}<iq><set v='{}'/></iq>", "x".repeat(65)));
        assert_eq!(refused[0].violation, Violation::Attribute);
    }

    #[test]
    fn oversized_stanzas_are_refused_and_not_held() {
        let body = "z".repeat(5000);
        let big = format!("<message to='d@gw' from='a@b'><body>{body}</body></message>");
        let (out, refused) = scan(&format!("{HEADER}{big}<iq id='after'/>"));
        assert_eq!(
            out,
            format!(
                "{HEADER}{}<iq id='after'/>",
                replacement("<message to='d@gw' from='a@b'", "size", 4096, "message")
            )
        );
        assert_eq!(refused[0].violation, Violation::Size);
        assert_eq!(refused[0].size, big.len());
    }

    #[test]
    fn a_refused_element_that_is_no_stanza_vanishes() {
        for name in ["q".repeat(40), "frob".into(), "cl:iq".into(), "iqq".into()] {
            let (out, refused) = scan(&format!(
                "{HEADER}<{name} to='x'>{}{}</{name}><iq/>",
                "<a>".repeat(9),
                "</a>".repeat(9)
            ));
            assert_eq!(out, format!("{HEADER}<iq/>"), "{name}");
            assert_eq!(refused.len(), 1);
            assert!(!refused[0].replaced);
        }
    }

    #[test]
    fn the_replacement_is_always_well_formed() {
        let deep = "<a>".repeat(9) + &"</a>".repeat(9);
        // a repeated attribute is kept once; a value that could break the stream is left out
        let (out, _) = scan(&format!(
            "{HEADER}<iq id='1' id='2' to='a&amp;b' from='x&bogus;' type='get\u{1}'>{deep}</iq>"
        ));
        assert_eq!(
            out,
            format!(
                "{HEADER}{}",
                replacement("<iq id='1' to='a&amp;b'", "depth", 8, "iq")
            )
        );
        assert!(safe_value(b"caf\xc3\xa9 &#x41;&#65;&lt;&quot;"));
        for bad in [
            &b"a<b"[..],
            b"&",
            b"&;",
            b"&#;",
            b"&#xZ;",
            b"&nbsp;",
            b"\xff",
            b"\x00",
        ] {
            assert!(!safe_value(bad), "{bad:?}");
        }
    }

    #[test]
    fn comments_and_processing_instructions_inside_stanzas_are_refused() {
        for inner in ["<!-- hi -->", "<?pi x?>", "<!DOCTYPE x>"] {
            let (out, refused) = scan(&format!("{HEADER}<iq id='c'>{inner}</iq><iq/>"));
            assert_eq!(
                out,
                format!(
                    "{HEADER}{}<iq/>",
                    replacement("<iq id='c'", "restricted", 0, "iq")
                ),
                "{inner}"
            );
            assert_eq!(refused[0].violation, Violation::Restricted);
        }
    }

    #[test]
    fn markup_inside_quotes_and_cdata_does_not_confuse_it() {
        let tricky = "<iq id='t' a=\"'>\" b='\"/>'><x><![CDATA[</iq><iq>]]]]></x></iq>";
        let input = format!("{HEADER}{tricky}<presence/>");
        let (out, refused) = scan(&input);
        assert_eq!(out, input);
        assert!(refused.is_empty());
    }

    #[test]
    fn stream_footer_and_whitespace_pass_at_once() {
        let mut s = Scanner::new(limits());
        let mut out = Vec::new();
        s.feed(HEADER.as_bytes(), &mut out);
        s.feed(b" \n ", &mut out);
        assert!(out.ends_with(b" \n "));
        s.feed(b"</stream:stream>", &mut out);
        assert!(out.ends_with(b"</stream:stream>"));
    }

    #[test]
    fn work_is_linear_in_depth() {
        // 100,000 levels: dropped as it streams, nothing held.
        let n = 100_000;
        let input = format!(
            "{HEADER}<message to='d@gw' from='a@b'>{}{}</message>",
            "<a>".repeat(n),
            "</a>".repeat(n)
        );
        let mut s = Scanner::new(Limits {
            max_stanza_bytes: usize::MAX,
            ..limits()
        });
        let mut out = Vec::new();
        s.feed(input.as_bytes(), &mut out);
        let refused = s.take_refused();
        assert_eq!(refused[0].violation, Violation::Depth);
        assert!(s.between_stanzas());
        assert!(out.len() < HEADER.len() + 200);
    }
}
