//! The gateway actor: owns the device registry, the subscribers and the component link,
//! and answers every stanza addressed to the component domain or a device JID.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fieldgate_api::{DeviceEvent, DeviceId, EventKind, EventSink, Reachability};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_xmpp::minidom::Element;
use xmpp_parsers::disco::{DiscoInfoQuery, DiscoItemsQuery, DiscoItemsResult, Item};
use xmpp_parsers::jid::{BareJid, Jid};
use xmpp_parsers::ns;
use xmpp_parsers::stanza_error::{DefinedCondition, ErrorType};
use xmpp_parsers::version::VersionResult;

mod cache;
mod control;
mod dispatch;
mod events;
mod liveness;
mod readouts;
mod replies;
mod tasks;
#[cfg(all(test, feature = "sim"))]
mod testing;

use std::collections::HashMap;
use std::time::{Instant, SystemTime};

use fieldgate_api::{FieldSpec, Reading};
use tokio::task::JoinSet;

use crate::access::{self, Right};
use crate::config::{Config, DeviceConfig};
use crate::devices;
use crate::log_limit::LogLimiter;
use crate::state::{self, Commit, Subscribers};
use crate::xmpp::disco::{self, domain_info, DeviceDisco};
use crate::xmpp::guard::Refusal;
use crate::xmpp::link::{self, LinkState, Outbound};
use crate::xmpp::presence;
use crate::xmpp::stanza::{clip, Header, Kind};

const EVENT_QUEUE: usize = 8192;
const COMMIT_QUEUE: usize = 1024;

/// A configured device at run time.
struct Device {
    cfg: DeviceConfig,
    bare: String,
    full: String,
    disco: DeviceDisco,
    caps: Element,
    /// `None` until the adapter first reports.
    reach: Option<Reachability>,
    adapter: Option<devices::Running>,
    /// The field catalogue, shared with readout tasks.
    specs: Arc<[FieldSpec]>,
    /// The last reading of each field.
    cache: cache::Cache,
    /// The last error seen: unreachable reason or failed read.
    last_error: Option<String>,
    /// Momentary values younger than this are served from `cache`.
    max_age: Duration,
    /// When the events sampler last read the device, and whether a read is under way.
    last_sample: Option<Instant>,
    sampling: bool,
    /// When each field was last written through XMPP.
    written: HashMap<String, SystemTime>,
}

impl Device {
    /// Caches a reading unless it was taken before the field's last write: such a
    /// value, from a read that overlapped the write, is already out of date.
    fn remember(&mut self, r: Reading) {
        if self
            .written
            .get(&*r.field)
            .is_some_and(|w| r.timestamp < *w)
        {
            return;
        }
        self.cache.insert(r);
    }
}

/// Hooks into the service manager, so tests and `run` outside systemd need no socket.
pub trait Supervisor: Send {
    /// The component link is up for the first time.
    fn ready(&mut self);
    /// The main loop is alive.
    fn watchdog(&mut self);
    /// Shutting down.
    fn stopping(&mut self);
    /// How often to call `watchdog`, if at all.
    fn watchdog_interval(&self) -> Option<Duration>;
    /// A one-line status for `systemctl status`.
    fn status(&mut self, text: &str);
}

/// Signals the gateway reacts to.
pub struct Controls {
    /// Cancelled on SIGTERM / SIGINT.
    pub shutdown: CancellationToken,
    /// One message per SIGHUP.
    pub reload: mpsc::Receiver<()>,
}

