//! The request decoder and the PSBT checks take any bytes without panicking, and every
//! answer is itself a well-formed message. (The same entry points are `cargo fuzz` targets
//! in `cosigner/fuzz/`; this runs in CI.)

mod common;

use proptest::prelude::*;
use satcosign_cosigner::protocol::{Request, Response, PROTOCOL_VERSION};
use satcosign_cosigner::spend::analyze;
use satcosign_cosigner::testkit::{self, TestWallet};

/// One registered cosigner shared by every case (opening a database per case is slow).
fn shared() -> &'static (
    tempfile::TempDir,
    satcosign_cosigner::daemon::Cosigner,
    Vec<u8>,
) {
    static SHARED: std::sync::OnceLock<(
        tempfile::TempDir,
        satcosign_cosigner::daemon::Cosigner,
        Vec<u8>,
    )> = std::sync::OnceLock::new();
    SHARED.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = common::cosigner(&dir);
        let (tw, req) = valid_request();
        common::register(&c, &[&tw.descriptor], testkit::generous_policy());
        (dir, c, req)
    })
}

fn valid_request() -> (TestWallet, Vec<u8>) {
    let tw = TestWallet::new();
    let psbt = tw.typical_signed_psbt(2, 1);
    let req = Request::Sign(tw.request(&psbt, 1, common::NOW)).encode();
    (tw, req)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, .. ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = Request::decode(&bytes);
        let mut versioned = vec![PROTOCOL_VERSION];
        versioned.extend(&bytes);
        let _ = Request::decode(&versioned);
    }

    #[test]
    fn mutated_requests_get_a_well_formed_answer(
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)
    ) {
        let (_, c, valid) = shared();
        let mut bytes = valid.clone();
        for (at, value) in flips {
            let i = at.index(bytes.len());
            bytes[i] = value;
        }
        let reply = c.handle_bytes(&bytes, common::NOW);
        prop_assert!(Response::decode(&reply).is_ok(), "the answer decodes");
    }

    #[test]
    fn mutated_psbts_never_panic_the_checks(
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6)
    ) {
        let tw = TestWallet::new();
        let mut bytes = tw.typical_signed_psbt(2, 1).serialize();
        for (at, value) in flips {
            let i = at.index(bytes.len());
            bytes[i] = value;
        }
        if let Ok(psbt) = bitcoin::psbt::Psbt::deserialize(&bytes) {
            let _ = analyze(&bitcoin::secp256k1::Secp256k1::new(), &tw.wallet, &psbt);
        }
    }
}

#[test]
fn decoder_refusals_are_specific() {
    use satcosign_cosigner::protocol::DecodeError;
    assert_eq!(Request::decode(&[]), Err(DecodeError::Empty));
    assert_eq!(Request::decode(&[9, 0]), Err(DecodeError::Version(9)));
    let mut trailing = Request::Hello.encode();
    trailing.push(0);
    assert_eq!(Request::decode(&trailing), Err(DecodeError::Trailing(1)));
    assert!(matches!(
        Request::decode(&[PROTOCOL_VERSION, 200]),
        Err(DecodeError::Malformed(_))
    ));
    let (_, valid) = valid_request();
    assert!(matches!(
        Request::decode(&valid[..valid.len() - 3]),
        Err(DecodeError::Malformed(_))
    ));
    assert!(matches!(Request::decode(&valid), Ok(Request::Sign(_))));
}
