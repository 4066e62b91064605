//! Each wallet its own satellite key: two customers' wallets, made by Debian's Electrum with
//! keys the bridge issued (one by JSON-RPC, one by the `/key` page), share no public key in
//! their first 200 receive and change scripts, and nothing one customer can fetch from the
//! bridge names the other's key or the issuer key both derive from. Registration refuses a
//! key the bridge did not issue, one that serves another wallet, and a reused one.

mod common;

use common::stores::TestStore;

use std::collections::HashSet;

use bitcoin::hashes::Hash as _;
use serde_json::{json, Value};

use common::flow::{electrum, http_raw, sky, Flow};
use satcosign_cosigner::keys::{parse_any_xpub, slip132, CosignerKey};

/// The key shown on the `/key` page after its button is pressed.
fn key_on_page(page: &str) -> String {
    let start = page.find("id=\"key\"").expect("the page shows a key");
    let text = &page[start..];
    let open = text.find('>').expect("textarea") + 1;
    let close = text.find("</textarea>").expect("textarea end");
    text[open..close].trim().to_owned()
}

/// Every spelling of an xpub a page or answer could carry: both base58 forms, its public
/// key and its chain code in hex.
fn spellings(xpub: &bitcoin::bip32::Xpub) -> Vec<String> {
    vec![
        xpub.to_string(),
        slip132(xpub),
        hex::encode(xpub.public_key.serialize()),
        hex::encode(xpub.chain_code.to_bytes()),
        hex::encode(
            bitcoin::hashes::sha256d::Hash::hash(&xpub.public_key.serialize()).to_byte_array(),
        ),
    ]
}