struct Gateway {
    cfg: Config,
    order: Vec<DeviceId>,
    devices: BTreeMap<DeviceId, Device>,
    subscribers: Subscribers,
    out: mpsc::Sender<Outbound>,
    commits: mpsc::Sender<Commit<Element>>,
    events: EventSink,
    adapters_root: CancellationToken,
    link_up: bool,
    link_settings: tokio::sync::watch::Sender<crate::config::XmppConfig>,
    /// Readout, write and sampling tasks; each ends in a [`Done`] for the actor.
    tasks: JoinSet<tasks::Done>,
    /// Readouts in progress, by (requester full JID, seqnr).
    sessions: HashMap<(String, u64), readouts::Session>,
    /// Readouts in progress per requester.
    sessions_per_requester: HashMap<String, usize>,
    /// Event subscriptions, by (requester full JID, seqnr).
    subscriptions: HashMap<(String, u64), crate::xmpp::subscription::Subscription>,
    /// Liveness probes of subscribers, by requester full JID.
    liveness: HashMap<String, liveness::Liveness>,
    /// Counter for the ids of the gateway's own iq requests.
    next_iq: u64,
    /// What each adapter kind's devices share.
    runtimes: devices::Runtimes,
    /// Log lines about refused and unroutable stanzas, which anyone can cause.
    refused_log: LogLimiter,
    unroutable_log: LogLimiter,
}

/// Runs the gateway until `controls.shutdown` is cancelled, then withdraws every device's
/// presence, closes the stream and stops the adapters.
pub async fn run(
    cfg: Config,
    mut controls: Controls,
    mut supervisor: Box<dyn Supervisor>,
) -> Result<(), state::StateError> {
    let subscribers = state::load(&cfg.state_dir)?;
    let n_subs: usize = subscribers.values().map(|s| s.len()).sum();
    tracing::info!(devices = cfg.devices.len(), subscriptions = n_subs,
        state_dir = %cfg.state_dir.display(), "starting");

    let link_cancel = CancellationToken::new();
    let (link, link_task) = link::spawn(cfg.xmpp.clone(), link_cancel.clone());
    let link::LinkChannels {
        mut inbound,
        outbound,
        state: mut link_state,
        stats: link_stats,
        settings: link_settings,
    } = link;
    let (commit_tx, commit_rx) = mpsc::channel(COMMIT_QUEUE);
    let persister = tokio::spawn(state::persister(
        cfg.state_dir.clone(),
        commit_rx,
        outbound.clone(),
    ));
    let (ev_tx, mut ev_rx) = mpsc::channel::<DeviceEvent>(EVENT_QUEUE);
    let dropped = Arc::new(AtomicU64::new(0));

    let mut gw = Gateway::new(
        cfg,
        subscribers,
        outbound,
        commit_tx,
        EventSink::new(ev_tx, dropped),
        link_settings,
    );
    release_free_memory();

    let mut watchdog = supervisor.watchdog_interval().map(tokio::time::interval);
    let mut events_tick = tokio::time::interval(events::EVENTS_TICK);
    events_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ready = false;
    loop {
        tokio::select! {
            Some(done) = gw.tasks.join_next(), if !gw.tasks.is_empty() => match done {
                Ok(done) => gw.on_done(done).await,
                Err(e) if e.is_panic() => tracing::error!(error = %e, "a readout or write task panicked"),
                Err(_) => {}
            },
            _ = events_tick.tick(), if !gw.subscriptions.is_empty() => gw.events_tick().await,
            _ = controls.shutdown.cancelled() => break,
            Some(()) = controls.reload.recv() => gw.reload().await,
            changed = link_state.changed() => {
                if changed.is_err() {
                    tracing::error!("component link task ended unexpectedly");
                    break;
                }
                let st = link_state.borrow_and_update().clone();
                match st {
                    LinkState::Up(_) => {
                        gw.link_up = true;
                        supervisor.status(&format!(
                            "connected to {} as {}, {} devices",
                            gw.cfg.xmpp.server, gw.cfg.xmpp.domain, gw.order.len()
                        ));
                        if !ready {
                            ready = true;
                            supervisor.ready();
                        }
                        gw.announce_all().await;
                    }
                    LinkState::Down(why) => {
                        gw.link_up = false;
                        supervisor.status(&format!("component link down: {why}"));
                    }
                }
            }
            Some(el) = inbound.recv() => gw.handle(el).await,
            Some(ev) = ev_rx.recv() => gw.on_event(ev).await,
            _ = tick(&mut watchdog) => supervisor.watchdog(),
        }
    }

    supervisor.stopping();
    tracing::info!("shutting down: withdrawing presence");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(4);
    if gw.link_up {
        gw.withdraw_all("gateway shutting down").await;
    }
    gw.tasks.abort_all();
    while gw.tasks.join_next().await.is_some() {}
    let adapters_root = gw.adapters_root.clone();
    let tasks: Vec<_> = std::mem::take(&mut gw.devices)
        .into_values()
        .filter_map(|d| d.adapter.map(|a| a.task))
        .collect();
    let runtimes = std::mem::take(&mut gw.runtimes);
    // Dropping the gateway drops the last senders: the persister writes what is queued
    // and ends, then the link flushes, sends the stream footer and ends.
    drop(gw);
    adapters_root.cancel();
    let _ = tokio::time::timeout_at(deadline, persister).await;
    if tokio::time::timeout_at(deadline, link_task).await.is_err() {
        tracing::warn!("component link did not close in time");
        link_cancel.cancel();
    }
    for t in tasks {
        let _ = tokio::time::timeout_at(deadline, t).await;
    }
    runtimes.join(deadline).await;
    tracing::info!(
        connects = link_stats.connects.load(Ordering::Relaxed),
        inbound_dropped = link_stats.inbound_dropped.load(Ordering::Relaxed),
        outbound_discarded_while_down = link_stats.outbound_discarded.load(Ordering::Relaxed),
        "stopped"
    );
    Ok(())
}

