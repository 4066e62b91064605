//! One crafted PSBT per rule: each is refused with its own reason code, and nothing is
//! signed or debited; one that breaks several rules is refused with every one listed.

mod common;

use bitcoin::psbt::PsbtSighashType;
use bitcoin::sighash::EcdsaSighashType;
use bitcoin::Amount;
use satcosign_cosigner::daemon::Cosigner;
use satcosign_cosigner::decision::{RequestId, SignRequest};
use satcosign_cosigner::policy::Policy;
use satcosign_cosigner::testkit::{self, foreign_script, SpendSpec, TestWallet};
use satcosign_cosigner::wallet::WalletId;

use common::NOW;

struct Case {
    tw: TestWallet,
    c: Cosigner,
    wallet_id: WalletId,
    _dir: tempfile::TempDir,
}

fn setup(policy: Policy) -> Case {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = common::cosigner(&dir);
    let tw = TestWallet::new();
    let wallet_id = common::register(&c, &[&tw.descriptor], policy);
    assert_eq!(wallet_id, tw.wallet.id);
    Case {
        tw,
        c,
        wallet_id,
        _dir: dir,
    }
}

fn spec() -> SpendSpec {
    SpendSpec {
        inputs: vec![(0, 0, 1_000_000)],
        payments: vec![(foreign_script(1), 400_000)],
        change: Some((0, 599_000)),
    }
}

impl Case {
    fn signed_by_user(&self, spec: &SpendSpec) -> bitcoin::psbt::Psbt {
        let mut psbt = self.tw.psbt(spec);
        self.tw.sign_with(&self.tw.user, &mut psbt);
        psbt
    }

    /// Sends `req`, expects the refusal `code`, and checks nothing was debited.
    fn expect_refused(&self, req: &SignRequest, code: &str) {
        let before = self.c.ledger(&self.wallet_id, 0).expect("ledger").len();
        let refusal = common::refused_as_the_dry_run_said(&self.c, &self.tw.wallet, req, NOW);
        assert_eq!(refusal.code(), code, "{refusal}");
        assert_eq!(
            self.c.ledger(&self.wallet_id, 0).expect("ledger").len(),
            before,
            "a refusal debits nothing"
        );
        let audit = self.c.audit_log().expect("audit");
        assert_eq!(
            audit.last().expect("audited").outcome,
            code,
            "the refusal is audited"
        );
    }
}

#[test]
fn the_baseline_spend_is_signed() {
    // Every refusal below changes one thing of this spend.
    let k = setup(testkit::generous_policy());
    let psbt = k.signed_by_user(&spec());
    let signed = common::signed_psbt(common::sign(&k.c, &k.tw.request(&psbt, 1, NOW), NOW));
    common::finalize_and_verify(signed);
}

#[test]
fn change_that_pays_elsewhere() {
    let k = setup(testkit::generous_policy());
    let mut psbt = k.tw.psbt(&spec());
    // The change output keeps its claim (derivations) but pays a stranger.
    psbt.unsigned_tx.output[1].script_pubkey = foreign_script(9);
    k.tw.sign_with(&k.tw.user, &mut psbt);
    k.expect_refused(&k.tw.request(&psbt, 1, NOW), "change_mismatch");
}

#[test]
fn wrong_threshold_or_keys() {
    let k = setup(testkit::generous_policy());
    // A 3-of-3 over the same keys has other scripts: its coins are not this wallet's.
    let other = satcosign_cosigner::wallet::Wallet::from_descriptors(
        &[k.tw.descriptor.replace("sortedmulti(2,", "sortedmulti(3,")],
        &k.tw.satellite,
    )
    .expect("3-of-3 registers");
    let mut psbt = k.signed_by_user(&spec());
    let secp = bitcoin::secp256k1::Secp256k1::new();
    let derived = other.derive(&secp, 0, 0).expect("derive");
    let prev = psbt.inputs[0].non_witness_utxo.as_mut().expect("prev");
    prev.output[0].script_pubkey = derived.script_pubkey.clone();
    let txid = prev.compute_txid();
    psbt.inputs[0].witness_utxo = Some(prev.output[0].clone());
    psbt.inputs[0].witness_script = Some(derived.witness_script);
    psbt.unsigned_tx.input[0].previous_output.txid = txid;
    psbt.inputs[0].partial_sigs.clear();
    k.tw.sign_with(&k.tw.user, &mut psbt);
    k.expect_refused(&k.tw.request(&psbt, 1, NOW), "input_not_in_wallet");

    // A key not in the wallet at all.
    let mut psbt = k.signed_by_user(&spec());
    psbt.inputs[0].bip32_derivation.clear();
    k.expect_refused(&k.tw.request(&psbt, 2, NOW), "input_not_in_wallet");
}

