//! Fuzz target `catalog_commands`: see `districhat::fuzzing::catalog_commands` for what it feeds and checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| districhat::fuzzing::catalog_commands(data));
