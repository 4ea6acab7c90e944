#![no_main]
//! See `fieldgate_modbus::fuzzing::codec`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| fieldgate_modbus::fuzzing::codec(data));
