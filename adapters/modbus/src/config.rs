//! Configuration of the Modbus adapter: connections (`[[modbus.connection]]`), a
//! device's Modbus section (`[device.modbus]`) and a field's Modbus section
//! (`modbus = { ... }`), with validation that explains what is wrong.

use std::fmt;
use std::time::Duration;

use fieldgate_api::HumanDuration;
use serde::Deserialize;

use crate::codec::{implied_decimals, Point};
use crate::plan::PlanLimits;
use crate::types::{
    ByteOrder, DataType, RegisterKind, ValueMap, MAX_READ_BITS, MAX_READ_REGISTERS,
    MAX_WRITE_REGISTERS,
};

/// How a connection reaches its devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Transport {
    /// Modbus TCP (MBAP framing) to a device or gateway, by default on port 502.
    Tcp,
    /// Modbus RTU on a local serial port (RS-485 / RS-232).
    Rtu,
    /// RTU frames carried in a TCP stream, as transparent serial servers do.
    RtuOverTcp,
}

impl Transport {
    /// Whether the transport is a TCP stream (`tcp` or `rtu-over-tcp`).
    pub fn is_tcp(self) -> bool {
        !matches!(self, Transport::Rtu)
    }

    /// The name as written in the configuration.
    pub fn name(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Rtu => "rtu",
            Transport::RtuOverTcp => "rtu-over-tcp",
        }
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Serial parity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Parity {
    /// No parity bit (the common 8N1).
    #[default]
    None,
    /// Even parity (the Modbus specification's default, 8E1).
    Even,
    /// Odd parity.
    Odd,
}

/// The default TCP port of Modbus.
pub const DEFAULT_TCP_PORT: u16 = 502;

/// One connection to a bus (`[[modbus.connection]]`): a TCP socket or a serial port that
/// one or more devices share.
///
/// Requests on one connection are serialised: one request is in flight at a time (a
/// serial bus allows nothing else, and many TCP devices and gateways answer only one
/// transaction at a time), so there is no `max_concurrent` option; it is always 1.
/// Devices that should be polled in parallel need connections of their own. A device
/// that stops answering costs its connection one `timeout` per request and never stalls
/// other connections.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModbusConnection {
    /// The name devices refer to in `[device.modbus] connection = "..."`.
    pub name: String,
    /// `tcp`, `rtu` or `rtu-over-tcp`.
    pub transport: Transport,
    /// `"host:port"` of a `tcp` or `rtu-over-tcp` connection (port 502 if omitted;
    /// IPv6 as `"[::1]:502"`).
    pub address: Option<String>,
    /// Serial device of an `rtu` connection, e.g. `"/dev/ttyUSB0"`.
    pub port: Option<String>,
    /// `rtu`: bits per second. Default 9600.
    pub baud: Option<u32>,
    /// `rtu`: data bits, 5 to 8. Default 8 (RTU frames carry binary bytes).
    pub data_bits: Option<u8>,
    /// `rtu`: `none`, `even` or `odd`. Default `none`.
    pub parity: Option<Parity>,
    /// `rtu`: 1 or 2. Default 1.
    pub stop_bits: Option<u8>,
    /// `rtu` and `rtu-over-tcp`: silence kept between the end of one frame and the next
    /// request. For `rtu` it is never less than the 3.5 character times the RTU
    /// specification requires (1.75 ms above 19200 baud), which is also the default;
    /// for `rtu-over-tcp` the default is none (the serial server keeps the gap).
    pub frame_delay: Option<HumanDuration>,
    /// How long to wait for an answer before the request counts as failed and the
    /// connection as suspect. Default `"1s"`, 10 ms to 5 min.
    #[serde(default = "default_timeout")]
    pub timeout: HumanDuration,
    /// First wait before reconnecting after the link failed or was dropped; doubled after
    /// each drop up to `reconnect_max`, and starting over once a link carried an answer.
    /// Default `"500ms"`.
    #[serde(default = "default_reconnect_min")]
    pub reconnect_min: HumanDuration,
    /// Longest wait between reconnection attempts. Default `"30s"`, at most 10 min.
    #[serde(default = "default_reconnect_max")]
    pub reconnect_max: HumanDuration,
}

