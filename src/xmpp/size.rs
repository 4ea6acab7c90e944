//! How many bytes a stanza takes on the wire, and splitting a payload so that every
//! stanza the gateway sends stays below the bound the server enforces: a component that
//! sends one stanza over it has its stream closed (Prosody: 512 KiB, `not-well-formed`).

use std::rc::Rc;

use tokio_xmpp::minidom::{Element, Node};
use xmpp_parsers::ns;

/// The bytes `el` takes when tokio-xmpp writes it in a component stream, give or take a
/// few: names, attributes with their escapes, namespace declarations where the namespace
/// changes, text with its escapes, end tags. Walks the tree without recursion.
pub fn encoded_len(el: &Element) -> usize {
    encoded_len_in(el, ns::COMPONENT)
}

/// [`encoded_len`] of `el` written inside an element of namespace `parent_ns`.
pub fn encoded_len_in(el: &Element, parent_ns: &str) -> usize {
    let mut total = open_tag_len(el, parent_ns);
    if el.nodes().next().is_none() {
        return total + 2; // "/>"
    }
    total += 1;
    // (children left, element, its namespace)
    let mut stack = vec![(el.nodes(), el, el.ns())];
    while let Some((nodes, parent, parent_ns)) = stack.last_mut() {
        match nodes.next() {
            Some(Node::Text(t)) => total += escaped_len(t, false),
            Some(Node::Element(child)) => {
                total += open_tag_len(child, parent_ns);
                if child.nodes().next().is_none() {
                    total += 2;
                } else {
                    total += 1;
                    let child_ns = child.ns();
                    stack.push((child.nodes(), child, child_ns));
                }
            }
            None => {
                total += parent.name().len() + 3; // "</" name ">"
                stack.pop();
            }
        }
    }
    total
}

/// `<name` with the attributes and, where the namespace differs from the parent's, its
/// declaration; without the closing `>` or `/>`.
fn open_tag_len(el: &Element, parent_ns: &str) -> usize {
    let mut n = 1 + el.name().len();
    if !el.has_ns(parent_ns) {
        n += " xmlns=''".len() + el.ns().len();
    }
    for ((attr_ns, name), value) in el.attrs().iter() {
        n += " =''".len() + name.len() + escaped_len(value, true);
        if !attr_ns.is_none() {
            // `xml:lang`, or a generated prefix and its declaration.
            n += if attr_ns.as_str() == tokio_xmpp::minidom::rxml::Namespace::xml().as_str() {
                4
            } else {
                " xmlns:ns0=''".len() + attr_ns.len() + 4
            };
        }
    }
    n
}

/// `s` escaped as rxml escapes it: `&<>` in text, also quotes and line breaks in attributes.
fn escaped_len(s: &str, attribute: bool) -> usize {
    s.len()
        + s.bytes()
            .map(|b| match b {
                b'<' | b'>' => 3,
                b'&' => 4,
                b'\r' => 4,
                b'"' | b'\'' | b'\n' | b'\t' if attribute => 4,
                _ => 0,
            })
            .sum::<usize>()
}

