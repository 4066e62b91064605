//! PostgreSQL going down under a running bridge: requests wait and are never lost, and
//! `/health` says the database is unreachable until it is back.

mod common;

use serde_json::{json, Value};

use common::flow::{http_raw, sky, test_wallet, Flow};
use common::stores::TestStore;

async fn health(flow: &Flow) -> (u16, Value) {
    let (code, text) = http_raw(
        flow.http_addr(),
        "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    let body = serde_json::from_str(text.split("\r\n\r\n").nth(1).unwrap_or(""))
        .unwrap_or_else(|e| panic!("health is JSON ({e}): {text}"));
    (code, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_confirmed_as_postgresql_goes_down_is_signed_once_it_is_back() {
    let store = TestStore::postgres().await;
    let TestStore::Postgres(pg) = &store else {
        unreachable!("a postgres store")
    };
    let flow = Flow::start_on(&store, sky(0.0), |_| {}).await;
    let (code, body) = health(&flow).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["writer"]["engine"], "postgres", "{body}");
    assert_eq!(body["writer"]["state"], "ok", "{body}");

    let w = test_wallet(&flow).await;
    let wid = flow.register(&w.descriptor).await;
    let id = flow.submit(&wid, &w.typical_signed_psbt(1, 81)).await;
    flow.wait_state(&id, "awaiting_email", 30).await;
    let emailed = flow.inbox.code(&id).await;
    flow.ok("request.confirm", vec![json!(id), json!(emailed)])
        .await;
    // Down at once: the request's next steps (to the link, the answer, delivery) meet it.
    let stopping = pg.clone();
    tokio::task::spawn_blocking(move || stopping.stop())
        .await
        .expect("stop");

    let (code, body) = health(&flow).await;
    assert_eq!(code, 503, "{body}");
    assert_eq!(body["writer"]["state"], "unreachable", "{body}");
    assert!(
        body["writer"]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("postgres")),
        "{body}"
    );
    // A call that needs the database says so, and the bridge stays up.
    let (_, message, _) = flow.err("request.status", vec![json!(id)]).await;
    assert!(message.contains("database"), "{message}");

    let starting = pg.clone();
    tokio::task::spawn_blocking(move || starting.resume())
        .await
        .expect("resume");
    let (code, body) = health(&flow).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["writer"]["state"], "ok", "{body}");

    let done = flow.wait_state(&id, "delivered", 120).await;
    assert_eq!(done["final_state"], "signed", "{done}");
    let signed = flow.sign_attempts();
    assert_eq!(signed, 1, "signed once");
    flow.system.stop().await;
}
