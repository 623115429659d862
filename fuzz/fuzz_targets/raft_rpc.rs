//! Fuzz target `raft_rpc`: see `districhat::fuzzing::raft_rpc` for what it feeds and checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| districhat::fuzzing::raft_rpc(data));
