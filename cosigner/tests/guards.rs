//! The policy's guards, one test per rule kind: a spend just inside the rule is signed, one
//! just outside is refused with the rule's code and figures, and nothing is debited by a
//! refusal. Then holds and cancels, lockdown and unlock, several guards broken at once, and
//! a database of the layout before guards.

mod common;

use satcosign_cosigner::daemon::Cosigner;
use satcosign_cosigner::decision::{RequestId, SignRequest};
use satcosign_cosigner::policy::{Policy, PolicyChange};
use satcosign_cosigner::protocol::{
    Cancel, CancelOutcome, PolicyOutcome, Request, Response, UpdatePolicy,
};
use satcosign_cosigner::refusal::{Refusal, Violation};
use satcosign_cosigner::testkit::{self, foreign_script, SpendSpec, TestWallet};

use common::NOW;

struct Case {
    tw: TestWallet,
    c: Cosigner,
    _dir: tempfile::TempDir,
}

fn setup(policy: Policy) -> Case {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = common::cosigner(&dir);
    let tw = TestWallet::new();
    common::register(&c, &[&tw.descriptor], policy);
    Case { tw, c, _dir: dir }
}

impl Case {
    /// Request `id`: coin number `id` of 1,000,000 sat pays `pay` to stranger `to`, `change`
    /// back, the rest in fee; signed by the user and approved at `at`.
    fn spend(&self, id: u8, to: u8, pay: u64, change: u64, at: u64) -> SignRequest {
        let spec = SpendSpec {
            inputs: vec![(0, u32::from(id), 1_000_000)],
            payments: vec![(foreign_script(to), pay)],
            change: (change > 0).then_some((u32::from(id), change)),
        };
        let mut psbt = self.tw.psbt(&spec);
        self.tw.sign_with(&self.tw.user, &mut psbt);
        self.tw.request(&psbt, id, at)
    }

    fn signs(&self, req: &SignRequest, now: u64) {
        let psbt = common::signed_psbt(common::sign(&self.c, req, now));
        common::finalize_and_verify(psbt);
    }

    /// Expects `code`, with nothing debited; returns the refusal.
    fn refuses(&self, req: &SignRequest, now: u64, code: &str) -> Refusal {
        let before = self.c.ledger(&self.tw.wallet.id, 0).expect("ledger");
        let refusal = common::refused_as_the_dry_run_said(&self.c, &self.tw.wallet, req, now);
        assert_eq!(refusal.code(), code, "{refusal}");
        assert_eq!(
            self.c.ledger(&self.tw.wallet.id, 0).expect("ledger"),
            before,
            "a refusal debits nothing"
        );
        refusal
    }

    fn set_policy(&self, policy: Policy, now: u64) -> PolicyChange {
        let req = Request::UpdatePolicy(UpdatePolicy {
            wallet_id: self.tw.wallet.id,
            policy,
        });
        match self.c.handle(&req, now) {
            Response::PolicyUpdated(PolicyOutcome::Changed(change)) => change,
            other => panic!("policy update failed: {other:?}"),
        }
    }

    fn cancel(&self, id: u8, now: u64) -> CancelOutcome {
        let req = Request::Cancel(Cancel {
            wallet_id: self.tw.wallet.id,
            request_id: RequestId([id; 16]),
        });
        match Response::decode(&self.c.handle_bytes(&req.encode(), now)).expect("decodes") {
            Response::Cancel(outcome) => outcome,
            other => panic!("unexpected answer {other:?}"),
        }
    }

    /// How many signatures the satellite's audit shows for request `id`.
    fn signatures(&self, id: u8) -> usize {
        self.c
            .audit_log()
            .expect("audit")
            .iter()
            .filter(|e| e.request_id == Some(RequestId([id; 16])) && e.outcome == "signed")
            .count()
    }
}

fn one(refusal: &Refusal) -> Violation {
    let mut all = refusal.violations();
    assert_eq!(all.len(), 1, "{refusal}");
    all.remove(0)
}

#[test]
fn velocity_keeps_signatures_apart_by_the_minimum_gap() {
    let k = setup(Policy {
        min_secs_between_signatures: 600,
        ..testkit::generous_policy()
    });
    k.signs(&k.spend(1, 1, 100_000, 899_000, NOW), NOW);
    let soon = k.spend(2, 1, 100_000, 899_000, NOW + 599);
    let r = k.refuses(&soon, NOW + 599, "too_soon");
    let v = one(&r);
    assert_eq!(
        (v.limit, v.would_be, v.ready_at),
        (Some(600), Some(599), Some(NOW + 600))
    );
    k.signs(&k.spend(2, 1, 100_000, 899_000, NOW + 600), NOW + 600);
}

