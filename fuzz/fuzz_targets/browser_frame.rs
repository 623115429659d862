//! Fuzz target `browser_frame`: see `districhat::fuzzing::browser_frame` for what it feeds and checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| districhat::fuzzing::browser_frame(data));
