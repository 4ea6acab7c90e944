//! The file's schema as serde reads it, before validation: every value that can be wrong
//! keeps its source span.

use std::path::PathBuf;

use fieldgate_api::{FieldType, HumanDuration};
use serde::Deserialize;
use toml::Spanned;

/// The file as written. Unknown keys are not refused by serde here but by
/// [`super::keys`]: the top level, a device and a field also hold adapters' parts, which
/// only the registry can tell from typos.
#[derive(Deserialize)]
pub(super) struct RawConfig {
    pub(super) xmpp: Spanned<RawXmpp>,
    #[serde(default)]
    pub(super) access: RawGatewayAccess,
    #[serde(default)]
    pub(super) state: RawState,
    #[serde(default)]
    pub(super) readout: RawReadout,
    #[serde(default)]
    pub(super) events: RawEvents,
    #[serde(default)]
    pub(super) history: RawHistory,
    #[serde(default, rename = "device")]
    pub(super) devices: Vec<Spanned<RawDevice>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawXmpp {
    pub(super) server: Spanned<String>,
    pub(super) domain: Spanned<String>,
    pub(super) secret: Option<Spanned<String>>,
    pub(super) secret_file: Option<Spanned<PathBuf>>,
    pub(super) secret_env: Option<Spanned<String>>,
    pub(super) keepalive: Option<Spanned<HumanDuration>>,
    pub(super) ping_target: Option<Spanned<String>>,
    pub(super) reconnect_min: Option<Spanned<HumanDuration>>,
    pub(super) reconnect_max: Option<Spanned<HumanDuration>>,
    pub(super) resource: Option<Spanned<String>>,
    pub(super) max_outbound_stanza_size: Option<Spanned<i64>>,
    pub(super) max_inbound_stanza_size: Option<Spanned<i64>>,
    pub(super) max_inbound_depth: Option<Spanned<i64>>,
    pub(super) tls: Option<Spanned<RawTls>>,
}

/// `[xmpp] tls`: `true` / `false`, or a table of settings (which means on).
pub(super) enum RawTls {
    Off,
    On(RawTlsTable),
}

/// `[xmpp.tls]`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTlsTable {
    pub(super) ca_file: Option<Spanned<PathBuf>>,
    pub(super) cert_file: Option<Spanned<PathBuf>>,
    pub(super) key_file: Option<Spanned<PathBuf>>,
    pub(super) server_name: Option<Spanned<String>>,
}

