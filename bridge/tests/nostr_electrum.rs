//! Stock Electrum 4.6+ with no plugin: its Nostr cosigning (psbt_nostr, emulated with the
//! libraries it uses, `electrum-aionostr` and `electrum-ecc` from PyPI, over Debian's
//! Electrum library for the wallet) pointed at the bridge's relay. The PSBT passes the email
//! gate, the satellite signs over the simulated link, the cosignature comes back as a
//! Nostr event that the client decrypts and finalizes, and Bitcoin Core's interpreter
//! accepts the transaction. A stranger's message is ignored; a refusal comes back as the user's own PSBT, unsigned by
//! the satellite, with the reason as its label: the only form Electrum's psbt_nostr shows.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use bitcoin::Transaction;
use serde_json::{json, Value};

use common::flow::{assert_ran_in, sky, tx_at, verify_with_core, Flow};
use common::script::{nostr_python, Script};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_electrum_cosigns_through_the_bridges_relay_with_no_plugin() {
    let python = tokio::task::spawn_blocking(nostr_python)
        .await
        .expect("venv");
    let flow = Flow::start(sky(0.0), |c| c.default_policy.max_per_tx_sat = 500_000).await;
    let relay = format!("ws://{}", flow.system.bridge.nostr.expect("relay"));
    let issued = flow.ok("satellite.new_key", vec![]).await;
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/electrum/nostr_client.py"
    );
    let python = python.to_string_lossy();
    let script = Script::spawn(
        &[&python, script],
        &[&relay, issued["electrum_xpub"].as_str().expect("xpub")],
    );

    let Conversation {
        result: r,
        sent,
        confirmed,
    } = converse(&flow, script).await;

    // The stranger's message and the wallet's two (one to the backup key, one to the
    // satellite, as psbt_nostr sends to every cosigner), then the large one.
    assert_eq!(sent.len(), 4, "{sent:?}");
    // Only the wallet's own small PSBT became a signing request: the stranger was ignored,
    // the large one refused before any email.
    assert_eq!(confirmed.len(), 1, "{confirmed:?}");
    let request = confirmed.iter().next().expect("request").clone();
    let status = flow.wait_state(&request, "delivered", 60).await;
    assert_eq!(status["final_state"], "signed", "{status}");
    assert_eq!(
        flow.inbox.recipients_of(&request)[0],
        "alice@example.org",
        "the registered email confirmed it"
    );

    let replies = r["replies"].as_array().expect("replies");
    assert_eq!(replies.len(), 2, "{r}");
    assert!(replies.iter().all(|x| x["author"] == r["satellite_pubkey"]));
    // Both answers are in the only form psbt_nostr shows: neither is dropped unseen.
    assert!(replies.iter().all(|x| x["shown"] == true), "{r}");
    let signed = replies
        .iter()
        .find(|x| x["txid"] == r["txid"])
        .expect("the cosigned PSBT came back");
    assert_eq!(signed["complete"], true, "{signed}");
    assert_eq!(signed["label"], format!("satcosign {request}"));
    // The refusal is the user's own PSBT, unchanged: Electrum shows it still unsigned by the
    // satellite (never as a signature), with the reason as its label.
    let refused = replies
        .iter()
        .find(|x| x["txid"] == r["large_txid"])
        .expect("the refusal came back as the refused PSBT");
    assert_eq!(
        refused["complete"], false,
        "a refusal is not a signature: {refused}"
    );
    // ... and it shows in request.status, and the owner was told by email too.
    let refused_id = refusal_shown(&flow, refused).await;
    assert_eq!(
        flow.inbox.recipients_of(&refused_id),
        vec!["alice@example.org".to_owned()]
    );

    let tx: Transaction = tx_at(signed, "tx");
    let funding: Transaction = tx_at(&r, "funding_tx");
    verify_with_core(&tx, &[funding]);
}

/// The refusal of the over-limit PSBT as Electrum shows it: its label says it was not
/// co-signed and why, and names the request, whose status agrees. Returns the request's id.
async fn refusal_shown(flow: &Flow, refused: &Value) -> String {
    let label = refused["label"].as_str().expect("label");
    assert!(
        label.contains("NOT co-signed by the satellite")
            && label.contains("refused by the satellite's policy (over_tx_limit)")
            && label.contains("Nothing was signed"),
        "{label}"
    );
    let id = label
        .split("request ")
        .nth(1)
        .and_then(|x| x.get(..32))
        .expect("the label names the request")
        .to_owned();
    let status = flow.status(&id).await;
    assert_eq!(status["kind"], "sign", "{status}");
    assert_eq!(status["final_state"], "refused", "{status}");
    assert_eq!(
        status["outcome"]["refused"]["code"], "over_tx_limit",
        "{status}"
    );
    id
}

