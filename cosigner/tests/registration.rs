//! Which descriptors register, and what each refusal says.

mod common;

use satcosign_cosigner::protocol::{RegisterOutcome, RegisterWallet, Request, Response};
use satcosign_cosigner::testkit::{self, TestWallet};
use satcosign_cosigner::wallet::{RegistrationError, Wallet};

fn keys() -> (String, String, String) {
    let tw = TestWallet::new();
    (
        tw.user.descriptor_key(),
        tw.backup.descriptor_key(),
        tw.satellite.descriptor_key(),
    )
}

fn register(descs: &[String]) -> Result<Wallet, RegistrationError> {
    Wallet::from_descriptors(descs, &testkit::satellite_wallet_key())
}

#[test]
fn multipath_and_pair_forms_are_one_wallet() {
    let (a, b, c) = keys();
    let multi = register(&[format!(
        "wsh(sortedmulti(2,{a}/<0;1>/*,{b}/<0;1>/*,{c}/<0;1>/*))"
    )])
    .expect("multipath registers");
    let pair = register(&[
        format!("wsh(sortedmulti(2,{a}/0/*,{b}/0/*,{c}/0/*))"),
        format!("wsh(sortedmulti(2,{a}/1/*,{b}/1/*,{c}/1/*))"),
    ])
    .expect("pair registers");
    assert_eq!(multi.id, pair.id);
    assert_eq!(multi.threshold, 2);
    let ordered = register(&[format!("wsh(multi(2,{a}/<0;1>/*,{b}/<0;1>/*,{c}/<0;1>/*))")])
        .expect("multi registers");
    assert_ne!(
        ordered.id, multi.id,
        "multi and sortedmulti make different scripts"
    );
}

#[test]
fn refusals_name_the_problem() {
    let (a, b, c) = keys();
    let other = testkit::key("someone-else").descriptor_key();
    let mainnet = satcosign_cosigner::keys::CosignerKey::from_seed(
        &testkit::seed("mainnet-key"),
        bitcoin::NetworkKind::Main,
    )
    .expect("key")
    .descriptor_key();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![format!(
                "wsh(sortedmulti(1,{a}/<0;1>/*,{b}/<0;1>/*,{c}/<0;1>/*))"
            )],
            "at least 2",
        ),
        (
            vec![format!(
                "wsh(sortedmulti(2,{a}/<0;1>/*,{b}/<0;1>/*,{other}/<0;1>/*))"
            )],
            "not in the descriptor",
        ),
        (
            vec![format!(
                "wsh(sortedmulti(2,{a}/<0;1>/*,{c}/<0;1>/*,{c}/<0;1>/*))"
            )],
            "exactly once",
        ),
        (
            vec![format!(
                "wsh(sortedmulti(2,{a}/<0;1>/*,{a}/<0;1>/*,{c}/<0;1>/*))"
            )],
            "repeats",
        ),
        (
            vec![format!(
                "wsh(sortedmulti(2,{mainnet}/<0;1>/*,{b}/<0;1>/*,{c}/<0;1>/*))"
            )],
            "key 0",
        ),
        (
            vec![format!(
                "sh(sortedmulti(2,{a}/<0;1>/*,{b}/<0;1>/*,{c}/<0;1>/*))"
            )],
            "wsh",
        ),
        (
            vec![format!(
                "wsh(sortedmulti(2,{a}/<0;1>/*,{b}/<0;1>/*,{c}/7/*))"
            )],
            "key 2",
        ),
        (
            vec![format!("wsh(and_v(v:pk({a}/<0;1>/*),pk({c}/<0;1>/*)))")],
            "wsh",
        ),
        (vec!["wsh(sortedmulti(2,".into()], "does not parse"),
        (vec![], "got 0"),
        (
            vec![
                format!("wsh(sortedmulti(2,{a}/0/*,{b}/0/*,{c}/0/*))"),
                format!("wsh(sortedmulti(2,{a}/1/*,{b}/1/*,{other}/1/*))"),
            ],
            "not the /0/* and /1/*",
        ),
    ];
    for (descs, words) in cases {
        let err = register(&descs).expect_err(&format!("{descs:?} must be refused"));
        assert!(err.to_string().contains(words), "{descs:?}: {err}");
    }
    // A wrong origin for the satellite's own key.
    let (fp_ok, bad_origin) = {
        let key = testkit::satellite_wallet_key();
        (
            key.master_fingerprint().to_string(),
            c.replace(']', "/48h/1h/0h/2h]"),
        )
    };
    assert!(bad_origin.contains(&fp_ok));
    let err = register(&[format!(
        "wsh(sortedmulti(2,{a}/<0;1>/*,{b}/<0;1>/*,{bad_origin}/<0;1>/*))"
    )])
    .expect_err("wrong origin");
    assert!(err.to_string().contains("origin"), "{err}");
}

