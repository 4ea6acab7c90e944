//! XEP-0323 readouts as the actor sees them: accepting or refusing a request, the
//! sessions in progress (bounded per requester), cancel; the readout itself runs in
//! [`crate::xmpp::readout`].

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use fieldgate_api::{DeviceId, Reachability};
use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;
use tokio_xmpp::minidom::Element;
use xmpp_parsers::stanza_error::{DefinedCondition, ErrorType};

use super::replies::{bad_request, forbidden, not_found};
use super::tasks::Done;
use super::{Device, Gateway};
use crate::access::{self, Right};
use crate::xmpp::payload::common::{FieldQos, FieldTypes, NodeRef};
use crate::xmpp::payload::sensordata::{Accepted, Cancel, Cancelled, Field, FieldValue, Req};
use crate::xmpp::payload::xsd::XsDateTime;
use crate::xmpp::readout::Readout;
use crate::xmpp::stanza::Header;

/// A readout in progress.
pub(super) struct Session {
    pub(super) device: DeviceId,
    pub(super) cancel: CancellationToken,
}

/// Names of the status and identity fields every device reports.
pub(super) const EXTRA_NAMES: &[&str] = &[
    "reachable",
    "lastError",
    "name",
    "model",
    "serial",
    "vendor",
];

/// Status fields (reachability, last error) and identity fields (name, model, serial,
/// vendor from the configuration), as requested.
/// `detailed`: the requester holds the control right and may see where the device is
/// reached (host names, ports, device paths) in the last error.
pub(super) fn extra_fields(dev: &Device, types: &FieldTypes, detailed: bool) -> Vec<Field> {
    let mut out = Vec::new();
    let flags = |t: FieldTypes| t;
    if types.contains(FieldTypes::STATUS) {
        let reachable = matches!(dev.reach, Some(Reachability::Reachable));
        out.push(
            Field::new("reachable", FieldValue::Boolean(reachable))
                .with_types(flags(FieldTypes::STATUS))
                .with_qos(FieldQos::AUTOMATIC_READOUT),
        );
        if let Some(e) = &dev.last_error {
            out.push(
                Field::new("lastError", FieldValue::String(e.text(detailed).to_owned()))
                    .with_types(FieldTypes::STATUS)
                    .with_qos(FieldQos::AUTOMATIC_READOUT),
            );
        }
    }
    if types.contains(FieldTypes::IDENTITY) {
        let c = &dev.cfg;
        for (name, value) in [
            ("name", Some(&c.name)),
            ("model", c.model.as_ref()),
            ("serial", c.serial.as_ref()),
            ("vendor", c.vendor.as_ref()),
        ] {
            if let Some(v) = value {
                out.push(
                    Field::new(name, FieldValue::String(v.clone()))
                        .with_types(FieldTypes::IDENTITY)
                        .with_qos(FieldQos::AUTOMATIC_READOUT),
                );
            }
        }
    }
    out
}

/// Whether a request's `<node>` list (empty: the device itself) names this device.
pub(super) fn for_this_node(nodes: &[NodeRef], id: &DeviceId) -> bool {
    nodes.is_empty() || nodes.iter().any(|n| n.node_id == **id)
}

impl Gateway {
    /// Accepts or refuses a readout: the replies to send, in order, and the task to start
    /// when the readout cannot be completed at once from the cache.
    pub(super) fn on_req(
        &mut self,
        h: &Header,
        id: &DeviceId,
        payload: &Element,
    ) -> (Vec<Element>, Option<BoxFuture<'static, Done>>) {
        let (reply, job) = self.accept_req(h, id, payload);
        let mut replies = vec![reply];
        let Some(job) = job else {
            return (replies, None);
        };
        if let Some(messages) = job.complete_from_cache() {
            replies.extend(messages);
            return (replies, None);
        }
        let requester = job.to.clone();
        let key = (requester.clone(), job.seqnr);
        let cancel = CancellationToken::new();
        self.sessions.insert(
            key.clone(),
            Session {
                device: id.clone(),
                cancel: cancel.clone(),
            },
        );
        self.sessions_per_requester.take(&requester);
        let out = self.out.clone();
        let device = id.clone();
        let task = async move {
            let (fresh, error) = job.run(out, cancel).await;
            Done::Readout {
                key,
                device,
                fresh,
                error,
            }
        };
        (replies, Some(Box::pin(task)))
    }

