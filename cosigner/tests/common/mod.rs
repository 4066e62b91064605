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

/// Rules of the policy: a refusal with one of these codes comes from `check_policy`.
pub const POLICY_CODES: [&str; 11] = [
    "fee_too_high",
    "fee_rate_too_high",
    "over_tx_limit",
    "over_period_limit",
    "too_soon",
    "too_many_signatures",
    "over_change_limit",
    "destination_not_allowed",
    "destination_not_yet_allowed",
    "locked",
    "policy_violations",
];

/// The dry run's verdict on `req` at `now`, as `request.check` reaches it: the PSBT
/// analysed against the registered wallet, then `check_policy` against the policy in
/// force, over the satellite's own ledger and allowlist delays. `None` where a dry run
/// cannot start (no such wallet, no PSBT), which the bridge answers with its own errors.
pub fn dry_run(
    c: &Cosigner,
    wallet: &satcosign_cosigner::wallet::Wallet,
    req: &SignRequest,
    now: u64,
) -> Option<Result<(), Refusal>> {
    use satcosign_cosigner::decision::{check_policy, History};
    let state = c.policy_state(&req.wallet_id).expect("policy state")?;
    let ledger = c.ledger(&req.wallet_id, 0).expect("ledger");
    let psbt = Psbt::deserialize(&req.psbt).ok()?;
    let secp = Secp256k1::verification_only();
    let spend = match satcosign_cosigner::spend::analyze(&secp, wallet, &psbt) {
        Ok(spend) => spend,
        Err(refusal) => return Some(Err(refusal)),
    };
    let history = History {
        ledger: &ledger,
        allowlist_since: &state.allowlist_since,
    };
    Some(check_policy(
        &spend,
        state.effective(now),
        history,
        now,
        req.replaces,
    ))
}

/// Sends `req` at `now` and returns the refusal, having checked that the dry run said the
/// same beforehand: the same refusal, figures and all, for every rule of the policy; and
/// for any other refusal, either the same one or (for what only the signing step checks:
/// approvals, holds, cancels, coins signed before) no objection.
pub fn refused_as_the_dry_run_said(
    c: &Cosigner,
    wallet: &satcosign_cosigner::wallet::Wallet,
    req: &SignRequest,
    now: u64,
) -> Refusal {
    let dry = dry_run(c, wallet, req, now);
    let refusal = refusal(sign(c, req, now));
    if POLICY_CODES.contains(&refusal.code()) {
        assert_eq!(dry, Some(Err(refusal.clone())), "the dry run disagrees");
    } else if let Some(Err(said)) = dry {
        assert_eq!(said, refusal, "the dry run disagrees");
    }
    refusal
}
