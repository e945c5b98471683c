//! ONNX files read for their signature (`maas::engine::read_signature`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| maas_tests::fuzz::signature(data));
