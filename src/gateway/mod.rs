//! The gateway actor: owns the device registry, the subscribers and the component link,
//! and answers every stanza addressed to the component domain or a device JID.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fieldgate_api::{DeviceEvent, DeviceId, EventKind, EventSink, Reachability, Reporting};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_xmpp::minidom::Element;
use xmpp_parsers::stanza_error::{DefinedCondition, ErrorType};

mod cache;
mod control;
mod dispatch;
mod events;
mod fleets;
#[cfg(all(test, feature = "sim"))]
mod fuzz_replay;
mod history;
mod liveness;
mod outbox;
mod per_user;
mod presences;
mod readouts;
mod reload;
mod replies;
mod routing;
mod subscriptions;
mod supervise;
mod tasks;
#[cfg(all(test, feature = "sim"))]
mod testing;

use std::collections::HashMap;
use std::time::Instant;

use fieldgate_api::{FieldSpec, Reading};
use tokio::task::JoinSet;

use crate::config::{Config, DeviceConfig};
use crate::devices;
use crate::history::sampler::DeviceSampler;
use crate::log_limit::{LogLimiter, PerSender};
use crate::state::{self, Commit, Subscribers};
use crate::xmpp::disco::DeviceDisco;
use crate::xmpp::link::{self, LinkState, Outbound};
use crate::xmpp::stanza::Header;

const EVENT_QUEUE: usize = 8192;
/// Adapter tasks that ended unexpectedly, waiting for the actor: one per device at most
/// at any time, and the actor takes them promptly.
const EXIT_QUEUE: usize = 64;
const COMMIT_QUEUE: usize = 1024;

/// A configured device at run time.
struct Device {
    cfg: DeviceConfig,
    bare: String,
    full: String,
    /// Shared by the members of a discovering entry, which all are the entry's kind of
    /// device (their identity is the entry's name; disco#items lists each by its own).
    disco: Arc<DeviceDisco>,
    caps: Arc<Element>,
    /// `None` until the adapter first reports.
    reach: Option<Reachability>,
    adapter: Option<devices::Running>,
    /// Unexpected ends of its adapter since it last ran long: drives the restart back-off.
    adapter_failures: u32,
    /// The field catalogue, shared with readout tasks.
    specs: Arc<[FieldSpec]>,
    /// The last reading of each field.
    cache: cache::Cache,
    /// The last error seen: unreachable reason or failed read.
    last_error: Option<fieldgate_api::Reason>,
    /// Momentary values younger than this are served from `cache`.
    max_age: Duration,
    /// Whether the events engine's read of the device is under way.
    sampling: bool,
    /// When each field was last written through XMPP, until a reading taken after the
    /// write arrives (monotonic: a wall-clock step must not freeze the cache).
    written: HashMap<Arc<str>, Instant>,
    /// The discovering entry this device is a member of: its requests go to the entry's
    /// adapter (it has none of its own).
    member_of: Option<DeviceId>,
    /// Its fields that history keeps, and what each last stored.
    kept: Option<Box<DeviceSampler>>,
    /// Whether history's read of the device (one that reports only when asked) is under way.
    keeping: bool,
}

