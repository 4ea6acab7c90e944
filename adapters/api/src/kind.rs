//! How a bus driver plugs into the gateway: an [`AdapterKind`] reads its part of the
//! configuration into a [`DeviceSetup`] per device, and its [`KindRuntime`] builds the
//! running [`Adapter`]s, owning what several devices share (a Modbus connection, an
//! MQTT broker session, a CoAP socket) across configuration reloads.
//!
//! The core keeps a registry of the kinds compiled in (one line per kind) and never names
//! a bus anywhere else; an adapter knows nothing of XMPP. Modelled on Vector's
//! `SourceConfig::build` and Telegraf's `inputs.Add`.

use std::any::Any;
use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;

use crate::config::{ConfigIssue, ConfigNode};
use crate::{Adapter, DeviceId, FieldSpec};

/// A kind of bus driver, as the core's registry knows it.
pub trait AdapterKind: Send + Sync + 'static {
    /// The name in `adapter = "..."`, and of the kind's sections: the top-level
    /// `[<name>]`, a device's `[device.<name>]` and a field's `<name> = { ... }`.
    fn name(&self) -> &'static str;

    /// Validates this kind's part of the configuration: its top-level section, if
    /// written, and every device that uses it, in file order. Returns one setup per
    /// device, in the same order. It may refine a device's field catalogue
    /// (`FieldInput::spec`) where the bus knows more: enum labels from a register's value
    /// map, the range a register can hold.
    fn configure(
        &self,
        section: Option<ConfigNode<'_>>,
        devices: &mut [DeviceInput<'_>],
    ) -> Result<Vec<Arc<dyn DeviceSetup>>, ConfigIssue>;

    /// The kind's run-time half, made once when the gateway starts and kept across
    /// reloads.
    fn runtime(&self) -> Box<dyn KindRuntime>;

    /// How a device of this kind with `setup` (made by this kind's `configure`) reports
    /// its values: the core's events engine asks a device for values only where the
    /// device does not report by itself.
    fn reporting(&self, setup: &dyn DeviceSetup) -> Reporting {
        let _ = setup;
        Reporting::OnRequest
    }

    /// Whether a device entry with `setup` stands for the members it discovers (an MQTT
    /// topic pattern whose wildcard names the device) rather than for one device: the
    /// core gives the entry no JID of its own, makes each member the adapter reports
    /// (`EventKind::Discovered`) a device with the entry's catalogue and policy, routes
    /// the members' requests to the entry's adapter, and remembers them across
    /// restarts.
    fn discovers(&self, setup: &dyn DeviceSetup) -> bool {
        let _ = setup;
        false
    }

    /// Every option this kind reads, by the section it is written in (`modbus.connection`
    /// for `[[modbus.connection]]`, `device.modbus`, `device.field.modbus` for a field's
    /// inline table), so that a test can check each is documented.
    fn options(&self) -> Vec<(&'static str, Vec<&'static str>)>;
}

/// How a device's values reach the core.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Reporting {
    /// Only when asked (a read request).
    #[default]
    OnRequest,
    /// The adapter polls the device every so often and reports every value it read.
    Polled(std::time::Duration),
    /// The device pushes values when it has them (no known period).
    Pushed,
}

/// One device handed to [`AdapterKind::configure`].
#[derive(Debug)]
pub struct DeviceInput<'a> {
    /// The device id.
    pub id: DeviceId,
    /// The device's key path (`device[3]`).
    pub path: String,
    /// `[device.<kind>]`, if written.
    pub options: Option<ConfigNode<'a>>,
    /// Where the device is written, for issues about something it lacks.
    pub span: Option<Range<usize>>,
    /// Its `[[device.field]]` tables as written, in order.
    pub written: Vec<WrittenField<'a>>,
    /// Its catalogue in order, repeated fields expanded: a register map of thousands of
    /// fields comes from a few written ones, so what they share is in `written`.
    pub fields: Vec<FieldInput>,
}

impl DeviceInput<'_> {
    /// The path of `key` below the device (`device[3].modbus`).
    pub fn key(&self, key: &str) -> String {
        format!("{}.{key}", self.path)
    }
}

/// One `[[device.field]]` as written.
#[derive(Debug)]
pub struct WrittenField<'a> {
    /// Its key path (`device[3].field[1]`).
    pub path: String,
    /// Its `<kind> = { ... }`, if written.
    pub options: Option<ConfigNode<'a>>,
    /// Its `stride` (the address step between repetitions), with its span.
    pub stride: Option<(u32, Range<usize>)>,
    /// Where its `name` is written, for issues about the field as a whole.
    pub name_span: Option<Range<usize>>,
}

impl WrittenField<'_> {
    /// The path of `key` below the field (`device[3].field[1].modbus`).
    pub fn key(&self, key: &str) -> String {
        format!("{}.{key}", self.path)
    }
}

/// One field of the catalogue handed to [`AdapterKind::configure`].
#[derive(Debug)]
pub struct FieldInput {
    /// The catalogue entry as configured; the adapter may refine it.
    pub spec: FieldSpec,
    /// The index in [`DeviceInput::written`] of the table it comes from.
    pub written: usize,
    /// Which repetition of a repeated field (`count`) this is: 0 for the first or only.
    pub copy: u32,
}

/// A device's validated adapter configuration. The core compares setups across reloads
/// (a device whose setup changed is restarted, the others keep running) and hands them
/// to the kind's runtime to start the device.
pub trait DeviceSetup: fmt::Debug + Send + Sync + 'static {
    /// Whether `other` is the same configuration.
    fn same_as(&self, other: &dyn DeviceSetup) -> bool;

    /// For the kind's runtime to get its own type back.
    fn as_any(&self) -> &dyn Any;
}

impl<T: PartialEq + fmt::Debug + Send + Sync + 'static> DeviceSetup for T {
    fn same_as(&self, other: &dyn DeviceSetup) -> bool {
        other.as_any().downcast_ref::<T>() == Some(self)
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// The run-time half of a kind: builds the adapters of its devices and owns what they
/// share.
pub trait KindRuntime: Send {
    /// Builds the adapter of `device` from its setup (made by this kind's `configure`),
    /// starting shared resources on first use. Tasks it starts stop when `shutdown` is
    /// cancelled.
    fn build(
        &mut self,
        device: &DeviceId,
        fields: &Arc<[FieldSpec]>,
        setup: &dyn DeviceSetup,
        shutdown: &CancellationToken,
    ) -> Result<Box<dyn Adapter>, String>;

    /// Once every configured device has been built, at start-up and after each reload:
    /// the setups of every device of this kind now configured. Shared resources none of
    /// them uses are let go (their tasks end once the devices that held them have
    /// stopped); those that wait for all their devices may start.
    fn retain(&mut self, setups: &[&dyn DeviceSetup]);

    /// Waits for the shared tasks to end, once every device has stopped.
    fn join(self: Box<Self>) -> BoxFuture<'static, ()>;
}

/// A `setup` of the wrong type: a bug in the core (setups go to the kind that made them).
pub fn wrong_setup(kind: &str, setup: &dyn DeviceSetup) -> String {
    format!("internal error: a {kind} device was handed the setup {setup:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    struct A(u32);
    #[derive(Debug, PartialEq)]
    struct B(u32);

    #[test]
    fn setups_compare_by_type_and_value() {
        let a1: Arc<dyn DeviceSetup> = Arc::new(A(1));
        assert!(a1.same_as(&A(1)));
        assert!(!a1.same_as(&A(2)));
        assert!(!a1.same_as(&B(1)));
        assert_eq!(a1.as_any().downcast_ref::<A>(), Some(&A(1)));
    }
}
