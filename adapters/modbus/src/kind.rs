//! The `modbus` kind: `[[modbus.connection]]`, `[device.modbus]` and each field's
//! `modbus = { ... }` read into a setup per device; connections shared by the devices
//! on them and kept across reloads unless their configuration changed.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;

use fieldgate_api::config::{keys_of, section_with_list, ConfigIssue, ConfigNode, Spanned};
use fieldgate_api::{
    wrong_setup, Adapter, AdapterKind, DeviceId, DeviceInput, DeviceSetup, FieldSpec, KindRuntime,
    Reporting,
};
use futures::future::BoxFuture;
use futures::FutureExt;
use serde::Deserialize;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{
    Bus, DeviceSettings, ModbusAdapter, ModbusConnection, ModbusDevice, ModbusField, Point,
};

/// The `modbus` adapter kind, for the core's registry.
#[derive(Debug, Clone, Copy, Default)]
pub struct ModbusKind;

/// A Modbus device, resolved: its connection, its own section, and a decoder per field.
#[derive(Debug, Clone, PartialEq)]
pub struct ModbusSetup {
    /// The connection it is reached through (a copy: a changed connection changes the
    /// device, so a reload restarts it).
    pub connection: ModbusConnection,
    /// `[device.modbus]`.
    pub device: ModbusDevice,
    /// (field name, decoder) in field order, shared with the running adapter (the names
    /// are those its readings carry).
    pub points: Arc<[(Arc<str>, Point)]>,
}

/// The top-level `[modbus]` section.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Section {
    #[serde(default)]
    connection: Vec<ModbusConnection>,
}

impl AdapterKind for ModbusKind {
    fn name(&self) -> &'static str {
        "modbus"
    }

    fn configure(
        &self,
        section: Option<ConfigNode<'_>>,
        devices: &mut [DeviceInput<'_>],
    ) -> Result<Vec<Arc<dyn DeviceSetup>>, ConfigIssue> {
        let (parsed, tables) = section_with_list::<Section>(section.as_ref(), "connection")?;
        let mut connections: Vec<Spanned<ModbusConnection>> = Vec::new();
        for (i, c) in parsed.connection.into_iter().enumerate() {
            let span = tables.get(i).and_then(|t| t.span()).unwrap_or_default();
            let key = |k: &str| format!("modbus.connection[{i}].{k}");
            if let Err(e) = c.validate() {
                return Err(ConfigIssue::at(span, key(e.key()), e.to_string()));
            }
            if connections.iter().any(|o| o.get_ref().name == c.name) {
                return Err(ConfigIssue::at(
                    span,
                    key("name"),
                    format!("duplicate connection name {:?}", c.name),
                ));
            }
            connections.push(Spanned::new(span, c));
        }
        let connections: Vec<&Spanned<ModbusConnection>> = connections.iter().collect();
        devices
            .iter_mut()
            .map(|d| device(d, &connections))
            .collect()
    }

    fn runtime(&self) -> Box<dyn KindRuntime> {
        Box::new(Connections::default())
    }

    fn reporting(&self, setup: &dyn DeviceSetup) -> Reporting {
        match setup.as_any().downcast_ref::<ModbusSetup>() {
            Some(m) => Reporting::Polled(m.device.poll.into()),
            None => Reporting::OnRequest,
        }
    }

    fn options(&self) -> Vec<(&'static str, Vec<&'static str>)> {
        vec![
            ("modbus", keys_of::<Section>().to_vec()),
            ("modbus.connection", keys_of::<ModbusConnection>().to_vec()),
            ("device.modbus", keys_of::<ModbusDevice>().to_vec()),
            ("device.field.modbus", keys_of::<ModbusField>().to_vec()),
        ]
    }
}

