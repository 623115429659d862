//! Fuzz target `snapshot`: see `districhat::fuzzing::snapshot` for what it feeds and checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| districhat::fuzzing::snapshot(data));
