//! Answers that outlast Electrum's 24-hour window. Electrum's psbt_nostr asks only for
//! events of the last 24 hours; the bridge keeps a satellite answer available to its wallet
//! until the wallet fetched it (or its transaction is on chain, or a week passed), and never
//! makes a second copy for a wallet that has the first.
//!
//! Days pass in seconds: the bridge's clock is moved ahead (`dev::advance_clock`), and the
//! client (psbt_nostr's query over `electrum-aionostr`, `electrum/nostr_answers.py`) runs
//! with its clock as far ahead. The clock is one per process, so this file holds one test.

mod common;

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use common::flow::{sky, Flow};
use common::script::{nostr_python, Script};
use satcosign_bridge::dev::advance_clock;

const HOUR: u64 = 3600;

/// A stranger who knows a wallet's Nostr key (it is in the tags of the wallet's messages)
/// asks the relay for that key's messages, proving a key of its own (NIP-42) first; returns
/// the events it was sent.
async fn stranger_reads(
    addr: std::net::SocketAddr,
    recipient: &nostr_sdk::PublicKey,
) -> Vec<Value> {
    use nostr_sdk::prelude::{EventBuilder, Keys, Kind, Tag, TagKind};
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}"))
        .await
        .expect("websocket");
    let challenge = loop {
        let m = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("in time")
            .expect("open")
            .expect("frame");
        if let Message::Text(t) = m {
            break serde_json::from_str::<Value>(&t).expect("json");
        }
    };
    assert_eq!(
        challenge[0], "AUTH",
        "the relay's NIP-42 challenge comes first"
    );
    let stranger = Keys::generate();
    let auth = EventBuilder::new(Kind::Custom(22242), "")
        .tags([Tag::custom(
            TagKind::Challenge,
            [challenge[1].as_str().expect("challenge")],
        )])
        // On the bridge's clock, which this test moves ahead.
        .custom_created_at(nostr_sdk::Timestamp::from(
            satcosign_bridge::service::unix_now(),
        ))
        .sign_with_keys(&stranger)
        .expect("sign");
    ws.send(Message::text(json!(["AUTH", auth]).to_string()))
        .await
        .expect("send");
    ws.send(Message::text(
        json!(["REQ", "peek", {"kinds": [4], "#p": [recipient.to_hex()]}]).to_string(),
    ))
    .await
    .expect("send");
    let mut events = Vec::new();
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("in time")
            .expect("open")
            .expect("frame");
        let Message::Text(t) = m else { continue };
        let v: Value = serde_json::from_str(&t).expect("json");
        match v[0].as_str() {
            Some("EVENT") => events.push(v[2].clone()),
            Some("EOSE") => return events,
            Some("OK") => assert_eq!(v[2], true, "the stranger proves its own key: {v}"),
            _ => {}
        }
    }
}

/// One wallet that sent a PSBT to its satellite identity by Nostr.
struct Sent {
    user: nostr_sdk::Keys,
    satellite: nostr_sdk::PublicKey,
    request: String,
}

async fn send_by_nostr(flow: &Flow, salt: u32) -> Sent {
    // Each customer's own keys.
    let w = satcosign_cosigner::testkit::TestWallet::with_members(
        &format!("user-{salt}"),
        &format!("backup-{salt}"),
        common::flow::new_satellite_key(flow).await,
    );
    flow.register(&w.descriptor).await;
    let (dm, user, satellite) = common::flow::nostr_dm(
        &w,
        &w.satellite.electrum_xpub(),
        &w.typical_signed_psbt(1, salt),
    );
    let before = flow.inbox.request_ids();
    let addr = flow.system.bridge.nostr.expect("relay");
    let mut ws = common::flow::nostr_ws(addr).await;
    assert_eq!(common::flow::publish_on(&mut ws, &dm).await[2], true);
    // The signing request it opened: the one new request whose email asks to sign.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let request = loop {
        let mut new = Vec::new();
        for id in flow.inbox.request_ids() {
            if !before.contains(&id) && flow.status(&id).await["kind"] == "sign" {
                new.push(id);
            }
        }
        if let [id] = new.as_slice() {
            break id.clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no signing email: {new:?}"
        );
        // Polling the mail folder with a deadline, not a sleep standing in for an event.
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    Sent {
        user,
        satellite,
        request,
    }
}