#[test]
fn missing_previous_transaction() {
    let k = setup(testkit::generous_policy());
    let mut psbt = k.signed_by_user(&spec());
    psbt.inputs[0].non_witness_utxo = None;
    k.expect_refused(&k.tw.request(&psbt, 1, NOW), "missing_prev_tx");
}

#[test]
fn mismatched_previous_transaction() {
    let k = setup(testkit::generous_policy());
    let mut psbt = k.signed_by_user(&spec());
    psbt.inputs[0].non_witness_utxo = Some(k.tw.funding_tx(0, 5, 1_000_000, 99));
    k.expect_refused(&k.tw.request(&psbt, 1, NOW), "prev_tx_mismatch");
}

#[test]
fn lying_witness_utxo_amount() {
    let k = setup(testkit::generous_policy());
    let mut psbt = k.signed_by_user(&spec());
    // The 2020 fee attack: claim the coin is worth less than it is.
    psbt.inputs[0].witness_utxo.as_mut().expect("wu").value = Amount::from_sat(600_000);
    k.expect_refused(&k.tw.request(&psbt, 1, NOW), "witness_utxo_mismatch");
}

#[test]
fn sighash_other_than_all() {
    let k = setup(testkit::generous_policy());
    let mut psbt = k.signed_by_user(&spec());
    psbt.inputs[0].sighash_type = Some(PsbtSighashType::from(
        EcdsaSighashType::SinglePlusAnyoneCanPay,
    ));
    k.expect_refused(&k.tw.request(&psbt, 1, NOW), "sighash_not_all");

    let mut psbt = k.signed_by_user(&spec());
    for sig in psbt.inputs[0].partial_sigs.values_mut() {
        sig.sighash_type = EcdsaSighashType::None;
    }
    k.expect_refused(&k.tw.request(&psbt, 2, NOW), "sighash_not_all");
}

#[test]
fn fee_over_policy() {
    let k = setup(Policy {
        max_fee_sat: 999,
        ..testkit::generous_policy()
    });
    let psbt = k.signed_by_user(&spec()); // fee 1,000
    k.expect_refused(&k.tw.request(&psbt, 1, NOW), "fee_too_high");
}

#[test]
fn fee_rate_over_policy() {
    let k = setup(Policy {
        max_fee_rate_sat_vb: 5,
        ..testkit::generous_policy()
    });
    let psbt = k.signed_by_user(&spec()); // ~1,000 sat over ~180 vB
    k.expect_refused(&k.tw.request(&psbt, 1, NOW), "fee_rate_too_high");
}

#[test]
fn over_the_per_transaction_limit() {
    let k = setup(Policy {
        max_per_tx_sat: 400_999, // payment 400,000 + fee 1,000 = 401,000
        ..testkit::generous_policy()
    });
    let psbt = k.signed_by_user(&spec());
    k.expect_refused(&k.tw.request(&psbt, 1, NOW), "over_tx_limit");
}

#[test]
fn over_the_per_period_limit() {
    let k = setup(Policy {
        max_per_tx_sat: 500_000,
        max_per_period_sat: 700_000,
        ..testkit::generous_policy()
    });
    let first = k.signed_by_user(&spec());
    common::signed_psbt(common::sign(&k.c, &k.tw.request(&first, 1, NOW), NOW));
    let second = k.signed_by_user(&SpendSpec {
        inputs: vec![(0, 1, 1_000_000)],
        ..spec()
    });
    k.expect_refused(&k.tw.request(&second, 2, NOW), "over_period_limit");
    // Once the first spend leaves the period, the second fits.
    let later = NOW + 86_400 + 1;
    let again = k.tw.request(&second, 3, later);
    common::signed_psbt(common::sign(&k.c, &again, later));
}

