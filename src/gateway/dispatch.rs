//! Routes the IoT payloads addressed to a device (XEP-0323 readouts, XEP-0325 control, IoT
//! events) to their handlers, and forgets a requester or a device everywhere at once.

use std::collections::HashSet;

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

/// The iq type an IoT payload travels in (XEP-0323, XEP-0325, IoT events): only a
/// control `set` changes anything; `None` for a payload that is not one of them.
fn iq_type_of(ns: &str, name: &str) -> Option<&'static str> {
    match (ns, name) {
        (ctl_ns::NS, "set") => Some("set"),
        (sd_ns::NS, "req" | "cancel")
        | (ctl_ns::NS, "getForm")
        | (ev_ns::NS, "subscribe" | "unsubscribe") => Some("get"),
        _ => None,
    }
}

impl Gateway {
    /// Handles IoT payloads addressed to a visible device; false when `payload` is none.
    pub(super) async fn on_iot_iq(&mut self, h: &Header, id: &DeviceId, payload: &Element) -> bool {
        let ns = payload.ns();
        let Some(wanted) = iq_type_of(&ns, payload.name()) else {
            return false;
        };
        if h.type_.as_deref() != Some(wanted) {
            // A `set` in an iq get would change the device where the sender only asked.
            let text = format!(
                "<{} xmlns='{ns}'/> goes in an iq of type {wanted}",
                payload.name()
            );
            self.send(bad_request(h, &text)).await;
            return true;
        }
        let reply = match (ns.as_str(), payload.name()) {
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
            (ev_ns::NS, "subscribe") => {
                let (reply, started) = self.on_subscribe(h, id, payload);
                // The `accepted` result goes first, then any event it starts.
                self.send(reply).await;
                if let Some(key) = started {
                    self.start_subscription(&key).await;
                }
                return true;
            }
            (ev_ns::NS, "unsubscribe") => match Unsubscribe::try_from(payload) {
                Ok(u) => {
                    self.unsubscribe(&(h.from.to_string(), u.seqnr));
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
        let subs = self.subscriptions.retain(|k, _| k.0 != who).len();
        self.outbox.forget(who);
        for k in &keys {
            self.end_session(k);
        }
        if !keys.is_empty() || subs > 0 {
            tracing::info!(requester = %who, reason = why, readouts = keys.len(), subscriptions = subs,
                "requester gone: its readouts and subscriptions ended");
        }
    }

    /// Ends the readouts and subscriptions concerning devices being removed, in one pass
    /// over each (a reload may remove thousands).
    pub(super) fn forget_devices(&mut self, gone: &HashSet<DeviceId>) {
        let keys: Vec<_> = self
            .sessions
            .iter()
            .filter(|(_, s)| gone.contains(&s.device))
            .map(|(k, _)| k.clone())
            .collect();
        for k in &keys {
            self.end_session(k);
        }
        self.subscriptions.retain(|_, s| !gone.contains(&s.device));
    }
}

#[cfg(all(test, feature = "sim"))]
mod tests {
    use super::super::testing::gateway;
    use super::*;

    #[tokio::test]
    async fn a_payload_in_the_wrong_iq_type_is_refused() {
        use super::super::testing::{condition, device, el, iq, ALICE};
        use crate::xmpp::link::Outbound;

        let mut t = gateway(&device("pump"));
        let id: DeviceId = "pump".into();
        let set = el(&format!(
            "<set xmlns='{}'><double name='setpoint' value='5'/></set>",
            ctl_ns::NS
        ));
        let req = el(&format!(
            "<req xmlns='{}' seqnr='1' momentary='true'/>",
            sd_ns::NS
        ));
        for (type_, payload) in [("get", &set), ("set", &req)] {
            assert!(
                t.gw.on_iot_iq(&iq(type_, ALICE, "pump"), &id, payload)
                    .await
            );
            let Ok(Outbound::One(reply)) = t.out.try_recv() else {
                panic!("one reply")
            };
            assert_eq!(condition(&reply).as_deref(), Some("bad-request"), "{type_}");
        }
        // nothing was written or started
        assert!(t.gw.tasks.is_empty());
        assert!(t.gw.sessions.is_empty());
    }

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
