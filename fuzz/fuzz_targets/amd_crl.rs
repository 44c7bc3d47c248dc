#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| concord_fuzz_harness::amd_crl::run(data));
