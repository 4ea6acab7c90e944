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
use xmpp_parsers::stanza_error::{DefinedCondition, ErrorType};

mod cache;
mod control;
mod dispatch;
mod events;
#[cfg(all(test, feature = "sim"))]
mod fuzz_replay;
mod liveness;
mod presences;
mod readouts;
mod reload;
mod replies;
mod routing;
mod tasks;
#[cfg(all(test, feature = "sim"))]
mod testing;

use std::collections::HashMap;
use std::time::{Instant, SystemTime};

use fieldgate_api::{FieldSpec, Reading};
use tokio::task::JoinSet;

use crate::config::{Config, DeviceConfig};
use crate::devices;
use crate::log_limit::{LogLimiter, PerSender};
use crate::state::{self, Commit, Subscribers};
use crate::xmpp::disco::DeviceDisco;
use crate::xmpp::link::{self, LinkState, Outbound};
use crate::xmpp::presence;
use crate::xmpp::stanza::Header;

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
    refused_log: PerSender,
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
            refused_log: PerSender::new(3, 20, Duration::from_secs(60)),
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
}