    /// Checks a readout request: an error reply, or the `accepted` result with the readout.
    pub(super) fn accept_req(
        &self,
        h: &Header,
        id: &DeviceId,
        payload: &Element,
    ) -> (Element, Option<Readout>) {
        if self.refuse(h, id, Right::Read).is_some() {
            return (forbidden(h, "you may not read this device", vec![]), None);
        }
        let req = match Req::try_from(payload) {
            Ok(r) => r,
            Err(e) => return (bad_request(h, &e.to_string()), None),
        };
        if !for_this_node(&req.nodes, id) {
            return (not_found(h, "no such node on this device", vec![]), None);
        }
        let requester = h.from.to_string();
        let key = (requester.clone(), req.seqnr);
        if self.sessions.contains_key(&key) {
            let e = h.error(
                ErrorType::Cancel,
                DefinedCondition::Conflict,
                &format!("readout {} is already in progress", req.seqnr),
                None,
            );
            return (e, None);
        }
        let running = self.sessions_per_requester.held(&requester);
        if running >= self.cfg.readout.max_per_requester {
            tracing::warn!(device = %id, from = %requester, running, "readout refused: too many in progress");
            let e = h.error(
                ErrorType::Wait,
                DefinedCondition::ResourceConstraint,
                &format!(
                    "{running} readouts in progress or queued; at most {} per user",
                    self.cfg.readout.max_per_requester
                ),
                None,
            );
            return (e, None);
        }
        let dev = &self.devices[id];
        let types = req.requested_types();
        // Sets and the catalogue's index: a request may name thousands of fields.
        let known = |n: &String| dev.cache.knows(n) || EXTRA_NAMES.contains(&n.as_str());
        let filter: HashSet<&str> = req.fields.iter().map(String::as_str).collect();
        let named = |n: &str| filter.is_empty() || filter.contains(n);
        let wanted: Vec<Arc<str>> = if types.contains(FieldTypes::MOMENTARY) {
            dev.specs
                .iter()
                .filter(|s| named(&s.name))
                .map(|s| s.name.clone())
                .collect()
        } else {
            vec![]
        };
        let now = SystemTime::now();
        let cached = wanted
            .iter()
            .filter_map(|n| dev.cache.get(n))
            .map(|r| (r.field.clone(), r.clone()))
            .collect();
        // `when` is the requester's wall clock; from here on only the wait counts.
        let when = req
            .when
            .as_ref()
            .and_then(XsDateTime::to_system_time)
            .and_then(|w| w.duration_since(now).ok())
            .filter(|wait| !wait.is_zero())
            .map(|wait| Instant::now() + wait);
        // Who may control the device may see where it is reached; readers see sentences
        // without host names, ports or device paths.
        let detailed = access::check(
            &self.cfg.access,
            &dev.cfg.access,
            Right::Control,
            &h.from.to_bare(),
        )
        .is_ok();
        let extra = extra_fields(dev, &types, detailed)
            .into_iter()
            .filter(|f| named(&f.name))
            .collect();
        let job = Readout {
            seqnr: req.seqnr,
            from: dev.full.clone(),
            to: requester.clone(),
            node: id.to_string(),
            when,
            specs: dev.specs.clone(),
            wanted,
            cached,
            unknown: {
                let mut seen = HashSet::new();
                req.fields
                    .iter()
                    .filter(|n| !known(n) && seen.insert(n.as_str()))
                    .cloned()
                    .collect()
            },
            extra,
            adapter: self.requests_of(dev),
            timeout: self.cfg.readout.timeout,
            max_age: dev.max_age,
            max_stanza: self.cfg.xmpp.max_outbound_stanza_size,
            detailed,
            history: self.history_part(&req, dev, &named),
        };
        let accepted = h.result(Some(
            Accepted {
                seqnr: req.seqnr,
                queued: when.is_some(),
            }
            .into(),
        ));
        (accepted, Some(job))
    }

    pub(super) fn on_cancel(&mut self, h: &Header, payload: &Element) -> Element {
        let cancel = match Cancel::try_from(payload) {
            Ok(c) => c,
            Err(e) => return bad_request(h, &e.to_string()),
        };
        let key = (h.from.to_string(), cancel.seqnr);
        match self.end_session(&key) {
            true => h.result(Some(Cancelled::new(cancel.seqnr).into())),
            false => not_found(
                h,
                &format!("no readout {} in progress", cancel.seqnr),
                vec![],
            ),
        }
    }

    pub(super) fn end_session(&mut self, key: &(String, u64)) -> bool {
        let Some(s) = self.sessions.remove(key) else {
            return false;
        };
        s.cancel.cancel();
        self.sessions_per_requester.give_back(&key.0);
        true
    }
}

#[cfg(all(test, feature = "sim"))]
mod tests {
    use super::super::testing::{condition, device, el, gateway, iq, ALICE, BOB, MALLORY};
    use super::*;

    const SD: &str = crate::xmpp::payload::sensordata::NS;

    fn req(seqnr: u64, inner: &str) -> Element {
        el(&format!(
            "<req xmlns='{SD}' seqnr='{seqnr}' momentary='true'>{inner}</req>"
        ))
    }

    #[tokio::test]
    async fn a_readout_needs_the_read_right() {
        let t = gateway(&device("pump"));
        let (reply, job) =
            t.gw.accept_req(&iq("get", MALLORY, "pump"), &"pump".into(), &req(1, ""));
        assert_eq!(condition(&reply).as_deref(), Some("forbidden"));
        assert!(job.is_none());
        let (reply, job) =
            t.gw.accept_req(&iq("get", ALICE, "pump"), &"pump".into(), &req(1, ""));
        assert_eq!(condition(&reply), None);
        assert!(reply.has_child("accepted", SD));
        let job = job.expect("a readout to run");
        assert_eq!(job.wanted.len(), 3, "momentary: every field");
    }

