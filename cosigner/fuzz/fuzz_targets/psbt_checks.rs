//! Fuzzes the PSBT checks the cosigner and the bridge share.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use satcosign_cosigner::spend::analyze;
use satcosign_cosigner::testkit::TestWallet;

fuzz_target!(|data: &[u8]| {
    static W: OnceLock<TestWallet> = OnceLock::new();
    let tw = W.get_or_init(TestWallet::new);
    if let Ok(psbt) = bitcoin::psbt::Psbt::deserialize(data) {
        let _ = analyze(&bitcoin::secp256k1::Secp256k1::verification_only(), &tw.wallet, &psbt);
    }
});
