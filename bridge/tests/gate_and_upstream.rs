//! The email gate's rules over real sockets, and the upstream Electrum server at the edge.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use bitcoin::psbt::Psbt;
use bitcoin::Transaction;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use common::flow::{http_raw, sky, test_wallet, Flow};
use satcosign_bridge::rpc_error::{BAD_CODE, WRONG_STATE};

fn b64(psbt: &Psbt) -> String {
    base64::engine::general_purpose::STANDARD.encode(psbt.serialize())
}

async fn submit(flow: &Flow, wid: &str, psbt: &Psbt) -> String {
    flow.ok("request.submit", vec![json!(wid), json!(b64(psbt))])
        .await["request_id"]
        .as_str()
        .expect("id")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codes_are_single_use_bound_to_their_request_and_content_and_get_changes_nothing() {
    let flow = Flow::start(sky(0.0), |_| {}).await;
    let w = test_wallet(&flow);
    let wid = flow.register(&w.descriptor).await;
    let p1 = w.typical_signed_psbt(1, 21);
    let id1 = submit(&flow, &wid, &p1).await;
    let code1 = flow.inbox.code(&id1).await;

    // GET and HEAD on the emailed link, and a GET with a wrong code, change nothing.
    let addr = flow.http_addr();
    for method in ["GET", "HEAD"] {
        let (status, _) = http_raw(
            addr,
            &format!("{method} /confirm/{id1}?t={code1} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert_eq!(status, 200, "{method}");
    }
    let (status, page) = http_raw(
        addr,
        &format!("GET /confirm/{id1}?t=AAAA-BBBB HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert_eq!(status, 404);
    assert!(page.contains("wrong code"), "{page}");
    let s = flow.status(&id1).await;
    assert_eq!(s["state"], "awaiting_email");
    assert_eq!(s["failed_attempts"], 0, "a GET never counts as an attempt");

    // A code of another request confirms nothing here.
    let p2 = w.typical_signed_psbt(1, 22);
    let id2 = submit(&flow, &wid, &p2).await;
    let code2 = flow.inbox.code(&id2).await;
    let (code, _, data) = flow
        .err("request.confirm", vec![json!(id1), json!(code2)])
        .await;
    assert_eq!(
        (code, data["reason"].clone()),
        (BAD_CODE, json!("wrong_code"))
    );
    assert_eq!(data["attempts_left"], 4);

    // The same transaction submitted again with other PSBT content: the old code approved
    // the old content and is refused; the new email's code works, once.
    let mut p1b = p1.clone();
    p1b.proprietary.insert(
        bitcoin::psbt::raw::ProprietaryKey {
            prefix: b"test".to_vec(),
            subtype: 1,
            key: vec![],
        },
        vec![1, 2, 3],
    );
    let again = submit(&flow, &wid, &p1b).await;
    assert_eq!(again, id1, "same transaction, same request");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let code1b = loop {
        let c = flow.inbox.code(&id1).await;
        if c != code1 {
            break c;
        }
        assert!(std::time::Instant::now() < deadline, "no second email");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (code, _, data) = flow
        .err("request.confirm", vec![json!(id1), json!(code1)])
        .await;
    assert_eq!(
        (code, data["reason"].clone()),
        (BAD_CODE, json!("content_changed"))
    );
    let ok = flow
        .ok("request.confirm", vec![json!(id1), json!(code1b)])
        .await;
    assert_eq!(ok["state"], "confirmed");
    let (code, _, data) = flow
        .err("request.confirm", vec![json!(id1), json!(code1b)])
        .await;
    assert_eq!(code, WRONG_STATE, "a used code is refused: {data}");
    // A POST of the used code on the page is refused too.
    let body = format!("t={code1b}&action=confirm");
    let (status, _) = http_raw(
        addr,
        &format!(
            "POST /confirm/{id1} HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    )
    .await;
    assert_eq!(status, 409);

    // Too many wrong codes void the request, and the right one no longer works.
    for left in (1..=4).rev() {
        let (_, _, data) = flow
            .err(
                "request.confirm",
                vec![json!(id2), json!("AAAA-AAAA-AAAA-AAAA-AAAA-AAAA-AAAA-AAAA")],
            )
            .await;
        assert_eq!(data["attempts_left"], left);
    }
    let (code, _, data) = flow
        .err("request.confirm", vec![json!(id2), json!("nonsense")])
        .await;
    assert_eq!((code, data["reason"].clone()), (BAD_CODE, json!("voided")));
    let (code, _, _) = flow
        .err("request.confirm", vec![json!(id2), json!(code2)])
        .await;
    assert_eq!(code, WRONG_STATE);
    let s = flow.wait_state(&id2, "delivered", 30).await;
    assert_eq!(s["final_state"], "cancelled");
    assert!(s["note"]
        .as_str()
        .expect("note")
        .contains("too many wrong codes"));

    // The confirmed one is signed.
    let s = flow.wait_state(&id1, "delivered", 120).await;
    assert_eq!(s["final_state"], "signed", "{s}");
    flow.system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_code_is_refused_and_the_request_expires() {
    let flow = Flow::start(sky(0.0), |c| c.gate.token_ttl_secs = 3).await;
    let w = test_wallet(&flow);
    let wid = flow.register(&w.descriptor).await;
    let id = submit(&flow, &wid, &w.typical_signed_psbt(1, 31)).await;
    let code = flow.inbox.code(&id).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (c, _, data) = flow
        .err("request.confirm", vec![json!(id), json!(code)])
        .await;
    assert_eq!((c, data["reason"].clone()), (BAD_CODE, json!("expired")));
    let s = flow.wait_state(&id, "delivered", 60).await;
    assert_eq!(s["final_state"], "expired");
    flow.system.stop().await;
}

/// An Electrum-protocol server at the edge (there is no bitcoind here): it serves the
/// transactions it is given and records every broadcast.
struct FakeElectrum {
    url: String,
    broadcasts: Arc<Mutex<Vec<String>>>,
}

async fn fake_electrum(txs: Vec<Transaction>) -> FakeElectrum {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("tcp://{}", listener.local_addr().expect("addr"));
    let by_id: HashMap<String, String> = txs
        .iter()
        .map(|t| {
            (
                t.compute_txid().to_string(),
                bitcoin::consensus::encode::serialize_hex(t),
            )
        })
        .collect();
    let broadcasts = Arc::new(Mutex::new(Vec::new()));
    let seen = broadcasts.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let by_id = by_id.clone();
            let seen = seen.clone();
            tokio::spawn(async move {
                let (r, mut w) = stream.into_split();
                let mut lines = BufReader::new(r).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let req: Value = serde_json::from_str(&line).expect("json request");
                    let p = &req["params"];
                    let result = match req["method"].as_str().unwrap_or("") {
                        "server.version" => json!(["fake-electrum", "1.4"]),
                        "blockchain.transaction.get" => {
                            match by_id.get(p[0].as_str().unwrap_or("")) {
                                Some(hex) => json!(hex),
                                None => Value::Null,
                            }
                        }
                        "blockchain.transaction.broadcast" => {
                            let hex = p[0].as_str().unwrap_or("").to_owned();
                            let tx: Transaction = bitcoin::consensus::encode::deserialize_hex(&hex)
                                .expect("a transaction");
                            seen.lock().expect("lock").push(hex);
                            json!(tx.compute_txid().to_string())
                        }
                        _ => Value::Null,
                    };
                    let resp = if result.is_null() {
                        json!({"jsonrpc": "2.0", "id": req["id"], "error": {"code": -32600, "message": "unknown"}})
                    } else {
                        json!({"jsonrpc": "2.0", "id": req["id"], "result": result})
                    };
                    if w.write_all(format!("{resp}\n").as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    FakeElectrum { url, broadcasts }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstream_fills_previous_transactions_and_broadcasts_the_final_one_once() {
    // The cosigner's key is made before the system starts (it keeps a key it finds).
    let dir = tempfile::tempdir().expect("tempdir");
    let data_dir = dir.path().join("data");
    std::fs::create_dir_all(data_dir.join("cosigner")).expect("mkdir");
    let seed = satcosign_cosigner::keys::create_key_file(&data_dir.join("cosigner/cosigner.key"))
        .expect("key file");
    let key = satcosign_cosigner::keys::CosignerKey::from_seed(&seed, bitcoin::NetworkKind::Test)
        .expect("key");
    let w = satcosign_cosigner::testkit::TestWallet::with_satellite(key);
    let mut psbt = w.typical_signed_psbt(1, 41);
    // The wallet's funding transaction exists only on the upstream server.
    let funding = psbt.inputs[0]
        .non_witness_utxo
        .take()
        .expect("testkit fills it");
    let upstream = fake_electrum(vec![funding.clone()]).await;
    let url = upstream.url.clone();
    let flow = Flow::start(sky(0.0), move |c| {
        c.data_dir = data_dir;
        c.upstream.url = url;
    })
    .await;
    assert_eq!(flow.system.cosigner_key_seed, seed);
    let wid = flow.register(&w.descriptor).await;
    assert!(psbt.inputs[0].non_witness_utxo.is_none());
    let id = submit(&flow, &wid, &psbt).await;
    let code = flow.inbox.code(&id).await;
    flow.ok("request.confirm", vec![json!(id), json!(code)])
        .await;
    let done = flow.wait_state(&id, "delivered", 120).await;
    assert_eq!(done["final_state"], "signed", "{done}");
    let txid = psbt.unsigned_tx.compute_txid().to_string();
    assert_eq!(done["outcome"]["signed"]["broadcast"]["txid"], json!(txid));
    // Give any second broadcast a chance to happen before counting.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let sent = upstream.broadcasts.lock().expect("lock").clone();
    assert_eq!(sent.len(), 1, "broadcast exactly once");
    let tx: Transaction = bitcoin::consensus::encode::deserialize_hex(&sent[0]).expect("tx");
    assert_eq!(tx.compute_txid().to_string(), txid);
    let out = &funding.output[tx.input[0].previous_output.vout as usize];
    out.script_pubkey
        .verify(0, out.value, &bitcoin::consensus::serialize(&tx))
        .expect("Bitcoin Core's interpreter accepts the broadcast transaction");
    flow.system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn email_changes_are_confirmed_at_the_old_address_and_policy_loosening_waits_for_email() {
    let flow = Flow::start(sky(0.0), |_| {}).await;
    let w = test_wallet(&flow);
    let wid = flow.register(&w.descriptor).await;

    let r = flow
        .ok(
            "wallet.update_email",
            vec![json!(wid), json!("carol@example.org")],
        )
        .await;
    let id = r["request_id"].as_str().expect("id").to_owned();
    let code = flow.inbox.code(&id).await;
    assert_eq!(
        flow.inbox.recipients_of(&format!("/confirm/{id}")),
        vec!["alice@example.org"]
    );
    flow.ok("request.confirm", vec![json!(id), json!(code)])
        .await;
    let done = flow.wait_state(&id, "delivered", 30).await;
    assert_eq!(done["final_state"], "signed", "{done}");
    let told = flow
        .inbox
        .recipients_of("confirmations now go to carol@example.org");
    assert!(
        told.contains(&"alice@example.org".to_owned())
            && told.contains(&"carol@example.org".to_owned()),
        "{told:?}"
    );
    assert_eq!(
        flow.ok("wallet.status", vec![json!(wid)]).await["email"],
        "c***@example.org"
    );

    // Tightening goes to the satellite at once, with no email to confirm.
    let mut policy = flow.ok("wallet.status", vec![json!(wid)]).await["policy"].clone();
    policy["max_per_tx_sat"] = json!(1_000_000);
    let r = flow
        .ok("wallet.set_policy", vec![json!(wid), policy.clone()])
        .await;
    assert_eq!(r["needs_email"], false);
    let id = r["request_id"].as_str().expect("id").to_owned();
    let done = flow.wait_state(&id, "delivered", 60).await;
    assert_eq!(
        done["outcome"]["done"], "the new limits apply now",
        "{done}"
    );
    assert_eq!(
        flow.ok("wallet.status", vec![json!(wid)]).await["policy"]["max_per_tx_sat"],
        1_000_000
    );

    // Loosening waits for the email, and then for the satellite's own delay.
    policy["max_per_tx_sat"] = json!(5_000_000);
    let r = flow.ok("wallet.set_policy", vec![json!(wid), policy]).await;
    assert_eq!(r["needs_email"], true);
    let id = r["request_id"].as_str().expect("id").to_owned();
    assert_eq!(
        flow.wait_state(&id, "awaiting_email", 30).await["kind"],
        "set_policy"
    );
    let code = flow.inbox.code(&id).await;
    flow.ok("request.confirm", vec![json!(id), json!(code)])
        .await;
    let done = flow.wait_state(&id, "delivered", 60).await;
    let detail = done["outcome"]["done"].as_str().expect("done").to_owned();
    assert!(detail.starts_with("the new limits apply from "), "{detail}");
    flow.system.stop().await;
}
