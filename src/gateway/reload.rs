//! SIGHUP: the new configuration applied without restarting what did not change.

use std::collections::BTreeMap;
use std::time::Duration;

use fieldgate_api::DeviceId;
use xmpp_parsers::jid::BareJid;

use super::{release_free_memory, Gateway};
use crate::access::{self, Right};
use crate::config::DeviceConfig;

impl Gateway {
    pub(super) async fn reload(&mut self) {
        let path = self.cfg.path.clone();
        let new = match crate::config::load(&path) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "reload refused: keeping the running configuration");
                return;
            }
        };
        if new.xmpp != self.cfg.xmpp {
            if new.xmpp.domain != self.cfg.xmpp.domain {
                // Every device JID, roster entry and subscription hangs off the domain.
                tracing::warn!(running = %self.cfg.xmpp.domain, configured = %new.xmpp.domain,
                    "[xmpp].domain changed: takes effect after a restart");
            }
            let mut xmpp = new.xmpp.clone();
            xmpp.domain = self.cfg.xmpp.domain.clone();
            if xmpp != self.cfg.xmpp {
                if self.link_up {
                    self.withdraw_all("gateway reconnecting with new settings")
                        .await;
                }
                tracing::info!("[xmpp] changed: reconnecting the component link");
                for dev in self.devices.values_mut() {
                    dev.full = format!("{}/{}", dev.bare, xmpp.resource);
                }
                self.cfg.xmpp = xmpp.clone();
                self.link_settings.send_replace(xmpp);
            }
        }
        if new.state_dir != self.cfg.state_dir {
            tracing::warn!("[state] changed: the new directory takes effect after a restart");
        }
        let old: BTreeMap<DeviceId, DeviceConfig> = self
            .devices
            .iter()
            .map(|(k, v)| (k.clone(), v.cfg.clone()))
            .collect();
        let wanted: BTreeMap<DeviceId, DeviceConfig> = new
            .devices
            .iter()
            .map(|d| (d.id.clone(), d.clone()))
            .collect();
        let (mut added, mut removed, mut changed) = (0, 0, 0);
        let mut stopping = Vec::new();
        for id in old.keys() {
            match wanted.get(id) {
                None => {
                    stopping.extend(
                        self.remove_device(id, "device removed from configuration")
                            .await,
                    );
                    removed += 1;
                }
                Some(cfg) if cfg != &old[id] => {
                    stopping.extend(self.remove_device(id, "device reconfigured").await);
                    changed += 1;
                }
                Some(_) => {}
            }
        }
        self.cfg.access = new.access.clone();
        self.cfg.readout = new.readout.clone();
        self.cfg.events = new.events.clone();
        // A device without a max_age of its own follows [readout].max_age.
        for dev in self.devices.values_mut() {
            dev.max_age = dev.cfg.max_age.unwrap_or(self.cfg.readout.max_age);
        }
        self.cfg.devices = new.devices.clone();
        for d in &new.devices {
            if !self.devices.contains_key(&d.id) {
                if !old.contains_key(&d.id) {
                    added += 1;
                }
                self.add_device(d.clone());
            }
        }
        // Keep disco#items in file order.
        self.order = new.devices.iter().map(|d| d.id.clone()).collect();
        self.runtimes.retain(self.devices.values().map(|d| &d.cfg));
        for t in stopping {
            let _ = tokio::time::timeout(Duration::from_secs(2), t).await;
        }
        self.enforce_access().await;
        release_free_memory();
        tracing::info!(
            added,
            removed,
            changed,
            devices = self.order.len(),
            "configuration reloaded"
        );
    }

    /// Withdraws subscriptions that the (new) access policy no longer admits.
    pub(super) async fn enforce_access(&mut self) {
        let mut revoked = Vec::new();
        for (id, subs) in &self.subscribers {
            let Some(dev) = self.devices.get(id.as_str()) else {
                continue;
            };
            for s in subs {
                let admitted = BareJid::new(s).is_ok_and(|j| {
                    access::check(&self.cfg.access, &dev.cfg.access, Right::Subscribe, &j).is_ok()
                });
                if !admitted {
                    revoked.push((dev.cfg.id.clone(), s.clone()));
                }
            }
        }
        for (id, who) in revoked {
            self.revoke(&id, &who).await;
        }
        self.enforce_read_access();
    }
}

#[cfg(all(test, feature = "sim"))]
mod tests {
    use std::time::Duration;

    use super::super::testing::{device, gateway};

    #[tokio::test]
    async fn a_reload_applies_readout_events_and_max_age() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = gateway(&format!(
            "{}[[device]]\nid = \"own\"\nadapter = \"sim\"\nmax_age = \"7s\"\n",
            device("pump")
        ));
        let path = dir.path().join("gw.toml");
        let new = format!(
            "[xmpp]\nserver = \"127.0.0.1:5347\"\ndomain = \"{}\"\nsecret = \"s\"\n\
             [state]\ndir = \"/nonexistent-test-state\"\n\
             [readout]\nmax_age = \"3s\"\nmax_per_requester = 2\n\
             [events]\nmax_per_requester = 1\nsample_interval = \"5s\"\n{}\
             [[device]]\nid = \"own\"\nadapter = \"sim\"\nmax_age = \"7s\"\n",
            super::super::testing::DOMAIN,
            device("pump")
        );
        std::fs::write(&path, new).unwrap();
        t.gw.cfg.path = path;
        t.gw.reload().await;
        assert_eq!(t.gw.cfg.readout.max_per_requester, 2);
        assert_eq!(t.gw.cfg.events.max_per_requester, 1);
        assert_eq!(t.gw.cfg.events.sample_interval, Duration::from_secs(5));
        // a device without a max_age of its own follows [readout]; one with keeps its own
        assert_eq!(t.gw.devices["pump"].max_age, Duration::from_secs(3));
        assert_eq!(t.gw.devices["own"].max_age, Duration::from_secs(7));
    }
}
