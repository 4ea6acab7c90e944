//! Routes the IoT payloads addressed to a device (XEP-0323 readouts, XEP-0325 control, IoT
//! events) to their handlers, and forgets a requester or a device everywhere at once.

use fieldgate_api::DeviceId;
use tokio_xmpp::minidom::Element;

use super::replies::bad_request;
use super::Gateway;
use crate::access::{self, Right};
use crate::config::DeviceConfig;
use crate::xmpp::payload::events::Unsubscribe;
use crate::xmpp::payload::{control as ctl_ns, events as ev_ns, sensordata as sd_ns};
use crate::xmpp::stanza::Header;

/// The features a device adds to disco#info beyond the basics.
pub(super) fn features(cfg: &DeviceConfig) -> Vec<&'static str> {
    // Every device has status and identity fields, so every device can be read.
    let mut f = vec![sd_ns::NS];
    if !cfg.fields.is_empty() {
        f.push(ev_ns::NS);
    }
    if cfg.fields.iter().any(|f| f.writable) {
        f.push(ctl_ns::NS);
    }
    f
}

impl Gateway {
    /// Handles IoT payloads addressed to a visible device; false when `payload` is none.
    pub(super) async fn on_iot_iq(&mut self, h: &Header, id: &DeviceId, payload: &Element) -> bool {
        let reply = match (payload.ns().as_str(), payload.name()) {
            (sd_ns::NS, "req") => {
                let (replies, job) = self.on_req(h, id, payload);
                // The readout starts only once `accepted` is queued: the outbound queue is
                // FIFO, so the client always sees it before any <fields>. A readout done at
                // once goes out as one batch, `accepted` and `<fields>` in one write.
                let _ = self.out.send(replies.into()).await;
                if let Some(job) = job {
                    self.tasks.spawn(job);
                }
                return true;
            }
            (sd_ns::NS, "cancel") => self.on_cancel(h, payload),
            (ctl_ns::NS, "set") => match self.on_set(h, id, payload) {
                Ok(reply) => reply,
                Err(job) => {
                    self.start_write(job);
                    return true;
                }
            },
            (ctl_ns::NS, "getForm") => self.on_get_form(h, id, payload),
            (ev_ns::NS, "subscribe") => self.on_subscribe(h, id, payload),
            (ev_ns::NS, "unsubscribe") => match Unsubscribe::try_from(payload) {
                Ok(u) => {
                    self.subscriptions.remove(&(h.from.to_string(), u.seqnr));
                    h.result(None)
                }
                Err(e) => bad_request(h, &e.to_string()),
            },
            _ => return false,
        };
        self.send(reply).await;
        true
    }

    pub(super) fn refuse(&self, h: &Header, id: &DeviceId, right: Right) -> Option<String> {
        let dev = &self.devices[id];
        access::check(&self.cfg.access, &dev.cfg.access, right, &h.from.to_bare())
            .err()
            .inspect(|why| {
                tracing::info!(device = %id, from = %h.from, %right, reason = %why, "request refused");
            })
    }

    /// Ends every readout and subscription of a requester who went away.
    pub(super) fn forget_requester(&mut self, who: &str, why: &str) {
        let keys: Vec<_> = self
            .sessions
            .keys()
            .filter(|k| k.0 == who)
            .cloned()
            .collect();
        let subs_before = self.subscriptions.len();
        self.subscriptions.retain(|k, _| k.0 != who);
        let subs = subs_before - self.subscriptions.len();
        for k in &keys {
            self.end_session(k);
        }
        if !keys.is_empty() || subs > 0 {
            tracing::info!(requester = %who, reason = why, readouts = keys.len(), subscriptions = subs,
                "requester gone: its readouts and subscriptions ended");
        }
    }

    /// Ends the readouts and subscriptions concerning a device being removed.
    pub(super) fn forget_device(&mut self, id: &DeviceId) {
        let keys: Vec<_> = self
            .sessions
            .iter()
            .filter(|(_, s)| &s.device == id)
            .map(|(k, _)| k.clone())
            .collect();
        for k in &keys {
            self.end_session(k);
        }
        self.subscriptions.retain(|_, s| &s.device != id);
    }
}

#[cfg(all(test, feature = "sim"))]
mod tests {
    use super::super::testing::gateway;
    use super::*;

    #[tokio::test]
    async fn features_follow_the_catalogue() {
        let t = gateway(
            "[[device]]\nid = \"bare\"\nadapter = \"sim\"\n\
             [[device]]\nid = \"ro\"\nadapter = \"sim\"\n[[device.field]]\nname = \"a\"\ntype = \"int\"\n\
             [[device]]\nid = \"rw\"\nadapter = \"sim\"\n[[device.field]]\nname = \"a\"\ntype = \"int\"\nwritable = true\n",
        );
        let f = |id: &str| features(&t.gw.devices[id].cfg);
        assert_eq!(f("bare"), [sd_ns::NS]);
        assert_eq!(f("ro"), [sd_ns::NS, ev_ns::NS]);
        assert_eq!(f("rw"), [sd_ns::NS, ev_ns::NS, ctl_ns::NS]);
    }
}
