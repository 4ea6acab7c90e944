//! What every CoAP device shares: the endpoint (one UDP socket per address family),
//! opened with the first device and kept across reloads.

use std::sync::Arc;

use fieldgate_api::{wrong_setup, Adapter, DeviceId, DeviceSetup, FieldSpec, KindRuntime};
use futures::future::BoxFuture;
use futures::FutureExt;
use tokio_util::sync::CancellationToken;

use crate::device::CoapAdapter;
use crate::setup::CoapSetup;
use crate::transport::{Endpoint, EndpointConfig};

/// The endpoint, once a device needed it.
#[derive(Default)]
pub struct Endpoints {
    endpoint: Option<(Endpoint, CancellationToken)>,
}

impl KindRuntime for Endpoints {
    fn build(
        &mut self,
        device: &DeviceId,
        fields: &Arc<[FieldSpec]>,
        setup: &dyn DeviceSetup,
        shutdown: &CancellationToken,
    ) -> Result<Box<dyn Adapter>, String> {
        let s = setup
            .as_any()
            .downcast_ref::<CoapSetup>()
            .ok_or_else(|| wrong_setup("coap", setup))?;
        let endpoint = match &self.endpoint {
            Some((e, cancel)) if !cancel.is_cancelled() => e.clone(),
            _ => {
                let cancel = shutdown.child_token();
                let e = Endpoint::bind(EndpointConfig::default(), cancel.clone())
                    .map_err(|e| format!("cannot open the CoAP sockets: {e}"))?;
                self.endpoint = Some((e.clone(), cancel));
                e
            }
        };
        Ok(Box::new(CoapAdapter {
            id: device.clone(),
            setup: Arc::new(s.clone()),
            fields: fields.clone(),
            endpoint,
        }))
    }

    fn retain(&mut self, setups: &[&dyn DeviceSetup]) {
        if setups.is_empty() {
            if let Some((_, cancel)) = self.endpoint.take() {
                cancel.cancel();
            }
        }
    }

    fn join(self: Box<Self>) -> BoxFuture<'static, ()> {
        if let Some((_, cancel)) = self.endpoint {
            cancel.cancel();
        }
        async {}.boxed()
    }
}
