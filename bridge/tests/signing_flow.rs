//! The signing flow end to end: stock Electrum's PSBT in through `cosigner.put`, the email
//! through a real SMTP server, the confirmation, the simulated radio link with loss, the
//! satellite's signature, and the result back in Electrum's mailbox, finalized by Electrum
//! and checked by Bitcoin Core's script interpreter.

mod common;

use common::browser::Browser;

use std::time::Duration;

use base64::Engine as _;
use bitcoin::Transaction;
use electrum_client::ElectrumApi as _;
use serde_json::{json, Value};

use common::flow::{electrum, sky, test_wallet, tx_at, verify_with_core, Flow};
use common::stores::TestStore;

#[test]
fn ecies_interoperates_with_electrums_ecc_both_ways() {
    let secp = bitcoin::secp256k1::Secp256k1::new();
    let key = satcosign_bridge::ecies::random_secret_key();
    let public = hex::encode(key.public_key(&secp).serialize());
    let message = b"psbt\xff and every byte value \x00\x01\xfe";
    // Electrum encrypts, the bridge decrypts.
    let from_electrum = electrum(&["ecies-encrypt", &public, &hex::encode(message)]);
    assert_eq!(
        satcosign_bridge::ecies::decrypt(&key, &from_electrum).expect("bridge decrypts Electrum's"),
        message
    );
    // The bridge encrypts, Electrum decrypts.
    let ours = satcosign_bridge::ecies::encrypt(&key.public_key(&secp), message);
    let plain = electrum(&["ecies-decrypt", &hex::encode(key.secret_bytes()), &ours]);
    assert_eq!(hex::decode(plain).expect("hex"), message);
}