/// The answer for a device that does not exist, or that the sender may not see: the two
/// look the same, so the policy does not reveal which devices exist.
fn no_such_device(h: &Header) -> Element {
    h.error(
        ErrorType::Cancel,
        DefinedCondition::ServiceUnavailable,
        "no such device",
        None,
    )
}

/// Hands memory freed after loading a configuration back to the system. Parsing a large
/// register map allocates several times what the running gateway keeps, and glibc's
/// allocator would otherwise hold on to the difference for the life of the process.
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

async fn tick(iv: &mut Option<tokio::time::Interval>) {
    match iv {
        Some(iv) => {
            iv.tick().await;
        }
        None => std::future::pending().await,
    }
}

impl Gateway {
    /// The actor with every configured device added (and its adapter started).
    fn new(
        cfg: Config,
        subscribers: Subscribers,
        out: mpsc::Sender<Outbound>,
        commits: mpsc::Sender<Commit<Element>>,
        events: EventSink,
        link_settings: tokio::sync::watch::Sender<crate::config::XmppConfig>,
    ) -> Gateway {
        let mut gw = Gateway {
            order: Vec::new(),
            devices: BTreeMap::new(),
            subscribers,
            out,
            commits,
            events,
            adapters_root: CancellationToken::new(),
            link_up: false,
            link_settings,
            tasks: JoinSet::new(),
            sessions: HashMap::new(),
            sessions_per_requester: HashMap::new(),
            subscriptions: HashMap::new(),
            liveness: HashMap::new(),
            next_iq: 0,
            runtimes: devices::Runtimes::default(),
            refused_log: LogLimiter::new(10, Duration::from_secs(60)),
            unroutable_log: LogLimiter::new(10, Duration::from_secs(60)),
            cfg: cfg.clone(),
        };
        for d in &cfg.devices {
            gw.add_device(d.clone());
        }
        gw
    }

    fn domain(&self) -> &str {
        &self.cfg.xmpp.domain
    }

    async fn send(&self, el: Element) {
        // An error means the link task is gone (shutdown); nothing else to do.
        let _ = self.out.send(el.into()).await;
    }

