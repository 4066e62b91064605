//! The satellite's guards end to end, through the bridge and the simulated radio link: a
//! large spend held on the satellite's clock, cancelled from the hold email's page or left
//! to release and be signed; and an emergency lockdown confirmed while three requests stand
//! in different states (awaiting their email, in the link's outbox, held on the
//! satellite), which ends all three refused `locked` with no signature in the satellite's
//! audit, and an unlock that applies only after the satellite's delay.

mod common;

use std::time::Duration;

use serde_json::{json, Value};

use common::flow::{assert_final_tx, http_raw, registered_wallet, sky, sky_at, Flow};
use common::stores::TestStore;
use satcosign_bridge::dev::Sky;
use satcosign_cosigner::policy::Policy;
use satcosign_cosigner::testkit::{generous_policy, TestWallet};

/// A wallet that holds every spend over 10,000 sat for `hold_secs`.
async fn holding_wallet(flow: &Flow, hold_secs: u64) -> (String, TestWallet) {
    let policy = Policy {
        hold_over_sat: Some(10_000),
        hold_secs,
        ..generous_policy()
    };
    registered_wallet(flow, &policy).await
}

/// Submits and confirms `psbt` by its emailed code; returns the request id.
async fn confirmed(flow: &Flow, wid: &str, psbt: &bitcoin::Psbt) -> String {
    let id = flow.submit(wid, psbt).await;
    flow.confirm_by_email(&id).await;
    id
}

/// The satellite's audit entries for request `id`, as (action, outcome, at).
fn audit_of(flow: &Flow, id: &str) -> Vec<(String, String, u64)> {
    let rid = common::flow::parse_id(id);
    flow.system
        .cosigner
        .audit_log()
        .expect("audit")
        .into_iter()
        .filter(|e| e.request_id == Some(rid))
        .map(|e| (e.action, e.outcome, e.at))
        .collect()
}

