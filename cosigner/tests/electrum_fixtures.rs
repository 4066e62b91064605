//! PSBTs made and signed once by Debian's real Electrum 4.3.4 (tests/fixtures/generate.py)
//! are cosigned by the satellite, finalize, and pass Bitcoin Core's script interpreter.

mod common;

use std::str::FromStr;

use bitcoin::psbt::Psbt;
use bitcoin::Txid;
use satcosign_cosigner::decision::{Approval, RequestId, SignRequest};
use satcosign_cosigner::keys::parse_any_xpub;
use satcosign_cosigner::testkit;
use serde_json::Value;

fn fixture(name: &str) -> Value {
    let path = format!("{}/tests/fixtures/{name}.json", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(&path).expect("fixture readable")).expect("JSON")
}

fn psbt_from_base64(s: &str) -> Psbt {
    Psbt::from_str(s).expect("Electrum's PSBT parses")
}

fn cosign_fixture(name: &str, descriptor_field: &str) {
    let fx = fixture(name);
    let dir = tempfile::tempdir().expect("tempdir");
    let c = common::cosigner(&dir);

    // The satellite's key is the one Electrum's wallet holds as its third cosigner.
    assert_eq!(
        testkit::satellite_wallet_key().electrum_xpub(),
        fx["xpubs_electrum"]["C"].as_str().expect("xpub C"),
        "our wallet key's Vpub is the one Electrum shows"
    );
    assert!(parse_any_xpub(fx["xpubs_electrum"]["C"].as_str().expect("C")).is_some());

    let wallet_id = common::register(
        &c,
        &[fx[descriptor_field].as_str().expect("descriptor")],
        testkit::generous_policy(),
    );
    let user_psbt = psbt_from_base64(fx["psbt_user_signed"].as_str().expect("psbt"));
    let txid = user_psbt.unsigned_tx.compute_txid();
    let request_id = RequestId([0x42; 16]);
    let req = SignRequest {
        request_id,
        wallet_id,
        psbt: user_psbt.serialize(),
        approval: Approval {
            request_id,
            txid,
            approved_at: common::NOW - 60,
        },
        replaces: None,
    };
    let signed = common::signed_psbt(common::sign(&c, &req, common::NOW));
    for input in &signed.inputs {
        assert_eq!(
            input.partial_sigs.len(),
            2,
            "user's and satellite's signatures"
        );
    }
    let tx = common::finalize_and_verify(signed);
    assert_eq!(
        tx.compute_txid(),
        Txid::from_str(fx["final_txid"].as_str().expect("txid")).expect("txid")
    );

    // Electrum's own cosigned transaction passes too, and ours is byte-identical to it:
    // both sign deterministically (RFC 6979 with low-R grinding).
    let electrum_final: bitcoin::Transaction = bitcoin::consensus::encode::deserialize_hex(
        fx["final_tx_electrum"].as_str().expect("final tx"),
    )
    .expect("Electrum's final tx decodes");
    assert_eq!(
        bitcoin::consensus::encode::serialize_hex(&tx),
        bitcoin::consensus::encode::serialize_hex(&electrum_final),
        "the satellite's signature equals the one Electrum makes with the same key"
    );
}

#[test]
fn electrum_one_input_psbt_with_change_is_cosigned_and_valid() {
    cosign_fixture("electrum_1in", "descriptor_electrum");
}

#[test]
fn electrum_three_input_psbt_is_cosigned_and_valid() {
    cosign_fixture("electrum_3in", "descriptor_electrum");
}

#[test]
fn full_origin_descriptor_registers_the_same_wallet_and_signs() {
    cosign_fixture("electrum_1in", "descriptor_full_origin");
    let fx = fixture("electrum_1in");
    let dir = tempfile::tempdir().expect("tempdir");
    let c = common::cosigner(&dir);
    let a = common::register(
        &c,
        &[fx["descriptor_electrum"].as_str().expect("d")],
        testkit::generous_policy(),
    );
    let b = common::register(
        &c,
        &[fx["descriptor_full_origin"].as_str().expect("d")],
        testkit::generous_policy(),
    );
    assert_eq!(
        a, b,
        "one wallet, one id, one set of limits, however its keys are written"
    );
}

#[test]
fn the_change_output_electrum_made_is_recognized_as_change() {
    let fx = fixture("electrum_1in");
    let dir = tempfile::tempdir().expect("tempdir");
    let c = common::cosigner(&dir);
    let wallet_id = common::register(
        &c,
        &[fx["descriptor_electrum"].as_str().expect("d")],
        testkit::generous_policy(),
    );
    let psbt = psbt_from_base64(fx["psbt_user_signed"].as_str().expect("psbt"));
    let req = SignRequest {
        request_id: RequestId([1; 16]),
        wallet_id,
        psbt: psbt.serialize(),
        approval: Approval {
            request_id: RequestId([1; 16]),
            txid: psbt.unsigned_tx.compute_txid(),
            approved_at: common::NOW,
        },
        replaces: None,
    };
    common::signed_psbt(common::sign(&c, &req, common::NOW));
    let ledger = c.ledger(&wallet_id, 0).expect("ledger");
    let pay = fx["pay_sat"].as_u64().expect("pay");
    let fee = fx["fee_sat"].as_u64().expect("fee");
    assert_eq!(ledger.len(), 1);
    assert_eq!(
        ledger[0].amount_sat,
        pay + fee,
        "only the payment and the fee left the wallet"
    );
}