/// What a Nostr client program said: its RESULT, the ids it reported SENT, and the signing
/// requests the harness confirmed.
struct Conversation {
    result: Value,
    sent: Vec<String>,
    confirmed: BTreeSet<String>,
}

/// Talks to a Nostr client program as its wallet's owner: registers the wallet it names on
/// `REGISTER <descriptor>`, confirms each signing request from its email (as the user
/// would), and collects `SENT <id>` lines until `RESULT {json}`.
async fn converse(flow: &Flow, mut script: Script) -> Conversation {
    let mut registration = None;
    let mut confirmed = BTreeSet::new();
    let mut sent = Vec::new();
    let talk = async {
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tokio::select! {
                line = script.lines.next_line() => {
                    let line = line.expect("stdout")?;
                    if let Some(descriptor) = line.strip_prefix("REGISTER ") {
                        registration = Some(flow.register(descriptor).await);
                        Script::answer(&mut script.stdin, "registered").await;
                    } else if let Some(id) = line.strip_prefix("SENT ") {
                        sent.push(id.to_owned());
                    } else if let Some(json) = line.strip_prefix("RESULT ") {
                        return Some(serde_json::from_str::<Value>(json).expect("json"));
                    }
                }
                _ = tick.tick() => {
                    // The user confirms each signing request from its email.
                    if registration.is_some() {
                        for id in flow.inbox.request_ids() {
                            let status = flow.status(&id).await;
                            if status["kind"] == "sign" && confirmed.insert(id.clone()) {
                                let code = flow.inbox.code(&id).await;
                                flow.ok("request.confirm", vec![json!(id), json!(code)]).await;
                            }
                        }
                    }
                }
            }
        }
    };
    let result = tokio::time::timeout(Duration::from_secs(300), talk).await;
    let (_, stderr) = script.finish().await;
    match result {
        Ok(Some(result)) => Conversation {
            result,
            sent,
            confirmed,
        },
        _ => panic!("the Nostr client did not finish; stderr:\n{stderr}"),
    }
}

/// The same through stock Electrum 4.8.3's own psbt_nostr code (Debian sid's, fetched by
/// scripts/electrum-debian): its CosignerWallet sends the PSBTs, and fetches, decrypts and
/// parses the answers. The cosigned one completes and Core accepts it; the refusal arrives as
/// the user's own PSBT with the reason as its label, still incomplete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_electrum_4_8s_own_psbt_nostr_cosigns_and_shows_the_refusal() {
    let suite_python = common::flow::electrum_python("sid");
    let flow = Flow::start(sky(0.0), |c| c.default_policy.max_per_tx_sat = 500_000).await;
    let relay = format!("ws://{}", flow.system.bridge.nostr.expect("relay"));
    let issued = flow.ok("satellite.new_key", vec![]).await;
    let driver = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/electrum/psbt_nostr_stock.py"
    );
    let work = flow.dir.path().join("stock");
    let script = Script::spawn(
        &[&suite_python, driver],
        &[
            &relay,
            issued["electrum_xpub"].as_str().expect("xpub"),
            &work.to_string_lossy(),
        ],
    );
    let r = converse(&flow, script).await.result;
    assert_ran_in(&r, "4.8.");
    let answers = r["answers"].as_array().expect("answers");
    let signed = answers
        .iter()
        .find(|a| a["txid"] == r["small_txid"])
        .unwrap_or_else(|| panic!("Electrum received no cosigned PSBT: {r}"));
    assert_eq!(signed["complete"], true, "{signed}");
    let refused = answers
        .iter()
        .find(|a| a["txid"] == r["large_txid"])
        .unwrap_or_else(|| panic!("Electrum received no refusal it could show: {r}"));
    assert_eq!(
        refused["complete"], false,
        "a refusal is not a signature: {refused}"
    );
    refusal_shown(&flow, refused).await;

    let tx: Transaction = tx_at(signed, "tx");
    let funding: Transaction = tx_at(&r, "funding_tx");
    verify_with_core(&tx, &[funding]);
}