fn default_timeout() -> HumanDuration {
    HumanDuration::from_secs(1)
}
fn default_reconnect_min() -> HumanDuration {
    HumanDuration::from_millis(500)
}
fn default_reconnect_max() -> HumanDuration {
    HumanDuration::from_secs(30)
}

/// Where and how a validated connection reaches its bus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// Modbus TCP.
    Tcp {
        /// Host name or IP address.
        host: String,
        /// TCP port.
        port: u16,
    },
    /// RTU frames over a TCP stream.
    RtuOverTcp {
        /// Host name or IP address.
        host: String,
        /// TCP port.
        port: u16,
        /// Extra silence between one answer and the next request.
        frame_delay: Duration,
    },
    /// RTU on a serial port.
    Rtu(SerialSettings),
}

/// The resolved settings of a serial port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SerialSettings {
    /// Serial device path.
    pub path: String,
    /// Bits per second.
    pub baud: u32,
    /// Data bits, 5 to 8.
    pub data_bits: u8,
    /// Parity.
    pub parity: Parity,
    /// Stop bits, 1 or 2.
    pub stop_bits: u8,
    /// Silence kept between frames: the configured `frame_delay`, and never less than
    /// [`min_frame_gap`](Self::min_frame_gap).
    pub frame_delay: Duration,
}

impl SerialSettings {
    /// Bits per character: start bit, data bits, parity bit, stop bits.
    fn char_bits(&self) -> u64 {
        1 + u64::from(self.data_bits)
            + u64::from(self.parity != Parity::None)
            + u64::from(self.stop_bits)
    }

    /// Time to send one character.
    pub fn char_time(&self) -> Duration {
        Duration::from_nanos(self.char_bits() * 1_000_000_000 / u64::from(self.baud.max(1)))
    }

    /// The 3.5 character times of silence that end an RTU frame; fixed at 1.75 ms above
    /// 19200 baud, as the Modbus serial line specification says.
    pub fn min_frame_gap(&self) -> Duration {
        if self.baud > 19_200 {
            Duration::from_micros(1750)
        } else {
            Duration::from_nanos(self.char_bits() * 3_500_000_000 / u64::from(self.baud.max(1)))
        }
    }
}

impl ModbusConnection {
    /// A connection with every option at its default.
    pub fn new(name: impl Into<String>, transport: Transport) -> Self {
        ModbusConnection {
            name: name.into(),
            transport,
            address: None,
            port: None,
            baud: None,
            data_bits: None,
            parity: None,
            stop_bits: None,
            frame_delay: None,
            timeout: default_timeout(),
            reconnect_min: default_reconnect_min(),
            reconnect_max: default_reconnect_max(),
        }
    }