    fn add_device(&mut self, cfg: DeviceConfig) {
        let bare = format!("{}@{}", cfg.id, self.cfg.xmpp.domain);
        let full = format!("{bare}/{}", self.cfg.xmpp.resource);
        let disco = DeviceDisco::new(&cfg.name, &dispatch::features(&cfg));
        let caps: Element = disco.caps.clone().into();
        let started = self
            .runtimes
            .start(&cfg, self.events.clone(), &self.adapters_root);
        let (adapter, reach) = match started {
            Ok(r) => (Some(r), None),
            Err(e) => {
                tracing::error!(device = %cfg.id, error = %e, "adapter failed to start");
                (
                    None,
                    Some(Reachability::Unreachable(format!("adapter failed: {e}"))),
                )
            }
        };
        let id = cfg.id.clone();
        self.order.push(id.clone());
        let specs: Arc<[FieldSpec]> = cfg.fields.clone();
        let max_age = cfg.max_age.unwrap_or(self.cfg.readout.max_age);
        self.devices.insert(
            id,
            Device {
                cfg,
                bare,
                full,
                disco,
                caps,
                reach,
                adapter,
                cache: cache::Cache::new(specs.clone()),
                specs,
                last_error: None,
                max_age,
                last_sample: None,
                sampling: false,
                written: HashMap::new(),
            },
        );
    }

    /// Stops a device's adapter and forgets it; its subscribers stay on file, so the
    /// device comes back to them if it is configured again.
    async fn remove_device(
        &mut self,
        id: &DeviceId,
        why: &str,
    ) -> Option<tokio::task::JoinHandle<()>> {
        self.order.retain(|d| d != id);
        self.forget_device(id);
        let dev = self.devices.remove(id)?;
        if self.link_up {
            for sub in self.subscribers.get(&*dev.cfg.id).into_iter().flatten() {
                self.send(presence::unavailable(&dev.full, sub, why)).await;
            }
        }
        dev.adapter.map(|a| {
            a.cancel.cancel();
            a.task
        })
    }

    /// The presence a device shows right now, addressed to `to`.
    fn presence_of(dev: &Device, to: &str) -> Element {
        match &dev.reach {
            Some(Reachability::Reachable) => presence::available(&dev.full, to, &dev.caps),
            Some(Reachability::Unreachable(why)) => presence::unavailable(&dev.full, to, why),
            None => presence::unavailable(&dev.full, to, "starting: device state not known yet"),
        }
    }

    async fn broadcast(&self, id: &DeviceId) {
        let Some(dev) = self.devices.get(id) else {
            return;
        };
        for sub in self.subscribers.get(&**id).into_iter().flatten() {
            self.send(Self::presence_of(dev, sub)).await;
        }
    }

    async fn announce_all(&self) {
        let mut sent = 0usize;
        for id in &self.order {
            let dev = &self.devices[id];
            if dev.reach.is_none() {
                continue;
            }
            for sub in self.subscribers.get(&**id).into_iter().flatten() {
                self.send(Self::presence_of(dev, sub)).await;
                sent += 1;
            }
        }
        tracing::info!(
            presences = sent,
            devices = self.order.len(),
            "presence announced"
        );
    }

    async fn withdraw_all(&self, why: &str) {
        for id in &self.order {
            let dev = &self.devices[id];
            for sub in self.subscribers.get(&**id).into_iter().flatten() {
                self.send(presence::unavailable(&dev.full, sub, why)).await;
            }
        }
    }

    async fn on_event(&mut self, ev: DeviceEvent) {
        let Some(dev) = self.devices.get_mut(&ev.device) else {
            return; // a late event from a removed device
        };
        match ev.kind {
            EventKind::Reachability(r) => {
                if dev.reach.as_ref() == Some(&r) {
                    return;
                }
                match &r {
                    Reachability::Reachable => {
                        tracing::info!(device = %ev.device, "device reachable")
                    }
                    Reachability::Unreachable(why) => {
                        tracing::warn!(device = %ev.device, reason = %why, "device unreachable")
                    }
                }
                if let Reachability::Unreachable(why) = &r {
                    dev.last_error = Some(why.clone());
                }
                dev.reach = Some(r);
                if self.link_up {
                    self.broadcast(&ev.device).await;
                }
            }
            EventKind::Readings(batch) => {
                for r in batch {
                    dev.remember(r);
                }
                if !self.subscriptions.is_empty() {
                    self.evaluate_subscriptions(&ev.device).await;
                }
            }
        }
    }