#[test]
fn destination_not_on_the_allowlist() {
    let k = setup(Policy {
        allowlist: Some(vec![foreign_script(2).to_bytes()]),
        ..testkit::generous_policy()
    });
    let psbt = k.signed_by_user(&spec()); // pays foreign_script(1)
    k.expect_refused(&k.tw.request(&psbt, 1, NOW), "destination_not_allowed");
    // Paying the allowed destination (with change) is signed: change needs no allowlisting.
    let ok = k.signed_by_user(&SpendSpec {
        payments: vec![(foreign_script(2), 400_000)],
        ..spec()
    });
    common::signed_psbt(common::sign(&k.c, &k.tw.request(&ok, 2, NOW), NOW));
}

#[test]
fn unknown_wallet() {
    let k = setup(testkit::generous_policy());
    let psbt = k.signed_by_user(&spec());
    let mut req = k.tw.request(&psbt, 1, NOW);
    req.wallet_id = WalletId([7; 16]);
    let refusal = common::refused_as_the_dry_run_said(&k.c, &k.tw.wallet, &req, NOW);
    assert_eq!(refusal.code(), "unknown_wallet");
}

#[test]
fn no_other_signature_present() {
    let k = setup(testkit::generous_policy());
    let psbt = k.tw.psbt(&spec()); // nobody signed
    k.expect_refused(&k.tw.request(&psbt, 1, NOW), "no_other_signature");
}

#[test]
fn an_invalid_other_signature() {
    let k = setup(testkit::generous_policy());
    let mut psbt = k.signed_by_user(&spec());
    // A signature for another transaction, moved onto this one.
    let other = k.signed_by_user(&SpendSpec {
        payments: vec![(foreign_script(3), 400_000)],
        ..spec()
    });
    psbt.inputs[0].partial_sigs = other.inputs[0].partial_sigs.clone();
    k.expect_refused(&k.tw.request(&psbt, 1, NOW), "invalid_signature");
}

#[test]
fn stale_or_mismatched_approval() {
    let k = setup(testkit::generous_policy());
    let psbt = k.signed_by_user(&spec());
    // Approved more than approval_max_age_secs (3600) ago.
    k.expect_refused(&k.tw.request(&psbt, 1, NOW - 3601), "stale_approval");
    // From the future, beyond the clock skew allowance.
    k.expect_refused(&k.tw.request(&psbt, 2, NOW + 301), "stale_approval");
    // For another transaction.
    let mut req = k.tw.request(&psbt, 3, NOW);
    req.approval.txid = k
        .signed_by_user(&SpendSpec {
            payments: vec![(foreign_script(4), 1)],
            ..spec()
        })
        .unsigned_tx
        .compute_txid();
    k.expect_refused(&req, "approval_mismatch");
    // For another request.
    let mut req = k.tw.request(&psbt, 4, NOW);
    req.approval.request_id = RequestId([9; 16]);
    k.expect_refused(&req, "approval_mismatch");
}

#[test]
fn approval_delay_not_yet_passed() {
    let k = setup(Policy {
        min_approval_delay_secs: 600,
        ..testkit::generous_policy()
    });
    let psbt = k.signed_by_user(&spec());
    k.expect_refused(&k.tw.request(&psbt, 1, NOW - 599), "approval_delay");
    common::signed_psbt(common::sign(&k.c, &k.tw.request(&psbt, 1, NOW - 600), NOW));
}

#[test]
fn an_outpoint_already_signed_in_a_different_transaction() {
    let k = setup(testkit::generous_policy());
    let first = k.signed_by_user(&spec());
    let first_signed = common::signed_psbt(common::sign(&k.c, &k.tw.request(&first, 1, NOW), NOW));
    // The same coin, another destination.
    let second = k.signed_by_user(&SpendSpec {
        payments: vec![(foreign_script(5), 400_000)],
        ..spec()
    });
    k.expect_refused(&k.tw.request(&second, 2, NOW), "outpoint_already_signed");

    // The identical retry returns the stored signatures and debits nothing more.
    let retry = common::signed_psbt(common::sign(
        &k.c,
        &k.tw.request(&first, 3, NOW + 5),
        NOW + 5,
    ));
    assert_eq!(retry.serialize(), first_signed.serialize());
    assert_eq!(k.c.ledger(&k.wallet_id, 0).expect("ledger").len(), 1);

    // An explicit replacement of the first request (a fee bump) is allowed, and replaces
    // its ledger entry rather than adding to it.
    let mut req = k.tw.request(&second, 4, NOW + 10);
    req.replaces = Some(RequestId([1; 16]));
    common::signed_psbt(common::sign(&k.c, &req, NOW + 10));
    let ledger = k.c.ledger(&k.wallet_id, 0).expect("ledger");
    assert_eq!(ledger.len(), 1, "{ledger:?}");
    assert_eq!(ledger[0].request_id, RequestId([4; 16]));
}