async fn electrums_psbt_is_cosigned_over_a_lossy_link_and_comes_back_to_its_mailbox(
    store: TestStore,
) {
    let flow = Flow::start_on(&store, sky(0.10), |_| {}).await;
    let info = flow.ok("satellite.info", vec![]).await;
    let issued = flow.ok("satellite.new_key", vec![]).await;
    let made: Value = serde_json::from_str(&electrum(&[
        "request",
        issued["electrum_xpub"].as_str().expect("xpub"),
        info["mailbox_pubkey"].as_str().expect("mailbox key"),
    ]))
    .expect("json");
    // Electrum computes the satellite's keyhash from the xpub it was given: the bridge's
    // key id is that keyhash.
    assert_eq!(made["satellite_keyhash"], issued["key_id"]);
    flow.register(made["descriptor"].as_str().expect("descriptor"))
        .await;

    // Stock Electrum's client side speaks the Electrum protocol over TCP: the put is a request.
    let tcp = flow.system.bridge.electrum_tcp.expect("tcp");
    let client = electrum_client::Client::new(&format!("tcp://{tcp}")).expect("electrum client");
    let put = client
        .raw_call(
            "cosigner.put",
            vec![
                electrum_client::Param::String(issued["key_id"].as_str().expect("kh").to_owned()),
                electrum_client::Param::String(made["message"].as_str().expect("msg").to_owned()),
            ],
        )
        .expect("put accepted");
    let id = put
        .as_str()
        .expect("the put returns the request id")
        .to_owned();
    // It never sits in the satellite's slot.
    let slot = client
        .raw_call(
            "cosigner.get",
            vec![electrum_client::Param::String(
                issued["key_id"].as_str().expect("kh").to_owned(),
            )],
        )
        .expect("get");
    assert_eq!(slot, Value::Null);

    let status = flow.wait_state(&id, "awaiting_email", 30).await;
    assert_eq!(status["summary"]["txid"], made["txid"]);
    assert_eq!(
        status["summary"]["destinations"][0]["address"],
        made["destination"]
    );
    assert_eq!(status["summary"]["destinations"][0]["amount_sat"], 400_000);
    assert_eq!(status["summary"]["fee_sat"], 1_000);

    let code = flow.inbox.code(&id).await;
    let confirmed = flow
        .ok("request.confirm", vec![json!(id), json!(code)])
        .await;
    assert_eq!(confirmed["state"], "confirmed");
    let done = flow.wait_state(&id, "delivered", 300).await;
    assert_eq!(done["final_state"], "signed", "{done}");

    // The result waits in the requester's mailbox, encrypted to its xpub key.
    let message = client
        .raw_call(
            "cosigner.get",
            vec![electrum_client::Param::String(
                made["user_keyhash"].as_str().expect("kh").to_owned(),
            )],
        )
        .expect("get");
    let received: Value = serde_json::from_str(&electrum(&[
        "receive",
        message.as_str().expect("a message"),
    ]))
    .expect("json");
    assert_eq!(received["complete"], true, "{received} {done}");
    assert_eq!(received["txid"], made["txid"]);
    let tx: Transaction = tx_at(&received, "tx");
    let funding: Transaction = tx_at(&made, "funding_tx");
    verify_with_core(&tx, &[funding]);
    // The same final transaction is in the request's outcome.
    assert_eq!(done["outcome"]["signed"]["tx"], received["tx"]);

    // No email carried a key, an xpub, a descriptor or the PSBT.
    let secrets = [
        made["descriptor"].as_str().expect("d").to_owned(),
        made["user_xpub"].as_str().expect("x").to_owned(),
        issued["xpub"].as_str().expect("x").to_owned(),
        issued["electrum_xpub"].as_str().expect("x").to_owned(),
        made["psbt"].as_str().expect("p")[..40].to_owned(),
    ];
    let mails = flow.inbox.all();
    assert!(
        mails.len() >= 4,
        "registration and request: a code and an outcome each"
    );
    for mail in &mails {
        let text = satcosign_bridge::demo::decode_quoted_printable(mail);
        for s in &secrets {
            assert!(!text.contains(s.as_str()), "an email contains {s}");
        }
        for marker in ["tpub", "Vpub", "wsh(", "cHNidP", "70736274ff"] {
            assert!(!text.contains(marker), "an email contains {marker}");
        }
    }
    // No code is stored in clear: neither the text nor its bytes are in the database.
    let db = store.stored_bytes(&flow.config).await;
    let plain = code.replace('-', "");
    for needle in [code.as_bytes(), plain.as_bytes()] {
        assert!(
            !db.windows(needle.len()).any(|w| w == needle),
            "the database holds a code in clear"
        );
    }
    flow.system.stop().await;
}

