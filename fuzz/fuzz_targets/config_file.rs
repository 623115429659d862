//! Fuzz target `config_file`: see `districhat::fuzzing::config_file` for what it feeds and checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| districhat::fuzzing::config_file(data));
