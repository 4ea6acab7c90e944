//! What the actor's tasks (readouts, writes, event samples) report back, and what the
//! actor does with it: cache the fresh values, release the reply, evaluate subscriptions.

use std::time::SystemTime;

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
                device,
                fields,
                reply,
            } => {
                if let Some(dev) = self.devices.get_mut(&device) {
                    let now = SystemTime::now();
                    for f in fields {
                        dev.cache.remove(f.as_str());
                        // A read taken before the write may still be on its way.
                        dev.written.insert(f, now);
                    }
                    // Sample soon so subscribers see the effect of the write.
                    dev.last_sample = None;
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
        for r in fresh {
            dev.remember(r);
        }
        if any {
            self.evaluate_subscriptions(device).await;
        }
    }
}
