//! Fuzzes the frame decoder and the engine behind it: any bytes off the air must be
//! rejected or handled without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use satcosign_link::crypto::{Cipher, Identity};
use satcosign_link::engine::{Engine, EngineConfig};
use satcosign_link::frame::Plain;
use satcosign_link::store::MemStore;

fuzz_target!(|data: &[u8]| {
    let _ = Plain::decode(data);
    let cipher = Cipher::new(&Identity::from_bytes([2; 32]), &Identity::from_bytes([1; 32]).public());
    let mut engine = Engine::new(EngineConfig::default(), cipher, MemStore::new(), 1.0).expect("engine");
    let _ = engine.on_frame(data, tokio::time::Instant::now());
});
