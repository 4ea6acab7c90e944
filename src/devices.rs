//! Starting a device's adapter: the one place where the core picks a bus driver.

use fieldgate_api::{Adapter, AdapterContext, AdapterRequest, EventSink};
use fieldgate_sim::SimAdapter;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::{AdapterConfig, DeviceConfig};

/// Requests queued per device before the core waits: reads and writes are short.
const REQUEST_QUEUE: usize = 64;

/// A running adapter.
pub struct Running {
    /// Where read and write requests go.
    #[allow(dead_code)] // consumed by the sensor-data and control handlers
    pub requests: mpsc::Sender<AdapterRequest>,
    /// Cancels this adapter alone.
    pub cancel: CancellationToken,
    /// The adapter task, awaited on removal and shutdown.
    pub task: JoinHandle<()>,
}

/// Builds the adapter of `device` and starts it in a task with the device's span.
pub fn start(
    device: &DeviceConfig,
    events: EventSink,
    parent: &CancellationToken,
) -> Result<Running, String> {
    let adapter: Box<dyn Adapter> = match &device.adapter {
        AdapterConfig::Sim(sim) => Box::new(SimAdapter::new(
            device.id.clone(),
            sim.clone(),
            device
                .fields
                .iter()
                .map(|f| (f.spec.clone(), f.sim.clone()))
                .collect(),
        )?),
    };
    let (tx, rx) = mpsc::channel(REQUEST_QUEUE);
    let cancel = parent.child_token();
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
