//! Two replicas of the bridge on one PostgreSQL database: A drives the ground (it took the
//! lease first), B stands by and serves clients all the same. A request submitted to A is
//! confirmed on B's page and delivered once; a subscriber on B hears every change A makes;
//! each replica's Nostr relay shows what the other stored.

mod common;

use std::time::Duration;

use serde_json::{json, Value};

use common::flow::{http_raw, sky, test_wallet, Flow};
use common::stores::TestStore;
use common::{contract, LineClient};
use satcosign_bridge::RunningBridge;

async fn health(addr: std::net::SocketAddr) -> (u16, Value) {
    let (code, text) = http_raw(
        addr,
        "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    let body = serde_json::from_str(text.split("\r\n\r\n").nth(1).unwrap_or(""))
        .unwrap_or_else(|e| panic!("health is JSON ({e}): {text}"));
    (code, body)
}

/// Replica A (the flow's bridge, driving the ground) and B, a standby on its database.
async fn two_replicas() -> (Flow, RunningBridge) {
    let store = TestStore::postgres().await;
    let a = Flow::start_on(&store, sky(0.0), |_| {}).await;
    a.system
        .bridge
        .ground
        .as_ref()
        .expect("ground")
        .taken()
        .await;
    let b = a.system.replica(|_| {}).await.expect("replica B starts");
    let (code, body) = health(b.http.expect("http")).await;
    assert_eq!(code, 200, "a standby is healthy: {body}");
    assert_eq!(body["link"]["state"], "standby", "{body}");
    assert!(!b.ground.as_ref().expect("ground").holds());
    (a, b)
}

/// Every notification `sub` sends for `id` until it shows the request delivered.
async fn heard_until_delivered(sub: &mut LineClient, id: &str) -> Vec<Value> {
    let mut heard = Vec::new();
    loop {
        let n = tokio::time::timeout(Duration::from_secs(120), sub.recv())
            .await
            .expect("a change within 120 s");
        assert_eq!(n["method"], "request.subscribe", "{n}");
        assert_eq!(n["params"][0], json!(id));
        let status = n["params"][1].clone();
        contract().check_result("request.status", &status);
        let delivered = status["state"] == "delivered";
        heard.push(status);
        if delivered {
            return heard;
        }
    }
}

fn states(heard: &[Value]) -> Vec<String> {
    heard
        .iter()
        .map(|s| s["state"].as_str().unwrap_or("").to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_submitted_to_a_is_confirmed_on_bs_page_signed_and_delivered_once() {
    let (a, b) = two_replicas().await;
    let w = test_wallet(&a).await;
    let wid = a.register(&w.descriptor).await;
    let id = a.submit(&wid, &w.typical_signed_psbt(1, 90)).await;
    let code = a.inbox.code(&id).await;

    // The emailed link, opened on B: the page shows the request A took, and confirms it.
    let b_http = b.http.expect("http");
    let (status, page) = http_raw(
        b_http,
        &format!("GET /confirm/{id}?t={code} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert_eq!(status, 200, "{page}");
    let form = format!("t={code}&action=confirm");
    let (status, page) = http_raw(
        b_http,
        &format!(
            "POST /confirm/{id} HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{form}",
            form.len()
        ),
    )
    .await;
    assert_eq!(status, 200, "{page}");

    // A, which drives the link, hears of it and takes it to the satellite; B reports it done.
    let client = jsonrpsee::http_client::HttpClientBuilder::default()
        .build(format!("http://{b_http}"))
        .expect("client");
    let done = loop {
        let s: Value =
            jsonrpsee::core::client::ClientT::request(&client, "request.status", vec![json!(id)])
                .await
                .expect("status from B");
        if s["state"] == "delivered" {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(done["final_state"], "signed", "{done}");
    assert_eq!(a.sign_attempts(), 1, "the satellite was asked once");
    assert_eq!(
        a.inbox.recipients_of(&format!("/confirm/{id}")).len(),
        1,
        "one code was emailed"
    );
    // Delivered once: the one answer is in the mailbox, and A says the same as B.
    let on_a = a.status(&id).await;
    assert_eq!(on_a["final_state"], "signed", "{on_a}");
    assert_eq!(on_a["outcome"], done["outcome"]);
    b.stop().await;
    a.system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_on_b_hears_every_change_made_on_a() {
    let (a, b) = two_replicas().await;
    let w = test_wallet(&a).await;
    let wid = a.register(&w.descriptor).await;
    let id = a.submit(&wid, &w.typical_signed_psbt(1, 91)).await;
    a.wait_state(&id, "awaiting_email", 30).await;

    // The same request followed on both replicas; everything happens on A.
    let mut on_a = LineClient::connect(a.system.bridge.electrum_tcp.expect("tcp")).await;
    let mut on_b = LineClient::connect(b.electrum_tcp.expect("tcp")).await;
    let first_a = on_a.ok("request.subscribe", json!([id])).await;
    let first_b = on_b.ok("request.subscribe", json!([id])).await;
    assert_eq!(first_a["state"], "awaiting_email");
    assert_eq!(first_b["state"], "awaiting_email");
    let code = a.inbox.code(&id).await;
    a.ok("request.confirm", vec![json!(id), json!(code)]).await;

    let heard_a = heard_until_delivered(&mut on_a, &id).await;
    let heard_b = heard_until_delivered(&mut on_b, &id).await;
    let (states_a, states_b) = (states(&heard_a), states(&heard_b));
    // B hears the user's confirmation and the outcome, in the order they happened, as A's
    // own subscriber does (a step that passes quickly may be read already moved on).
    let order = ["confirmed", "queued", "sent", "signed", "delivered"];
    for (who, heard) in [("A", &states_a), ("B", &states_b)] {
        for must in ["confirmed", "delivered"] {
            assert!(
                heard.iter().any(|s| s == must),
                "{who} heard {must}: {heard:?}"
            );
        }
        let ranks: Vec<usize> = heard
            .iter()
            .map(|s| order.iter().position(|o| o == s).expect("a known state"))
            .collect();
        assert!(
            ranks.windows(2).all(|w| w[0] <= w[1]),
            "{who} in order: {heard:?}"
        );
    }
    assert_eq!(
        heard_a.last(),
        heard_b.last(),
        "both end on the same delivered request"
    );
    b.stop().await;
    a.system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn electrum_on_bs_nostr_relay_gets_the_answer_that_a_published() {
    use futures::SinkExt as _;
    let (a, b) = two_replicas().await;
    let w = test_wallet(&a).await;
    a.register(&w.descriptor).await;
    let before = a.inbox.request_ids();
    let (dm, user, satellite) = common::flow::nostr_dm(
        &w,
        &w.satellite.electrum_xpub(),
        &w.typical_signed_psbt(1, 92),
    );

    // B was told of the wallet A registered.
    let on_b = b
        .service
        .as_ref()
        .expect("service")
        .nostr
        .get()
        .expect("nostr")
        .clone();
    while !on_b.serves_member(&user.public_key()) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Electrum 4.6+ pointed at B: it waits for the satellite's answer, and sends the PSBT.
    let relay_b = b.nostr.expect("nostr");
    // A subscription to the satellite's answers to this user, on a new socket to B.
    let answers = |sub: &'static str| {
        let filter = json!({"kinds": [4], "authors": [satellite.to_hex()], "#p": [user.public_key().to_hex()]});
        async move {
            let mut ws = common::flow::nostr_ws(relay_b).await;
            ws.send(tokio_tungstenite::tungstenite::Message::text(
                json!(["REQ", sub, filter]).to_string(),
            ))
            .await
            .expect("send");
            ws
        }
    };
    let mut waiting = answers("answers").await;
    let stored = common::flow::nostr_until(&mut waiting, "EOSE").await;
    assert_eq!(stored.len(), 1, "no answer yet: {stored:?}");
    let mut sending = common::flow::nostr_ws(relay_b).await;
    let ok = common::flow::publish_on(&mut sending, &dm).await;
    assert_eq!(ok[2], true, "B takes the PSBT: {ok}");

    // It became a request (on B); the user confirms it; A drives it to the satellite.
    let id = loop {
        if let Some(id) = a.inbox.request_ids().difference(&before).next() {
            break id.clone();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let code = a.inbox.code(&id).await;
    a.ok("request.confirm", vec![json!(id), json!(code)]).await;
    let done = a.wait_state(&id, "delivered", 120).await;
    assert_eq!(done["final_state"], "signed", "{done}");

    // A published the answer; Electrum, connected to B only, receives it.
    let live = common::flow::nostr_until(&mut waiting, "EVENT").await;
    let answer = live.last().expect("an event");
    assert_eq!(answer[1], "answers", "{answer}");
    assert_eq!(answer[2]["pubkey"], json!(satellite.to_hex()), "{answer}");
    // And a reader arriving later finds it stored on B, once.
    let mut later = answers("again").await;
    let again = common::flow::nostr_until(&mut later, "EOSE").await;
    assert_eq!(
        again.iter().filter(|m| m[0] == "EVENT").count(),
        1,
        "{again:?}"
    );
    b.stop().await;
    a.system.stop().await;
}
