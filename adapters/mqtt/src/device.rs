//! The devices of one `[[device]]` entry at run time: one device, or, for an entry that
//! discovers, every member its topic pattern has found. Messages are decoded in the
//! broker session's task (no hop per message) into each member's last values; the
//! entry's adapter task answers the core's reads and writes from them, follows each
//! member's availability and age, and reports its reachability.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use fieldgate_api::{
    AdapterError, AdapterRequest, DeviceId, EventSink, FieldSpec, Quality, Reachability,
    ReadOutcome, Reading, Reason, Value,
};
use fieldgate_payload::{encode, same_value};
use tokio::sync::{oneshot, Notify};

use crate::session::{LinkStatus, Shared};
use crate::setup::MqttSetup;

/// Segments refused (unmappable, colliding) remembered so as not to log them per
/// message; forgotten past this many.
const REFUSED_KEPT: usize = 10_000;

/// One entry listening on one filter.
#[derive(Debug)]
pub struct Binding {
    /// The entry.
    pub entry: Arc<Entry>,
    /// What the filter's messages carry.
    pub role: Role,
}

/// What a filter's messages carry for an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Values: the state topic at this index of the setup's `topics`.
    State(usize),
    /// Online / offline.
    Availability,
}

/// A written value waiting for the device to echo it.
#[derive(Debug)]
struct Confirm {
    field: usize,
    value: Value,
    reply: oneshot::Sender<()>,
}

/// What is known of one device right now.
#[derive(Debug, Default)]
pub struct Live {
    /// The last value of each catalogue field.
    values: Vec<Option<Reading>>,
    /// When its last message arrived.
    last_message: Option<Instant>,
    /// When the gateway began to serve it: a device never heard from expires from then.
    born: Option<Instant>,
    /// What its availability topic last said.
    online: Option<bool>,
    /// The reachability last reported to the core.
    reported: Option<Reachability>,
    confirms: Vec<Confirm>,
}

/// One device of an entry.
#[derive(Debug)]
pub struct Member {
    /// Its device id.
    pub id: DeviceId,
    /// The topic segment that names it ("" for an entry's only device).
    pub name: String,
    /// Its messages that did not decode, or decoded with values refused.
    pub bad_payloads: AtomicU64,
    live: Mutex<Live>,
}

impl Member {
    fn new(id: DeviceId, name: String, fields: usize) -> Arc<Member> {
        Arc::new(Member {
            id,
            name,
            bad_payloads: AtomicU64::new(0),
            live: Mutex::new(Live {
                values: vec![None; fields],
                born: Some(Instant::now()),
                ..Live::default()
            }),
        })
    }

    fn live(&self) -> std::sync::MutexGuard<'_, Live> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[derive(Debug, Default)]
struct Members {
    by_name: HashMap<String, Arc<Member>>,
    by_id: HashMap<DeviceId, Arc<Member>>,
    refused: HashSet<String>,
}

/// Log lines anyone publishing to the broker can cause: at most one per `EVERY` per
/// entry and kind, with a count of those left out.
#[derive(Debug, Default)]
struct Quiet {
    last: Option<Instant>,
    skipped: u64,
}

impl Quiet {
    const EVERY: Duration = Duration::from_secs(10);

    /// Whether to log now, and how many were left out since the last line.
    fn pass(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(t) if now.saturating_duration_since(t) < Self::EVERY => {
                self.skipped += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.skipped))
            }
        }
    }
}

/// One `[[device]]` entry at run time, shared by its adapter task and the session.
#[derive(Debug)]
pub struct Entry {
    /// The entry's device id.
    pub id: DeviceId,
    /// Its resolved configuration.
    pub setup: Arc<MqttSetup>,
    /// Its catalogue.
    pub fields: Arc<[FieldSpec]>,
    events: EventSink,
    members: RwLock<Members>,
    /// Members whose reachability may have changed.
    dirty: Mutex<HashSet<DeviceId>>,
    wake: Notify,
    /// Messages that did not decode, or decoded with values refused, of all its devices.
    pub bad_payloads: AtomicU64,
    bad_log: Mutex<Quiet>,
    skip_log: Mutex<Quiet>,
}

