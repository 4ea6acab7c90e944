//! The protocol-neutral model shared by the fieldgate core and its bus adapters.
//!
//! Adapters know their bus and nothing of XMPP; the core knows XMPP and nothing of any
//! bus. They meet here: a [`Value`], a [`Reading`], an [`AdapterRequest`] (read, or
//! write parameters in order), a device's field catalogue ([`FieldSpec`]), the
//! [`Adapter`] trait through which the core talks to a running bus driver, and the
//! [`AdapterKind`] trait through which a bus plugs in: it reads its own part of the
//! configuration ([`config`]) and builds and runs its devices.

mod adapter;
mod backoff;
pub mod config;
mod duration;
mod events;
mod field;
mod kind;
mod reason;
mod value;

pub use adapter::{Adapter, AdapterContext, AdapterRequest, ReadOutcome};
pub use backoff::backoff;
pub use duration::HumanDuration;
pub use events::{DeviceEvent, EventKind, EventSink, Reachability, Verdict};
pub use field::{FieldSpec, FieldType};
pub use kind::{
    wrong_setup, AdapterKind, DeviceInput, DeviceSetup, FieldInput, KindRuntime, Reporting,
    WrittenField,
};
pub use reason::Reason;

pub use value::{Quality, Reading, Value};

/// A device's identifier: its JID localpart, unique within one gateway.
pub type DeviceId = std::sync::Arc<str>;

/// Why an adapter could not serve a request.
///
/// The split mirrors tokio-modbus' two-layer result: the core maps a dead link and a
/// device's refusal to different XMPP errors.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AdapterError {
    /// The bus or connection to the device is down; retrying later may succeed.
    #[error("link down: {0}")]
    LinkDown(Reason),
    /// The device answered and refused the request (an exception, a rejected value).
    #[error("device refused: {0}")]
    Refused(String),
    /// The device answered that the address or register does not exist on it.
    #[error("device has no such address: {0}")]
    IllegalAddress(String),
    /// The device answered that it is busy; retrying later may succeed.
    #[error("device busy: {0}")]
    Busy(String),
    /// The request names a field the device does not have.
    #[error("unknown field {0:?}")]
    UnknownField(String),
    /// The field exists but cannot be written.
    #[error("field {0:?} is not writable")]
    NotWritable(String),
    /// The value does not fit the field (type or range).
    #[error("invalid value for {field:?}: {reason}")]
    InvalidValue {
        /// The field concerned.
        field: String,
        /// What is wrong with the value.
        reason: String,
    },
    /// The device did not answer in time.
    #[error("timed out: {0}")]
    Timeout(String),
    /// The adapter is shutting down or has stopped.
    #[error("adapter stopped")]
    Stopped,
    /// The device answered the request with a refusal of a kind its protocol names
    /// (a CoAP response code, an HTTP status): each kind becomes its own XMPP error.
    #[error("the device answered {text}")]
    Answered {
        /// What kind of refusal.
        kind: Refusal,
        /// The answer as the protocol writes it, for people (`4.03 Forbidden`).
        text: String,
    },
}

/// Kinds of refusal a device can answer with, named after what a client should make of
/// them rather than after any one protocol's codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The request was malformed or the value not accepted (CoAP 4.00, 4.02, 4.08, 4.12).
    BadRequest,
    /// The requester is not allowed (CoAP 4.01, 4.03).
    Forbidden,
    /// No such resource (CoAP 4.04).
    NotFound,
    /// The method is not allowed on the resource (CoAP 4.05).
    NotAllowed,
    /// The content is not acceptable to the device (CoAP 4.06, 4.13, 4.15).
    NotAcceptable,
    /// The device cannot serve now; retrying later may succeed (CoAP 5.03), after
    /// `retry_after` where it said.
    Unavailable {
        /// When to try again, if the device said.
        retry_after: Option<std::time::Duration>,
    },
    /// The device failed (CoAP 5.00 and the other 5.xx).
    Internal,
}

impl AdapterError {
    /// The text for any peer who may see the device: like `Display` (the log's text),
    /// without what a link-down reason keeps for the log and the control right (host
    /// names, ports, device paths).
    pub fn public(&self) -> String {
        match self {
            AdapterError::LinkDown(r) => format!("link down: {}", r.public()),
            other => other.to_string(),
        }
    }

    /// Both texts as a [`Reason`].
    pub fn reason(&self) -> Reason {
        match self {
            AdapterError::LinkDown(r) => r.prefixed("link down: "),
            other => Reason::new(other.to_string()),
        }
    }
}
