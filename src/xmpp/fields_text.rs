//! A `<fields>` payload (XEP-0323) written straight to text, split into as many
//! `<message>` stanzas as keep each within the outbound size bound, the last flagged
//! `done`. Used for change events, which go out for every poll of every subscribed
//! device: see [`crate::xmpp::stanza_text`] for why they are not element trees.

use std::time::SystemTime;

use crate::xmpp::payload::sensordata::{Field, NS};
use crate::xmpp::payload::xsd::XsDateTime;
use crate::xmpp::stanza_text::{push_attr, push_attr_display};

const DONE: &str = " done='true'";
const CLOSE_TIMESTAMP: &str = "</timestamp>";
const CLOSE_ALL: &str = "</timestamp></node></fields></message>";

/// Where the messages go and what they carry besides the fields.
pub struct FieldsMessages<'a> {
    /// The device's full JID.
    pub from: &'a str,
    /// The subscriber's full JID.
    pub to: &'a str,
    /// The subscription's (or readout's) sequence number.
    pub seqnr: u64,
    /// The node id (the device id).
    pub node_id: &'a str,
    /// Bound on each message, in bytes.
    pub limit: usize,
}

/// What [`FieldsMessages::write`] made.
#[derive(Debug, Default)]
pub struct Written {
    /// The messages, in order; the last one's `<fields>` says `done='true'`.
    pub messages: Vec<String>,
    /// Fields left out because one alone would not fit in a message.
    pub oversized: usize,
}

impl FieldsMessages<'_> {
    /// Writes `fields` (in order, each with the instant it was taken), grouped under one
    /// `<timestamp>` per distinct instant as written (to the millisecond), groups in the
    /// order of their first field.
    pub fn write(&self, fields: Vec<(SystemTime, Field)>) -> Written {
        let groups = group_by_stamp(fields);
        let mut w = Writer {
            spec: self,
            out: Written::default(),
            cur: String::new(),
            done_at: 0,
            open_stamp: None,
        };
        if groups.is_empty() {
            w.start();
            w.cur.truncate(w.cur.rfind("><node").unwrap_or(w.cur.len()));
            w.cur.push_str("/></message>");
            w.out.messages.push(std::mem::take(&mut w.cur));
            w.mark_done();
            return w.out;
        }
        let mut text = String::new();
        for (stamp, fields) in groups {
            let stamp = stamp.to_string();
            for f in fields {
                text.clear();
                f.write_text(&mut text);
                w.push(&stamp, &text);
            }
        }
        w.finish();
        w.out
    }
}

/// Fields written as they come, in time order (a historical readout: too many to hold
/// at once), each completed message taken as soon as it is full.
pub struct FieldsStream<'a, 'b> {
    w: Writer<'a, 'b>,
    /// The last instant seen and its written form: consecutive fields of one instant
    /// share a `<timestamp>` and the formatting.
    last: Option<(SystemTime, String)>,
    text: String,
}

impl<'b> FieldsMessages<'b> {
    /// A stream of messages; see [`FieldsStream`].
    pub fn stream<'a>(&'a self) -> FieldsStream<'a, 'b> {
        FieldsStream {
            w: Writer {
                spec: self,
                out: Written::default(),
                cur: String::new(),
                done_at: 0,
                open_stamp: None,
            },
            last: None,
            text: String::new(),
        }
    }
}

impl FieldsStream<'_, '_> {
    /// Adds `f`, taken at `t` (not before the last one's instant: fields of one instant
    /// are grouped only when they follow each other).
    pub fn push(&mut self, t: SystemTime, f: &Field) {
        if self.last.as_ref().is_none_or(|(l, _)| *l != t) {
            self.last = Some((t, XsDateTime::from_system_time(t).to_string()));
        }
        self.text.clear();
        f.write_text(&mut self.text);
        let stamp = &self.last.as_ref().expect("set above").1;
        self.w.push(stamp, &self.text);
    }