    /// Persists the subscriber map, then sends `replies`.
    async fn commit(&self, replies: Vec<Element>) {
        let c = Commit {
            snapshot: Arc::new(self.subscribers.clone()),
            then_send: replies,
        };
        let _ = self.commits.send(c).await;
    }

    // ---- inbound stanzas ----------------------------------------------------------------

    async fn handle(&mut self, el: Element) {
        let refusal = Refusal::of(&el);
        let h = match Header::parse(&el) {
            Ok(h) => h,
            Err(e) => {
                if let Some(suppressed) = self.unroutable_log.allow(Instant::now()) {
                    tracing::warn!(error = %e, stanza = el.name(), refused = refusal.map(|r| r.violation.as_str()),
                        suppressed, "unroutable stanza dropped");
                }
                return;
            }
        };
        if h.to.domain().as_str() != self.domain() {
            if let Some(suppressed) = self.unroutable_log.allow(Instant::now()) {
                tracing::warn!(to = %h.to, suppressed, "stanza for another domain dropped");
            }
            return;
        }
        if let Some(r) = refusal {
            self.on_refused(&h, r).await;
            return;
        }
        match h.kind {
            Kind::Presence => self.on_presence(&h).await,
            Kind::Iq => self.on_iq(&h, &el).await,
            Kind::Message => self.on_message(&h, &el).await,
        }
    }

    /// A stanza the guard refused for breaking a bound: only its routing header is left.
    /// A request gets `policy-violation`; what only informs (presence, a bounce, an iq
    /// response) is handled by its header alone, as it would have been whole.
    async fn on_refused(&mut self, h: &Header, r: Refusal) {
        if let Some(suppressed) = self.refused_log.allow(Instant::now()) {
            tracing::warn!(from = %h.from, to = %h.to, stanza = ?h.kind, bytes = r.size,
                bound = r.violation.as_str(), limit = r.limit, suppressed, "inbound stanza refused: {r}");
        }
        let request = match h.kind {
            Kind::Iq => matches!(h.type_.as_deref(), Some("get" | "set")),
            Kind::Message => h.type_.as_deref() != Some("error"),
            Kind::Presence => false,
        };
        if !request {
            match h.kind {
                Kind::Presence => self.on_presence(h).await,
                Kind::Message => self.forget_requester(&h.from.to_string(), "message bounced"),
                Kind::Iq => self.on_iq_response(h),
            }
            return;
        }
        if h.kind == Kind::Iq && h.id.is_none() {
            return;
        }
        let text = format!("stanza refused: {r}");
        self.send(h.error(
            ErrorType::Modify,
            DefinedCondition::PolicyViolation,
            &text,
            None,
        ))
        .await;
    }

    /// The device a stanza is for, if it exists and the sender may see it.
    fn visible_device(&self, h: &Header) -> Option<&Device> {
        let node = h.to.node()?;
        let dev = self.devices.get(node.as_str())?;
        access::may_see(&self.cfg.access, &dev.cfg.access, &h.from.to_bare()).then_some(dev)
    }

    async fn on_message(&mut self, h: &Header, el: &Element) {
        if h.type_.as_deref() == Some("error") {
            // A bounce: the requester is gone. Stop working for it.
            self.forget_requester(&h.from.to_string(), "message bounced");
            return;
        }
        if h.to.node().is_none() {
            return;
        }
        if let Some(dev) = self.visible_device(h) {
            let id = dev.cfg.id.clone();
            if let Some(set) = el.get_child("set", crate::xmpp::payload::control::NS) {
                self.on_message_set(h, &id, set).await;
            }
        } else {
            // RFC 6121 §8.5.2: a message to an account that does not exist.
            self.send(no_such_device(h)).await;
        }
    }

