//! History: a local, bounded, crash-safe record of field values (issue 14).
//!
//! [`policy`] says what is kept; [`store`] holds the samples in SQLite (WAL mode: readers — historical readouts, the
//! `fieldgate history` export — never block the writer nor wait for it).

pub mod export;
pub mod periods;
pub mod policy;
pub mod readout;
pub mod sampler;
pub mod store;
pub mod writer;
