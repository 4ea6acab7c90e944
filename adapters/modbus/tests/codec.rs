//! Decode and encode: golden vectors for every type × byte order, written by hand from
//! the order definitions (the letters name the value's bytes, A the most significant,
//! in wire order: first register high byte first), scaling and value maps, precise
//! errors, and round-trip properties over many values.

use fieldgate_api::{AdapterError, Value};
use fieldgate_modbus::{
    ByteOrder, DataType, DecodeError, EncodeError, ModbusDevice, ModbusField, Point, RegisterKind,
    ValueMap, WriteOp,
};

const ADDR: u16 = 100;

fn field(dt: DataType, order: Option<ByteOrder>) -> ModbusField {
    ModbusField {
        register: RegisterKind::Holding,
        address: ADDR.into(),
        data_type: Some(dt),
        order,
        length: (dt == DataType::String).then_some(2),
        ..ModbusField::default()
    }
}

fn resolve(f: &ModbusField) -> Point {
    f.resolve(&ModbusDevice::new("bus"), true, None)
        .unwrap_or_else(|e| panic!("{f:?}: {e}"))
}

fn point(dt: DataType, order: ByteOrder) -> Point {
    resolve(&field(dt, Some(order)))
}

/// Checks one golden vector both ways: decode(regs) == value, encode(value) == regs.
fn golden(p: &Point, regs: &[u16], value: Value) {
    let what = format!("{} {}", p.data_type(), p.order());
    assert_eq!(
        p.decode_registers(regs),
        Ok(value.clone()),
        "decode {what} {regs:04X?}"
    );
    assert_eq!(
        p.encode(&value),
        Ok(WriteOp::Registers {
            address: ADDR,
            values: regs.to_vec()
        }),
        "encode {what} {value:?}"
    );
}

use ByteOrder::*;

mod common;
use common::Rng;

#[test]
fn golden_i16_every_order() {
    // -12345 = 0xCFC7: A = CF, B = C7.
    let v = Value::Int(-12345);
    for (o, regs) in [
        (AB, [0xCFC7]),
        (BA, [0xC7CF]),
        (ABCD, [0xCFC7]),
        (CDAB, [0xCFC7]),
        (BADC, [0xC7CF]),
        (DCBA, [0xC7CF]),
    ] {
        golden(&point(DataType::I16, o), &regs, v.clone());
    }
}

#[test]
fn golden_u16_every_order() {
    // 48879 = 0xBEEF, above i16::MAX.
    let v = Value::Int(48879);
    for (o, regs) in [
        (AB, [0xBEEF]),
        (BA, [0xEFBE]),
        (ABCD, [0xBEEF]),
        (CDAB, [0xBEEF]),
        (BADC, [0xEFBE]),
        (DCBA, [0xEFBE]),
    ] {
        golden(&point(DataType::U16, o), &regs, v.clone());
    }
}

#[test]
fn golden_i32_every_order() {
    // -123456789 = 0xF8A432EB: A = F8, B = A4, C = 32, D = EB.
    let v = Value::Int(-123_456_789);
    for (o, regs) in [
        (ABCD, [0xF8A4, 0x32EB]),
        (BADC, [0xA4F8, 0xEB32]),
        (CDAB, [0x32EB, 0xF8A4]),
        (DCBA, [0xEB32, 0xA4F8]),
    ] {
        golden(&point(DataType::I32, o), &regs, v.clone());
    }
}

#[test]
fn golden_u32_every_order() {
    // 3735928559 = 0xDEADBEEF, above i32::MAX: reads as a long.
    let v = Value::Long(3_735_928_559);
    for (o, regs) in [
        (ABCD, [0xDEAD, 0xBEEF]),
        (BADC, [0xADDE, 0xEFBE]),
        (CDAB, [0xBEEF, 0xDEAD]),
        (DCBA, [0xEFBE, 0xADDE]),
    ] {
        golden(&point(DataType::U32, o), &regs, v.clone());
    }
}

