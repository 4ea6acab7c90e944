//! The MQTT adapter's configuration: `[[mqtt.broker]]` sessions, a device's
//! `[device.mqtt]` and each field's `mqtt = { ... }`, as written; `kind.rs` resolves them
//! into a setup per device.

use std::path::PathBuf;

use fieldgate_api::HumanDuration;
use serde::Deserialize;

use fieldgate_payload::{Format, TimeUnit};

fn yes() -> bool {
    true
}
fn one() -> u8 {
    1
}
fn keep_alive() -> HumanDuration {
    HumanDuration::from_secs(30)
}
fn reconnect_min() -> HumanDuration {
    HumanDuration::from_millis(500)
}
fn reconnect_max() -> HumanDuration {
    HumanDuration::from_secs(60)
}
fn session_expiry() -> HumanDuration {
    HumanDuration::from_secs(7 * 86_400)
}
fn max_payload() -> usize {
    64 * 1024
}
fn max_packet() -> usize {
    16 * 1024 * 1024
}
fn confirm_timeout() -> HumanDuration {
    HumanDuration::from_secs(5)
}
fn max_devices() -> usize {
    1000
}
fn online() -> String {
    "online".into()
}
fn offline() -> String {
    "offline".into()
}

/// The MQTT protocol version spoken to a broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum Protocol {
    /// MQTT 3.1.1.
    #[default]
    #[serde(rename = "3.1.1")]
    V311,
    /// MQTT 5.
    #[serde(rename = "5")]
    V5,
}

/// `tls = { ... }` of a broker: TLS from the first byte, never a fallback to plaintext
/// (the settings every TLS client of the gateway shares).
pub type Tls = fieldgate_tls::Settings;

/// One `[[mqtt.broker]]`: a session shared by the devices that name it.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Broker {
    /// What devices call it (`broker = "..."`).
    pub name: String,
    /// Host name or address.
    pub host: String,
    /// Port; 1883, or 8883 with TLS.
    pub port: Option<u16>,
    /// `"3.1.1"` (default) or `"5"`.
    #[serde(default)]
    pub protocol: Protocol,
    /// Client id; `fieldgate-<name>` if not given. A persistent session needs it stable
    /// and unique on the broker.
    pub client_id: Option<String>,
    /// false: a persistent session (the broker keeps the subscriptions and queues QoS
    /// 1 / 2 messages while the gateway is away).
    #[serde(default = "yes")]
    pub clean_session: bool,
    /// MQTT 5, persistent session: how long the broker keeps it after the connection
    /// ends (MQTT 3.1.1 brokers keep it as long as they are configured to).
    #[serde(default = "session_expiry")]
    pub session_expiry: HumanDuration,
    /// Keep-alive interval.
    #[serde(default = "keep_alive")]
    pub keep_alive: HumanDuration,
    /// User name.
    pub username: Option<String>,
    /// Password, inline (prefer `password_file` or `password_env`).
    pub password: Option<String>,
    /// A file holding the password (trailing newline ignored).
    pub password_file: Option<PathBuf>,
    /// An environment variable holding the password.
    pub password_env: Option<String>,
    /// TLS settings; plaintext TCP if absent.
    pub tls: Option<Tls>,
    /// First reconnect delay; doubled per failure, jittered.
    #[serde(default = "reconnect_min")]
    pub reconnect_min: HumanDuration,
    /// Longest reconnect delay.
    #[serde(default = "reconnect_max")]
    pub reconnect_max: HumanDuration,
    /// QoS of the subscriptions (0, 1 or 2).
    #[serde(default = "one")]
    pub qos: u8,
    /// Payloads larger than this are counted and skipped (bytes).
    #[serde(default = "max_payload")]
    pub max_payload: usize,
    /// Packets larger than this make the client drop the connection (bytes).
    #[serde(default = "max_packet")]
    pub max_packet: usize,
    /// The password, from whichever source was configured (read by [`Broker::resolve`]).
    #[serde(skip)]
    pub secret: Option<String>,
}