    /// Checks the connection; see [`endpoint`](Self::endpoint).
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.endpoint().map(|_| ())
    }

    /// Validates the connection and resolves where it goes, with defaults filled in.
    pub fn endpoint(&self) -> Result<Endpoint, ConfigError> {
        if self.name.trim().is_empty() {
            return Err(ConfigError::EmptyName);
        }
        let t = self.transport;
        let not_for = |key: &'static str, why: &'static str| ConfigError::NotApplicable {
            key,
            transport: t,
            why,
        };
        let serial_only = "it is a serial line setting";
        if t.is_tcp() {
            if self.port.is_some() {
                return Err(not_for(
                    "port",
                    "port names a serial device; a TCP connection uses address = \"host:port\"",
                ));
            }
            for (key, set) in [
                ("baud", self.baud.is_some()),
                ("data_bits", self.data_bits.is_some()),
                ("parity", self.parity.is_some()),
                ("stop_bits", self.stop_bits.is_some()),
            ] {
                if set {
                    return Err(not_for(key, serial_only));
                }
            }
            if t == Transport::Tcp && self.frame_delay.is_some() {
                return Err(not_for(
                    "frame_delay",
                    "TCP frames need no silence between them",
                ));
            }
        } else if self.address.is_some() {
            return Err(not_for(
                "address",
                "an rtu connection uses port = \"/dev/...\"; for a serial server use transport = \"rtu-over-tcp\"",
            ));
        }
        self.check_timing()?;
        let endpoint = match t {
            Transport::Tcp | Transport::RtuOverTcp => {
                let address = self.address.as_deref().ok_or(ConfigError::Missing {
                    transport: t,
                    key: "address",
                    what: "\"host:port\" of the device or gateway",
                })?;
                let (host, port) =
                    parse_host_port(address).map_err(|reason| ConfigError::BadAddress {
                        address: address.to_owned(),
                        reason,
                    })?;
                if t == Transport::Tcp {
                    Endpoint::Tcp { host, port }
                } else {
                    Endpoint::RtuOverTcp {
                        host,
                        port,
                        frame_delay: self.frame_delay.map(Duration::from).unwrap_or_default(),
                    }
                }
            }
            Transport::Rtu => {
                let path = self
                    .port
                    .as_deref()
                    .filter(|p| !p.trim().is_empty())
                    .ok_or(ConfigError::Missing {
                        transport: t,
                        key: "port",
                        what: "the serial device, e.g. \"/dev/ttyUSB0\"",
                    })?;
                let baud = self.baud.unwrap_or(9600);
                if baud == 0 {
                    return Err(ConfigError::OutOfRange {
                        key: "baud",
                        value: 0,
                        min: 1,
                        max: 4_000_000,
                    });
                }
                let data_bits = self.data_bits.unwrap_or(8);
                range("data_bits", data_bits.into(), 5, 8)?;
                let stop_bits = self.stop_bits.unwrap_or(1);
                range("stop_bits", stop_bits.into(), 1, 2)?;
                let mut serial = SerialSettings {
                    path: path.to_owned(),
                    baud,
                    data_bits,
                    parity: self.parity.unwrap_or_default(),
                    stop_bits,
                    frame_delay: Duration::ZERO,
                };
                serial.frame_delay = self
                    .frame_delay
                    .map(Duration::from)
                    .unwrap_or_default()
                    .max(serial.min_frame_gap());
                Endpoint::Rtu(serial)
            }
        };
        Ok(endpoint)
    }

    fn check_timing(&self) -> Result<(), ConfigError> {
        let timeout = Duration::from(self.timeout);
        if timeout < Duration::from_millis(10) || timeout > Duration::from_secs(300) {
            return Err(ConfigError::DurationRange {
                key: "timeout",
                value: self.timeout,
                min: "10ms",
                max: "5m",
            });
        }
        if self.reconnect_min.0.is_zero() {
            return Err(ConfigError::DurationRange {
                key: "reconnect_min",
                value: self.reconnect_min,
                min: "1ms",
                max: "10m",
            });
        }
        if self.reconnect_max.0 > Duration::from_secs(600) {
            return Err(ConfigError::DurationRange {
                key: "reconnect_max",
                value: self.reconnect_max,
                min: "reconnect_min",
                max: "10m",
            });
        }
        if self.reconnect_min > self.reconnect_max {
            return Err(ConfigError::ReconnectOrder {
                min: self.reconnect_min,
                max: self.reconnect_max,
            });
        }
        Ok(())
    }
}

/// Splits `"host:port"`, `"host"`, `"[v6]:port"` or a bare IPv6 address.
fn parse_host_port(s: &str) -> Result<(String, u16), String> {
    let s = s.trim();
    let port_of = |p: &str| match p.parse::<u16>() {
        Ok(0) | Err(_) => Err(format!("port {p:?} is not a number in 1..65535")),
        Ok(port) => Ok(port),
    };
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or("an IPv6 address in brackets needs the closing ']'")?;
        match after {
            "" => (host, DEFAULT_TCP_PORT),
            _ => match after.strip_prefix(':') {
                Some(p) => (host, port_of(p)?),
                None => return Err(format!("unexpected {after:?} after ']'")),
            },
        }
    } else {
        match s.matches(':').count() {
            0 => (s, DEFAULT_TCP_PORT),
            1 => {
                let (h, p) = s.split_once(':').unwrap_or((s, ""));
                (h, port_of(p)?)
            }
            // A bare IPv6 address without a port.
            _ => (s, DEFAULT_TCP_PORT),
        }
    };
    if host.is_empty() {
        return Err("the host is empty".into());
    }
    if host.contains(char::is_whitespace) || host.contains('/') {
        return Err(format!(
            "{host:?} is not a host name or IP address (write \"host:port\", no scheme)"
        ));
    }
    Ok((host.to_owned(), port))
}

