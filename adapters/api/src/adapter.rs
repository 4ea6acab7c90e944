//! The trait through which the core runs a bus adapter.

use futures::future::BoxFuture;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::{AdapterError, DeviceId, EventSink, Reading, Value};

/// The result of a read: the fields that could be read, and why the others could not.
/// A failure of one field never hides the values of the others.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ReadOutcome {
    /// Values read.
    pub readings: Vec<Reading>,
    /// Fields that could not be read, with the reason.
    pub failures: Vec<(String, AdapterError)>,
}

/// A request from the core to an adapter, answered on its reply channel.
#[derive(Debug)]
pub enum AdapterRequest {
    /// Read fields of a device now (`None`: every field).
    Read {
        /// The device.
        device: DeviceId,
        /// The fields wanted, or all.
        fields: Option<Vec<String>>,
        /// Where the answer goes.
        reply: oneshot::Sender<ReadOutcome>,
    },
    /// Write parameters to a device in the given order. The core has validated them
    /// against the field catalogue; the adapter reports what the device says.
    Write {
        /// The device.
        device: DeviceId,
        /// (field, value) pairs, applied in order.
        params: Vec<(String, Value)>,
        /// Where the answer goes.
        reply: oneshot::Sender<Result<(), AdapterError>>,
    },
    /// A device this adapter discovered in an earlier run (see [`EventKind::Discovered`]),
    /// handed back when the adapter starts: the adapter serves it from now on, as if it
    /// had just discovered it. Adapters that discover nothing ignore it.
    ///
    /// [`EventKind::Discovered`]: crate::EventKind::Discovered
    Adopt {
        /// The member's device id.
        device: DeviceId,
        /// The name the adapter discovered it by (a topic segment).
        name: String,
    },
}

/// What an adapter is handed when it starts.
#[derive(Debug)]
pub struct AdapterContext {
    /// Where readings and reachability go.
    pub events: EventSink,
    /// Requests from the core for the devices this adapter serves.
    pub requests: mpsc::Receiver<AdapterRequest>,
    /// Cancelled when the adapter must stop (shutdown, or its devices were removed).
    pub shutdown: CancellationToken,
}

/// A bus driver serving one or more devices.
///
/// It is built from configuration by the core, validated there, and then `run` until its
/// shutdown token is cancelled. It knows nothing of XMPP.
pub trait Adapter: Send + 'static {
    /// The adapter kind as written in the configuration (`"sim"`, `"modbus"`, ...).
    fn kind(&self) -> &'static str;

    /// The devices this instance serves.
    fn devices(&self) -> Vec<DeviceId>;

    /// Runs the adapter until `ctx.shutdown` is cancelled or the request channel closes.
    fn run(self: Box<Self>, ctx: AdapterContext) -> BoxFuture<'static, ()>;
}
