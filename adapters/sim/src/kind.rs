//! The `sim` kind: how simulated devices are configured and built.

use std::sync::Arc;

use fieldgate_api::config::{ConfigIssue, ConfigNode};
use fieldgate_api::{
    wrong_setup, Adapter, AdapterKind, DeviceId, DeviceInput, DeviceSetup, FieldSpec, KindRuntime,
};
use futures::future::BoxFuture;
use futures::FutureExt;
use tokio_util::sync::CancellationToken;

use crate::{SimAdapter, SimDevice, SimField};

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
            let mut generators = Vec::with_capacity(d.fields.len());
            for f in &d.fields {
                if let Some((_, span)) = &f.stride {
                    return Err(ConfigIssue::at(
                        span.clone(),
                        f.key("stride"),
                        "stride applies to fields with an address (modbus), not to sim fields",
                    ));
                }
                generators.push(match &f.options {
                    Some(o) => Some(o.parse::<SimField>()?),
                    None => None,
                });
            }
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
