//! fieldgate-null-component: the ideal XEP-0114 component, a baseline for the sensor-data
//! benchmark (tests/bench/bench_iot.py). It answers, for any JID at its domain, exactly the
//! stanzas fieldgate answers a readout or a ping with, doing as little as it can per
//! request; the server's cost of routing them is then all that is left. fieldgate's readouts
//! per second divided by this component's, in the same run and through the same server, tell
//! how much of the gap to pings is the gateway's.
//!
//! - `<iq type='get'><ping xmlns='urn:xmpp:ping'/></iq>` → an empty iq result;
//! - `<iq type='get'><req xmlns='urn:xmpp:iot:sensordata' seqnr='N' .../></iq>` → an iq
//!   result `<accepted xmlns='urn:xmpp:iot:sensordata' seqnr='N'/>`, then
//!   `<message from='<device>/gw' to='<requester>'>` holding the `<fields done='true'>` of
//!   `--fields-template` (a real fieldgate readout, dumped by `fieldgate-loadgen
//!   --dump-fields` earlier in the run) with only its seqnr replaced;
//! - any other iq get or set → an iq error `service-unavailable`; anything else is ignored.
//!
//! Per request it does no DOM building and no XML escaping: a scan of the incoming bytes
//! for element boundaries and the few attributes it needs (`from`, `to`, `id`, `type`, the
//! child's name, `xmlns` and `seqnr`), copied as they came (already escaped) into replies
//! written from pre-rendered bytes. Plain blocking I/O on one thread, TCP_NODELAY; all the
//! replies to what one read returned go out in one write.
//!
//! Prints `ready` on stdout once the server accepted the handshake, and its counters when
//! the stream ends.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::ops::Range;

use fieldgate_loadgen::{print_kv, Opts, NS_COMPONENT, NS_PING, NS_SENSORDATA, NS_STANZAS};
use xmpp_parsers::component::Handshake;

const USAGE: &str = "\
usage: fieldgate-null-component --server HOST:PORT --domain DOMAIN --secret SECRET
                                --fields-template FILE [--resource gw]

  --server HOST:PORT      the XMPP server's component port (XEP-0114)
  --domain DOMAIN         the component's domain (as configured in the server)
  --secret SECRET         the component secret
  --fields-template FILE  one <fields xmlns='urn:xmpp:iot:sensordata' seqnr=.. done='true'>
                          element, as written by fieldgate-loadgen --dump-fields
  --resource R            the resource readout messages come from (default gw, as fieldgate)
";

// ---- a light XML scan -------------------------------------------------------------------

/// What one `<...>` is.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Tok {
    /// A start tag; `true` when self-closing.
    Start(bool),
    /// An end tag.
    End,
    /// An XML declaration, processing instruction, comment, CDATA section or doctype.
    Skip,
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The markup starting at `buf[0] == b'<'` and where it ends (after its `>`), or `None`
/// when it is not all in `buf` yet.
fn token(buf: &[u8]) -> Option<(Tok, usize)> {
    let skip_to = |start: usize, end: &[u8]| {
        find(&buf[start..], end).map(|p| (Tok::Skip, start + p + end.len()))
    };
    match buf.get(1)? {
        b'?' => skip_to(2, b"?>"),
        b'!' => {
            if buf.len() < 9 {
                None // too short to tell a comment from CDATA from a doctype
            } else if buf.starts_with(b"<!--") {
                skip_to(4, b"-->")
            } else if buf.starts_with(b"<![CDATA[") {
                skip_to(9, b"]]>")
            } else {
                skip_to(2, b">")
            }
        }
        b'/' => buf
            .iter()
            .position(|&b| b == b'>')
            .map(|p| (Tok::End, p + 1)),
        _ => {
            // a start tag: its `>` is the first one outside a quoted attribute value
            let mut quote = None;
            for (j, &b) in buf.iter().enumerate().skip(1) {
                match quote {
                    Some(q) if b == q => quote = None,
                    Some(_) => {}
                    None if b == b'\'' || b == b'"' => quote = Some(b),
                    None if b == b'>' => return Some((Tok::Start(buf[j - 1] == b'/'), j + 1)),
                    None => {}
                }
            }
            None
        }
    }
}

