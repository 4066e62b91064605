//! SIGKILL the bridge (`satcosign-bridge dev`, with its cosigner in the same process) at
//! each state of a signing request, restart it, and check the request completes exactly once
//! and the cosigner signed exactly once.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine as _;
use jsonrpsee::core::client::ClientT;
use jsonrpsee::http_client::HttpClientBuilder;
use serde_json::{json, Value};

use common::flow::parse_id;
use common::process::{dev_cosigner, dev_wallet, issue_dev_wallet, mailed_code, BridgeProcess};
use common::stores::TestStore;

/// `satcosign-bridge dev` on `dir`, frozen at `hold_at` if given, with `extra` arguments.
fn start_with(dir: &Path, hold_at: Option<&str>, extra: &[&str]) -> BridgeProcess {
    let env: Vec<(&str, &str)> = hold_at
        .map(|s| ("SATCOSIGN_TEST_HOLD_AT", s))
        .into_iter()
        .collect();
    BridgeProcess::dev(dir, extra, &env)
}

fn start(dir: &Path, hold_at: Option<&str>) -> BridgeProcess {
    start_with(dir, hold_at, &[])
}

/// The Nostr relay's address, as the bridge printed it.
fn relay_of(b: &BridgeProcess) -> String {
    b.printed_after("nostr relay: ")
        .expect("the bridge printed its relay address")
        .to_owned()
}

async fn code(dir: &Path, id: &str) -> String {
    mailed_code(&dir.join("mail"), id).await
}

/// A data directory with the test wallet registered and active.
async fn registered(dir: &Path) -> String {
    registered_with(dir, &[]).await
}

/// As [`registered`], with `extra` arguments for the bridge.
async fn registered_with(dir: &Path, extra: &[&str]) -> String {
    let b = start_with(dir, None, extra);
    let w = issue_dev_wallet(&b, dir).await;
    let r = b
        .call(
            "wallet.register",
            vec![json!(w.descriptor), json!("bob@example.org"), json!("Bob")],
        )
        .await;
    let rid = r["request_id"].as_str().expect("id").to_owned();
    let c = code(dir, &rid).await;
    b.call("request.confirm", vec![json!(rid), json!(c)]).await;
    b.wait_state(&rid, "delivered").await;
    b.terminate();
    r["wallet_id"].as_str().expect("wallet").to_owned()
}