    /// The messages completed so far (none of them `done`).
    pub fn take(&mut self) -> Vec<String> {
        std::mem::take(&mut self.w.out.messages)
    }

    /// Closes the open message; with `done`, flags the last message `done` — an empty
    /// `<fields>` carries it when there is nothing else to flag. What is left to send.
    pub fn finish(mut self, done: bool) -> Written {
        if self.w.open_stamp.is_some() {
            self.w.close();
        } else if !self.w.cur.is_empty() {
            self.w
                .cur
                .truncate(self.w.cur.rfind("><node").unwrap_or(self.w.cur.len()));
            self.w.cur.push_str("/></message>");
            self.w.out.messages.push(std::mem::take(&mut self.w.cur));
        }
        if done {
            if self.w.out.messages.is_empty() {
                self.w.start();
                self.w
                    .cur
                    .truncate(self.w.cur.rfind("><node").unwrap_or(self.w.cur.len()));
                self.w.cur.push_str("/></message>");
                self.w.out.messages.push(std::mem::take(&mut self.w.cur));
            }
            self.w.mark_done();
        }
        self.w.out
    }
}

/// The fields grouped by their stamp as written; stamps compared cheaply first, the
/// written form computed once per distinct instant.
fn group_by_stamp(fields: Vec<(SystemTime, Field)>) -> Vec<(XsDateTime, Vec<Field>)> {
    let mut by_instant: Vec<(SystemTime, Vec<Field>)> = Vec::new();
    for (t, f) in fields {
        match by_instant.iter_mut().rev().find(|(g, _)| *g == t) {
            Some((_, v)) => v.push(f),
            None => by_instant.push((t, vec![f])),
        }
    }
    let mut groups: Vec<(XsDateTime, Vec<Field>)> = Vec::with_capacity(by_instant.len());
    for (t, fields) in by_instant {
        let stamp = XsDateTime::from_system_time(t);
        match groups.iter_mut().find(|(g, _)| *g == stamp) {
            Some((_, v)) => v.extend(fields),
            None => groups.push((stamp, fields)),
        }
    }
    groups
}

struct Writer<'a, 'b> {
    spec: &'a FieldsMessages<'b>,
    out: Written,
    /// The message being written; empty when none is open.
    cur: String,
    /// Where ` done='true'` goes in the last message.
    done_at: usize,
    /// The stamp of the `<timestamp>` open in `cur`.
    open_stamp: Option<String>,
}

impl Writer<'_, '_> {
    /// Opens a message up to and including `<node>`.
    fn start(&mut self) {
        let s = &mut self.cur;
        s.push_str("<message");
        push_attr(s, "from", self.spec.from);
        push_attr(s, "to", self.spec.to);
        s.push_str("><fields");
        push_attr(s, "xmlns", NS);
        push_attr_display(s, "seqnr", self.spec.seqnr);
        self.done_at = s.len();
        s.push_str("><node");
        push_attr(s, "nodeId", self.spec.node_id);
        s.push('>');
        self.open_stamp = None;
    }

    fn open_timestamp(&mut self, stamp: &str) {
        self.cur.push_str("<timestamp");
        push_attr_display(&mut self.cur, "value", stamp);
        self.cur.push('>');
        self.open_stamp = Some(stamp.to_owned());
    }

    /// The bytes `field` adds to the open message, with the `<timestamp>` change it needs.
    fn cost(&self, stamp: &str, field: &str) -> usize {
        let switch = match &self.open_stamp {
            Some(s) if s == stamp => 0,
            Some(_) => CLOSE_TIMESTAMP.len() + "<timestamp value=''>".len() + stamp.len(),
            None => "<timestamp value=''>".len() + stamp.len(),
        };
        switch + field.len()
    }

