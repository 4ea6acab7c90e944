//! What every CoAP device shares: the endpoint (one UDP socket per address family) and
//! the thread it runs on, started with the first device and kept across reloads.
//!
//! The endpoint and every CoAP device task run on one thread of their own (a
//! current-thread tokio runtime), not on the gateway's worker pool. NSTART 1 makes one
//! server's exchanges strictly sequential, so each request is a short burst of work
//! between two waits; on a pool, every burst hands tasks between workers and wakes an
//! idle one to steal them (a futex and two context switches per request, two thirds of
//! the CPU a poll cost). On one thread the hand-offs are plain function calls; only the
//! values going to the core cross threads.

use std::sync::Arc;
use std::thread::JoinHandle;

use fieldgate_api::{wrong_setup, Adapter, DeviceId, DeviceSetup, FieldSpec, KindRuntime};
use futures::future::BoxFuture;
use futures::FutureExt;
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

use crate::device::CoapAdapter;
use crate::setup::CoapSetup;
use crate::transport::{Endpoint, EndpointConfig};

/// The CoAP thread: a current-thread runtime driving the endpoint's sockets and the
/// devices' tasks until `stop` is cancelled.
struct CoapThread {
    handle: Handle,
    endpoint: Endpoint,
    stop: CancellationToken,
    thread: Option<JoinHandle<()>>,
}

impl CoapThread {
    fn start(stop: CancellationToken) -> Result<CoapThread, String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .thread_name("coap-blocking")
            .build()
            .map_err(|e| format!("cannot start the CoAP runtime: {e}"))?;
        let handle = rt.handle().clone();
        // Sockets register with the reactor of the runtime entered when they are made.
        let endpoint = {
            let _in_coap = handle.enter();
            Endpoint::bind(EndpointConfig::default(), stop.clone())
                .map_err(|e| format!("cannot open the CoAP sockets: {e}"))?
        };
        let until = stop.clone();
        let thread = std::thread::Builder::new()
            .name("coap".into())
            .spawn(move || {
                rt.block_on(until.cancelled());
                // Dropping the runtime drops the tasks still on it (their devices are
                // gone, or the gateway is stopping).
            })
            .map_err(|e| format!("cannot start the CoAP thread: {e}"))?;
        Ok(CoapThread {
            handle,
            endpoint,
            stop,
            thread: Some(thread),
        })
    }

    fn is_running(&self) -> bool {
        !self.stop.is_cancelled()
    }

    /// Stops the thread; the returned future resolves once it has ended.
    fn shut(mut self) -> BoxFuture<'static, ()> {
        self.stop.cancel();
        let thread = self.thread.take();
        async move {
            if let Some(t) = thread {
                // Joining blocks: off the caller's worker.
                let _ = tokio::task::spawn_blocking(move || t.join()).await;
            }
        }
        .boxed()
    }
}

/// The CoAP thread, once a device needed it.
#[derive(Default)]
pub struct Endpoints {
    current: Option<CoapThread>,
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
        if !self.current.as_ref().is_some_and(CoapThread::is_running) {
            if let Some(old) = self.current.take() {
                drop(old.shut());
            }
            self.current = Some(CoapThread::start(shutdown.child_token())?);
        }
        let t = self.current.as_ref().expect("started above");
        Ok(Box::new(CoapAdapter {
            id: device.clone(),
            setup: Arc::new(s.clone()),
            fields: fields.clone(),
            endpoint: t.endpoint.clone(),
            runtime: t.handle.clone(),
        }))
    }

    fn retain(&mut self, setups: &[&dyn DeviceSetup]) {
        if setups.is_empty() {
            if let Some(t) = self.current.take() {
                drop(t.shut());
            }
        }
    }

    fn join(self: Box<Self>) -> BoxFuture<'static, ()> {
        match self.current {
            Some(t) => t.shut(),
            None => async {}.boxed(),
        }
    }
}
