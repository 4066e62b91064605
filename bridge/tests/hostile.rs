//! The bridge under hostile clients, over real sockets against the real `dev` binary: a
//! client that never reads its answers, one that takes every connection slot, connections
//! piled on the Nostr relay, limits that once held on one transport only, and costly checks
//! asked for with no right to them. While each attack runs, a well-behaved client on its
//! own connection keeps being answered, the bridge's memory and open files stay within
//! bounds (read from `/proc`), and what the well-behaved client stored is still there.
//!
//! The attacker's sockets come from 127.0.0.2 (and its neighbours, when it needs several
//! addresses), the well-behaved client's from 127.0.0.1: peers, as on a real network.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};

use common::process::BridgeProcess;

/// A bridge whose limits are small enough to reach in a test.
fn hostile_bridge(dir: &Path) -> BridgeProcess {
    hostile_bridge_with(dir, "")
}

/// As [`hostile_bridge`], with `more` TOML appended to its configuration.
fn hostile_bridge_with(dir: &Path, more: &str) -> BridgeProcess {
    std::fs::create_dir_all(dir).expect("dir");
    let config = dir.join("limits.toml");
    std::fs::write(
        &config,
        r#"
[electrum]
max_connections = 64
max_connections_per_peer = 8
max_unsent_bytes = 1000000
max_response_bytes = 2000000
max_subscriptions = 4
max_batch = 100

[http]
max_connections_per_peer = 8

[mailbox]
max_total_bytes = 20000000
puts_per_minute_per_peer = 20
put_bytes_per_minute_per_peer = 100000000

[nostr]
max_connections = 64
max_connections_per_peer = 8
header_timeout_secs = 2
idle_timeout_secs = 30
max_stored_bytes = 4000000
max_stored_bytes_per_author = 1000000
messages_per_minute = 1000
"#
        .to_owned()
            + more,
    )
    .expect("config");
    BridgeProcess::dev(
        &dir.join("data"),
        &["--config", &config.to_string_lossy()],
        &[],
    )
}

fn addr_of(b: &BridgeProcess, what: &str) -> SocketAddr {
    b.printed_after(what)
        .unwrap_or_else(|| panic!("no {what} in {:?}", b.printed))
        .trim_start_matches("ws://")
        .parse()
        .expect("address")
}

/// A TCP connection from the attacker's address.
async fn from_attacker(to: SocketAddr) -> std::io::Result<TcpStream> {
    from_address(2, to).await
}

/// A TCP connection from 127.0.0.`host`.
async fn from_address(host: u8, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from(([127, 0, 0, host], 0)))?;
    socket.connect(to).await
}

/// Bytes of the bridge's database files.
fn database_bytes(data: &Path) -> u64 {
    std::fs::read_dir(data)
        .expect("data dir")
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "redb"))
        .map(|e| e.metadata().map_or(0, |m| m.len()))
        .sum()
}

/// Whether `/metrics` counts at least one hit of `limit`.
fn hit(metrics: &str, limit: &str) -> bool {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&format!("satcosign_limit_hits_total{{limit=\"{limit}\"}} ")))
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|n| n > 0)
}

fn proc_status(pid: u32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("field")
}

/// Resident memory, MB.
fn rss_mb(pid: u32) -> u64 {
    proc_status(pid, "VmRSS:") / 1024
}

fn open_files(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("proc fd")
        .count()
}

/// The well-behaved client: one connection from 127.0.0.1, asking and reading in turn.
struct Client {
    reader: BufReader<tokio::net::tcp::OwnedReadHalf>,
    writer: tokio::net::tcp::OwnedWriteHalf,
    next: u64,
}

impl Client {
    async fn connect(to: SocketAddr) -> Client {
        let (r, w) = TcpStream::connect(to).await.expect("connect").into_split();
        Client {
            reader: BufReader::new(r),
            writer: w,
            next: 1,
        }
    }