#[test]
// The f32 nearest π reads as the decimal 3.1415927, deliberately not f64's π.
#[allow(clippy::approx_constant)]
fn golden_f32_every_order() {
    // 1.5 = 0x3FC00000 (sign 0, exponent 127 = 0x7F, mantissa .5).
    for (o, regs) in [
        (ABCD, [0x3FC0, 0x0000]),
        (BADC, [0xC03F, 0x0000]),
        (CDAB, [0x0000, 0x3FC0]),
        (DCBA, [0x0000, 0xC03F]),
    ] {
        golden(&point(DataType::F32, o), &regs, Value::Double(1.5));
    }
    // π as f32 = 0x40490FDB, four distinct bytes; it reads as its shortest decimal.
    for (o, regs) in [
        (ABCD, [0x4049, 0x0FDB]),
        (BADC, [0x4940, 0xDB0F]),
        (CDAB, [0x0FDB, 0x4049]),
        (DCBA, [0xDB0F, 0x4940]),
    ] {
        golden(&point(DataType::F32, o), &regs, Value::Double(3.1415927));
    }
}

#[test]
fn golden_i64_every_order() {
    // -81985529216486895 = 0xFEDCBA9876543211 (two's complement of 0x0123456789ABCDEF).
    let v = Value::Long(-81_985_529_216_486_895);
    for (long, short, regs) in [
        (ABCDEFGH, ABCD, [0xFEDC, 0xBA98, 0x7654, 0x3211]),
        (BADCFEHG, BADC, [0xDCFE, 0x98BA, 0x5476, 0x1132]),
        (GHEFCDAB, CDAB, [0x3211, 0x7654, 0xBA98, 0xFEDC]),
        (HGFEDCBA, DCBA, [0x1132, 0x5476, 0x98BA, 0xDCFE]),
    ] {
        golden(&point(DataType::I64, long), &regs, v.clone());
        golden(&point(DataType::I64, short), &regs, v.clone());
    }
}

#[test]
fn golden_u64_every_order() {
    // 81985529216486895 = 0x0123456789ABCDEF: A = 01, B = 23, ..., H = EF.
    let v = Value::Long(81_985_529_216_486_895);
    for (long, short, regs) in [
        (ABCDEFGH, ABCD, [0x0123, 0x4567, 0x89AB, 0xCDEF]),
        (BADCFEHG, BADC, [0x2301, 0x6745, 0xAB89, 0xEFCD]),
        (GHEFCDAB, CDAB, [0xCDEF, 0x89AB, 0x4567, 0x0123]),
        (HGFEDCBA, DCBA, [0xEFCD, 0xAB89, 0x6745, 0x2301]),
    ] {
        golden(&point(DataType::U64, long), &regs, v.clone());
        golden(&point(DataType::U64, short), &regs, v.clone());
    }
}

#[test]
fn golden_f64_every_order() {
    // π = 0x400921FB54442D18.
    for (long, short, regs) in [
        (ABCDEFGH, ABCD, [0x4009, 0x21FB, 0x5444, 0x2D18]),
        (BADCFEHG, BADC, [0x0940, 0xFB21, 0x4454, 0x182D]),
        (GHEFCDAB, CDAB, [0x2D18, 0x5444, 0x21FB, 0x4009]),
        (HGFEDCBA, DCBA, [0x182D, 0x4454, 0xFB21, 0x0940]),
    ] {
        let v = Value::Double(std::f64::consts::PI);
        golden(&point(DataType::F64, long), &regs, v.clone());
        golden(&point(DataType::F64, short), &regs, v);
    }
    // -2.5 = -1.25 × 2¹: sign 1, exponent 1024 = 0x400, mantissa .25 → 0xC004000000000000.
    for (o, regs) in [
        (ABCDEFGH, [0xC004, 0, 0, 0]),
        (BADCFEHG, [0x04C0, 0, 0, 0]),
        (GHEFCDAB, [0, 0, 0, 0xC004]),
        (HGFEDCBA, [0, 0, 0, 0x04C0]),
    ] {
        golden(&point(DataType::F64, o), &regs, Value::Double(-2.5));
    }
}

