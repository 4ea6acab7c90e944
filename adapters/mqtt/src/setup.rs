//! A device entry's resolved configuration: its broker, the topics it listens on with a
//! decoder each, and how each writable field publishes.

use crate::config::{Broker, DeviceOptions};
use fieldgate_payload::{Availability, Template, TopicDecoder};

/// What the `mqtt` kind made of one `[[device]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct MqttSetup {
    /// The broker, copied: a changed broker restarts its devices.
    pub broker: Broker,
    /// `[device.mqtt]`.
    pub device: DeviceOptions,
    /// The topics values are read from.
    pub topics: Vec<StateTopic>,
    /// The availability topic and how its payloads read.
    pub availability: Option<(String, Availability)>,
    /// Per catalogue field, in catalogue order: how a write publishes, if writable.
    pub commands: Vec<Option<Command>>,
    /// Per catalogue field: the index in `topics` of the topic it is read from.
    pub sources: Vec<Option<usize>>,
}

/// One topic that carries field values.
#[derive(Debug, Clone, PartialEq)]
pub struct StateTopic {
    /// The topic (a filter with one `+` in a discovering entry).
    pub filter: String,
    /// How its payloads decode; its fields in the order of `fields`.
    pub decoder: TopicDecoder,
    /// The catalogue index of each of the decoder's fields.
    pub fields: Vec<usize>,
}

/// How a writable field is written.
#[derive(Debug, Clone, PartialEq)]
pub struct Command {
    /// The topic (its `+`, in a discovering entry, replaced by the device's name).
    pub topic: String,
    /// How the value is written.
    pub template: Template,
    /// What a `true` and a `false` are published as, if not as JSON booleans.
    pub bools: Option<(String, String)>,
    /// Whether the write waits for the device's echo.
    pub confirm: bool,
}
