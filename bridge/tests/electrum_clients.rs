//! Real Electrum-protocol clients against the bridge: the `electrum-client` crate over TCP
//! and TLS, and raw lines for Electrum-style pushes.

mod common;

use std::time::Duration;

use electrum_client::raw_client::RawClient;
use electrum_client::{ElectrumApi, Param};
use serde_json::{json, Value};

fn check(method: &str, v: &Value) {
    common::contract().check_result(method, v);
}

/// The calls a user of the mailbox makes, through electrum-client's raw-call API.
fn mailbox_round_trip<C: ElectrumApi>(client: &C, slot: &str) {
    let v = client
        .raw_call(
            "server.version",
            [
                Param::String("electrum-client-test".into()),
                Param::StringVec(vec!["1.4".into(), "1.6".into()]),
            ],
        )
        .expect("server.version");
    check("server.version", &v);
    assert_eq!(v[1], "1.4", "negotiated protocol");

    let v = client.raw_call("server.ping", []).expect("server.ping");
    check("server.ping", &v);
    client.ping().expect("electrum-client's own ping");

    let v = client
        .raw_call("server.features", [])
        .expect("server.features");
    check("server.features", &v);

    let key = common::keyhash(slot);
    let message = common::b64(b"BIE1 ciphertext stand-in");
    let v = client
        .raw_call("cosigner.get", [Param::String(key.clone())])
        .expect("get empty");
    check("cosigner.get", &v);
    assert_eq!(v, Value::Null, "a fresh slot is empty");

    let v = client
        .raw_call(
            "cosigner.put",
            [Param::String(key.clone()), Param::String(message.clone())],
        )
        .expect("put");
    check("cosigner.put", &v);

    let v = client
        .raw_call("cosigner.get", [Param::String(key.clone())])
        .expect("get");
    check("cosigner.get", &v);
    assert_eq!(v, json!(message), "get returns what was put");

    let second = common::b64(b"second message overwrites the first");
    client
        .raw_call(
            "cosigner.put",
            [Param::String(key.clone()), Param::String(second.clone())],
        )
        .expect("put again");
    let v = client
        .raw_call("cosigner.get", [Param::String(key.clone())])
        .expect("get");
    assert_eq!(v, json!(second), "put overwrites the slot");

    let v = client
        .raw_call("cosigner.delete", [Param::String(key.clone())])
        .expect("delete");
    check("cosigner.delete", &v);
    assert_eq!(v, json!(true));
    let v = client
        .raw_call("cosigner.get", [Param::String(key.clone())])
        .expect("get after delete");
    assert_eq!(v, Value::Null, "delete empties the slot");
    let v = client
        .raw_call("cosigner.delete", [Param::String(key)])
        .expect("delete again");
    assert_eq!(v, json!(false), "nothing left to delete");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn electrum_client_over_tcp() {
    let h = common::start_bridge(|_| {}).await;
    let addr = h.tcp();
    tokio::task::spawn_blocking(move || {
        let client = RawClient::new(addr, Some(Duration::from_secs(10)), None)
            .expect("electrum-client connects (and negotiates server.version)");
        mailbox_round_trip(&client, "tcp");
    })
    .await
    .expect("client thread");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn electrum_client_over_tls() {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("cert");
    let dir = tempfile::tempdir().expect("tempdir");
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, cert.cert.pem()).expect("write cert");
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).expect("write key");
    let h = common::start_bridge(|c| {
        c.electrum.tls = "127.0.0.1:0".into();
        c.electrum.tls_cert = Some(cert_path.clone());
        c.electrum.tls_key = Some(key_path.clone());
    })
    .await;
    let port = h.bridge.electrum_tls.expect("tls listener").port();
    tokio::task::spawn_blocking(move || {
        // Electrum users commonly pin self-signed certificates; this client skips validation.
        let client = RawClient::new_ssl(
            format!("localhost:{port}").as_str(),
            false,
            Some(Duration::from_secs(10)),
            None,
        )
        .expect("electrum-client connects over TLS");
        mailbox_round_trip(&client, "tls");

        // Plain JSON-RPC on the TLS port is not silently accepted.
        let plain = RawClient::new(("127.0.0.1", port), Some(Duration::from_secs(3)), None);
        assert!(plain.is_err(), "plaintext on the TLS port must fail");
    })
    .await
    .expect("client thread");
}

#[tokio::test]
async fn tls_listener_refuses_to_start_with_a_missing_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = common::test_config(&dir);
    config.electrum.tls = "127.0.0.1:0".into();
    config.electrum.tls_cert = Some(dir.path().join("missing.pem"));
    config.electrum.tls_key = Some(dir.path().join("missing-key.pem"));
    let err = satcosign_bridge::start(&config)
        .await
        .err()
        .expect("start must fail");
    assert!(err.to_string().contains("electrum.tls_cert"), "{err}");
}

#[tokio::test]
async fn any_method_can_push_electrum_style_notifications() {
    use jsonrpsee::RpcModule;
    use satcosign_bridge::dispatch::Dispatcher;
    use satcosign_bridge::electrum_tcp::{serve, Limits};
    use satcosign_bridge::push::Pusher;

    // A method that answers, then pushes twice on the caller's connection, as an
    // Electrum subscription does.
    let mut module = RpcModule::new(());
    module
        .register_method("test.subscribe", |_, _, ext| {
            let pusher = ext
                .get::<Pusher>()
                .expect("Electrum TCP provides a Pusher")
                .clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                assert!(pusher.push("test.subscribe", vec![json!("status-1")]));
                assert!(pusher.push("test.subscribe", vec![json!("status-2")]));
            });
            "initial-status"
        })
        .expect("register");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let limits = Limits {
        max_line_bytes: 10_000,
        idle_timeout: Duration::from_secs(30),
        max_unsent_bytes: 1 << 20,
        max_subscriptions: 8,
    };
    let server = tokio::spawn(serve(
        listener,
        None,
        Dispatcher::new(module.into(), 10, 1 << 20),
        limits,
        satcosign_bridge::admission::Admission::new(
            4,
            4,
            ("electrum_connections", "electrum_connections_per_peer"),
        ),
        satcosign_bridge::read_rate::ReadRates::new(1 << 20, 1 << 22),
    ));
    let mut c = common::LineClient::connect(addr).await;
    // A raw line: this test-only method is not part of the documented contract.
    c.send_line(r#"{"jsonrpc":"2.0","id":9,"method":"test.subscribe","params":[]}"#)
        .await;
    let resp = c.recv().await;
    assert_eq!(resp["id"], 9);
    assert_eq!(resp["result"], "initial-status");
    for expected in ["status-1", "status-2"] {
        let push = c.recv().await;
        assert_eq!(push["method"], "test.subscribe", "{push}");
        assert_eq!(push["params"], json!([expected]), "{push}");
        assert!(push.get("id").is_none(), "a push carries no id: {push}");
    }
    server.abort();
}