    fn push(&mut self, stamp: &str, field: &str) {
        // Room is kept for the closing tags and the `done` flag in every message.
        let reserve = CLOSE_ALL.len() + DONE.len();
        if self.cur.is_empty() {
            self.start();
        }
        if self.cur.len() + self.cost(stamp, field) + reserve > self.spec.limit
            && self.open_stamp.is_some()
        {
            self.close();
            self.start();
        }
        if self.cur.len() + self.cost(stamp, field) + reserve > self.spec.limit {
            self.out.oversized += 1;
            return;
        }
        match &self.open_stamp {
            Some(s) if s == stamp => {}
            Some(_) => {
                self.cur.push_str(CLOSE_TIMESTAMP);
                self.open_timestamp(stamp);
            }
            None => self.open_timestamp(stamp),
        }
        self.cur.push_str(field);
    }

    fn close(&mut self) {
        self.cur.push_str(CLOSE_ALL);
        self.out.messages.push(std::mem::take(&mut self.cur));
    }

    fn finish(&mut self) {
        if self.open_stamp.is_some() {
            self.close();
        } else if !self.cur.is_empty() {
            // Every field was too large: say so in an empty, final `<fields>`.
            self.cur
                .truncate(self.cur.rfind("><node").unwrap_or(self.cur.len()));
            self.cur.push_str("/></message>");
            self.out.messages.push(std::mem::take(&mut self.cur));
        }
        self.mark_done();
    }