#[test]
fn outputs_worth_more_than_inputs() {
    let k = setup(testkit::generous_policy());
    let psbt = k.signed_by_user(&SpendSpec {
        payments: vec![(foreign_script(1), 1_500_000)],
        change: None,
        ..spec()
    });
    k.expect_refused(&k.tw.request(&psbt, 1, NOW), "outputs_exceed_inputs");
}

#[test]
fn garbage_instead_of_a_psbt() {
    let k = setup(testkit::generous_policy());
    let mut req = k.tw.request(&k.signed_by_user(&spec()), 1, NOW);
    req.psbt = b"psbt\xff but not really".to_vec();
    k.expect_refused(&req, "malformed_psbt");
}

#[test]
fn a_payment_to_oneself_is_not_spending_but_the_claim_is_checked() {
    // 0.1 BTC a transaction, 0.1 BTC a day.
    let k = setup(Policy {
        max_per_tx_sat: 10_000_000,
        max_per_period_sat: 10_000_000,
        ..testkit::generous_policy()
    });
    // Each case spends its own coin (a coin signed once is never signed in another spend).
    let spec = |pay: bitcoin::ScriptBuf, coin: u32| SpendSpec {
        inputs: vec![(0, coin, 60_000_000)],
        payments: vec![(pay, 50_000_000)],
        change: Some((1, 9_990_000)),
    };
    // 0.5 BTC to the wallet's own receive address: only the fee leaves it, so it is signed
    // (the output derives from the registered descriptor, which the cosigner checks).
    let mut own = k.tw.psbt(&spec(k.tw.script(0, 12), 0));
    k.tw.mark_own(&mut own, 0, 0, 12);
    k.tw.sign_with(&k.tw.user, &mut own);
    let signed = common::signed_psbt(common::sign(&k.c, &k.tw.request(&own, 1, NOW), NOW));
    common::finalize_and_verify(signed);
    let debited: u64 =
        k.c.ledger(&k.wallet_id, 0)
            .expect("ledger")
            .iter()
            .map(|e| e.amount_sat)
            .sum();
    assert_eq!(debited, 10_000, "only the fee counts against the limits");

    // 0.5 BTC to a stranger is over the limits, per transaction and per period both.
    let stranger = k.signed_by_user(&spec(foreign_script(3), 1));
    k.expect_refused(&k.tw.request(&stranger, 2, NOW), "policy_violations");
    let refusal = common::refused_as_the_dry_run_said(
        &k.c,
        &k.tw.wallet,
        &k.tw.request(&stranger, 2, NOW),
        NOW,
    );
    let rules: Vec<&str> = refusal.violations().iter().map(|v| v.rule).collect();
    assert_eq!(rules, ["over_tx_limit", "over_period_limit"], "{refusal}");

    // A stranger's address claimed as the wallet's own (its key paths point at index 12,
    // whose script is another) is caught, not believed.
    let mut lie = k.tw.psbt(&spec(foreign_script(4), 2));
    k.tw.mark_own(&mut lie, 0, 0, 12);
    k.tw.sign_with(&k.tw.user, &mut lie);
    k.expect_refused(&k.tw.request(&lie, 3, NOW), "change_mismatch");
}

