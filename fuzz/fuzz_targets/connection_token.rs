//! Fuzz target `connection_token`: see `districhat::fuzzing::connection_token` for what it feeds and checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| districhat::fuzzing::connection_token(data));