fn range(key: &'static str, value: i64, min: i64, max: i64) -> Result<(), ConfigError> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(ConfigError::OutOfRange {
            key,
            value,
            min,
            max,
        })
    }
}

/// A device's Modbus section (`[device.modbus]`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModbusDevice {
    /// Name of the `[[modbus.connection]]` the device is reached through.
    pub connection: String,
    /// Unit identifier ("slave id"): 1 to 247; 0 and 255 only over TCP, where many
    /// devices answer to them. Default 1.
    #[serde(default = "default_unit")]
    pub unit: u8,
    /// Interval between two reads of every field. Default `"10s"`.
    #[serde(default = "default_poll")]
    pub poll: HumanDuration,
    /// How field addresses are counted: 0 (the address on the wire, as tokio-modbus,
    /// Telegraf and Home Assistant count) or 1 (as many manuals do: register 1 is wire
    /// address 0). Default 0.
    #[serde(default)]
    pub address_base: u8,
    /// Merge fields of one register kind into as few reads as the limits allow. `false`
    /// reads each field on its own (for devices that reject reads spanning several
    /// values). Default `true`.
    #[serde(default = "yes")]
    pub merge: bool,
    /// Largest run of unused addresses (registers, or bits for coils and discrete
    /// inputs) a merged read may span to join two fields. 0 merges only adjacent or
    /// overlapping fields. Default 10.
    #[serde(default = "default_max_gap")]
    pub max_gap: u16,
    /// Most registers one read may ask for, 1 to 125. Default 125, the protocol limit;
    /// some devices accept less (e.g. 64).
    #[serde(default = "default_max_registers")]
    pub max_registers_per_request: u16,
    /// Most coils or discrete inputs one read may ask for, 1 to 2000. Default 2000.
    #[serde(default = "default_max_bits")]
    pub max_bits_per_request: u16,
    /// After a write, read the field back and report the write failed unless the device
    /// holds the value written. Default `false`.
    #[serde(default)]
    pub read_back: bool,
    /// Write single coils and registers with FC15 / FC16 instead of FC05 / FC06, for
    /// devices that implement only the "multiple" functions. Default `false`.
    #[serde(default)]
    pub write_multiple: bool,
}

fn default_unit() -> u8 {
    1
}
fn default_poll() -> HumanDuration {
    HumanDuration::from_secs(10)
}
fn yes() -> bool {
    true
}
fn default_max_gap() -> u16 {
    10
}
fn default_max_registers() -> u16 {
    MAX_READ_REGISTERS
}
fn default_max_bits() -> u16 {
    MAX_READ_BITS
}

impl ModbusDevice {
    /// A device on `connection` with every other option at its default.
    pub fn new(connection: impl Into<String>) -> Self {
        ModbusDevice {
            connection: connection.into(),
            unit: default_unit(),
            poll: default_poll(),
            address_base: 0,
            merge: true,
            max_gap: default_max_gap(),
            max_registers_per_request: default_max_registers(),
            max_bits_per_request: default_max_bits(),
            read_back: false,
            write_multiple: false,
        }
    }

    /// Checks the options that do not depend on the connection.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.connection.trim().is_empty() {
            return Err(ConfigError::EmptyConnection);
        }
        if (248..=254).contains(&self.unit) {
            return Err(ConfigError::ReservedUnit(self.unit));
        }
        if self.poll.0 < Duration::from_millis(1) {
            return Err(ConfigError::DurationRange {
                key: "poll",
                value: self.poll,
                min: "1ms",
                max: "any",
            });
        }
        range("address_base", self.address_base.into(), 0, 1)?;
        range(
            "max_registers_per_request",
            self.max_registers_per_request.into(),
            1,
            MAX_READ_REGISTERS.into(),
        )?;
        range(
            "max_bits_per_request",
            self.max_bits_per_request.into(),
            1,
            MAX_READ_BITS.into(),
        )?;
        Ok(())
    }

    /// Checks the device against the connection it names (which must be `conn`).
    pub fn validate_with(&self, conn: &ModbusConnection) -> Result<(), ConfigError> {
        self.validate()?;
        if self.connection != conn.name {
            return Err(ConfigError::UnknownConnection(self.connection.clone()));
        }
        if (self.unit == 0 || self.unit == 255) && !conn.transport.is_tcp() {
            return Err(ConfigError::UnitNeedsTcp {
                unit: self.unit,
                transport: conn.transport,
            });
        }
        Ok(())
    }

    /// The planner's limits for this device.
    pub fn limits(&self) -> PlanLimits {
        PlanLimits {
            merge: self.merge,
            max_gap: self.max_gap,
            max_registers: self.max_registers_per_request,
            max_bits: self.max_bits_per_request,
        }
    }
}

