//! The bridge's Nostr relay against an independent client (`nostr-sdk`) and against raw
//! WebSocket frames that a careless or hostile client might send.

mod common;

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use nostr_sdk::prelude::*;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(addr: std::net::SocketAddr) -> Ws {
    tokio_tungstenite::connect_async(format!("ws://{addr}"))
        .await
        .expect("websocket")
        .0
}

async fn send(ws: &mut Ws, v: &Value) {
    ws.send(Message::text(v.to_string())).await.expect("send");
}

/// The next JSON message (fails after 10 s), past the relay's NIP-42 challenge.
async fn next(ws: &mut Ws) -> Value {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("an answer in time")
            .expect("connection open")
            .expect("frame");
        if let Message::Text(t) = m {
            let v: Value = serde_json::from_str(&t).expect("relay sends JSON");
            if v[0] != "AUTH" {
                return v;
            }
        }
    }
}

/// Messages until (and including) EOSE for `sub`.
async fn until_eose(ws: &mut Ws, sub: &str) -> Vec<Value> {
    let mut out = Vec::new();
    loop {
        let v = next(ws).await;
        if v[0] == "EOSE" && v[1] == sub {
            return out;
        }
        out.push(v);
    }
}

/// A direct message (kind 4) from `keys` to `to` with `text` as its content, at `at`: the
/// only kind of event the relay carries.
fn note(keys: &Keys, to: &PublicKey, text: &str, tags: Vec<Tag>, at: u64) -> Event {
    EventBuilder::new(Kind::EncryptedDirectMessage, text)
        .tag(Tag::public_key(*to))
        .tags(tags)
        .custom_created_at(Timestamp::from(at))
        .sign_with_keys(keys)
        .expect("sign")
}

/// The Nostr identities of a wallet's user and backup keys once the wallet is registered
/// (before it is confirmed): the only authors the relay takes events from.
async fn wallet_members(flow: &common::flow::Flow) -> (Keys, Keys) {
    let w = common::flow::test_wallet(flow).await;
    flow.ok(
        "wallet.register",
        vec![
            json!(w.descriptor),
            json!("alice@example.org"),
            json!("members"),
        ],
    )
    .await;
    let keys_for = satcosign_bridge::nostr_cosigner::keys_for;
    (
        keys_for(&w.user.public().electrum_xpub()).expect("key"),
        keys_for(&w.backup.public().electrum_xpub()).expect("key"),
    )
}