impl Entry {
    /// The entry `id` with `setup`; a single device unless it discovers.
    pub fn new(
        id: DeviceId,
        setup: Arc<MqttSetup>,
        fields: Arc<[FieldSpec]>,
        events: EventSink,
    ) -> Arc<Entry> {
        let mut members = Members::default();
        if !setup.device.discover {
            let m = Member::new(id.clone(), String::new(), fields.len());
            members.by_name.insert(String::new(), m.clone());
            members.by_id.insert(id.clone(), m);
        }
        Arc::new(Entry {
            id,
            setup,
            fields,
            events,
            members: RwLock::new(members),
            dirty: Mutex::default(),
            wake: Notify::new(),
            bad_payloads: AtomicU64::new(0),
            bad_log: Mutex::default(),
            skip_log: Mutex::default(),
        })
    }

    /// The filters this entry listens on, with what each carries.
    pub fn bindings(self: &Arc<Self>) -> Vec<(String, Binding)> {
        let mut out: Vec<(String, Binding)> = self
            .setup
            .topics
            .iter()
            .enumerate()
            .map(|(i, t)| {
                (
                    t.filter.clone(),
                    Binding {
                        entry: self.clone(),
                        role: Role::State(i),
                    },
                )
            })
            .collect();
        if let Some((topic, _)) = &self.setup.availability {
            out.push((
                topic.clone(),
                Binding {
                    entry: self.clone(),
                    role: Role::Availability,
                },
            ));
        }
        out
    }