    fn mark_done(&mut self) {
        if let Some(last) = self.out.messages.last_mut() {
            last.insert_str(self.done_at, DONE);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio_xmpp::minidom::Element;

    use super::*;
    use crate::xmpp::payload::common::{FieldQos, FieldTypes, NodeRef};
    use crate::xmpp::payload::sensordata::{FieldValue, Fields};
    use crate::xmpp::readout::{mark_done, messages_within, node_data};
    use crate::xmpp::stanza_text::parse;

    fn fields(n: usize, t0: SystemTime) -> Vec<(SystemTime, Field)> {
        (0..n)
            .map(|i| {
                let value = match i % 5 {
                    0 => FieldValue::numeric(i as f64 * 1.5, 2, "°C"),
                    1 => FieldValue::Int(i as i32),
                    2 => FieldValue::Boolean(i % 2 == 0),
                    3 => FieldValue::String(format!("it's <{i}> & \"so\"")),
                    _ => FieldValue::Enum {
                        value: "on".into(),
                        data_type: "mode".into(),
                    },
                };
                let mut f = Field::new(format!("f{i}"), value)
                    .with_types(FieldTypes::MOMENTARY)
                    .with_qos(if i % 7 == 0 {
                        FieldQos::ERROR
                    } else {
                        FieldQos::AUTOMATIC_READOUT
                    });
                if i % 3 == 0 {
                    f = f.with_writable(true);
                }
                // Two instants, interleaved: grouped by instant, in first-seen order.
                let t = if i % 4 == 3 {
                    t0 + Duration::from_secs(1)
                } else {
                    t0
                };
                (t, f)
            })
            .collect()
    }

    /// The same event built as element trees, as readouts are.
    fn as_elements(fields: Vec<(SystemTime, Field)>, limit: usize) -> Vec<Element> {
        let payload = Fields {
            seqnr: 9,
            done: false,
            nodes: node_data(&NodeRef::new("pump".to_owned()), fields)
                .into_iter()
                .collect(),
        };
        let mut msgs = messages_within("pump@gw/gw", "a@x/r", payload.into(), 3, limit);
        mark_done(&mut msgs);
        msgs
    }

    fn as_text(fields: Vec<(SystemTime, Field)>, limit: usize) -> Written {
        FieldsMessages {
            from: "pump@gw/gw",
            to: "a@x/r",
            seqnr: 9,
            node_id: "pump",
            limit,
        }
        .write(fields)
    }

    /// Every field of every message, with its timestamp, in order.
    fn flatten(msgs: &[Element]) -> Vec<(String, Element)> {
        let mut v = vec![];
        for m in msgs {
            let f = m.get_child("fields", NS).unwrap();
            for node in f.children() {
                assert_eq!(node.attr("nodeId"), Some("pump"));
                for ts in node.children() {
                    for field in ts.children() {
                        v.push((ts.attr("value").unwrap().to_owned(), field.clone()));
                    }
                }
            }
        }
        v
    }

    #[test]
    fn text_says_what_the_element_trees_say() {
        let t0 = SystemTime::now();
        let w = as_text(fields(40, t0), 64 * 1024);
        assert_eq!(w.messages.len(), 1);
        let parsed: Vec<Element> = w.messages.iter().map(|m| parse(m).unwrap()).collect();
        assert_eq!(parsed, as_elements(fields(40, t0), 64 * 1024));
    }

    #[test]
    fn a_large_event_is_split_within_the_bound_and_done_comes_last() {
        let t0 = SystemTime::now();
        let limit = 2_000;
        let w = as_text(fields(300, t0), limit);
        assert!(w.messages.len() > 5);
        assert_eq!(w.oversized, 0);
        let parsed: Vec<Element> = w.messages.iter().map(|m| parse(m).unwrap()).collect();
        for (i, (text, el)) in w.messages.iter().zip(&parsed).enumerate() {
            assert!(text.len() <= limit, "message {i}: {} bytes", text.len());
            let done = el.get_child("fields", NS).unwrap().attr("done");
            let last = i + 1 == parsed.len();
            assert_eq!(done, last.then_some("true"), "message {i}");
            assert_eq!(el.attr("from"), Some("pump@gw/gw"));
        }
        // Nothing lost, nothing repeated, same stamps as the element trees.
        assert_eq!(
            flatten(&parsed),
            flatten(&as_elements(fields(300, t0), 64 * 1024))
        );
        // Well used: every message but the last is more than half full.
        let sizes: Vec<usize> = w.messages.iter().map(String::len).collect();
        assert!(
            sizes[..sizes.len() - 1].iter().all(|s| *s > limit / 2),
            "{sizes:?}"
        );
    }

    #[test]
    fn a_stream_says_what_one_write_says_for_fields_in_time_order() {
        let t0 = SystemTime::now();
        let mut ordered = fields(300, t0);
        ordered.sort_by_key(|(t, _)| *t);
        let spec = FieldsMessages {
            from: "pump@gw/gw",
            to: "a@x/r",
            seqnr: 9,
            node_id: "pump",
            limit: 2_000,
        };
        let mut st = spec.stream();
        let mut msgs = Vec::new();
        for (t, f) in &ordered {
            st.push(*t, f);
            msgs.extend(st.take());
        }
        msgs.extend(st.finish(true).messages);
        assert_eq!(msgs, spec.write(ordered).messages);
        // Nothing pushed: one empty `done` message, or nothing at all.
        assert_eq!(
            spec.stream().finish(true).messages,
            spec.write(vec![]).messages
        );
        assert!(spec.stream().finish(false).messages.is_empty());
    }

    #[test]
    fn no_fields_is_one_empty_done_message_and_a_field_too_large_is_left_out() {
        let w = as_text(vec![], 1_000);
        assert_eq!(w.messages.len(), 1);
        let el = parse(&w.messages[0]).unwrap();
        let f = el.get_child("fields", NS).unwrap();
        assert_eq!(f.attr("done"), Some("true"));
        assert_eq!(f.children().count(), 0);

        let huge = Field::new("big", FieldValue::String("x".repeat(5_000)));
        let small = Field::new("small", FieldValue::Int(1));
        let t = SystemTime::now();
        let w = as_text(vec![(t, huge), (t, small)], 1_000);
        assert_eq!(w.oversized, 1);
        let parsed: Vec<Element> = w.messages.iter().map(|m| parse(m).unwrap()).collect();
        let names: Vec<String> = flatten(&parsed)
            .iter()
            .map(|(_, f)| f.attr("name").unwrap().to_owned())
            .collect();
        assert_eq!(names, ["small"]);
    }
}
