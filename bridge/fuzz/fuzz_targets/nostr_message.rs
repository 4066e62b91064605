//! Fuzzes the Nostr relay's NIP-01 client message decoder.
#![no_main]

#[path = "../harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::nostr_message(data));
