//! Fuzzes the Electrum TCP line reader and the JSON-RPC line and batch decoder.
#![no_main]

#[path = "../harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::electrum_lines(data));