/// The element name of a start tag (`<name ...>`), prefix included.
fn tag_name(tag: &[u8]) -> &[u8] {
    let end = tag
        .iter()
        .skip(1)
        .position(|&b| b.is_ascii_whitespace() || b == b'/' || b == b'>')
        .map_or(tag.len(), |p| p + 1);
    &tag[1..end]
}

/// Where the value of attribute `name` is in a start tag (raw: still escaped).
fn attr_range(tag: &[u8], name: &[u8]) -> Option<Range<usize>> {
    let mut j = 1 + tag_name(tag).len();
    loop {
        while tag.get(j)?.is_ascii_whitespace() {
            j += 1;
        }
        if matches!(tag[j], b'/' | b'>') {
            return None;
        }
        let n0 = j;
        while !matches!(tag.get(j)?, b'=' | b' ' | b'\t' | b'\r' | b'\n') {
            j += 1;
        }
        let key = &tag[n0..j];
        while tag.get(j)?.is_ascii_whitespace() {
            j += 1;
        }
        if tag[j] != b'=' {
            return None; // not well-formed
        }
        j += 1;
        while tag.get(j)?.is_ascii_whitespace() {
            j += 1;
        }
        let q = tag[j];
        if q != b'\'' && q != b'"' {
            return None;
        }
        let v0 = j + 1;
        let v1 = v0 + tag[v0..].iter().position(|&b| b == q)?;
        if key == name {
            return Some(v0..v1);
        }
        j = v1 + 1;
    }
}

fn attr<'a>(tag: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    attr_range(tag, name).map(|r| &tag[r])
}

/// One item of the server's stream.
#[derive(Debug, PartialEq, Eq)]
enum Item {
    /// The stream header's start tag (`<stream:stream ...>`), at `range`.
    Header(Range<usize>),
    /// A whole top-level element: its start tag and its first child's start tag.
    Element {
        top: Range<usize>,
        child: Option<Range<usize>>,
    },
    /// `</stream:stream>`.
    End,
}

/// The next item in `buf` and the bytes it takes, or `None` when it is not all there yet.
/// Before the header (`in_stream == false`) it looks for the header, after it for elements.
fn next_item(buf: &[u8], in_stream: bool) -> Option<(Item, usize)> {
    let mut i = 0;
    let mut depth = 0usize;
    let mut top = None;
    let mut child = None;
    loop {
        // text between tags (whitespace keepalives, character data) is skipped
        i += buf[i..].iter().position(|&b| b == b'<')?;
        let (tok, len) = token(&buf[i..])?;
        let range = i..i + len;
        i += len;
        match tok {
            Tok::Skip => {}
            Tok::Start(_) if !in_stream => return Some((Item::Header(range), i)),
            Tok::End if depth == 0 => return Some((Item::End, i)),
            Tok::End => {
                depth -= 1;
                if depth == 0 {
                    let top = top.expect("an element started");
                    return Some((Item::Element { top, child }, i));
                }
            }
            Tok::Start(closed) => {
                if depth == 0 {
                    top = Some(range);
                    if closed {
                        return Some((
                            Item::Element {
                                top: top.unwrap(),
                                child,
                            },
                            i,
                        ));
                    }
                } else if depth == 1 && child.is_none() {
                    child = Some(range);
                }
                if !closed {
                    depth += 1;
                }
            }
        }
    }
}

// ---- replies ----------------------------------------------------------------------------

/// The `<fields>` of a real readout, split around its seqnr value.
struct Template {
    before_seqnr: Vec<u8>,
    after_seqnr: Vec<u8>,
}

