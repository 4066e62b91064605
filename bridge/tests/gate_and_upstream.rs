//! The email gate's rules over real sockets, and the upstream Electrum server at the edge.

mod common;

use common::stores::TestStore;

use std::time::Duration;

use base64::Engine as _;
use bitcoin::psbt::Psbt;
use bitcoin::Transaction;
use serde_json::{json, Value};

use common::chain::{ChainServer, START_HEIGHT};
use common::flow::{http_raw, sky, test_wallet, verify_with_core, Flow};
use common::{contract, LineClient};
use satcosign_bridge::rpc_error::{BAD_CODE, REFUSED, WRONG_STATE};

fn b64(psbt: &Psbt) -> String {
    base64::engine::general_purpose::STANDARD.encode(psbt.serialize())
}

async fn codes_are_single_use_bound_to_their_request_and_content_and_get_changes_nothing(
    store: TestStore,
) {
    // A resubmission right after the first email is within the resend interval here.
    let flow = Flow::start_on(&store, sky(0.0), |c| c.gate.resend_interval_secs = 0).await;
    let w = test_wallet(&flow).await;
    let wid = flow.register(&w.descriptor).await;
    let p1 = w.typical_signed_psbt(1, 21);
    let id1 = flow.submit(&wid, &p1).await;
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
    let id2 = flow.submit(&wid, &p2).await;
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
    let again = flow.submit(&wid, &p1b).await;
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

    // Too many wrong codes void the request, and the right one no longer works; a
    // subscriber hears it end.
    let mut sub = LineClient::connect(flow.system.bridge.electrum_tcp.expect("tcp")).await;
    sub.ok("request.subscribe", json!([id2])).await;
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
    let heard = sub.recv().await;
    assert_eq!(heard["method"], "request.subscribe", "{heard}");
    assert_eq!(heard["params"][1]["state"], "cancelled", "{heard}");
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

async fn resubmitting_changed_psbts_mails_the_owner_no_more_than_max_emails(store: TestStore) {
    let flow = Flow::start_on(&store, sky(0.0), |c| c.gate.resend_interval_secs = 0).await;
    let w = test_wallet(&flow).await;
    let (wid, _) = flow.register_as(&w.descriptor, "owner@example.org").await;
    let p = w.typical_signed_psbt(1, 31);
    let id = flow.submit(&wid, &p).await;
    let first_code = flow.inbox.code(&id).await;
    assert!(!first_code.is_empty());

    // A stranger holding the PSBT resubmits it changed, 12 times.
    let (mut accepted, mut refused) = (0, 0);
    for n in 0..12u8 {
        let mut changed = p.clone();
        changed.proprietary.insert(
            bitcoin::psbt::raw::ProprietaryKey {
                prefix: b"attack".to_vec(),
                subtype: 1,
                key: vec![n],
            },
            vec![n],
        );
        match flow
            .call("request.submit", vec![json!(wid), json!(b64(&changed))])
            .await
        {
            Ok(v) => {
                assert_eq!(v["request_id"], json!(id), "same transaction, same request");
                accepted += 1;
                // Each accepted resubmission is mailed before the next is taken.
                let s = flow
                    .wait_for(&id, 20, |s| s["emails_sent"].as_u64() == Some(1 + accepted))
                    .await;
                assert_eq!(s["state"], "awaiting_email");
            }
            Err(e) => {
                let text = e.to_string();
                assert!(text.contains("emails for this request"), "{text}");
                refused += 1;
            }
        }
    }
    let max_emails = 4;
    assert_eq!(accepted, max_emails - 1, "only the resends left are taken");
    assert_eq!(refused, 12 - accepted);
    let mails = flow
        .inbox
        .recipients_of(&format!("/confirm/{id}"))
        .into_iter()
        .filter(|to| to == "owner@example.org")
        .count();
    assert_eq!(
        mails as u64, max_emails,
        "the owner got {mails} emails for one request"
    );
    // The owner's newest code is the one that works.
    let newest = flow.inbox.code(&id).await;
    let ok = flow
        .ok("request.confirm", vec![json!(id), json!(newest)])
        .await;
    assert_eq!(ok["state"], "confirmed");
    flow.system.stop().await;
}

async fn an_expired_code_is_refused_and_the_request_expires(store: TestStore) {
    let flow = Flow::start_on(&store, sky(0.0), |c| c.gate.token_ttl_secs = 3).await;
    let w = test_wallet(&flow).await;
    let wid = flow.register(&w.descriptor).await;
    let id = flow.submit(&wid, &w.typical_signed_psbt(1, 31)).await;
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

/// A system with an upstream chain, and a test wallet on a satellite key it issued whose
/// funding `prepare` puts on that chain; `poll_secs` 1.
async fn with_upstream(
    store: &TestStore,
    prepare: impl FnOnce(&satcosign_cosigner::testkit::TestWallet) -> Vec<Transaction>,
) -> (
    Flow,
    satcosign_cosigner::testkit::TestWallet,
    ChainServer,
    tempfile::TempDir,
) {
    let dir = tempfile::tempdir().expect("tempdir");
    let data_dir = dir.path().join("data");
    let upstream = ChainServer::start(Vec::new()).await;
    let url = upstream.url.clone();
    let flow = Flow::start_on(store, sky(0.0), move |c| {
        c.data_dir = data_dir;
        c.upstream.url = url;
        c.upstream.poll_secs = 1;
        c.upstream.confirmations = 3;
    })
    .await;
    let w = test_wallet(&flow).await;
    upstream.confirm(prepare(&w));
    (flow, w, upstream, dir)
}

/// The funding transactions of a PSBT.
fn funding_of(psbt: &Psbt) -> Vec<Transaction> {
    psbt.inputs
        .iter()
        .filter_map(|i| i.non_witness_utxo.clone())
        .collect()
}

async fn the_upstream_fills_previous_transactions_broadcasts_once_and_watches_to_depth(
    store: TestStore,
) {
    let mut psbt = None;
    let (flow, w, upstream, _dir) = with_upstream(&store, |w| {
        let p = w.typical_signed_psbt(1, 41);
        let funding = funding_of(&p);
        psbt = Some(p);
        funding
    })
    .await;
    let mut psbt = psbt.expect("made");
    // The wallet's funding transaction exists only on the upstream server.
    let funding = psbt.inputs[0]
        .non_witness_utxo
        .take()
        .expect("testkit fills it");
    let wid = flow.register(&w.descriptor).await;
    let id = flow.submit(&wid, &psbt).await;

    // A subscriber over Electrum's TCP protocol hears every change, the chain's included.
    let mut sub = LineClient::connect(flow.system.bridge.electrum_tcp.expect("tcp")).await;
    sub.ok("request.subscribe", json!([id])).await;
    let code = flow.inbox.code(&id).await;
    flow.ok("request.confirm", vec![json!(id), json!(code)])
        .await;
    let done = flow.wait_state(&id, "delivered", 120).await;
    assert_eq!(done["final_state"], "signed", "{done}");
    let txid = psbt.unsigned_tx.compute_txid().to_string();
    assert_eq!(done["outcome"]["signed"]["broadcast"]["txid"], json!(txid));
    let sent = upstream.broadcasts();
    assert_eq!(sent.len(), 1, "broadcast exactly once");
    assert_eq!(sent[0].compute_txid().to_string(), txid);
    verify_with_core(&sent[0], &[funding]);

    // The watch: in the mempool, then confirmed, then buried under 3 blocks.
    let chain = |s: &Value| s["outcome"]["signed"]["broadcast"]["chain"].clone();
    let mempool = flow
        .wait_for(&id, 30, |s| chain(s)["status"] == "mempool")
        .await;
    assert_eq!(chain(&mempool)["watching"], true, "{mempool}");
    upstream.mine(0);
    let mined = flow
        .wait_for(&id, 30, |s| chain(s)["status"] == "confirmed")
        .await;
    assert_eq!(chain(&mined)["height"], json!(START_HEIGHT + 1), "{mined}");
    assert_eq!(chain(&mined)["confirmations"], 1, "{mined}");
    assert_eq!(chain(&mined)["watching"], true, "{mined}");
    upstream.mine(1);
    let buried = flow
        .wait_for(&id, 30, |s| chain(s)["confirmations"] == 3)
        .await;
    assert_eq!(chain(&buried)["watching"], false, "{buried}");
    contract().check_result("request.status", &buried);

    // What the subscriber heard, in order, ending with the buried transaction.
    let mut heard = Vec::new();
    loop {
        let n = sub.recv().await;
        assert_eq!(n["method"], "request.subscribe", "{n}");
        assert_eq!(n["params"][0], json!(id));
        let status = n["params"][1].clone();
        contract().check_result("request.status", &status);
        let c = chain(&status);
        heard.push(format!(
            "{} {}",
            status["state"].as_str().unwrap_or(""),
            c["status"].as_str().unwrap_or("-")
        ));
        if c["confirmations"] == 3 {
            break;
        }
    }
    // `sent -` (acknowledged, no answer yet) may pass too quickly to be announced: the
    // satellite's answer acknowledges the request itself.
    let steps = [
        "confirmed -",
        "sent -",
        "delivered mempool",
        "delivered confirmed",
    ];
    for step in ["confirmed -", "delivered mempool", "delivered confirmed"] {
        assert!(heard.iter().any(|h| h == step), "{step} in {heard:?}");
    }
    let ranks: Vec<Option<usize>> = heard
        .iter()
        .map(|h| steps.iter().position(|s| s == h))
        .collect();
    let known: Vec<usize> = ranks.iter().flatten().copied().collect();
    assert!(
        known.windows(2).all(|w| w[0] <= w[1]),
        "heard out of order: {heard:?}"
    );
    // Nothing more is pushed once the transaction is buried.
    assert!(sub.silent_for(Duration::from_secs(3)).await);
    assert_eq!(upstream.broadcasts().len(), 1, "still broadcast once");
    // Every lookup of the request and its watch shared one connection.
    assert_eq!(
        upstream.connections(),
        1,
        "one connection to the upstream server"
    );
    flow.system.stop().await;
}

async fn an_input_already_spent_is_refused_at_submit_naming_the_spender_and_no_email_goes(
    store: TestStore,
) {
    let mut psbts = None;
    let (flow, w, upstream, _dir) = with_upstream(&store, |w| {
        let p = w.typical_signed_psbt(1, 52);
        let q = w.typical_signed_psbt(1, 53);
        let funding = [funding_of(&p), funding_of(&q)].concat();
        psbts = Some((p, q));
        funding
    })
    .await;
    let (psbt, other) = psbts.expect("made");
    let wid = flow.register(&w.descriptor).await;
    let emails = flow.inbox.all().len();

    // Another transaction (the user's other wallet software, say) spent the coin first.
    let mut conflicting = psbt.unsigned_tx.clone();
    conflicting.output[0].value = bitcoin::Amount::from_sat(1_000);
    let spender = upstream.relay(conflicting).expect("relayed");
    let (code, message, data) = flow
        .err("request.submit", vec![json!(wid), json!(b64(&psbt))])
        .await;
    assert_eq!(code, REFUSED, "{message}");
    assert_eq!(data["reason"], "input_spent", "{data}");
    assert_eq!(data["input"], 0);
    assert_eq!(
        data["outpoint"],
        json!(psbt.unsigned_tx.input[0].previous_output.to_string())
    );
    assert_eq!(data["spent_by"], json!(spender.to_string()));
    assert_eq!(data["height"], Value::Null, "in the mempool: {data}");
    assert!(
        message.contains(&spender.to_string()) && message.contains("in the mempool"),
        "{message}"
    );
    upstream.mine(0);
    let (_, message, data) = flow
        .err("request.submit", vec![json!(wid), json!(b64(&psbt))])
        .await;
    assert_eq!(data["height"], json!(START_HEIGHT + 1), "{data}");
    assert!(
        message.contains(&format!("in block {}", START_HEIGHT + 1)),
        "{message}"
    );

    // An unspent coin goes through to the email as before.
    let id = flow.submit(&wid, &other).await;
    let code = flow.inbox.code(&id).await;
    assert_eq!(
        flow.inbox.all().len(),
        emails + 1,
        "one email: the refused spends sent none"
    );

    // Spent by another transaction between the email and the confirmation: refused before
    // the link, and the user is told why.
    let mut late = other.unsigned_tx.clone();
    late.output[0].value = bitcoin::Amount::from_sat(2_000);
    let spender = upstream.relay(late).expect("relayed");
    flow.ok("request.confirm", vec![json!(id), json!(code)])
        .await;
    let done = flow.wait_state(&id, "delivered", 60).await;
    assert_eq!(done["final_state"], "refused", "{done}");
    assert_eq!(done["outcome"]["refused"]["code"], "input_spent", "{done}");
    let reason = done["outcome"]["refused"]["reason"].as_str().unwrap_or("");
    assert!(reason.contains(&spender.to_string()), "{reason}");
    assert!(
        upstream.broadcasts().is_empty(),
        "nothing signed, nothing broadcast"
    );
    let told = flow.inbox.recipients_of("refused");
    assert!(!told.is_empty(), "the outcome is emailed");
    let signed = flow.sign_attempts();
    assert_eq!(signed, 0, "the satellite was never asked");
    flow.system.stop().await;
}

async fn email_changes_are_confirmed_at_the_old_address_and_policy_loosening_waits_for_email(
    store: TestStore,
) {
    let flow = Flow::start_on(&store, sky(0.0), |_| {}).await;
    let w = test_wallet(&flow).await;
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
    // Anyone with the request id sees the two addresses masked.
    let shown = done.to_string();
    assert!(
        !shown.contains("carol@") && !shown.contains("alice@"),
        "request.status shows an address: {shown}"
    );
    assert!(shown.contains("c***@example.org"), "{shown}");
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

    // A tightening a stranger asks for (any caller with the wallet id) does nothing until
    // the registered address confirms it: then it applies at once.
    let mut policy = flow.ok("wallet.status", vec![json!(wid)]).await["policy"].clone();
    let before = policy.clone();
    policy["max_per_tx_sat"] = json!(1_000_000);
    policy["max_fee_rate_sat_vb"] = json!(100);
    let r = flow
        .ok("wallet.set_policy", vec![json!(wid), policy.clone()])
        .await;
    assert_eq!(r["needs_email"], true, "{r}");
    assert_eq!(r["tightening"], true, "{r}");
    let id = r["request_id"].as_str().expect("id").to_owned();
    let code = flow.inbox.code(&id).await;
    assert_eq!(
        flow.ok("wallet.status", vec![json!(wid)]).await["policy"],
        before,
        "nothing applies before the owner confirms"
    );
    // The email shows every rule, the changed ones first with old and new, the others
    // marked unchanged, and its warning is true for a change (no one need hold a key to
    // ask for one).
    let mail = flow.inbox.to("carol@example.org").pop().expect("the email");
    assert!(mail.contains("Tighten the limits"), "{mail}");
    assert!(mail.contains("Limit per transaction"), "{mail}");
    assert!(mail.contains("100 sat/vB (now"), "{mail}");
    let text = satcosign_bridge::demo::decode_quoted_printable(&mail);
    for rule in [
        "Highest fee  ",
        "Limit per period",
        "Time between signatures",
        "Change per period",
    ] {
        let line = text
            .lines()
            .find(|l| l.trim_start().starts_with(rule))
            .unwrap_or_else(|| panic!("{rule} missing: {text}"));
        assert!(line.trim_end().ends_with("(unchanged)"), "{line}");
    }
    let changed = text.find("Highest fee rate").expect("fee rate row");
    assert!(
        changed < text.find("Highest fee  ").expect("fee row"),
        "changed rules come first: {text}"
    );
    assert!(!mail.contains("holds one of your wallet's keys"), "{mail}");
    assert!(
        mail.contains("does not mean your keys are exposed"),
        "{mail}"
    );
    flow.ok("request.confirm", vec![json!(id), json!(code)])
        .await;
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
    // The bridge mirrors the satellite: the tighter limit stays in force, and the looser
    // one is shown waiting, with the satellite's time, not applied at once.
    let status = flow.ok("wallet.status", vec![json!(wid)]).await;
    assert_eq!(status["policy"]["max_per_tx_sat"], 1_000_000, "{status}");
    assert_eq!(
        status["pending_policy"]["policy"]["max_per_tx_sat"], 5_000_000,
        "{status}"
    );
    let effective_at = status["pending_policy"]["effective_at"]
        .as_u64()
        .expect("when");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    assert!(
        effective_at > now + 3600,
        "held back by the satellite's delay: {status}"
    );

    // Each change emails the owner: a wallet takes 6 a day (3 made above).
    for n in 0..3 {
        flow.ok(
            "wallet.update_email",
            vec![json!(wid), json!(format!("x{n}@example.org"))],
        )
        .await;
    }
    let (code, message, data) = flow
        .err(
            "wallet.update_email",
            vec![json!(wid), json!("x9@example.org")],
        )
        .await;
    assert_eq!(code, satcosign_bridge::rpc_error::RATE_LIMITED, "{message}");
    assert!(
        message.contains("changes to this wallet today"),
        "{message}"
    );
    assert!(data["retry_after"].is_string(), "{data}");
    flow.system.stop().await;
}

async fn an_allowlist_given_as_addresses_limits_where_payments_go(store: TestStore) {
    use satcosign_cosigner::testkit::{foreign_script, SpendSpec};
    let flow = Flow::start_on(&store, sky(0.0), |_| {}).await;
    let w = test_wallet(&flow).await;
    let wid = flow.register(&w.descriptor).await;
    let allowed = bitcoin::Address::from_script(&foreign_script(7), bitcoin::Network::Regtest)
        .expect("address");

    // Adding an allowlist tightens: once confirmed, it applies at once. The email lists
    // the entry added.
    let mut policy = flow.ok("wallet.status", vec![json!(wid)]).await["policy"].clone();
    policy["allowlist"] = json!([allowed.to_string()]);
    let r = flow
        .ok("wallet.set_policy", vec![json!(wid), policy.clone()])
        .await;
    assert_eq!(r["tightening"], true, "{r}");
    let id = r["request_id"].as_str().expect("id").to_owned();
    let code = flow.inbox.code(&id).await;
    let mail = flow
        .inbox
        .to("alice@example.org")
        .into_iter()
        .rfind(|m| m.contains(&id))
        .expect("the email");
    assert!(mail.contains("Allowlist adds"), "{mail}");
    assert!(
        mail.contains(&allowed.to_string()),
        "the entry shows as the address the owner gave: {mail}"
    );
    flow.ok("request.confirm", vec![json!(id), json!(code)])
        .await;
    flow.wait_state(&id, "delivered", 60).await;
    // Shown as the script it stands for.
    assert_eq!(
        flow.ok("wallet.status", vec![json!(wid)]).await["policy"]["allowlist"],
        json!([hex::encode(foreign_script(7).as_bytes())])
    );

    // Paying elsewhere is refused before any email, naming the output.
    let mut elsewhere = w.psbt(&SpendSpec {
        inputs: vec![(0, 900, 100_000)],
        payments: vec![(foreign_script(8), 50_000)],
        change: Some((900, 49_300)),
    });
    w.sign_with(&w.user, &mut elsewhere);
    let (code, message, data) = flow
        .err("request.submit", vec![json!(wid), json!(b64(&elsewhere))])
        .await;
    assert_eq!(code, satcosign_bridge::rpc_error::REFUSED, "{message}");
    assert_eq!(data["reason"], "destination_not_allowed", "{message}");
    assert!(message.contains("output 0"), "{message}");

    // Paying the allowed address goes on to the email and is signed.
    let psbt = w.typical_signed_psbt(1, 61);
    let id = flow.submit(&wid, &psbt).await;
    let code = flow.inbox.code(&id).await;
    flow.ok("request.confirm", vec![json!(id), json!(code)])
        .await;
    let done = flow.wait_state(&id, "delivered", 60).await;
    assert_eq!(done["final_state"], "signed", "{done}");

    // An entry that is neither an address nor hex is named.
    policy["allowlist"] = json!(["not an address"]);
    let (code, message, _) = flow
        .err("wallet.set_policy", vec![json!(wid), policy])
        .await;
    assert_eq!(
        code,
        satcosign_bridge::rpc_error::INVALID_PARAMS,
        "{message}"
    );
    assert!(message.contains("`not an address`"), "{message}");
    flow.system.stop().await;
}

/// `wallet.register`'s parameters for a distinct 2-of-3 wallet per tag, with its own
/// satellite key, for `<tag>@example.org`.
async fn registration(flow: &Flow, tag: &str) -> Vec<Value> {
    use satcosign_cosigner::testkit::key;
    let satellite = test_wallet(flow).await.satellite.descriptor_key();
    let descriptor = format!(
        "wsh(sortedmulti(2,{}/<0;1>/*,{}/<0;1>/*,{satellite}/<0;1>/*))",
        key(&format!("{tag}-hot")).descriptor_key(),
        key(&format!("{tag}-backup")).descriptor_key(),
    );
    vec![
        json!(descriptor),
        json!(format!("{tag}@example.org")),
        json!(format!("wallet {tag}")),
    ]
}

async fn registrations_are_limited_per_email_address_and_in_all(store: TestStore) {
    use satcosign_bridge::rpc_error::RATE_LIMITED;
    let flow = Flow::start_on(&store, sky(0.0), |c| {
        c.gate.max_registrations_per_email_per_day = 2;
        c.gate.max_registrations_per_hour = 3;
    })
    .await;
    let mut params = std::collections::HashMap::new();
    for tag in ["a", "b", "c", "d"] {
        params.insert(tag, registration(&flow, tag).await);
    }
    let register = |tag: &str, email: &str| {
        let mut p = params[tag].clone();
        p[1] = json!(email);
        p
    };
    flow.ok("wallet.register", register("a", "dora@example.org"))
        .await;
    // The same address in other letters is the same address.
    flow.ok("wallet.register", register("b", "DORA@example.org"))
        .await;
    // So is the address with spaces around it and a +tag: one inbox, one count.
    let (code, message, data) = flow
        .err("wallet.register", register("c", " Dora+again@example.org "))
        .await;
    assert_eq!(code, RATE_LIMITED, "{message}");
    assert!(
        message.contains("registrations for this email address"),
        "{message}"
    );
    assert!(data["retry_after"].is_string(), "{data}");

    // Another address still can, until the bridge's hourly total is reached.
    flow.ok("wallet.register", register("c", "eve@example.org"))
        .await;
    let (code, message, _) = flow
        .err("wallet.register", register("d", "fay@example.org"))
        .await;
    assert_eq!(code, RATE_LIMITED, "{message}");
    assert!(
        message.contains("registrations on this bridge"),
        "{message}"
    );

    // Refused registrations sent nobody anything and left no wallet behind.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let all = flow.inbox.recipients_of("");
    let to = |who: &str| all.iter().filter(|r| r.eq_ignore_ascii_case(who)).count();
    assert_eq!(to("dora@example.org"), 2);
    assert_eq!(to("eve@example.org"), 1);
    assert_eq!(to("fay@example.org"), 0);
    flow.system.stop().await;
}

async fn one_client_address_gets_only_its_share_of_the_registrations(store: TestStore) {
    use satcosign_bridge::rpc_error::RATE_LIMITED;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let flow = Flow::start_on(&store, sky(0.0), |c| {
        c.gate.max_registrations_per_hour = 10;
        c.gate.max_registrations_per_client_per_hour = 2;
    })
    .await;
    let mut params = Vec::new();
    for tag in ["p", "q", "r"] {
        params.push(registration(&flow, tag).await);
    }
    flow.ok("wallet.register", params[0].clone()).await;
    flow.ok("wallet.register", params[1].clone()).await;
    let (code, message, _) = flow.err("wallet.register", params[2].clone()).await;
    assert_eq!(code, RATE_LIMITED, "{message}");
    assert!(
        message.contains("registrations from this client"),
        "{message}"
    );
    // Another address still registers.
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "wallet.register", "params": params[2]})
        .to_string();
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind(std::net::SocketAddr::from(([127, 0, 0, 2], 0)))
        .expect("bind 127.0.0.2");
    let mut s = socket.connect(flow.http_addr()).await.expect("connect");
    s.write_all(
        format!(
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .expect("write");
    let mut answer = String::new();
    s.read_to_string(&mut answer).await.expect("read");
    assert!(answer.contains("\"wallet_id\""), "{answer}");
    flow.system.stop().await;
}

/// `GET /health` until `done` holds for its body (the watch asks the upstream server
/// every second); returns the status code and body.
async fn health_until(flow: &Flow, done: impl Fn(&Value) -> bool) -> (u16, Value) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (code, text) = http_raw(
            flow.http_addr(),
            "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        let body: Value = serde_json::from_str(text.split("\r\n\r\n").nth(1).unwrap_or(""))
            .unwrap_or_else(|e| panic!("health is JSON ({e}): {text}"));
        if done(&body) {
            return (code, body);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "health never came to it: {body}"
        );
        // Polling a condition with a deadline, not a sleep standing in for one.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

async fn health_reports_the_writer_the_link_and_the_upstream_server_each_with_its_state(
    store: TestStore,
) {
    let (flow, _w, _upstream, _dir) = with_upstream(&store, |_| Vec::new()).await;
    let (code, body) = health_until(&flow, |b| b["upstream"]["state"] == "connected").await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["status"], "ok", "{body}");
    assert_eq!(body["writer"]["state"], "ok", "{body}");
    assert_eq!(body["writer"]["failed_batches"], 0, "{body}");
    assert_eq!(body["link"]["state"], "running", "{body}");
    assert!(body["link"]["queue_depth"].is_u64(), "{body}");
    flow.system.stop().await;

    // An upstream server nobody listens on: the bridge still works (200), degraded, and
    // says why.
    let url = format!("tcp://{}", common::nobody_listens());
    let flow = Flow::start_on(&store, sky(0.0), move |c| {
        c.upstream.url = url;
        c.upstream.poll_secs = 1;
    })
    .await;
    let (code, body) = health_until(&flow, |b| b["upstream"]["state"] == "unreachable").await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["status"], "degraded", "{body}");
    assert!(
        body["upstream"]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("127.0.0.2")),
        "{body}"
    );
    assert_eq!(body["writer"]["state"], "ok", "{body}");
    assert_eq!(body["link"]["state"], "running", "{body}");
    flow.system.stop().await;
}

crate::on_each_store!(
    codes_are_single_use_bound_to_their_request_and_content_and_get_changes_nothing,
    resubmitting_changed_psbts_mails_the_owner_no_more_than_max_emails,
    an_expired_code_is_refused_and_the_request_expires,
    the_upstream_fills_previous_transactions_broadcasts_once_and_watches_to_depth,
    an_input_already_spent_is_refused_at_submit_naming_the_spender_and_no_email_goes,
    email_changes_are_confirmed_at_the_old_address_and_policy_loosening_waits_for_email,
    an_allowlist_given_as_addresses_limits_where_payments_go,
    registrations_are_limited_per_email_address_and_in_all,
    one_client_address_gets_only_its_share_of_the_registrations,
    health_reports_the_writer_the_link_and_the_upstream_server_each_with_its_state,
);