    async fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.next;
        self.next += 1;
        let line = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        self.writer
            .write_all(format!("{line}\n").as_bytes())
            .await
            .expect("write");
        let mut answer = String::new();
        tokio::time::timeout(Duration::from_secs(20), self.reader.read_line(&mut answer))
            .await
            .unwrap_or_else(|_| panic!("{method} went unanswered for 20 s"))
            .expect("read");
        let v: Value = serde_json::from_str(&answer).expect("json");
        assert_eq!(v["id"], id, "{v}");
        v
    }

    /// `server.ping`, `cosigner.get` of its own slot and `request.status`: every answer
    /// arrives and its slot still holds what it stored.
    async fn still_served(&mut self, slot: &str, message: &str) {
        assert_eq!(
            self.call("server.ping", json!([])).await["result"],
            Value::Null
        );
        let got = self.call("cosigner.get", json!([slot])).await;
        assert_eq!(
            got["result"],
            json!(message),
            "the well-behaved client's message is kept"
        );
        let status = self
            .call(
                "request.status",
                json!(["00000000000000000000000000000000"]),
            )
            .await;
        assert!(status["error"]["code"].is_i64(), "{status}");
    }
}

fn slot(tag: u8) -> String {
    hex::encode([tag; 32])
}

fn message(bytes: usize, tag: u8) -> String {
    base64::engine::general_purpose::STANDARD.encode(vec![tag; bytes])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_holds_a_bounded_queue_and_others_are_served() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let b = hostile_bridge(tmp.path());
    let tcp = addr_of(&b, "electrum tcp: ");
    let pid = b.pid();

    let mut good = Client::connect(tcp).await;
    let mine = message(1000, 7);
    assert_eq!(
        good.call("cosigner.put", json!([slot(1), mine])).await["result"],
        Value::Null
    );
    // The attacker stores a large message, then asks for it over and over without reading.
    let big = message(700_000, 9);
    assert!(good.call("cosigner.put", json!([slot(2), big])).await["error"].is_null());
    good.still_served(&slot(1), &mine).await;
    let before = rss_mb(pid);

    let get = format!(
        "{}\n",
        json!({"jsonrpc": "2.0", "id": 1, "method": "cosigner.get", "params": [slot(2)]})
    );
    let mut attackers = Vec::new();
    for _ in 0..4 {
        let mut s = from_attacker(tcp).await.expect("connect");
        // 300 answers of 0.9 MB each would be 280 MB per connection if all were queued.
        let mut sent = 0;
        for _ in 0..300 {
            match tokio::time::timeout(Duration::from_secs(2), s.write_all(get.as_bytes())).await {
                Ok(Ok(())) => sent += 1,
                // The bridge stopped reading this connection: the budget holds.
                _ => break,
            }
        }
        assert!(sent > 0);
        attackers.push(s);
        good.still_served(&slot(1), &mine).await;
    }
    for _ in 0..3 {
        good.still_served(&slot(1), &mine).await;
    }
    let during = rss_mb(pid);
    assert!(
        during < before + 64,
        "4 never-reading clients grew the bridge from {before} MB to {during} MB"
    );

    // A batch whose answer would be over the limit is refused with an error, and the
    // connection that asked stays usable.
    let batch: Vec<Value> = (0..100)
        .map(|i| json!({"jsonrpc": "2.0", "id": i + 10, "method": "cosigner.get", "params": [slot(2)]}))
        .collect();
    let mut asker = Client::connect(tcp).await;
    asker
        .writer
        .write_all(format!("{}\n", Value::Array(batch)).as_bytes())
        .await
        .expect("write");
    let mut answer = String::new();
    asker.reader.read_line(&mut answer).await.expect("read");
    let v: Value = serde_json::from_str(&answer).expect("json");
    assert_eq!(v["error"]["code"], -32008, "{v}");
    assert!(answer.len() < 1000, "an error, not the answers");
    asker.still_served(&slot(1), &mine).await;

    // The limit's hits are counted for the operator.
    let metrics = b.metrics().await;
    assert!(
        metrics.contains("satcosign_limit_hits_total{limit=\"electrum_unsent_bytes\"}")
            && !metrics.contains("satcosign_limit_hits_total{limit=\"electrum_unsent_bytes\"} 0\n"),
        "{metrics}"
    );
    drop(attackers);
    good.still_served(&slot(1), &mine).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_peer_cannot_take_every_connection_slot() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let b = hostile_bridge(tmp.path());
    let tcp = addr_of(&b, "electrum tcp: ");
    let relay = addr_of(&b, "nostr relay: ");
    let http: SocketAddr = b.http.trim_start_matches("http://").parse().expect("http");
    let pid = b.pid();
    let mut good = Client::connect(tcp).await;
    let mine = message(100, 3);
    good.call("cosigner.put", json!([slot(5), mine])).await;
    let files_before = open_files(pid);

    // 300 connections to each listener from one peer: its share (8) is kept, the rest
    // closed at once.
    let mut held = Vec::new();
    for to in [tcp, relay, http] {
        for _ in 0..300 {
            if let Ok(s) = from_attacker(to).await {
                held.push(s);
            }
        }
    }
    // A refused connection is closed by the bridge: reading it ends at once.
    let mut closed = 0;
    for s in &mut held {
        let mut byte = [0u8; 1];
        if let Ok(Ok(0)) = tokio::time::timeout(Duration::from_millis(200), s.read(&mut byte)).await
        {
            closed += 1;
        }
    }
    assert!(closed >= 3 * (300 - 8), "closed {closed} of {}", held.len());
    let files = open_files(pid);
    assert!(
        files <= files_before + 3 * 8 + 8,
        "the bridge holds {files} files (from {files_before})"
    );
    good.still_served(&slot(5), &mine).await;
    // Another client from the well-behaved address still gets in, on TCP and on HTTP.
    let mut other = Client::connect(tcp).await;
    other.still_served(&slot(5), &mine).await;
    assert_eq!(b.call("server.ping", vec![]).await, Value::Null);

    // The relay closes a connection that never sends its request headers, so a peer that
    // holds its share idle gives the slots back.
    drop(held);
    let mut lazy = from_attacker(relay)
        .await
        .expect("a slot after the others closed");
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(20), lazy.read(&mut byte)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "closed after the header timeout: {read:?}"
    );
    let metrics = b.metrics().await;
    for limit in [
        "electrum_connections_per_peer",
        "nostr_connections_per_peer",
        "http_connections_per_peer",
    ] {
        assert!(
            !metrics.contains(&format!(
                "satcosign_limit_hits_total{{limit=\"{limit}\"}} 0\n"
            )),
            "{limit} hits are counted: {metrics}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_sending_past_its_read_share_is_slowed_and_others_are_served() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let b = hostile_bridge(tmp.path());
    let tcp = addr_of(&b, "electrum tcp: ");
    let relay = addr_of(&b, "nostr relay: ");
    let mut good = Client::connect(tcp).await;
    let mine = message(2000, 4);
    good.call("cosigner.put", json!([slot(6), mine])).await;

    // The attacker streams oversized lines (each refused) over two connections: 13 MB,
    // about 3x its burst of 4 MB.
    let long_line = format!("{}\n", "x".repeat(1_100_000));
    let mut attackers = tokio::task::JoinSet::new();
    for _ in 0..2 {
        let line = long_line.clone();
        attackers.spawn(async move {
            let s = from_attacker(tcp).await.expect("connect");
            let (r, mut w) = s.into_split();
            let mut r = BufReader::new(r);
            let mut refused = 0;
            for _ in 0..6 {
                w.write_all(line.as_bytes()).await.expect("write");
                let mut answer = String::new();
                r.read_line(&mut answer).await.expect("read");
                assert!(
                    answer.contains("-32600") || answer.contains("too big"),
                    "{answer}"
                );
                refused += 1;
            }
            refused
        });
    }
    // While it runs, the well-behaved client (another address) is answered every time.
    let mut calls = 0;
    while attackers.len() == 2 && calls < 2000 {
        good.still_served(&slot(6), &mine).await;
        calls += 1;
    }
    let mut refused = 0;
    while let Some(n) = attackers.join_next().await {
        refused += n.expect("attacker task");
    }
    // Every oversized line got its error and the connection stayed usable: slowed, not cut.
    assert_eq!(refused, 12);
    good.still_served(&slot(6), &mine).await;
    let metrics = b.metrics().await;
    assert!(hit(&metrics, "read_bytes_per_peer"), "{metrics}");
    // The relay's port shares the same peer budget; it is still open to the attacker.
    let mut s = from_attacker(relay)
        .await
        .expect("relay still admits the peer");
    s.write_all(
        b"GET / HTTP/1.1\r\nHost: x\r\nAccept: application/nostr+json\r\nConnection: close\r\n\r\n",
    )
    .await
    .expect("write");
    let mut text = String::new();
    tokio::time::timeout(Duration::from_secs(20), s.read_to_string(&mut text))
        .await
        .expect("answered once its share refills")
        .expect("read");
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_transport_has_the_same_batch_and_subscription_limits() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let b = hostile_bridge(tmp.path());
    let tcp = addr_of(&b, "electrum tcp: ");
    // HTTP: a batch over max_batch (100) is refused, as on TCP.
    let batch: Vec<Value> = (0..101)
        .map(|i| json!({"jsonrpc": "2.0", "id": i, "method": "server.ping", "params": []}))
        .collect();
    let body = Value::Array(batch.clone()).to_string();
    let http: SocketAddr = b.http.trim_start_matches("http://").parse().expect("http");
    let (status, text) = common::flow::http_raw(
        http,
        &format!(
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    )
    .await;
    assert!(status == 200 || status == 400, "{text}");
    assert!(
        text.contains("-32010") || text.to_lowercase().contains("batch"),
        "{text}"
    );
    let mut c = Client::connect(tcp).await;
    c.writer
        .write_all(format!("{}\n", Value::Array(batch)).as_bytes())
        .await
        .expect("write");
    let mut line = String::new();
    c.reader.read_line(&mut line).await.expect("read");
    assert!(line.contains("-32010"), "{line}");

    // TCP: at most max_subscriptions (4) request.subscribe per connection.
    let mut ids = Vec::new();
    for tag in 0..5u8 {
        let (_, r) = register_wallet(&b, &format!("s{tag}")).await;
        ids.push(r["request_id"].as_str().expect("id").to_owned());
    }
    for (i, id) in ids.iter().enumerate() {
        let v = c.call("request.subscribe", json!([id])).await;
        if i < 4 {
            assert!(v["error"].is_null(), "{v}");
        } else {
            assert_eq!(v["error"]["code"], -32025, "{v}");
            assert!(
                v["error"]["message"]
                    .as_str()
                    .expect("m")
                    .contains("4 subscriptions"),
                "{v}"
            );
        }
    }
    // Closing the connection gives the slots back.
    drop(c);
    let mut again = Client::connect(tcp).await;
    let v = again.call("request.subscribe", json!([ids[4]])).await;
    assert!(v["error"].is_null(), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cheap_checks_come_before_the_upstream_server_is_asked() {
    use common::chain::ChainServer;
    use common::flow::{sky, test_wallet, Flow};
    use satcosign_cosigner::testkit::{foreign_script, SpendSpec};
    let upstream = ChainServer::start(Vec::new()).await;
    let url = upstream.url.clone();
    let flow = Flow::start(sky(0.0), move |c| c.upstream.url = url).await;
    let b64 = |p: &bitcoin::Psbt| base64::engine::general_purpose::STANDARD.encode(p.serialize());

    // A wallet registered and never confirmed: its requests are refused before the
    // upstream server hears of them.
    let pending = test_wallet(&flow).await;
    let r = flow
        .ok(
            "wallet.register",
            vec![
                json!(pending.descriptor),
                json!("p@example.org"),
                json!("P"),
            ],
        )
        .await;
    let wid = r["wallet_id"].as_str().expect("id").to_owned();
    let (code, message, _) = flow
        .err(
            "request.submit",
            vec![json!(wid), json!(b64(&pending.typical_signed_psbt(3, 1)))],
        )
        .await;
    assert_eq!(code, satcosign_bridge::rpc_error::WRONG_STATE, "{message}");
    assert_eq!(upstream.lookups(), 0, "the upstream server was asked");

    // For an active wallet, a PSBT past the size a hardware cosigner is tested with is
    // refused at once.
    let active = test_wallet(&flow).await;
    let active_id = flow.register(&active.descriptor).await;
    let big = active.psbt(&SpendSpec {
        inputs: (0..251).map(|i| (0, i, 10_000)).collect(),
        payments: vec![(foreign_script(1), 2_000_000)],
        change: None,
    });
    let (code, message, data) = flow
        .err("request.submit", vec![json!(active_id), json!(b64(&big))])
        .await;
    assert_eq!(
        code,
        satcosign_bridge::rpc_error::INVALID_PARAMS,
        "{message}"
    );
    assert!(
        message.contains("251 inputs") && message.contains("at most 250"),
        "{message}"
    );
    assert_eq!(data["param"], "psbt");
    assert_eq!(upstream.lookups(), 0);
    flow.system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_email_of_many_payments_lists_twenty_and_sums_the_rest() {
    use common::flow::{sky, test_wallet, Flow};
    use satcosign_cosigner::testkit::{foreign_script, SpendSpec};
    let flow = Flow::start(sky(0.0), |_| {}).await;
    let w = test_wallet(&flow).await;
    let wid = flow.register(&w.descriptor).await;
    let mut psbt = w.psbt(&SpendSpec {
        inputs: vec![(0, 0, 10_000_000)],
        payments: (0..30u8)
            .map(|i| (foreign_script(i + 1), 100_000))
            .collect(),
        change: Some((0, 6_990_000)),
    });
    w.sign_with(&w.user, &mut psbt);
    let id = flow.submit(&wid, &psbt).await;
    let code = flow.inbox.code(&id).await;
    assert!(!code.is_empty());
    let mail = flow
        .inbox
        .all()
        .into_iter()
        .map(|m| satcosign_bridge::demo::decode_quoted_printable(&m))
        .find(|m| m.contains(&id) && m.contains("Pay #1"))
        .expect("the request's email");
    assert!(
        mail.contains("Pay #20") && !mail.contains("Pay #22"),
        "{mail}"
    );
    assert!(
        mail.contains("Pay #21 to #30")
            && mail.contains("0.01000000 BTC in all, to 10 more addresses"),
        "{mail}"
    );
    assert!(mail.contains("Total leaving the wallet"), "{mail}");
    assert!(
        mail.len() < 40_000,
        "a readable email: {} bytes",
        mail.len()
    );
    flow.system.stop().await;
}

/// A wallet registered (not yet confirmed) over HTTP from the well-behaved address; its
/// user's Nostr identity, which the relay takes direct messages from.
async fn registered_member(b: &BridgeProcess, tag: u8) -> (nostr_sdk::Keys, nostr_sdk::Keys) {
    let (w, r) = register_wallet(b, &format!("m{tag}")).await;
    assert!(r["request_id"].is_string(), "{r}");
    let keys_for = satcosign_bridge::nostr_cosigner::keys_for;
    (
        keys_for(&w.user.public().electrum_xpub()).expect("key"),
        keys_for(&w.backup.public().electrum_xpub()).expect("key"),
    )
}

/// Registers a wallet of its own members (named by `tag`) with a new satellite key; returns
/// it and the registration's answer.
async fn register_wallet(
    b: &BridgeProcess,
    tag: &str,
) -> (satcosign_cosigner::testkit::TestWallet, Value) {
    let w = satcosign_cosigner::testkit::TestWallet::with_members(
        &format!("hostile user {tag}"),
        &format!("hostile backup {tag}"),
        b.call("satellite.new_key", vec![]).await["descriptor_key"]
            .as_str()
            .expect("key")
            .parse()
            .expect("key"),
    );
    let r = b
        .call(
            "wallet.register",
            vec![
                json!(w.descriptor),
                json!(format!("{tag}@example.org")),
                json!(tag),
            ],
        )
        .await;
    (w, r)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_keeps_only_wallets_messages_within_its_caps() {
    use nostr_sdk::prelude::{EventBuilder, Keys, Kind, Tag};
    let tmp = tempfile::tempdir().expect("tempdir");
    let b = hostile_bridge(tmp.path());
    let tcp = addr_of(&b, "electrum tcp: ");
    let relay = addr_of(&b, "nostr relay: ");
    let pid = b.pid();
    let data = tmp.path().join("data");
    let mut good = Client::connect(tcp).await;
    let mine = message(100, 4);
    good.call("cosigner.put", json!([slot(6), mine])).await;
    let members = [
        registered_member(&b, 1).await,
        registered_member(&b, 2).await,
        registered_member(&b, 3).await,
    ];
    let rss_before = rss_mb(pid);
    let db_before = database_bytes(&data);
    let dm = |from: &Keys, to: &Keys, i: usize| {
        EventBuilder::new(
            Kind::EncryptedDirectMessage,
            format!("{i}{}", "A".repeat(100_000)),
        )
        .tag(Tag::public_key(to.public_key()))
        .sign_with_keys(from)
        .expect("sign")
    };

    // Strangers: 100 kB events of other kinds, and direct messages between themselves.
    let mut ws = tokio_tungstenite::client_async(
        format!("ws://{relay}"),
        tokio_tungstenite::MaybeTlsStream::Plain(from_attacker(relay).await.expect("connect")),
    )
    .await
    .expect("websocket")
    .0;
    let (a, z) = (Keys::generate(), Keys::generate());
    for i in 0..20 {
        let note = EventBuilder::text_note("B".repeat(100_000))
            .sign_with_keys(&a)
            .expect("sign");
        let ok = common::flow::publish_on(&mut ws, &note).await;
        assert!(ok[3].as_str().expect("why").starts_with("blocked:"), "{ok}");
        let ok = common::flow::publish_on(&mut ws, &dm(&a, &z, i)).await;
        assert!(ok[3].as_str().expect("why").starts_with("blocked:"), "{ok}");
        if i % 5 == 0 {
            good.still_served(&slot(6), &mine).await;
        }
    }
    // Members of registered wallets, each flooding its cosigner: each stops at its own
    // cap (1 MB), and all of them at the relay's (4 MB).
    let mut stored = 0;
    let mut refused_author = 0;
    let mut refused_total = 0;
    let pairs = members.iter().flat_map(|(x, y)| [(x, y), (y, x)]);
    for (from, to) in pairs {
        for i in 0..15 {
            let ok = common::flow::publish_on(&mut ws, &dm(from, to, i)).await;
            if ok[2] == true {
                stored += 1;
            } else {
                let why = ok[3].as_str().expect("why");
                if why.contains("nostr.max_stored_bytes_per_author") {
                    refused_author += 1;
                } else if why.contains("nostr.max_stored_bytes") {
                    refused_total += 1;
                } else {
                    panic!("{ok}");
                }
            }
            if i % 5 == 0 {
                good.still_served(&slot(6), &mine).await;
            }
        }
    }
    assert!(
        refused_author > 0 && refused_total > 0,
        "{stored} stored, {refused_author} over an author's cap, {refused_total} over the relay's"
    );
    assert!(
        stored * 100_000 <= 4_000_000,
        "{stored} events of 100 kB kept"
    );
    let rss = rss_mb(pid);
    let db = database_bytes(&data);
    assert!(
        rss < rss_before + 64,
        "RSS grew from {rss_before} MB to {rss} MB"
    );
    assert!(
        db < db_before + 3 * 4_000_000 + (4 << 20),
        "the database grew from {db_before} to {db} bytes"
    );
    good.still_served(&slot(6), &mine).await;
    let metrics = b.metrics().await;
    assert!(hit(&metrics, "nostr_stored_bytes"), "{metrics}");
    assert!(hit(&metrics, "nostr_stored_bytes_per_author"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mailbox_holds_its_quota_and_each_peer_its_put_rate() {
    let tmp = tempfile::tempdir().expect("tempdir");
    // The mailbox's own limits are under test: the read rate per peer, which would slow
    // each attacker to a few puts a minute before they are reached, is set out of the way.
    let b = hostile_bridge_with(
        tmp.path(),
        "\n[limits]\nread_bytes_per_second_per_peer = 1000000000\nread_burst_bytes_per_peer = 1000000000\n",
    );
    let tcp = addr_of(&b, "electrum tcp: ");
    let data = tmp.path().join("data");
    let mut good = Client::connect(tcp).await;
    let mine = message(2000, 8);
    good.call("cosigner.put", json!([slot(7), mine])).await;
    let db_before = database_bytes(&data);

    // Eight attacker addresses, each putting 700 kB messages into fresh slots as fast as it
    // can: each is held to 20 puts a minute, and all of them to the 20 MB quota.
    let big = message(700_000, 1);
    let (mut stored, mut rate_limited, mut full) = (0, 0, 0);
    // Each peer's 30 puts go past its 20 tokens; the bucket refills one put every 3 s, so
    // a slow disk earns a peer a few more: those are counted, not assumed away.
    let mut must_be_refused = 0;
    for host in 2..10u8 {
        let burst = std::time::Instant::now();
        let (r, w) = from_address(host, tcp).await.expect("connect").into_split();
        let mut attacker = Client {
            reader: BufReader::new(r),
            writer: w,
            next: 1,
        };
        for i in 0..30u8 {
            let v = attacker
                .call(
                    "cosigner.put",
                    json!([hex::encode([host, i, 0, 0].repeat(8)), big]),
                )
                .await;
            if v["error"].is_null() {
                stored += 1;
                continue;
            }
            assert_eq!(v["error"]["code"], -32025, "{v}");
            match v["error"]["data"]["limit"].as_str() {
                Some("mailbox.puts_per_minute_per_peer") => rate_limited += 1,
                Some("mailbox.max_total_bytes") => full += 1,
                _ => panic!("{v}"),
            }
        }
        let refilled = (burst.elapsed().as_secs_f64() / 3.0).floor() as usize;
        must_be_refused += 10usize.saturating_sub(refilled);
        good.still_served(&slot(7), &mine).await;
    }
    assert!(
        rate_limited >= must_be_refused && must_be_refused > 0,
        "{rate_limited} refused by the put rate, at least {must_be_refused} expected"
    );
    assert!(full > 0, "the quota was reached ({stored} stored)");
    assert!(
        stored as u64 * big.len() as u64 <= 20_000_000,
        "{stored} messages of {} bytes kept",
        big.len()
    );
    let db = database_bytes(&data);
    assert!(
        db < db_before + 3 * 20_000_000,
        "the database grew from {db_before} to {db} bytes"
    );
    // The well-behaved client's own puts still go in, and its message is there.
    let v = good
        .call("cosigner.put", json!([slot(7), message(1000, 9)]))
        .await;
    assert!(
        v["error"].is_null(),
        "a replacement smaller than before fits: {v}"
    );
    good.still_served(&slot(7), &message(1000, 9)).await;
    let metrics = b.metrics().await;
    assert!(hit(&metrics, "mailbox_bytes"), "{metrics}");
    assert!(hit(&metrics, "mailbox_puts_per_peer"), "{metrics}");
}