/// Splits `payload` into copies that each encode in at most `budget` bytes. The elements
/// `levels` below the root are what is distributed between the copies, in document order;
/// each copy repeats the ancestors they need (attributes only), so `<fields>` → `<node>` →
/// `<timestamp>` → fields (levels 3) splits into messages of whole fields under their own
/// node and timestamp. Text between elements is dropped. A single unit larger than the
/// budget travels alone; a payload that fits comes back unchanged.
pub fn split(mut payload: Element, levels: usize, budget: usize) -> Vec<Element> {
    if levels == 0 || encoded_len(&payload) <= budget {
        return vec![payload];
    }
    let nodes = payload.take_nodes();
    let root = Rc::new(payload);
    let mut units = Vec::new();
    let mut path = vec![root.clone()];
    for node in nodes {
        if let Node::Element(child) = node {
            flatten(child, levels - 1, &mut path, &mut units);
        }
    }
    if units.is_empty() {
        return vec![(*root).clone()];
    }
    // An ancestor's cost in a piece: its start and end tags (`<x a='b'/>` plus `</x>`
    // less `/`).
    let shell_cost = |s: &Element| encoded_len(s) + s.name().len() + 2;
    let empty = shell_cost(&root);
    let mut pieces = Vec::new();
    let mut piece: Vec<(Vec<Rc<Element>>, Element)> = Vec::new();
    let mut size = empty;
    for (path, unit) in units {
        // The ancestors this unit opens that the piece does not have open yet.
        let shells =
            |shared: usize| -> usize { path[shared.max(1)..].iter().map(|s| shell_cost(s)).sum() };
        let shared = piece
            .last()
            .map_or(0, |(last, _)| common_prefix(last, &path));
        let parent_ns = path
            .last()
            .map_or_else(|| ns::COMPONENT.to_owned(), |p| p.ns());
        let cost = encoded_len_in(&unit, &parent_ns);
        if !piece.is_empty() && size + cost + shells(shared) > budget {
            pieces.push(assemble(std::mem::take(&mut piece)));
            size = empty;
        }
        let shared = piece
            .last()
            .map_or(0, |(last, _)| common_prefix(last, &path));
        size += cost + shells(shared);
        piece.push((path, unit));
    }
    if !piece.is_empty() {
        pieces.push(assemble(piece));
    }
    pieces
}

/// Moves the units `levels` below `el` into `out`, each with its ancestors emptied of
/// content (shared between siblings, so that `Rc::ptr_eq` tells whether two units had the
/// same parent). The recursion is `levels` deep, a constant of the caller's.
fn flatten(
    mut el: Element,
    levels: usize,
    path: &mut Vec<Rc<Element>>,
    out: &mut Vec<(Vec<Rc<Element>>, Element)>,
) {
    if levels == 0 {
        out.push((path.clone(), el));
        return;
    }
    let nodes = el.take_nodes();
    path.push(Rc::new(el));
    for node in nodes {
        if let Node::Element(child) = node {
            flatten(child, levels - 1, path, out);
        }
    }
    path.pop();
}

fn common_prefix(a: &[Rc<Element>], b: &[Rc<Element>]) -> usize {
    a.iter()
        .zip(b)
        .take_while(|(x, y)| Rc::ptr_eq(x, y))
        .count()
}

/// Rebuilds one copy from its units: ancestors cloned from their shells, opened and
/// closed as the units' paths change.
fn assemble(units: Vec<(Vec<Rc<Element>>, Element)>) -> Element {
    let mut open: Vec<(Rc<Element>, Element)> = Vec::new();
    for (path, unit) in units {
        let keep = open
            .iter()
            .zip(&path)
            .take_while(|((shell, _), p)| Rc::ptr_eq(shell, p))
            .count();
        close_to(&mut open, keep);
        for shell in &path[keep..] {
            open.push((shell.clone(), (**shell).clone()));
        }
        if let Some((_, el)) = open.last_mut() {
            el.append_child(unit);
        }
    }
    close_to(&mut open, 1);
    open.pop().map(|(_, el)| el).unwrap_or_else(|| {
        // No units at all cannot happen: `split` only assembles non-empty pieces.
        Element::bare("empty", ns::COMPONENT)
    })
}