#[test]
fn velocity_caps_the_signatures_in_a_period() {
    let k = setup(Policy {
        max_signatures_per_period: Some(2),
        period_secs: 3600,
        ..testkit::generous_policy()
    });
    k.signs(&k.spend(1, 1, 100_000, 899_000, NOW), NOW);
    k.signs(&k.spend(2, 1, 100_000, 899_000, NOW + 10), NOW + 10);
    let r = k.refuses(
        &k.spend(3, 1, 100_000, 899_000, NOW + 20),
        NOW + 20,
        "too_many_signatures",
    );
    let v = one(&r);
    assert_eq!((v.limit, v.used, v.would_be), (Some(2), Some(2), Some(3)));
    // The first signature leaves the rolling period: one more fits.
    k.signs(&k.spend(3, 1, 100_000, 899_000, NOW + 3600), NOW + 3600);
}

#[test]
fn the_change_cap_bounds_what_is_classified_as_change_per_period() {
    let k = setup(Policy {
        max_change_per_period_sat: Some(1_000_000),
        ..testkit::generous_policy()
    });
    k.signs(&k.spend(1, 1, 400_000, 599_000, NOW), NOW);
    // Exactly at the cap.
    k.signs(&k.spend(2, 1, 598_000, 401_000, NOW + 1), NOW + 1);
    let r = k.refuses(
        &k.spend(3, 1, 998_000, 1_000, NOW + 2),
        NOW + 2,
        "over_change_limit",
    );
    let v = one(&r);
    assert_eq!(
        (v.limit, v.used, v.would_be),
        (Some(1_000_000), Some(1_000_000), Some(1_001_000))
    );
    // A spend with no change still passes the cap.
    k.signs(&k.spend(3, 1, 999_000, 0, NOW + 3), NOW + 3);
}

#[test]
fn an_allowlisted_destination_added_waits_for_its_delay_and_removal_is_at_once() {
    let start = Policy {
        allowlist: Some(vec![foreign_script(2).to_bytes()]),
        allowlist_add_delay_secs: 3600,
        ..testkit::generous_policy()
    };
    let k = setup(start.clone());
    let with_one = Policy {
        allowlist: Some(vec![
            foreign_script(2).to_bytes(),
            foreign_script(1).to_bytes(),
        ]),
        ..start.clone()
    };
    // Adding is not a loosening of the whole policy: it applies, the entry waits.
    assert_eq!(k.set_policy(with_one.clone(), NOW), PolicyChange::Applied);
    let r = k.refuses(
        &k.spend(1, 1, 100_000, 899_000, NOW + 3599),
        NOW + 3599,
        "destination_not_yet_allowed",
    );
    let v = one(&r);
    assert_eq!((v.output, v.ready_at), (Some(0), Some(NOW + 3600)));
    // The old destination was never delayed.
    k.signs(&k.spend(2, 2, 100_000, 899_000, NOW + 3599), NOW + 3599);
    k.signs(&k.spend(1, 1, 100_000, 899_000, NOW + 3600), NOW + 3600);
    // Removal applies at once.
    assert_eq!(
        k.set_policy(start.clone(), NOW + 3601),
        PolicyChange::Applied
    );
    k.refuses(
        &k.spend(3, 1, 100_000, 899_000, NOW + 3602),
        NOW + 3602,
        "destination_not_allowed",
    );
    // Without a delay of its own, an addition loosens like any other change: it waits for
    // the cosigner's loosening delay with the whole policy.
    let k = setup(Policy {
        allowlist_add_delay_secs: 0,
        ..start
    });
    let change = k.set_policy(
        Policy {
            allowlist_add_delay_secs: 0,
            ..with_one
        },
        NOW,
    );
    assert_eq!(
        change,
        PolicyChange::Deferred {
            effective_at: NOW + common::settings().policy_loosen_delay_secs
        }
    );
}

#[test]
fn a_large_spend_is_held_on_the_satellites_clock_then_signed() {
    let k = setup(Policy {
        hold_over_sat: Some(300_000),
        hold_secs: 7200,
        ..testkit::generous_policy()
    });
    // Just inside: 299,000 paid plus 1,000 fee is 300,000 leaving. Signed at once.
    k.signs(&k.spend(1, 1, 299_000, 700_000, NOW), NOW);
    // Just over: held from the first time it reaches the satellite.
    let big = k.spend(2, 1, 299_001, 699_999, NOW);
    let r = k.refuses(&big, NOW + 5, "held");
    assert_eq!(
        r,
        Refusal::Held {
            started_at: NOW + 5,
            releases_at: NOW + 7205
        }
    );
    // Asking again does not restart it, nor end it early, whatever the ground says.
    let r = k.refuses(&big, NOW + 7204, "held");
    assert_eq!(
        r,
        Refusal::Held {
            started_at: NOW + 5,
            releases_at: NOW + 7205
        }
    );
    // Released: signed, though the approval is now older than its maximum age (it was
    // fresh when the hold began).
    k.signs(&big, NOW + 7205);
    assert_eq!(k.signatures(2), 1);
}