    fn members(&self) -> std::sync::RwLockReadGuard<'_, Members> {
        self.members.read().unwrap_or_else(|p| p.into_inner())
    }

    fn members_mut(&self) -> std::sync::RwLockWriteGuard<'_, Members> {
        self.members.write().unwrap_or_else(|p| p.into_inner())
    }

    fn touch(&self, id: &DeviceId) {
        self.dirty
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.clone());
        self.wake.notify_one();
    }

    /// Counts an unusable payload and logs it (rate-limited) with its topic and reason.
    fn bad(&self, member: &Member, topic: &str, why: &dyn std::fmt::Display) {
        self.bad_payloads.fetch_add(1, Ordering::Relaxed);
        let n = member.bad_payloads.fetch_add(1, Ordering::Relaxed) + 1;
        let pass = self
            .bad_log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pass(Instant::now());
        if let Some(skipped) = pass {
            tracing::warn!(device = %member.id, topic = %clip(topic), reason = %why,
                bad_payloads = n, not_logged = skipped, "MQTT payload not usable");
        }
    }

    /// Logs (rate-limited) a message that made no device.
    fn skipped(&self, topic: &str, why: &str) {
        let pass = self
            .skip_log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pass(Instant::now());
        if let Some(skipped) = pass {
            tracing::warn!(entry = %self.id, topic = %clip(topic), reason = %why,
                not_logged = skipped, "MQTT message skipped");
        }
    }

    /// The member a message is for: the entry's only device, or the one its topic names,
    /// discovered now if the entry allows it.
    async fn member_for(&self, topic: &str, segment: Option<&str>) -> Option<Arc<Member>> {
        if !self.setup.device.discover {
            return self.members().by_name.get("").cloned();
        }
        let segment = segment?;
        {
            let m = self.members();
            if let Some(found) = m.by_name.get(segment) {
                return Some(found.clone());
            }
            if m.refused.contains(segment) {
                return None;
            }
            let max = self.setup.device.max_devices;
            if m.by_name.len() >= max {
                drop(m);
                self.skipped(
                    topic,
                    &format!("the entry's maximum of {max} devices (max_devices) is reached"),
                );
                return None;
            }
        }
        let refuse = |why: String| {
            self.skipped(topic, &why);
            let mut m = self.members_mut();
            if m.refused.len() >= REFUSED_KEPT {
                m.refused.clear();
            }
            m.refused.insert(segment.to_owned());
        };
        let id = match crate::localpart::map_segment(segment, &self.setup.device.id_prefix) {
            Ok(id) => DeviceId::from(id),
            Err(e) => {
                refuse(format!("the topic segment names no device: {e}"));
                return None;
            }
        };
        // The name is copied out: `refuse` takes the lock for writing.
        let holder = self.members().by_id.get(&id).map(|m| m.name.clone());
        if let Some(other) = holder {
            refuse(format!(
                "segment {:?} maps to the id {id:?} that {:?} already has",
                clip(segment),
                clip(&other)
            ));
            return None;
        }
        match self
            .events
            .discovered(&self.id, id.clone(), segment.to_owned())
            .await
        {
            Ok(()) => Some(self.adopt(id, segment.to_owned())),
            Err(why) => {
                refuse(why);
                None
            }
        }
    }

    /// Serves member `id` found by `name` (now, or in an earlier run).
    fn adopt(&self, id: DeviceId, name: String) -> Arc<Member> {
        let mut m = self.members_mut();
        if let Some(found) = m.by_id.get(&id) {
            return found.clone();
        }
        let member = Member::new(id.clone(), name.clone(), self.fields.len());
        m.by_name.insert(name, member.clone());
        m.by_id.insert(id.clone(), member.clone());
        drop(m);
        self.touch(&id);
        member
    }

    /// Takes one message for this entry.
    async fn take(
        &self,
        role: Role,
        topic: &str,
        segment: Option<&str>,
        payload: &[u8],
        arrival: Instant,
    ) {
        let Some(member) = self.member_for(topic, segment).await else {
            return;
        };
        let heard_first = {
            let mut live = member.live();
            let first = live.last_message.is_none_or(|t| {
                self.setup
                    .device
                    .expire_after
                    .is_some_and(|e| arrival.saturating_duration_since(t) > e.0)
            });
            live.last_message = Some(arrival);
            first
        };
        if heard_first {
            self.touch(&member.id);
        }
        if payload.len() > self.setup.broker.max_payload {
            self.bad(
                &member,
                topic,
                &format!(
                    "{} bytes, more than max_payload ({})",
                    payload.len(),
                    self.setup.broker.max_payload
                ),
            );
            return;
        }
        match role {
            Role::Availability => {
                let Some((_, avail)) = &self.setup.availability else {
                    return;
                };
                match avail.decode(payload) {
                    Some(online) => {
                        let changed = member.live().online.replace(online) != Some(online);
                        if changed {
                            self.touch(&member.id);
                        }
                    }
                    None => self.bad(
                        &member,
                        topic,
                        &format!(
                            "availability payload is neither {:?} nor {:?}",
                            clip(&avail.online),
                            clip(&avail.offline)
                        ),
                    ),
                }
            }
            Role::State(i) => {
                let t = &self.setup.topics[i];
                let decoded = match t.decoder.decode(payload, SystemTime::now()) {
                    Ok(d) => d,
                    Err(e) => {
                        self.bad(&member, topic, &e);
                        return;
                    }
                };
                for (k, e) in &decoded.errors {
                    let name = &self.fields[t.fields[*k]].name;
                    self.bad(&member, topic, &format_args!("field {name}: {e}"));
                }
                let mut readings = Vec::with_capacity(decoded.values.len());
                let mut out_of_range = Vec::new();
                {
                    let mut live = member.live();
                    for (k, value, stamp) in decoded.values {
                        let idx = t.fields[k];
                        let spec = &self.fields[idx];
                        if let Err(e) = range_check(spec, &value) {
                            out_of_range.push(format!("field {}: {e}", spec.name));
                            continue;
                        }
                        live.confirms.retain_mut(|c| {
                            if c.field == idx && same_value(spec, &c.value, &value) {
                                let (tx, _) = oneshot::channel();
                                let _ = std::mem::replace(&mut c.reply, tx).send(());
                                false
                            } else {
                                true
                            }
                        });
                        let r = Reading {
                            field: spec.name.clone(),
                            value,
                            timestamp: stamp,
                            taken: arrival,
                            quality: Quality::Good,
                        };
                        live.values[idx] = Some(r.clone());
                        readings.push(r);
                    }
                }
                for why in out_of_range {
                    self.bad(&member, topic, &why);
                }
                // Waits for room in the core's queue: the message is acknowledged to the
                // broker only after this.
                self.events.deliver(&member.id, readings).await;
            }
        }
    }

    /// What the core should show of member `m` now.
    fn reachability(&self, m: &Member, link: &LinkStatus, now: Instant) -> Reachability {
        match link {
            LinkStatus::Up => {}
            LinkStatus::Connecting => {
                return Reachability::Unreachable(Reason::new("broker unreachable: connecting"))
            }
            LinkStatus::Down(why) => return Reachability::Unreachable(why.clone()),
        }
        let live = m.live();
        if live.online == Some(false) {
            return Reachability::Unreachable(Reason::new(
                "offline, says the device's availability topic",
            ));
        }
        if let (Some(expire), Some(last)) = (
            self.setup.device.expire_after,
            live.last_message.or(live.born),
        ) {
            if now.saturating_duration_since(last) > expire.0 {
                return Reachability::Unreachable(Reason::new(format!(
                    "no message for {}",
                    humantime::format_duration(expire.0)
                )));
            }
        }
        Reachability::Reachable
    }

    /// Reports member `m`'s reachability if it changed. False when the core is gone.
    async fn refresh(&self, m: &Member, link: &LinkStatus, now: Instant) -> bool {
        let r = self.reachability(m, link, now);
        {
            let mut live = m.live();
            if live.reported.as_ref() == Some(&r) {
                return true;
            }
            live.reported = Some(r.clone());
        }
        self.events.reachability(&m.id, r).await
    }

    fn all(&self) -> Vec<Arc<Member>> {
        self.members().by_id.values().cloned().collect()
    }

    fn member(&self, id: &DeviceId) -> Option<Arc<Member>> {
        self.members().by_id.get(id).cloned()
    }

    /// Answers a read from the last values.
    fn read(&self, id: &DeviceId, fields: Option<Vec<String>>) -> ReadOutcome {
        let Some(m) = self.member(id) else {
            return ReadOutcome {
                readings: vec![],
                failures: vec![(
                    String::new(),
                    AdapterError::LinkDown(Reason::new("device not discovered yet")),
                )],
            };
        };
        let live = m.live();
        let stale = live.reported != Some(Reachability::Reachable);
        let mut out = ReadOutcome::default();
        let mut one = |i: usize| match &live.values[i] {
            Some(r) => {
                let mut r = r.clone();
                if stale {
                    r.quality = Quality::Stale;
                }
                out.readings.push(r);
            }
            None => out.failures.push((
                self.fields[i].name.to_string(),
                AdapterError::LinkDown(Reason::new("no value received from the device yet")),
            )),
        };
        match fields {
            None => (0..self.fields.len()).for_each(&mut one),
            Some(names) => {
                for n in names {
                    if let Some(i) = self.fields.iter().position(|f| *f.name == *n) {
                        one(i);
                    }
                }
            }
        }
        out
    }
}

