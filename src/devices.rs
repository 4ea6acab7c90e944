//! Running a device's adapter: built by its kind's runtime (found through the registry),
//! started in a task of its own with the device's span, and watched: a task that panics
//! or ends without being asked to is reported to the actor as an [`Exit`], which marks
//! the device unavailable and restarts it with back-off (see `gateway::supervise`).

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use fieldgate_api::{
    AdapterContext, AdapterRequest, DeviceId, DeviceSetup, EventSink, KindRuntime,
};
use futures::FutureExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::adapters;
use crate::config::DeviceConfig;

/// Requests queued per device before the core waits: reads and writes are short.
const REQUEST_QUEUE: usize = 64;

/// Runs an adapter's future and reports its end on `exits` unless `cancel` asked for it.
/// A panic is caught here rather than left to the runtime, so that it becomes a report
/// (and a restart) instead of a task that silently stopped serving its devices.
async fn watch(
    run: futures::future::BoxFuture<'static, ()>,
    cancel: CancellationToken,
    exits: Option<mpsc::Sender<Exit>>,
    device: DeviceId,
    generation: u64,
) {
    let started = Instant::now();
    let outcome = AssertUnwindSafe(run).catch_unwind().await;
    if cancel.is_cancelled() {
        return;
    }
    let why = match outcome {
        Ok(()) => "ended on its own".to_owned(),
        Err(panic) => format!("panicked: {}", panic_message(panic.as_ref())),
    };
    if let Some(exits) = exits {
        // Fails only when the actor is gone, i.e. during shutdown: nothing to restart.
        let _ = exits
            .send(Exit {
                device,
                generation,
                why,
                ran: started.elapsed(),
            })
            .await;
    }
}

/// The text a panic was raised with, where it is one.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    if let Some(s) = panic.downcast_ref::<&str>() {
        s
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s
    } else {
        "(no message)"
    }
}

/// A running adapter.
pub struct Running {
    /// Where read and write requests go.
    pub requests: mpsc::Sender<AdapterRequest>,
    /// Cancels this adapter alone.
    pub cancel: CancellationToken,
    /// The adapter task, awaited on removal and shutdown.
    pub task: JoinHandle<()>,
    /// Tells this run from earlier ones of the same device in an [`Exit`].
    pub generation: u64,
}

/// An adapter task that ended without being cancelled: it panicked, or returned.
#[derive(Debug)]
pub struct Exit {
    /// The device whose adapter it was.
    pub device: DeviceId,
    /// The run that ended ([`Running::generation`]).
    pub generation: u64,
    /// What happened, for the log and for those holding the control right: a panic
    /// message can name anything.
    pub why: String,
    /// How long it had run.
    pub ran: Duration,
}

/// The runtime of each adapter kind in use: what its devices share (connections,
/// sessions, sockets), kept across reloads.
#[derive(Default)]
pub struct Runtimes {
    by_kind: HashMap<&'static str, Box<dyn KindRuntime>>,
    /// Where adapter tasks that end unexpectedly are reported.
    exits: Option<mpsc::Sender<Exit>>,
    generations: u64,
}

impl Runtimes {
    /// Runtimes whose adapters report unexpected ends on `exits`.
    pub fn new(exits: mpsc::Sender<Exit>) -> Self {
        Runtimes {
            exits: Some(exits),
            ..Runtimes::default()
        }
    }

    /// Builds the adapter of `device` and starts it in a task with the device's span.
    /// `root` parents the tasks of shared resources; the device gets a child token of
    /// its own.
    pub fn start(
        &mut self,
        device: &DeviceConfig,
        events: EventSink,
        root: &CancellationToken,
    ) -> Result<Running, String> {
        let kind = adapters::find(device.kind)
            .and_then(|r| r.kind)
            .ok_or_else(|| format!("adapter {:?} is not compiled in", device.kind))?;
        let runtime = self
            .by_kind
            .entry(kind.name())
            .or_insert_with(|| kind.runtime());
        let adapter = runtime.build(&device.id, &device.fields, &*device.setup, root)?;
        let (tx, rx) = mpsc::channel(REQUEST_QUEUE);
        let cancel = root.child_token();
        let span = tracing::info_span!("device", id = %device.id, adapter = adapter.kind());
        self.generations += 1;
        let generation = self.generations;
        let run = adapter.run(AdapterContext {
            events,
            requests: rx,
            shutdown: cancel.clone(),
        });
        let watched = watch(
            run,
            cancel.clone(),
            self.exits.clone(),
            device.id.clone(),
            generation,
        );
        let task = tokio::spawn(watched.instrument(span));
        Ok(Running {
            requests: tx,
            cancel,
            task,
            generation,
        })
    }

    /// After a reload: lets each kind drop the shared resources that no configured
    /// device uses any more.
    pub fn retain<'a>(&mut self, devices: impl Iterator<Item = &'a DeviceConfig>) {
        let mut setups: HashMap<&str, Vec<&dyn DeviceSetup>> = HashMap::new();
        for d in devices {
            setups.entry(d.kind).or_default().push(&*d.setup);
        }
        for (kind, runtime) in &mut self.by_kind {
            runtime.retain(setups.get(kind).map_or(&[], Vec::as_slice));
        }
    }

    /// Waits for every kind's shared tasks (after the adapters were cancelled), until
    /// `deadline` at most.
    pub async fn join(self, deadline: tokio::time::Instant) {
        for (_, runtime) in self.by_kind {
            let _ = tokio::time::timeout_at(deadline, runtime.join()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::future::BoxFuture;

    async fn exit_of(run: BoxFuture<'static, ()>, cancel: CancellationToken) -> Option<Exit> {
        let (tx, mut rx) = mpsc::channel(1);
        watch(run, cancel, Some(tx), "pump".into(), 7).await;
        rx.try_recv().ok()
    }

    #[tokio::test]
    async fn panics_and_unexpected_ends_are_reported_cancelled_ends_are_not() {
        let e = exit_of(
            async { panic!("register map exhausted") }.boxed(),
            CancellationToken::new(),
        )
        .await
        .expect("a panic is reported");
        assert_eq!((&*e.device, e.generation), ("pump", 7));
        assert_eq!(e.why, "panicked: register map exhausted");

        let e = exit_of(async {}.boxed(), CancellationToken::new())
            .await
            .expect("an end nobody asked for is reported");
        assert_eq!(e.why, "ended on its own");

        let cancel = CancellationToken::new();
        cancel.cancel();
        assert!(exit_of(async {}.boxed(), cancel).await.is_none());
    }
}
