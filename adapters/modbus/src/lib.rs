//! Modbus adapter: TCP, RTU and RTU over TCP devices as fieldgate devices, with merged
//! reads and isolated failures.
//!
//! [`ModbusKind`] plugs it into the gateway's registry. The crate holds:
//!
//! - configuration: [`ModbusConnection`] (`[[modbus.connection]]`), [`ModbusDevice`]
//!   (`[device.modbus]`) and [`ModbusField`] (a field's `modbus = { ... }`), each with
//!   validation that names the offending option ([`ConfigError::key`]);
//! - [`ModbusField::resolve`] turns a field's section into a [`Point`], which derives the
//!   field's [`FieldSpec`](fieldgate_api::FieldSpec), decodes registers or bits into a
//!   [`Value`](fieldgate_api::Value) and encodes a value into a [`WriteOp`], applying
//!   [`ByteOrder`], scale, offset, decimals and [`ValueMap`] both ways;
//! - [`plan`] merges a device's fields into the fewest read requests the protocol, the
//!   device's limits and the gap rule allow ([`ReadPlan::requests_per_cycle`]);
//! - [`Bus`]: one task per connection serialising requests, with reconnect and back-off;
//!   [`ModbusAdapter`] polls a device through it and applies writes.
//!
//! The vocabulary follows Telegraf's Modbus input where it can (`register`, `address`,
//! `byte_order` letters, `scale`); `README.md` maps Telegraf's and Home Assistant's names.

#![warn(missing_docs)]

mod adapter;
mod bus;
mod codec;
mod config;
#[doc(hidden)]
pub mod fuzzing;
mod instep;
mod kind;
mod link;
mod plan;
mod types;

pub use adapter::{DeviceSettings, ModbusAdapter};
pub use bus::{Bus, BusAnswer, BusError, BusOp, Exception};
pub use codec::{DecodeError, EncodeError, Point, WriteOp};
pub use config::{
    ConfigError, Endpoint, ModbusConnection, ModbusDevice, ModbusField, Parity, SerialSettings,
    Transport, DEFAULT_TCP_PORT,
};
pub use kind::{ModbusKind, ModbusSetup};
pub use plan::{
    naive_request_count, plan, PlanError, PlanLimits, ReadPlan, ReadRequest, Slot, Span,
};
pub use types::{
    ByteOrder, DataType, RegisterKind, ValueMap, MAX_READ_BITS, MAX_READ_REGISTERS, MAX_WRITE_BITS,
    MAX_WRITE_REGISTERS,
};
