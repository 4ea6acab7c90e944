//! Adapter supervision: an adapter task that panicked or ended without being asked to is
//! logged, its device goes unavailable with a reason, and the adapter is started again
//! after a back-off that grows while restarts keep failing.

use std::time::{Duration, Instant};

use fieldgate_api::{backoff, DeviceEvent, DeviceId, EventKind, Reachability, Reason};

use super::Gateway;
use crate::devices::Exit;

/// First wait before restarting a failed adapter, doubled per failure up to
/// [`RESTART_MAX`].
const RESTART_MIN: Duration = Duration::from_millis(500);
const RESTART_MAX: Duration = Duration::from_secs(60);
/// An adapter that ran this long before failing starts its back-off over: it was not
/// failing at start-up, and a rare fault should not wait the longest delay.
const STABLE: Duration = Duration::from_secs(60);

/// Adapters waiting to be started again.
#[derive(Default)]
pub(super) struct Restarts {
    due: Vec<(Instant, DeviceId)>,
}

impl Restarts {
    /// When the next restart is due.
    pub(super) fn next(&self) -> Option<Instant> {
        self.due.iter().map(|(at, _)| *at).min()
    }

    /// Forgets a pending restart (the device was removed or reconfigured).
    pub(super) fn cancel(&mut self, id: &DeviceId) {
        self.due.retain(|(_, d)| d != id);
    }

    fn take_due(&mut self, now: Instant) -> Vec<DeviceId> {
        let (due, later): (Vec<_>, Vec<_>) = self.due.drain(..).partition(|(at, _)| *at <= now);
        self.due = later;
        due.into_iter().map(|(_, d)| d).collect()
    }
}

impl Gateway {
    /// An adapter task ended on its own: log it, show the device unavailable, and
    /// schedule its restart.
    pub(super) async fn on_adapter_exit(&mut self, exit: Exit) {
        let Some(dev) = self.devices.get_mut(&exit.device) else {
            return; // removed meanwhile
        };
        if dev.adapter.as_ref().map(|a| a.generation) != Some(exit.generation) {
            return; // an earlier run, already replaced
        }
        if exit.ran >= STABLE {
            dev.adapter_failures = 0;
        }
        let delay = backoff(dev.adapter_failures, RESTART_MIN, RESTART_MAX);
        dev.adapter_failures = dev.adapter_failures.saturating_add(1);
        tracing::error!(device = %exit.device, reason = %exit.why,
            ran_ms = exit.ran.as_millis() as u64, restart_in_ms = delay.as_millis() as u64,
            failures = dev.adapter_failures, "adapter task ended unexpectedly; restarting");
        if let Some(old) = dev.adapter.take() {
            // It has ended: this only collects it.
            let _ = old.task.await;
        }
        let why = Reason::with_detail(
            "the device's adapter failed and is being restarted",
            format!(
                "the device's adapter {}; restarting in {}",
                exit.why,
                humantime::format_duration(Duration::from_millis(delay.as_millis() as u64))
            ),
        );
        self.restarts
            .due
            .push((Instant::now() + delay, exit.device.clone()));
        let unreachable = Reachability::Unreachable(why);
        if dev.cfg.discovers {
            self.members_unreachable(&exit.device, unreachable.clone())
                .await;
        }
        self.on_event(DeviceEvent {
            device: exit.device,
            kind: EventKind::Reachability(unreachable),
        })
        .await;
    }