async fn crash_at(state: &'static str, store: &TestStore) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir: PathBuf = tmp.path().join("data");
    // On PostgreSQL, a database of this case's own, named in a config file.
    let config = tmp.path().join("bridge.toml");
    let extra: Vec<&str> = match store {
        TestStore::Redb => Vec::new(),
        TestStore::Postgres(_) => {
            let url = store.fresh_database(&format!("crash_{state}")).await;
            std::fs::write(
                &config,
                format!(
                    "network = \"regtest\"\n[store]\nbackend = \"postgres\"\nurl = \"{url}\"\n"
                ),
            )
            .expect("config");
            vec!["--config", config.to_str().expect("utf-8")]
        }
    };
    let wid = registered_with(&dir, &extra).await;
    assert_eq!(
        dir.join("bridge.redb").exists(),
        matches!(store, TestStore::Redb),
        "the bridge's state is where the store says"
    );
    let w = dev_wallet(&dir);
    let psbt = w.typical_signed_psbt(1, 7);
    let b64 = base64::engine::general_purpose::STANDARD.encode(psbt.serialize());

    let b = start_with(&dir, Some(state), &extra);
    let http = b.http.clone();
    // Calls that hold (the bridge freezes inside them) run in the background.
    let submit = tokio::spawn({
        let (wid, b64, http) = (wid.clone(), b64.clone(), http.clone());
        async move {
            let client = HttpClientBuilder::default().build(&http).expect("client");
            let _: Result<Value, _> = client
                .request("request.submit", vec![json!(wid), json!(b64)])
                .await;
        }
    });
    let id = if state == "received" {
        b.held(state)
    } else {
        // Find the id from the email, then confirm (in the background: it may hold).
        let deadline = Instant::now() + Duration::from_secs(30);
        let id = loop {
            let found = std::fs::read_dir(dir.join("mail"))
                .expect("mail dir")
                .filter_map(Result::ok)
                .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                .map(|t| satcosign_bridge::demo::decode_quoted_printable(&t))
                .filter(|t| t.contains("Send 0.00050000 BTC"))
                .find_map(|t| t.split("/confirm/").nth(1).map(|r| r[..32].to_owned()));
            if let Some(id) = found {
                break id;
            }
            assert!(Instant::now() < deadline, "no signing email");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        if state != "awaiting_email" {
            let c = code(&dir, &id).await;
            let http = http.clone();
            let id2 = id.clone();
            tokio::spawn(async move {
                let client = HttpClientBuilder::default().build(&http).expect("client");
                let _: Result<Value, _> = client
                    .request("request.confirm", vec![json!(id2), json!(c)])
                    .await;
            });
        }
        assert_eq!(b.held(state), id);
        id
    };
    b.kill();
    submit.abort();

    let b = start_with(&dir, None, &extra);
    if matches!(state, "received" | "awaiting_email") {
        let s = b.wait_state(&id, "awaiting_email").await;
        assert_eq!(s["kind"], "sign");
        let c = code(&dir, &id).await;
        b.call("request.confirm", vec![json!(id), json!(c)]).await;
    }
    let done = b.wait_state(&id, "delivered").await;
    assert_eq!(done["final_state"], "signed", "{state}: {done}");
    assert!(
        done["outcome"]["signed"]["tx"].is_string(),
        "{state}: {done}"
    );
    b.terminate();

    // The cosigner debited its ledger once and signed once.
    let cosigner = dev_cosigner(&dir);
    let ledger = cosigner.ledger(&w.wallet.id, 0).expect("ledger");
    assert_eq!(ledger.len(), 1, "{state}: one debit");
    assert_eq!(ledger[0].request_id, parse_id(&id));
    let signed = cosigner
        .audit_log()
        .expect("audit")
        .into_iter()
        .filter(|e| e.action == "sign" && e.outcome == "signed")
        .count();
    assert_eq!(signed, 1, "{state}: signed once");
}

async fn a_kill_at_any_state_resumes_the_request_which_completes_once(store: TestStore) {
    for state in [
        "received",
        "awaiting_email",
        "confirmed",
        "queued",
        "sent",
        "signed",
    ] {
        crash_at(state, &store).await;
    }
}

crate::on_each_store!(a_kill_at_any_state_resumes_the_request_which_completes_once);

/// The signing requests whose emails are in the mail folder.
fn signing_emails(dir: &Path) -> Vec<String> {
    let mut ids: Vec<String> = std::fs::read_dir(dir.join("mail"))
        .expect("mail dir")
        .filter_map(Result::ok)
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .map(|t| satcosign_bridge::demo::decode_quoted_printable(&t))
        .filter(|t| t.contains("Send 0.00050000 BTC"))
        .filter_map(|t| t.split("/confirm/").nth(1).map(|r| r[..32].to_owned()))
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

/// One Nostr exchange on a fresh WebSocket: sends `message`, returns the answers up to
/// `until` (an OK, or the EOSE of a REQ).
async fn nostr(url: &str, message: Value, until: &str) -> Vec<Value> {
    use futures::SinkExt as _;
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.expect("relay");
    ws.send(tokio_tungstenite::tungstenite::Message::text(
        message.to_string(),
    ))
    .await
    .expect("send");
    common::flow::nostr_until(&mut ws, until).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nostr_message_killed_before_it_became_a_request_is_handled_after_restart_once() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir: PathBuf = tmp.path().join("data");
    registered(&dir).await;
    let w = dev_wallet(&dir);
    let (dm, user, satellite) = common::flow::nostr_dm(
        &w,
        &w.satellite.electrum_xpub(),
        &w.typical_signed_psbt(1, 9),
    );

    // Stored and acknowledged, then killed before it became a request.
    let b = start(&dir, Some("nostr_event"));
    let ok = nostr(&relay_of(&b), json!(["EVENT", dm]), "OK").await;
    assert_eq!(ok.last().expect("OK")[2], true, "{ok:?}");
    assert_eq!(b.held("nostr_event"), dm.id.to_hex());
    b.kill();
    assert!(signing_emails(&dir).is_empty());

    // After the restart it becomes a request, is confirmed, signed and answered.
    let b = start(&dir, None);
    let deadline = Instant::now() + Duration::from_secs(30);
    let id = loop {
        if let [id] = signing_emails(&dir).as_slice() {
            break id.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no signing email after the restart"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let c = code(&dir, &id).await;
    b.call("request.confirm", vec![json!(id), json!(c)]).await;
    let done = b.wait_state(&id, "delivered").await;
    assert_eq!(done["final_state"], "signed", "{done}");
    let answers = json!(["REQ", "a", {"kinds": [4], "authors": [satellite.to_hex()], "#p": [user.public_key().to_hex()]}]);
    let count = |v: &[Value]| v.iter().filter(|m| m[0] == "EVENT").count();
    assert_eq!(
        count(&nostr(&relay_of(&b), answers.clone(), "EOSE").await),
        1
    );
    b.terminate();

    // Another restart handles nothing again.
    let b = start(&dir, None);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        count(&nostr(&relay_of(&b), answers, "EOSE").await),
        1,
        "answered once"
    );
    assert_eq!(signing_emails(&dir), vec![id], "one request");
    b.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_between_the_broadcast_and_its_record_does_not_broadcast_again() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir: PathBuf = tmp.path().join("data");
    let wid = registered(&dir).await;
    let w = dev_wallet(&dir);
    let psbt = w.typical_signed_psbt(1, 9);
    let funding: Vec<bitcoin::Transaction> = psbt
        .inputs
        .iter()
        .filter_map(|i| i.non_witness_utxo.clone())
        .collect();
    let chain = common::chain::ChainServer::start(funding).await;
    let config = tmp.path().join("bridge.toml");
    std::fs::write(
        &config,
        format!(
            "network = \"regtest\"\n[upstream]\nurl = \"{}\"\npoll_secs = 1\n",
            chain.url
        ),
    )
    .expect("config");
    let with_upstream = ["--config", config.to_str().expect("utf-8 path")];

    let b = start_with(&dir, Some("broadcast"), &with_upstream);
    let b64 = base64::engine::general_purpose::STANDARD.encode(psbt.serialize());
    let r = b.call("request.submit", vec![json!(wid), json!(b64)]).await;
    let id = r["request_id"].as_str().expect("id").to_owned();
    let c = code(&dir, &id).await;
    b.call("request.confirm", vec![json!(id), json!(c)]).await;
    assert_eq!(b.held("broadcast"), id);
    b.kill();
    assert_eq!(chain.broadcasts().len(), 1, "broadcast before the kill");

    let b = start_with(&dir, None, &with_upstream);
    let done = b.wait_state(&id, "delivered").await;
    assert_eq!(done["final_state"], "signed", "{done}");
    let txid = psbt.unsigned_tx.compute_txid().to_string();
    assert_eq!(done["outcome"]["signed"]["broadcast"]["txid"], json!(txid));
    // The restarted bridge found it on the server and watches it from there.
    chain.mine(0);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = b.call("request.status", vec![json!(id)]).await;
        if s["outcome"]["signed"]["broadcast"]["chain"]["status"] == "confirmed" {
            break;
        }
        assert!(Instant::now() < deadline, "never seen confirmed: {s}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(chain.broadcasts().len(), 1, "not broadcast again");
    b.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_the_database_writer_stops_the_bridge_and_a_restart_resumes() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir: PathBuf = tmp.path().join("data");
    let wid = registered(&dir).await;
    let w = dev_wallet(&dir);
    let psbt = w.typical_signed_psbt(1, 9);
    let b64 = base64::engine::general_purpose::STANDARD.encode(psbt.serialize());

    // A database job panics once the request is confirmed: the bridge does not carry on
    // half alive, it stops with a line that says why.
    let b = BridgeProcess::dev(
        &dir,
        &[],
        &[("SATCOSIGN_TEST_WRITER_PANIC_AT", "confirmed")],
    );
    let submitted = b.call("request.submit", vec![json!(wid), json!(b64)]).await;
    let id = submitted["request_id"].as_str().expect("id").to_owned();
    let c = code(&dir, &id).await;
    let client = HttpClientBuilder::default().build(&b.http).expect("client");
    let _: Result<Value, _> = client
        .request("request.confirm", vec![json!(id), json!(c)])
        .await;
    let (status, logs) = b.exited();
    assert_eq!(status.code(), Some(70), "{logs:?}");
    assert!(
        logs.iter().any(|l| l.contains("database writer panicked")),
        "{logs:?}"
    );

    // Restarted, the request goes on from its last commit and is signed once.
    let b = start(&dir, None);
    let done = b.wait_state(&id, "delivered").await;
    assert_eq!(done["final_state"], "signed", "{done}");
    b.terminate();
    let cosigner = dev_cosigner(&dir);
    let ledger = cosigner.ledger(&w.wallet.id, 0).expect("ledger");
    assert_eq!(ledger.len(), 1, "one debit");
    assert_eq!(ledger[0].request_id, parse_id(&id));
}