// By hand rather than `#[serde(untagged)]`: an untagged enum would answer a misspelt key
// in the table with "did not match any variant" instead of naming the key.
impl<'de> Deserialize<'de> for RawTls {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = RawTls;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("true, false or a table of TLS settings")
            }
            fn visit_bool<E: serde::de::Error>(self, on: bool) -> Result<RawTls, E> {
                Ok(if on {
                    RawTls::On(RawTlsTable::default())
                } else {
                    RawTls::Off
                })
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<RawTls, A::Error> {
                RawTlsTable::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(RawTls::On)
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAccess {
    pub(super) subscribe: Option<Vec<Spanned<String>>>,
    pub(super) read: Option<Vec<Spanned<String>>>,
    pub(super) control: Option<Vec<Spanned<String>>>,
}

/// The top-level `[access]`: the lists, and what applies to the gateway as a whole.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGatewayAccess {
    pub(super) subscribe: Option<Vec<Spanned<String>>>,
    pub(super) read: Option<Vec<Spanned<String>>>,
    pub(super) control: Option<Vec<Spanned<String>>>,
    pub(super) max_subscriptions: Option<Spanned<i64>>,
}

impl RawGatewayAccess {
    /// The lists alone, as a device's `[device.access]` has them.
    pub(super) fn lists(&self) -> RawAccess {
        RawAccess {
            subscribe: self.subscribe.clone(),
            read: self.read.clone(),
            control: self.control.clone(),
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawState {
    pub(super) dir: Option<PathBuf>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawReadout {
    pub(super) max_age: Option<Spanned<HumanDuration>>,
    pub(super) timeout: Option<Spanned<HumanDuration>>,
    pub(super) max_per_requester: Option<Spanned<i64>>,
    pub(super) max_set_params: Option<Spanned<i64>>,
    pub(super) max_writes_per_requester: Option<Spanned<i64>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEvents {
    pub(super) max_per_requester: Option<Spanned<i64>>,
    pub(super) sample_interval: Option<Spanned<HumanDuration>>,
    pub(super) min_interval: Option<Spanned<HumanDuration>>,
    pub(super) liveness_interval: Option<Spanned<HumanDuration>>,
    pub(super) outage_buffer: Option<Spanned<i64>>,
    pub(super) outage_max_size: Option<Spanned<bytesize::ByteSize>>,
    pub(super) outage_max_age: Option<Spanned<HumanDuration>>,
}

/// One `[[device]]` (its adapter's table aside).
#[derive(Deserialize)]
pub(super) struct RawDevice {
    pub(super) id: Spanned<String>,
    pub(super) name: Option<String>,
    pub(super) adapter: Spanned<String>,
    pub(super) model: Option<String>,
    pub(super) serial: Option<String>,
    pub(super) vendor: Option<String>,
    #[serde(default)]
    pub(super) access: RawAccess,
    pub(super) max_age: Option<Spanned<HumanDuration>>,
    pub(super) history: Option<Spanned<RawHistoryOpt>>,
    #[serde(default, rename = "field")]
    pub(super) fields: Vec<Spanned<RawField>>,
}

/// One `[[device.field]]` (its adapter's options aside).
#[derive(Deserialize)]
pub(super) struct RawField {
    pub(super) name: Spanned<String>,
    #[serde(rename = "type")]
    pub(super) kind: FieldType,
    pub(super) unit: Option<String>,
    pub(super) decimals: Option<Spanned<u8>>,
    #[serde(default)]
    pub(super) writable: bool,
    pub(super) min: Option<f64>,
    pub(super) max: Option<f64>,
    #[serde(default)]
    pub(super) values: Vec<String>,
    /// Repeat the field this many times; `{n}` in the name becomes 0, 1, 2, ...
    pub(super) count: Option<Spanned<u32>>,
    /// Address step between repetitions, for adapters whose fields have addresses
    /// (default: the adapter's, e.g. the registers one value takes).
    pub(super) stride: Option<Spanned<u32>>,
    pub(super) history: Option<Spanned<RawHistoryOpt>>,
}

/// Most repetitions one `count` may ask for.
pub(super) const MAX_COUNT: u32 = 65_536;

/// The top-level `[history]`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHistory {
    pub(super) keep: Option<Spanned<HumanDuration>>,
    pub(super) sample: Option<Spanned<String>>,
    pub(super) deadband: Option<Spanned<f64>>,
    pub(super) max_size: Option<Spanned<bytesize::ByteSize>>,
    pub(super) commit_interval: Option<Spanned<HumanDuration>>,
    pub(super) read_interval: Option<Spanned<HumanDuration>>,
    pub(super) file: Option<PathBuf>,
}

/// A device's or a field's `history`: `false` (not kept), `true` (kept as `[history]`
/// says), a retention (`"30d"`), or a table of `keep`, `sample` and `deadband`.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct RawHistoryOpt {
    pub(super) on: Option<bool>,
    pub(super) keep: Option<HumanDuration>,
    pub(super) sample: Option<String>,
    pub(super) deadband: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHistoryTable {
    keep: Option<HumanDuration>,
    sample: Option<String>,
    deadband: Option<f64>,
}

impl<'de> Deserialize<'de> for RawHistoryOpt {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = RawHistoryOpt;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("false, true, a retention such as \"30d\", or a table of keep, sample and deadband")
            }

            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Self::Value, E> {
                Ok(RawHistoryOpt {
                    on: Some(v),
                    ..RawHistoryOpt::default()
                })
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                let keep =
                    HumanDuration::deserialize(serde::de::value::StrDeserializer::<E>::new(v))?;
                Ok(RawHistoryOpt {
                    keep: Some(keep),
                    ..RawHistoryOpt::default()
                })
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                m: A,
            ) -> Result<Self::Value, A::Error> {
                let t =
                    RawHistoryTable::deserialize(serde::de::value::MapAccessDeserializer::new(m))?;
                Ok(RawHistoryOpt {
                    on: None,
                    keep: t.keep,
                    sample: t.sample,
                    deadband: t.deadband,
                })
            }
        }
        d.deserialize_any(V)
    }
}