async fn two_customers_share_no_key_and_nothing_one_fetches_names_the_others(store: TestStore) {
    let flow = Flow::start_on(&store, sky(0.0), |_| {}).await;
    let http = flow.http_addr();

    // A asks by JSON-RPC; B presses the page's button (the GET alone issues nothing).
    let issued_a = flow.ok("satellite.new_key", vec![]).await;
    let a_vpub = issued_a["electrum_xpub"].as_str().expect("key").to_owned();
    let (status, form) = http_raw(
        http,
        "GET /key HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200);
    assert!(
        form.contains("method=\"post\"") && !form.contains("pub"),
        "{form}"
    );
    let (status, page_b) = http_raw(
        http,
        "POST /key HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200, "{page_b}");
    let b_vpub = key_on_page(&page_b);
    assert!(page_b.contains("<svg"), "the page has the QR code");
    assert_ne!(a_vpub, b_vpub, "two requests, two keys");

    // Each makes a 2-of-3 in Electrum with its own two keys and the satellite key it got.
    let made = |tag: &str, vpub: &str| -> Value {
        serde_json::from_str(&electrum(&["scripts", tag, vpub, "200"])).expect("json")
    };
    let a = made("alice", &a_vpub);
    let b = made("bob", &b_vpub);
    let keys = |w: &Value| -> HashSet<String> {
        w["pubkeys"]
            .as_array()
            .expect("pubkeys")
            .iter()
            .map(|k| k.as_str().expect("hex").to_owned())
            .collect()
    };
    let (a_keys, b_keys) = (keys(&a), keys(&b));
    assert_eq!(
        a_keys.len(),
        2 * 200 * 3,
        "three keys per script, all distinct"
    );
    assert_eq!(b_keys.len(), 2 * 200 * 3);
    assert!(
        a_keys.is_disjoint(&b_keys),
        "no public key appears in both wallets' first 200 receive and change scripts"
    );

    let (a_wid, a_reg) = flow
        .register_as(a["descriptor"].as_str().expect("d"), "a@example.org")
        .await;
    let (b_wid, _) = flow
        .register_as(b["descriptor"].as_str().expect("d"), "b@example.org")
        .await;
    assert_ne!(a_wid, b_wid);

    // Everything A can fetch from the bridge.
    let mut seen = Vec::new();
    for (method, params) in [
        ("satellite.info", vec![]),
        ("satellite.new_key", vec![]),
        ("server.features", vec![]),
        ("server.banner", vec![]),
        ("server.version", vec![json!("a"), json!("1.4")]),
        ("wallet.status", vec![json!(a_wid)]),
        ("request.status", vec![json!(a_reg)]),
    ] {
        seen.push(flow.ok(method, params).await.to_string());
    }
    for request in [
        "GET /key HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        "POST /key HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    ] {
        seen.push(http_raw(http, request).await.1);
    }
    seen.extend(flow.inbox.to("a@example.org"));
    assert!(
        seen.len() > 12,
        "A's registration emails are among what A sees"
    );
    // A's own wallet shows A's own key.
    let status_a: Value = serde_json::from_str(&seen[5]).expect("json");
    assert_eq!(status_a["satellite_key"]["electrum_xpub"], json!(a_vpub));

    let b_xpub = parse_any_xpub(&b_vpub).expect("B's key");
    let issuer = CosignerKey::from_seed(&flow.system.cosigner_key_seed, bitcoin::NetworkKind::Test)
        .expect("issuer");
    let mut forbidden = spellings(&b_xpub);
    forbidden.extend(spellings(issuer.account_xpub()));
    forbidden.extend(b_keys.iter().cloned());
    for text in &seen {
        for secret in &forbidden {
            assert!(
                !text.contains(secret.as_str()),
                "{secret} (B's satellite key, the issuer key or B's scripts) in what A sees: {text}"
            );
        }
    }
    flow.system.stop().await;
}

async fn registration_refuses_keys_not_issued_issued_for_another_wallet_or_reused(
    store: TestStore,
) {
    use satcosign_cosigner::testkit::key;
    let flow = Flow::start_on(&store, sky(0.0), |_| {}).await;
    let wallet = |tag: &str, satellite: &str| {
        format!(
            "wsh(sortedmulti(2,{}/<0;1>/*,{}/<0;1>/*,{satellite}/<0;1>/*))",
            key(&format!("{tag}-hot")).descriptor_key(),
            key(&format!("{tag}-backup")).descriptor_key(),
        )
    };
    let refused = |descriptor: String, email: &'static str| {
        let flow = &flow;
        async move {
            let (code, message, _) = flow
                .err(
                    "wallet.register",
                    vec![json!(descriptor), json!(email), json!("x")],
                )
                .await;
            assert_eq!(
                code,
                satcosign_bridge::rpc_error::INVALID_PARAMS,
                "{message}"
            );
            message
        }
    };
    let issued = |v: Value| v["descriptor_key"].as_str().expect("key").to_owned();

    // A key this bridge never issued: the old shared account key, or any other.
    let issuer = CosignerKey::from_seed(&flow.system.cosigner_key_seed, bitcoin::NetworkKind::Test)
        .expect("issuer");
    let m = refused(wallet("s", &issuer.descriptor_key()), "s@example.org").await;
    assert!(m.contains("reused_key") && m.contains("issuer key"), "{m}");
    let m = refused(
        wallet("s", &key("stranger").descriptor_key()),
        "s@example.org",
    )
    .await;
    assert!(m.contains("not_issued"), "{m}");
    // The public key of an issued key with another chain code is not that key.
    let real: satcosign_cosigner::keys::AccountKey =
        issued(flow.ok("satellite.new_key", vec![]).await)
            .parse()
            .expect("key");
    let mut twisted = real.xpub;
    twisted.chain_code = bitcoin::bip32::ChainCode::from([7u8; 32]);
    let m = refused(
        wallet("s", &format!("[{}]{twisted}", twisted.fingerprint())),
        "s@example.org",
    )
    .await;
    assert!(m.contains("not_issued"), "{m}");

    // A registers with its key; B cannot use that key, even before A confirmed.
    let a_key = real.descriptor_key();
    let a = flow
        .ok(
            "wallet.register",
            vec![
                json!(wallet("a", &a_key)),
                json!("a@example.org"),
                json!("A"),
            ],
        )
        .await;
    let m = refused(wallet("b", &a_key), "b@example.org").await;
    assert!(
        m.contains("issued_for_another_wallet") && m.contains(a["wallet_id"].as_str().expect("id")),
        "{m}"
    );

    // Two issued keys in one wallet: the satellite would hold two of its keys.
    let k1 = issued(flow.ok("satellite.new_key", vec![]).await);
    let k2 = issued(flow.ok("satellite.new_key", vec![]).await);
    let two = format!(
        "wsh(sortedmulti(2,{}/<0;1>/*,{k1}/<0;1>/*,{k2}/<0;1>/*))",
        key("c-hot").descriptor_key()
    );
    let m = refused(two, "c@example.org").await;
    assert!(m.contains("reused_key"), "{m}");

    // Nothing was registered by the refusals, and a fresh key still registers.
    assert_eq!(
        flow.inbox.to("s@example.org").len() + flow.inbox.to("b@example.org").len(),
        0,
        "a refused registration sends no email"
    );
    flow.ok(
        "wallet.register",
        vec![json!(wallet("c", &k1)), json!("c@example.org"), json!("C")],
    )
    .await;
    flow.system.stop().await;
}

async fn keys_are_issued_over_electrum_tcp_within_a_per_client_limit(store: TestStore) {
    let flow = Flow::start_on(&store, sky(0.0), |c| {
        c.gate.max_keys_per_client_per_hour = 3;
        c.gate.max_keys_per_hour = 5;
    })
    .await;
    let tcp = flow.system.bridge.electrum_tcp.expect("tcp");
    let client = electrum_client::Client::new(&format!("tcp://{tcp}")).expect("client");
    use electrum_client::ElectrumApi as _;
    let mut keys = HashSet::new();
    for _ in 0..3 {
        let v = client.raw_call("satellite.new_key", vec![]).expect("a key");
        assert!(keys.insert(v["electrum_xpub"].as_str().expect("key").to_owned()));
    }
    let err = client
        .raw_call("satellite.new_key", vec![])
        .expect_err("a fourth key in the hour is refused");
    assert!(
        err.to_string().contains("satellite keys for this client"),
        "{err}"
    );
    // The same address over HTTP is the same client.
    let (code, message, _) = flow.err("satellite.new_key", vec![]).await;
    assert_eq!(code, satcosign_bridge::rpc_error::RATE_LIMITED, "{message}");
    assert!(message.contains("for this client"), "{message}");
    // Other addresses get theirs, until the bridge's total for the hour (5) is reached.
    let from = |host: u8| async move {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind(std::net::SocketAddr::from(([127, 0, 0, host], 0)))
            .expect("bind");
        let stream = socket.connect(tcp).await.expect("connect");
        let (r, mut w) = stream.into_split();
        use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};
        w.write_all(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"satellite.new_key\"}\n")
            .await
            .expect("write");
        let mut line = String::new();
        tokio::io::BufReader::new(r)
            .read_line(&mut line)
            .await
            .expect("read");
        serde_json::from_str::<serde_json::Value>(&line).expect("json")
    };
    assert!(from(2).await["error"].is_null());
    assert!(from(3).await["error"].is_null());
    let refused = from(4).await;
    assert_eq!(
        refused["error"]["code"],
        satcosign_bridge::rpc_error::RATE_LIMITED,
        "{refused}"
    );
    assert!(
        refused["error"]["message"]
            .as_str()
            .expect("message")
            .contains("issued on this bridge"),
        "{refused}"
    );
    flow.system.stop().await;
}

crate::on_each_store!(
    two_customers_share_no_key_and_nothing_one_fetches_names_the_others,
    registration_refuses_keys_not_issued_issued_for_another_wallet_or_reused,
    keys_are_issued_over_electrum_tcp_within_a_per_client_limit,
);