/// Validates one device against the connections and resolves its fields into points.
fn device(
    d: &mut DeviceInput<'_>,
    connections: &[&Spanned<ModbusConnection>],
) -> Result<Arc<dyn DeviceSetup>, ConfigIssue> {
    let Some(options) = &d.options else {
        let msg = "adapter = \"modbus\" needs a [device.modbus] section (connection, unit, ...)";
        return Err(match d.span.clone() {
            Some(span) => ConfigIssue::at(span, d.key("modbus"), msg),
            None => ConfigIssue::new(d.key("modbus"), msg),
        });
    };
    let dev: ModbusDevice = options.parse()?;
    let span = options
        .span()
        .or_else(|| d.span.clone())
        .unwrap_or_default();
    let Some(conn) = connections
        .iter()
        .find(|c| c.get_ref().name == dev.connection)
    else {
        let known: Vec<_> = connections
            .iter()
            .map(|c| c.get_ref().name.as_str())
            .collect();
        return Err(ConfigIssue::at(
            span,
            d.key("modbus.connection"),
            format!(
                "no [[modbus.connection]] named {:?} (defined: {})",
                dev.connection,
                if known.is_empty() {
                    "none".to_owned()
                } else {
                    known.join(", ")
                }
            ),
        ));
    };
    if let Err(e) = dev.validate_with(conn.get_ref()) {
        return Err(ConfigIssue::at(
            span,
            d.key(&format!("modbus.{}", e.key())),
            e.to_string(),
        ));
    }
    // Each written field's options, parsed once for all its repetitions.
    let mut per_written: Vec<Option<(ModbusField, Range<usize>)>> =
        Vec::with_capacity(d.written.len());
    for w in &d.written {
        per_written.push(match &w.options {
            Some(o) => Some((
                o.parse::<ModbusField>()?,
                o.span().or_else(|| w.name_span.clone()).unwrap_or_default(),
            )),
            None => None,
        });
    }
    let mut points = Vec::with_capacity(d.fields.len());
    for f in d.fields.iter_mut() {
        let w = &d.written[f.written];
        let Some((written, mspan)) = &per_written[f.written] else {
            let msg = "a field of a modbus device needs modbus = { register = ..., address = ... }";
            return Err(match w.name_span.clone() {
                Some(s) => ConfigIssue::at(s, w.key("modbus"), msg),
                None => ConfigIssue::new(w.key("modbus"), msg),
            });
        };
        let mut field = written.clone();
        if f.copy > 0 {
            // Repetitions follow each other: by `stride`, or by the registers one takes.
            let stride = match &w.stride {
                Some((st, _)) => *st,
                None => field
                    .resolve(&dev, f.spec.writable, f.spec.decimals)
                    .map(|p| u32::from(p.span().count))
                    .unwrap_or(1),
            };
            field.address = field.address.saturating_add(stride.saturating_mul(f.copy));
        }
        let point = field
            .resolve(&dev, f.spec.writable, f.spec.decimals)
            .map_err(|e| {
                let msg = if f.copy > 0 {
                    format!("{} (repetition {} of {:?})", e, f.copy, f.spec.name)
                } else {
                    e.to_string()
                };
                ConfigIssue::at(mspan.clone(), w.key(&format!("modbus.{}", e.key())), msg)
            })?;
        let natural = point.field_type();
        if natural != f.spec.kind {
            return Err(ConfigIssue::at(
                mspan.clone(),
                w.key("type"),
                format!(
                    "type {:?} does not match the register's value, which reads as {:?}; \
                     write type = \"{}\"",
                    f.spec.kind,
                    natural,
                    format!("{natural:?}").to_lowercase()
                ),
            ));
        }
        // Enum labels come from the register's value map unless listed again; the
        // register's own range bounds writes, min/max narrow it.
        let from_register = point.field_spec(f.spec.name.clone());
        if f.spec.values.is_empty() {
            f.spec.values = from_register.values;
        }
        f.spec.min = f.spec.min.or(from_register.min);
        f.spec.max = f.spec.max.or(from_register.max);
        points.push((f.spec.name.clone(), point));
    }
    Ok(Arc::new(ModbusSetup {
        connection: conn.get_ref().clone(),
        device: dev,
        points: points.into(),
    }))
}

/// The running connections, by name, shared by the devices behind them.
#[derive(Default)]
struct Connections {
    running: HashMap<String, (ModbusConnection, Bus)>,
    tasks: Vec<JoinHandle<()>>,
}

impl Connections {
    /// The bus for `config`, started if it is not running with exactly this config.
    fn get(&mut self, config: &ModbusConnection, parent: &CancellationToken) -> Bus {
        if let Some((running, bus)) = self.running.get(&config.name) {
            // A closed bus is one whose task failed: a device restarted after it starts
            // the connection again.
            if running == config && !bus.is_closed() {
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
}

impl KindRuntime for Connections {
    fn build(
        &mut self,
        device: &DeviceId,
        _fields: &Arc<[FieldSpec]>,
        setup: &dyn DeviceSetup,
        shutdown: &CancellationToken,
    ) -> Result<Box<dyn Adapter>, String> {
        let m = setup
            .as_any()
            .downcast_ref::<ModbusSetup>()
            .ok_or_else(|| wrong_setup("modbus", setup))?;
        let bus = self.get(&m.connection, shutdown);
        let settings = DeviceSettings {
            unit: m.device.unit,
            poll: m.device.poll.into(),
            read_back: m.device.read_back,
            write_multiple: m.device.write_multiple,
            limits: m.device.limits(),
        };
        Ok(Box::new(ModbusAdapter::new(
            device.clone(),
            settings,
            m.points.clone(),
            bus,
        )?))
    }

    fn retain(&mut self, setups: &[&dyn DeviceSetup]) {
        let used: Vec<&ModbusConnection> = setups
            .iter()
            .filter_map(|s| s.as_any().downcast_ref::<ModbusSetup>())
            .map(|m| &m.connection)
            .collect();
        self.running
            .retain(|_, (cfg, _)| used.iter().any(|u| *u == cfg));
    }

    fn join(self: Box<Self>) -> BoxFuture<'static, ()> {
        let Connections { running, tasks } = *self;
        drop(running);
        async move {
            for t in tasks {
                let _ = t.await;
            }
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection whose task ended (a fault) is started again for the next device
    /// built on it, which is how a restarted device gets a working connection back.
    #[tokio::test]
    async fn a_failed_connection_is_started_again() {
        let mut conns = Connections::default();
        let mut config = ModbusConnection::new("plc", crate::Transport::Tcp);
        config.address = Some("127.0.0.1:1".into());
        let first_parent = CancellationToken::new();
        let first = conns.get(&config, &first_parent);
        assert!(
            !conns.get(&config, &first_parent).is_closed(),
            "shared while it runs"
        );
        // the task ends without the runtime being told (here: its token)
        first_parent.cancel();
        for t in conns.tasks.drain(..) {
            t.await.unwrap();
        }
        assert!(first.is_closed());
        let parent = CancellationToken::new();
        let again = conns.get(&config, &parent);
        assert!(!again.is_closed());
        parent.cancel();
    }
}