impl Template {
    fn load(path: &str) -> Result<Template, String> {
        let text = std::fs::read(path).map_err(|e| format!("{path}: {e}"))?;
        let start = text
            .iter()
            .position(|&b| b == b'<')
            .ok_or(format!("{path}: no element"))?;
        let text = text[start..].trim_ascii_end().to_vec();
        let (tok, len) = token(&text).ok_or(format!("{path}: no start tag"))?;
        let tag = &text[..len];
        let ns = attr(tag, b"xmlns");
        if tok != Tok::Start(false)
            || tag_name(tag) != b"fields"
            || ns != Some(NS_SENSORDATA.as_bytes())
            || attr(tag, b"done") != Some(b"true")
        {
            return Err(format!(
                "{path}: not a <fields xmlns='{NS_SENSORDATA}' done='true'> with content"
            ));
        }
        let seqnr = attr_range(tag, b"seqnr").ok_or(format!("{path}: <fields> without seqnr"))?;
        Ok(Template {
            before_seqnr: text[..seqnr.start].to_vec(),
            after_seqnr: text[seqnr.end..].to_vec(),
        })
    }
}

#[derive(Default)]
struct Counters {
    pings: u64,
    readouts: u64,
    refused: u64,
    ignored: u64,
}

/// ` name='value'`, value as received (escaped already; `'` only if it came in `"`).
fn put_attr(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.push(b' ');
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"='");
    if value.contains(&b'\'') {
        for &b in value {
            if b == b'\'' {
                out.extend_from_slice(b"&apos;");
            } else {
                out.push(b);
            }
        }
    } else {
        out.extend_from_slice(value);
    }
    out.push(b'\'');
}

/// `<iq type='..' id='..' from='<to>' to='<from>'` (unclosed) answering a request.
fn iq_head(out: &mut Vec<u8>, kind: &str, id: &[u8], from: &[u8], to: &[u8]) {
    out.extend_from_slice(b"<iq");
    put_attr(out, "type", kind.as_bytes());
    put_attr(out, "id", id);
    put_attr(out, "from", from);
    put_attr(out, "to", to);
}

struct Component {
    template: Template,
    resource: Vec<u8>,
    counters: Counters,
}

impl Component {
    /// Appends the answer to one top-level element to `out`.
    fn answer(&mut self, top: &[u8], child: Option<&[u8]>, out: &mut Vec<u8>) {
        let kind = attr(top, b"type");
        if tag_name(top) != b"iq" || !matches!(kind, Some(b"get" | b"set")) {
            self.counters.ignored += 1;
            return;
        }
        let (Some(from), Some(to)) = (attr(top, b"from"), attr(top, b"to")) else {
            self.counters.ignored += 1;
            return;
        };
        let id = attr(top, b"id").unwrap_or_default();
        let payload = child.map(|c| (tag_name(c), attr(c, b"xmlns"), c));
        match payload {
            Some((b"ping", Some(ns), _)) if ns == NS_PING.as_bytes() && kind == Some(b"get") => {
                iq_head(out, "result", id, to, from);
                out.extend_from_slice(b"/>");
                self.counters.pings += 1;
            }
            Some((b"req", Some(ns), c)) if ns == NS_SENSORDATA.as_bytes() => {
                let Some(seqnr) = attr(c, b"seqnr") else {
                    return self.refuse(id, to, from, out);
                };
                iq_head(out, "result", id, to, from);
                out.extend_from_slice(b"><accepted xmlns='");
                out.extend_from_slice(NS_SENSORDATA.as_bytes());
                out.extend_from_slice(b"' seqnr='");
                out.extend_from_slice(seqnr);
                out.extend_from_slice(b"'/></iq><message from='");
                out.extend_from_slice(to);
                if !to.contains(&b'/') {
                    out.push(b'/');
                    out.extend_from_slice(&self.resource);
                }
                out.push(b'\'');
                put_attr(out, "to", from);
                out.push(b'>');
                out.extend_from_slice(&self.template.before_seqnr);
                out.extend_from_slice(seqnr);
                out.extend_from_slice(&self.template.after_seqnr);
                out.extend_from_slice(b"</message>");
                self.counters.readouts += 1;
            }
            _ => self.refuse(id, to, from, out),
        }
    }

