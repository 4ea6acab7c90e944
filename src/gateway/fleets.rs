//! Entries that stand for the devices their adapter discovers (an MQTT topic pattern whose
//! wildcard names the device): the entry has no JID; each member it reports becomes a
//! device with the entry's catalogue and policy, served by the entry's adapter, and is
//! remembered in the state directory so that it is back right after a restart.

use std::time::Instant;

use fieldgate_api::{AdapterRequest, DeviceId, Reachability};
use tokio::sync::mpsc;
use xmpp_parsers::jid::BareJid;

use super::{Device, Gateway};
use crate::discovered::{self, Member};

impl Gateway {
    /// The device whose JID has localpart `node`; entries that discover have none.
    pub(super) fn device_at(&self, node: &str) -> Option<&Device> {
        self.devices
            .get(node)
            .map(|d| &**d)
            .filter(|d| !d.cfg.discovers)
    }

    /// Where `dev`'s read and write requests go: its adapter, or its entry's.
    pub(super) fn requests_of(&self, dev: &Device) -> Option<mpsc::Sender<AdapterRequest>> {
        let owner = match &dev.member_of {
            Some(entry) => &**self.devices.get(entry)?,
            None => dev,
        };
        owner.adapter.as_ref().map(|a| a.requests.clone())
    }

    /// Makes the remembered members of `entry` devices (those that are not yet) and hands
    /// them all to its adapter.
    pub(super) fn add_members(&mut self, entry: &DeviceId) {
        let members = self.discovered.get(&**entry).cloned().unwrap_or_default();
        for m in &members {
            if !self.devices.contains_key(m.id.as_str()) {
                self.add_member(entry, m.id.as_str().into(), &m.name);
            }
        }
        self.adopt(entry, members);
    }

    /// Hands remembered members to `entry`'s (re)started adapter.
    pub(super) fn adopt(&mut self, entry: &DeviceId, members: Vec<Member>) {
        let Some(dev) = self.devices.get(entry) else {
            return;
        };
        let Some(tx) = self.requests_of(dev) else {
            return;
        };
        if members.is_empty() {
            return;
        }
        // A task, so that thousands of members do not hold the actor while the adapter
        // takes them.
        while self.stopping.try_join_next().is_some() {}
        self.stopping.spawn(async move {
            for m in members {
                let req = AdapterRequest::Adopt {
                    device: m.id.into(),
                    name: m.name,
                };
                if tx.send(req).await.is_err() {
                    break;
                }
            }
        });
    }

    /// A device made from `entry`'s configuration.
    fn add_member(&mut self, entry: &DeviceId, id: DeviceId, name: &str) {
        let Some(e) = self.devices.get(entry) else {
            return;
        };
        let mut cfg = e.cfg.clone();
        cfg.id = id.clone();
        cfg.name = name.to_owned();
        cfg.discovers = false;
        self.order.push(id);
        self.insert_device(cfg, None, None, Some(entry.clone()));
    }

    /// `entry`'s adapter found member `id`: the member becomes a device, announced to
    /// nobody yet (it has no subscribers), and is remembered.
    pub(super) async fn on_discovered(
        &mut self,
        entry: &DeviceId,
        id: DeviceId,
        name: String,
    ) -> Result<(), String> {
        match self.devices.get(entry) {
            Some(e) if e.cfg.discovers => {}
            _ => return Err("the entry is gone (reconfigured or removed)".into()),
        }
        if let Some(d) = self.devices.get(&id) {
            if d.member_of.as_ref() == Some(entry) {
                return Ok(());
            }
            let why = format!("the device id {id:?} is already taken");
            tracing::warn!(entry = %entry, device = %id, name = %name, "discovered device refused: {why}");
            return Err(why);
        }
        match BareJid::new(&format!("{id}@{}", self.cfg.xmpp.domain)) {
            Ok(j) if j.node().map(|n| n.as_str()) == Some(&*id) => {}
            _ => {
                let why = format!("{id:?} is not a JID localpart in normal form");
                tracing::warn!(entry = %entry, name = %name, "discovered device refused: {why}");
                return Err(why);
            }
        }
        tracing::info!(entry = %entry, device = %id, name = %name, "device discovered");
        self.add_member(entry, id.clone(), &name);
        self.discovered
            .entry(entry.to_string())
            .or_default()
            .push(Member {
                id: id.to_string(),
                name,
            });
        self.discovered_changed();
        Ok(())
    }