fn now() -> u64 {
    Timestamp::now().as_secs()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_independent_client_publishes_queries_follows_live_events_and_closes() {
    use common::flow::{sky, Flow};
    let flow = Flow::start(sky(0.0), |_| {}).await;
    let addr = flow.system.bridge.nostr.expect("relay on");
    let url = format!("ws://{addr}");
    let (alice, bob) = wallet_members(&flow).await;
    let to = bob.public_key();
    let publisher = Client::new(alice.clone());
    publisher.add_relay(url.as_str()).await.expect("relay");
    publisher.connect().await;
    let reader = Client::new(Keys::generate());
    reader.add_relay(url.as_str()).await.expect("relay");
    reader.connect().await;

    // Three notes at distinct times, two tagged #t satellite.
    let t0 = now() - 100;
    let topic = Tag::hashtag("satellite");
    let notes = [
        note(&alice, &to, "first", vec![topic.clone()], t0),
        note(&alice, &to, "second", vec![], t0 + 10),
        note(&alice, &to, "third", vec![topic.clone()], t0 + 20),
    ];
    for n in &notes {
        let out = publisher.send_event(n).await.expect("send");
        assert_eq!(
            out.success.len(),
            1,
            "OK true for {}: {:?}",
            n.content,
            out.failed
        );
    }
    let wait = Duration::from_secs(5);
    let base = Filter::new()
        .author(alice.public_key())
        .kind(Kind::EncryptedDirectMessage);
    // limit gives the newest.
    let got = reader
        .fetch_events(base.clone().limit(2), wait)
        .await
        .expect("fetch");
    let mut texts: Vec<String> = got.iter().map(|e| e.content.clone()).collect();
    texts.sort();
    assert_eq!(texts, ["second", "third"]);
    // Tags, since and until, ids.
    let got = reader
        .fetch_events(base.clone().hashtag("satellite"), wait)
        .await
        .expect("fetch");
    assert_eq!(got.len(), 2);
    let got = reader
        .fetch_events(
            base.clone()
                .since(Timestamp::from(t0 + 5))
                .until(Timestamp::from(t0 + 15)),
            wait,
        )
        .await
        .expect("fetch");
    assert_eq!(
        got.iter().map(|e| e.content.as_str()).collect::<Vec<_>>(),
        ["second"]
    );
    let got = reader
        .fetch_events(Filter::new().id(notes[0].id), wait)
        .await
        .expect("fetch");
    assert_eq!(got.first().map(|e| e.id), Some(notes[0].id));
    // Another author's filter finds none of them.
    let got = reader
        .fetch_events(Filter::new().author(Keys::generate().public_key()), wait)
        .await
        .expect("fetch");
    assert!(got.is_empty());

    // Live: a subscription gets new matching events, until it is closed.
    let mut notifications = reader.notifications();
    let sub = reader
        .subscribe(base.clone().since(Timestamp::from(now())), None)
        .await
        .expect("subscribe")
        .val;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let live = note(&alice, &to, "live", vec![], now());
    publisher.send_event(&live).await.expect("send");
    let received = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Ok(RelayPoolNotification::Event {
                subscription_id,
                event,
                ..
            }) = notifications.recv().await
            {
                if subscription_id == sub {
                    return *event;
                }
            }
        }
    })
    .await
    .expect("live event arrives");
    assert_eq!(received.id, live.id);
    reader.unsubscribe(&sub).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = note(&alice, &to, "after close", vec![], now());
    publisher.send_event(&after).await.expect("send");
    let more = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            if let Ok(RelayPoolNotification::Event { event, .. }) = notifications.recv().await {
                if event.id == after.id {
                    return;
                }
            }
        }
    })
    .await;
    assert!(more.is_err(), "no event after CLOSE");

    // NIP-40: an event expiring in 2 s is served, then not; an expired one is refused.
    let soon = EventBuilder::new(Kind::EncryptedDirectMessage, "soon gone")
        .tag(Tag::public_key(to))
        .tag(Tag::expiration(Timestamp::from(now() + 2)))
        .sign_with_keys(&alice)
        .expect("sign");
    publisher.send_event(&soon).await.expect("send");
    let by_id = Filter::new().id(soon.id);
    assert_eq!(
        reader
            .fetch_events(by_id.clone(), wait)
            .await
            .expect("fetch")
            .len(),
        1
    );
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(reader
        .fetch_events(by_id, wait)
        .await
        .expect("fetch")
        .is_empty());
    let expired = EventBuilder::new(Kind::EncryptedDirectMessage, "already gone")
        .tag(Tag::public_key(to))
        .tag(Tag::expiration(Timestamp::from(now() - 10)))
        .sign_with_keys(&alice)
        .expect("sign");
    let out = publisher.send_event(&expired).await;
    let refused = match out {
        Ok(o) => o.success.is_empty() && o.failed.values().any(|e| e.contains("expired")),
        Err(e) => e.to_string().contains("expired"),
    };
    assert!(refused, "an expired event is refused");

    // NIP-11.
    let (status, text) = common::flow::http_raw(
        addr,
        "GET / HTTP/1.1\r\nHost: relay\r\nAccept: application/nostr+json\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let body = &text[text.find("\r\n\r\n").expect("body") + 4..];
    let info: Value = serde_json::from_str(body).expect("NIP-11 JSON");
    for nip in [1, 4, 11, 40] {
        assert!(
            info["supported_nips"]
                .as_array()
                .expect("nips")
                .contains(&json!(nip)),
            "{info}"
        );
    }
    assert!(info["limitation"]["max_message_length"].as_u64().is_some());
    assert!(text
        .to_ascii_lowercase()
        .contains("access-control-allow-origin: *"));

    // Events survive a restart (they are in redb).
    publisher.disconnect().await;
    reader.disconnect().await;
    let Flow {
        system,
        config,
        dir,
        ..
    } = flow;
    system.stop().await;
    let restarted = satcosign_bridge::dev::start_dev(config, sky(0.0))
        .await
        .expect("restart");
    let client = Client::new(Keys::generate());
    client
        .add_relay(format!("ws://{}", restarted.bridge.nostr.expect("relay")).as_str())
        .await
        .expect("relay");
    client.connect().await;
    let got = client
        .fetch_events(base, wait)
        .await
        .expect("fetch after restart");
    assert_eq!(got.len(), 5, "the five notes are still there");
    restarted.stop().await;
    drop(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_reason_nothing_is_stored_and_others_are_still_served() {
    use common::flow::{sky, Flow};
    let flow = Flow::start(sky(0.0), |c| {
        c.nostr.max_event_bytes = 4096;
        c.nostr.max_message_bytes = 64 * 1024;
        c.nostr.messages_per_minute = 30;
        c.nostr.max_subscriptions = 2;
        c.nostr.max_stored_bytes = 64 * 1024;
        c.nostr.max_stored_bytes_per_author = 16 * 1024;
    })
    .await;
    let addr = flow.system.bridge.nostr.expect("relay on");
    let (keys, other_member) = wallet_members(&flow).await;
    let to = other_member.public_key();
    let mut ws = connect(addr).await;

    // Not JSON, not an array, no type, an unknown type.
    for (raw, needle) in [
        ("{not json", "invalid: malformed JSON"),
        ("{\"a\":1}", "invalid: a message is a JSON array"),
        ("[1, 2]", "first element is its type"),
        (
            "[\"SHOUT\", 1]",
            "unsupported: unknown message type \"SHOUT\"",
        ),
    ] {
        ws.send(Message::text(raw)).await.expect("send");
        let v = next(&mut ws).await;
        assert_eq!(v[0], "NOTICE", "{raw}: {v}");
        assert!(v[1].as_str().expect("text").contains(needle), "{raw}: {v}");
    }
    ws.send(Message::binary(vec![1u8, 2, 3]))
        .await
        .expect("send");
    assert_eq!(next(&mut ws).await[0], "NOTICE");

    // A changed content (wrong id), a forged signature, an oversized event, not an event.
    let good = note(&keys, &to, "good", vec![], now());
    let mut wrong_id = serde_json::to_value(&good).expect("json");
    wrong_id["content"] = json!("changed after signing");
    let other = note(&keys, &to, "other", vec![], now());
    let mut forged = serde_json::to_value(&good).expect("json");
    forged["sig"] = json!(other.sig.to_string());
    let big = note(&keys, &to, &"x".repeat(5000), vec![], now());
    let future = note(&keys, &to, "from the future", vec![], now() + 3600);
    for (event, needle) in [
        (wrong_id, "invalid: event id does not match"),
        (forged, "invalid: bad signature"),
        (
            serde_json::to_value(&big).expect("json"),
            "invalid: event is",
        ),
        (
            serde_json::to_value(&future).expect("json"),
            "invalid: created_at",
        ),
        (json!({"id": "00", "kind": "x"}), "invalid: not an event"),
    ] {
        send(&mut ws, &json!(["EVENT", event])).await;
        let v = next(&mut ws).await;
        assert_eq!(v[0], "OK", "{v}");
        assert_eq!(v[2], false, "{v}");
        assert!(v[3].as_str().expect("reason").starts_with(needle), "{v}");
    }
    // Bad REQs: a bad filter, too many subscriptions.
    send(&mut ws, &json!(["REQ", "s1", {"kinds": "one"}])).await;
    let v = next(&mut ws).await;
    assert_eq!(v[0], "CLOSED", "{v}");
    assert!(
        v[2].as_str()
            .expect("reason")
            .starts_with("invalid: filter 0"),
        "{v}"
    );
    for sub in ["a", "b"] {
        send(&mut ws, &json!(["REQ", sub, {"kinds": [4]}])).await;
        until_eose(&mut ws, sub).await;
    }
    send(&mut ws, &json!(["REQ", "c", {"kinds": [4]}])).await;
    let v = next(&mut ws).await;
    assert_eq!(v[0], "CLOSED", "{v}");
    assert!(
        v[2].as_str().expect("reason").starts_with("blocked:"),
        "{v}"
    );

    // What the service does not need is refused, with NIP-01's blocked: a member's text
    // note, a stranger's message to a member, a member's message to a stranger.
    let text_note = EventBuilder::text_note("hello")
        .sign_with_keys(&keys)
        .expect("sign");
    let stranger = Keys::generate();
    for (event, needle) in [
        (
            &text_note,
            "blocked: this relay carries only direct messages",
        ),
        (
            &note(&stranger, &keys.public_key(), "hi", vec![], now()),
            "blocked: the author is no key of a wallet",
        ),
        (
            &note(&keys, &stranger.public_key(), "hi", vec![], now()),
            "blocked: the message is to no key",
        ),
    ] {
        send(&mut ws, &json!(["EVENT", event])).await;
        let v = next(&mut ws).await;
        assert_eq!(v[2], false, "{v}");
        assert!(v[3].as_str().expect("reason").starts_with(needle), "{v}");
    }

    // The good event is accepted once, then is a duplicate.
    send(&mut ws, &json!(["EVENT", good])).await;
    let v = next(&mut ws).await;
    assert_eq!(v, json!(["OK", good.id.to_hex(), true, ""]));
    // (subscriptions a and b see it live)
    for _ in 0..2 {
        assert_eq!(next(&mut ws).await[0], "EVENT");
    }
    send(&mut ws, &json!(["EVENT", good])).await;
    let v = next(&mut ws).await;
    assert_eq!(v[2], true);
    assert!(
        v[3].as_str().expect("text").starts_with("duplicate:"),
        "{v}"
    );

    // A flood: past the rate, events are refused as rate-limited.
    let mut limited = 0;
    for i in 0..40 {
        let e = note(&keys, &to, &format!("flood {i}"), vec![], now());
        send(&mut ws, &json!(["EVENT", e])).await;
        loop {
            let v = next(&mut ws).await;
            if v[0] == "OK" {
                if v[2] == false {
                    assert!(
                        v[3].as_str().expect("text").starts_with("rate-limited:"),
                        "{v}"
                    );
                    limited += 1;
                }
                break;
            }
        }
    }
    assert!(limited > 0, "a flood is rate-limited");

    // A message over the size limit closes that connection, with a reason.
    ws.send(Message::text(format!(
        "[\"EVENT\", \"{}\"]",
        "y".repeat(100_000)
    )))
    .await
    .expect("send");
    let mut reason = None;
    while let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
        if let Message::Text(t) = m {
            let v: Value = serde_json::from_str(&t).expect("json");
            if v[0] == "NOTICE" {
                reason = v[1].as_str().map(str::to_owned);
            }
        }
    }
    let reason = reason.expect("a NOTICE before closing");
    assert!(reason.starts_with("error:"), "{reason}");

    // Meanwhile another client is served, and nothing rejected was stored.
    let mut other_ws = connect(addr).await;
    send(&mut other_ws, &json!(["REQ", "all", {}])).await;
    let stored = until_eose(&mut other_ws, "all").await;
    let contents: Vec<&str> = stored
        .iter()
        .map(|v| v[2]["content"].as_str().expect("content"))
        .collect();
    assert!(contents.contains(&"good"));
    for bad in ["changed after signing", "from the future"] {
        assert!(!contents.contains(&bad), "{bad} was stored");
    }
    assert!(
        !contents.iter().any(|c| c.len() >= 5000),
        "the big event was stored"
    );
    assert_eq!(
        stored.len(),
        1 + (40 - limited),
        "good + the accepted flood"
    );
    flow.system.stop().await;
}

/// Sends one event on a fresh connection; returns the relay's OK message.
async fn publish(addr: std::net::SocketAddr, event: &Event) -> Value {
    let mut ws = connect(addr).await;
    send(&mut ws, &json!(["EVENT", event])).await;
    next(&mut ws).await
}

/// The stored events matching `filter`.
async fn stored(addr: std::net::SocketAddr, filter: Value) -> Vec<Value> {
    let mut ws = connect(addr).await;
    send(&mut ws, &json!(["REQ", "q", filter])).await;
    until_eose(&mut ws, "q").await
}

/// A registered wallet whose user sends a PSBT by Nostr, as Electrum's psbt_nostr does; the
/// registered email asks, the user confirms, the satellite signs. Returns the wallet, the
/// direct message, the user's keys, the satellite identity and the request id.
async fn nostr_request_signed(
    flow: &common::flow::Flow,
    salt: u32,
) -> (
    satcosign_cosigner::testkit::TestWallet,
    Event,
    Keys,
    PublicKey,
    String,
) {
    let w = common::flow::test_wallet(flow).await;
    flow.register(&w.descriptor).await;
    let (dm, user, satellite) = common::flow::nostr_dm(
        &w,
        &w.satellite.electrum_xpub(),
        &w.typical_signed_psbt(1, salt),
    );
    let addr = flow.system.bridge.nostr.expect("relay");
    assert_eq!(publish(addr, &dm).await[2], true);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let request = loop {
        let mut ids = Vec::new();
        for id in flow.inbox.request_ids() {
            if flow.status(&id).await["kind"] == "sign" {
                ids.push(id);
            }
        }
        if let [id] = ids.as_slice() {
            break id.clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no signing email: {ids:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let code = flow.inbox.code(&request).await;
    flow.ok("request.confirm", vec![json!(request), json!(code)])
        .await;
    let done = flow.wait_state(&request, "delivered", 60).await;
    assert_eq!(done["final_state"], "signed", "{done}");
    (w, dm, user, satellite, request)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_psbt_by_nostr_is_gated_signed_and_answered_once() {
    use common::flow::{sky, Flow};
    let flow = Flow::start(sky(0.0), |_| {}).await;
    let addr = flow.system.bridge.nostr.expect("relay");
    let (_, dm, user, satellite, _) = nostr_request_signed(&flow, 77).await;

    // One answer, from the satellite's identity, with the satellite's signature in it.
    let answers =
        json!({"kinds": [4], "authors": [satellite.to_hex()], "#p": [user.public_key().to_hex()]});
    let replies = stored(addr, answers.clone()).await;
    assert_eq!(replies.len(), 1, "{replies:?}");
    let plain = nostr_sdk::nips::nip04::decrypt(
        user.secret_key(),
        &satellite,
        replies[0][2]["content"].as_str().expect("content"),
    )
    .expect("the user decrypts the answer");
    let tx = serde_json::from_str::<Value>(&plain).expect("json")["tx"]
        .as_str()
        .expect("tx")
        .to_owned();
    let signed = bitcoin::Psbt::deserialize(&hex::decode(tx).expect("hex")).expect("psbt");
    assert_eq!(
        signed.inputs[0].partial_sigs.len(),
        2,
        "the user's and the satellite's signatures"
    );

    // The same event again is a duplicate and opens nothing.
    let again = publish(addr, &dm).await;
    assert!(
        again[3].as_str().expect("text").starts_with("duplicate:"),
        "{again}"
    );

    // (Restarts, and a kill before the message became a request, are in crash_resume.rs.)
    assert_eq!(
        flow.inbox.request_ids().len(),
        2,
        "the registration and one request"
    );
}

/// Every Nostr key a stranger can derive from `texts`: each xpub-looking word's Electrum
/// identity (in both spellings), each word's, and each 64-hex word taken as a secret.
fn derivable_keys(texts: &[String]) -> Vec<Keys> {
    let mut out = Vec::new();
    for text in texts {
        for word in text.split(|c: char| !c.is_ascii_alphanumeric()) {
            if word.len() < 20 {
                continue;
            }
            if let Some(x) = satcosign_cosigner::keys::parse_any_xpub(word) {
                for s in [satcosign_cosigner::keys::slip132(&x), x.to_string()] {
                    out.extend(satcosign_bridge::nostr_cosigner::keys_for(&s));
                }
            }
            out.extend(satcosign_bridge::nostr_cosigner::keys_for(word));
            if let Ok(secret) = SecretKey::from_hex(word) {
                out.push(Keys::new(secret));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_with_all_the_bridge_publishes_reads_and_forges_nothing() {
    use common::flow::{http_raw, sky, Flow};
    let flow = Flow::start(sky(0.0), |_| {}).await;
    let addr = flow.system.bridge.nostr.expect("relay");
    // The wallet's user asks by Nostr, as Electrum's psbt_nostr does, and is answered.
    let (w, _, user, satellite, request) = nostr_request_signed(&flow, 5).await;

    // The stranger gathers everything the bridge publishes, and a key of its own.
    let mut published = vec![
        flow.ok("satellite.info", vec![]).await.to_string(),
        flow.ok("server.features", vec![]).await.to_string(),
        flow.ok("satellite.new_key", vec![]).await.to_string(),
        http_raw(
            flow.http_addr(),
            "POST /key HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )
        .await
        .1,
        http_raw(
            addr,
            "GET / HTTP/1.1\r\nHost: x\r\nAccept: application/nostr+json\r\nConnection: close\r\n\r\n",
        )
        .await
        .1,
    ];
    let events = stored(addr, json!({"kinds": [4]})).await;
    assert!(
        events.len() >= 2,
        "the stranger sees the request and its answer: {events:?}"
    );
    published.extend(events.iter().map(Value::to_string));
    let keys = derivable_keys(&published);
    assert!(
        keys.len() >= 4,
        "the stranger has keys to try: {}",
        keys.len()
    );
    for e in &events {
        let e = &e[2];
        let content = e["content"].as_str().expect("content");
        let mut parties: Vec<PublicKey> =
            vec![PublicKey::from_hex(e["pubkey"].as_str().expect("pk")).expect("pk")];
        for t in e["tags"].as_array().expect("tags") {
            if t[0] == "p" {
                parties.push(PublicKey::from_hex(t[1].as_str().expect("p")).expect("p"));
            }
        }
        for k in &keys {
            for p in &parties {
                assert!(
                    nostr_sdk::nips::nip04::decrypt(k.secret_key(), p, content).is_err(),
                    "the stranger decrypted {e}"
                );
            }
        }
        assert!(
            !e.to_string().contains(&request),
            "stranger-readable data carries no request id: {e}"
        );
    }
    // Their own satellite key's identity, which they can derive, speaks for no one.
    let own: satcosign_cosigner::keys::AccountKey = serde_json::from_str::<Value>(&published[2])
        .expect("json")["descriptor_key"]
        .as_str()
        .expect("key")
        .parse()
        .expect("key");
    let own_identity =
        satcosign_bridge::nostr_cosigner::keys_for(&own.electrum_xpub()).expect("identity");
    let forged_by = |keys: &Keys, to: &PublicKey, text: &str| {
        EventBuilder::new(
            Kind::EncryptedDirectMessage,
            nostr_sdk::nips::nip04::encrypt(keys.secret_key(), to, text).expect("encrypt"),
        )
        .tags([Tag::public_key(*to)])
        .sign_with_keys(keys)
        .expect("sign")
    };
    let ok = publish(
        addr,
        &forged_by(&own_identity, &user.public_key(), "{\"tx\":\"00\"}"),
    )
    .await;
    assert_eq!(ok[2], false, "{ok}");
    assert!(
        ok[3].as_str().expect("why").starts_with("restricted:"),
        "{ok}"
    );
    // Even holding the wallet's real satellite identity (as if its xpub leaked), a forged
    // answer is refused and never reaches the wallet's client.
    let wallet_identity =
        satcosign_bridge::nostr_cosigner::keys_for(&w.satellite.electrum_xpub()).expect("id");
    assert_eq!(wallet_identity.public_key(), satellite);
    let forged = forged_by(
        &wallet_identity,
        &user.public_key(),
        "{\"tx\":\"00\",\"label\":\"forged\"}",
    );
    let ok = publish(addr, &forged).await;
    assert_eq!(ok[2], false, "{ok}");
    assert!(
        ok[3].as_str().expect("why").starts_with("restricted:"),
        "{ok}"
    );
    let to_user = stored(
        addr,
        json!({"kinds": [4], "#p": [user.public_key().to_hex()]}),
    )
    .await;
    assert!(!to_user.is_empty(), "the bridge's answer is there");
    assert!(
        to_user
            .iter()
            .all(|e| e[2]["id"] != json!(forged.id.to_hex())),
        "the forged answer reached the wallet's client"
    );
    // A direct message between strangers is not this relay's to carry.
    let (a, b) = (Keys::generate(), Keys::generate());
    let ok = publish(addr, &forged_by(&a, &b.public_key(), "hi")).await;
    assert_eq!(ok[2], false, "{ok}");
    assert!(ok[3].as_str().expect("why").starts_with("blocked:"), "{ok}");
    flow.system.stop().await;
}

/// NIP-42: the relay's challenge comes first; an answer proves a key; a wrong or stale
/// answer is refused with its reason; one connection proves at most 16 keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authentication_proves_keys_names_what_is_wrong_and_is_bounded() {
    use common::flow::{sky, Flow};
    let flow = Flow::start(sky(0.0), |c| c.nostr.messages_per_minute = 1000).await;
    let mut ws = connect(flow.system.bridge.nostr.expect("relay")).await;
    let first = loop {
        let m = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("in time")
            .expect("open")
            .expect("frame");
        if let Message::Text(t) = m {
            break serde_json::from_str::<Value>(&t).expect("json");
        }
    };
    assert_eq!(first[0], "AUTH", "{first}");
    let challenge = first[1].as_str().expect("challenge").to_owned();
    let auth = |keys: &Keys, answer: &str, at: u64| {
        EventBuilder::new(Kind::Custom(22242), "")
            .tag(Tag::custom(TagKind::Challenge, [answer]))
            .custom_created_at(Timestamp::from(at))
            .sign_with_keys(keys)
            .expect("sign")
    };
    let keys = Keys::generate();
    send(&mut ws, &json!(["AUTH", auth(&keys, "not it", now())])).await;
    let wrong = next(&mut ws).await;
    assert_eq!(wrong[2], false, "{wrong}");
    assert!(
        wrong[3].as_str().expect("why").contains("challenge"),
        "{wrong}"
    );
    send(
        &mut ws,
        &json!(["AUTH", auth(&keys, &challenge, now() - 3600)]),
    )
    .await;
    let stale = next(&mut ws).await;
    assert!(stale[3].as_str().expect("why").contains("time"), "{stale}");
    for i in 0..20 {
        send(
            &mut ws,
            &json!(["AUTH", auth(&Keys::generate(), &challenge, now())]),
        )
        .await;
        let answer = next(&mut ws).await;
        if i < 16 {
            assert_eq!(answer[2], true, "key {i}: {answer}");
        } else {
            assert_eq!(answer[2], false, "key {i}: {answer}");
            assert!(
                answer[3].as_str().expect("why").starts_with("blocked:"),
                "{answer}"
            );
        }
    }
    flow.system.stop().await;
}