impl Device {
    /// Caches a reading unless it reached the gateway before the field's last write: such
    /// a value, from a read that overlapped the write, is already out of date.
    fn remember(&mut self, r: Reading) {
        if !self.written.is_empty() {
            match self.written.get(&*r.field) {
                Some(w) if r.taken < *w => return,
                Some(_) => {
                    // The write is behind this reading: nothing older can follow it.
                    self.written.remove(&*r.field);
                }
                None => {}
            }
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
    /// A reload (SIGHUP) finished: applied, or refused and the running configuration
    /// kept. Nothing to tell systemd, whose `ExecReload=` does not wait for it.
    fn reloaded(&mut self) {}
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
    // Boxed: a B-tree node holds eleven entries inline, and a large Device made
    // them mostly slack (17 MB of 53 with 10,000 discovered devices).
    devices: BTreeMap<DeviceId, Box<Device>>,
    subscribers: Subscribers,
    /// Entries in `subscribers`, those waiting to be saved included.
    n_subscriptions: usize,
    /// Subscriptions refused because the persister's queue was full.
    commits_refused: u64,
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
    /// Readouts in progress or queued per user (bare JID).
    sessions_per_requester: per_user::PerUser,
    /// Writes in flight per user.
    writes_per_requester: per_user::PerUser,
    /// Event subscriptions, by (requester full JID, seqnr), and their deadlines.
    subscriptions: subscriptions::Subscriptions,
    /// Liveness probes of subscribers, by requester full JID.
    liveness: HashMap<String, liveness::Liveness>,
    /// Events not yet known to have reached the server (kept through link outages).
    outbox: outbox::Outbox,
    /// Counter for the ids of the gateway's own iq requests.
    next_iq: u64,
    /// What each adapter kind's devices share.
    runtimes: devices::Runtimes,
    /// Adapter tasks that ended without being asked to, and the restarts they wait for.
    exits: mpsc::Receiver<devices::Exit>,
    restarts: supervise::Restarts,
    /// A configuration being read for a reload.
    reloading: reload::Reloading,
    /// Adapters of removed devices, stopping: a reload does not wait for them.
    stopping: JoinSet<()>,
    /// The members of discovering entries, as on file.
    discovered: crate::discovered::Discovered,
    /// When the discovered members are next written, if they changed.
    discovered_save: Option<Instant>,
    /// Log lines about refused and unroutable stanzas, which anyone can cause.
    refused_log: PerSender,
    unroutable_log: LogLimiter,
    /// Stanzas for a domain that is not the gateway's (a server routing several
    /// domains to this component).
    other_domain_log: LogLimiter,
    /// The history writer, once a device keeps history.
    history: Option<history::Keeper>,
    /// When each device that reports only when asked is next read for its history.
    keep_schedule: std::collections::BTreeSet<(Instant, DeviceId)>,
}

/// Runs the gateway until `controls.shutdown` is cancelled, then withdraws every device's
/// presence, closes the stream and stops the adapters.
pub async fn run(
    cfg: Config,
    mut controls: Controls,
    mut supervisor: Box<dyn Supervisor>,
) -> Result<(), state::StateError> {
    let subscribers = state::load(&cfg.state_dir)?;
    let discovered = crate::discovered::load(&cfg.state_dir)?;
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
        mut receipts,
    } = link;
    if n_subs > cfg.max_subscriptions {
        tracing::warn!(subscriptions = n_subs, max_subscriptions = cfg.max_subscriptions,
            "more subscriptions on file than [access] max_subscriptions: all kept, new ones refused");
    }
    let (commit_tx, commit_rx) = mpsc::channel(COMMIT_QUEUE);
    let (failed_tx, mut failed_rx) = mpsc::channel(COMMIT_QUEUE);
    let persister = tokio::spawn(state::persister(
        cfg.state_dir.clone(),
        subscribers.clone(),
        commit_rx,
        outbound.clone(),
        failed_tx,
    ));
    let (ev_tx, mut ev_rx) = mpsc::channel::<DeviceEvent>(EVENT_QUEUE);
    let dropped = Arc::new(AtomicU64::new(0));

    let mut gw = Gateway::new(
        cfg,
        subscribers,
        discovered,
        outbound,
        commit_tx,
        EventSink::new(ev_tx, dropped),
        link_settings,
    );
    release_free_memory();

    let mut watchdog = supervisor.watchdog_interval().map(tokio::time::interval);
    let mut liveness_tick = tokio::time::interval(liveness::LIVENESS_TICK);
    liveness_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ready = false;
    loop {
        let wake = gw.subscriptions.next_wake();
        let keep_at = gw.next_keep();
        tokio::select! {
            Some(done) = gw.tasks.join_next(), if !gw.tasks.is_empty() => match done {
                Ok(done) => gw.on_done(done).await,
                Err(e) if e.is_panic() => tracing::error!(error = %e, "a readout or write task panicked"),
                Err(_) => {}
            },
            _ = until(wake), if wake.is_some() => gw.on_wake().await,
            _ = liveness_tick.tick(), if !gw.subscriptions.is_empty() || !gw.sessions.is_empty()
                || gw.outbox.checking() => {
                gw.probe_subscribers(Instant::now()).await
            }
            Ok(()) = receipts.changed() => {
                let receipt = *receipts.borrow_and_update();
                gw.outbox.confirm(receipt);
            }
            _ = controls.shutdown.cancelled() => break,
            Some(()) = controls.reload.recv() => gw.request_reload(),
            loaded = gw.reloading.loaded(), if gw.reloading.loading() => {
                if gw.apply_reload(loaded).await {
                    supervisor.reloaded();
                    gw.reload_again();
                }
            }
            // A chunk of a reload's device changes per turn, so the other branches (the
            // watchdog among them) are served in between.
            _ = std::future::ready(()), if gw.reloading.applying() => {
                if gw.apply_steps().await {
                    supervisor.reloaded();
                    gw.reload_again();
                }
            }
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
                        gw.check_held_subscribers().await;
                    }
                    LinkState::Down(why) => {
                        gw.link_up = false;
                        gw.link_went_down();
                        supervisor.status(&format!("component link down: {why}"));
                    }
                }
            }
            Some(el) = inbound.recv() => gw.handle(el).await,
            Some(ev) = ev_rx.recv() => gw.on_event(ev).await,
            Some(exit) = gw.exits.recv() => gw.on_adapter_exit(exit).await,
            _ = until(gw.restarts.next()) => gw.restart_due().await,
            Some(f) = failed_rx.recv() => gw.on_failed_save(f).await,
            _ = until(gw.discovered_save), if gw.discovered_save.is_some() => gw.save_discovered().await,
            _ = until(keep_at), if keep_at.is_some() => gw.keep_due(),
            _ = tick(&mut watchdog) => supervisor.watchdog(),
        }
    }

    supervisor.stopping();
    if gw.discovered_save.is_some() {
        gw.save_discovered().await;
    }
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
    let mut stopping = std::mem::take(&mut gw.stopping);
    let reloading = std::mem::take(&mut gw.reloading);
    let keeper = gw.history.take();
    // Dropping the gateway drops the last senders: the persister writes what is queued
    // and ends, then the link flushes, sends the stream footer and ends.
    drop(gw);
    adapters_root.cancel();
    match tokio::time::timeout_at(deadline, persister).await {
        Ok(Ok(writes)) => tracing::debug!(writes, "subscriber file closed"),
        Ok(Err(e)) => tracing::error!(error = %e, "subscriber persister failed"),
        Err(_) => tracing::error!(
            "subscriber persister did not finish in time: recent changes may be lost"
        ),
    }
    if tokio::time::timeout_at(deadline, link_task).await.is_err() {
        tracing::warn!("component link did not close in time");
        link_cancel.cancel();
    }
    for t in tasks {
        let _ = tokio::time::timeout_at(deadline, t).await;
    }
    while let Ok(Some(_)) = tokio::time::timeout_at(deadline, stopping.join_next()).await {}
    reloading.finish(deadline).await;
    runtimes.join(deadline).await;
    if let Some(k) = keeper {
        // The last commit and a checkpoint: what a clean stop must not lose.
        k.stop().await;
    }
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