/// Waits until the satellite's audit for `id` has an entry of `action` and `outcome`.
async fn satellite_recorded(flow: &Flow, id: &str, action: &str, outcome: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while !audit_of(flow, id)
        .iter()
        .any(|(a, o, _)| a == action && o == outcome)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the satellite never recorded {action} {outcome} for {id}: {:?}",
            audit_of(flow, id)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Request `id` ends cancelled; the cancel went up the link and the satellite recorded it;
/// it never signed.
async fn cancelled_on_the_satellite(flow: &Flow, id: &str) {
    let done = flow.wait_state(id, "delivered", 60).await;
    assert_eq!(done["final_state"], "cancelled", "{done}");
    satellite_recorded(flow, id, "cancel", "cancelled").await;
    assert!(
        !audit_of(flow, id).iter().any(|(_, o, _)| o == "signed"),
        "{:?}",
        audit_of(flow, id)
    );
}

fn held(status: &Value) -> bool {
    status["state"] == "confirmed" && status["hold"].is_object()
}

async fn a_held_spend_is_cancelled_from_the_hold_emails_page_and_never_signed(store: TestStore) {
    let flow = Flow::start_on(&store, sky(0.0), |_| {}).await;
    let (wid, w) = holding_wallet(&flow, 3600).await;
    let id = confirmed(&flow, &wid, &w.typical_signed_psbt(1, 1)).await;
    let status = flow.wait_for(&id, 120, held).await;
    let hold = &status["hold"];
    let (started, releases) = (
        hold["started_at"].as_u64().expect("start"),
        hold["releases_at"].as_u64().expect("release"),
    );
    assert_eq!(releases - started, 3600, "{status}");
    // It is expected up again at the first pass after the release, not now.
    let expected = &status["expected"];
    assert!(
        expected["at"].as_u64().expect("expected at") >= releases,
        "{status}"
    );
    assert_eq!(expected["in_view"], false, "{status}");
    // The owner is told when it began and when it releases, and where to cancel.
    let link = format!("/cancel/{id}");
    let mail = flow
        .inbox
        .all()
        .into_iter()
        .map(|m| satcosign_bridge::demo::decode_quoted_printable(&m))
        .find(|m| m.contains("Held until") && m.contains(&link))
        .expect("a hold email with the cancel link");
    assert!(
        mail.contains(&satcosign_bridge::notice::format_utc(releases)),
        "{mail}"
    );
    assert!(
        mail.contains(&satcosign_bridge::notice::format_utc(started)),
        "{mail}"
    );
    // The page shows it and changes nothing on a GET; its button cancels.
    let addr = flow.http_addr();
    let get = format!("GET {link} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let (code, page) = http_raw(addr, &get).await;
    assert_eq!(code, 200, "{page}");
    assert!(page.contains("id=\"cancel\""), "{page}");
    assert!(held(&flow.status(&id).await), "a GET cancels nothing");
    let post = format!(
        "POST {link} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: \
         application/x-www-form-urlencoded\r\nContent-Length: 13\r\n\r\naction=cancel"
    );
    let (code, page) = http_raw(addr, &post).await;
    assert_eq!(code, 200, "{page}");
    cancelled_on_the_satellite(&flow, &id).await;
    // Too late to cancel twice.
    let (code, _, _) = flow.err("request.cancel", vec![json!(id)]).await;
    assert_eq!(code, satcosign_bridge::rpc_error::WRONG_STATE);
    // The plugin's way: request.cancel while it is held goes up the link the same way.
    let id = confirmed(&flow, &wid, &w.typical_signed_psbt(1, 9)).await;
    flow.wait_for(&id, 120, held).await;
    let cancelled = flow.ok("request.cancel", vec![json!(id)]).await;
    assert_eq!(cancelled["state"], "cancelled", "{cancelled}");
    cancelled_on_the_satellite(&flow, &id).await;
    flow.system.stop().await;
}

async fn a_held_spend_is_signed_after_its_release_on_the_satellites_clock(store: TestStore) {
    let flow = Flow::start_on(&store, sky(0.0), |_| {}).await;
    let (wid, w) = holding_wallet(&flow, 2).await;
    let psbt = w.typical_signed_psbt(1, 2);
    let id = confirmed(&flow, &wid, &psbt).await;
    let done = flow.wait_state(&id, "delivered", 120).await;
    assert_eq!(done["final_state"], "signed", "{done}");
    assert_final_tx(&done, &psbt);
    let audit = audit_of(&flow, &id);
    let began = audit
        .iter()
        .find(|(_, o, _)| o == "held")
        .map(|(_, _, at)| *at)
        .expect("held first");
    let signed = audit
        .iter()
        .find(|(_, o, _)| o == "signed")
        .map(|(_, _, at)| *at)
        .expect("signed");
    assert!(signed >= began + 2, "signed at {signed}, held from {began}");
    // A small spend is not held.
    let policy = Policy {
        hold_over_sat: Some(1_000_000),
        hold_secs: 3600,
        ..generous_policy()
    };
    let (wid2, w2) = registered_wallet(&flow, &policy).await;
    let id2 = confirmed(&flow, &wid2, &w2.typical_signed_psbt(1, 3)).await;
    let done = flow.wait_state(&id2, "delivered", 120).await;
    assert_eq!(done["final_state"], "signed", "{done}");
    assert!(done["hold"].is_null(), "{done}");
    flow.system.stop().await;
}

async fn a_lockdown_stops_requests_awaiting_email_queued_and_held_and_unlock_waits(
    store: TestStore,
) {
    // Passes of 20 s every 40 s: between them, a confirmed request waits in the outbox.
    let flow = Flow::start_on(
        &store,
        Sky {
            pass_up: Duration::from_secs(20),
            pass_period: Duration::from_secs(40),
            ..sky(0.0)
        },
        |_| {},
    )
    .await;
    let (wid, w) = holding_wallet(&flow, 3600).await;
    // On the satellite: held there.
    let on_satellite = confirmed(&flow, &wid, &w.typical_signed_psbt(1, 1)).await;
    flow.wait_for(&on_satellite, 120, held).await;
    // Queued: confirmed while the satellite is out of view.
    let channel = flow.system.channel.clone();
    let out_of_view = tokio::time::Instant::now() + Duration::from_secs(60);
    while channel.in_view(tokio::time::Instant::now()) {
        assert!(
            tokio::time::Instant::now() < out_of_view,
            "no gap between passes"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let queued = confirmed(&flow, &wid, &w.typical_signed_psbt(1, 2)).await;
    flow.wait_state(&queued, "queued", 10).await;
    // Awaiting its email's confirmation.
    let awaiting = flow.submit(&wid, &w.typical_signed_psbt(1, 3)).await;
    // The email goes before its code is recorded: wait for the record, not the email.
    flow.inbox.code(&awaiting).await;
    flow.wait_state(&awaiting, "awaiting_email", 10).await;

    // The owner locks the wallet down, confirming by the emailed code.
    let lock = flow.ok("wallet.lockdown", vec![json!(wid)]).await;
    let lock_id = lock["request_id"].as_str().expect("id").to_owned();
    flow.confirm_by_email(&lock_id).await;
    for id in [&awaiting, &queued, &on_satellite] {
        let done = flow.wait_state(id, "delivered", 30).await;
        assert_eq!(done["final_state"], "refused", "{done}");
        assert_eq!(done["outcome"]["refused"]["code"], "locked", "{done}");
    }
    // New spends are refused at once.
    let (code, _, data) = flow
        .err(
            "request.submit",
            vec![json!(wid), json!(b64(&w.typical_signed_psbt(1, 4)))],
        )
        .await;
    assert_eq!(code, satcosign_bridge::rpc_error::REFUSED);
    assert_eq!(data["reason"], "locked", "{data}");
    // At the next pass the satellite locks, and records the held spend's cancel.
    let done = flow.wait_state(&lock_id, "delivered", 120).await;
    assert_eq!(done["final_state"], "signed", "{done}");
    satellite_recorded(&flow, &on_satellite, "cancel", "cancelled").await;
    for id in [&awaiting, &queued, &on_satellite] {
        assert!(
            !audit_of(&flow, id).iter().any(|(_, o, _)| o == "signed"),
            "{id}: {:?}",
            audit_of(&flow, id)
        );
    }
    let status = flow.ok("wallet.status", vec![json!(wid)]).await;
    assert_eq!(status["policy"]["locked"], true, "{status}");

    // Unlocking is a loosening: confirmed by email, then the satellite's delay.
    let unlock = flow.ok("wallet.unlock", vec![json!(wid)]).await;
    let unlock_id = unlock["request_id"].as_str().expect("id").to_owned();
    flow.confirm_by_email(&unlock_id).await;
    let asked_at = satcosign_bridge::service::unix_now();
    let done = flow.wait_state(&unlock_id, "delivered", 120).await;
    assert_eq!(done["final_state"], "signed", "{done}");
    let status = flow.ok("wallet.status", vec![json!(wid)]).await;
    assert_eq!(status["policy"]["locked"], true, "still locked: {status}");
    let pending = &status["pending_policy"];
    assert_eq!(pending["policy"]["locked"], false, "{status}");
    let effective = pending["effective_at"].as_u64().expect("when");
    assert!(effective >= asked_at + 24 * 3600 - 5, "{status}");
    flow.system.stop().await;
}

/// A stranger who knows a wallet's id uses up its daily allowance of changes and asks for
/// lockdowns over and over: the owner can still lock it down, and the owner's inbox gets one
/// lockdown email, whose code confirms it.
async fn a_stranger_cannot_use_up_the_owners_lockdown(store: TestStore) {
    let flow = Flow::start_on(&store, sky(0.0), |_| {}).await;
    let (wid, _) = registered_wallet(&flow, &generous_policy()).await;
    let tighter = serde_json::to_value(Policy {
        max_per_tx_sat: 1_000,
        ..generous_policy()
    })
    .expect("policy");
    let mut asked = Vec::new();
    loop {
        match flow
            .call("wallet.set_policy", vec![json!(wid), tighter.clone()])
            .await
        {
            Ok(r) => asked.push(r["request_id"].as_str().expect("id").to_owned()),
            Err(jsonrpsee::core::client::Error::Call(e)) => {
                assert_eq!(e.code(), satcosign_bridge::rpc_error::RATE_LIMITED, "{e}");
                break;
            }
            Err(e) => panic!("{e}"),
        }
        assert!(asked.len() <= 50, "the changes allowance never ran out");
    }
    for id in &asked {
        flow.inbox.code(id).await;
    }
    let before = flow.inbox.to("alice@example.org").len();
    let first = flow.ok("wallet.lockdown", vec![json!(wid)]).await;
    let lock_id = first["request_id"].as_str().expect("id").to_owned();
    for _ in 0..5 {
        let again = flow.ok("wallet.lockdown", vec![json!(wid)]).await;
        assert_eq!(again["request_id"], json!(lock_id), "{again}");
    }
    let code = flow.inbox.code(&lock_id).await;
    assert_eq!(
        flow.inbox.to("alice@example.org").len(),
        before + 1,
        "one lockdown email, however often it is asked for"
    );
    flow.ok("request.confirm", vec![json!(lock_id), json!(code)])
        .await;
    let done = flow.wait_state(&lock_id, "delivered", 120).await;
    assert_eq!(done["final_state"], "signed", "{done}");
    let status = flow.ok("wallet.status", vec![json!(wid)]).await;
    assert_eq!(status["policy"]["locked"], true, "{status}");
    flow.system.stop().await;
}

/// A spend whose message is already on the air when the owner locks down cannot be taken
/// back, and the satellite signs it; its signature is discarded when it comes down, so it
/// too ends refused `locked` and its owner never receives it.
async fn a_spend_on_the_air_at_lockdown_is_refused_and_its_signature_discarded(store: TestStore) {
    // A slow channel: a 30-input spend is on the air for many seconds.
    let flow = Flow::start_on(&store, sky_at(1_200), |_| {}).await;
    let (wid, w) = registered_wallet(&flow, &generous_policy()).await;
    let id = confirmed(&flow, &wid, &w.typical_signed_psbt(30, 1)).await;
    // Wait until its first fragments went up: from then it cannot be taken back.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let info = flow.ok("satellite.info", vec![]).await;
        let head = &info["link"]["head"];
        if head["fragments_sent"].as_u64().unwrap_or(0) > 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never on the air: {info}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let lock = flow.ok("wallet.lockdown", vec![json!(wid)]).await;
    let lock_id = lock["request_id"].as_str().expect("id").to_owned();
    flow.confirm_by_email(&lock_id).await;
    assert_eq!(
        flow.status(&id).await["state"],
        "queued",
        "on the air: still going up while the lockdown is confirmed"
    );
    let done = flow.wait_state(&id, "delivered", 180).await;
    assert_eq!(done["final_state"], "refused", "{done}");
    assert_eq!(done["outcome"]["refused"]["code"], "locked", "{done}");
    assert!(done["outcome"]["signed"].is_null(), "{done}");
    // The satellite did sign it (it was asked before the lockdown reached it): that is in
    // its audit, and only there.
    assert!(
        audit_of(&flow, &id).iter().any(|(_, o, _)| o == "signed"),
        "{:?}",
        audit_of(&flow, &id)
    );
    let done = flow.wait_state(&lock_id, "delivered", 180).await;
    assert_eq!(done["final_state"], "signed", "{done}");
    flow.system.stop().await;
}

fn b64(psbt: &bitcoin::Psbt) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(psbt.serialize())
}

crate::on_each_store!(
    a_held_spend_is_cancelled_from_the_hold_emails_page_and_never_signed,
    a_held_spend_is_signed_after_its_release_on_the_satellites_clock,
    a_lockdown_stops_requests_awaiting_email_queued_and_held_and_unlock_waits,
    a_stranger_cannot_use_up_the_owners_lockdown,
    a_spend_on_the_air_at_lockdown_is_refused_and_its_signature_discarded,
);