    async fn on_presence(&mut self, h: &Header) {
        if matches!(h.type_.as_deref(), Some("unavailable" | "error")) {
            self.forget_requester(&h.from.to_string(), "went offline");
        }
        let Some(node) = h.to.node() else { return };
        let from = h.from.to_bare().to_string();
        let Some(dev) = self.devices.get(node.as_str()) else {
            if h.type_.as_deref() == Some("subscribe") {
                tracing::info!(from = %from, device = %node, "subscribe refused: no such device");
                let to_bare = h.to.to_bare().to_string();
                self.send(presence::subscription("unsubscribed", &to_bare, &from))
                    .await;
            }
            return;
        };
        let id = dev.cfg.id.clone();
        let allowed = access::check(
            &self.cfg.access,
            &dev.cfg.access,
            Right::Subscribe,
            &h.from.to_bare(),
        );
        let bare = dev.bare.clone();
        match h.type_.as_deref() {
            Some("subscribe") => match allowed {
                Ok(()) => {
                    let is_new = self
                        .subscribers
                        .entry(id.to_string())
                        .or_default()
                        .insert(from.clone());
                    let dev = &self.devices[&id];
                    let replies = vec![
                        presence::subscription("subscribed", &bare, &from),
                        Self::presence_of(dev, &from),
                    ];
                    if is_new {
                        tracing::info!(device = %id, subscriber = %from, "subscription approved");
                        self.commit(replies).await;
                    } else {
                        for r in replies {
                            self.send(r).await;
                        }
                    }
                }
                Err(why) => {
                    tracing::info!(device = %id, from = %from, reason = %why, "subscribe refused");
                    self.send(presence::subscription("unsubscribed", &bare, &from))
                        .await;
                }
            },
            Some("unsubscribe") => {
                let removed = self
                    .subscribers
                    .get_mut(&*id)
                    .is_some_and(|s| s.remove(&from));
                let full = self.devices[&id].full.clone();
                let bye = presence::unavailable(&full, &from, "unsubscribed");
                if removed {
                    tracing::info!(device = %id, subscriber = %from, "unsubscribed");
                    self.commit(vec![bye]).await;
                } else {
                    self.send(bye).await;
                }
            }
            Some("probe") => {
                let subscribed = self
                    .subscribers
                    .get(&*id)
                    .is_some_and(|s| s.contains(&from));
                if subscribed && allowed.is_ok() {
                    let p = Self::presence_of(&self.devices[&id], &h.from.to_string());
                    self.send(p).await;
                } else {
                    if subscribed {
                        // The policy changed since the subscription was approved.
                        self.revoke(&id, &from).await;
                    }
                    self.send(presence::subscription("unsubscribed", &bare, &from))
                        .await;
                }
            }
            // Available / unavailable presence of users and subscription answers need no
            // reply from a device.
            _ => {}
        }
    }

    /// Drops a subscriber who lost the right to subscribe, telling them so.
    async fn revoke(&mut self, id: &DeviceId, who: &str) {
        if let Some(s) = self.subscribers.get_mut(&**id) {
            s.remove(who);
        }
        let Some(dev) = self.devices.get(id) else {
            return;
        };
        tracing::info!(device = %id, subscriber = %who, "subscription revoked by access policy");
        let replies = vec![
            presence::unavailable(&dev.full, who, "access revoked"),
            presence::subscription("unsubscribed", &dev.bare, who),
        ];
        self.commit(replies).await;
    }

