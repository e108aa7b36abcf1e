#![no_main]
use libfuzzer_sys::fuzz_target;
fuzz_target!(|data: &[u8]| robert_proto::fuzz_targets::register_decode(data));