// The password must never reach a log line (setups are printed in internal errors).
impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("name", &self.name)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("username", &self.username)
            .field("password", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

impl Broker {
    /// Reads the password from its file or variable, and checks that the TLS files make a
    /// configuration, so that a mistake is a configuration error (with its place) rather
    /// than a session that never connects. The key at fault and why.
    pub fn resolve(&mut self) -> Result<(), (&'static str, String)> {
        self.secret = match (&self.password, &self.password_file, &self.password_env) {
            (Some(p), _, _) => Some(p.clone()),
            (_, Some(f), _) => Some(
                std::fs::read_to_string(f)
                    .map_err(|e| ("password_file", format!("{}: {e}", f.display())))?
                    .trim_end_matches(['\r', '\n'])
                    .to_owned(),
            ),
            (_, _, Some(v)) => Some(
                std::env::var(v)
                    .map_err(|_| ("password_env", format!("the variable {v} is not set")))?,
            ),
            _ => None,
        };
        if let Some(tls) = &self.tls {
            crate::tls::client_config(tls).map_err(|e| ("tls", e.to_string()))?;
        }
        Ok(())
    }

    /// The port, by default that of the transport.
    pub fn port(&self) -> u16 {
        self.port
            .unwrap_or(if self.tls.is_some() { 8883 } else { 1883 })
    }

    /// The client id.
    pub fn client_id(&self) -> String {
        self.client_id
            .clone()
            .unwrap_or_else(|| format!("fieldgate-{}", self.name))
    }

    /// Checks what serde cannot; the key at fault and why.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.name.is_empty() {
            return Err(("name", "a broker needs a name".into()));
        }
        if self.host.is_empty() {
            return Err(("host", "a broker needs a host".into()));
        }
        if self.qos > 2 {
            return Err(("qos", format!("QoS is 0, 1 or 2, not {}", self.qos)));
        }
        let secrets = [
            self.password.is_some(),
            self.password_file.is_some(),
            self.password_env.is_some(),
        ];
        if secrets.iter().filter(|s| **s).count() > 1 {
            return Err((
                "password",
                "give the password one way: password, password_file or password_env".into(),
            ));
        }
        if secrets.iter().any(|s| *s) && self.username.is_none() {
            return Err(("username", "a password needs a username".into()));
        }
        if let Some(id) = &self.client_id {
            if id.is_empty() || id.len() > 65535 {
                return Err(("client_id", "a client id is 1 to 65535 bytes".into()));
            }
        }
        if self.keep_alive.0 < std::time::Duration::from_secs(1)
            || self.keep_alive.0 > std::time::Duration::from_secs(65535)
        {
            return Err(("keep_alive", "keep-alive is 1 s to 18 h".into()));
        }
        if self.reconnect_min.0.is_zero() || self.reconnect_min.0 > self.reconnect_max.0 {
            return Err((
                "reconnect_min",
                "reconnect_min must be above zero and at most reconnect_max".into(),
            ));
        }
        if self.max_payload == 0 || self.max_payload > self.max_packet {
            return Err((
                "max_payload",
                "max_payload must be above zero and at most max_packet".into(),
            ));
        }
        if let Some(t) = &self.tls {
            if t.cert_file.is_some() != t.key_file.is_some() {
                return Err((
                    "tls",
                    "a client certificate needs both cert_file and key_file".into(),
                ));
            }
        }
        Ok(())
    }
}