    fn refuse(&mut self, id: &[u8], from: &[u8], to: &[u8], out: &mut Vec<u8>) {
        iq_head(out, "error", id, from, to);
        out.extend_from_slice(b"><error type='cancel'><service-unavailable xmlns='");
        out.extend_from_slice(NS_STANZAS.as_bytes());
        out.extend_from_slice(b"'/></error></iq>");
        self.counters.refused += 1;
    }
}

// ---- the connection ---------------------------------------------------------------------

fn run(mut opts: Opts) -> Result<(), String> {
    let server = opts.need("server")?;
    let domain = opts.need("domain")?;
    let secret = opts.need("secret")?;
    let template = Template::load(&opts.need("fields-template")?)?;
    let resource = opts.take("resource").unwrap_or_else(|| "gw".into());
    opts.finish()?;
    let mut c = Component {
        template,
        resource: resource.into_bytes(),
        counters: Counters::default(),
    };

    let mut sock = TcpStream::connect(&server).map_err(|e| format!("connect {server}: {e}"))?;
    sock.set_nodelay(true).map_err(|e| e.to_string())?;
    let header = format!(
        "<?xml version='1.0'?><stream:stream xmlns='{NS_COMPONENT}' \
         xmlns:stream='http://etherx.jabber.org/streams' to='{domain}'>"
    );
    let io = |e: std::io::Error| format!("{server}: {e}");
    sock.write_all(header.as_bytes()).map_err(io)?;

    // what one read returned; appended to what is left of an incomplete element
    let mut chunk = vec![0u8; 64 * 1024];
    let mut buf: Vec<u8> = Vec::with_capacity(128 * 1024);
    let mut out: Vec<u8> = Vec::with_capacity(128 * 1024);
    let mut in_stream = false;
    let mut ready = false;
    loop {
        let n = match sock.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io(e)),
        };
        buf.extend_from_slice(&chunk[..n]);
        let mut pos = 0;
        while let Some((item, len)) = next_item(&buf[pos..], in_stream) {
            let at = |r: Range<usize>| &buf[pos + r.start..pos + r.end];
            match item {
                Item::Header(r) => {
                    let id = attr(at(r), b"id").ok_or("stream header without id")?;
                    let id = String::from_utf8_lossy(id).into_owned();
                    let hash = Handshake::from_stream_id_and_password(id, &secret)
                        .data
                        .expect("a handshake request carries a hash");
                    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
                    out.extend_from_slice(format!("<handshake>{hex}</handshake>").as_bytes());
                    in_stream = true;
                }
                Item::Element { top, .. } if !ready => {
                    let top = at(top);
                    if tag_name(top) != b"handshake" {
                        let rest = String::from_utf8_lossy(&buf[pos..pos + len]);
                        return Err(format!("handshake refused: {rest}"));
                    }
                    ready = true;
                    println!("ready");
                    std::io::stdout().flush().map_err(|e| e.to_string())?;
                }
                Item::Element { top, child } => {
                    let child = child.map(&at);
                    c.answer(at(top), child, &mut out);
                }
                Item::End => {
                    pos += len;
                    buf.drain(..pos);
                    sock.write_all(&out).map_err(io)?;
                    let _ = sock.write_all(b"</stream:stream>");
                    return report(&c.counters, "stream closed by the server");
                }
            }
            pos += len;
        }
        buf.drain(..pos);
        if !out.is_empty() {
            sock.write_all(&out).map_err(io)?;
            out.clear();
        }
    }
    report(&c.counters, "connection closed by the server")
}

