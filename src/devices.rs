//! Running a device's adapter: built by its kind's runtime (found through the registry),
//! started in a task of its own with the device's span.

use std::collections::HashMap;

use fieldgate_api::{AdapterContext, AdapterRequest, DeviceSetup, EventSink, KindRuntime};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::adapters;
use crate::config::DeviceConfig;

/// Requests queued per device before the core waits: reads and writes are short.
const REQUEST_QUEUE: usize = 64;

/// A running adapter.
pub struct Running {
    /// Where read and write requests go.
    pub requests: mpsc::Sender<AdapterRequest>,
    /// Cancels this adapter alone.
    pub cancel: CancellationToken,
    /// The adapter task, awaited on removal and shutdown.
    pub task: JoinHandle<()>,
}

/// The runtime of each adapter kind in use: what its devices share (connections,
/// sessions, sockets), kept across reloads.
#[derive(Default)]
pub struct Runtimes {
    by_kind: HashMap<&'static str, Box<dyn KindRuntime>>,
}

impl Runtimes {
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
        let task = tokio::spawn(
            adapter
                .run(AdapterContext {
                    events,
                    requests: rx,
                    shutdown: cancel.clone(),
                })
                .instrument(span),
        );
        Ok(Running {
            requests: tx,
            cancel,
            task,
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
