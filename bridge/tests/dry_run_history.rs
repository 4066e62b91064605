//! `request.check` agrees with the satellite on the rules that read a wallet's history:
//! after one spend is signed, the dry run of a second lists the same violations, with the
//! same figures, as the satellite's refusal of it (velocity, signatures per period, the
//! change cap); after an allowlist addition under a delay, a payment to the new destination
//! is reported not yet allowed until the same time as the satellite says. The ground's copy
//! of the satellite's clock lags by the pass latency, so times agree within seconds.

mod common;

use serde_json::{json, Value};

use common::flow::{registered_wallet, rules_of, sky, Flow};
use common::stores::TestStore;
use satcosign_cosigner::policy::Policy;
use satcosign_cosigner::testkit::{foreign_script, generous_policy, SpendSpec, TestWallet};

/// How far the ground's times may trail the satellite's: the time a signature takes to
/// come down, in these tests a fraction of a second on a link that is always in view.
const LAG_SECS: i64 = 10;

fn b64(psbt: &bitcoin::Psbt) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(psbt.serialize())
}

/// Submits and confirms `psbt`; waits for the satellite's answer and returns the status.
async fn through_the_satellite(flow: &Flow, wid: &str, psbt: &bitcoin::Psbt) -> Value {
    let id = flow.submit(wid, psbt).await;
    flow.confirm_by_email(&id).await;
    flow.wait_state(&id, "delivered", 120).await
}

/// The dry run's violations and the satellite's are the same rules with the same figures;
/// the times (`ready_at`, and a gap in seconds) within [`LAG_SECS`].
fn assert_agree(dry: &Value, satellite: &Value) {
    let (d, s) = (
        dry.as_array().expect("dry run violations"),
        satellite.as_array().expect("satellite violations"),
    );
    assert_eq!(
        rules_of(dry),
        rules_of(satellite),
        "dry run {dry} vs satellite {satellite}"
    );
    for (a, b) in d.iter().zip(s) {
        assert_eq!(a["limit"], b["limit"], "{a} vs {b}");
        assert_eq!(a["output"], b["output"], "{a} vs {b}");
        let near = |x: &Value, y: &Value| match (x.as_i64(), y.as_i64()) {
            (Some(x), Some(y)) => (x - y).abs() <= LAG_SECS,
            _ => x == y,
        };
        if a["rule"] == "too_soon" {
            // The gap is measured from the last signature, which the ground saw later.
            assert!(near(&a["would_be"], &b["would_be"]), "{a} vs {b}");
        } else {
            assert_eq!(a["used"], b["used"], "{a} vs {b}");
            assert_eq!(a["would_be"], b["would_be"], "{a} vs {b}");
        }
        assert!(near(&a["ready_at"], &b["ready_at"]), "{a} vs {b}");
    }
}

/// The satellite refused the request in `status` for `policy_violations`; the wallet's last
/// violation (by the satellite) lists them.
async fn satellite_violations(flow: &Flow, wid: &str, status: &Value) -> Value {
    assert_eq!(status["final_state"], "refused", "{status}");
    let last = flow.ok("wallet.last_violation", vec![json!(wid)]).await;
    assert_eq!(last["by"], "satellite", "{last}");
    assert_eq!(last["request_id"], status["request_id"], "{last}");
    last["violations"].clone()
}

