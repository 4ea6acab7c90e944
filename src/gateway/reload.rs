//! SIGHUP: the new configuration applied without restarting what did not change.
//!
//! The actor must keep answering (and feeding the watchdog) while a large file is read, so
//! the file is read on the blocking pool and the result comes back through the actor's
//! loop; removed devices' adapters are stopped by a task of their own.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Duration;

use fieldgate_api::DeviceId;
use tokio::task::JoinHandle;
use xmpp_parsers::jid::BareJid;

use super::{release_free_memory, Gateway};
use crate::access::{self, Right};
use crate::config::{Config, ConfigError, DeviceConfig};
use crate::xmpp::presence;

/// How long removed devices' adapters get to stop before they are aborted.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// Devices removed or added per turn of the actor's loop: a few tens of milliseconds of
/// work, so stanzas and the watchdog are served between chunks however many devices
/// change.
const CHUNK: usize = 256;

/// One device-level change of a reload.
enum Step {
    Remove(DeviceId, &'static str),
    Add(Box<DeviceConfig>),
}

/// A reload under way: the file being read, then the device changes being applied.
#[derive(Default)]
pub(super) struct Reloading {
    loading: Option<JoinHandle<Result<Config, ConfigError>>>,
    /// Device changes still to apply, removals first (a reconfigured device is removed
    /// before it is added again).
    steps: VecDeque<Step>,
    /// Whether a configuration is being applied (`steps` may be empty on its last turn).
    applying: bool,
    /// What the reload being applied changes, for its log line.
    added: usize,
    removed: usize,
    changed: usize,
    /// A SIGHUP came during the reload: the file may have changed after it was read, so
    /// it is read once more when this reload is done.
    again: bool,
}

impl Reloading {
    /// Whether the file is being read.
    pub(super) fn loading(&self) -> bool {
        self.loading.is_some()
    }

    /// Whether device changes remain to be applied.
    pub(super) fn applying(&self) -> bool {
        self.applying
    }

    /// The configuration read, once it is; pending while no read is under way. Cancel
    /// safe: dropped before the end, the read goes on and a later call picks it up.
    pub(super) async fn loaded(&mut self) -> Result<Config, String> {
        let Some(h) = self.loading.as_mut() else {
            return std::future::pending().await;
        };
        let r = h.await;
        self.loading = None;
        match r {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(e)) => Err(e.to_string()),
            Err(e) => Err(format!("reading the configuration failed: {e}")),
        }
    }

    /// At shutdown: waits for a read under way (it cannot be cancelled), until `deadline`;
    /// device changes not yet applied are dropped with the gateway.
    pub(super) async fn finish(self, deadline: tokio::time::Instant) {
        if let Some(h) = self.loading {
            let _ = tokio::time::timeout_at(deadline, h).await;
        }
    }
}

impl Gateway {
    /// SIGHUP: starts reading the file, unless a reload is already under way.
    pub(super) fn request_reload(&mut self) {
        if self.reloading.loading() || self.reloading.applying() {
            self.reloading.again = true;
            return;
        }
        let path = self.cfg.path.clone();
        self.reloading.loading = Some(tokio::task::spawn_blocking(move || {
            crate::config::load(&path)
        }));
    }

    /// After a reload ended: reads the file again if a SIGHUP came meanwhile.
    pub(super) fn reload_again(&mut self) {
        if std::mem::take(&mut self.reloading.again) {
            self.request_reload();
        }
    }

    /// Applies the gateway-wide part of a configuration read for a reload and queues its
    /// device changes for [`Gateway::apply_steps`], or logs why it was refused. True when
    /// the reload has ended (refused).
    pub(super) async fn apply_reload(&mut self, loaded: Result<Config, String>) -> bool {
        let new = match loaded {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "reload refused: keeping the running configuration");
                return true;
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
        let wanted: HashMap<&DeviceId, &DeviceConfig> =
            new.devices.iter().map(|d| (&d.id, d)).collect();
        let r = &mut self.reloading;
        (r.added, r.removed, r.changed) = (0, 0, 0);
        for (id, dev) in &self.devices {
            if let Some(entry) = &dev.member_of {
                // A member follows its entry: kept while the entry is, re-made from the
                // entry's new configuration when it changed.
                let now = self.devices.get(entry).map(|e| &e.cfg);
                match wanted.get(entry) {
                    Some(cfg) if Some(*cfg) == now && cfg.discovers => {}
                    Some(_) => r.steps.push_back(Step::Remove(
                        id.clone(),
                        "its discovery entry was reconfigured",
                    )),
                    None => r
                        .steps
                        .push_back(Step::Remove(id.clone(), "its discovery entry was removed")),
                }
                continue;
            }
            match wanted.get(id) {
                None => {
                    r.steps.push_back(Step::Remove(
                        id.clone(),
                        "device removed from configuration",
                    ));
                    r.removed += 1;
                }
                Some(cfg) if **cfg != dev.cfg => {
                    r.steps
                        .push_back(Step::Remove(id.clone(), "device reconfigured"));
                    r.changed += 1;
                }
                Some(_) => {}
            }
        }
        for d in &new.devices {
            match self.devices.get(&d.id) {
                None => {
                    r.steps.push_back(Step::Add(Box::new(d.clone())));
                    r.added += 1;
                }
                Some(dev) if dev.cfg != *d => r.steps.push_back(Step::Add(Box::new(d.clone()))),
                Some(_) => {}
            }
        }
        r.applying = true;
        self.cfg.access = new.access.clone();
        self.cfg.max_subscriptions = new.max_subscriptions;
        if self.n_subscriptions > self.cfg.max_subscriptions {
            tracing::warn!(
                subscriptions = self.n_subscriptions,
                max_subscriptions = self.cfg.max_subscriptions,
                "more subscriptions than [access] max_subscriptions: all kept, new ones refused"
            );
        }
        self.cfg.readout = new.readout.clone();
        self.cfg.events = new.events.clone();
        self.outbox
            .set_bounds((&new.events).into(), std::time::Instant::now());
        // A device without a max_age of its own follows [readout].max_age.
        for dev in self.devices.values_mut() {
            dev.max_age = dev.cfg.max_age.unwrap_or(self.cfg.readout.max_age);
        }
        self.cfg.devices = new.devices;
        false
    }

