//! The Modbus vocabulary: register kinds, data types, byte orders and value maps.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Most registers one read (FC03 / FC04) may return.
pub const MAX_READ_REGISTERS: u16 = 125;
/// Most bits one read (FC01 / FC02) may return.
pub const MAX_READ_BITS: u16 = 2000;
/// Most registers one write (FC16) may carry.
pub const MAX_WRITE_REGISTERS: u16 = 123;
/// Most coils one write (FC15) may carry.
pub const MAX_WRITE_BITS: u16 = 1968;

/// The four Modbus data tables (`register = "..."`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum RegisterKind {
    /// Read-write single bits: read with FC01, written with FC05 / FC15.
    Coil,
    /// Read-only single bits: read with FC02.
    Discrete,
    /// Read-write 16-bit registers: read with FC03, written with FC06 / FC16.
    #[default]
    Holding,
    /// Read-only 16-bit registers: read with FC04.
    Input,
}

impl RegisterKind {
    /// All kinds, in the order plans list their requests.
    pub const ALL: [RegisterKind; 4] = [
        RegisterKind::Coil,
        RegisterKind::Discrete,
        RegisterKind::Holding,
        RegisterKind::Input,
    ];

    /// Whether addresses of this kind hold single bits (coils, discrete inputs) rather
    /// than 16-bit registers.
    pub fn is_bit(self) -> bool {
        matches!(self, RegisterKind::Coil | RegisterKind::Discrete)
    }

    /// Whether the protocol lets a client write this kind (coils, holding registers).
    pub fn is_writable(self) -> bool {
        matches!(self, RegisterKind::Coil | RegisterKind::Holding)
    }

    /// The function code that reads this kind: 1, 2, 3 or 4.
    pub fn read_function_code(self) -> u8 {
        match self {
            RegisterKind::Coil => 1,
            RegisterKind::Discrete => 2,
            RegisterKind::Holding => 3,
            RegisterKind::Input => 4,
        }
    }

    /// The protocol's limit on one read of this kind: 2000 bits or 125 registers.
    pub fn max_per_read(self) -> u16 {
        if self.is_bit() {
            MAX_READ_BITS
        } else {
            MAX_READ_REGISTERS
        }
    }

    /// What one address of this kind is called in messages: "bit" or "register".
    pub fn unit_name(self) -> &'static str {
        if self.is_bit() {
            "bit"
        } else {
            "register"
        }
    }

    /// The human name used in messages ("holding register").
    pub fn name(self) -> &'static str {
        match self {
            RegisterKind::Coil => "coil",
            RegisterKind::Discrete => "discrete input",
            RegisterKind::Holding => "holding register",
            RegisterKind::Input => "input register",
        }
    }
}

impl fmt::Display for RegisterKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How a field's value is stored on the device (`type = "..."` in the `modbus` table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataType {
    /// A coil or discrete input.
    Bool,
    /// One bit (0 = least significant) of a 16-bit register.
    Bit,
    /// Signed 16-bit integer, one register.
    I16,
    /// Unsigned 16-bit integer, one register.
    U16,
    /// Signed 32-bit integer, two registers.
    I32,
    /// Unsigned 32-bit integer, two registers.
    U32,
    /// Signed 64-bit integer, four registers.
    I64,
    /// Unsigned 64-bit integer, four registers.
    U64,
    /// IEEE 754 single precision, two registers.
    F32,
    /// IEEE 754 double precision, four registers.
    F64,
    /// Text of `length` registers, two bytes per register.
    String,
}

impl DataType {
    /// Every type, as accepted in the configuration.
    pub const ALL: [DataType; 11] = [
        DataType::Bool,
        DataType::Bit,
        DataType::I16,
        DataType::U16,
        DataType::I32,
        DataType::U32,
        DataType::I64,
        DataType::U64,
        DataType::F32,
        DataType::F64,
        DataType::String,
    ];

    /// Registers a value of this type fills (`length` for strings); 0 for `bool`, which
    /// lives in a coil or discrete input.
    pub fn registers(self, length: u16) -> u16 {
        match self {
            DataType::Bool => 0,
            DataType::Bit | DataType::I16 | DataType::U16 => 1,
            DataType::I32 | DataType::U32 | DataType::F32 => 2,
            DataType::I64 | DataType::U64 | DataType::F64 => 4,
            DataType::String => length,
        }
    }

    /// Whether this is an integer type (the types a value map may label).
    pub fn is_integer(self) -> bool {
        matches!(
            self,
            DataType::I16
                | DataType::U16
                | DataType::I32
                | DataType::U32
                | DataType::I64
                | DataType::U64
        )
    }

