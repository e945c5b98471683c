//! Open Inference Protocol JSON requests: parsed, decoded against several signatures, re-encoded.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| maas_tests::fuzz::protocol(data));
