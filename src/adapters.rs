//! The registry: the adapter kinds this gateway knows, and which of them this build
//! compiled in. The only place in the core that names a bus.
//!
//! Adding a bus: a crate under `adapters/` implementing [`AdapterKind`], an optional
//! dependency and a Cargo feature of the same name in `Cargo.toml` (on by default), and
//! one entry below.

use fieldgate_api::AdapterKind;

/// One kind the gateway knows of.
#[derive(Clone, Copy)]
pub struct Registered {
    /// The name in `adapter = "..."`.
    pub name: &'static str,
    /// The Cargo feature that compiles it in.
    pub feature: &'static str,
    /// The kind, if this build has it.
    pub kind: Option<&'static dyn AdapterKind>,
}

#[cfg(feature = "coap")]
const COAP: Option<&'static dyn AdapterKind> = Some(&fieldgate_coap::CoapKind);
#[cfg(not(feature = "coap"))]
const COAP: Option<&'static dyn AdapterKind> = None;

#[cfg(feature = "modbus")]
const MODBUS: Option<&'static dyn AdapterKind> = Some(&fieldgate_modbus::ModbusKind);
#[cfg(not(feature = "modbus"))]
const MODBUS: Option<&'static dyn AdapterKind> = None;

#[cfg(feature = "mqtt")]
const MQTT: Option<&'static dyn AdapterKind> = Some(&fieldgate_mqtt::MqttKind);
#[cfg(not(feature = "mqtt"))]
const MQTT: Option<&'static dyn AdapterKind> = None;

#[cfg(feature = "sim")]
const SIM: Option<&'static dyn AdapterKind> = Some(&fieldgate_sim::SimKind);
#[cfg(not(feature = "sim"))]
const SIM: Option<&'static dyn AdapterKind> = None;

/// Every kind, in the order their parts of a configuration are validated.
pub const REGISTRY: &[Registered] = &[
    Registered {
        name: "coap",
        feature: "coap",
        kind: COAP,
    },
    Registered {
        name: "modbus",
        feature: "modbus",
        kind: MODBUS,
    },
    Registered {
        name: "mqtt",
        feature: "mqtt",
        kind: MQTT,
    },
    Registered {
        name: "sim",
        feature: "sim",
        kind: SIM,
    },
];

/// The entry for `name`, compiled in or not.
pub fn find(name: &str) -> Option<&'static Registered> {
    REGISTRY.iter().find(|r| r.name == name)
}

/// The kinds this build has.
pub fn compiled() -> impl Iterator<Item = &'static dyn AdapterKind> {
    REGISTRY.iter().filter_map(|r| r.kind)
}

/// The names of the kinds this build has, for messages.
pub fn compiled_names() -> Vec<&'static str> {
    compiled().map(|k| k.name()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_name_their_kind() {
        for r in REGISTRY {
            if let Some(k) = r.kind {
                assert_eq!(k.name(), r.name);
            }
        }
        assert!(find("nosuch").is_none());
        #[cfg(feature = "modbus")]
        assert!(compiled_names().contains(&"modbus"));
        #[cfg(not(feature = "sim"))]
        assert!(find("sim").is_some_and(|r| r.kind.is_none()));
    }
}
