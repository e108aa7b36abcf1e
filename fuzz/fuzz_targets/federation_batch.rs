#![no_main]
use libfuzzer_sys::fuzz_target;
fuzz_target!(|data: &[u8]| robert_proto::fuzz_targets::federation_batch_open(data));
