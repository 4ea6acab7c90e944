//! The `sim` kind: how simulated devices are configured and built.

use std::sync::Arc;

use fieldgate_api::config::{keys_of, ConfigIssue, ConfigNode};
use fieldgate_api::{
    wrong_setup, Adapter, AdapterKind, DeviceId, DeviceInput, DeviceSetup, FieldSpec, KindRuntime,
};
use futures::future::BoxFuture;
use futures::FutureExt;
use tokio_util::sync::CancellationToken;

use crate::{SimAdapter, SimDevice, SimField};

/// The keys of a field's `sim = { ... }`: its `kind` and every kind's own options.
/// Written out because serde reads a tagged enum as a map; the test below checks each
/// against the generator that takes it.
const SIM_FIELD_KEYS: &[&str] = &[
    "kind",
    "value",
    "start",
    "step",
    "every",
    "period",
    "amplitude",
    "offset",
];

/// The `sim` adapter kind, for the core's registry.
#[derive(Debug, Clone, Copy, Default)]
pub struct SimKind;

/// A simulated device's validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct SimSetup {
    /// `[device.sim]`.
    pub device: SimDevice,
    /// Each field's `sim = { ... }`, in catalogue order (`None`: a constant zero).
    pub generators: Vec<Option<SimField>>,
}

impl AdapterKind for SimKind {
    fn name(&self) -> &'static str {
        "sim"
    }

    fn configure(
        &self,
        section: Option<ConfigNode<'_>>,
        devices: &mut [DeviceInput<'_>],
    ) -> Result<Vec<Arc<dyn DeviceSetup>>, ConfigIssue> {
        if let Some(s) = section {
            return Err(s.issue("", "the sim adapter has no top-level section"));
        }
        let mut setups: Vec<Arc<dyn DeviceSetup>> = Vec::with_capacity(devices.len());
        for d in devices.iter() {
            let device: SimDevice = match &d.options {
                Some(o) => o.parse()?,
                None => SimDevice::default(),
            };
            // One generator per written field, shared by its repetitions.
            let mut per_written = Vec::with_capacity(d.written.len());
            for w in &d.written {
                if let Some((_, span)) = &w.stride {
                    return Err(ConfigIssue::at(
                        span.clone(),
                        w.key("stride"),
                        "stride applies to fields with an address (modbus), not to sim fields",
                    ));
                }
                per_written.push(match &w.options {
                    Some(o) => Some(o.parse::<SimField>()?),
                    None => None,
                });
            }
            let generators: Vec<Option<SimField>> = d
                .fields
                .iter()
                .map(|f| per_written[f.written].clone())
                .collect();
            let pairs = d
                .fields
                .iter()
                .map(|f| f.spec.clone())
                .zip(generators.iter().cloned())
                .collect();
            if let Err(e) = SimAdapter::new(d.id.clone(), device.clone(), pairs) {
                let key = d.key("sim");
                return Err(
                    match d.options.as_ref().and_then(|o| o.span()).or(d.span.clone()) {
                        Some(span) => ConfigIssue::at(span, key, e),
                        None => ConfigIssue::new(key, e),
                    },
                );
            }
            setups.push(Arc::new(SimSetup { device, generators }));
        }
        Ok(setups)
    }

    fn runtime(&self) -> Box<dyn KindRuntime> {
        Box::new(SimRuntime)
    }

    fn options(&self) -> Vec<(&'static str, Vec<&'static str>)> {
        vec![
            ("device.sim", keys_of::<SimDevice>().to_vec()),
            ("device.field.sim", SIM_FIELD_KEYS.to_vec()),
        ]
    }
}

/// Simulated devices share nothing.
struct SimRuntime;

impl KindRuntime for SimRuntime {
    fn build(
        &mut self,
        device: &DeviceId,
        fields: &Arc<[FieldSpec]>,
        setup: &dyn DeviceSetup,
        _shutdown: &CancellationToken,
    ) -> Result<Box<dyn Adapter>, String> {
        let setup = setup
            .as_any()
            .downcast_ref::<SimSetup>()
            .ok_or_else(|| wrong_setup("sim", setup))?;
        let pairs = fields
            .iter()
            .cloned()
            .zip(setup.generators.iter().cloned())
            .collect();
        Ok(Box::new(SimAdapter::new(
            device.clone(),
            setup.device.clone(),
            pairs,
        )?))
    }

    fn retain(&mut self, _setups: &[&dyn DeviceSetup]) {}

    fn join(self: Box<Self>) -> BoxFuture<'static, ()> {
        async {}.boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each listed key is one a generator takes, and every generator's keys are listed.
    #[test]
    fn the_field_keys_are_the_generators_keys() {
        let takes = [
            ("constant", "value = 1"),
            ("counter", "start = 1"),
            ("counter", "step = 2"),
            ("counter", "every = \"2s\""),
            ("sine", "period = \"1m\""),
            ("sine", "amplitude = 2.0"),
            ("sine", "offset = 1.0"),
            ("toggle", "every = \"5s\""),
        ];
        let parse = |text: &str| toml::from_str::<SimField>(text);
        let mut seen = vec!["kind"];
        for (kind, option) in takes {
            parse(&format!("kind = \"{kind}\"\n{option}")).expect(option);
            seen.push(option.split(' ').next().unwrap());
        }
        seen.sort_unstable();
        seen.dedup();
        let mut listed = SIM_FIELD_KEYS.to_vec();
        listed.sort_unstable();
        assert_eq!(seen, listed);
        // and nothing else is taken
        assert!(parse("kind = \"sine\"\nphase = 1.0").is_err());
    }
}
