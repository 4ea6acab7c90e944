//! Starting a device's adapter: the one place where the core picks a bus driver.

use std::collections::HashMap;

use fieldgate_api::{Adapter, AdapterContext, AdapterRequest, EventSink};
use fieldgate_modbus::{Bus, DeviceSettings, ModbusAdapter, ModbusConnection};
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

/// The running bus connections (Modbus), shared by the devices behind them.
#[derive(Default)]
pub struct Buses {
    running: HashMap<String, (ModbusConnection, Bus)>,
    tasks: Vec<JoinHandle<()>>,
}

impl Buses {
    /// The bus for `config`, started if it is not running with exactly this config.
    fn get(&mut self, config: &ModbusConnection, parent: &CancellationToken) -> Bus {
        if let Some((running, bus)) = self.running.get(&config.name) {
            if running == config {
                return bus.clone();
            }
        }
        let (bus, task) = Bus::spawn(config.clone(), parent.child_token());
        self.tasks.retain(|t| !t.is_finished());
        self.tasks.push(task);
        self.running
            .insert(config.name.clone(), (config.clone(), bus.clone()));
        bus
    }

    /// Forgets connections no configured device uses (any more, or in this version):
    /// their tasks end once the last device holding them has stopped.
    pub fn retain_used<'a>(&mut self, used: impl Iterator<Item = &'a ModbusConnection>) {
        let used: Vec<&ModbusConnection> = used.collect();
        self.running
            .retain(|_, (cfg, _)| used.iter().any(|u| *u == cfg));
    }

    /// Waits for every connection task (after the adapters were cancelled).
    pub async fn join(self, deadline: tokio::time::Instant) {
        drop(self.running);
        for t in self.tasks {
            let _ = tokio::time::timeout_at(deadline, t).await;
        }
    }
}

/// Builds the adapter of `device` and starts it in a task with the device's span.
pub fn start(
    device: &DeviceConfig,
    events: EventSink,
    parent: &CancellationToken,
    buses: &mut Buses,
) -> Result<Running, String> {
    let adapter: Box<dyn Adapter> = match &device.adapter {
        AdapterConfig::Sim(sim) => Box::new(SimAdapter::new(
            device.id.clone(),
            sim.device.clone(),
            device
                .fields
                .iter()
                .cloned()
                .zip(sim.generators.iter().cloned())
                .collect(),
        )?),
        AdapterConfig::Modbus(m) => {
            let bus = buses.get(&m.connection, parent);
            let settings = DeviceSettings {
                unit: m.device.unit,
                poll: m.device.poll.into(),
                read_back: m.device.read_back,
                write_multiple: m.device.write_multiple,
                limits: m.device.limits(),
            };
            Box::new(ModbusAdapter::new(
                device.id.clone(),
                settings,
                m.points.clone(),
                bus,
            )?)
        }
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