    /// Starts again the adapters whose back-off has passed.
    pub(super) async fn restart_due(&mut self) {
        for id in self.restarts.take_due(Instant::now()) {
            let Some(dev) = self.devices.get_mut(&id) else {
                continue;
            };
            if dev.adapter.is_some() {
                continue;
            }
            match self
                .runtimes
                .start(&dev.cfg, self.events.clone(), &self.adapters_root)
            {
                Ok(running) => {
                    tracing::info!(device = %id, failures = dev.adapter_failures, "adapter restarted");
                    dev.adapter = Some(running);
                    if dev.cfg.discovers {
                        let members = self.discovered.get(&*id).cloned().unwrap_or_default();
                        self.adopt(&id, members);
                    }
                }
                Err(e) => {
                    let delay = backoff(dev.adapter_failures, RESTART_MIN, RESTART_MAX);
                    dev.adapter_failures = dev.adapter_failures.saturating_add(1);
                    tracing::error!(device = %id, error = %e,
                        restart_in_ms = delay.as_millis() as u64, "adapter failed to restart");
                    self.restarts.due.push((Instant::now() + delay, id));
                }
            }
        }
    }
}

#[cfg(all(test, feature = "sim"))]
mod tests {
    use super::super::testing::{el, gateway, iq, ALICE};
    use super::*;

    const SD: &str = crate::xmpp::payload::sensordata::NS;

    /// A sim device whose task panics at its second read.
    fn faulty(id: &str) -> String {
        format!(
            "[[device]]\nid = \"{id}\"\nadapter = \"sim\"\n[device.sim]\nfault_panic_after_reads = 2\n\
             [[device.field]]\nname = \"level\"\ntype = \"int\"\n"
        )
    }

    async fn read_level(t: &mut super::super::testing::TestGateway, seqnr: u64) -> Option<String> {
        let req = el(&format!(
            "<req xmlns='{SD}' seqnr='{seqnr}' momentary='true'/>"
        ));
        let id: DeviceId = "pump".into();
        let (_, job) = t.gw.accept_req(&iq("get", ALICE, "pump"), &id, &req);
        let (out, mut rx) = tokio::sync::mpsc::channel(8);
        let (fresh, err) = job.unwrap().run(out, Default::default()).await;
        drop(rx.recv().await);
        if fresh.is_empty() {
            Some(err.map(|e| e.detailed().to_owned()).unwrap_or_default())
        } else {
            None
        }
    }

    #[tokio::test]
    async fn a_panicking_adapter_is_reported_and_restarted_with_back_off() {
        let mut t = gateway(&faulty("pump"));
        let id: DeviceId = "pump".into();
        let first = t.gw.devices[&id].adapter.as_ref().unwrap().generation;
        assert_eq!(read_level(&mut t, 1).await, None, "the first read works");
        let err = read_level(&mut t, 2)
            .await
            .expect("the second read panics the task");
        assert!(err.contains("adapter stopped"), "{err}");

        let exit = t.exits().await;
        assert!(exit.why.contains("simulated fault"), "{}", exit.why);
        t.gw.on_adapter_exit(exit).await;
        let dev = &t.gw.devices[&id];
        assert!(dev.adapter.is_none());
        match &dev.reach {
            Some(Reachability::Unreachable(r)) => {
                assert_eq!(
                    r.public(),
                    "the device's adapter failed and is being restarted"
                );
                assert!(r.detailed().contains("panicked"), "{r:?}");
            }
            other => panic!("{other:?}"),
        }
        let due = t.gw.restarts.next().unwrap() - Instant::now();
        assert!(due <= RESTART_MIN * 12 / 10, "{due:?}");

        // not yet due: nothing restarts
        t.gw.restart_due().await;
        assert!(t.gw.devices[&id].adapter.is_none());
        tokio::time::sleep(due).await;
        t.gw.restart_due().await;
        let second = t.gw.devices[&id].adapter.as_ref().unwrap().generation;
        assert_ne!(first, second);
        assert_eq!(
            read_level(&mut t, 3).await,
            None,
            "served again after the restart"
        );

        // the next failure waits longer
        assert!(read_level(&mut t, 4).await.is_some());
        let exit = t.exits().await;
        t.gw.on_adapter_exit(exit).await;
        let due = t.gw.restarts.next().unwrap() - Instant::now();
        assert!(
            due > RESTART_MIN * 8 / 10 * 2 - Duration::from_millis(50),
            "{due:?}"
        );
    }
}