/// A field's Modbus section (`modbus = { register = "holding", address = 0, ... }`).
///
/// The field's name, unit, decimals, writability and range are the gateway's generic
/// field options; this section says where the value lives and how it is encoded.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModbusField {
    /// `coil`, `discrete` (discrete input), `holding` or `input`. Default `holding`.
    #[serde(default)]
    pub register: RegisterKind,
    /// Address of the (first) coil or register, counted from the device's
    /// `address_base`.
    pub address: u32,
    /// How the value is stored: `bool` (coils and discrete inputs; the default there),
    /// `bit`, `i16`, `u16` (the default for registers), `i32`, `u32`, `i64`, `u64`,
    /// `f32`, `f64` or `string`.
    #[serde(default, rename = "type")]
    pub data_type: Option<DataType>,
    /// Byte and word order of register values: `ABCD` (default), `BADC`, `CDAB`,
    /// `DCBA`; also `AB` / `BA` for one-register values and strings, and `ABCDEFGH`,
    /// `BADCFEHG`, `GHEFCDAB`, `HGFEDCBA` for four-register values.
    pub order: Option<ByteOrder>,
    /// For `type = "bit"`: which bit of the register, 0 (least significant) to 15.
    pub bit: Option<u8>,
    /// For `type = "string"`: its size in registers (two bytes each), 1 to 125.
    pub length: Option<u16>,
    /// Multiplier from the register value to the field value:
    /// `value = raw × scale + offset`. Numeric types only; not 0. Default 1.
    pub scale: Option<f64>,
    /// Added after scaling. Numeric types only. Default 0.
    pub offset: Option<f64>,
    /// Labels of an enum-like integer register or bit: `{ 0 = "off", 1 = "auto" }`.
    /// Makes the field an enum: reads report the label, writes take a label.
    #[serde(default)]
    pub values: ValueMap,
}

impl ModbusField {
    /// The configured type, or the default for the register kind (`bool` for coils and
    /// discrete inputs, `u16` for registers).
    pub fn data_type(&self) -> DataType {
        self.data_type.unwrap_or(if self.register.is_bit() {
            DataType::Bool
        } else {
            DataType::U16
        })
    }

