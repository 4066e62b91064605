//! Property tests of the guards over random interleavings of new requests, retries,
//! cancels, restarts of the daemon and steps of the satellite's clock (forward, and a
//! little backward): signatures never come closer than the velocity allows nor more often
//! than its count; the change per period never passes its cap; a held spend is never
//! signed before its release, nor after its cancel. The truth is the satellite's own audit
//! log, read after each run.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use satcosign_cosigner::daemon::Cosigner;
use satcosign_cosigner::decision::{RequestId, SignRequest};
use satcosign_cosigner::policy::Policy;
use satcosign_cosigner::protocol::{Cancel, Request};
use satcosign_cosigner::testkit::{self, foreign_script, SpendSpec, TestWallet};

const PERIOD: u64 = 3_600;
const MIN_GAP: u64 = 300;
const MAX_SIGS: u64 = 3;
const CHANGE_CAP: u64 = 600_000;
const HOLD_OVER: u64 = 300_000;
const HOLD: u64 = 1_800;

fn policy() -> Policy {
    Policy {
        period_secs: PERIOD,
        min_secs_between_signatures: MIN_GAP,
        max_signatures_per_period: Some(MAX_SIGS as u32),
        max_change_per_period_sat: Some(CHANGE_CAP),
        hold_over_sat: Some(HOLD_OVER),
        hold_secs: HOLD,
        ..testkit::generous_policy()
    }
}

#[derive(Debug, Clone)]
enum Action {
    /// A new request paying `pay` with `change` back.
    New { pay: u64, change: u64 },
    /// The ground asks again for an earlier request (the `n`th, modulo how many).
    Retry(usize),
    /// The user cancels an earlier request.
    Cancel(usize),
    /// The daemon is restarted on its database.
    Restart,
    /// The satellite's clock moves (a little backward at times).
    Clock(i64),
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        3 => (1_000u64..600_000, 0u64..400_000).prop_map(|(pay, change)| Action::New { pay, change }),
        5 => (0usize..64).prop_map(Action::Retry),
        1 => (0usize..64).prop_map(Action::Cancel),
        1 => Just(Action::Restart),
        // Small steps land near a release or a gap's end; large ones cross periods.
        4 => (-60i64..200).prop_map(Action::Clock),
        2 => (200i64..2_400).prop_map(Action::Clock),
    ]
}

fn request(tw: &TestWallet, n: u8, pay: u64, change: u64, at: u64) -> SignRequest {
    let fee = 1_000;
    let mut psbt = tw.psbt(&SpendSpec {
        inputs: vec![(0, u32::from(n), pay + change + fee)],
        payments: vec![(foreign_script(n % 200 + 1), pay)],
        change: (change > 0).then_some((u32::from(n), change)),
    });
    tw.sign_with(&tw.user, &mut psbt);
    tw.request(&psbt, n, at)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, .. ProptestConfig::default() })]

    #[test]
    fn guards_hold_over_any_interleaving(actions in prop::collection::vec(action(), 1..60)) {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut c = common::cosigner(&dir);
        let tw = TestWallet::new();
        common::register(&c, &[&tw.descriptor], policy());
        let mut now = common::NOW;
        // Each request with its change and what leaves the wallet.
        let mut made: Vec<(SignRequest, u64, u64)> = Vec::new();
        for a in &actions {
            match a {
                Action::New { pay, change } => {
                    let n = made.len() as u8;
                    let req = request(&tw, n, *pay, *change, now);
                    common::sign(&c, &req, now);
                    made.push((req, *change, pay + 1_000));
                }
                Action::Retry(i) if !made.is_empty() => {
                    common::sign(&c, &made[i % made.len()].0, now);
                }
                Action::Cancel(i) if !made.is_empty() => {
                    let req = &made[i % made.len()].0;
                    let cancel = Request::Cancel(Cancel { wallet_id: req.wallet_id, request_id: req.request_id });
                    c.handle_bytes(&cancel.encode(), now);
                }
                Action::Restart => {
                    drop(c);
                    c = common::cosigner(&dir);
                }
                Action::Clock(step) => now = now.saturating_add_signed(*step),
                _ => {}
            }
        }
        check(&c, &made)?;
    }
}

/// Reads the satellite's audit log and checks every guard's invariant against it.
fn check(c: &Cosigner, made: &[(SignRequest, u64, u64)]) -> Result<(), TestCaseError> {
    let by_id: BTreeMap<RequestId, (u64, u64)> = made
        .iter()
        .map(|(r, change, leaving)| (r.request_id, (*change, *leaving)))
        .collect();
    let audit = c.audit_log().expect("audit");
    let mut signed: Vec<(u64, RequestId)> = Vec::new();
    let mut held_at: BTreeMap<RequestId, u64> = BTreeMap::new();
    let mut cancelled: BTreeSet<RequestId> = BTreeSet::new();
    for e in &audit {
        let Some(id) = e.request_id else { continue };
        match (e.action.as_str(), e.outcome.as_str()) {
            ("sign", "signed") => {
                prop_assert!(!cancelled.contains(&id), "{id} signed after its cancel");
                let (_, leaving) = by_id[&id];
                if leaving > HOLD_OVER {
                    let began = held_at.get(&id);
                    prop_assert!(
                        began.is_some(),
                        "{id} of {leaving} sat signed without a hold"
                    );
                    let began = *began.unwrap_or(&0);
                    prop_assert!(
                        e.at >= began + HOLD,
                        "{id} signed at {} before its release at {}",
                        e.at,
                        began + HOLD
                    );
                }
                signed.push((e.at, id));
            }
            ("sign", "held") => {
                held_at.entry(id).or_insert(e.at);
            }
            ("cancel", "cancelled") => {
                cancelled.insert(id);
            }
            _ => {}
        }
    }
    for (k, (at, id)) in signed.iter().enumerate() {
        if let Some((before, _)) = k.checked_sub(1).map(|p| signed[p]) {
            prop_assert!(
                *at >= before + MIN_GAP,
                "{id} signed {} s after the last signature",
                at.saturating_sub(before)
            );
        }
        let window = signed[..=k].iter().filter(|(t, _)| *t + PERIOD > *at);
        let (count, change) =
            window.fold((0u64, 0u64), |(n, sum), (_, w)| (n + 1, sum + by_id[w].0));
        prop_assert!(
            count <= MAX_SIGS,
            "{count} signatures within one period, up to {at}"
        );
        prop_assert!(
            change <= CHANGE_CAP,
            "{change} sat of change within one period, up to {at}"
        );
    }
    Ok(())
}