#[test]
fn registration_through_the_daemon_is_idempotent_and_keeps_its_policy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = common::cosigner(&dir);
    let tw = TestWallet::new();
    let id = common::register(&c, &[&tw.descriptor], testkit::generous_policy());
    let looser = satcosign_cosigner::policy::Policy {
        max_per_tx_sat: 2_000_000_000_000_000,
        max_per_period_sat: 2_000_000_000_000_000,
        ..testkit::generous_policy()
    };
    // Registering again cannot be used to loosen the policy without its delay.
    let again = c.handle(
        &Request::RegisterWallet(RegisterWallet {
            descriptors: vec![tw.descriptor.clone()],
            policy: looser,
            key_index: testkit::WALLET_KEY_INDEX,
        }),
        common::NOW,
    );
    assert_eq!(
        again,
        Response::WalletRegistered(RegisterOutcome::Registered { wallet_id: id })
    );
    let bad = c.handle(
        &Request::RegisterWallet(RegisterWallet {
            descriptors: vec!["wsh(pk(nonsense))".into()],
            policy: testkit::generous_policy(),
            key_index: testkit::WALLET_KEY_INDEX,
        }),
        common::NOW,
    );
    assert!(
        matches!(
            bad,
            Response::WalletRegistered(RegisterOutcome::Refused { .. })
        ),
        "{bad:?}"
    );
    let audit = c.audit_log().expect("audit");
    assert_eq!(audit.iter().filter(|e| e.action == "register").count(), 3);
}

#[test]
fn policy_loosening_waits_through_the_daemon() {
    use satcosign_cosigner::policy::{Policy, PolicyChange};
    use satcosign_cosigner::protocol::{PolicyOutcome, UpdatePolicy};
    let dir = tempfile::tempdir().expect("tempdir");
    let c = common::cosigner(&dir);
    let tw = TestWallet::new();
    let strict = Policy {
        max_per_tx_sat: 100_000,
        max_per_period_sat: 100_000,
        ..testkit::generous_policy()
    };
    let id = common::register(&c, &[&tw.descriptor], strict);
    let psbt = tw.typical_signed_psbt(1, 1); // 50,000 + 700 fee leaves
    let update = |policy: Policy, now| {
        c.handle(
            &Request::UpdatePolicy(UpdatePolicy {
                wallet_id: id,
                policy,
            }),
            now,
        )
    };
    // Tighten: at once.
    let tight = Policy {
        max_per_tx_sat: 10_000,
        max_per_period_sat: 10_000,
        ..testkit::generous_policy()
    };
    assert_eq!(
        update(tight, common::NOW),
        Response::PolicyUpdated(PolicyOutcome::Changed(PolicyChange::Applied))
    );
    let r = common::refusal(common::sign(
        &c,
        &tw.request(&psbt, 1, common::NOW),
        common::NOW,
    ));
    let over_tx = |r: &satcosign_cosigner::refusal::Refusal| {
        r.violations().iter().any(|v| v.rule == "over_tx_limit")
    };
    assert!(over_tx(&r), "{r}");
    // Loosen: only after the configured delay (86,400 s).
    let loose = testkit::generous_policy();
    assert_eq!(
        update(loose, common::NOW),
        Response::PolicyUpdated(PolicyOutcome::Changed(PolicyChange::Deferred {
            effective_at: common::NOW + 86_400
        }))
    );
    let soon = common::NOW + 86_399;
    let r = common::refusal(common::sign(&c, &tw.request(&psbt, 2, soon), soon));
    assert!(over_tx(&r), "still the tight policy: {r}");
    let later = common::NOW + 86_400;
    common::signed_psbt(common::sign(&c, &tw.request(&psbt, 3, later), later));
}

