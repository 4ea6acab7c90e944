//! The MQTT adapter of fieldgate: devices that publish to a broker (sensors, PLC
//! gateways, Zigbee2MQTT and Home Assistant style bridges) as XMPP things. It subscribes
//! to their topics through shared broker sessions (rumqttc), decodes their payloads
//! (plain, JSON with a pointer per field, SenML; the codecs of `fieldgate-payload`),
//! follows their availability, and publishes commands, confirmed by the device's echo
//! where configured.
//!
//! It knows nothing of XMPP: it meets the core in `fieldgate-api`.

pub mod config;
mod device;
pub mod fuzzing;
mod kind;
pub mod localpart;
pub mod router;
mod session;
mod setup;
mod tls;
mod wire;

pub use kind::MqttKind;
