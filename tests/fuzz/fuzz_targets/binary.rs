//! Open Inference Protocol binary-extension requests: split at the header length, decoded
//! against several signatures, the binary elements re-encoded.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| maas_tests::fuzz::binary_request(data));