/// The decision's own invariant: a wallet is never signed for with another wallet's key,
/// even if the caller hands it one (the daemon always passes the wallet's own).
#[test]
fn the_decision_never_signs_with_another_wallets_key() {
    use satcosign_cosigner::decision::{decide, Decision, DecisionInput, Rules};
    let tw = TestWallet::new();
    let mut psbt = tw.psbt(&spec());
    tw.sign_with(&tw.user, &mut psbt);
    let txid = psbt.unsigned_tx.compute_txid();
    let request_id = RequestId([9; 16]);
    let req = SignRequest {
        request_id,
        wallet_id: tw.wallet.id,
        psbt: psbt.serialize(),
        approval: satcosign_cosigner::decision::Approval {
            request_id,
            txid,
            approved_at: NOW - 10,
        },
        replaces: None,
    };
    let policy = testkit::generous_policy();
    let none = std::collections::BTreeMap::new();
    let secp = bitcoin::secp256k1::Secp256k1::new();
    let issuer = testkit::key(testkit::SATELLITE_TAG);
    let decide_with = |key: &satcosign_cosigner::keys::CosignerKey| {
        decide(
            &DecisionInput {
                key,
                wallet: Some((&tw.wallet, &policy)),
                history: satcosign_cosigner::decision::History::none(),
                hold: None,
                cancelled: false,
                signed_outpoints: &none,
                request: &req,
                now: NOW,
                rules: Rules {
                    approval_max_age_secs: 3600,
                    clock_skew_secs: 300,
                },
            },
            &secp,
        )
    };
    for other in [
        issuer
            .wallet_key(testkit::WALLET_KEY_INDEX + 1)
            .expect("key"),
        testkit::key(testkit::SATELLITE_TAG),
    ] {
        match decide_with(&other) {
            Decision::Refuse(r) => assert_eq!(r.code(), "internal", "{r}"),
            other => panic!("signed with another wallet's key: {other:?}"),
        }
    }
    assert!(matches!(
        decide_with(&testkit::satellite_wallet_key()),
        Decision::Sign(_)
    ));
}

#[test]
fn a_spend_breaking_several_rules_is_refused_with_every_one_and_its_figures() {
    let k = setup(Policy {
        max_fee_sat: 999,        // fee 1,000
        max_fee_rate_sat_vb: 5,  // ~1,000 sat over ~180 vB
        max_per_tx_sat: 400_999, // payment 400,000 + fee 1,000 = 401,000
        max_per_period_sat: 400_999,
        allowlist: Some(vec![foreign_script(2).to_bytes()]),
        ..testkit::generous_policy()
    });
    let psbt = k.signed_by_user(&spec()); // pays foreign_script(1)
    let refusal =
        common::refused_as_the_dry_run_said(&k.c, &k.tw.wallet, &k.tw.request(&psbt, 1, NOW), NOW);
    assert_eq!(refusal.code(), "policy_violations", "{refusal}");
    let broken = refusal.violations();
    let rules: Vec<&str> = broken.iter().map(|v| v.rule).collect();
    assert_eq!(
        rules,
        [
            "fee_too_high",
            "fee_rate_too_high",
            "over_tx_limit",
            "over_period_limit",
            "destination_not_allowed"
        ],
        "{refusal}"
    );
    assert_eq!(
        (broken[0].limit, broken[0].would_be),
        (Some(999), Some(1_000))
    );
    assert_eq!(broken[1].limit, Some(5));
    assert!(broken[1].would_be.is_some_and(|r| r > 5), "{:?}", broken[1]);
    assert_eq!(
        (broken[2].limit, broken[2].would_be),
        (Some(400_999), Some(401_000))
    );
    assert_eq!(
        (broken[3].limit, broken[3].used, broken[3].would_be),
        (Some(400_999), Some(0), Some(401_000))
    );
    assert_eq!(broken[4].output, Some(0));
    // The message names every rule too, for the email and the plugin.
    let text = refusal.to_string();
    for rule in rules {
        assert!(text.contains(rule), "{rule} in {text}");
    }
    // Nothing was signed or debited.
    assert!(k.c.ledger(&k.wallet_id, 0).expect("ledger").is_empty());
}

#[test]
fn a_spend_just_inside_every_limit_is_signed() {
    let k = setup(Policy {
        max_fee_sat: 1_000,
        max_per_tx_sat: 401_000,
        max_per_period_sat: 401_000,
        allowlist: Some(vec![foreign_script(1).to_bytes()]),
        ..testkit::generous_policy()
    });
    let psbt = k.signed_by_user(&spec());
    common::signed_psbt(common::sign(&k.c, &k.tw.request(&psbt, 1, NOW), NOW));
}