#[test]
fn golden_string_every_order() {
    // "Hi!" in 2 registers: H = 0x48, i = 0x69, ! = 0x21, then NUL padding. Word order
    // does not apply to text; only the byte order inside each register does.
    let v = Value::String("Hi!".into());
    for (o, regs) in [
        (AB, [0x4869, 0x2100]),
        (ABCD, [0x4869, 0x2100]),
        (CDAB, [0x4869, 0x2100]),
        (BA, [0x6948, 0x0021]),
        (BADC, [0x6948, 0x0021]),
        (DCBA, [0x6948, 0x0021]),
    ] {
        golden(&point(DataType::String, o), &regs, v.clone());
    }
    // Exactly full, no NUL: "Hello!" in 3 registers.
    let full = |o| {
        resolve(&ModbusField {
            length: Some(3),
            ..field(DataType::String, Some(o))
        })
    };
    let v = Value::String("Hello!".into());
    golden(&full(AB), &[0x4865, 0x6C6C, 0x6F21], v.clone());
    golden(&full(BA), &[0x6548, 0x6C6C, 0x216F], v);
    // The default order is ABCD.
    golden(
        &resolve(&field(DataType::String, None)),
        &[0x4869, 0x2100],
        Value::String("Hi!".into()),
    );
}

#[test]
fn golden_bool_and_bit() {
    let coil = resolve(&ModbusField {
        register: RegisterKind::Coil,
        address: 7,
        ..ModbusField::default()
    });
    assert_eq!(coil.data_type(), DataType::Bool);
    for b in [true, false] {
        assert_eq!(coil.decode_bits(&[b]), Ok(Value::Bool(b)));
        assert_eq!(
            coil.encode(&Value::Bool(b)),
            Ok(WriteOp::Coil {
                address: 7,
                value: b
            })
        );
    }
    let bit = |n: u8| {
        resolve(&ModbusField {
            bit: Some(n),
            ..field(DataType::Bit, None)
        })
    };
    assert_eq!(bit(3).decode_registers(&[0x0008]), Ok(Value::Bool(true)));
    assert_eq!(bit(3).decode_registers(&[0xFFF7]), Ok(Value::Bool(false)));
    assert_eq!(bit(15).decode_registers(&[0x8000]), Ok(Value::Bool(true)));
    assert_eq!(bit(0).decode_registers(&[0x8000]), Ok(Value::Bool(false)));
    assert_eq!(
        bit(15).encode(&Value::Bool(true)),
        Ok(WriteOp::RegisterBit {
            address: ADDR,
            bit: 15,
            value: true
        })
    );
    assert_eq!(bit(15).bit(), Some(15));
}

#[test]
fn golden_scaled_values() {
    // Temperature in tenths of a degree, i16: 0xFF38 = -200 → -20.0; 0x00EA = 234 → 23.4.
    let temp = resolve(&ModbusField {
        scale: Some(0.1),
        ..field(DataType::I16, None)
    });
    assert_eq!(temp.decimals(), Some(1));
    golden(&temp, &[0xFF38], Value::Double(-20.0));
    golden(&temp, &[0x00EA], Value::Double(23.4));
    // Integers are accepted for a double field.
    assert_eq!(
        temp.encode(&Value::Int(-20)),
        Ok(WriteOp::Registers {
            address: ADDR,
            values: vec![0xFF38]
        })
    );
    // Hundredths with an offset: 0x198F = 6543 → 65.43 - 40 = 25.43.
    let humid = resolve(&ModbusField {
        scale: Some(0.01),
        offset: Some(-40.0),
        ..field(DataType::U16, None)
    });
    golden(&humid, &[0x198F], Value::Double(25.43));
    // Energy in Wh as u32 CDAB, reported in kWh: 0x0001E240 = 123456 → 123.456.
    let energy = resolve(&ModbusField {
        scale: Some(0.001),
        ..field(DataType::U32, Some(CDAB))
    });
    golden(&energy, &[0xE240, 0x0001], Value::Double(123.456));
    // A float times 1000: 1.5 kW as 1500 W.
    let power = resolve(&ModbusField {
        scale: Some(1000.0),
        ..field(DataType::F32, Some(CDAB))
    });
    golden(&power, &[0x0000, 0x3FC0], Value::Double(1500.0));
    // Negative scale: the inverse still holds.
    let neg = resolve(&ModbusField {
        scale: Some(-0.5),
        ..field(DataType::I16, None)
    });
    golden(&neg, &[0x0004], Value::Double(-2.0));
    // Explicit decimals round what the device reports.
    let coarse = ModbusField {
        scale: Some(0.01),
        ..field(DataType::U16, None)
    }
    .resolve(&ModbusDevice::new("bus"), false, Some(1))
    .unwrap();
    assert_eq!(coarse.decode_registers(&[1234]), Ok(Value::Double(12.3)));
}

