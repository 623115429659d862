//! Fuzz target `mesh_frame`: see `districhat::fuzzing::mesh_frame` for what it feeds and checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| districhat::fuzzing::mesh_frame(data));
