//! The Modbus codec's fuzz target body, shared by the cargo-fuzz target `modbus_codec` and
//! the regular test that replays its corpus.
//!
//! Not part of the adapter's API: public only so the fuzz crate can link it.

use fieldgate_api::Value;

use crate::codec::{Point, WriteOp};
use crate::config::{ModbusDevice, ModbusField};
use crate::types::{ByteOrder, DataType, RegisterKind, ValueMap};

/// Reads the input byte by byte, then zeros.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }

    fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.u8(), self.u8()])
    }

    fn u64(&mut self) -> u64 {
        (0..4).fold(0, |acc, _| acc << 16 | u64::from(self.u16()))
    }

    /// A scale or offset: mostly values a configuration would hold, sometimes any bits.
    fn factor(&mut self, zero_default: bool) -> Option<f64> {
        const TABLE: [f64; 14] = [
            1.0, 0.1, 0.01, 0.001, 10.0, -1.0, 0.5, 0.25, 3.0, -0.1, 1e-9, 100.0, 1e300, 2.5,
        ];
        let b = self.u8();
        match b % 20 {
            0 => None,
            i @ 1..=14 => Some(if zero_default && i == 1 {
                0.0
            } else {
                TABLE[usize::from(i - 1)]
            }),
            15 => Some(f64::from(self.u8() as i8)),
            _ => Some(f64::from_bits(self.u64())),
        }
    }

    fn string(&mut self) -> String {
        const WORDS: [&str; 6] = ["off", "on", "auto", "", "é", "fault\0"];
        WORDS[usize::from(self.u8()) % WORDS.len()].to_owned()
    }
}

/// Builds a field section from the input's first bytes, resolves it, and when it resolves
/// decodes the registers or bit that follow, checks that encoding the decoded value and
/// decoding what would be written gives the value back, and encodes an arbitrary value.
pub fn codec(data: &[u8]) {
    let mut b = Bytes(data);
    let pick = |i: u8, n: usize| usize::from(i) % (n + 1);
    let kind = RegisterKind::ALL[usize::from(b.u8()) % RegisterKind::ALL.len()];
    let data_type = DataType::ALL
        .get(pick(b.u8(), DataType::ALL.len()))
        .copied();
    let order = ByteOrder::ALL
        .get(pick(b.u8(), ByteOrder::ALL.len()))
        .copied();
    let bit = b.u8();
    let length = b.u8();
    let entries = usize::from(b.u8() % 5);
    let values: Vec<(i128, String)> = (0..entries)
        .map(|_| (i128::from(b.u8() as i8) * 3, b.string()))
        .collect();
    let field = ModbusField {
        register: kind,
        address: u32::from(b.u16()) * u32::from(b.u8() % 3),
        data_type,
        order,
        bit: (bit < 20).then_some(bit),
        length: (length != 0).then_some(u16::from(length)),
        scale: b.factor(false),
        offset: b.factor(true),
        values: ValueMap::new(values).unwrap_or_default(),
    };
    let flags = b.u8();
    let mut device = ModbusDevice::new("c");
    device.address_base = flags & 1;
    let writable = flags & 2 != 0;
    // Only fields with the decimals their scale implies promise an exact round trip.
    let decimals = (flags & 4 != 0).then_some(flags >> 4);
    let Ok(point) = field.resolve(&device, writable, decimals) else {
        return;
    };
    let _ = point.field_spec("f");
    let _ = (point.field_type(), point.span());

    if point.kind().is_bit() {
        let on = b.u8() & 1 == 1;
        if let Ok(v) = point.decode_bits(&[on]) {
            let op = point.encode(&v);
            if point.kind().is_writable() {
                let op = op.expect("a decoded bit encodes");
                assert_eq!(
                    op,
                    WriteOp::Coil {
                        address: point.address(),
                        value: on
                    }
                );
                assert!(op.confirmed_by_bits(&[on]));
            }
        }
    } else {
        let regs: Vec<u16> = (0..point.count()).map(|_| b.u16()).collect();
        // A scaled 64-bit register goes through an f64, which holds 53 bits: near the top
        // of the range the value written back may fall just outside it.
        let wide = matches!(point.data_type(), DataType::I64 | DataType::U64)
            && (point.scale() != 1.0 || point.offset() != 0.0);
        // Nor can an extreme scale or offset (an offset of 1e260 swamps the reading, one of
        // 123887.89013671875 has more digits than the implied decimals keep): the exact
        // round trip is promised for factors a configuration would hold, short decimals.
        let sane =
            |x: f64| x == 0.0 || ((1e-9..=1e9).contains(&x.abs()) && x.to_string().len() <= 12);
        // Nor when the offset, in register units, is beyond what an f64 holds to the unit
        // (offset 1.15e7, scale 1e-9: neighbouring registers read as the same double).
        let wide = wide
            || !sane(point.scale())
            || !sane(point.offset())
            || (point.offset() / point.scale()).abs() > 2f64.powi(50);
        if let Ok(v) = point.decode_registers(&regs) {
            check_round_trip(&point, &regs, &v, decimals.is_none() && !wide);
        }
    }

    // Any value, into any field: an answer, never a panic.
    let value = match b.u8() % 7 {
        0 => Value::Bool(b.u8() & 1 == 1),
        1 => Value::Int(b.u16() as i16 as i32 * i32::from(b.u8())),
        2 => Value::Long(b.u64() as i64),
        3 => Value::Double(f64::from_bits(b.u64())),
        4 => Value::Double(f64::from(b.u16() as i16) / 10.0),
        5 => Value::String(b.string()),
        _ => Value::Enum(b.string()),
    };
    if let Ok(op) = point.encode(&value) {
        let _ = (op.function_code(false), op.function_code(true), op.masks());
        if let WriteOp::Registers { values, .. } = &op {
            assert_eq!(values.len(), usize::from(point.count()));
            let _ = point.decode_registers(values);
        }
    } else if let Err(e) = point.encode(&value) {
        let _ = e.into_adapter_error("f").to_string();
    }
}

