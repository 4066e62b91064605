//! jsonrpsee's own HTTP and WebSocket clients against the bridge's HTTP port, and the
//! plain HTTP routes beside it.

mod common;

use jsonrpsee::core::client::ClientT;
use jsonrpsee::http_client::HttpClientBuilder;
use jsonrpsee::rpc_params;
use jsonrpsee::ws_client::WsClientBuilder;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn exercise<C: ClientT>(client: &C, slot: &str) {
    let contract = common::contract();
    let v: Value = client
        .request("server.version", rpc_params!["jsonrpsee-test", "1.4"])
        .await
        .expect("server.version");
    contract.check_result("server.version", &v);
    let v: Value = client
        .request("server.ping", rpc_params![])
        .await
        .expect("ping");
    contract.check_result("server.ping", &v);
    for m in [
        "server.banner",
        "server.donation_address",
        "server.peers.subscribe",
        "server.features",
    ] {
        let v: Value = client.request(m, rpc_params![]).await.expect(m);
        contract.check_result(m, &v);
    }

    let key = common::keyhash(slot);
    let msg = common::b64(slot.as_bytes());
    let v: Value = client
        .request("cosigner.put", rpc_params![key.clone(), msg.clone()])
        .await
        .expect("put");
    contract.check_result("cosigner.put", &v);
    let v: Value = client
        .request("cosigner.get", rpc_params![key.clone()])
        .await
        .expect("get");
    contract.check_result("cosigner.get", &v);
    assert_eq!(v, json!(msg));
    let v: Value = client
        .request("cosigner.delete", rpc_params![key.clone()])
        .await
        .expect("delete");
    contract.check_result("cosigner.delete", &v);
    assert_eq!(v, json!(true));
    let v: Value = client
        .request("cosigner.get", rpc_params![key])
        .await
        .expect("get");
    assert_eq!(v, Value::Null);

    // Errors arrive as JSON-RPC errors with the documented codes.
    let err = client
        .request::<Value, _>("cosigner.get", rpc_params!["not-a-keyhash"])
        .await
        .expect_err("bad keyhash");
    match err {
        jsonrpsee::core::client::Error::Call(e) => {
            assert_eq!(e.code(), -32602);
            assert!(e.message().contains("keyhash"), "{}", e.message());
        }
        other => panic!("expected a call error, got {other}"),
    }
}

#[tokio::test]
async fn http_client() {
    let h = common::start_bridge(|_| {}).await;
    let client = HttpClientBuilder::default()
        .build(format!("http://{}", h.http()))
        .expect("http client");
    exercise(&client, "http").await;
}

#[tokio::test]
async fn websocket_client() {
    let h = common::start_bridge(|_| {}).await;
    let client = WsClientBuilder::default()
        .build(format!("ws://{}", h.http()))
        .await
        .expect("ws client");
    exercise(&client, "ws").await;
}

#[tokio::test]
async fn both_transports_share_one_mailbox() {
    let h = common::start_bridge(|_| {}).await;
    let http = HttpClientBuilder::default()
        .build(format!("http://{}", h.http()))
        .expect("http client");
    let key = common::keyhash("shared");
    let msg = common::b64(b"from http");
    let _: Value = http
        .request("cosigner.put", rpc_params![key.clone(), msg.clone()])
        .await
        .expect("put over http");
    let mut tcp = common::LineClient::connect(h.tcp()).await;
    assert_eq!(tcp.ok("cosigner.get", json!([key])).await, json!(msg));
}

#[tokio::test]
async fn an_oversize_message_over_http_is_refused_and_not_stored() {
    // Default limit: 1,000,000 bytes decoded; the HTTP body limit leaves room for that in base64.
    let h = common::start_bridge(|_| {}).await;
    let http = HttpClientBuilder::default()
        .max_request_size(4_000_000)
        .build(format!("http://{}", h.http()))
        .expect("http client");
    let key = common::keyhash("big");
    let at_limit = common::b64(&vec![7u8; 1_000_000]);
    let _: Value = http
        .request("cosigner.put", rpc_params![key.clone(), at_limit.clone()])
        .await
        .expect("a message of exactly the limit is accepted");
    let over = common::b64(&vec![8u8; 1_000_001]);
    let err = http
        .request::<Value, _>("cosigner.put", rpc_params![key.clone(), over])
        .await
        .expect_err("over the limit");
    match err {
        jsonrpsee::core::client::Error::Call(e) => {
            assert_eq!(e.code(), -32602);
            assert!(e.message().contains("1000000"), "{}", e.message());
        }
        other => panic!("expected a call error, got {other}"),
    }
    let v: Value = http
        .request("cosigner.get", rpc_params![key])
        .await
        .expect("get");
    assert_eq!(v, json!(at_limit), "the refused put changed nothing");
}

async fn http_get(addr: std::net::SocketAddr, method: &str, path: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("read");
    out
}

#[tokio::test]
async fn health_answers_get_and_head() {
    let h = common::start_bridge(|_| {}).await;
    let resp = http_get(h.http(), "GET", "/health").await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let body = resp.split("\r\n\r\n").nth(1).expect("body");
    let v: Value = serde_json::from_str(body).expect("health is JSON");
    assert_eq!(v["status"], "ok");
    let head = http_get(h.http(), "HEAD", "/health").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.ends_with("\r\n\r\n"), "HEAD has no body: {head:?}");
}