async fn the_dry_run_agrees_with_the_satellite_on_every_rule_of_history(store: TestStore) {
    let flow = Flow::start_on(&store, sky(0.0), |_| {}).await;

    // Velocity, signatures per period and the change cap: room for one typical spend.
    let policy = Policy {
        min_secs_between_signatures: 3_600,
        max_signatures_per_period: Some(1),
        max_change_per_period_sat: Some(60_000),
        ..generous_policy()
    };
    let (wid, w) = registered_wallet(&flow, &policy).await;
    let first = w.typical_signed_psbt(1, 1);
    let dry = flow
        .ok("request.check", vec![json!(wid), json!(b64(&first))])
        .await;
    assert_eq!(dry["would_sign"], true, "{dry}");
    let done = through_the_satellite(&flow, &wid, &first).await;
    assert_eq!(done["final_state"], "signed", "{done}");

    let second = w.typical_signed_psbt(1, 2);
    let dry = flow
        .ok("request.check", vec![json!(wid), json!(b64(&second))])
        .await;
    assert_eq!(dry["would_sign"], false, "{dry}");
    assert_eq!(dry["refusal"]["code"], "policy_violations", "{dry}");
    assert_eq!(
        rules_of(&dry["violations"]),
        ["too_soon", "too_many_signatures", "over_change_limit"],
        "{dry}"
    );
    // A submit does not refuse for history (a later pass may allow it): the satellite does,
    // and says the same.
    let done = through_the_satellite(&flow, &wid, &second).await;
    assert_eq!(
        done["outcome"]["refused"]["code"], "policy_violations",
        "{done}"
    );
    let satellite = satellite_violations(&flow, &wid, &done).await;
    assert_agree(&dry["violations"], &satellite);

    // An allowlist destination added under a delay waits for it, on both sides.
    let known = foreign_script(7);
    let added = foreign_script(9);
    let policy = Policy {
        allowlist: Some(vec![known.to_bytes()]),
        allowlist_add_delay_secs: 86_400,
        ..generous_policy()
    };
    let (wid, w) = registered_wallet(&flow, &policy).await;
    let more = Policy {
        allowlist: Some(vec![known.to_bytes(), added.to_bytes()]),
        ..policy
    };
    let change = flow
        .ok(
            "wallet.set_policy",
            vec![json!(wid), serde_json::to_value(&more).expect("policy")],
        )
        .await;
    let rid = change["request_id"].as_str().expect("id").to_owned();
    flow.confirm_by_email(&rid).await;
    let done = flow.wait_state(&rid, "delivered", 120).await;
    assert_eq!(done["final_state"], "signed", "{done}");
    let to_added = signed_payment(&w, added, 3);
    let dry = flow
        .ok("request.check", vec![json!(wid), json!(b64(&to_added))])
        .await;
    assert_eq!(dry["would_sign"], false, "{dry}");
    assert_eq!(
        dry["refusal"]["code"], "destination_not_yet_allowed",
        "{dry}"
    );
    let ready_at = dry["violations"][0]["ready_at"].as_u64().expect("ready_at");
    let now = satcosign_bridge::service::unix_now();
    assert!(
        ready_at > now + 86_400 - 120 && ready_at <= now + 86_400,
        "{dry}"
    );
    let done = through_the_satellite(&flow, &wid, &to_added).await;
    assert_eq!(
        done["outcome"]["refused"]["code"], "destination_not_yet_allowed",
        "{done}"
    );
    let satellite = satellite_violations(&flow, &wid, &done).await;
    assert_agree(&dry["violations"], &satellite);
    // The destination that was always there is paid as before, and the dry run says so.
    let to_known = signed_payment(&w, known, 4);
    let dry = flow
        .ok("request.check", vec![json!(wid), json!(b64(&to_known))])
        .await;
    assert_eq!(dry["would_sign"], true, "{dry}");
    let done = through_the_satellite(&flow, &wid, &to_known).await;
    assert_eq!(done["final_state"], "signed", "{done}");
    flow.system.stop().await;
}

/// A spend of one coin paying 40,000 sat to `to`, with change, signed by the user.
fn signed_payment(w: &TestWallet, to: bitcoin::ScriptBuf, salt: u32) -> bitcoin::Psbt {
    let mut psbt = w.psbt(&SpendSpec {
        inputs: vec![(0, salt, 100_000)],
        payments: vec![(to, 40_000)],
        change: Some((salt, 59_000)),
    });
    w.sign_with(&w.user, &mut psbt);
    psbt
}

crate::on_each_store!(the_dry_run_agrees_with_the_satellite_on_every_rule_of_history,);
