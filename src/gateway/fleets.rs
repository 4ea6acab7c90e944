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
        self.devices.get(node).filter(|d| !d.cfg.discovers)
    }

    /// Where `dev`'s read and write requests go: its adapter, or its entry's.
    pub(super) fn requests_of(&self, dev: &Device) -> Option<mpsc::Sender<AdapterRequest>> {
        let owner = match &dev.member_of {
            Some(entry) => self.devices.get(entry)?,
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
        let saved =
            tokio::task::spawn_blocking(move || discovered::save(&dir, &snapshot)).await;
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
