//! What adapters report to the core: readings and reachability.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;

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