    async fn on_iq(&mut self, h: &Header, el: &Element) {
        let is_request = matches!(h.type_.as_deref(), Some("get" | "set"));
        if !is_request {
            if !matches!(h.type_.as_deref(), Some("result" | "error")) {
                self.send(h.error(
                    ErrorType::Modify,
                    DefinedCondition::BadRequest,
                    "iq type must be get, set, result or error",
                    None,
                ))
                .await;
            } else {
                self.on_iq_response(h);
            }
            return;
        }
        if h.id.is_none() {
            // The id is required (RFC 6120 §8.1.3), yet a request with a sender is still
            // answered (§8.2.3): without an id, as there is none to echo, like Prosody
            // answers its own clients. An error is never answered, so this cannot loop.
            self.send(h.error(
                ErrorType::Modify,
                DefinedCondition::BadRequest,
                "an iq request needs an id",
                None,
            ))
            .await;
            return;
        }
        let device_id = if h.to.node().is_some() {
            match self.visible_device(h) {
                Some(d) => Some(d.cfg.id.clone()),
                None => {
                    self.send(no_such_device(h)).await;
                    return;
                }
            }
        } else {
            None
        };
        let mut children = el.children();
        let (Some(payload), None) = (children.next(), children.next()) else {
            self.send(h.error(
                ErrorType::Modify,
                DefinedCondition::BadRequest,
                "an iq request carries exactly one payload element",
                None,
            ))
            .await;
            return;
        };
        if let Some(id) = &device_id {
            if self.on_iot_iq(h, id, payload).await {
                return;
            }
        }
        let device = device_id.as_ref().and_then(|id| self.devices.get(id));
        let reply = self.answer_iq(h, device, payload);
        self.send(reply).await;
    }

    fn answer_iq(&self, h: &Header, device: Option<&Device>, payload: &Element) -> Element {
        let get = h.type_.as_deref() == Some("get");
        let bad = |text: &str| h.error(ErrorType::Modify, DefinedCondition::BadRequest, text, None);
        let not_found = |text: &str| {
            h.error(
                ErrorType::Cancel,
                DefinedCondition::ItemNotFound,
                text,
                None,
            )
        };
        match (get, payload.ns().as_str(), payload.name()) {
            (true, ns::PING, "ping") => h.result(None),
            (true, ns::VERSION, "query") => h.result(Some(
                VersionResult {
                    name: "fieldgate".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    os: Some(std::env::consts::OS.into()),
                }
                .into(),
            )),
            (true, ns::DISCO_INFO, "query") => {
                let q = match DiscoInfoQuery::try_from(payload.clone()) {
                    Ok(q) => q,
                    Err(e) => return bad(&format!("invalid disco#info query: {e}")),
                };
                let info = match device {
                    Some(d) => d.disco.answer(q.node.as_deref()),
                    None if q.node.is_none() => Some(domain_info()),
                    None => None,
                };
                match info {
                    Some(i) => h.result(Some(i.into())),
                    None => not_found("unknown disco node"),
                }
            }
            (true, ns::DISCO_ITEMS, "query") => {
                let q = match DiscoItemsQuery::try_from(payload.clone()) {
                    Ok(q) => q,
                    Err(e) => return bad(&format!("invalid disco#items query: {e}")),
                };
                if q.node.is_some() {
                    return not_found("unknown disco node");
                }
                let items = match device {
                    Some(_) => vec![],
                    None => self.visible_items(&h.from.to_bare()),
                };
                // Room for the iq around the items and the <set/> after them.
                let budget = self.cfg.xmpp.max_outbound_stanza_size.saturating_sub(2048);
                match disco::page(items, q.rsm.as_ref(), budget) {
                    Ok((items, rsm)) => h.result(Some(
                        DiscoItemsResult {
                            node: None,
                            items,
                            rsm,
                        }
                        .into(),
                    )),
                    Err(e) => not_found(&e.to_string()),
                }
            }
            _ => h.error(
                ErrorType::Cancel,
                DefinedCondition::ServiceUnavailable,
                &format!(
                    "unsupported payload <{} xmlns='{}'/>",
                    clip(payload.name()),
                    clip(&payload.ns())
                ),
                None,
            ),
        }
    }

    fn visible_items(&self, who: &BareJid) -> Vec<Item> {
        self.order
            .iter()
            .map(|id| &self.devices[id])
            .filter(|d| access::may_see(&self.cfg.access, &d.cfg.access, who))
            .filter_map(|d| {
                Some(Item {
                    jid: Jid::new(&d.bare).ok()?,
                    node: None,
                    name: Some(d.cfg.name.clone()),
                })
            })
            .collect()
    }

