//! fieldgate: an edge gateway that makes every field-bus device its own XMPP entity.
//!
//! The binary (`src/main.rs`) is a thin shell around this library: configuration
//! ([`config`]), the access policy ([`access`]), persistent state ([`state`]), the device
//! registry and its adapters ([`devices`], [`gateway`]) and the XMPP side ([`xmpp`]).

pub mod access;
pub mod adapters;
pub mod config;
pub mod devices;
pub mod discovered;
pub mod gateway;
pub mod history;
pub mod log_limit;
pub mod state;
pub mod xmpp;

#[doc(hidden)]
pub mod fuzzing;
