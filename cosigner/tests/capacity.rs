//! Capacity: a spend of 250 inputs and 2,000 outputs (the size Coldcard tests its spending
//! policy with) is checked against a policy with every rule switched on and signed, and the
//! final transaction passes Bitcoin Core's script interpreter on every input.

mod common;

use bitcoin::Amount;
use satcosign_cosigner::policy::Policy;
use satcosign_cosigner::testkit::TestWallet;

use common::NOW;

const INPUTS: u32 = 250;
const OUTPUTS: u32 = 2_000;

/// Every rule on, each with room for this one spend.
fn policy_with_every_rule() -> Policy {
    Policy {
        max_per_tx_sat: 25_000_000,
        max_per_period_sat: 50_000_000,
        period_secs: 86_400,
        max_fee_sat: 200_000,
        max_fee_rate_sat_vb: 10,
        allowlist: None,
        min_approval_delay_secs: 0,
        min_secs_between_signatures: 3_600,
        max_signatures_per_period: Some(3),
        max_change_per_period_sat: Some(250_000_000),
        allowlist_add_delay_secs: 86_400,
        hold_over_sat: Some(30_000_000),
        hold_secs: 86_400,
        locked: false,
    }
}

#[test]
fn a_250_input_2000_output_spend_is_checked_signed_and_accepted_by_core() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = common::cosigner(&dir);
    let tw = TestWallet::new();
    let wallet_id = common::register(&c, &[&tw.descriptor], policy_with_every_rule());

    let psbt = tw.large_signed_psbt(INPUTS, OUTPUTS, 1);
    assert_eq!(psbt.inputs.len(), INPUTS as usize);
    assert_eq!(psbt.unsigned_tx.output.len(), OUTPUTS as usize);
    let paid: u64 = psbt.unsigned_tx.output[..OUTPUTS as usize - 1]
        .iter()
        .map(|o| o.value.to_sat())
        .sum();
    let change = psbt.unsigned_tx.output[OUTPUTS as usize - 1].value;
    let spent = Amount::from_sat(u64::from(INPUTS) * 1_000_000);
    let fee = spent - change - Amount::from_sat(paid);

    let req = tw.request(&psbt, 1, NOW);
    let signed = common::signed_psbt(common::sign(&c, &req, NOW));
    let tx = common::finalize_and_verify(signed);
    assert_eq!(tx.input.len(), INPUTS as usize);
    assert_eq!(tx.output.len(), OUTPUTS as usize);
    assert_eq!(tx.compute_txid(), psbt.unsigned_tx.compute_txid());

    // The satellite debited exactly what left the wallet, and counted the change.
    let ledger = c.ledger(&wallet_id, 0).expect("ledger");
    assert_eq!(ledger.len(), 1, "{ledger:?}");
    assert_eq!(ledger[0].amount_sat, paid + fee.to_sat());
    assert_eq!(ledger[0].change_sat, change.to_sat());

    // The same spend again is a retry: the same signature back, no second debit.
    let again = common::signed_psbt(common::sign(&c, &req, NOW + 60));
    common::finalize_and_verify(again);
    assert_eq!(c.ledger(&wallet_id, 0).expect("ledger").len(), 1);
}

#[test]
fn a_250_input_2000_output_spend_over_the_limits_lists_every_rule_it_breaks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = common::cosigner(&dir);
    let tw = TestWallet::new();
    let tight = Policy {
        max_per_tx_sat: 20_000_000,
        max_change_per_period_sat: Some(200_000_000),
        ..policy_with_every_rule()
    };
    let wallet_id = common::register(&c, &[&tw.descriptor], tight);
    let psbt = tw.large_signed_psbt(INPUTS, OUTPUTS, 2);
    let refusal =
        common::refused_as_the_dry_run_said(&c, &tw.wallet, &tw.request(&psbt, 2, NOW), NOW);
    let codes: Vec<&str> = refusal.violations().iter().map(|v| v.rule).collect();
    assert_eq!(
        codes,
        ["over_tx_limit", "over_change_limit"],
        "{refusal}: {:?}",
        refusal.violations()
    );
    assert!(c.ledger(&wallet_id, 0).expect("ledger").is_empty());
}