    /// Whether this is `f32` or `f64`.
    pub fn is_float(self) -> bool {
        matches!(self, DataType::F32 | DataType::F64)
    }

    /// Whether this is a number (integer or float): the types `scale` and `offset` apply to.
    pub fn is_numeric(self) -> bool {
        self.is_integer() || self.is_float()
    }

    /// The smallest and largest raw value of an integer or boolean type.
    pub fn raw_range(self) -> Option<(i128, i128)> {
        Some(match self {
            DataType::Bool | DataType::Bit => (0, 1),
            DataType::I16 => (i16::MIN.into(), i16::MAX.into()),
            DataType::U16 => (0, u16::MAX.into()),
            DataType::I32 => (i32::MIN.into(), i32::MAX.into()),
            DataType::U32 => (0, u32::MAX.into()),
            DataType::I64 => (i64::MIN.into(), i64::MAX.into()),
            DataType::U64 => (0, u64::MAX.into()),
            DataType::F32 | DataType::F64 | DataType::String => return None,
        })
    }

    /// The name as written in the configuration.
    pub fn name(self) -> &'static str {
        match self {
            DataType::Bool => "bool",
            DataType::Bit => "bit",
            DataType::I16 => "i16",
            DataType::U16 => "u16",
            DataType::I32 => "i32",
            DataType::U32 => "u32",
            DataType::I64 => "i64",
            DataType::U64 => "u64",
            DataType::F32 => "f32",
            DataType::F64 => "f64",
            DataType::String => "string",
        }
    }
}

impl fmt::Display for DataType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The order in which a value's bytes travel in its registers (`order = "..."`).
///
/// The letters name the bytes of the value, `A` the most significant; the string lists
/// them in the order they appear on the wire: first register high byte, first register
/// low byte, second register high byte, and so on. Every order is a combination of two
/// independent swaps:
///
/// | order                 | word order (registers)       | bytes in a register |
/// |-----------------------|------------------------------|---------------------|
/// | `AB`, `ABCD`, `ABCDEFGH` | most significant first    | high byte first     |
/// | `BA`, `BADC`, `BADCFEHG` | most significant first    | low byte first      |
/// | `CDAB`, `GHEFCDAB`       | least significant first   | high byte first     |
/// | `DCBA`, `HGFEDCBA`       | least significant first   | low byte first      |
///
/// The four-letter names apply to every width, as in Telegraf: on a one-register value
/// `ABCD` and `CDAB` mean `AB`, `BADC` and `DCBA` mean `BA`; on a four-register value
/// `ABCD` means `ABCDEFGH`, `BADC` `BADCFEHG`, `CDAB` `GHEFCDAB` and `DCBA` `HGFEDCBA`.
/// Two-letter names fit one-register values and strings only, eight-letter names
/// four-register values only. Strings honour only the byte order inside a register:
/// text is always stored first characters first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ByteOrder {
    /// 16-bit big-endian.
    AB,
    /// 16-bit little-endian.
    BA,
    /// Big-endian (Modbus standard, Motorola); the default.
    #[default]
    ABCD,
    /// Big-endian words with the bytes of each register swapped.
    BADC,
    /// Little-endian words (least significant register first), bytes high first.
    CDAB,
    /// Little-endian (Intel): least significant register first, low byte first.
    DCBA,
    /// 64-bit big-endian.
    ABCDEFGH,
    /// 64-bit, big-endian words with the bytes of each register swapped.
    BADCFEHG,
    /// 64-bit, least significant register first, bytes high first.
    GHEFCDAB,
    /// 64-bit little-endian.
    HGFEDCBA,
}

impl ByteOrder {
    /// Every spelling, as accepted in the configuration.
    pub const ALL: [ByteOrder; 10] = [
        ByteOrder::AB,
        ByteOrder::BA,
        ByteOrder::ABCD,
        ByteOrder::BADC,
        ByteOrder::CDAB,
        ByteOrder::DCBA,
        ByteOrder::ABCDEFGH,
        ByteOrder::BADCFEHG,
        ByteOrder::GHEFCDAB,
        ByteOrder::HGFEDCBA,
    ];

