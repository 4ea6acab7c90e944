//! The gateway's XEP-0323 readouts, XEP-0325 control and change events: request
//! handling in the actor, the slow parts (device I/O) in tasks it owns.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use fieldgate_api::{AdapterError, AdapterRequest, DeviceId, Reachability, Reading, Value};
use futures::future::BoxFuture;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tokio_xmpp::minidom::Element;
use xmpp_parsers::stanza_error::{DefinedCondition, ErrorType};

use super::{Device, Gateway};
use crate::access::{self, Right};
use crate::config::DeviceConfig;
use crate::xmpp::control::{self, FailureKind};
use crate::xmpp::events::Subscription;
use crate::xmpp::iot::common::{FieldQos, FieldTypes, NodeRef};
use crate::xmpp::iot::control::{GetForm, ParamError, ResponseCode, Set, SetResponse};
use crate::xmpp::iot::events::{Subscribe, Unsubscribe};
use crate::xmpp::iot::sensordata::{Accepted, Cancel, Cancelled, Field, FieldValue, Fields, Req};
use crate::xmpp::iot::xsd::XsDateTime;
use crate::xmpp::iot::{control as ctl_ns, events as ev_ns, sensordata as sd_ns};
use crate::xmpp::readout::{self, to_field, Readout};
use crate::xmpp::stanza::{clip, Header};

/// How often the events engine looks for due subscriptions and devices to sample.
pub(super) const EVENTS_TICK: Duration = Duration::from_millis(100);

/// The features a device adds to disco#info beyond the basics.
pub(super) fn features(cfg: &DeviceConfig) -> Vec<&'static str> {
    // Every device has status and identity fields, so every device can be read.
    let mut f = vec![sd_ns::NS];
    if !cfg.fields.is_empty() {
        f.push(ev_ns::NS);
    }
    if cfg.fields.iter().any(|f| f.writable) {
        f.push(ctl_ns::NS);
    }
    f
}

/// How often a subscriber is pinged to learn whether it is still there: the server keeps
/// no presence for it towards the device, and events to a gone client would pile up in
/// its offline storage.
const LIVENESS_EVERY: Duration = Duration::from_secs(30);
/// How long a liveness ping may stay unanswered.
const LIVENESS_TIMEOUT: Duration = Duration::from_secs(20);
const LIVENESS_ID: &str = "fg-live-";

/// The liveness probe state of one subscriber.
#[derive(Default)]
pub(super) struct Liveness {
    last_probe: Option<Instant>,
    outstanding: Option<(String, Instant)>,
}

/// A readout in progress.
pub(super) struct Session {
    device: DeviceId,
    cancel: CancellationToken,
}

/// What a finished task reports to the actor.
pub(super) enum Done {
    /// A readout ended (or was cancelled).
    Readout {
        key: (String, u64),
        device: DeviceId,
        fresh: Vec<Reading>,
        error: Option<String>,
    },
    /// A write was applied (or failed): the written fields' cached values are stale.
    Write {
        device: DeviceId,
        fields: Vec<String>,
        /// The iq reply, sent once the cache no longer holds the old values.
        reply: Option<Element>,
    },
    /// The events sampler read a device.
    Sample {
        device: DeviceId,
        fresh: Vec<Reading>,
        error: Option<String>,
    },
}

impl Gateway {
    /// Handles IoT payloads addressed to a visible device; false when `payload` is none.
    pub(super) async fn on_iot_iq(&mut self, h: &Header, id: &DeviceId, payload: &Element) -> bool {
        let reply = match (payload.ns().as_str(), payload.name()) {
            (sd_ns::NS, "req") => {
                let (replies, job) = self.on_req(h, id, payload);
                // The readout starts only once `accepted` is queued: the outbound queue is
                // FIFO, so the client always sees it before any <fields>. A readout done at
                // once goes out as one batch, `accepted` and `<fields>` in one write.
                let _ = self.out.send(replies.into()).await;
                if let Some(job) = job {
                    self.tasks.spawn(job);
                }
                return true;
            }
            (sd_ns::NS, "cancel") => self.on_cancel(h, payload),
            (ctl_ns::NS, "set") => match self.on_set(h, id, payload) {
                Ok(reply) => reply,
                Err(job) => {
                    self.start_write(job);
                    return true;
                }
            },
            (ctl_ns::NS, "getForm") => self.on_get_form(h, id, payload),
            (ev_ns::NS, "subscribe") => self.on_subscribe(h, id, payload),
            (ev_ns::NS, "unsubscribe") => match Unsubscribe::try_from(payload) {
                Ok(u) => {
                    self.subscriptions.remove(&(h.from.to_string(), u.seqnr));
                    h.result(None)
                }
                Err(e) => bad_request(h, &e.to_string()),
            },
            _ => return false,
        };
        self.send(reply).await;
        true
    }