fn modes() -> ValueMap {
    ValueMap::new([(0, "off"), (1, "auto"), (2, "manual"), (0xFF, "fault")]).unwrap()
}

#[test]
fn golden_value_maps() {
    let mode = resolve(&ModbusField {
        values: modes(),
        ..field(DataType::U16, None)
    });
    golden(&mode, &[0x0002], Value::Enum("manual".into()));
    golden(&mode, &[0x00FF], Value::Enum("fault".into()));
    // A plain string naming a label is accepted too.
    assert_eq!(
        mode.encode(&Value::String("auto".into())),
        Ok(WriteOp::Registers {
            address: ADDR,
            values: vec![1]
        })
    );
    assert_eq!(mode.decode_registers(&[7]), Err(DecodeError::Unmapped(7)));
    let err = mode.encode(&Value::Enum("turbo".into())).unwrap_err();
    assert_eq!(
        err.to_string(),
        "\"turbo\" is not one of off, auto, manual, fault"
    );

    // A signed enum in a 32-bit register, word-swapped: -1 = 0xFFFFFFFF, 0x10000 = 65536.
    let signed = resolve(&ModbusField {
        values: ValueMap::new([(-1, "error"), (65536, "big")]).unwrap(),
        ..field(DataType::I32, Some(CDAB))
    });
    golden(&signed, &[0xFFFF, 0xFFFF], Value::Enum("error".into()));
    golden(&signed, &[0x0000, 0x0001], Value::Enum("big".into()));

    // A coil with labels.
    let pump = resolve(&ModbusField {
        register: RegisterKind::Coil,
        address: 3,
        values: ValueMap::new([(0, "stopped"), (1, "running")]).unwrap(),
        ..ModbusField::default()
    });
    assert_eq!(pump.decode_bits(&[true]), Ok(Value::Enum("running".into())));
    assert_eq!(
        pump.encode(&Value::Enum("stopped".into())),
        Ok(WriteOp::Coil {
            address: 3,
            value: false
        })
    );
    // A bit with only one label.
    let alarm = resolve(&ModbusField {
        bit: Some(0),
        values: ValueMap::new([(1, "alarm")]).unwrap(),
        ..field(DataType::Bit, None)
    });
    assert_eq!(
        alarm.decode_registers(&[1]),
        Ok(Value::Enum("alarm".into()))
    );
    assert_eq!(alarm.decode_registers(&[0]), Err(DecodeError::Unmapped(0)));
}