    /// The name as written in the configuration.
    pub fn name(self) -> &'static str {
        match self {
            ByteOrder::AB => "AB",
            ByteOrder::BA => "BA",
            ByteOrder::ABCD => "ABCD",
            ByteOrder::BADC => "BADC",
            ByteOrder::CDAB => "CDAB",
            ByteOrder::DCBA => "DCBA",
            ByteOrder::ABCDEFGH => "ABCDEFGH",
            ByteOrder::BADCFEHG => "BADCFEHG",
            ByteOrder::GHEFCDAB => "GHEFCDAB",
            ByteOrder::HGFEDCBA => "HGFEDCBA",
        }
    }

    /// Whether the least significant register comes first.
    pub fn word_swap(self) -> bool {
        matches!(
            self,
            ByteOrder::CDAB | ByteOrder::DCBA | ByteOrder::GHEFCDAB | ByteOrder::HGFEDCBA
        )
    }

    /// Whether each register carries its low byte first.
    pub fn byte_swap(self) -> bool {
        matches!(
            self,
            ByteOrder::BA
                | ByteOrder::BADC
                | ByteOrder::DCBA
                | ByteOrder::BADCFEHG
                | ByteOrder::HGFEDCBA
        )
    }

    /// How many bytes the name spells: 2, 4 or 8.
    pub fn letters(self) -> usize {
        self.name().len()
    }

    /// Puts the `registers` least significant 16-bit words of `value` (most significant
    /// word first) on the wire in this order.
    pub(crate) fn split_registers(self, value: u64, registers: usize) -> Vec<u16> {
        let mut words: Vec<u16> = (0..registers)
            .rev()
            .map(|i| {
                let shift = 16 * i;
                if shift >= 64 {
                    0
                } else {
                    (value >> shift) as u16
                }
            })
            .collect();
        if self.word_swap() {
            words.reverse();
        }
        if self.byte_swap() {
            for w in &mut words {
                *w = w.swap_bytes();
            }
        }
        words
    }

    /// The inverse of [`split_registers`](Self::split_registers): up to four registers as
    /// read from the wire, assembled into one number (only the last four count).
    pub(crate) fn join_registers(self, registers: &[u16]) -> u64 {
        let n = registers.len();
        (0..n).fold(0u64, |acc, i| {
            let idx = if self.word_swap() { n - 1 - i } else { i };
            let mut w = registers[idx];
            if self.byte_swap() {
                w = w.swap_bytes();
            }
            (acc << 16) | u64::from(w)
        })
    }
}

impl fmt::Display for ByteOrder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ByteOrder {
    type Err = String;

    /// Parses an order name, ignoring case.
    fn from_str(s: &str) -> Result<Self, String> {
        let up = s.trim().to_ascii_uppercase();
        ByteOrder::ALL
            .into_iter()
            .find(|o| o.name() == up)
            .ok_or_else(|| {
                format!(
                    "unknown order {s:?}: expected one of {}",
                    ByteOrder::ALL.map(ByteOrder::name).join(", ")
                )
            })
    }
}

impl<'de> Deserialize<'de> for ByteOrder {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl Serialize for ByteOrder {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

/// Labels for the raw values of an enum-like register or bit (`values = { 0 = "off",
/// 1 = "auto" }`): register value → label on reads, label → register value on writes.
///
/// Entries are kept sorted by raw value; raw values and labels are both unique. They are
/// shared: the repetitions of a repeated field hold one map, and an empty map holds
/// nothing at all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ValueMap {
    entries: Option<std::sync::Arc<[(i128, String)]>>,
}

impl ValueMap {
    /// Builds a map; fails on a repeated raw value, a repeated label or an empty label.
    pub fn new<L: Into<String>>(
        entries: impl IntoIterator<Item = (i128, L)>,
    ) -> Result<Self, String> {
        let mut entries: Vec<(i128, String)> =
            entries.into_iter().map(|(k, v)| (k, v.into())).collect();
        entries.sort_by_key(|(k, _)| *k);
        for pair in entries.windows(2) {
            if pair[0].0 == pair[1].0 {
                return Err(format!("value {} is labelled twice", pair[0].0));
            }
        }
        let mut labels: Vec<&str> = entries.iter().map(|(_, l)| l.as_str()).collect();
        if labels.iter().any(|l| l.is_empty()) {
            return Err("a value map label must not be empty".into());
        }
        labels.sort_unstable();
        for pair in labels.windows(2) {
            if pair[0] == pair[1] {
                return Err(format!(
                    "label {:?} is given to two values, so a write of it would be ambiguous",
                    pair[0]
                ));
            }
        }
        Ok(ValueMap {
            entries: (!entries.is_empty()).then(|| entries.into()),
        })
    }

    fn entries(&self) -> &[(i128, String)] {
        self.entries.as_deref().unwrap_or_default()
    }

    /// Whether the map is empty (the field is not enum-like).
    pub fn is_empty(&self) -> bool {
        self.entries().is_empty()
    }

    /// Number of labels.
    pub fn len(&self) -> usize {
        self.entries().len()
    }