/// A device's `[device.mqtt]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceOptions {
    /// The `[[mqtt.broker]]` it is reached through.
    pub broker: String,
    /// The topic its fields are read from, unless a field names its own. In an entry
    /// with `discover = true`, one `+` segment names the device.
    pub topic: Option<String>,
    /// How that topic's payloads are written: `plain`, `json` or `senml`; `json` if a
    /// field of it has a `pointer`, else `plain`.
    pub format: Option<Format>,
    /// JSON pointer to a timestamp in the payload; the arrival time if not given.
    pub timestamp_pointer: Option<String>,
    /// Whether a numeric timestamp counts seconds (`s`, default) or milliseconds (`ms`).
    #[serde(default)]
    pub timestamp_unit: TimeUnit,
    /// The topic whose messages say whether the device is online.
    pub availability_topic: Option<String>,
    /// A JSON pointer to the state in availability messages (`/state` for
    /// `{"state":"online"}`); the whole payload if not given.
    pub availability_pointer: Option<String>,
    /// The availability payload meaning online.
    #[serde(default = "online")]
    pub payload_online: String,
    /// The availability payload meaning offline.
    #[serde(default = "offline")]
    pub payload_offline: String,
    /// A device without a message for this long is unavailable, its values stale.
    pub expire_after: Option<HumanDuration>,
    /// Where writable fields publish, unless a field names its own.
    pub command_topic: Option<String>,
    /// How commands are written: `plain`, or `json` (the value under the field's
    /// `command_pointer`).
    pub command_format: Option<Format>,
    /// QoS of command publishes.
    #[serde(default = "one")]
    pub command_qos: u8,
    /// Whether command publishes are retained.
    #[serde(default)]
    pub command_retain: bool,
    /// How long a confirmed field waits for the device to echo a written value.
    #[serde(default = "confirm_timeout")]
    pub confirm_timeout: HumanDuration,
    /// The entry stands for every device whose name fills the `+` of its topics.
    #[serde(default)]
    pub discover: bool,
    /// At most this many devices discovered by this entry.
    #[serde(default = "max_devices")]
    pub max_devices: usize,
    /// Put before each discovered device's id.
    #[serde(default)]
    pub id_prefix: String,
}

/// A field's `mqtt = { ... }`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldOptions {
    /// The topic the field is read from; the device's `topic` if not given.
    pub topic: Option<String>,
    /// That topic's format, if the field names its own topic.
    pub format: Option<Format>,
    /// JSON pointer to the value (RFC 6901); `/<field name>` for JSON topics if not given.
    pub pointer: Option<String>,
    /// SenML record name; the field name if not given.
    pub senml_name: Option<String>,
    /// Where writes publish; the device's `command_topic` if not given.
    pub command_topic: Option<String>,
    /// How this field's commands are written (`plain` or `json`); the device's
    /// `command_format` unless the field names its own `command_topic`, then `json` if
    /// it has a `command_pointer`, else `plain`.
    pub command_format: Option<Format>,
    /// JSON pointer of the value in a JSON command; `/<field name>` if not given.
    pub command_pointer: Option<String>,
    /// The text a `true` is published as (`"ON"`); JSON `true` or `true` if not given.
    pub payload_on: Option<String>,
    /// The text a `false` is published as (`"OFF"`).
    pub payload_off: Option<String>,
    /// A write succeeds only when the device echoes the new value on the field's topic.
    #[serde(default)]
    pub confirm: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broker_with_defaults() {
        let b: Broker = toml::from_str("name = \"plant\"\nhost = \"127.0.0.1\"").unwrap();
        assert_eq!(b.port(), 1883);
        assert_eq!(b.client_id(), "fieldgate-plant");
        assert!(b.clean_session);
        assert_eq!(b.qos, 1);
        assert!(b.validate().is_ok());
        let b: Broker =
            toml::from_str("name = \"p\"\nhost = \"h\"\ntls = {}\nprotocol = \"5\"").unwrap();
        assert_eq!(b.port(), 8883);
        assert_eq!(b.protocol, Protocol::V5);
        assert!(b.validate().is_ok());
    }

    #[test]
    fn contradictions_are_refused() {
        let b: Broker = toml::from_str(
            "name = \"p\"\nhost = \"h\"\nusername = \"u\"\npassword = \"x\"\npassword_env = \"X\"",
        )
        .unwrap();
        assert_eq!(b.validate().unwrap_err().0, "password");
        let b: Broker = toml::from_str("name = \"p\"\nhost = \"h\"\npassword = \"x\"").unwrap();
        assert_eq!(b.validate().unwrap_err().0, "username");
        let b: Broker = toml::from_str("name = \"p\"\nhost = \"h\"\nqos = 3").unwrap();
        assert_eq!(b.validate().unwrap_err().0, "qos");
        let b: Broker =
            toml::from_str("name = \"p\"\nhost = \"h\"\ntls = { cert_file = \"c.pem\" }").unwrap();
        assert_eq!(b.validate().unwrap_err().0, "tls");
    }
}
