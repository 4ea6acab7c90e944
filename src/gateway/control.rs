//! XEP-0325 control as the actor sees it: a `set` checked against the catalogue and
//! access policy, the write run as a task, the device's answer mapped to an XMPP reply;
//! `getForm`.

use std::time::Duration;

use fieldgate_api::{AdapterError, AdapterRequest, DeviceId, Refusal, Value};
use tokio::sync::oneshot;
use tokio_xmpp::minidom::Element;
use xmpp_parsers::stanza_error::{DefinedCondition, ErrorType};

use super::readouts::for_this_node;
use super::replies::{bad_request, forbidden, not_found};
use super::tasks::Done;
use super::Gateway;
use crate::access::Right;
use crate::xmpp::parameters::{self, FailureKind};
use crate::xmpp::payload::control as ctl_ns;
use crate::xmpp::payload::control::{GetForm, ParamError, ResponseCode, Set, SetResponse};
use crate::xmpp::stanza::Header;

/// A validated write waiting for the device.
pub(super) struct WriteJob {
    /// The iq to answer; `None` for a message `set`, which gets no reply.
    pub(super) header: Option<Header>,
    /// Who asked (full JID): writes in flight are bounded per user.
    pub(super) requester: String,
    pub(super) device: DeviceId,
    pub(super) params: Vec<(String, Value)>,
}

pub(super) async fn write(
    adapter: Option<tokio::sync::mpsc::Sender<AdapterRequest>>,
    device: &DeviceId,
    params: Vec<(String, Value)>,
    timeout: Duration,
) -> Result<(), AdapterError> {
    let adapter = adapter.ok_or(AdapterError::Stopped)?;
    let (reply, rx) = oneshot::channel();
    let ask = async {
        adapter
            .send(AdapterRequest::Write {
                device: device.clone(),
                params,
                reply,
            })
            .await
            .map_err(|_| AdapterError::Stopped)?;
        rx.await.map_err(|_| AdapterError::Stopped)?
    };
    match tokio::time::timeout(timeout, ask).await {
        Ok(r) => r,
        Err(_) => Err(AdapterError::Timeout(format!(
            "no answer from the device within {}",
            humantime::format_duration(timeout)
        ))),
    }
}

/// The reply to an applied (or failed) iq `set`: "the device is unreachable" and "the
/// device refused" are different errors, so a client can tell retry from give up.
pub(super) fn write_reply(h: &Header, result: &Result<(), AdapterError>) -> Element {
    let response = |code: ResponseCode| vec![Element::from(SetResponse::with_code(code))];
    let (type_, condition, code) = match result {
        Ok(()) => return h.result(Some(SetResponse::ok().into())),
        Err(AdapterError::LinkDown(_)) | Err(AdapterError::Stopped) => (
            ErrorType::Wait,
            DefinedCondition::ServiceUnavailable,
            ResponseCode::OtherError,
        ),
        Err(AdapterError::Timeout(_)) => (
            ErrorType::Wait,
            DefinedCondition::RemoteServerTimeout,
            ResponseCode::OtherError,
        ),
        Err(AdapterError::Refused(_)) => (
            ErrorType::Modify,
            DefinedCondition::NotAcceptable,
            ResponseCode::OtherError,
        ),
        Err(AdapterError::IllegalAddress(_)) => (
            ErrorType::Cancel,
            DefinedCondition::ItemNotFound,
            ResponseCode::NotFound,
        ),
        Err(AdapterError::Busy(_)) => (
            ErrorType::Wait,
            DefinedCondition::ResourceConstraint,
            ResponseCode::Locked,
        ),
        Err(AdapterError::UnknownField(_)) => (
            ErrorType::Cancel,
            DefinedCondition::ItemNotFound,
            ResponseCode::NotFound,
        ),
        Err(AdapterError::NotWritable(_)) | Err(AdapterError::InvalidValue { .. }) => (
            ErrorType::Modify,
            DefinedCondition::BadRequest,
            ResponseCode::FormError,
        ),
        Err(AdapterError::Answered { kind, .. }) => match kind {
            Refusal::BadRequest => (
                ErrorType::Modify,
                DefinedCondition::BadRequest,
                ResponseCode::FormError,
            ),
            Refusal::Forbidden => (
                ErrorType::Auth,
                DefinedCondition::Forbidden,
                ResponseCode::InsufficientPrivileges,
            ),
            Refusal::NotFound => (
                ErrorType::Cancel,
                DefinedCondition::ItemNotFound,
                ResponseCode::NotFound,
            ),
            Refusal::NotAllowed => (
                ErrorType::Cancel,
                DefinedCondition::NotAllowed,
                ResponseCode::NotImplemented,
            ),
            Refusal::NotAcceptable => (
                ErrorType::Modify,
                DefinedCondition::NotAcceptable,
                ResponseCode::FormError,
            ),
            Refusal::Unavailable { .. } => (
                ErrorType::Wait,
                DefinedCondition::ServiceUnavailable,
                ResponseCode::Locked,
            ),
            Refusal::Internal => (
                ErrorType::Cancel,
                DefinedCondition::InternalServerError,
                ResponseCode::OtherError,
            ),
        },
    };
    let e = result
        .as_ref()
        .err()
        .map(ToString::to_string)
        .unwrap_or_default();
    let text = match result {
        Err(AdapterError::LinkDown(_)) => format!("device unreachable, nothing applied: {e}"),
        Err(AdapterError::Refused(_)) => format!("the device refused the value: {e}"),
        Err(AdapterError::Answered {
            kind: Refusal::Unavailable {
                retry_after: Some(d),
            },
            ..
        }) => format!("{e}; retry in {}", humantime::format_duration(*d)),
        _ => e,
    };
    h.error_with(type_, condition, &text, vec![], response(code))
}