    /// Validates the section for a field of `device` and resolves it into a [`Point`]
    /// that decodes, encodes and plans. `writable` and `decimals` are the field's generic
    /// options; with `decimals` unset, a scaled integer gets the decimals its `scale` and
    /// `offset` imply (0.1 → 1).
    pub fn resolve(
        &self,
        device: &ModbusDevice,
        writable: bool,
        decimals: Option<u8>,
    ) -> Result<Point, ConfigError> {
        let kind = self.register;
        let dt = self.data_type();
        let length = self.length.unwrap_or(0);

        // The type must suit the register kind.
        if kind.is_bit() {
            match dt {
                DataType::Bool => {}
                DataType::Bit => return Err(ConfigError::BitOnBitKind(kind)),
                _ => {
                    return Err(ConfigError::TypeNeedsRegisters {
                        data_type: dt,
                        registers: dt.registers(length),
                        kind,
                    })
                }
            }
        } else if dt == DataType::Bool {
            return Err(ConfigError::BoolOnRegister(kind));
        }

        // Options that belong to one type only.
        match (dt, self.bit) {
            (DataType::Bit, None) => {
                return Err(ConfigError::MissingOption {
                    key: "bit",
                    data_type: dt,
                    hint: "the bit number, 0 (least significant) to 15",
                })
            }
            (DataType::Bit, Some(b)) => range("bit", b.into(), 0, 15)?,
            (_, Some(_)) => {
                return Err(ConfigError::OptionNotForType {
                    key: "bit",
                    data_type: dt,
                })
            }
            (_, None) => {}
        }
        match (dt, self.length) {
            (DataType::String, None) => {
                return Err(ConfigError::MissingOption {
                    key: "length",
                    data_type: dt,
                    hint: "its size in registers (two characters each)",
                })
            }
            (DataType::String, Some(n)) => {
                range("length", n.into(), 1, MAX_READ_REGISTERS.into())?;
                if writable && n > MAX_WRITE_REGISTERS {
                    return Err(ConfigError::StringTooLongToWrite(n));
                }
            }
            (_, Some(_)) => {
                return Err(ConfigError::OptionNotForType {
                    key: "length",
                    data_type: dt,
                })
            }
            (_, None) => {}
        }
        let registers = dt.registers(length);
        let order = match self.order {
            None => ByteOrder::default(),
            Some(_) if matches!(dt, DataType::Bool | DataType::Bit) => {
                return Err(ConfigError::OptionNotForType {
                    key: "order",
                    data_type: dt,
                })
            }
            Some(o) => {
                let fits = match o.letters() {
                    2 => registers == 1 || dt == DataType::String,
                    8 => registers == 4 && dt != DataType::String,
                    _ => true,
                };
                if !fits {
                    return Err(ConfigError::OrderWidth {
                        order: o,
                        data_type: dt,
                    });
                }
                o
            }
        };

        // Scale, offset and value map.
        for (key, v) in [("scale", self.scale), ("offset", self.offset)] {
            let Some(v) = v else { continue };
            if !dt.is_numeric() {
                return Err(ConfigError::OptionNotForType { key, data_type: dt });
            }
            if !self.values.is_empty() {
                return Err(ConfigError::ScaleWithValueMap(key));
            }
            if !v.is_finite() || (key == "scale" && v == 0.0) {
                return Err(ConfigError::BadNumber { key, value: v });
            }
        }
        if !self.values.is_empty() {
            let Some((min, max)) = dt.raw_range().filter(|_| dt != DataType::String) else {
                return Err(ConfigError::ValueMapType(dt));
            };
            if let Some((raw, _)) = self.values.iter().find(|(k, _)| !(min..=max).contains(k)) {
                return Err(ConfigError::ValueMapKey {
                    key: raw,
                    data_type: dt,
                    min,
                    max,
                });
            }
        }

        // Where it lives.
        let base = u32::from(device.address_base.min(1));
        let (first, last) = (base, 65535 + base);
        if !(first..=last).contains(&self.address) {
            return Err(ConfigError::AddressOutOfRange {
                address: self.address,
                first,
                last,
            });
        }
        let wire = self.address - base;
        let count = if kind.is_bit() { 1 } else { registers };
        if wire + u32::from(count) > 65536 {
            return Err(ConfigError::PastEnd {
                data_type: dt,
                address: self.address,
                count,
                last,
            });
        }
        let cap = if kind.is_bit() {
            device.max_bits_per_request
        } else {
            device.max_registers_per_request
        };
        if count > cap {
            return Err(ConfigError::LargerThanRequest {
                data_type: dt,
                count,
                cap,
            });
        }

        if writable && !kind.is_writable() {
            return Err(ConfigError::WritableReadOnly(kind));
        }

        let scale = self.scale.unwrap_or(1.0);
        let offset = self.offset.unwrap_or(0.0);
        Ok(Point {
            kind,
            address: wire as u16,
            data_type: dt,
            order,
            bit: self.bit.unwrap_or(0),
            count,
            scale,
            offset,
            values: self.values.clone(),
            decimals: decimals.or_else(|| implied_decimals(dt, scale, offset)),
            writable,
        })
    }
}

