//! The CoAP adapter's configuration as written: a device's `[device.coap]` and each
//! field's `coap = { ... }`; `kind.rs` resolves them into a setup per device.

use fieldgate_api::HumanDuration;
use serde::Deserialize;

fn yes() -> bool {
    true
}
fn poll() -> HumanDuration {
    HumanDuration::from_secs(10)
}
fn ack_timeout() -> HumanDuration {
    HumanDuration::from_secs(2)
}
fn ack_random_factor() -> f64 {
    1.5
}
fn max_retransmit() -> u32 {
    4
}
fn block_size() -> u16 {
    1024
}
fn max_body() -> usize {
    64 * 1024
}
fn observe_margin() -> HumanDuration {
    HumanDuration::from_secs(10)
}

/// How a payload is written, by name (the Content-Format is looked up from it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FormatName {
    /// text/plain;charset=utf-8 (0).
    Plain,
    /// application/json (50).
    Json,
    /// application/cbor (60).
    Cbor,
    /// application/senml+json (110).
    Senml,
    /// application/senml+cbor (112).
    SenmlCbor,
}

/// How a command is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CommandMethod {
    /// PUT (the default): the new state of the resource.
    #[default]
    Put,
    /// POST: an action on the resource.
    Post,
}

/// A device's `[device.coap]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceOptions {
    /// The server: `coap://host[:port]` (5683 if not given); IPv6 addresses in brackets.
    pub address: String,
    /// How often each resource is read with GET (and, for observed resources, the
    /// polling that replaces an observation the server does not accept).
    #[serde(default = "poll")]
    pub poll: HumanDuration,
    /// Observe the device's resources (RFC 7641) instead of polling them.
    #[serde(default)]
    pub observe: bool,
    /// An observation silent for longer than its Max-Age plus this is registered again.
    #[serde(default = "observe_margin")]
    pub observe_margin: HumanDuration,
    /// Confirmable requests (retransmitted until acknowledged); false sends them
    /// non-confirmable.
    #[serde(default = "yes")]
    pub confirmable: bool,
    /// RFC 7252 ACK_TIMEOUT: the first retransmission comes after a random time between
    /// this and this times `ack_random_factor`.
    #[serde(default = "ack_timeout")]
    pub ack_timeout: HumanDuration,
    /// RFC 7252 ACK_RANDOM_FACTOR (at least 1).
    #[serde(default = "ack_random_factor")]
    pub ack_random_factor: f64,
    /// RFC 7252 MAX_RETRANSMIT: retransmissions before the server is given up on.
    #[serde(default = "max_retransmit")]
    pub max_retransmit: u32,
    /// Block size for block-wise transfers (16, 32, 64, 128, 256, 512 or 1024 bytes).
    #[serde(default = "block_size")]
    pub block_size: u16,
    /// The largest payload read or written, all blocks together (bytes).
    #[serde(default = "max_body")]
    pub max_body: usize,
    /// The format asked for with an Accept option on every read, unless a field's
    /// resource asks for its own; none if not given.
    pub accept: Option<FormatName>,
}

/// A field's `coap = { ... }`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldOptions {
    /// The resource the field is read from (`/sensors/temp`).
    pub path: Option<String>,
    /// Where its value is in a JSON or CBOR payload (RFC 6901 pointer; `/<field name>`
    /// if not given).
    pub pointer: Option<String>,
    /// Its SenML record name in a SenML payload (the field name if not given).
    pub senml_name: Option<String>,
    /// The format to ask for with an Accept option when reading its resource.
    pub accept: Option<FormatName>,
    /// Where a write goes (default: `path`).
    pub command_path: Option<String>,
    /// PUT (default) or POST.
    pub method: Option<CommandMethod>,
    /// How a written value is encoded (`plain`, `json` or `cbor`; plain if not given).
    pub command_format: Option<FormatName>,
    /// Where the value goes in a JSON or CBOR command (`/<field name>` if not given).
    pub command_pointer: Option<String>,
}

impl DeviceOptions {
    /// Checks what serde cannot; the key at fault and why.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        crate::address::parse(&self.address).map_err(|e| ("address", e))?;
        if self.poll.0.is_zero() {
            return Err(("poll", "the poll interval must be above zero".into()));
        }
        if self.ack_timeout.0.is_zero() {
            return Err(("ack_timeout", "ACK_TIMEOUT must be above zero".into()));
        }
        if !(1.0..=10.0).contains(&self.ack_random_factor) {
            return Err((
                "ack_random_factor",
                "ACK_RANDOM_FACTOR is at least 1 (RFC 7252 §4.8), and at most 10 here".into(),
            ));
        }
        if self.max_retransmit > 20 {
            return Err(("max_retransmit", "at most 20 retransmissions".into()));
        }
        if !self.block_size.is_power_of_two() || !(16..=1024).contains(&self.block_size) {
            return Err((
                "block_size",
                "a block is 16, 32, 64, 128, 256, 512 or 1024 bytes".into(),
            ));
        }
        if self.max_body == 0 {
            return Err(("max_body", "max_body must be above zero".into()));
        }
        Ok(())
    }
}