async fn a_request_submitted_by_script_refused_by_policy_never_reaches_the_link(store: TestStore) {
    let flow = Flow::start_on(&store, sky(0.0), |c| {
        c.default_policy.max_per_tx_sat = 10_000
    })
    .await;
    let w = test_wallet(&flow).await;
    let wid = flow.register(&w.descriptor).await;
    let psbt = w.typical_signed_psbt(1, 3);
    let b64 = base64::engine::general_purpose::STANDARD.encode(psbt.serialize());
    let (code, msg, data) = flow
        .err("request.submit", vec![json!(wid), json!(b64)])
        .await;
    assert_eq!(code, satcosign_bridge::rpc_error::REFUSED);
    assert_eq!(data["reason"], "over_tx_limit", "{msg}");
    assert_eq!(data["violations"][0]["rule"], "over_tx_limit", "{data}");
    assert_eq!(data["violations"][0]["limit"], 10_000, "{data}");
    assert!(
        data["violations"][0]["would_be"].as_u64() > Some(10_000),
        "{data}"
    );
    // The wallet reads it back as its last violation.
    let last = flow.ok("wallet.last_violation", vec![json!(wid)]).await;
    assert_eq!(last["by"], "bridge", "{last}");
    assert_eq!(last["code"], "over_tx_limit", "{last}");
    assert_eq!(last["violations"], data["violations"], "{last}");
    // The dry run says the same.
    let dry = flow.ok("request.check", vec![json!(wid), json!(b64)]).await;
    assert_eq!(dry["would_sign"], false, "{dry}");
    assert_eq!(dry["refusal"]["code"], data["reason"], "{dry}");
    assert_eq!(dry["violations"], data["violations"], "{dry}");
    // Several rules broken at once: every one is listed, with its figures.
    let strict = satcosign_cosigner::policy::Policy {
        max_per_tx_sat: 10_000,
        max_per_period_sat: 10_000,
        max_fee_sat: 1,
        ..flow.config.default_policy.clone()
    };
    let (wid2, w2) = register_with_policy(&flow, &strict).await;
    let psbt2 = w2.typical_signed_psbt(1, 4);
    let b64_2 = base64::engine::general_purpose::STANDARD.encode(psbt2.serialize());
    let (code, msg, data) = flow
        .err("request.submit", vec![json!(wid2), json!(b64_2)])
        .await;
    assert_eq!(code, satcosign_bridge::rpc_error::REFUSED);
    assert_eq!(data["reason"], "policy_violations", "{msg}");
    let rules = common::flow::rules_of(&data["violations"]);
    assert_eq!(
        rules,
        ["fee_too_high", "over_tx_limit", "over_period_limit"],
        "{data}"
    );
    for rule in rules {
        assert!(msg.contains(rule), "{rule} in {msg}");
    }
    let dry = flow
        .ok("request.check", vec![json!(wid2), json!(b64_2)])
        .await;
    assert_eq!(dry["refusal"]["code"], "policy_violations", "{dry}");
    assert_eq!(dry["violations"], data["violations"], "{dry}");
    // Within every limit: the dry run says it would sign, and shows what the email would.
    let (wid3, w3) =
        register_with_policy(&flow, &satcosign_cosigner::testkit::generous_policy()).await;
    let psbt3 = w3.typical_signed_psbt(1, 5);
    let b64_3 = base64::engine::general_purpose::STANDARD.encode(psbt3.serialize());
    let dry = flow
        .ok("request.check", vec![json!(wid3), json!(b64_3)])
        .await;
    assert_eq!(dry["would_sign"], true, "{dry}");
    assert_eq!(dry["violations"], json!([]), "{dry}");
    assert_eq!(
        dry["txid"],
        json!(psbt3.unsigned_tx.compute_txid().to_string())
    );
    let rows = dry["email"]["rows"].as_array().expect("rows");
    let fee = rows
        .iter()
        .find(|r| r[0] == "Fee")
        .expect("the email shows the fee");
    assert!(
        fee[1]
            .as_str()
            .is_some_and(|f| f.starts_with(&format!("{} sat", dry["summary"]["fee_sat"]))),
        "{dry}"
    );
    assert!(dry["email"]["headline"]
        .as_str()
        .is_some_and(|h| h.starts_with("Send ")));
    // Nothing was emailed of it; submitted for real, its email shows the same.
    let txid = psbt3.unsigned_tx.compute_txid().to_string();
    let mentions = || {
        flow.inbox
            .all()
            .iter()
            .filter(|m| satcosign_bridge::demo::decode_quoted_printable(m).contains(&txid))
            .count()
    };
    assert_eq!(mentions(), 0, "a dry run emails nothing");
    let id = flow.submit(&wid3, &psbt3).await;
    flow.inbox.code(&id).await;
    assert_eq!(mentions(), 1, "the submit's email names the transaction");
    let status = flow.status(&id).await;
    assert_eq!(status["summary"], dry["summary"], "{status}");
    // A PSBT that is not one.
    let (code, msg, data) = flow
        .err("request.submit", vec![json!(wid), json!("cHNidP8BAA==")])
        .await;
    assert_eq!(code, satcosign_bridge::rpc_error::INVALID_PARAMS, "{msg}");
    assert_eq!(data["param"], "psbt");
    flow.system.stop().await;
}