/// Encoding the value decoded from `regs` and decoding the registers that write would
/// leave gives the same value (exactly, or to rounding noise for scaled floats).
fn check_round_trip(point: &Point, regs: &[u16], v: &Value, exact: bool) {
    if !point.kind().is_writable() {
        assert!(point.encode(v).is_err());
        return;
    }
    let op = match point.encode(v) {
        Ok(op) => op,
        // A string with bytes that are not UTF-8 reads with U+FFFD, which may not fit.
        Err(crate::EncodeError::StringTooLong { .. }) if point.data_type() == DataType::String => {
            return
        }
        Err(e) if !exact => {
            let _ = e;
            return;
        }
        Err(e) => panic!(
            "{v:?} decoded from {regs:?} does not encode: {e} ({:?} {:?} scale {:e} offset {:e})",
            point.data_type(),
            point.order(),
            point.scale(),
            point.offset()
        ),
    };
    let written: Vec<u16> = match &op {
        WriteOp::Registers { values, .. } => values.clone(),
        WriteOp::RegisterBit { bit, .. } => {
            let new = op.apply_to(regs[0]).expect("a bit write has masks");
            // Only the field's bit may change.
            let mask = 1u16.checked_shl(u32::from(*bit)).unwrap_or(0);
            assert_eq!((new ^ regs[0]) & !mask, 0, "other bits changed");
            vec![new]
        }
        WriteOp::Coil { .. } => panic!("a register field wrote a coil"),
    };
    assert!(op.confirmed_by_registers(&written));
    let again = point
        .decode_registers(&written)
        .expect("what is written decodes");
    match (&again, v) {
        (Value::Double(a), Value::Double(b)) if !exact || point.data_type().is_float() => {
            // An f32 register holds 24 bits: its value is shown as the shortest decimal,
            // which with an offset may land on a neighbouring f32 on the way back.
            let relative = if point.data_type() == DataType::F32 {
                4.0 * f64::from(f32::EPSILON)
            } else {
                1e-9
            };
            let tolerance = relative * a.abs().max(b.abs()).max(1.0);
            assert!(
                (a - b).abs() <= tolerance,
                "{v:?} from {regs:?} came back as {again:?} ({:?} {:?} scale {:e} offset {:e})",
                point.data_type(),
                point.order(),
                point.scale(),
                point.offset()
            );
        }
        _ => assert_eq!(&again, v, "decoded from {regs:?}, written as {written:?}"),
    }
}
