#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| concord_fuzz_harness::tdx_quote::run(data));