    /// Applies the next chunk of a reload's device changes; once none remain, the devices
    /// are put in file order and the access policy is enforced on them. True when the
    /// reload has ended.
    pub(super) async fn apply_steps(&mut self) -> bool {
        let n = self.reloading.steps.len().min(CHUNK);
        let mut gone = Vec::new();
        for step in self.reloading.steps.drain(..n).collect::<Vec<_>>() {
            match step {
                Step::Remove(id, why) => gone.push((id, why)),
                Step::Add(cfg) => {
                    // Removals come first, so a chunk's adds follow all its removals.
                    self.remove_devices(std::mem::take(&mut gone)).await;
                    self.add_device(*cfg);
                }
            }
        }
        self.remove_devices(gone).await;
        if !self.reloading.steps.is_empty() {
            return false;
        }
        self.reloading.applying = false;
        // Keep disco#items in file order.
        self.settle_members();
        self.runtimes.retain(self.devices.values().map(|d| &d.cfg));
        // Retention follows the file; a first device that keeps history starts the writer.
        self.start_history();
        self.enforce_access().await;
        release_free_memory();
        let r = &self.reloading;
        tracing::info!(
            added = r.added,
            removed = r.removed,
            changed = r.changed,
            devices = self.order.len(),
            "configuration reloaded"
        );
        true
    }

