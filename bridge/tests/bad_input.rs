//! Bad input over the Electrum line protocol: each gets the right JSON-RPC error, nothing is
//! stored, and the same connection keeps working.

mod common;

use common::{error_code, LineClient};
use serde_json::{json, Value};

/// After an error, the connection still answers and the slot is still untouched.
async fn still_serving(c: &mut LineClient, slot: &str) {
    let ping = c.call(1000, "server.ping", json!([])).await;
    assert_eq!(
        ping["result"],
        Value::Null,
        "connection still usable: {ping}"
    );
    let get = c.call(1001, "cosigner.get", json!([slot])).await;
    assert_eq!(get["result"], Value::Null, "nothing was stored: {get}");
}

#[tokio::test]
async fn each_bad_request_gets_its_error_and_changes_nothing() {
    let h = common::start_bridge(|c| c.mailbox.max_message_bytes = 1000).await;
    let mut c = LineClient::connect(h.tcp()).await;
    let slot = common::keyhash("victim");
    let good_msg = common::b64(b"fine");

    // (raw line, expected code, a word the message must contain)
    let cases: Vec<(String, i64, &str)> = vec![
        (r#"{"id":1,"method":"cosigner.put","params":["#.into(), -32700, "Parse error"),
        ("not json at all".into(), -32700, "Parse error"),
        ("42".into(), -32600, "Invalid request"),
        (r#""a string""#.into(), -32600, "Invalid request"),
        ("null".into(), -32600, "Invalid request"),
        ("[]".into(), -32600, "empty batch"),
        (r#"{"id":1}"#.into(), -32600, "method"),
        (r#"{"id":1,"method":7}"#.into(), -32600, "Invalid request"),
        (r#"{"jsonrpc":"1.0","id":1,"method":"server.ping"}"#.into(), -32600, "2.0"),
        (r#"{"id":1,"method":"cosigner.steal","params":[]}"#.into(), -32601, "cosigner.steal"),
        (json!({"id":1,"method":"cosigner.put","params":[1, good_msg]}).to_string(), -32602, "keyhash"),
        (json!({"id":1,"method":"cosigner.put","params":[slot, 5]}).to_string(), -32602, "message"),
        (json!({"id":1,"method":"cosigner.put","params":[slot]}).to_string(), -32602, "2 to 2"),
        (json!({"id":1,"method":"cosigner.put","params":[slot, good_msg, "extra"]}).to_string(), -32602, "got 3"),
        (json!({"id":1,"method":"cosigner.put","params":{"keyhash": slot, "message": good_msg}}).to_string(), -32602, "positional"),
        (json!({"id":1,"method":"cosigner.get","params":[]}).to_string(), -32602, "got 0"),
        (json!({"id":1,"method":"server.ping","params":["x"]}).to_string(), -32602, "got 1"),
        (json!({"id":1,"method":"cosigner.put","params":[&slot[..63], good_msg]}).to_string(), -32602, "64 hex"),
        (json!({"id":1,"method":"cosigner.put","params":[format!("{}zz", &slot[..62]), good_msg]}).to_string(), -32602, "keyhash"),
        (json!({"id":1,"method":"cosigner.put","params":[slot, "not base64!"]}).to_string(), -32602, "base64"),
        (json!({"id":1,"method":"cosigner.put","params":[slot, ""]}).to_string(), -32602, "empty"),
        (json!({"id":1,"method":"cosigner.put","params":[slot, common::b64(&[1u8; 1001])]}).to_string(), -32602, "limit is 1000"),
        (json!({"id":1,"method":"server.version","params":["x", "1.2"]}).to_string(), -32001, "unsupported protocol"),
        (json!({"id":1,"method":"server.version","params":["x", {"v": 1}]}).to_string(), -32602, "protocol_version"),
    ];
    for (line, code, word) in cases {
        c.send_line(&line).await;
        let resp = c.recv().await;
        assert_eq!(error_code(&resp), code, "{line} -> {resp}");
        let message = resp["error"]["message"].as_str().expect("message");
        assert!(
            message.to_lowercase().contains(&word.to_lowercase()),
            "{line}: message {message:?} should mention {word:?}"
        );
        assert_eq!(resp["jsonrpc"], "2.0", "{resp}");
        still_serving(&mut c, &slot).await;
    }

    // Invalid UTF-8.
    c.send_raw(b"{\"id\":1,\"method\":\"\xff\xfe\"}\n").await;
    assert_eq!(error_code(&c.recv().await), -32700);
    still_serving(&mut c, &slot).await;
}

#[tokio::test]
async fn an_oversize_line_is_refused_unread_and_the_connection_survives() {
    let h = common::start_bridge(|_| {}).await; // default limit: 1,000,000 bytes
    let mut c = LineClient::connect(h.tcp()).await;
    let slot = common::keyhash("huge");
    let huge = json!({"id": 1, "method": "cosigner.put", "params": [slot, common::b64(&vec![0u8; 800_000])]})
        .to_string();
    assert!(huge.len() > 1_000_000);
    c.send_line(&huge).await;
    let resp = c.recv().await;
    assert_eq!(error_code(&resp), -32007, "{resp}");
    assert!(resp["error"]["message"]
        .as_str()
        .expect("msg")
        .contains("1000000"));
    still_serving(&mut c, &slot).await;

    // Just under the limit is read and handled normally.
    let fits = json!({"id": 2, "method": "cosigner.put", "params": [slot, common::b64(&vec![0u8; 700_000])]})
        .to_string();
    assert!(fits.len() < 1_000_000);
    c.send_line(&fits).await;
    let resp = c.recv().await;
    assert_eq!(
        resp["result"],
        Value::Null,
        "{}",
        &resp.to_string()[..200.min(resp.to_string().len())]
    );
}

#[tokio::test]
async fn batches_notifications_and_a_missing_jsonrpc_member() {
    let h = common::start_bridge(|_| {}).await;
    let mut c = LineClient::connect(h.tcp()).await;
    let slot = common::keyhash("batch");
    let msg = common::b64(b"batched");

    // A batch: a put, a notification (no reply), a bad element, a get. Order is kept.
    let batch = json!([
        {"jsonrpc": "2.0", "id": "a", "method": "cosigner.put", "params": [slot, msg]},
        {"jsonrpc": "2.0", "method": "server.ping"},
        17,
        {"jsonrpc": "2.0", "id": "b", "method": "cosigner.get", "params": [slot]},
    ]);
    c.send_line(&batch.to_string()).await;
    let resp = c.recv().await;
    let items = resp.as_array().expect("a batch gets an array");
    assert_eq!(items.len(), 3, "the notification is not answered: {resp}");
    assert_eq!(items[0]["id"], "a");
    assert_eq!(items[0]["result"], Value::Null);
    assert_eq!(error_code(&items[1]), -32600);
    assert_eq!(items[2]["id"], "b");
    assert_eq!(items[2]["result"], json!(msg));

    // Notifications run but are never answered, alone or in a batch of only notifications.
    let other = common::keyhash("notified");
    c.send_line(
        &json!({"jsonrpc":"2.0","method":"cosigner.put","params":[other, msg]}).to_string(),
    )
    .await;
    c.send_line(&json!([{"jsonrpc":"2.0","method":"server.ping"}]).to_string())
        .await;
    assert!(
        c.silent_for(std::time::Duration::from_millis(300)).await,
        "notifications get no reply"
    );
    assert_eq!(
        c.ok("cosigner.get", json!([other])).await,
        json!(msg),
        "the notified put ran"
    );

    // electrs accepts requests without "jsonrpc"; so does the bridge.
    c.send_line(r#"{"id":5,"method":"server.ping","params":[]}"#)
        .await;
    let resp = c.recv().await;
    assert_eq!(resp["id"], 5);
    assert_eq!(resp["result"], Value::Null);

    // A batch over the limit is refused whole.
    let big: Vec<Value> = (0..101)
        .map(|i| json!({"id": i, "method": "server.ping"}))
        .collect();
    c.send_line(&Value::Array(big).to_string()).await;
    assert_eq!(error_code(&c.recv().await), -32010);
    c.send_line("").await; // blank lines are ignored
    assert_eq!(c.ok("server.ping", json!([])).await, Value::Null);
}