    // ---- reload -------------------------------------------------------------------------

    async fn reload(&mut self) {
        let path = self.cfg.path.clone();
        let new = match crate::config::load(&path) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "reload refused: keeping the running configuration");
                return;
            }
        };
        if new.xmpp != self.cfg.xmpp {
            if new.xmpp.domain != self.cfg.xmpp.domain {
                // Every device JID, roster entry and subscription hangs off the domain.
                tracing::warn!(running = %self.cfg.xmpp.domain, configured = %new.xmpp.domain,
                    "[xmpp].domain changed: takes effect after a restart");
            }
            let mut xmpp = new.xmpp.clone();
            xmpp.domain = self.cfg.xmpp.domain.clone();
            if xmpp != self.cfg.xmpp {
                if self.link_up {
                    self.withdraw_all("gateway reconnecting with new settings")
                        .await;
                }
                tracing::info!("[xmpp] changed: reconnecting the component link");
                for dev in self.devices.values_mut() {
                    dev.full = format!("{}/{}", dev.bare, xmpp.resource);
                }
                self.cfg.xmpp = xmpp.clone();
                self.link_settings.send_replace(xmpp);
            }
        }
        if new.state_dir != self.cfg.state_dir {
            tracing::warn!("[state] changed: the new directory takes effect after a restart");
        }
        let old: BTreeMap<DeviceId, DeviceConfig> = self
            .devices
            .iter()
            .map(|(k, v)| (k.clone(), v.cfg.clone()))
            .collect();
        let wanted: BTreeMap<DeviceId, DeviceConfig> = new
            .devices
            .iter()
            .map(|d| (d.id.clone(), d.clone()))
            .collect();
        let (mut added, mut removed, mut changed) = (0, 0, 0);
        let mut stopping = Vec::new();
        for id in old.keys() {
            match wanted.get(id) {
                None => {
                    stopping.extend(
                        self.remove_device(id, "device removed from configuration")
                            .await,
                    );
                    removed += 1;
                }
                Some(cfg) if cfg != &old[id] => {
                    stopping.extend(self.remove_device(id, "device reconfigured").await);
                    changed += 1;
                }
                Some(_) => {}
            }
        }
        self.cfg.access = new.access.clone();
        self.cfg.readout = new.readout.clone();
        self.cfg.events = new.events.clone();
        // A device without a max_age of its own follows [readout].max_age.
        for dev in self.devices.values_mut() {
            dev.max_age = dev.cfg.max_age.unwrap_or(self.cfg.readout.max_age);
        }
        self.cfg.devices = new.devices.clone();
        for d in &new.devices {
            if !self.devices.contains_key(&d.id) {
                if !old.contains_key(&d.id) {
                    added += 1;
                }
                self.add_device(d.clone());
            }
        }
        // Keep disco#items in file order.
        self.order = new.devices.iter().map(|d| d.id.clone()).collect();
        self.runtimes.retain(self.devices.values().map(|d| &d.cfg));
        for t in stopping {
            let _ = tokio::time::timeout(Duration::from_secs(2), t).await;
        }
        self.enforce_access().await;
        release_free_memory();
        tracing::info!(
            added,
            removed,
            changed,
            devices = self.order.len(),
            "configuration reloaded"
        );
    }

    /// Withdraws subscriptions that the (new) access policy no longer admits.
    async fn enforce_access(&mut self) {
        let mut revoked = Vec::new();
        for (id, subs) in &self.subscribers {
            let Some(dev) = self.devices.get(id.as_str()) else {
                continue;
            };
            for s in subs {
                let admitted = BareJid::new(s).is_ok_and(|j| {
                    access::check(&self.cfg.access, &dev.cfg.access, Right::Subscribe, &j).is_ok()
                });
                if !admitted {
                    revoked.push((dev.cfg.id.clone(), s.clone()));
                }
            }
        }
        for (id, who) in revoked {
            self.revoke(&id, &who).await;
        }
        self.enforce_read_access();
    }
}
