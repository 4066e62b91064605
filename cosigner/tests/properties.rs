//! Property tests: whatever the sequence or interleaving of requests, the per-period total
//! never exceeds the limit, change is never counted as spent, and every verdict is the one
//! the policy's arithmetic gives.

mod common;

use std::sync::Arc;

use proptest::prelude::*;
use satcosign_cosigner::policy::Policy;
use satcosign_cosigner::protocol::SignOutcome;
use satcosign_cosigner::testkit::{self, foreign_script, SpendSpec, TestWallet};

const MAX_TX: u64 = 500_000;
const MAX_PERIOD: u64 = 1_000_000;
const PERIOD: u64 = 86_400;

fn policy() -> Policy {
    Policy {
        max_per_tx_sat: MAX_TX,
        max_per_period_sat: MAX_PERIOD,
        period_secs: PERIOD,
        ..testkit::generous_policy()
    }
}

#[derive(Debug, Clone)]
struct Step {
    pay: u64,
    change: u64,
    fee: u64,
    inputs: u32,
    advance: u64,
}

fn step() -> impl Strategy<Value = Step> {
    (
        1_000u64..600_000,
        0u64..400_000,
        300u64..3_000,
        1u32..4,
        0u64..50_000,
    )
        .prop_map(|(pay, change, fee, inputs, advance)| Step {
            pay,
            change,
            fee,
            inputs,
            advance,
        })
}

fn psbt_for(tw: &TestWallet, n: usize, s: &Step) -> bitcoin::psbt::Psbt {
    let total = s.pay + s.change + s.fee;
    let per = total / u64::from(s.inputs);
    let mut inputs: Vec<(u32, u32, u64)> = (0..s.inputs)
        .map(|i| (0, (n as u32) * 10 + i, per))
        .collect();
    inputs[0].2 += total - per * u64::from(s.inputs);
    let change = (s.change > 0).then_some((n as u32, s.change));
    let mut psbt = tw.psbt(&SpendSpec {
        inputs,
        payments: vec![(foreign_script((n % 200) as u8 + 1), s.pay)],
        change,
    });
    tw.sign_with(&tw.user, &mut psbt);
    psbt
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, .. ProptestConfig::default() })]

    #[test]
    fn period_limit_holds_and_change_is_never_spent(steps in prop::collection::vec(step(), 1..10)) {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = common::cosigner(&dir);
        let tw = TestWallet::new();
        let id = common::register(&c, &[&tw.descriptor], policy());
        let mut now = common::NOW;
        let mut model: Vec<(u64, u64)> = Vec::new(); // (at, amount) signed so far
        for (n, s) in steps.iter().enumerate() {
            now += s.advance;
            let psbt = psbt_for(&tw, n, s);
            let leaving = s.pay + s.fee;
            let in_window: u64 = model.iter().filter(|(at, _)| *at > now - PERIOD).map(|(_, a)| a).sum();
            let outcome = common::sign(&c, &tw.request(&psbt, n as u8, now), now);
            match outcome {
                SignOutcome::Signed { .. } => {
                    prop_assert!(leaving <= MAX_TX, "signed {leaving} over the per-tx limit");
                    prop_assert!(in_window + leaving <= MAX_PERIOD, "signed past the period limit");
                    model.push((now, leaving));
                    let ledger = c.ledger(&id, 0).expect("ledger");
                    let last = ledger.iter().find(|e| e.at == now && e.request_id.0 == [n as u8; 16]).expect("debited");
                    prop_assert_eq!(last.amount_sat, leaving, "change ({}) must not be debited", s.change);
                }
                SignOutcome::Refused(r) => {
                    // Every limit broken is named, and only those.
                    let mut expected = Vec::new();
                    if leaving > MAX_TX {
                        expected.push("over_tx_limit");
                    }
                    if in_window + leaving > MAX_PERIOD {
                        expected.push("over_period_limit");
                    }
                    let named: Vec<&str> = r.violations().iter().map(|v| v.rule).collect();
                    prop_assert_eq!(named, expected.clone(), "{}", r);
                    prop_assert!(!expected.is_empty(), "refused a spend within limits: {}", r);
                }
            }
            let window: u64 = c.ledger(&id, now.saturating_sub(PERIOD)).expect("ledger").iter().map(|e| e.amount_sat).sum();
            prop_assert!(window <= MAX_PERIOD, "ledger holds {window} within one period");
        }
    }
}

#[test]
fn concurrent_requests_never_pass_the_period_limit_together() {
    // Eight threads race spends that each fit alone; together they would pass the limit.
    let dir = tempfile::tempdir().expect("tempdir");
    let c = Arc::new(common::cosigner(&dir));
    let tw = Arc::new(TestWallet::new());
    let id = common::register(&c, &[&tw.descriptor], policy());
    let step = Step {
        pay: 300_000,
        change: 50_000,
        fee: 1_000,
        inputs: 1,
        advance: 0,
    };
    let handles: Vec<_> = (0..8)
        .map(|n| {
            let (c, tw, step) = (c.clone(), tw.clone(), step.clone());
            std::thread::spawn(move || {
                let psbt = psbt_for(&tw, n, &step);
                matches!(
                    common::sign(&c, &tw.request(&psbt, n as u8, common::NOW), common::NOW),
                    SignOutcome::Signed { .. }
                )
            })
        })
        .collect();
    let signed = handles
        .into_iter()
        .map(|h| h.join().expect("thread"))
        .filter(|&signed| signed)
        .count();
    assert_eq!(signed, 3, "three threads got signatures, five were refused");
    let ledger = c.ledger(&id, 0).expect("ledger");
    let total: u64 = ledger.iter().map(|e| e.amount_sat).sum();
    assert_eq!(
        ledger.len(),
        3,
        "exactly three 301,000-sat spends fit in 1,000,000: {ledger:?}"
    );
    assert!(total <= MAX_PERIOD);
}