/// Sleeps until `at`, or for ever.
async fn until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
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
        discovered: crate::discovered::Discovered,
        out: mpsc::Sender<Outbound>,
        commits: mpsc::Sender<Commit<Element>>,
        events: EventSink,
        link_settings: tokio::sync::watch::Sender<crate::config::XmppConfig>,
    ) -> Gateway {
        let (exit_tx, exits) = mpsc::channel(EXIT_QUEUE);
        let n_subscriptions = subscribers.values().map(|s| s.len()).sum();
        let mut gw = Gateway {
            order: Vec::new(),
            devices: BTreeMap::new(),
            subscribers,
            n_subscriptions,
            commits_refused: 0,
            out,
            commits,
            events,
            adapters_root: CancellationToken::new(),
            link_up: false,
            link_settings,
            tasks: JoinSet::new(),
            sessions: HashMap::new(),
            sessions_per_requester: Default::default(),
            writes_per_requester: Default::default(),
            subscriptions: Default::default(),
            liveness: HashMap::new(),
            outbox: outbox::Outbox::new(&cfg.xmpp.domain, (&cfg.events).into()),
            next_iq: 0,
            runtimes: devices::Runtimes::new(exit_tx),
            exits,
            restarts: supervise::Restarts::default(),
            reloading: reload::Reloading::default(),
            stopping: JoinSet::new(),
            discovered,
            discovered_save: None,
            refused_log: PerSender::new(3, 20, Duration::from_secs(60)),
            unroutable_log: LogLimiter::new(10, Duration::from_secs(60)),
            other_domain_log: LogLimiter::new(10, Duration::from_secs(60)),
            history: None,
            keep_schedule: Default::default(),
            cfg: cfg.clone(),
        };
        for d in &cfg.devices {
            gw.add_device(d.clone());
        }
        // Every device is built: shared resources may start (an MQTT session connects
        // only now, so that what the broker kept for it finds its device).
        gw.runtimes.retain(gw.devices.values().map(|d| &d.cfg));
        gw.start_history();
        gw
    }

    fn domain(&self) -> &str {
        &self.cfg.xmpp.domain
    }

    async fn send(&self, el: Element) {
        // An error means the link task is gone (shutdown); nothing else to do.
        let _ = self.out.send(el.into()).await;
    }

    /// Adds a configured device (or discovering entry, with its remembered members) and
    /// starts its adapter.
    fn add_device(&mut self, cfg: DeviceConfig) {
        let started = self
            .runtimes
            .start(&cfg, self.events.clone(), &self.adapters_root);
        let (adapter, reach) = match started {
            Ok(r) => (Some(r), None),
            Err(e) => {
                tracing::error!(device = %cfg.id, error = %e, "adapter failed to start");
                (
                    None,
                    Some(Reachability::Unreachable(
                        fieldgate_api::Reason::with_detail(
                            "the device's adapter could not be started",
                            format!("adapter failed: {e}"),
                        ),
                    )),
                )
            }
        };
        let id = cfg.id.clone();
        let discovers = cfg.discovers;
        if !discovers {
            self.order.push(id.clone());
        }
        self.insert_device(cfg, adapter, reach, None);
        if discovers {
            self.add_members(&id);
        }
    }

    /// Puts a device in the registry (not in `order`).
    fn insert_device(
        &mut self,
        cfg: DeviceConfig,
        adapter: Option<devices::Running>,
        reach: Option<Reachability>,
        member_of: Option<DeviceId>,
    ) {
        let bare = format!("{}@{}", cfg.id, self.cfg.xmpp.domain);
        let full = format!("{bare}/{}", self.cfg.xmpp.resource);
        let shared = member_of
            .as_ref()
            .and_then(|e| self.devices.get(e))
            .map(|e| (e.disco.clone(), e.caps.clone()));
        let (disco, caps) = shared.unwrap_or_else(|| {
            let disco = DeviceDisco::new(&cfg.name, &dispatch::features(&cfg));
            let caps: Element = disco.caps.clone().into();
            (Arc::new(disco), Arc::new(caps))
        });
        let id = cfg.id.clone();
        let specs: Arc<[FieldSpec]> = cfg.fields.clone();
        let max_age = cfg.max_age.unwrap_or(self.cfg.readout.max_age);
        let kept = DeviceSampler::new(&cfg.id, &specs, &cfg.history).map(Box::new);
        if let Some(k) = &kept {
            if cfg.reporting == Reporting::OnRequest && !cfg.discovers {
                let first = Instant::now() + k.read_period(self.cfg.history.read_interval);
                self.keep_schedule.insert((first, id.clone()));
            }
        }
        self.devices.insert(
            id,
            Box::new(Device {
                cfg,
                bare,
                full,
                disco,
                caps,
                reach,
                adapter,
                adapter_failures: 0,
                cache: cache::Cache::new(specs.clone()),
                specs,
                last_error: None,
                max_age,
                sampling: false,
                written: HashMap::new(),
                member_of,
                kept,
                keeping: false,
            }),
        );
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
                let mut records = Vec::new();
                let now = Instant::now();
                for r in batch {
                    if let Some(k) = dev.kept.as_mut() {
                        records.extend(k.offer(&r, now));
                    }
                    dev.remember(r);
                }
                if let Some(h) = &self.history {
                    h.recorder.record(records);
                }
                if self.subscriptions.watch(&ev.device) {
                    self.evaluate_subscriptions(&ev.device, true).await;
                }
            }
            EventKind::Discovered { id, name, verdict } => {
                let r = self.on_discovered(&ev.device, id, name).await;
                verdict.give(r);
            }
        }
    }
}
