//! Model names, versions, aliases, upload ids and the store keys made of them.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| maas_tests::fuzz::names(data));
