#![no_main]

use std::time::Instant;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| switchboard_core::fuzzing::native(Instant::now(), data));
