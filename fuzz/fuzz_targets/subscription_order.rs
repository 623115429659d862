//! Fuzz target `subscription_order`: see `districhat::fuzzing::subscription_order` for what it feeds and checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| districhat::fuzzing::subscription_order(data));