    fn refuse(&self, h: &Header, id: &DeviceId, right: Right) -> Option<String> {
        let dev = &self.devices[id];
        access::check(&self.cfg.access, &dev.cfg.access, right, &h.from.to_bare())
            .err()
            .inspect(|why| {
                tracing::info!(device = %id, from = %h.from, %right, reason = %why, "request refused");
            })
    }

    // ---- XEP-0323 readouts --------------------------------------------------------------

    /// Accepts or refuses a readout: the replies to send, in order, and the task to start
    /// when the readout cannot be completed at once from the cache.
    fn on_req(
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
        *self.sessions_per_requester.entry(requester).or_default() += 1;
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
    fn accept_req(
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
        let running = self
            .sessions_per_requester
            .get(&requester)
            .copied()
            .unwrap_or(0);
        if running >= self.cfg.readout.max_per_requester {
            tracing::warn!(device = %id, from = %requester, running, "readout refused: too many in progress");
            let e = h.error(
                ErrorType::Wait,
                DefinedCondition::ResourceConstraint,
                &format!(
                    "{running} readouts in progress; at most {} per requester",
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
        let when = req
            .when
            .as_ref()
            .and_then(XsDateTime::to_system_time)
            .filter(|w| *w > now);
        let extra = extra_fields(dev, &types)
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
            adapter: dev.adapter.as_ref().map(|a| a.requests.clone()),
            timeout: self.cfg.readout.timeout,
            max_age: dev.max_age,
            max_stanza: self.cfg.xmpp.max_outbound_stanza_size,
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

    fn on_cancel(&mut self, h: &Header, payload: &Element) -> Element {
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

    fn end_session(&mut self, key: &(String, u64)) -> bool {
        let Some(s) = self.sessions.remove(key) else {
            return false;
        };
        s.cancel.cancel();
        if let Some(n) = self.sessions_per_requester.get_mut(&key.0) {
            *n -= 1;
            if *n == 0 {
                self.sessions_per_requester.remove(&key.0);
            }
        }
        true
    }

    /// Ends every readout and subscription of a requester who went away.
    pub(super) fn forget_requester(&mut self, who: &str, why: &str) {
        let keys: Vec<_> = self
            .sessions
            .keys()
            .filter(|k| k.0 == who)
            .cloned()
            .collect();
        let subs_before = self.subscriptions.len();
        self.subscriptions.retain(|k, _| k.0 != who);
        let subs = subs_before - self.subscriptions.len();
        for k in &keys {
            self.end_session(k);
        }
        if !keys.is_empty() || subs > 0 {
            tracing::info!(requester = %who, reason = why, readouts = keys.len(), subscriptions = subs,
                "requester gone: its readouts and subscriptions ended");
        }
    }

    /// Ends the readouts and subscriptions concerning a device being removed.
    pub(super) fn forget_device(&mut self, id: &DeviceId) {
        let keys: Vec<_> = self
            .sessions
            .iter()
            .filter(|(_, s)| &s.device == id)
            .map(|(k, _)| k.clone())
            .collect();
        for k in &keys {
            self.end_session(k);
        }
        self.subscriptions.retain(|_, s| &s.device != id);
    }

    pub(super) async fn on_done(&mut self, done: Done) {
        match done {
            Done::Readout {
                key,
                device,
                fresh,
                error,
            } => {
                self.end_session(&key);
                self.absorb(&device, fresh, error).await;
            }
            Done::Write {
                device,
                fields,
                reply,
            } => {
                if let Some(dev) = self.devices.get_mut(&device) {
                    let now = SystemTime::now();
                    for f in fields {
                        dev.cache.remove(f.as_str());
                        // A read taken before the write may still be on its way.
                        dev.written.insert(f, now);
                    }
                    // Sample soon so subscribers see the effect of the write.
                    dev.last_sample = None;
                }
                if let Some(r) = reply {
                    self.send(r).await;
                }
            }
            Done::Sample {
                device,
                fresh,
                error,
            } => {
                if let Some(dev) = self.devices.get_mut(&device) {
                    dev.sampling = false;
                }
                self.absorb(&device, fresh, error).await;
            }
        }
    }

    async fn absorb(&mut self, device: &DeviceId, fresh: Vec<Reading>, error: Option<String>) {
        let Some(dev) = self.devices.get_mut(device) else {
            return;
        };
        if error.is_some() {
            dev.last_error = error;
        }
        let any = !fresh.is_empty();
        for r in fresh {
            dev.remember(r);
        }
        if any {
            self.evaluate_subscriptions(device).await;
        }
    }

    // ---- XEP-0325 control ---------------------------------------------------------------

    /// Validates a `set`; `Ok` is an immediate reply, `Err` a write to start.
    fn on_set(
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
        match control::validate(&dev.specs, &set) {
            Ok(params) => Err(Box::new(WriteJob {
                header: Some(h.clone()),
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

    fn start_write(&mut self, job: Box<WriteJob>) {
        let Some(dev) = self.devices.get(&job.device) else {
            return;
        };
        let adapter = dev.adapter.as_ref().map(|a| a.requests.clone());
        let timeout = self.cfg.readout.timeout;
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
                device: job.device,
                fields,
                reply: job.header.as_ref().map(|h| write_reply(h, &result)),
            }
        });
    }

    fn on_get_form(&self, h: &Header, id: &DeviceId, payload: &Element) -> Element {
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
        let form = control::form(&dev.cfg.name, &dev.specs, |n| dev.cache.get(n).cloned());
        h.result(Some(form.into()))
    }

    // ---- events -------------------------------------------------------------------------

    fn on_subscribe(&mut self, h: &Header, id: &DeviceId, payload: &Element) -> Element {
        if self.refuse(h, id, Right::Read).is_some() {
            return forbidden(h, "you may not read this device", vec![]);
        }
        let req = match Subscribe::try_from(payload) {
            Ok(r) => r,
            Err(e) => return bad_request(h, &e.to_string()),
        };
        if !for_this_node(&req.nodes, id) {
            return not_found(h, "no such node on this device", vec![]);
        }
        let dev = &self.devices[id];
        if let Some(f) = req
            .fields
            .iter()
            .find(|f| !dev.cache.knows(&f.name) && !EXTRA_NAMES.contains(&f.name.as_str()))
        {
            return not_found(h, &format!("no field named {:?}", clip(&f.name)), vec![]);
        }
        let requester = h.from.to_string();
        let key = (requester.clone(), req.seqnr);
        let held = self
            .subscriptions
            .keys()
            .filter(|k| k.0 == requester)
            .count();
        let max = self.cfg.events.max_per_requester;
        if !self.subscriptions.contains_key(&key) && held >= max {
            return h.error(
                ErrorType::Wait,
                DefinedCondition::ResourceConstraint,
                &format!("{held} subscriptions held; at most {max} per requester"),
                None,
            );
        }
        let sub = Subscription::new(
            requester,
            id.clone(),
            &req,
            self.cfg.events.sample_interval,
            Instant::now(),
        );
        if !sub.is_useful() && !sub.immediate {
            return bad_request(
                h,
                "the subscription has no field condition (changedBy/changedUp/changedDown) \
                 and no maxInterval: it would never report",
            );
        }
        tracing::info!(device = %id, from = %h.from, seqnr = req.seqnr, "event subscription accepted");
        self.subscriptions.insert(key, sub);
        if let Some(dev) = self.devices.get_mut(id) {
            dev.last_sample = None; // sample now: reference values and req='true'
        }
        h.result(Some(Accepted::new(req.seqnr).into()))
    }

    /// Starts reads of devices whose subscriptions need fresh values, and sends due events.
    pub(super) async fn events_tick(&mut self) {
        let now = Instant::now();
        let mut period: HashMap<DeviceId, Duration> = HashMap::new();
        for s in self.subscriptions.values() {
            let p = period.entry(s.device.clone()).or_insert(s.min_interval);
            *p = (*p).min(s.min_interval);
        }
        for (id, p) in period {
            let p = p.max(self.cfg.events.sample_interval);
            let Some(dev) = self.devices.get_mut(&id) else {
                continue;
            };
            if dev.sampling || dev.last_sample.is_some_and(|t| now.duration_since(t) < p) {
                continue;
            }
            dev.last_sample = Some(now);
            let fresh_enough = |r: &Reading| {
                SystemTime::now()
                    .duration_since(r.timestamp)
                    .unwrap_or_default()
                    < p
            };
            let stale: Vec<String> = dev
                .specs
                .iter()
                .filter(|s| !dev.cache.get(&s.name).is_some_and(fresh_enough))
                .map(|s| s.name.to_string())
                .collect();
            if stale.is_empty() {
                // An adapter that polls by itself keeps the cache fresh: nothing to read.
                self.evaluate_subscriptions(&id).await;
                continue;
            }
            dev.sampling = true;
            let adapter = dev.adapter.as_ref().map(|a| a.requests.clone());
            let timeout = self.cfg.readout.timeout;
            self.tasks.spawn(async move {
                let (fresh, error) =
                    match readout::read(adapter.as_ref(), &id, stale, timeout).await {
                        Ok(o) => (
                            o.readings,
                            o.failures.first().map(|(n, e)| format!("{n}: {e}")),
                        ),
                        Err(e) => (vec![], Some(e.to_string())),
                    };
                Done::Sample {
                    device: id,
                    fresh,
                    error,
                }
            });
        }
        self.probe_subscribers(now).await;
        // Deadlines (maxInterval, held-back changes) pass without new values too.
        let due: Vec<(String, u64)> = self
            .subscriptions
            .iter()
            .filter(|(_, s)| s.due(now) && !s.immediate)
            .map(|(k, _)| k.clone())
            .collect();
        for k in due {
            self.send_event(&k, now).await;
        }
    }

    /// Pings subscribers now and then; one that does not answer loses its subscriptions.
    async fn probe_subscribers(&mut self, now: Instant) {
        let mut requesters: HashMap<String, DeviceId> = HashMap::new();
        for s in self.subscriptions.values() {
            requesters
                .entry(s.requester.clone())
                .or_insert_with(|| s.device.clone());
        }
        self.liveness.retain(|who, _| requesters.contains_key(who));
        let mut gone = Vec::new();
        let mut pings = Vec::new();
        for (who, device) in requesters {
            let l = self.liveness.entry(who.clone()).or_default();
            match &l.outstanding {
                Some((_, sent)) if now.duration_since(*sent) > LIVENESS_TIMEOUT => gone.push(who),
                Some(_) => {}
                None if l
                    .last_probe
                    .is_none_or(|t| now.duration_since(t) >= LIVENESS_EVERY) =>
                {
                    self.next_iq += 1;
                    let id = format!("{LIVENESS_ID}{}", self.next_iq);
                    l.last_probe = Some(now);
                    l.outstanding = Some((id.clone(), now));
                    if let Some(dev) = self.devices.get(&device) {
                        pings.push(ping(&dev.full, &who, &id));
                    }
                }
                None => {}
            }
        }
        for who in gone {
            self.liveness.remove(&who);
            self.forget_requester(&who, "no answer to a liveness ping");
        }
        for p in pings {
            self.send(p).await;
        }
    }

    /// An iq result or error addressed to us: only answers to our liveness pings matter.
    pub(super) fn on_iq_response(&mut self, h: &Header) {
        let Some(id) = h.id.as_deref().filter(|id| id.starts_with(LIVENESS_ID)) else {
            return;
        };
        let who = h.from.to_string();
        let matches = self
            .liveness
            .get(&who)
            .and_then(|l| l.outstanding.as_ref())
            .is_some_and(|(sent, _)| sent == id);
        if !matches {
            return;
        }
        if h.type_.as_deref() == Some("error") {
            self.liveness.remove(&who);
            self.forget_requester(&who, "liveness ping bounced");
        } else if let Some(l) = self.liveness.get_mut(&who) {
            l.outstanding = None;
        }
    }

    /// Feeds a device's current values to its subscriptions and sends the events now due.
    pub(super) async fn evaluate_subscriptions(&mut self, id: &DeviceId) {
        let Some(dev) = self.devices.get(id) else {
            return;
        };
        let now = Instant::now();
        let mut due = Vec::new();
        for (k, s) in self
            .subscriptions
            .iter_mut()
            .filter(|(_, s)| &s.device == id)
        {
            let values = dev
                .cache
                .subset(s.conditions.iter().map(|c| c.name.as_str()));
            if s.evaluate(&values, now) {
                due.push(k.clone());
            }
        }
        for k in due {
            self.send_event(&k, now).await;
        }
    }

    async fn send_event(&mut self, key: &(String, u64), now: Instant) {
        let Some(sub) = self.subscriptions.get(key) else {
            return;
        };
        let Some(dev) = self.devices.get(&sub.device) else {
            return;
        };
        // A subscriber who lost the right to read loses the subscription.
        let who = xmpp_parsers::jid::Jid::new(&key.0).map(|j| j.to_bare());
        let allowed = who.is_ok_and(|w| {
            access::check(&self.cfg.access, &dev.cfg.access, Right::Read, &w).is_ok()
        });
        if !allowed {
            tracing::info!(device = %sub.device, requester = %key.0, "subscription ended: read right revoked");
            self.subscriptions.remove(key);
            return;
        }
        let mut fields: Vec<(SystemTime, Field)> = Vec::new();
        if sub.types.contains(FieldTypes::MOMENTARY) {
            for spec in dev.specs.iter().filter(|s| sub.wants(&s.name)) {
                if let Some(r) = dev.cache.get(&spec.name) {
                    fields.push((
                        r.timestamp,
                        to_field(spec, &r.value, r.quality, FieldTypes::MOMENTARY),
                    ));
                }
            }
        }
        let stamp = SystemTime::now();
        fields.extend(
            extra_fields(dev, &sub.types)
                .into_iter()
                .filter(|f| sub.wants(&f.name))
                .map(|f| (stamp, f)),
        );
        let node = NodeRef::new(dev.cfg.id.to_string());
        let payload = Fields {
            seqnr: sub.seqnr,
            done: false,
            nodes: readout::node_data(&node, fields).into_iter().collect(),
        };
        let limit = self.cfg.xmpp.max_outbound_stanza_size;
        let mut msgs = readout::messages_within(&dev.full, &key.0, payload.into(), 3, limit);
        readout::mark_done(&mut msgs);
        let values = dev
            .cache
            .subset(sub.conditions.iter().map(|c| c.name.as_str()));
        if let Some(sub) = self.subscriptions.get_mut(key) {
            sub.sent(&values, now);
        }
        let _ = self.out.send(msgs.into()).await;
    }

    /// Drops subscriptions whose holder lost the right to read (after a reload).
    pub(super) fn enforce_read_access(&mut self) {
        let gw = &self.cfg.access;
        let devices = &self.devices;
        self.subscriptions.retain(|(who, _), s| {
            let Some(dev) = devices.get(&s.device) else {
                return false;
            };
            xmpp_parsers::jid::Jid::new(who).is_ok_and(|j| {
                access::check(gw, &dev.cfg.access, Right::Read, &j.to_bare()).is_ok()
            })
        });
    }
}

fn ping(from: &str, to: &str, id: &str) -> Element {
    use crate::xmpp::stanza::BuilderExt;
    Element::builder("iq", xmpp_parsers::ns::COMPONENT)
        .a("type", "get")
        .a("id", id)
        .a("from", from)
        .a("to", to)
        .append(Element::builder("ping", xmpp_parsers::ns::PING).build())
        .build()
}

/// A validated write waiting for the device.
pub(super) struct WriteJob {
    /// The iq to answer; `None` for a message `set`, which gets no reply.
    header: Option<Header>,
    device: DeviceId,
    params: Vec<(String, Value)>,
}

async fn write(
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
fn write_reply(h: &Header, result: &Result<(), AdapterError>) -> Element {
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
    };
    let e = result
        .as_ref()
        .err()
        .map(ToString::to_string)
        .unwrap_or_default();
    let text = match result {
        Err(AdapterError::LinkDown(_)) => format!("device unreachable, nothing applied: {e}"),
        Err(AdapterError::Refused(_)) => format!("the device refused the value: {e}"),
        _ => e,
    };
    h.error_with(type_, condition, &text, vec![], response(code))
}

/// Names of the status and identity fields every device reports.
const EXTRA_NAMES: &[&str] = &[
    "reachable",
    "lastError",
    "name",
    "model",
    "serial",
    "vendor",
];

/// Status fields (reachability, last error) and identity fields (name, model, serial,
/// vendor from the configuration), as requested.
fn extra_fields(dev: &Device, types: &FieldTypes) -> Vec<Field> {
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
                Field::new("lastError", FieldValue::String(e.clone()))
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

/// The named parameters of a `set` that do not parse on their own, with the reason.
fn unparsable_params(set: &Element) -> Vec<(String, String)> {
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

/// Whether a request's `<node>` list (empty: the device itself) names this device.
fn for_this_node(nodes: &[NodeRef], id: &DeviceId) -> bool {
    nodes.is_empty() || nodes.iter().any(|n| n.node_id == **id)
}

fn bad_request(h: &Header, text: &str) -> Element {
    h.error(ErrorType::Modify, DefinedCondition::BadRequest, text, None)
}

fn forbidden(h: &Header, text: &str, beside: Vec<Element>) -> Element {
    h.error_with(
        ErrorType::Cancel,
        DefinedCondition::Forbidden,
        text,
        vec![],
        beside,
    )
}

fn not_found(h: &Header, text: &str, beside: Vec<Element>) -> Element {
    h.error_with(
        ErrorType::Cancel,
        DefinedCondition::ItemNotFound,
        text,
        vec![],
        beside,
    )
}