/// The rolling period holds what the satellite signed, which the bridge does not see: the
/// second spend passes the bridge's early check and the satellite refuses it, with its
/// figures, which the wallet reads back as its last violation.
async fn the_satellites_refusal_is_the_wallets_last_violation_with_its_figures(store: TestStore) {
    let flow = Flow::start_on(&store, sky(0.0), |_| {}).await;
    // Each typical spend sends 50,000 sat and 700 sat of fee: 50,700 leave the wallet.
    let policy = satcosign_cosigner::policy::Policy {
        max_per_tx_sat: 60_000,
        max_per_period_sat: 80_000,
        ..satcosign_cosigner::testkit::generous_policy()
    };
    let (wid, w) = register_with_policy(&flow, &policy).await;
    assert_eq!(
        flow.ok("wallet.last_violation", vec![json!(wid)]).await,
        Value::Null,
        "none yet"
    );
    for (salt, signed) in [(1, true), (2, false)] {
        let psbt = w.typical_signed_psbt(1, salt);
        let id = flow.submit(&wid, &psbt).await;
        let code = flow.inbox.code(&id).await;
        flow.ok("request.confirm", vec![json!(id), json!(code)])
            .await;
        let done = flow.wait_state(&id, "delivered", 120).await;
        if signed {
            assert_eq!(done["final_state"], "signed", "{done}");
            continue;
        }
        assert_eq!(done["final_state"], "refused", "{done}");
        assert_eq!(
            done["outcome"]["refused"]["code"], "over_period_limit",
            "{done}"
        );
        let last = flow.ok("wallet.last_violation", vec![json!(wid)]).await;
        assert_eq!(last["by"], "satellite", "{last}");
        assert_eq!(last["request_id"], json!(id), "{last}");
        assert_eq!(last["code"], "over_period_limit", "{last}");
        assert_eq!(
            last["violations"],
            json!([{"rule": "over_period_limit", "limit": 80_000, "used": 50_700,
                    "would_be": 101_400, "output": null, "ready_at": null}]),
            "{last}"
        );
    }
    // An unknown wallet is refused as wallet.status refuses it.
    let (code, _, _) = flow
        .err("wallet.last_violation", vec![json!("00".repeat(16))])
        .await;
    assert_eq!(code, satcosign_bridge::rpc_error::NOT_FOUND);
    flow.system.stop().await;
}

/// A new wallet registered with `policy` and confirmed: its id, and the wallet.
async fn register_with_policy(
    flow: &Flow,
    policy: &satcosign_cosigner::policy::Policy,
) -> (String, satcosign_cosigner::testkit::TestWallet) {
    let w = test_wallet(flow).await;
    (flow.register_with_policy(&w.descriptor, policy).await, w)
}