/// Whether `value` is within the field's configured range.
fn range_check(spec: &FieldSpec, value: &Value) -> Result<(), String> {
    if let Some(v) = value.as_f64() {
        if spec.min.is_some_and(|m| v < m) || spec.max.is_some_and(|m| v > m) {
            return Err(format!(
                "{v} is outside the field's range {}..{}",
                spec.min.map_or(String::new(), |m| m.to_string()),
                spec.max.map_or(String::new(), |m| m.to_string())
            ));
        }
    }
    if let Value::Enum(l) = value {
        if !spec.values.is_empty() && !spec.values.contains(l) {
            return Err(format!("{:?} is not one of the field's values", clip(l)));
        }
    }
    Ok(())
}

/// At most 64 bytes of untrusted text, for log lines.
fn clip(s: &str) -> &str {
    if s.len() <= 64 {
        return s;
    }
    let mut end = 64;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A message from the broker: every entry listening on its topic takes it.
pub async fn on_message(shared: &Shared, topic: &str, payload: &[u8]) {
    let arrival = Instant::now();
    let mut routed = Vec::new();
    shared
        .router
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .route(topic, &mut routed);
    for (b, segment) in routed.iter() {
        b.entry
            .take(b.role, topic, *segment, payload, arrival)
            .await;
    }
}

/// The adapter of one entry: answers the core, reports reachability.
pub struct MqttAdapter {
    /// The entry's device id.
    pub id: DeviceId,
    /// Its resolved configuration.
    pub setup: Arc<MqttSetup>,
    /// Its catalogue.
    pub fields: Arc<[FieldSpec]>,
    /// Its broker's session.
    pub shared: Arc<Shared>,
}

impl fieldgate_api::Adapter for MqttAdapter {
    fn kind(&self) -> &'static str {
        "mqtt"
    }

    fn devices(&self) -> Vec<DeviceId> {
        vec![self.id.clone()]
    }

    fn run(
        self: Box<Self>,
        mut ctx: fieldgate_api::AdapterContext,
    ) -> futures::future::BoxFuture<'static, ()> {
        let MqttAdapter {
            id,
            setup,
            fields,
            shared,
        } = *self;
        // Listening starts now, when the core starts the adapter, not when its task first
        // runs: the broker may hand over queued messages as soon as the session connects,
        // and a message no entry listens for is acknowledged and gone.
        let entry = Entry::new(id, setup, fields, ctx.events.clone());
        let registration = Registration::new(entry.clone(), shared.clone());
        Box::pin(async move {
            let mut registration = registration;
            let mut status = shared.status();
            let check = entry
                .setup
                .device
                .expire_after
                .map(|e| (e.0 / 4).clamp(Duration::from_millis(200), Duration::from_secs(5)));
            let mut tick = tokio::time::interval(check.unwrap_or(Duration::from_secs(3600)));
            let mut writes = tokio::task::JoinSet::new();
            let mut everyone = true;
            loop {
                let link = status.borrow_and_update().clone();
                let now = Instant::now();
                let todo: Vec<Arc<Member>> = if std::mem::take(&mut everyone) {
                    entry.all()
                } else {
                    let ids: Vec<DeviceId> = entry
                        .dirty
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .drain()
                        .collect();
                    ids.iter().filter_map(|id| entry.member(id)).collect()
                };
                for m in todo {
                    if !entry.refresh(&m, &link, now).await {
                        return;
                    }
                }
                tokio::select! {
                    _ = ctx.shutdown.cancelled() => {
                        // The core stops this entry alone (removed or reconfigured): its
                        // subscriptions go with it. When the core goes away it drops
                        // the request channel instead, and a persistent session keeps
                        // them for the next start.
                        registration.removed = true;
                        break;
                    }
                    req = ctx.requests.recv() => match req {
                        None => break,
                        Some(AdapterRequest::Read { device, fields, reply }) => {
                            let _ = reply.send(entry.read(&device, fields));
                        }
                        Some(AdapterRequest::Write { device, params, reply }) => {
                            let (entry, shared) = (entry.clone(), shared.clone());
                            writes.spawn(async move {
                                let _ = reply.send(write(&entry, &shared, &device, params).await);
                            });
                        }
                        Some(AdapterRequest::Adopt { device, name }) => {
                            if entry.setup.device.discover {
                                entry.adopt(device, name);
                            }
                        }
                    },
                    _ = status.changed() => everyone = true,
                    _ = entry.wake.notified() => {}
                    _ = tick.tick(), if check.is_some() => everyone = true,
                    Some(_) = writes.join_next(), if !writes.is_empty() => {}
                }
            }
            writes.abort_all();
        })
    }
}