/// What is wrong with a Modbus connection, device or field section.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    /// A connection without a name.
    #[error("connection name must not be empty")]
    EmptyName,
    /// An option the transport needs is missing.
    #[error("transport \"{transport}\" needs {key}: {what}")]
    Missing {
        /// The transport.
        transport: Transport,
        /// The missing option.
        key: &'static str,
        /// What to write there.
        what: &'static str,
    },
    /// An option that the transport does not use.
    #[error("{key} does not apply to transport \"{transport}\": {why}")]
    NotApplicable {
        /// The option.
        key: &'static str,
        /// The transport.
        transport: Transport,
        /// Why not / what to use instead.
        why: &'static str,
    },
    /// A TCP address that cannot be parsed.
    #[error("invalid address {address:?}: {reason}")]
    BadAddress {
        /// As written.
        address: String,
        /// What is wrong.
        reason: String,
    },
    /// A number outside its range.
    #[error("{key} {value} is out of range {min}..{max}")]
    OutOfRange {
        /// The option.
        key: &'static str,
        /// As written.
        value: i64,
        /// Smallest accepted.
        min: i64,
        /// Largest accepted.
        max: i64,
    },
    /// A duration outside its range.
    #[error("{key} {value} is out of range {min}..{max}")]
    DurationRange {
        /// The option.
        key: &'static str,
        /// As written.
        value: HumanDuration,
        /// Smallest accepted.
        min: &'static str,
        /// Largest accepted.
        max: &'static str,
    },
    /// `reconnect_min` above `reconnect_max`.
    #[error("reconnect_min ({min}) is longer than reconnect_max ({max})")]
    ReconnectOrder {
        /// reconnect_min.
        min: HumanDuration,
        /// reconnect_max.
        max: HumanDuration,
    },
    /// A device section without a connection name.
    #[error("connection must name a [[modbus.connection]]")]
    EmptyConnection,
    /// The device names a connection that does not exist.
    #[error("there is no [[modbus.connection]] named {0:?}")]
    UnknownConnection(String),
    /// Unit ids 248 to 254 are reserved.
    #[error("unit {0} is reserved (248..254); use 1..247")]
    ReservedUnit(u8),
    /// Unit 0 (RTU broadcast) or 255 on a serial line.
    #[error(
        "unit {unit} works over TCP only: on transport \"{transport}\" {} ; use 1..247",
        if *.unit == 0 { "0 is the broadcast address, which no device answers" } else { "255 is reserved" }
    )]
    UnitNeedsTcp {
        /// The unit id.
        unit: u8,
        /// The connection's transport.
        transport: Transport,
    },
    /// An address outside the 65536 addresses of a table.
    #[error("address {address} is out of range {first}..{last}")]
    AddressOutOfRange {
        /// As written.
        address: u32,
        /// First valid address (the device's address_base).
        first: u32,
        /// Last valid address.
        last: u32,
    },
    /// A multi-register value that starts in range but ends past the last address.
    #[error("{data_type} at address {address} needs {count} registers and runs past the last address {last}")]
    PastEnd {
        /// The type.
        data_type: DataType,
        /// As written.
        address: u32,
        /// Registers needed.
        count: u16,
        /// Last valid address.
        last: u32,
    },
    /// A register type on a coil or discrete input.
    #[error(
        "type {data_type} needs {} but the field is a {kind}",
        match (*.data_type, *.registers) { (DataType::String, _) => "registers".to_owned(), (_, 1) => "1 register".to_owned(), (_, n) => format!("{n} registers") }
    )]
    TypeNeedsRegisters {
        /// The type.
        data_type: DataType,
        /// Registers it needs.
        registers: u16,
        /// The bit kind configured.
        kind: RegisterKind,
    },
    /// `type = "bit"` on a coil or discrete input.
    #[error("type bit selects one bit of a register, but the field is a {0}, a single bit already: use type bool")]
    BitOnBitKind(RegisterKind),
    /// `type = "bool"` on a register.
    #[error("type bool is for coils and discrete inputs, but the field is a {0}: use type bit with bit = 0..15")]
    BoolOnRegister(RegisterKind),
    /// A type that needs an option which is missing.
    #[error("type {data_type} needs {key}: {hint}")]
    MissingOption {
        /// The option.
        key: &'static str,
        /// The type.
        data_type: DataType,
        /// What to write there.
        hint: &'static str,
    },
    /// An option that does not apply to the type.
    #[error("{key} does not apply to type {data_type}")]
    OptionNotForType {
        /// The option.
        key: &'static str,
        /// The type.
        data_type: DataType,
    },
    /// An order name for another width.
    #[error("order {order} does not fit type {data_type} ({} register(s)): use {}", .data_type.registers(1), order_hint(*.data_type))]
    OrderWidth {
        /// As written.
        order: ByteOrder,
        /// The type.
        data_type: DataType,
    },
    /// A scale or offset that is not a usable number.
    #[error("{key} {value} must be a finite number{}", if *.key == "scale" { " other than 0" } else { "" })]
    BadNumber {
        /// `scale` or `offset`.
        key: &'static str,
        /// As written.
        value: f64,
    },
    /// Scale or offset together with a value map.
    #[error("{0} does not combine with a value map (labels name raw register values)")]
    ScaleWithValueMap(&'static str),
    /// A value map on a type that cannot carry one.
    #[error("a value map needs an integer type or bit, not {0}")]
    ValueMapType(DataType),
    /// A value map key the type cannot hold.
    #[error("value map key {key} is outside the {data_type} range {min}..{max}")]
    ValueMapKey {
        /// The raw value.
        key: i128,
        /// The type.
        data_type: DataType,
        /// Smallest raw value.
        min: i128,
        /// Largest raw value.
        max: i128,
    },
    /// A field larger than the device's request cap.
    #[error(
        "the {data_type} field needs {count} {} but max_{}_per_request is {cap}",
        if *.data_type == DataType::Bool { "bit" } else { "registers" },
        if *.data_type == DataType::Bool { "bits" } else { "registers" }
    )]
    LargerThanRequest {
        /// The type.
        data_type: DataType,
        /// Registers needed.
        count: u16,
        /// The cap.
        cap: u16,
    },
    /// A writable string longer than one FC16 write.
    #[error("a writable string of {0} registers is longer than the 123 registers one write (FC16) can carry")]
    StringTooLongToWrite(u16),
    /// `writable = true` on a discrete input or input register.
    #[error("writable {0} is impossible: the protocol has no function to write one (use a coil or holding register)")]
    WritableReadOnly(RegisterKind),
}