    /// Where a device is reached (host, port, device path) is for the log and for those
    /// who may control it; subscribers and readers get the sentence without it.
    #[tokio::test]
    async fn readers_and_subscribers_see_no_host_names() {
        let mut t = gateway(&device("pump"));
        let id: DeviceId = "pump".into();
        let why = fieldgate_api::Reason::with_detail(
            "link down: connection plc: cannot connect: Connection refused",
            "link down: connection plc: cannot connect to 10.1.2.3:502: Connection refused",
        );
        t.gw.on_event(fieldgate_api::DeviceEvent {
            device: id.clone(),
            kind: fieldgate_api::EventKind::Reachability(Reachability::Unreachable(why)),
        })
        .await;
        let dev = &t.gw.devices[&id];
        let presence = Gateway::presence_of(dev, "bob@example.org");
        let status = presence.children().find(|c| c.name() == "status").unwrap();
        assert_eq!(
            status.text(),
            "link down: connection plc: cannot connect: Connection refused"
        );
        let status_req = el(&format!(
            "<req xmlns='{SD}' seqnr='1' status='true'><field name='lastError'/></req>"
        ));
        let last_error = |from: &str| {
            let (_, job) = t.gw.accept_req(&iq("get", from, "pump"), &id, &status_req);
            let job = job.unwrap();
            let f = job.extra.iter().find(|f| f.name == "lastError").unwrap();
            match &f.value {
                FieldValue::String(s) => s.clone(),
                other => panic!("{other:?}"),
            }
        };
        assert!(!last_error(BOB).contains("10.1.2.3"), "{}", last_error(BOB));
        assert!(
            last_error(ALICE).contains("10.1.2.3:502"),
            "{}",
            last_error(ALICE)
        );
    }

    #[tokio::test]
    async fn a_seqnr_in_progress_is_a_conflict_and_readouts_per_requester_are_bounded() {
        let mut t = gateway(&device("pump"));
        let h = iq("get", ALICE, "pump");
        let id: DeviceId = "pump".into();
        t.gw.sessions.insert(
            (ALICE.to_owned(), 7),
            Session {
                device: id.clone(),
                cancel: CancellationToken::new(),
            },
        );
        let (reply, _) = t.gw.accept_req(&h, &id, &req(7, ""));
        assert_eq!(condition(&reply).as_deref(), Some("conflict"));
        let max = t.gw.cfg.readout.max_per_requester;
        for _ in 0..max {
            t.gw.sessions_per_requester.take(ALICE);
        }
        let (reply, job) = t.gw.accept_req(&h, &id, &req(8, ""));
        assert_eq!(condition(&reply).as_deref(), Some("resource-constraint"));
        assert!(job.is_none());
        // another resource of the same user shares the budget
        let (reply, _) = t.gw.accept_req(
            &iq("get", "alice@example.org/other", "pump"),
            &id,
            &req(8, ""),
        );
        assert_eq!(condition(&reply).as_deref(), Some("resource-constraint"));
        // another user does not
        let (reply, _) = t.gw.accept_req(&iq("get", BOB, "pump"), &id, &req(8, ""));
        assert_eq!(condition(&reply), None);
    }

    #[tokio::test]
    async fn another_node_is_not_found_and_unknown_fields_are_listed_once() {
        let t = gateway(&device("pump"));
        let h = iq("get", ALICE, "pump");
        let id: DeviceId = "pump".into();
        let (reply, _) = t.gw.accept_req(&h, &id, &req(1, "<node nodeId='other'/>"));
        assert_eq!(condition(&reply).as_deref(), Some("item-not-found"));
        let filters =
            "<field name='level'/><field name='nope'/><field name='nope'/><field name='nada'/>";
        let (_, job) = t.gw.accept_req(&h, &id, &req(2, filters));
        let job = job.unwrap();
        assert_eq!(job.unknown, vec!["nope".to_owned(), "nada".to_owned()]);
        assert_eq!(
            job.wanted.iter().map(|n| &**n).collect::<Vec<_>>(),
            ["level"]
        );
    }

    #[tokio::test]
    async fn cancel_ends_a_session_or_says_there_is_none() {
        let mut t = gateway(&device("pump"));
        let h = iq("get", ALICE, "pump");
        let cancel = el(&format!("<cancel xmlns='{SD}' seqnr='3'/>"));
        assert_eq!(
            condition(&t.gw.on_cancel(&h, &cancel)).as_deref(),
            Some("item-not-found")
        );
        let token = CancellationToken::new();
        t.gw.sessions.insert(
            (ALICE.to_owned(), 3),
            Session {
                device: "pump".into(),
                cancel: token.clone(),
            },
        );
        t.gw.sessions_per_requester.take(ALICE);
        let reply = t.gw.on_cancel(&h, &cancel);
        assert!(reply.has_child("cancelled", SD));
        assert!(token.is_cancelled());
        assert!(t.gw.sessions.is_empty());
    }
}