    /// Schedules a write of the discovered members, unless one is scheduled.
    fn discovered_changed(&mut self) {
        if self.discovered_save.is_none() {
            self.discovered_save = Some(Instant::now() + discovered::SAVE_DELAY);
        }
    }

    /// Writes the discovered members; a failure is logged and retried later (the members
    /// are devices meanwhile, they are only not remembered yet).
    pub(super) async fn save_discovered(&mut self) {
        self.discovered_save = None;
        let dir = self.cfg.state_dir.clone();
        let snapshot = self.discovered.clone();
        let saved = tokio::task::spawn_blocking(move || discovered::save(&dir, &snapshot)).await;
        match saved {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::error!(error = %e, dir = %self.cfg.state_dir.display(),
                    "discovered devices could not be saved; retrying in a minute");
                self.discovered_save = Some(Instant::now() + std::time::Duration::from_secs(60));
            }
            Err(e) => tracing::error!(error = %e, "saving discovered devices failed"),
        }
    }

    /// After a reload: forgets the members of entries no longer configured, and puts the
    /// devices in order (configured ones in file order, then each entry's members in the
    /// order they were found).
    pub(super) fn settle_members(&mut self) {
        let before = self.discovered.len();
        let devices = &self.devices;
        self.discovered
            .retain(|entry, _| devices.get(entry.as_str()).is_some_and(|d| d.cfg.discovers));
        if self.discovered.len() != before {
            self.discovered_changed();
        }
        let mut order: Vec<DeviceId> = self
            .cfg
            .devices
            .iter()
            .filter(|d| !d.discovers)
            .map(|d| d.id.clone())
            .collect();
        for d in self.cfg.devices.iter().filter(|d| d.discovers) {
            for m in self.discovered.get(&*d.id).into_iter().flatten() {
                if let Some((id, _)) = self.devices.get_key_value(m.id.as_str()) {
                    order.push(id.clone());
                }
            }
        }
        self.order = order;
    }

    /// `entry`'s adapter stopped: its members cannot be reached either.
    pub(super) async fn members_unreachable(&mut self, entry: &DeviceId, why: Reachability) {
        let members: Vec<DeviceId> = self
            .devices
            .iter()
            .filter(|(_, d)| d.member_of.as_ref() == Some(entry))
            .map(|(id, _)| id.clone())
            .collect();
        for id in members {
            self.on_event(fieldgate_api::DeviceEvent {
                device: id,
                kind: fieldgate_api::EventKind::Reachability(why.clone()),
            })
            .await;
        }
    }
}

#[cfg(all(test, feature = "sim", feature = "mqtt"))]
mod tests {
    use fieldgate_api::DeviceId;

    use super::super::testing::{device, gateway, DOMAIN};
    use crate::discovered::Member;

    /// An entry that discovers its devices, on a broker nobody listens on: its adapter
    /// runs; the discoveries are handed to the actor by hand.
    fn fleet(topic: &str) -> String {
        format!(
            "[[mqtt.broker]]\nname = \"b\"\nhost = \"127.0.0.1\"\nport = 9\n\
             [[device]]\nid = \"fleet\"\nadapter = \"mqtt\"\n[device.mqtt]\nbroker = \"b\"\n\
             topic = \"{topic}\"\ndiscover = true\nformat = \"json\"\n\
             [[device.field]]\nname = \"t\"\ntype = \"double\"\n"
        )
    }