fn order_hint(dt: DataType) -> &'static str {
    match dt.registers(1) {
        1 => "AB or BA (or ABCD, BADC, CDAB, DCBA)",
        4 => "ABCDEFGH, BADCFEHG, GHEFCDAB or HGFEDCBA (or ABCD, BADC, CDAB, DCBA)",
        _ => "ABCD, BADC, CDAB or DCBA",
    }
}

impl ConfigError {
    /// The option the error is about, for pointing at it in the configuration file.
    pub fn key(&self) -> &'static str {
        match self {
            ConfigError::EmptyName => "name",
            ConfigError::Missing { key, .. }
            | ConfigError::NotApplicable { key, .. }
            | ConfigError::OutOfRange { key, .. }
            | ConfigError::DurationRange { key, .. }
            | ConfigError::MissingOption { key, .. }
            | ConfigError::OptionNotForType { key, .. }
            | ConfigError::BadNumber { key, .. } => key,
            ConfigError::ScaleWithValueMap(_) | ConfigError::ValueMapKey { .. } => "values",
            ConfigError::ValueMapType(_) => "values",
            ConfigError::BadAddress { .. } => "address",
            ConfigError::ReconnectOrder { .. } => "reconnect_min",
            ConfigError::EmptyConnection | ConfigError::UnknownConnection(_) => "connection",
            ConfigError::ReservedUnit(_) | ConfigError::UnitNeedsTcp { .. } => "unit",
            ConfigError::AddressOutOfRange { .. } | ConfigError::PastEnd { .. } => "address",
            ConfigError::TypeNeedsRegisters { .. }
            | ConfigError::BitOnBitKind(_)
            | ConfigError::BoolOnRegister(_) => "type",
            ConfigError::OrderWidth { .. } => "order",
            ConfigError::LargerThanRequest { data_type, .. } if *data_type != DataType::String => {
                "type"
            }
            ConfigError::LargerThanRequest { .. } | ConfigError::StringTooLongToWrite(_) => {
                "length"
            }
            ConfigError::WritableReadOnly(_) => "writable",
        }
    }
}