    /// The label of a raw value.
    pub fn label(&self, raw: i128) -> Option<&str> {
        let entries = self.entries();
        entries
            .binary_search_by_key(&raw, |(k, _)| *k)
            .ok()
            .map(|i| entries[i].1.as_str())
    }

    /// The raw value of a label.
    pub fn raw(&self, label: &str) -> Option<i128> {
        self.entries()
            .iter()
            .find(|(_, l)| l == label)
            .map(|(k, _)| *k)
    }

    /// The labels, by ascending raw value.
    pub fn labels(&self) -> impl Iterator<Item = &str> {
        self.entries().iter().map(|(_, l)| l.as_str())
    }

    /// (raw value, label) pairs, by ascending raw value.
    pub fn iter(&self) -> impl Iterator<Item = (i128, &str)> {
        self.entries().iter().map(|(k, l)| (*k, l.as_str()))
    }
}

/// Parses a value map key: a decimal integer, optionally negative, or `0x` hex.
fn parse_key(key: &str) -> Result<i128, String> {
    let k = key.trim();
    let (neg, digits) = match k.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, k),
    };
    let (radix, num) = match digits
        .strip_prefix("0x")
        .or_else(|| digits.strip_prefix("0X"))
    {
        Some(hex) => (16, hex),
        None => (10, digits),
    };
    let well_formed = !num.is_empty() && num.chars().all(|c| c.is_digit(radix));
    match i128::from_str_radix(num, radix) {
        Ok(v) if well_formed => Ok(if neg { -v } else { v }),
        _ => Err(format!(
            "value map key {key:?} is not an integer (write the register value, e.g. 0 = \"off\")"
        )),
    }
}

impl<'de> Deserialize<'de> for ValueMap {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = BTreeMap::<String, String>::deserialize(d)?;
        let entries = raw
            .iter()
            .map(|(k, v)| parse_key(k).map(|k| (k, v.clone())))
            .collect::<Result<Vec<_>, String>>()
            .map_err(serde::de::Error::custom)?;
        ValueMap::new(entries).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_names_parse_ignoring_case_and_reject_others() {
        for o in ByteOrder::ALL {
            assert_eq!(o.name().parse::<ByteOrder>(), Ok(o));
            assert_eq!(o.name().to_lowercase().parse::<ByteOrder>(), Ok(o));
        }
        let err = "ACBD".parse::<ByteOrder>().unwrap_err();
        assert!(err.contains("ACBD") && err.contains("HGFEDCBA"), "{err}");
    }

    #[test]
    fn swaps_define_every_order() {
        use ByteOrder::*;
        let table = [
            (AB, false, false),
            (BA, false, true),
            (ABCD, false, false),
            (BADC, false, true),
            (CDAB, true, false),
            (DCBA, true, true),
            (ABCDEFGH, false, false),
            (BADCFEHG, false, true),
            (GHEFCDAB, true, false),
            (HGFEDCBA, true, true),
        ];
        for (o, words, bytes) in table {
            assert_eq!((o.word_swap(), o.byte_swap()), (words, bytes), "{o}");
        }
    }

    #[test]
    fn value_map_keys_and_labels_are_checked() {
        #[derive(Deserialize, Debug)]
        struct W {
            values: ValueMap,
        }
        let w: W =
            toml::from_str(r#"values = { 2 = "manual", 0 = "off", 0x1 = "auto", "-1" = "fault" }"#)
                .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            w.values.labels().collect::<Vec<_>>(),
            ["fault", "off", "auto", "manual"]
        );
        assert_eq!(w.values.label(2), Some("manual"));
        assert_eq!(w.values.raw("fault"), Some(-1));
        assert_eq!(w.values.label(7), None);

        let err = toml::from_str::<W>(r#"values = { on = "x" }"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"on\" is not an integer"), "{err}");
        let err = toml::from_str::<W>(r#"values = { 1 = "x", 01 = "y" }"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("value 1 is labelled twice"), "{err}");
        let err = toml::from_str::<W>(r#"values = { 1 = "x", 2 = "x" }"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("ambiguous"), "{err}");
        let err = toml::from_str::<W>(r#"values = { 1 = "" }"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("empty"), "{err}");
        assert!(parse_key("--1").is_err());
        assert!(parse_key("+1").is_err());
        assert!(parse_key("").is_err());
        assert!(parse_key("0x-1").is_err());
        assert!(parse_key("0x").is_err());
        assert_eq!(parse_key("-0x10"), Ok(-16));
        // Far beyond any register: parses, and is rejected later against the type's range.
        assert_eq!(parse_key("18446744073709551615"), Ok(u64::MAX.into()));
        assert!(parse_key("999999999999999999999999999999999999999999").is_err());
    }
}
