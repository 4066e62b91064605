//! Fuzzes the request decoder and the whole handler behind it: any bytes from the link must
//! get a well-formed answer and never panic the daemon.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use satcosign_cosigner::daemon::{Cosigner, Settings};
use satcosign_cosigner::decision::Rules;
use satcosign_cosigner::protocol::{RegisterWallet, Request, Response};
use satcosign_cosigner::testkit::{self, TestWallet};

fn cosigner() -> &'static Cosigner {
    static C: OnceLock<(tempfile::TempDir, Cosigner)> = OnceLock::new();
    &C.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = Cosigner::open(
            testkit::key(testkit::SATELLITE_TAG),
            &dir.path().join("fuzz.redb"),
            Settings {
                network: bitcoin::Network::Regtest,
                rules: Rules { approval_max_age_secs: 3600, clock_skew_secs: 300 },
                policy_loosen_delay_secs: 86_400,
            },
        )
        .expect("open");
        let tw = TestWallet::new();
        c.handle(
            &Request::RegisterWallet(RegisterWallet {
                descriptors: vec![tw.descriptor.clone()],
                policy: testkit::generous_policy(),
                key_index: testkit::WALLET_KEY_INDEX,
            }),
            1_800_000_000,
        );
        (dir, c)
    })
    .1
}

fuzz_target!(|data: &[u8]| {
    let reply = cosigner().handle_bytes(data, 1_800_000_000);
    assert!(Response::decode(&reply).is_ok());
});