/// What the wallet's Electrum finds when it opens `ahead` seconds into the test's future:
/// the answers psbt_nostr would show.
async fn electrum_opens(flow: &Flow, wallet: &Sent, ahead: u64) -> Vec<Value> {
    let python = tokio::task::spawn_blocking(nostr_python)
        .await
        .expect("venv");
    let relay = format!("ws://{}", flow.system.bridge.nostr.expect("relay"));
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/electrum/nostr_answers.py"
    );
    let python = python.to_string_lossy();
    let mut client = Script::spawn(
        &[&python, script],
        &[
            &relay,
            &wallet.user.secret_key().to_secret_hex(),
            &wallet.satellite.to_hex(),
            &ahead.to_string(),
        ],
    );
    let line = tokio::time::timeout(Duration::from_secs(90), client.lines.next_line())
        .await
        .expect("the client answers in time")
        .expect("read")
        .unwrap_or_default();
    let (status, errors) = client.finish().await;
    let result: Value = serde_json::from_str(
        line.strip_prefix("RESULT ")
            .unwrap_or_else(|| panic!("no result ({status}): {line}\n{errors}")),
    )
    .expect("json");
    result["answers"].as_array().expect("answers").clone()
}

/// The one answer, checked: the PSBT back with the satellite's signature beside the user's.
fn cosigned(answers: &[Value]) -> String {
    assert_eq!(answers.len(), 1, "exactly one answer: {answers:?}");
    let message: Value =
        serde_json::from_str(answers[0]["message"].as_str().expect("text")).expect("json");
    let psbt =
        bitcoin::Psbt::deserialize(&hex::decode(message["tx"].as_str().expect("tx")).expect("hex"))
            .expect("psbt");
    assert_eq!(psbt.inputs[0].partial_sigs.len(), 2, "{message}");
    answers[0]["id"].as_str().expect("id").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_answer_reaches_electrum_once_and_an_unfetched_one_outlasts_its_window() {
    let flow = Flow::start(sky(0.0), |c| c.gate.token_ttl_secs = 5 * 24 * HOUR).await;
    // Two wallets send a PSBT now; their users confirm only 30 hours later.
    let prompt = send_by_nostr(&flow, 1).await;
    let away = send_by_nostr(&flow, 2).await;
    advance_clock(Duration::from_secs(30 * HOUR));
    for sent in [&prompt, &away] {
        let code = flow.inbox.code(&sent.request).await;
        flow.ok("request.confirm", vec![json!(sent.request), json!(code)])
            .await;
        let done = flow.wait_state(&sent.request, "delivered", 60).await;
        assert_eq!(done["final_state"], "signed", "{done}");
    }
    let mut ahead = 30 * HOUR;
    // A stranger asks for the second wallet's messages: it is sent the (encrypted) answer,
    // and that must not count as the wallet having it.
    let relay = flow.system.bridge.nostr.expect("relay");
    let peeked = stranger_reads(relay, &away.user.public_key()).await;
    assert!(
        peeked
            .iter()
            .any(|e| e["pubkey"] == away.satellite.to_hex().as_str()),
        "{peeked:?}"
    );

    // Signed 30 hours after it was sent: the first wallet's Electrum, open now, shows it once.
    let first = cosigned(&electrum_opens(&flow, &prompt, ahead).await);

    // Two days pass, the bridge looking at its kept answers as it does every ten minutes.
    let cosigner = flow
        .system
        .bridge
        .service
        .as_ref()
        .and_then(|s| s.nostr.get().cloned())
        .expect("the satellite's Nostr identities");
    let mut renewed = 0;
    for _ in 0..4 {
        advance_clock(Duration::from_secs(12 * HOUR));
        ahead += 12 * HOUR;
        renewed += cosigner.keep_answers().await.expect("sweep").refreshed;
    }
    assert!(renewed >= 2, "the unfetched answer was renewed: {renewed}");

    // The second wallet opens Electrum two days after its answer: one copy, a fresh one.
    let answers = electrum_opens(&flow, &away, ahead).await;
    cosigned(&answers);
    let created = answers[0]["created_at"].as_u64().expect("time");
    let now = satcosign_bridge::service::unix_now();
    assert!(now - created < 24 * HOUR, "inside Electrum's window");

    // The first wallet, open again: its answer was not copied again (a new copy would show
    // the transaction twice), and the one it has is past Electrum's window.
    let again = electrum_opens(&flow, &prompt, ahead).await;
    assert!(
        again.iter().all(|a| a["id"] == first.as_str()),
        "no second copy for a wallet that has its answer: {again:?}"
    );
    assert!(again.is_empty(), "{again:?}");

    // Fetched, the second answer is not renewed again.
    advance_clock(Duration::from_secs(23 * HOUR));
    let sweep = cosigner.keep_answers().await.expect("sweep");
    assert_eq!(sweep.refreshed, 0, "{sweep:?}");
    flow.system.stop().await;
}