/// The named parameters of a `set` that do not parse on their own, with the reason.
pub(super) fn unparsable_params(set: &Element) -> Vec<(String, String)> {
    set.children()
        .filter(|c| c.ns() == ctl_ns::NS)
        .filter_map(|c| {
            let name = c.attr("name")?;
            let alone = Element::builder("set", ctl_ns::NS)
                .append(c.clone())
                .build();
            Set::try_from(&alone)
                .err()
                .map(|e| (name.to_owned(), e.to_string()))
        })
        .collect()
}

impl Gateway {
    /// Validates a `set`; `Ok` is an immediate reply, `Err` a write to start.
    pub(super) fn on_set(
        &self,
        h: &Header,
        id: &DeviceId,
        payload: &Element,
    ) -> Result<Element, Box<WriteJob>> {
        let response = |code: ResponseCode| vec![Element::from(SetResponse::with_code(code))];
        if self.refuse(h, id, Right::Control).is_some() {
            return Ok(forbidden(
                h,
                "you may not control this device",
                response(ResponseCode::InsufficientPrivileges),
            ));
        }
        let set = match Set::try_from(payload) {
            Ok(s) => s,
            Err(e) => {
                // Name the parameters that do not parse, one paramError each.
                let failing = unparsable_params(payload);
                let text = if failing.is_empty() {
                    e.to_string()
                } else {
                    failing
                        .iter()
                        .map(|(n, t)| format!("{n}: {t}"))
                        .collect::<Vec<_>>()
                        .join("; ")
                };
                let inside = failing
                    .into_iter()
                    .map(|(n, t)| Element::from(ParamError::new(n, t)))
                    .collect();
                return Ok(h.error_with(
                    ErrorType::Modify,
                    DefinedCondition::BadRequest,
                    &text,
                    inside,
                    response(ResponseCode::FormError),
                ));
            }
        };
        if !for_this_node(&set.nodes, id) {
            return Ok(not_found(
                h,
                "no such node on this device",
                response(ResponseCode::NotFound),
            ));
        }
        let in_flight = self.writes_per_requester.held(&h.from.to_string());
        let most = self.cfg.readout.max_writes_per_requester;
        if in_flight >= most {
            return Ok(h.error_with(
                ErrorType::Wait,
                DefinedCondition::ResourceConstraint,
                &format!("{in_flight} writes in flight; at most {most} per user"),
                vec![],
                response(ResponseCode::OtherError),
            ));
        }
        let count = set.params.len() + set.form.as_ref().map_or(0, |f| f.fields.len());
        let max = self.cfg.readout.max_set_params;
        if count > max {
            return Ok(h.error_with(
                ErrorType::Modify,
                DefinedCondition::BadRequest,
                &format!("{count} parameters in one set; at most {max} are accepted"),
                vec![],
                response(ResponseCode::FormError),
            ));
        }
        let dev = &self.devices[id];
        match parameters::validate(&dev.specs, &set) {
            Ok(params) => Err(Box::new(WriteJob {
                header: Some(h.clone()),
                requester: h.from.to_string(),
                device: id.clone(),
                params,
            })),
            Err(failures) => {
                let worst = failures
                    .iter()
                    .map(|f| f.kind)
                    .min()
                    .unwrap_or(FailureKind::Invalid);
                let (type_, condition) = match worst {
                    FailureKind::Unknown => (ErrorType::Cancel, DefinedCondition::ItemNotFound),
                    _ => (ErrorType::Modify, DefinedCondition::BadRequest),
                };
                let text = failures
                    .iter()
                    .map(|f| format!("{}: {}", f.name, f.text))
                    .collect::<Vec<_>>()
                    .join("; ");
                tracing::info!(device = %id, from = %h.from, reason = %text, "set refused; nothing applied");
                let inside = failures
                    .iter()
                    .map(|f| Element::from(ParamError::new(f.name.clone(), f.text.clone())))
                    .collect();
                Ok(h.error_with(
                    type_,
                    condition,
                    &text,
                    inside,
                    response(worst.response_code()),
                ))
            }
        }
    }