fn report(c: &Counters, why: &str) -> Result<(), String> {
    print_kv("end", why);
    print_kv("pings", c.pings);
    print_kv("readouts", c.readouts);
    print_kv("refused", c.refused);
    print_kv("ignored", c.ignored);
    Ok(())
}

fn main() {
    let opts = match Opts::from_env(USAGE) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("error: {e}\n\n{USAGE}");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(opts) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(mut s: &[u8], mut in_stream: bool) -> Vec<Item> {
        let mut v = vec![];
        while let Some((item, len)) = next_item(s, in_stream) {
            in_stream = true;
            s = &s[len..];
            v.push(item);
        }
        v
    }

    #[test]
    fn scans_header_elements_and_end() {
        let s = b"<?xml version='1.0'?><stream:stream xmlns='jabber:component:accept' id='a>b'>\
            <handshake/> <iq type='get' id='x' to='d@n.x' from='u@x/r'><ping xmlns='urn:xmpp:ping'/></iq>\
            <message a=\"'>\"><!-- c --><body>t &amp; <![CDATA[<]]></body></message></stream:stream>";
        let v = items(s, false);
        assert_eq!(v.len(), 5, "{v:?}");
        let Item::Header(r) = &v[0] else { panic!() };
        assert_eq!(attr(&s[r.clone()], b"id"), Some(&b"a>b"[..]));
        assert!(matches!(v[1], Item::Element { child: None, .. }));
        assert!(matches!(v[2], Item::Element { child: Some(_), .. }));
        assert_eq!(v[4], Item::End);
        // an element cut anywhere is incomplete
        for cut in 1..30 {
            let el = b"<iq type='get'><ping xmlns='urn:xmpp:ping'/></iq>";
            assert_eq!(next_item(&el[..el.len() - cut], true), None);
        }
    }

    #[test]
    fn answers_ping_and_req() {
        let dir = std::env::temp_dir().join(format!("null-component-test-{}", std::process::id()));
        std::fs::write(
            &dir,
            "<fields xmlns=\"urn:xmpp:iot:sensordata\" seqnr=\"1\" done=\"true\"><node nodeId=\"m\"/></fields>\n",
        )
        .unwrap();
        let template = Template::load(dir.to_str().unwrap()).unwrap();
        std::fs::remove_file(&dir).unwrap();
        let mut c = Component {
            template,
            resource: b"gw".to_vec(),
            counters: Counters::default(),
        };
        let mut out = vec![];
        c.answer(
            b"<iq type='get' id='lg1' to='d@n.x' from='u@x/r'>",
            Some(b"<ping xmlns='urn:xmpp:ping'/>"),
            &mut out,
        );
        assert_eq!(
            String::from_utf8_lossy(&out),
            "<iq type='result' id='lg1' from='d@n.x' to='u@x/r'/>"
        );
        out.clear();
        c.answer(
            b"<iq type='get' id='lg2' to='d@n.x' from='u@x/r'>",
            Some(b"<req xmlns='urn:xmpp:iot:sensordata' seqnr='2' momentary='true'/>"),
            &mut out,
        );
        assert_eq!(
            String::from_utf8_lossy(&out),
            "<iq type='result' id='lg2' from='d@n.x' to='u@x/r'>\
             <accepted xmlns='urn:xmpp:iot:sensordata' seqnr='2'/></iq>\
             <message from='d@n.x/gw' to='u@x/r'><fields xmlns=\"urn:xmpp:iot:sensordata\" \
             seqnr=\"2\" done=\"true\"><node nodeId=\"m\"/></fields></message>"
        );
        out.clear();
        c.answer(
            b"<iq type='get' id='q' to='d@n.x' from='u@x/r'>",
            Some(b"<query xmlns='jabber:iq:version'/>"),
            &mut out,
        );
        assert!(String::from_utf8_lossy(&out).contains("service-unavailable"));
        assert_eq!(
            (c.counters.pings, c.counters.readouts, c.counters.refused),
            (1, 1, 1)
        );
    }
}