    /// Stops removed devices' adapters and forgets the devices; their subscribers stay on
    /// file, so a device comes back to them if it is configured again. The adapters stop
    /// together, in a task the gateway owns, not one after another in the actor.
    async fn remove_devices(&mut self, gone: Vec<(DeviceId, &'static str)>) {
        if gone.is_empty() {
            return;
        }
        let set: HashSet<DeviceId> = gone.iter().map(|(id, _)| id.clone()).collect();
        self.order.retain(|d| !set.contains(d));
        self.forget_devices(&set);
        let mut tasks = Vec::new();
        for (id, why) in gone {
            self.restarts.cancel(&id);
            let Some(dev) = self.devices.remove(&id) else {
                continue;
            };
            if self.link_up {
                for sub in self.subscribers.get(&*dev.cfg.id).into_iter().flatten() {
                    self.send(presence::unavailable(&dev.full, sub, why)).await;
                }
            }
            if let Some(a) = dev.adapter {
                a.cancel.cancel();
                tasks.push(a.task);
            }
        }
        while self.stopping.try_join_next().is_some() {}
        self.stopping.spawn(async move {
            let deadline = tokio::time::Instant::now() + STOP_GRACE;
            let mut late = 0usize;
            for t in tasks {
                let abort = t.abort_handle();
                if tokio::time::timeout_at(deadline, t).await.is_err() {
                    abort.abort();
                    late += 1;
                }
            }
            if late > 0 {
                tracing::warn!(adapters = late, grace = ?STOP_GRACE,
                    "removed devices' adapters did not stop in time: aborted");
            }
        });
    }

    /// Withdraws subscriptions that the (new) access policy no longer admits.
    pub(super) async fn enforce_access(&mut self) {
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

#[cfg(all(test, feature = "sim"))]
impl Gateway {
    /// Reads the file and applies it, as the actor's loop does over two turns.
    pub(super) async fn reload(&mut self) {
        self.request_reload();
        let loaded = self.reloading.loaded().await;
        if !self.apply_reload(loaded).await {
            while !self.apply_steps().await {}
        }
    }
}

#[cfg(all(test, feature = "sim"))]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use tokio::sync::mpsc;
    use tokio_util::sync::CancellationToken;

    use super::super::{Controls, Supervisor};

    use super::super::testing::{device, gateway};

    #[tokio::test]
    async fn a_reload_applies_readout_events_and_max_age() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = gateway(&format!(
            "{}[[device]]\nid = \"own\"\nadapter = \"sim\"\nmax_age = \"7s\"\n",
            device("pump")
        ));
        let path = dir.path().join("gw.toml");
        let new = format!(
            "[xmpp]\nserver = \"127.0.0.1:5347\"\ndomain = \"{}\"\nsecret = \"s\"\n\
             [state]\ndir = \"/nonexistent-test-state\"\n\
             [readout]\nmax_age = \"3s\"\nmax_per_requester = 2\n\
             [events]\nmax_per_requester = 1\nsample_interval = \"5s\"\n{}\
             [[device]]\nid = \"own\"\nadapter = \"sim\"\nmax_age = \"7s\"\n",
            super::super::testing::DOMAIN,
            device("pump")
        );
        std::fs::write(&path, new).unwrap();
        t.gw.cfg.path = path;
        t.gw.reload().await;
        assert_eq!(t.gw.cfg.readout.max_per_requester, 2);
        assert_eq!(t.gw.cfg.events.max_per_requester, 1);
        assert_eq!(t.gw.cfg.events.sample_interval, Duration::from_secs(5));
        // a device without a max_age of its own follows [readout]; one with keeps its own
        assert_eq!(t.gw.devices["pump"].max_age, Duration::from_secs(3));
        assert_eq!(t.gw.devices["own"].max_age, Duration::from_secs(7));
    }

    /// A supervisor that notes when the watchdog is fed and when a reload ends.
    struct Watch {
        fed: Arc<Mutex<Vec<Instant>>>,
        reloaded: mpsc::UnboundedSender<()>,
    }

    impl Supervisor for Watch {
        fn ready(&mut self) {}
        fn watchdog(&mut self) {
            self.fed.lock().unwrap().push(Instant::now());
        }
        fn stopping(&mut self) {}
        fn watchdog_interval(&self) -> Option<Duration> {
            Some(WATCHDOG)
        }
        fn status(&mut self, _: &str) {}
        fn reloaded(&mut self) {
            let _ = self.reloaded.send(());
        }
    }

    const WATCHDOG: Duration = Duration::from_millis(50);

    /// `n` sim devices `<prefix>0` ... with one field each.
    fn many(state: &std::path::Path, prefix: &str, n: usize) -> String {
        let mut s = format!(
            "[xmpp]\nserver = \"127.0.0.1:1\"\ndomain = \"{}\"\nsecret = \"s\"\n\
             [state]\ndir = \"{}\"\n",
            super::super::testing::DOMAIN,
            state.display()
        );
        for i in 0..n {
            s.push_str(&format!(
                "[[device]]\nid = \"{prefix}{i}\"\nadapter = \"sim\"\n\
                 [[device.field]]\nname = \"level\"\ntype = \"int\"\n"
            ));
        }
        s
    }

    /// The longest time between two feeds of the watchdog around `[from, to]`: from the
    /// last feed before `from` to the first after `to`.
    fn longest_gap(fed: &[Instant], from: Instant, to: Instant) -> Duration {
        let first = fed.iter().rposition(|t| *t <= from).unwrap_or(0);
        let last = fed.iter().position(|t| *t >= to).unwrap_or(fed.len() - 1);
        fed[first..=last]
            .windows(2)
            .map(|w| w[1] - w[0])
            .max()
            .unwrap_or_default()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_watchdog_is_fed_while_10000_devices_reload() {
        const N: usize = 10_000;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gw.toml");
        std::fs::write(&path, many(dir.path(), "a", N)).unwrap();
        let cfg = crate::config::load(&path).unwrap();
        let fed = Arc::new(Mutex::new(Vec::new()));
        let (reloaded, mut reloads) = mpsc::unbounded_channel();
        let (reload_tx, reload_rx) = mpsc::channel(1);
        let shutdown = CancellationToken::new();
        let gw = super::super::run(
            cfg,
            Controls {
                shutdown: shutdown.clone(),
                reload: reload_rx,
            },
            Box::new(Watch {
                fed: fed.clone(),
                reloaded,
            }),
        );
        let driver = async {
            let started = Instant::now();
            while fed.lock().unwrap().len() < 3 {
                assert!(started.elapsed() < Duration::from_secs(120), "never fed");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            // Every device replaced: 10,000 stopped, 10,000 started, the file read anew.
            std::fs::write(&path, many(dir.path(), "b", N)).unwrap();
            let from = Instant::now();
            reload_tx.send(()).await.unwrap();
            tokio::time::timeout(Duration::from_secs(300), reloads.recv())
                .await
                .expect("the reload to end")
                .unwrap();
            let to = Instant::now();
            let n = fed.lock().unwrap().len();
            while fed.lock().unwrap().len() < n + 2 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let gap = longest_gap(&fed.lock().unwrap(), from, to);
            eprintln!(
                "reload of {N} devices took {:?}; longest watchdog gap {gap:?}",
                to - from
            );
            shutdown.cancel();
            gap
        };
        let (ran, gap) = tokio::join!(gw, driver);
        ran.unwrap();
        // Read and applied in the actor, the reload left the watchdog unfed for about 6 s
        // (debug build); now the longest gap is a few hundred milliseconds. The bound
        // leaves room for a loaded machine.
        assert!(
            gap < Duration::from_secs(2),
            "the watchdog went unfed for {gap:?} during the reload"
        );
    }
}