/// An entry's bindings in its session's router, for as long as its adapter lives: dropped
/// when the adapter's task ends, panics included, so that a restarted entry does not find
/// its predecessor still taking its messages.
struct Registration {
    entry: Arc<Entry>,
    shared: Arc<Shared>,
    /// The entry was removed: unsubscribe from what no other entry listens on.
    removed: bool,
}

impl Registration {
    fn new(entry: Arc<Entry>, shared: Arc<Shared>) -> Registration {
        let fresh: Vec<String> = {
            let mut router = shared.router.write().unwrap_or_else(|p| p.into_inner());
            entry
                .bindings()
                .into_iter()
                .filter_map(|(f, b)| router.add(&f, Arc::new(b)).then_some(f))
                .collect()
        };
        shared.subscribe(fresh);
        Registration {
            entry,
            shared,
            removed: false,
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let empty = self
            .shared
            .router
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(|b| Arc::ptr_eq(&b.entry, &self.entry));
        // When the gateway stops (or the task failed and is restarted), the broker keeps
        // the subscriptions of a persistent session and queues for them; only an entry
        // that goes away gives them up.
        if self.removed && !self.shared.stopping() {
            self.shared.unsubscribe(empty);
        }
    }
}

/// Publishes a write, parameter by parameter, and waits for the broker (and the device's
/// echo, for confirmed fields).
async fn write(
    entry: &Entry,
    shared: &Shared,
    device: &DeviceId,
    params: Vec<(String, Value)>,
) -> Result<(), AdapterError> {
    let member = entry
        .member(device)
        .ok_or_else(|| AdapterError::LinkDown(Reason::new("device not discovered yet")))?;
    let timeout = entry.setup.device.confirm_timeout.0;
    for (name, value) in params {
        let idx = entry
            .fields
            .iter()
            .position(|f| *f.name == *name)
            .ok_or_else(|| AdapterError::UnknownField(name.clone()))?;
        let spec = &entry.fields[idx];
        let cmd = entry.setup.commands[idx]
            .as_ref()
            .ok_or_else(|| AdapterError::NotWritable(name.clone()))?;
        spec.validate_write(&value)?;
        let bools = cmd.bools.as_ref().map(|(t, f)| (t.as_str(), f.as_str()));
        let payload =
            encode(&cmd.template, spec, &value, bools).map_err(|e| AdapterError::InvalidValue {
                field: name.clone(),
                reason: e.to_string(),
            })?;
        let topic = if entry.setup.device.discover {
            cmd.topic.replacen('+', &member.name, 1)
        } else {
            cmd.topic.clone()
        };
        let echo = cmd.confirm.then(|| {
            let (tx, rx) = oneshot::channel();
            member.live().confirms.push(Confirm {
                field: idx,
                value: value.clone(),
                reply: tx,
            });
            rx
        });
        let acked = shared
            .publish(
                topic,
                entry.setup.device.command_qos,
                entry.setup.device.command_retain,
                payload,
            )
            .await?;
        match tokio::time::timeout(timeout, acked).await {
            Ok(Ok(r)) => r?,
            Ok(Err(_)) => return Err(AdapterError::Stopped),
            Err(_) => {
                return Err(AdapterError::Timeout(format!(
                    "the broker did not acknowledge the command within {}",
                    humantime::format_duration(timeout)
                )))
            }
        }
        if let Some(echo) = echo {
            let ok = tokio::time::timeout(timeout, echo).await;
            if !matches!(ok, Ok(Ok(()))) {
                member.live().confirms.retain(|c| !c.reply.is_closed());
                return Err(AdapterError::Timeout(format!(
                    "the device did not confirm {name} = {value} within {}",
                    humantime::format_duration(timeout)
                )));
            }
        }
    }
    Ok(())
}