#[test]
fn encode_errors_are_precise() {
    let temp = resolve(&ModbusField {
        scale: Some(0.1),
        ..field(DataType::I16, None)
    });
    let err = temp.encode(&Value::Double(7000.0)).unwrap_err();
    assert!(matches!(err, EncodeError::OutOfRange { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        "7000 is out of range: it is 70000 in register units (scale and offset inverted), outside the i16 range -32768..32767"
    );
    let err = temp.encode(&Value::Double(23.45)).unwrap_err();
    assert_eq!(
        err.to_string(),
        "23.45 cannot be written exactly: it is 234.49999999999997 in register units (scale and offset inverted), but i16 registers hold whole numbers"
    );

    let u16p = point(DataType::U16, ABCD);
    assert_eq!(
        u16p.encode(&Value::Int(-1)).unwrap_err().to_string(),
        "-1 is outside the u16 range 0..65535"
    );
    assert_eq!(
        u16p.encode(&Value::Int(65536)).unwrap_err().to_string(),
        "65536 is outside the u16 range 0..65535"
    );
    assert_eq!(
        u16p.encode(&Value::Double(3.5)).unwrap_err().to_string(),
        "3.5 cannot be written exactly: it is not a whole number, but u16 registers hold whole numbers"
    );
    assert_eq!(
        u16p.encode(&Value::Bool(true)).unwrap_err().to_string(),
        "expected a number, got bool true"
    );
    for nan in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        for dt in [DataType::F32, DataType::F64, DataType::U16] {
            assert!(matches!(
                point(dt, ABCD).encode(&Value::Double(nan)),
                Err(EncodeError::NotFinite(_))
            ));
        }
    }
    assert_eq!(
        point(DataType::F32, ABCD)
            .encode(&Value::Double(f64::NAN))
            .unwrap_err()
            .to_string(),
        "NaN cannot be written: not a finite number"
    );
    assert!(matches!(
        point(DataType::F32, ABCD).encode(&Value::Double(1e39)),
        Err(EncodeError::OutOfRange { .. })
    ));
    // Beyond u64 and i64, through floats and exactly.
    let u64p = point(DataType::U64, ABCD);
    assert!(matches!(
        u64p.encode(&Value::Double(18_446_744_073_709_551_616.0)),
        Err(EncodeError::OutOfRange { .. })
    ));
    assert!(matches!(
        u64p.encode(&Value::Long(-1)),
        Err(EncodeError::OutOfRange { .. })
    ));
    assert_eq!(
        point(DataType::I64, ABCD).encode(&Value::Long(i64::MIN)),
        Ok(WriteOp::Registers {
            address: ADDR,
            values: vec![0x8000, 0, 0, 0]
        })
    );
    // A huge scale overflows the division result.
    let tiny = resolve(&ModbusField {
        scale: Some(1e-308),
        ..field(DataType::F64, None)
    });
    assert!(matches!(
        tiny.encode(&Value::Double(1e300)),
        Err(EncodeError::OutOfRange { .. })
    ));

    let text = point(DataType::String, ABCD);
    assert_eq!(
        text.encode(&Value::String("Hello".into()))
            .unwrap_err()
            .to_string(),
        "a string of 5 bytes is too long: the field holds 4 bytes (2 registers)"
    );
    assert_eq!(
        text.encode(&Value::String("a\0".into())),
        Err(EncodeError::StringNul)
    );
    assert_eq!(
        text.encode(&Value::String(String::new())),
        Ok(WriteOp::Registers {
            address: ADDR,
            values: vec![0, 0]
        })
    );
    // Multi-byte UTF-8 counts bytes: "é" is 2 bytes.
    assert!(text.encode(&Value::String("éé".into())).is_ok());
    assert!(text.encode(&Value::String("ééé".into())).is_err());

    let input = ModbusField {
        register: RegisterKind::Input,
        ..field(DataType::U16, None)
    }
    .resolve(&ModbusDevice::new("bus"), false, None)
    .unwrap();
    let err = input.encode(&Value::Int(1)).unwrap_err();
    assert_eq!(err.to_string(), "a input register cannot be written");
    assert_eq!(
        err.into_adapter_error("level"),
        AdapterError::NotWritable("level".into())
    );
    assert_eq!(
        u16p.encode(&Value::Int(-1))
            .unwrap_err()
            .into_adapter_error("speed"),
        AdapterError::InvalidValue {
            field: "speed".into(),
            reason: "-1 is outside the u16 range 0..65535".into()
        }
    );
}

#[test]
fn decode_errors_are_precise_and_never_panic() {
    let f32p = point(DataType::F32, ABCD);
    assert!(matches!(
        f32p.decode_registers(&[0x7FC0, 0x0000]),
        Err(DecodeError::NotFinite(x)) if x.is_nan()
    ));
    assert_eq!(
        f32p.decode_registers(&[0x7F80, 0x0000]),
        Err(DecodeError::NotFinite(f64::INFINITY))
    );
    assert_eq!(
        f32p.decode_registers(&[0x3FC0]),
        Err(DecodeError::WrongLength {
            expected: 2,
            got: 1,
            unit: "register"
        })
    );
    assert_eq!(
        f32p.decode_registers(&[]).unwrap_err().to_string(),
        "expected 2 register(s), got 0"
    );
    assert_eq!(
        f32p.decode_bits(&[true]),
        Err(DecodeError::WrongKind(RegisterKind::Holding))
    );
    let u64p = point(DataType::U64, ABCD);
    assert_eq!(
        u64p.decode_registers(&[0xFFFF; 4]),
        Err(DecodeError::TooLarge(u64::MAX))
    );
    let scaled = resolve(&ModbusField {
        scale: Some(1.0),
        offset: Some(0.5),
        ..field(DataType::U64, None)
    });
    assert_eq!(
        scaled.decode_registers(&[0xFFFF; 4]),
        Ok(Value::Double(18_446_744_073_709_551_615.5))
    );
    let huge = resolve(&ModbusField {
        scale: Some(1e300),
        ..field(DataType::F64, None)
    });
    assert_eq!(
        huge.decode_registers(&[0x7FEF, 0xFFFF, 0xFFFF, 0xFFFF]),
        Err(DecodeError::NotFinite(f64::INFINITY))
    );
    let coil = resolve(&ModbusField {
        register: RegisterKind::Coil,
        ..ModbusField::default()
    });
    assert!(coil.decode_bits(&[]).is_err());
    assert!(coil.decode_bits(&[true, false]).is_err());
    assert!(coil.decode_registers(&[1]).is_err());
    // Invalid UTF-8 and text after the first NUL.
    let text = point(DataType::String, ABCD);
    assert_eq!(
        text.decode_registers(&[0x41FF, 0x0042]),
        Ok(Value::String("A\u{FFFD}".into()))
    );
}

// ---- round trips --------------------------------------------------------------------

fn orders_for(dt: DataType) -> Vec<ByteOrder> {
    ByteOrder::ALL
        .into_iter()
        .filter(|o| match (o.letters(), dt.registers(2)) {
            (2, 1) | (4, _) | (8, 4) => true,
            (2, _) => dt == DataType::String,
            _ => false,
        })
        .collect()
}

const NUMERIC: [DataType; 8] = [
    DataType::I16,
    DataType::U16,
    DataType::I32,
    DataType::U32,
    DataType::I64,
    DataType::U64,
    DataType::F32,
    DataType::F64,
];

#[test]
fn registers_round_trip_through_values() {
    let mut rng = Rng(1);
    let mut checked = 0;
    for dt in NUMERIC {
        for o in orders_for(dt) {
            let p = point(dt, o);
            for i in 0..3000 {
                let mut regs: Vec<u16> = (0..dt.registers(0)).map(|_| rng.next() as u16).collect();
                // Make sure the extremes are covered too.
                if i < 4 {
                    regs.iter_mut()
                        .for_each(|r| *r = [0, 0xFFFF, 0x8000, 0x7FFF][i]);
                }
                match p.decode_registers(&regs) {
                    Ok(v) => {
                        assert_eq!(
                            p.encode(&v),
                            Ok(WriteOp::Registers {
                                address: ADDR,
                                values: regs.clone()
                            }),
                            "{dt} {o} {regs:04X?} → {v:?}"
                        );
                        checked += 1;
                    }
                    // Only NaN / infinity and u64 beyond a long may fail.
                    Err(DecodeError::NotFinite(_)) if dt.is_float() => {}
                    Err(DecodeError::TooLarge(_)) if dt == DataType::U64 => {}
                    Err(e) => panic!("{dt} {o} {regs:04X?}: {e}"),
                }
            }
        }
    }
    assert!(checked > 80_000, "{checked}");
}

#[test]
fn values_round_trip_through_registers() {
    let mut rng = Rng(2);
    for dt in NUMERIC {
        let (lo, hi) = dt.raw_range().unwrap_or((-1 << 60, 1 << 60));
        for o in orders_for(dt) {
            let p = point(dt, o);
            for _ in 0..2000 {
                // A raw value in range, as the neutral value decoding would produce.
                let span = (hi - lo) as u128;
                let raw =
                    lo + (u128::from(rng.next()) * u128::from(rng.next()) % (span + 1)) as i128;
                let v = match dt {
                    DataType::I16 | DataType::U16 | DataType::I32 => Value::Int(raw as i32),
                    // Six significant digits: exactly what an f32 reads back as.
                    DataType::F32 => Value::Double(
                        (raw % 1_000_000) as f64 / 10f64.powi((raw.rem_euclid(4)) as i32),
                    ),
                    DataType::F64 => Value::Double(raw as f64 / 7.0),
                    _ if raw > i128::from(i64::MAX) => continue,
                    _ => Value::Long(raw as i64),
                };
                let op = p
                    .encode(&v)
                    .unwrap_or_else(|e| panic!("{dt} {o} {v:?}: {e}"));
                let WriteOp::Registers { values, .. } = op else {
                    panic!("{op:?}")
                };
                assert_eq!(p.decode_registers(&values), Ok(v.clone()), "{dt} {o}");
            }
        }
    }
}

#[test]
fn scaled_values_round_trip() {
    let mut rng = Rng(3);
    let cases: [(DataType, f64, f64); 6] = [
        (DataType::I16, 0.1, 0.0),
        (DataType::U16, 0.01, -40.0),
        (DataType::I32, 0.001, 0.0),
        (DataType::U32, 0.5, 273.15),
        (DataType::I16, -0.25, 10.0),
        (DataType::U16, 10.0, 0.0),
    ];
    for (dt, scale, offset) in cases {
        let (lo, hi) = dt.raw_range().unwrap();
        for o in orders_for(dt) {
            let p = resolve(&ModbusField {
                scale: Some(scale),
                offset: Some(offset),
                ..field(dt, Some(o))
            });
            for _ in 0..2000 {
                let raw = lo + (u128::from(rng.next()) % ((hi - lo) as u128 + 1)) as i128;
                let regs = ByteOrderProbe::regs(&p, raw);
                let v = p.decode_registers(&regs).unwrap();
                assert_eq!(
                    p.encode(&v),
                    Ok(WriteOp::Registers {
                        address: ADDR,
                        values: regs.clone()
                    }),
                    "{dt} ×{scale} +{offset} {o}: raw {raw} read as {v:?}"
                );
            }
        }
    }
}

/// Registers for a raw integer, via an unscaled point of the same type and order.
struct ByteOrderProbe;
impl ByteOrderProbe {
    fn regs(p: &Point, raw: i128) -> Vec<u16> {
        let plain = point(p.data_type(), p.order());
        let v = match p.data_type() {
            DataType::I16 | DataType::U16 | DataType::I32 => Value::Int(raw as i32),
            _ => Value::Long(raw as i64),
        };
        match plain.encode(&v) {
            Ok(WriteOp::Registers { values, .. }) => values,
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn strings_round_trip() {
    let mut rng = Rng(4);
    let alphabet: Vec<char> = "abcXYZ019 -_.:/äöüé€漢".chars().collect();
    for o in orders_for(DataType::String) {
        for length in [1u16, 2, 3, 10, 125] {
            let p = ModbusField {
                length: Some(length),
                ..field(DataType::String, Some(o))
            }
            .resolve(&ModbusDevice::new("bus"), false, None)
            .unwrap();
            for _ in 0..300 {
                let mut s = String::new();
                let target = rng.below(u64::from(length) * 2 + 1) as usize;
                loop {
                    let c = alphabet[rng.below(alphabet.len() as u64) as usize];
                    if s.len() + c.len_utf8() > target {
                        break;
                    }
                    s.push(c);
                }
                let v = Value::String(s);
                let Ok(WriteOp::Registers { values, .. }) = p.encode(&v) else {
                    panic!("{v:?}")
                };
                assert_eq!(values.len(), usize::from(length));
                assert_eq!(p.decode_registers(&values), Ok(v));
            }
        }
    }
}

#[test]
fn bits_round_trip_keeping_the_other_bits() {
    let mut rng = Rng(5);
    for n in 0..16u8 {
        let p = resolve(&ModbusField {
            bit: Some(n),
            ..field(DataType::Bit, None)
        });
        for _ in 0..200 {
            let reg = rng.next() as u16;
            let Ok(Value::Bool(b)) = p.decode_registers(&[reg]) else {
                panic!()
            };
            assert_eq!(b, reg & (1 << n) != 0);
            let op = p.encode(&Value::Bool(b)).unwrap();
            assert_eq!(op.apply_to(reg), Some(reg), "bit {n} of {reg:04X}");
            let flipped = p.encode(&Value::Bool(!b)).unwrap();
            assert_eq!(flipped.apply_to(reg), Some(reg ^ (1 << n)));
            assert_eq!(p.decode_registers(&[reg ^ (1 << n)]), Ok(Value::Bool(!b)));
        }
    }
}

#[test]
fn labels_round_trip() {
    let p = resolve(&ModbusField {
        values: modes(),
        ..field(DataType::I16, Some(BA))
    });
    for label in ["off", "auto", "manual", "fault"] {
        let v = Value::Enum(label.into());
        let Ok(WriteOp::Registers { values, .. }) = p.encode(&v) else {
            panic!()
        };
        assert_eq!(p.decode_registers(&values), Ok(v));
    }
}
