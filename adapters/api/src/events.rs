//! What adapters report to the core: readings and reachability.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};

use crate::{DeviceId, Reading, Reason};

/// Whether the core can reach a device through its bus. Drives the device's presence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reachability {
    /// The bus answers.
    Reachable,
    /// The device cannot be reached; the reason's public text becomes the presence
    /// status, seen by every subscriber.
    Unreachable(Reason),
}

/// What happened to a device.
#[derive(Debug, Clone, PartialEq)]
pub enum EventKind {
    /// New values, one per field, typically one poll cycle's worth: batching keeps a
    /// device with thousands of fields to one queue entry per cycle.
    Readings(Vec<Reading>),
    /// The device became reachable or unreachable.
    Reachability(Reachability),
    /// A device entry that discovers its members (one written entry standing for many
    /// devices, see [`AdapterKind::discovers`]) found a new one: `id` becomes a device
    /// of its own with the entry's catalogue, and the adapter serves its requests. The
    /// event's `device` is the entry.
    ///
    /// [`AdapterKind::discovers`]: crate::AdapterKind::discovers
    Discovered {
        /// The new member's device id.
        id: DeviceId,
        /// What the adapter found it by (a topic segment), handed back on restart.
        name: String,
        /// Where the core says whether it took the member: an id that another device
        /// already has, or that is no JID localpart, is refused.
        verdict: Verdict,
    },
}

/// Where the core's answer to a discovery goes, until it is given.
type Answer = Arc<Mutex<Option<oneshot::Sender<Result<(), String>>>>>;

/// The core's answer to a discovery: `Ok` when the member is a device now, or why not.
#[derive(Debug, Clone)]
pub struct Verdict(Answer);

impl Verdict {
    /// A verdict to hand to the core, and where its answer arrives.
    pub fn new() -> (Verdict, oneshot::Receiver<Result<(), String>>) {
        let (tx, rx) = oneshot::channel();
        (Verdict(Arc::new(Mutex::new(Some(tx)))), rx)
    }

    /// Gives the answer (once; later answers are ignored).
    pub fn give(&self, result: Result<(), String>) {
        if let Some(tx) = self.0.lock().ok().and_then(|mut g| g.take()) {
            let _ = tx.send(result);
        }
    }
}

impl PartialEq for Verdict {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

/// One event from an adapter about one device.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceEvent {
    /// The device concerned.
    pub device: DeviceId,
    /// What happened.
    pub kind: EventKind,
}

/// The adapter's end of the bounded event queue into the core.
///
/// Reachability changes wait for room (they must never be lost, or presence would lie);
/// readings are dropped when the queue is full, and every drop is counted and logged,
/// because a newer reading will follow and stalling the bus poller would be worse.
#[derive(Debug, Clone)]
pub struct EventSink {
    tx: mpsc::Sender<DeviceEvent>,
    dropped: Arc<AtomicU64>,
}

impl EventSink {
    /// Wraps the sending half of the core's event queue.
    pub fn new(tx: mpsc::Sender<DeviceEvent>, dropped: Arc<AtomicU64>) -> Self {
        EventSink { tx, dropped }
    }

    /// Reports a reachability change, waiting for room in the queue.
    /// Returns false when the core has gone away (shutdown).
    pub async fn reachability(&self, device: &DeviceId, state: Reachability) -> bool {
        self.tx
            .send(DeviceEvent {
                device: device.clone(),
                kind: EventKind::Reachability(state),
            })
            .await
            .is_ok()
    }

    /// Reports that the device entry `entry` discovered the member `id`, and waits for
    /// the core's verdict: `Ok` once the member is a device, or why it was refused.
    pub async fn discovered(
        &self,
        entry: &DeviceId,
        id: DeviceId,
        name: String,
    ) -> Result<(), String> {
        let (verdict, answer) = Verdict::new();
        let ev = DeviceEvent {
            device: entry.clone(),
            kind: EventKind::Discovered { id, name, verdict },
        };
        if self.tx.send(ev).await.is_err() {
            return Err("the gateway is shutting down".into());
        }
        answer
            .await
            .unwrap_or_else(|_| Err("the gateway is shutting down".into()))
    }

    /// Reports a batch of readings, waiting for room in the queue: for buses that must
    /// not lose what they were handed (an MQTT message is acknowledged to the broker only
    /// once its values are in the core). Returns false when the core has gone away.
    pub async fn deliver(&self, device: &DeviceId, readings: Vec<Reading>) -> bool {
        if readings.is_empty() {
            return true;
        }
        self.tx
            .send(DeviceEvent {
                device: device.clone(),
                kind: EventKind::Readings(readings),
            })
            .await
            .is_ok()
    }

    /// Reports one reading; see [`EventSink::readings`].
    pub fn reading(&self, device: &DeviceId, reading: Reading) {
        self.readings(device, vec![reading]);
    }

    /// Reports a batch of readings without waiting; a full queue drops the batch
    /// (counted, logged).
    pub fn readings(&self, device: &DeviceId, readings: Vec<Reading>) {
        if readings.is_empty() {
            return;
        }
        let event = DeviceEvent {
            device: device.clone(),
            kind: EventKind::Readings(readings),
        };
        if let Err(mpsc::error::TrySendError::Full(ev)) = self.tx.try_send(event) {
            let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            // Log the first drop and then every power of two, so a long overload is
            // visible without flooding the journal.
            if n.is_power_of_two() {
                tracing::warn!(device = %ev.device, dropped_total = n,
                    "core event queue full: readings dropped");
            }
        }
    }

    /// How many reading batches were dropped so far because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Value;
    use std::time::SystemTime;

    #[tokio::test]
    async fn full_queue_drops_readings_and_counts_them() {
        let (tx, mut rx) = mpsc::channel(1);
        let sink = EventSink::new(tx, Arc::default());
        let dev: DeviceId = "pump3".into();
        let r = Reading::new("p", Value::Int(1), SystemTime::now());
        sink.reading(&dev, r.clone());
        sink.reading(&dev, r.clone());
        sink.reading(&dev, r);
        assert_eq!(sink.dropped(), 2);
        assert!(rx.recv().await.is_some());
        assert!(sink.reachability(&dev, Reachability::Reachable).await);
    }
}