    /// A `set` inside a message: applied with no reply, whatever happens (XEP-0325 §3.1).
    pub(super) async fn on_message_set(&mut self, h: &Header, id: &DeviceId, set: &Element) {
        match self.on_set(h, id, set) {
            Err(mut job) => {
                job.header = None;
                self.start_write(job);
            }
            Ok(refusal) => {
                let why = refusal
                    .get_child("error", xmpp_parsers::ns::COMPONENT)
                    .map(|e| {
                        e.children()
                            .filter(|c| c.name() == "text")
                            .map(|c| c.text())
                            .collect::<String>()
                    })
                    .unwrap_or_default();
                tracing::info!(device = %id, from = %h.from, reason = %why, "message set not applied");
            }
        }
    }

    pub(super) fn start_write(&mut self, job: Box<WriteJob>) {
        let Some(dev) = self.devices.get(&job.device) else {
            return;
        };
        let adapter = self.requests_of(dev);
        let timeout = self.cfg.readout.timeout;
        self.writes_per_requester.take(&job.requester);
        self.tasks.spawn(async move {
            let fields: Vec<String> = job.params.iter().map(|(n, _)| n.clone()).collect();
            let result = write(adapter, &job.device, job.params, timeout).await;
            match (&job.header, &result) {
                (_, Ok(())) => {
                    tracing::info!(device = %job.device, fields = ?fields, "set applied")
                }
                (_, Err(e)) => tracing::warn!(device = %job.device, error = %e, "set failed"),
            }
            // The reply goes out from the actor, after it has forgotten the cached values
            // of the written fields: a readout right after `setResponse` sees the write.
            Done::Write {
                requester: job.requester,
                device: job.device,
                fields,
                reply: job.header.as_ref().map(|h| write_reply(h, &result)),
            }
        });
    }