/// A satellite that answers with a signature that does not verify (one byte of each
/// flipped, the encoding still sound): the ground refuses the answer as `bad_answer`,
/// broadcasts nothing, tells the owner, and counts it in `/metrics`.
async fn a_satellite_answer_whose_signature_does_not_verify_is_refused_as_bad_answer(
    store: TestStore,
) {
    use satcosign_cosigner::protocol::{CompactOutcome, Response};
    let flipped = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = flipped.clone();
    let alter = std::sync::Arc::new(move |answer: Vec<u8>| -> Vec<u8> {
        let Ok(Response::SignCompact(mut r)) = Response::decode(&answer) else {
            return answer;
        };
        if let CompactOutcome::Signed(sigs) = &mut r.outcome {
            for sig in &mut sigs.0 {
                if let Some(b) = sig.get_mut(12) {
                    *b ^= 0x01;
                    seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
            }
        }
        Response::SignCompact(r).encode()
    });
    let flow = Flow::start_misbehaving(&store, sky(0.0), alter).await;
    let w = test_wallet(&flow).await;
    let wid = flow.register(&w.descriptor).await;
    let psbt = w.typical_signed_psbt(1, 3);
    let id = flow.submit(&wid, &psbt).await;
    let code = flow.inbox.code(&id).await;
    flow.ok("request.confirm", vec![json!(id), json!(code)])
        .await;
    let done = flow.wait_state(&id, "delivered", 60).await;
    assert!(
        flipped.load(std::sync::atomic::Ordering::SeqCst) > 0,
        "the satellite signed"
    );
    assert_eq!(done["final_state"], "refused", "{done}");
    assert_eq!(done["outcome"]["refused"]["code"], "bad_answer", "{done}");
    assert!(
        flow.inbox
            .to("alice@example.org")
            .iter()
            .any(|m| m.contains("bad_answer") || m.contains("refused") || m.contains("Refused")),
        "the owner is told"
    );
    let (status, metrics) = common::flow::http_raw(
        flow.http_addr(),
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200);
    let count = metrics
        .lines()
        .find_map(|l| l.strip_prefix("satcosign_bad_answers_total "))
        .expect("counted");
    assert_eq!(count.trim(), "1", "{metrics}");
    flow.system.stop().await;
}

async fn the_emailed_link_opens_a_page_where_clicking_confirm_in_chromium_approves(
    store: TestStore,
) {
    let flow = Flow::start_on(&store, sky(0.0), |_| {}).await;
    let w = test_wallet(&flow).await;
    let wid = flow.register(&w.descriptor).await;
    let id = flow.submit(&wid, &w.typical_signed_psbt(1, 11)).await;
    let code = flow.inbox.code(&id).await;
    let url = format!("http://{}/confirm/{id}?t={code}", flow.http_addr());

    let mut browser = Browser::launch().await;
    browser.open(&url).await;
    let text = browser
        .wait_for("document.getElementById('confirm') && document.body.innerText")
        .await;
    let text = text.as_str().expect("page text");
    assert!(text.contains("Alice's savings"), "{text}");
    assert!(
        text.contains("0.00050000 BTC"),
        "the payment is shown: {text}"
    );
    assert!(text.contains(&id), "{text}");
    // Opening the page (a GET) changed nothing.
    assert_eq!(flow.status(&id).await["state"], "awaiting_email");

    browser
        .eval("document.getElementById('confirm').click()")
        .await;
    let result = browser
        .wait_for(
            "document.getElementById('result') && document.getElementById('result').innerText",
        )
        .await;
    assert_eq!(result, "Confirmed");
    let done = flow.wait_state(&id, "delivered", 120).await;
    assert_eq!(done["final_state"], "signed", "{done}");
    assert!(done["outcome"]["signed"]["tx"].is_string(), "{done}");
    drop(browser);
    flow.system.stop().await;
}

async fn a_websocket_client_watches_a_request_to_its_end_and_tcp_is_pointed_to_subscribe(
    store: TestStore,
) {
    use jsonrpsee::core::client::SubscriptionClientT;
    use jsonrpsee::rpc_params;
    let flow = Flow::start_on(&store, sky(0.0), |_| {}).await;
    let w = test_wallet(&flow).await;
    let wid = flow.register(&w.descriptor).await;
    let id = flow.submit(&wid, &w.typical_signed_psbt(1, 71)).await;

    let ws = jsonrpsee::ws_client::WsClientBuilder::default()
        .build(format!("ws://{}", flow.http_addr()))
        .await
        .expect("websocket");
    let mut sub = ws
        .subscribe::<Value, _>("request.watch", rpc_params![id.clone()], "request.unwatch")
        .await
        .expect("subscribed");
    let code = flow.inbox.code(&id).await;
    flow.ok("request.confirm", vec![json!(id), json!(code)])
        .await;
    let mut states = Vec::new();
    let last = loop {
        let status = tokio::time::timeout(Duration::from_secs(60), sub.next())
            .await
            .expect("a status within a minute")
            .expect("the subscription is open until the end")
            .expect("a status");
        common::contract().check_result("request.status", &status);
        assert_eq!(status["request_id"], json!(id));
        states.push(status["state"].as_str().unwrap_or("").to_owned());
        if status["state"] == "delivered" {
            break status;
        }
    };
    assert_eq!(last["final_state"], "signed", "{last}");
    assert!(
        states.iter().any(|s| s == "confirmed") && states.iter().any(|s| s == "signed"),
        "{states:?}"
    );
    // Nothing more will change, so the bridge ends the subscription.
    let end = tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("ended");
    assert!(end.is_none(), "{end:?}");

    // An unknown request is refused as request.status refuses it.
    let err = ws
        .subscribe::<Value, _>(
            "request.watch",
            rpc_params!["00".repeat(16)],
            "request.unwatch",
        )
        .await
        .expect_err("refused");
    let jsonrpsee::core::client::Error::Call(e) = err else {
        panic!("{err}")
    };
    assert_eq!(e.code(), satcosign_bridge::rpc_error::NOT_FOUND, "{e:?}");

    // Electrum's TCP transport is pointed to request.subscribe.
    let mut tcp = common::LineClient::connect(flow.system.bridge.electrum_tcp.expect("tcp")).await;
    let resp = tcp.call(1, "request.watch", json!([id])).await;
    assert_eq!(common::error_code(&resp), -32601, "{resp}");
    assert!(
        resp["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("request.subscribe"),
        "{resp}"
    );
    flow.system.stop().await;
}

async fn a_system_stopped_in_process_releases_its_data_and_starts_again_where_it_stood(
    store: TestStore,
) {
    let dir = tempfile::tempdir().expect("tempdir");
    let data_dir = dir.path().join("data");
    let at = data_dir.clone();
    let flow = Flow::start_on(&store, sky(0.0), move |c| c.data_dir = at).await;
    let w = test_wallet(&flow).await;
    let wid = flow.register(&w.descriptor).await;
    // A subscriber left connected must not keep the system alive.
    let mut tcp = common::LineClient::connect(flow.system.bridge.electrum_tcp.expect("tcp")).await;
    let id = flow.submit(&wid, &w.typical_signed_psbt(1, 81)).await;
    tcp.ok("request.subscribe", json!([id])).await;
    flow.wait_state(&id, "awaiting_email", 30).await;
    let first_inbox = flow.inbox.clone();
    flow.system.stop().await;

    // The same data directory opens again in this process: nothing holds its databases.
    let at = data_dir.clone();
    let flow = Flow::start_on(&store, sky(0.0), move |c| c.data_dir = at).await;
    assert_eq!(
        flow.ok("wallet.status", vec![json!(wid)]).await["state"],
        "active"
    );
    let s = flow.status(&id).await;
    assert_eq!(s["state"], "awaiting_email", "{s}");
    // The code emailed before the stop still works.
    let code = first_inbox.code(&id).await;
    flow.ok("request.confirm", vec![json!(id), json!(code)])
        .await;
    let done = flow.wait_state(&id, "delivered", 60).await;
    assert_eq!(done["final_state"], "signed", "{done}");
    flow.system.stop().await;
    drop(tcp);
}

crate::on_each_store!(
    electrums_psbt_is_cosigned_over_a_lossy_link_and_comes_back_to_its_mailbox,
    a_request_submitted_by_script_refused_by_policy_never_reaches_the_link,
    the_satellites_refusal_is_the_wallets_last_violation_with_its_figures,
    a_satellite_answer_whose_signature_does_not_verify_is_refused_as_bad_answer,
    the_emailed_link_opens_a_page_where_clicking_confirm_in_chromium_approves,
    a_websocket_client_watches_a_request_to_its_end_and_tcp_is_pointed_to_subscribe,
    a_system_stopped_in_process_releases_its_data_and_starts_again_where_it_stood,
);
