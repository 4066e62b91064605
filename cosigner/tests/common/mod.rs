//! Shared helpers: a cosigner on a temporary database with the satellite test key, and
//! finalization checked by Bitcoin Core's script interpreter (libbitcoinconsensus).
#![allow(dead_code)]

use std::collections::HashMap;

use bitcoin::psbt::Psbt;
use bitcoin::secp256k1::Secp256k1;
use bitcoin::{OutPoint, Transaction, TxOut};
use miniscript::psbt::PsbtExt as _;
use satcosign_cosigner::daemon::{Cosigner, Settings};
use satcosign_cosigner::decision::Rules;
use satcosign_cosigner::decision::SignRequest;
use satcosign_cosigner::policy::Policy;
use satcosign_cosigner::protocol::{
    RegisterOutcome, RegisterWallet, Request, Response, SignOutcome,
};
use satcosign_cosigner::refusal::Refusal;
use satcosign_cosigner::testkit;
use satcosign_cosigner::wallet::WalletId;

pub const NOW: u64 = 1_800_000_000;

pub fn settings() -> Settings {
    Settings {
        network: bitcoin::Network::Regtest,
        rules: Rules {
            approval_max_age_secs: 3600,
            clock_skew_secs: 300,
        },
        policy_loosen_delay_secs: 86_400,
    }
}

/// A cosigner holding the satellite test key, on a fresh database.
pub fn cosigner(dir: &tempfile::TempDir) -> Cosigner {
    Cosigner::open(
        testkit::key(testkit::SATELLITE_TAG),
        &dir.path().join("cosigner.redb"),
        settings(),
    )
    .expect("cosigner opens")
}

pub fn register(c: &Cosigner, descriptors: &[&str], policy: Policy) -> WalletId {
    let req = Request::RegisterWallet(RegisterWallet {
        descriptors: descriptors.iter().map(|s| s.to_string()).collect(),
        policy,
        key_index: testkit::WALLET_KEY_INDEX,
    });
    match c.handle(&req, NOW) {
        Response::WalletRegistered(RegisterOutcome::Registered { wallet_id }) => wallet_id,
        other => panic!("registration failed: {other:?}"),
    }
}

/// Sends a signing request through the encoded wire form, as the link will carry it.
pub fn sign(c: &Cosigner, req: &SignRequest, now: u64) -> SignOutcome {
    let bytes = Request::Sign(req.clone()).encode();
    match Response::decode(&c.handle_bytes(&bytes, now)).expect("response decodes") {
        Response::Sign(r) => {
            assert_eq!(r.request_id, req.request_id);
            r.outcome
        }
        other => panic!("unexpected response {other:?}"),
    }
}

pub fn signed_psbt(outcome: SignOutcome) -> Psbt {
    match outcome {
        SignOutcome::Signed { psbt } => Psbt::deserialize(&psbt).expect("signed PSBT decodes"),
        SignOutcome::Refused(r) => panic!("refused: {r}"),
    }
}

pub fn refusal(outcome: SignOutcome) -> Refusal {
    match outcome {
        SignOutcome::Refused(r) => r,
        SignOutcome::Signed { .. } => panic!("expected a refusal, but it signed"),
    }
}

/// Finalizes with miniscript and checks every input with Bitcoin Core's interpreter.
pub fn finalize_and_verify(mut psbt: Psbt) -> Transaction {
    let secp = Secp256k1::verification_only();
    let spent: HashMap<OutPoint, TxOut> = psbt
        .unsigned_tx
        .input
        .iter()
        .zip(&psbt.inputs)
        .map(|(txin, input)| {
            let prev = input.non_witness_utxo.as_ref().expect("prev tx");
            (
                txin.previous_output,
                prev.output[txin.previous_output.vout as usize].clone(),
            )
        })
        .collect();
    psbt.finalize_mut(&secp)
        .unwrap_or_else(|e| panic!("miniscript cannot finalize: {e:?}"));
    let tx = psbt.extract_tx().expect("extract");
    tx.verify(|op| spent.get(op).cloned())
        .unwrap_or_else(|e| panic!("Bitcoin Core's script interpreter rejects it: {e}"));
    tx
}
