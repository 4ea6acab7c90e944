//! What the actor's tasks (readouts, writes, event samples) report back, and what the
//! actor does with it: cache the fresh values, release the reply, evaluate subscriptions.

use std::time::Instant;

use fieldgate_api::{DeviceId, Reading, Reason};
use tokio_xmpp::minidom::Element;

use super::Gateway;

/// What a finished task reports to the actor.
pub(super) enum Done {
    /// A readout ended (or was cancelled).
    Readout {
        key: (String, u64),
        device: DeviceId,
        fresh: Vec<Reading>,
        error: Option<Reason>,
    },
    /// A write was applied (or failed): the written fields' cached values are stale.
    Write {
        requester: String,
        device: DeviceId,
        fields: Vec<String>,
        /// The iq reply, sent once the cache no longer holds the old values.
        reply: Option<Element>,
    },
    /// The events sampler read a device.
    Sample {
        device: DeviceId,
        fresh: Vec<Reading>,
        error: Option<Reason>,
    },
    /// History read a device that reports only when asked.
    Kept {
        device: DeviceId,
        fresh: Vec<Reading>,
        error: Option<Reason>,
    },
}

impl Gateway {
    pub(super) async fn on_done(&mut self, done: Done) {
        match done {
            Done::Readout {
                key,
                device,
                fresh,
                error,
            } => {
                self.end_session(&key);
                self.absorb(&device, fresh, error).await;
            }
            Done::Write {
                requester,
                device,
                fields,
                reply,
            } => {
                self.writes_per_requester.give_back(&requester);
                if let Some(dev) = self.devices.get_mut(&device) {
                    let now = Instant::now();
                    for f in fields {
                        dev.cache.remove(f.as_str());
                        // A read taken before the write may still be on its way.
                        dev.written.insert(f.into(), now);
                    }
                }
                // A device that reports only when asked is read again for its
                // subscribers to see the effect of the write; a polled one shows it at
                // its next poll.
                if self
                    .devices
                    .get(&device)
                    .is_some_and(|d| d.cfg.reporting == fieldgate_api::Reporting::OnRequest)
                {
                    self.start_sample(&device);
                }
                if let Some(r) = reply {
                    self.send(r).await;
                }
            }
            Done::Sample {
                device,
                fresh,
                error,
            } => {
                if let Some(dev) = self.devices.get_mut(&device) {
                    dev.sampling = false;
                }
                // Even a failed read is evaluated: a `maxInterval` event waiting for it
                // goes out with the last values known.
                let nothing = fresh.is_empty();
                self.absorb(&device, fresh, error).await;
                if nothing {
                    self.evaluate_subscriptions(&device, false).await;
                }
            }
            Done::Kept {
                device,
                fresh,
                error,
            } => {
                if let Some(dev) = self.devices.get_mut(&device) {
                    dev.keeping = false;
                }
                self.absorb(&device, fresh, error).await;
            }
        }
    }

    pub(super) async fn absorb(
        &mut self,
        device: &DeviceId,
        fresh: Vec<Reading>,
        error: Option<Reason>,
    ) {
        let Some(dev) = self.devices.get_mut(device) else {
            return;
        };
        if error.is_some() {
            dev.last_error = error;
        }
        let any = !fresh.is_empty();
        let mut records = Vec::new();
        let now = Instant::now();
        for r in fresh {
            if let Some(k) = dev.kept.as_mut() {
                records.extend(k.offer(&r, now));
            }
            dev.remember(r);
        }
        if let Some(h) = &self.history {
            h.recorder.record(records);
        }
        if any && self.subscriptions.watch(device) {
            self.evaluate_subscriptions(device, false).await;
        }
    }
}

#[cfg(all(test, feature = "sim"))]
mod tests {
    use std::time::{Duration, Instant, SystemTime};

    use fieldgate_api::{Reading, Value};

    use super::super::testing::{device, gateway, ALICE};
    use super::*;

    fn setpoint(v: f64, stamp: SystemTime) -> Reading {
        Reading::new("setpoint", Value::Double(v), stamp)
    }

    #[tokio::test]
    async fn writes_order_readings_by_the_monotonic_clock() {
        let mut t = gateway(&device("pump"));
        let id: DeviceId = "pump".into();
        let hour = Duration::from_secs(3600);
        // A read that overlapped the write: taken before it, arriving after it.
        let overlapped = setpoint(1.0, SystemTime::now());
        tokio::time::sleep(Duration::from_millis(2)).await;
        t.gw.on_done(Done::Write {
            requester: ALICE.into(),
            device: id.clone(),
            fields: vec!["setpoint".into()],
            reply: None,
        })
        .await;
        t.gw.absorb(&id, vec![overlapped], None).await;
        let cached = |t: &super::super::testing::TestGateway| {
            t.gw.devices[&id]
                .cache
                .get("setpoint")
                .map(|r| r.value.clone())
        };
        assert_eq!(cached(&t), None, "a value older than the write is dropped");
        // The wall clock stepped back an hour after the write: a reading taken now is
        // stamped before the write by the wall clock, but it is newer, and must be kept.
        let after_step = setpoint(7.5, SystemTime::now() - hour);
        assert!(after_step.taken > Instant::now() - Duration::from_secs(1));
        t.gw.absorb(&id, vec![after_step], None).await;
        assert_eq!(cached(&t), Some(Value::Double(7.5)));
        // The write no longer holds anything back once a newer value arrived.
        assert!(t.gw.devices[&id].written.is_empty());
    }
}