    pub(super) fn on_get_form(&self, h: &Header, id: &DeviceId, payload: &Element) -> Element {
        if self.refuse(h, id, Right::Control).is_some() {
            return forbidden(h, "you may not control this device", vec![]);
        }
        let q = match GetForm::try_from(payload) {
            Ok(q) => q,
            Err(e) => return bad_request(h, &e.to_string()),
        };
        if !for_this_node(&q.nodes, id) {
            return not_found(h, "no such node on this device", vec![]);
        }
        let dev = &self.devices[id];
        let form = parameters::form(&dev.cfg.name, &dev.specs, |n| dev.cache.get(n).cloned());
        h.result(Some(form.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use xmpp_parsers::ns;

    fn header() -> Header {
        let el: Element = "<iq xmlns='jabber:component:accept' type='set' id='w1' \
             from='alice@example.org/app' to='pump@gw.example.org'/>"
            .parse()
            .unwrap();
        Header::parse(&el).unwrap()
    }

    /// "link down" and "device refused" are different answers.
    #[test]
    fn the_devices_answer_maps_to_its_own_xmpp_error() {
        let h = header();
        let cases = [
            (
                AdapterError::LinkDown("x".into()),
                "wait",
                "service-unavailable",
            ),
            (AdapterError::Stopped, "wait", "service-unavailable"),
            (
                AdapterError::Timeout("x".into()),
                "wait",
                "remote-server-timeout",
            ),
            (
                AdapterError::Refused("x".into()),
                "modify",
                "not-acceptable",
            ),
            (
                AdapterError::IllegalAddress("x".into()),
                "cancel",
                "item-not-found",
            ),
            (
                AdapterError::Busy("x".into()),
                "wait",
                "resource-constraint",
            ),
            (
                AdapterError::UnknownField("x".into()),
                "cancel",
                "item-not-found",
            ),
            (
                AdapterError::NotWritable("x".into()),
                "modify",
                "bad-request",
            ),
        ];
        let answered = |kind| AdapterError::Answered {
            kind,
            text: "x".into(),
        };
        let unavailable = Refusal::Unavailable {
            retry_after: Some(std::time::Duration::from_secs(30)),
        };
        let cases = cases.into_iter().chain([
            (answered(Refusal::BadRequest), "modify", "bad-request"),
            (answered(Refusal::Forbidden), "auth", "forbidden"),
            (answered(Refusal::NotFound), "cancel", "item-not-found"),
            (answered(Refusal::NotAllowed), "cancel", "not-allowed"),
            (answered(Refusal::NotAcceptable), "modify", "not-acceptable"),
            (answered(unavailable), "wait", "service-unavailable"),
            (
                answered(Refusal::Internal),
                "cancel",
                "internal-server-error",
            ),
        ]);
        for (e, type_, cond) in cases {
            let reply = write_reply(&h, &Err(e.clone()));
            assert_eq!(reply.attr("type"), Some("error"));
            assert_eq!(reply.attr("id"), Some("w1"));
            let err = reply.get_child("error", ns::COMPONENT).unwrap();
            assert_eq!(err.attr("type"), Some(type_), "{e}");
            assert!(err.has_child(cond, ns::XMPP_STANZAS), "{e}: {cond}");
            // the older clients' setResponse beside the error
            assert!(reply.has_child("setResponse", ctl_ns::NS), "{e}");
        }
        let text = |r: &Element| {
            r.get_child("error", ns::COMPONENT)
                .and_then(|e| e.get_child("text", ns::XMPP_STANZAS))
                .map(|t| t.text())
                .unwrap_or_default()
        };
        let wait = write_reply(&h, &Err(answered(unavailable)));
        assert!(text(&wait).ends_with("retry in 30s"), "{}", text(&wait));
        let ok = write_reply(&h, &Ok(()));
        assert_eq!(ok.attr("type"), Some("result"));
        assert!(ok.has_child("setResponse", ctl_ns::NS));
    }
}

#[cfg(all(test, feature = "sim"))]
mod actor_tests {
    use super::super::testing::{condition, device, el, gateway, iq, ALICE, MALLORY};
    use super::*;

    fn set(params: &str) -> Element {
        el(&format!("<set xmlns='{}'>{params}</set>", ctl_ns::NS))
    }

    #[tokio::test]
    async fn a_set_is_checked_before_anything_is_written() {
        let t = gateway(&device("pump"));
        let id: DeviceId = "pump".into();
        let ok = "<double name='setpoint' value='5'/>";
        let reply = |r: Result<Element, Box<WriteJob>>| r.ok().expect("a reply, not a write");
        let denied = t.gw.on_set(&iq("set", MALLORY, "pump"), &id, &set(ok));
        assert_eq!(condition(&reply(denied)).as_deref(), Some("forbidden"));
        // out of range, read-only, unknown: refused as a whole, nothing written
        for (params, cond) in [
            ("<double name='setpoint' value='11'/>", "bad-request"),
            ("<string name='label' value='x'/>", "bad-request"),
            ("<double name='nosuch' value='1'/>", "item-not-found"),
            (
                &format!("{ok}<double name='nosuch' value='1'/>") as &str,
                "item-not-found",
            ),
        ] {
            let r = t.gw.on_set(&iq("set", ALICE, "pump"), &id, &set(params));
            assert_eq!(condition(&reply(r)).as_deref(), Some(cond), "{params}");
        }
        // a valid set becomes a write job, not a reply
        assert!(t
            .gw
            .on_set(&iq("set", ALICE, "pump"), &id, &set(ok))
            .is_err());
    }

    #[tokio::test]
    async fn writes_in_flight_are_bounded_per_user() {
        let mut t = gateway(&device("pump"));
        let id: DeviceId = "pump".into();
        let max = t.gw.cfg.readout.max_writes_per_requester;
        for _ in 0..max {
            t.gw.writes_per_requester.take(ALICE);
        }
        let set = set("<double name='setpoint' value='2'/>");
        // another resource of the same user shares the bound
        let h = iq("set", "alice@example.org/other", "pump");
        let Ok(refused) = t.gw.on_set(&h, &id, &set) else {
            panic!("the write was started");
        };
        assert_eq!(condition(&refused).as_deref(), Some("resource-constraint"));
        // one write done: room again
        t.gw.writes_per_requester.give_back(ALICE);
        assert!(t.gw.on_set(&h, &id, &set).is_err(), "a write to start");
    }
}
