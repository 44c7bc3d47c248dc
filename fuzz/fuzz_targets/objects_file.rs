#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| concord_fuzz_harness::objects_file::run(data));