fn register_at(
    c: &satcosign_cosigner::daemon::Cosigner,
    descriptor: &str,
    key_index: u32,
) -> RegisterOutcome {
    let req = Request::RegisterWallet(RegisterWallet {
        descriptors: vec![descriptor.to_owned()],
        policy: testkit::generous_policy(),
        key_index,
    });
    match c.handle(&req, common::NOW) {
        Response::WalletRegistered(o) => o,
        other => panic!("unexpected answer {other:?}"),
    }
}

fn refused(outcome: RegisterOutcome) -> String {
    match outcome {
        RegisterOutcome::Refused { reason } => reason,
        RegisterOutcome::Registered { wallet_id } => {
            panic!("registered {wallet_id}, but it must be refused")
        }
    }
}

/// A 2-of-3 of two fresh user keys and `satellite` (descriptor form).
fn wallet_of(tag: &str, satellite: &str) -> String {
    format!(
        "wsh(sortedmulti(2,{}/<0;1>/*,{}/<0;1>/*,{satellite}/<0;1>/*))",
        testkit::key(&format!("{tag}-hot")).descriptor_key(),
        testkit::key(&format!("{tag}-backup")).descriptor_key(),
    )
}

#[test]
fn the_satellite_registers_only_keys_it_issued_each_for_one_wallet() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = common::cosigner(&dir);
    let issuer = testkit::key(testkit::SATELLITE_TAG);
    let key_at = |i: u32| issuer.wallet_key(i).expect("key").descriptor_key();

    // A key it did not issue: another seed's, or its own at another index than claimed.
    let foreign = testkit::key("not-the-satellite").descriptor_key();
    let why = refused(register_at(&c, &wallet_of("a", &foreign), 5));
    assert!(why.starts_with("not_issued"), "{why}");
    let why = refused(register_at(&c, &wallet_of("a", &key_at(6)), 5));
    assert!(why.starts_with("not_issued"), "{why}");
    // Nor its account key itself, which signs for no wallet.
    let why = refused(register_at(
        &c,
        &wallet_of("a", &issuer.descriptor_key()),
        5,
    ));
    assert!(why.starts_with("not_issued"), "{why}");

    // Wallet A registers with key 5; registering again is idempotent.
    let a = wallet_of("a", &key_at(5));
    let RegisterOutcome::Registered { wallet_id } = register_at(&c, &a, 5) else {
        panic!("A registers")
    };
    assert_eq!(
        register_at(&c, &a, 5),
        RegisterOutcome::Registered { wallet_id }
    );

    // Key 5 was issued for A: B, another wallet, cannot have it.
    let why = refused(register_at(&c, &wallet_of("b", &key_at(5)), 5));
    assert!(why.starts_with("issued_for_another_wallet"), "{why}");
    assert!(
        why.contains(&wallet_id.to_string()),
        "names the wallet it serves: {why}"
    );

    // B with its own key 7, but with A's satellite key among its members: a reused key
    // (the satellite would otherwise hold two keys of B).
    let b_reusing = format!(
        "wsh(sortedmulti(2,{}/<0;1>/*,{}/<0;1>/*,{}/<0;1>/*))",
        testkit::key("b-hot").descriptor_key(),
        key_at(5),
        key_at(7)
    );
    let why = refused(register_at(&c, &b_reusing, 7));
    assert!(why.starts_with("reused_key"), "{why}");
    // The account key as a member is refused the same way.
    let b_account = format!(
        "wsh(sortedmulti(2,{}/<0;1>/*,{}/<0;1>/*,{}/<0;1>/*))",
        testkit::key("b-hot").descriptor_key(),
        issuer.descriptor_key(),
        key_at(7)
    );
    let why = refused(register_at(&c, &b_account, 7));
    assert!(why.starts_with("reused_key"), "{why}");

    // B with key 7 alone registers, and the refusals above left nothing behind.
    assert!(matches!(
        register_at(&c, &wallet_of("b", &key_at(7)), 7),
        RegisterOutcome::Registered { .. }
    ));
    // Nothing said reveals a key: the reasons name wallets and positions only.
    for i in [5, 6, 7] {
        let k = issuer.wallet_key(i).expect("k");
        assert!(!why.contains(&k.account_xpub().to_string()));
    }
}