    #[tokio::test]
    async fn a_discovered_member_is_a_device_served_by_its_entry_and_remembered() {
        let mut t = gateway(&(device("pump") + &fleet("f/+/t")));
        let entry: DeviceId = "fleet".into();
        assert!(t.gw.device_at("fleet").is_none(), "the entry has no JID");
        assert!(!t.gw.order.contains(&entry));
        let r =
            t.gw.on_discovered(&entry, "kitchen".into(), "Kitchen".into())
                .await;
        assert_eq!(r, Ok(()));
        let kitchen = t.gw.device_at("kitchen").expect("a device now");
        assert_eq!(kitchen.cfg.name, "Kitchen");
        assert_eq!(kitchen.cfg.fields, t.gw.devices[&entry].cfg.fields);
        let own = t.gw.requests_of(kitchen).expect("its entry's adapter");
        let entry_tx = t.gw.devices[&entry]
            .adapter
            .as_ref()
            .unwrap()
            .requests
            .clone();
        assert!(own.same_channel(&entry_tx));
        assert_eq!(t.gw.order.last(), Some(&DeviceId::from("kitchen")));
        assert_eq!(
            t.gw.discovered["fleet"],
            [Member {
                id: "kitchen".into(),
                name: "Kitchen".into()
            }]
        );
        assert!(t.gw.discovered_save.is_some(), "a save is scheduled");
        // found again (the adapter restarted): fine, nothing new
        let again =
            t.gw.on_discovered(&entry, "kitchen".into(), "Kitchen".into())
                .await;
        assert_eq!(again, Ok(()));
        assert_eq!(t.gw.discovered["fleet"].len(), 1);
        // an id another device has, or that is no localpart, is refused
        let taken =
            t.gw.on_discovered(&entry, "pump".into(), "Pump".into())
                .await;
        assert!(taken.unwrap_err().contains("already taken"));
        let bad = t.gw.on_discovered(&entry, "a@b".into(), "a@b".into()).await;
        assert!(bad.is_err());
        assert!(!t.gw.devices.contains_key("a@b"));
        // only an entry that discovers may report members
        let pump: DeviceId = "pump".into();
        let r =
            t.gw.on_discovered(&pump, "other".into(), "other".into())
                .await;
        assert!(r.is_err());
    }

    #[tokio::test]
    async fn members_follow_their_entry_across_reloads() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = gateway(&(device("pump") + &fleet("f/+/t")));
        let entry: DeviceId = "fleet".into();
        for name in ["a", "b"] {
            let r = t.gw.on_discovered(&entry, name.into(), name.into()).await;
            assert_eq!(r, Ok(()));
        }
        let path = dir.path().join("gw.toml");
        let write = |devices: String| {
            let text = format!(
                "[xmpp]\nserver = \"127.0.0.1:5347\"\ndomain = \"{DOMAIN}\"\nsecret = \"s\"\n\
                 [state]\ndir = \"/nonexistent-test-state\"\n{devices}"
            );
            std::fs::write(&path, text).unwrap();
        };
        t.gw.cfg.path = path.clone();
        // unchanged entry: its members stay, after the configured devices
        write(device("pump") + &fleet("f/+/t"));
        t.gw.reload().await;
        let order: Vec<&str> = t.gw.order.iter().map(|d| &**d).collect();
        assert_eq!(order, ["pump", "a", "b"]);
        // a reconfigured entry: its members are made again from its new configuration
        write(device("pump") + &fleet("g/+/t"));
        t.gw.reload().await;
        assert!(t.gw.device_at("a").is_some() && t.gw.device_at("b").is_some());
        assert_eq!(t.gw.devices["a"].member_of.as_deref(), Some("fleet"));
        // the entry removed: its members go, and are forgotten
        write(device("pump"));
        t.gw.reload().await;
        assert!(t.gw.device_at("a").is_none() && t.gw.device_at("b").is_none());
        assert!(t.gw.discovered.is_empty());
        let order: Vec<&str> = t.gw.order.iter().map(|d| &**d).collect();
        assert_eq!(order, ["pump"]);
    }
}