/// Closes open ancestors until `depth` remain, each appended to its parent.
fn close_to(open: &mut Vec<(Rc<Element>, Element)>, depth: usize) {
    while open.len() > depth.max(1) {
        let (_, el) = open.pop().expect("more than one open");
        if let Some((_, parent)) = open.last_mut() {
            parent.append_child(el);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn el(xml: &str) -> Element {
        xml.parse().unwrap()
    }

    /// What tokio-xmpp would write for `e` in a component stream.
    fn written(e: &Element) -> usize {
        let mut out = Vec::new();
        e.write_to(&mut out).unwrap();
        let s = String::from_utf8(out).unwrap();
        // minidom declares the root's namespace; in the stream it is the default already.
        s.replace(" xmlns='jabber:component:accept'", "")
            .replace(" xmlns=\"jabber:component:accept\"", "")
            .len()
    }

    #[test]
    fn lengths_match_what_is_written() {
        for xml in [
            "<message xmlns='jabber:component:accept' from='a@b/c' to='d@e'/>",
            "<message xmlns='jabber:component:accept' to='x&amp;y&apos;'>\
             <fields xmlns='urn:xmpp:iot:sensordata' seqnr='1' done='true'>\
             <node nodeId='pump'><timestamp value='2026-01-01T00:00:00Z'>\
             <numeric name='p &lt; 3' value='1.5' unit='bar' momentary='true'/>\
             </timestamp></node></fields></message>",
            "<iq xmlns='jabber:component:accept' type='error'><error type='cancel'>\
             <item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>\
             <text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas' xml:lang='en'>a &amp; b &gt; c</text>\
             </error></iq>",
        ] {
            let e = el(xml);
            let est = encoded_len(&e);
            let real = written(&e);
            // an estimate, never below the truth and never far above it
            assert!(est >= real && est <= real + real / 10 + 16, "{est} vs {real}: {xml}");
        }
    }

    #[test]
    fn deep_trees_are_measured_without_recursion() {
        let mut e = Element::bare("a", "urn:x");
        for _ in 0..200_000 {
            let mut p = Element::bare("a", "urn:x");
            p.append_child(e);
            e = p;
        }
        assert!(encoded_len(&e) > 200_000 * 7);
        // dropping it would recurse; leak it instead, this test is about measuring
        std::mem::forget(e);
    }

    fn fields(n: usize) -> Element {
        let mut xml = String::from(
            "<fields xmlns='urn:xmpp:iot:sensordata' seqnr='9'><node nodeId='d'>\
             <timestamp value='2026-01-01T00:00:00Z'>",
        );
        for i in 0..n {
            xml.push_str(&format!("<int name='f{i:05}' value='{i}'/>"));
            if i == n / 2 {
                xml.push_str("</timestamp><timestamp value='2026-01-01T00:00:01Z'>");
            }
        }
        xml.push_str("</timestamp></node></fields>");
        el(&xml)
    }

    #[test]
    fn a_payload_that_fits_is_left_alone() {
        let f = fields(10);
        assert_eq!(split(f.clone(), 3, 10_000), vec![f]);
    }

    #[test]
    fn a_large_payload_splits_into_pieces_under_the_budget_in_order() {
        let budget = 2_000;
        let pieces = split(fields(600), 3, budget);
        assert!(pieces.len() > 10, "{}", pieces.len());
        let mut names = Vec::new();
        for (i, p) in pieces.iter().enumerate() {
            assert!(encoded_len(p) <= budget, "{}", encoded_len(p));
            // and packed close to it: the estimate of what a piece holds is its real size
            if i + 1 < pieces.len() {
                assert!(encoded_len(p) > budget * 9 / 10, "{}", encoded_len(p));
            }
            assert_eq!(p.attr("seqnr"), Some("9"));
            let node = p.get_child("node", "urn:xmpp:iot:sensordata").unwrap();
            assert_eq!(node.attr("nodeId"), Some("d"));
            for ts in node.children() {
                assert!(ts.attr("value").is_some());
                names.extend(ts.children().map(|f| f.attr("name").unwrap().to_owned()));
            }
        }
        let expected: Vec<String> = (0..600).map(|i| format!("f{i:05}")).collect();
        assert_eq!(names, expected);
        // the fields keep their timestamps
        let last = pieces.last().unwrap();
        let ts = last
            .get_child("node", "urn:xmpp:iot:sensordata")
            .unwrap()
            .children()
            .last()
            .unwrap();
        assert_eq!(ts.attr("value"), Some("2026-01-01T00:00:01Z"));
    }

    #[test]
    fn a_unit_larger_than_the_budget_travels_alone() {
        let big = format!(
            "<failure xmlns='urn:xmpp:iot:sensordata' seqnr='1'><error nodeId='d'>a</error>\
             <error nodeId='d'>{}</error><error nodeId='d'>c</error></failure>",
            "x".repeat(500)
        );
        let pieces = split(el(&big), 1, 300);
        assert_eq!(pieces.len(), 3);
        assert_eq!(pieces[1].children().next().unwrap().text().len(), 500);
    }
}
