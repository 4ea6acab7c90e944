//! The CoAP adapter of fieldgate: constrained devices that serve CoAP (RFC 7252) resources,
//! read by GET or followed by Observe (RFC 7641), written by PUT/POST, as XMPP things.
//!
//! This crate currently holds the transport ([`transport`]): the CoAP message layer and
//! request/response layer on tokio, with block-wise transfers (RFC 7959) and Observe.
//! `coap-lite` is used as the message codec only. It knows nothing of XMPP.

pub mod address;
pub mod config;
mod device;
pub mod discover;
mod kind;
pub mod linkformat;
mod runtime;
mod setup;
pub mod transport;

pub use kind::CoapKind;
pub use setup::{CoapSetup, Command, Resource};