#[test]
fn a_held_spend_cancelled_before_release_is_never_signed() {
    let k = setup(Policy {
        hold_over_sat: Some(300_000),
        hold_secs: 7200,
        ..testkit::generous_policy()
    });
    let big = k.spend(1, 1, 500_000, 499_000, NOW);
    k.refuses(&big, NOW, "held");
    assert_eq!(k.cancel(1, NOW + 60), CancelOutcome::Cancelled);
    k.refuses(&big, NOW + 7200, "cancelled");
    k.refuses(&big, NOW + 90_000, "cancelled");
    assert_eq!(k.signatures(1), 0);
    // A cancel after the signature is too late, and says so.
    let small = k.spend(2, 1, 100_000, 899_000, NOW);
    k.signs(&small, NOW);
    assert_eq!(k.cancel(2, NOW + 1), CancelOutcome::AlreadySigned);
}

#[test]
fn lockdown_is_at_once_and_unlock_waits_for_the_delay() {
    let policy = testkit::generous_policy();
    let k = setup(policy.clone());
    let locked = Policy {
        locked: true,
        ..policy.clone()
    };
    assert_eq!(k.set_policy(locked, NOW), PolicyChange::Applied);
    let r = k.refuses(&k.spend(1, 1, 100_000, 899_000, NOW), NOW, "locked");
    assert_eq!(one(&r).rule, "locked");
    let delay = common::settings().policy_loosen_delay_secs;
    assert_eq!(
        k.set_policy(policy, NOW + 10),
        PolicyChange::Deferred {
            effective_at: NOW + 10 + delay
        }
    );
    let later = NOW + 9 + delay;
    k.refuses(&k.spend(1, 1, 100_000, 899_000, later), later, "locked");
    k.signs(&k.spend(1, 1, 100_000, 899_000, later + 1), later + 1);
}

#[test]
fn several_guards_broken_at_once_are_all_listed() {
    let k = setup(Policy {
        min_secs_between_signatures: 600,
        max_signatures_per_period: Some(1),
        max_change_per_period_sat: Some(1_000_000),
        ..testkit::generous_policy()
    });
    k.signs(&k.spend(1, 1, 100_000, 899_000, NOW), NOW);
    let r = k.refuses(
        &k.spend(2, 1, 100_000, 899_000, NOW + 1),
        NOW + 1,
        "policy_violations",
    );
    let rules: Vec<&str> = r.violations().iter().map(|v| v.rule).collect();
    assert_eq!(
        rules,
        ["too_soon", "too_many_signatures", "over_change_limit"],
        "{r}"
    );
}

#[test]
fn a_policy_of_guards_is_checked_at_registration() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = common::cosigner(&dir);
    let tw = TestWallet::new();
    let req = Request::RegisterWallet(satcosign_cosigner::protocol::RegisterWallet {
        descriptors: vec![tw.descriptor.clone()],
        policy: Policy {
            hold_over_sat: Some(1),
            hold_secs: 0,
            ..testkit::generous_policy()
        },
        key_index: testkit::WALLET_KEY_INDEX,
    });
    match c.handle(&req, NOW) {
        Response::WalletRegistered(satcosign_cosigner::protocol::RegisterOutcome::Refused {
            reason,
        }) => assert!(reason.contains("hold_secs"), "{reason}"),
        other => panic!("registered a hold of no time: {other:?}"),
    }
}

#[test]
fn a_database_of_the_layout_before_guards_is_refused_not_misread() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("cosigner.redb");
    {
        // What a build before layouts wrote: wallets, and no record of the layout.
        let db = redb::Database::create(&path).expect("db");
        let txn = db.begin_write().expect("txn");
        {
            let def: redb::TableDefinition<&[u8; 16], &[u8]> =
                redb::TableDefinition::new("wallets");
            let mut t = txn.open_table(def).expect("table");
            t.insert(&[1; 16], [0u8; 8].as_slice()).expect("insert");
        }
        txn.commit().expect("commit");
    }
    let err = Cosigner::open(
        testkit::key(testkit::SATELLITE_TAG),
        &path,
        common::settings(),
    )
    .expect_err("refused");
    let text = err.to_string();
    assert!(
        text.contains("layout 1") && text.contains("layout 2"),
        "{text}"
    );
}
