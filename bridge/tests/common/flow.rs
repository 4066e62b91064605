//! The whole system in this process for the signing-flow tests: the bridge and its cosigner
//! over the simulated link, email through a real SMTP server (mailin-embedded) on loopback,
//! and clients over real sockets.
#![allow(dead_code)]

use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jsonrpsee::core::client::ClientT;
use jsonrpsee::http_client::{HttpClient, HttpClientBuilder};
use mailin_embedded::response::{self, Response};
use mailin_embedded::{Handler, Server, SslConfig};
use serde_json::{json, Value};

use satcosign_bridge::config::{Config, SmtpSecurity};
use satcosign_bridge::dev::{DevSystem, Sky};

use super::stores::TestStore;
use satcosign_cosigner::decision::RequestId;

/// Every email the SMTP server accepted, raw.
#[derive(Clone, Default)]
pub struct Inbox(Arc<Mutex<Vec<Received>>>);

/// One accepted email: its envelope recipients and its raw text.
pub type Received = (Vec<String>, String);

#[derive(Clone)]
struct Sink {
    inbox: Inbox,
    current: Vec<u8>,
    to: Vec<String>,
    /// The user name and password AUTH PLAIN accepts, when the server asks for one.
    login: Option<(String, String)>,
    authenticated: bool,
}

impl Handler for Sink {
    fn auth_plain(
        &mut self,
        _authorization_id: &str,
        authentication_id: &str,
        password: &str,
    ) -> Response {
        match &self.login {
            Some((u, p)) if u == authentication_id && p == password => {
                self.authenticated = true;
                response::AUTH_OK
            }
            _ => response::INVALID_CREDENTIALS,
        }
    }
    fn mail(&mut self, _ip: std::net::IpAddr, _domain: &str, _from: &str) -> Response {
        self.to.clear();
        if self.login.is_some() && !self.authenticated {
            return response::AUTHENTICATION_REQUIRED;
        }
        response::OK
    }
    fn rcpt(&mut self, to: &str) -> Response {
        self.to.push(to.trim_matches(['<', '>']).to_owned());
        response::OK
    }
    fn data_start(
        &mut self,
        _domain: &str,
        _from: &str,
        _is8bit: bool,
        _to: &[String],
    ) -> Response {
        self.current.clear();
        response::OK
    }
    fn data(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.current.extend_from_slice(buf);
        Ok(())
    }
    fn data_end(&mut self) -> Response {
        let mail = String::from_utf8_lossy(&self.current).into_owned();
        self.inbox
            .0
            .lock()
            .expect("inbox")
            .push((self.to.clone(), mail));
        response::OK
    }
}

impl Inbox {
    /// Starts an SMTP server on a loopback port; returns the port.
    pub fn start() -> (Inbox, u16) {
        Inbox::start_with(SslConfig::None, None)
    }

    /// Starts an SMTP server offering STARTTLS with `tls` and requiring AUTH PLAIN with
    /// `login`, if given.
    pub fn start_with(tls: SslConfig, login: Option<(&str, &str)>) -> (Inbox, u16) {
        let inbox = Inbox::default();
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind smtp");
        let port = listener.local_addr().expect("addr").port();
        let mut server = Server::new(Sink {
            inbox: inbox.clone(),
            current: Vec::new(),
            to: Vec::new(),
            login: login.map(|(u, p)| (u.to_owned(), p.to_owned())),
            authenticated: false,
        });
        if login.is_some() {
            server.with_auth(mailin_embedded::AuthMechanism::Plain);
        }
        // A real mail server takes many sessions at once; this one's default is 4 threads,
        // which the bridge's pool of idle SMTP connections (lettre keeps up to 10 open) can
        // fill, leaving the next email waiting for a minute.
        server
            .with_num_threads(32)
            .with_name("mail.test")
            .with_ssl(tls)
            .expect("tls setup")
            .with_tcp_listener(listener);
        std::thread::spawn(move || {
            let _ = server.serve();
        });
        (inbox, port)
    }

    pub fn all(&self) -> Vec<String> {
        self.0
            .lock()
            .expect("inbox")
            .iter()
            .map(|(_, m)| m.clone())
            .collect()
    }

    /// Every email sent to `address`, decoded.
    pub fn to(&self, address: &str) -> Vec<String> {
        self.0
            .lock()
            .expect("inbox")
            .iter()
            .filter(|(to, _)| to.iter().any(|t| t == address))
            .map(|(_, m)| satcosign_bridge::demo::decode_quoted_printable(m))
            .collect()
    }

    /// The recipients of every email whose text mentions `needle`.
    pub fn recipients_of(&self, needle: &str) -> Vec<String> {
        self.0
            .lock()
            .expect("inbox")
            .iter()
            .filter(|(_, m)| satcosign_bridge::demo::decode_quoted_printable(m).contains(needle))
            .flat_map(|(to, _)| to.clone())
            .collect()
    }

    /// Request ids in the confirmation links of the emails so far.
    pub fn request_ids(&self) -> std::collections::BTreeSet<String> {
        self.all()
            .iter()
            .flat_map(|m| {
                let text = satcosign_bridge::demo::decode_quoted_printable(m);
                text.match_indices("/confirm/")
                    .filter_map(|(i, _)| text.get(i + 9..i + 41).map(str::to_owned))
                    .filter(|id| id.chars().all(|c| c.is_ascii_hexdigit()))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// The newest code emailed for `id` (waits up to 20 s).
    pub async fn code(&self, id: &str) -> String {
        let rid = parse_id(id);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(code) = self
                .all()
                .iter()
                .rev()
                .find_map(|m| satcosign_bridge::demo::find_code(m, &rid))
            {
                return code;
            }
            assert!(Instant::now() < deadline, "no email with a code for {id}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

pub fn parse_id(id: &str) -> RequestId {
    let mut raw = [0u8; 16];
    hex::decode_to_slice(id, &mut raw).expect("32 hex id");
    RequestId(raw)
}

/// The system under test.
pub struct Flow {
    pub system: DevSystem,
    pub inbox: Inbox,
    pub rpc: HttpClient,
    pub dir: tempfile::TempDir,
    pub config: Config,
    /// The engine; last, so a PostgreSQL cluster outlives the system.
    pub store: TestStore,
}

/// A sky that is always in view, with `loss`.
/// The rules named in a list of violations (`data.violations`, a dry run's, the last
/// violation's), in order.
pub fn rules_of(violations: &Value) -> Vec<&str> {
    violations
        .as_array()
        .expect("a list of violations")
        .iter()
        .filter_map(|v| v["rule"].as_str())
        .collect()
}

pub fn sky(loss: f64) -> Sky {
    Sky {
        pass_up: Duration::from_secs(3600),
        pass_period: Duration::from_secs(3600),
        loss,
        bitrate: 9600,
        ..Sky::default()
    }
}

impl Flow {
    pub async fn start(sky: Sky, edit: impl FnOnce(&mut Config)) -> Flow {
        Flow::start_inner(&TestStore::Redb, sky, edit, None).await
    }

    /// As [`Self::start`], with the bridge's state on `store`.
    pub async fn start_on(store: &TestStore, sky: Sky, edit: impl FnOnce(&mut Config)) -> Flow {
        Flow::start_inner(store, sky, edit, None).await
    }

    /// As [`Self::start_on`], with a satellite that passes each answer through `alter`.
    pub async fn start_misbehaving(
        store: &TestStore,
        sky: Sky,
        alter: satcosign_bridge::dev::AnswerFilter,
    ) -> Flow {
        Flow::start_inner(store, sky, |_| {}, Some(alter)).await
    }

    async fn start_inner(
        store: &TestStore,
        sky: Sky,
        edit: impl FnOnce(&mut Config),
        alter: Option<satcosign_bridge::dev::AnswerFilter>,
    ) -> Flow {
        let dir = tempfile::tempdir().expect("tempdir");
        let (inbox, smtp_port) = Inbox::start();
        let mut config = Config {
            data_dir: dir.path().join("data"),
            network: satcosign_bridge::config::Network::Regtest,
            ..Config::default()
        };
        config.electrum.tcp = "127.0.0.1:0".into();
        config.http.listen = "127.0.0.1:0".into();
        config.nostr.listen = "127.0.0.1:0".into();
        config.email.smtp_host = Some("127.0.0.1".into());
        config.email.smtp_port = Some(smtp_port);
        config.email.smtp_security = SmtpSecurity::Plain;
        store.apply(&mut config);
        edit(&mut config);
        let system = match alter {
            Some(alter) => {
                satcosign_bridge::dev::start_dev_misbehaving(config.clone(), sky, alter).await
            }
            None => satcosign_bridge::dev::start_dev(config.clone(), sky).await,
        }
        .expect("system starts");
        let http = system.bridge.http.expect("http");
        let rpc = HttpClientBuilder::default()
            .request_timeout(Duration::from_secs(60))
            .build(format!("http://{http}"))
            .expect("client");
        Flow {
            system,
            inbox,
            rpc,
            dir,
            config,
            store: store.clone(),
        }
    }

    /// How many times the satellite was asked to sign (its audit, whatever the outcome).
    pub fn sign_attempts(&self) -> usize {
        self.system
            .cosigner
            .audit_log()
            .expect("audit")
            .into_iter()
            .filter(|e| e.action == "sign")
            .count()
    }

    pub async fn call(
        &self,
        method: &str,
        params: Vec<Value>,
    ) -> Result<Value, jsonrpsee::core::client::Error> {
        self.rpc.request(method, params).await
    }

    pub async fn ok(&self, method: &str, params: Vec<Value>) -> Value {
        match self.call(method, params).await {
            Ok(v) => {
                super::contract().check_result(method, &v);
                v
            }
            Err(e) => panic!("{method}: {e}"),
        }
    }

    /// The error object of a call that must fail.
    pub async fn err(&self, method: &str, params: Vec<Value>) -> (i32, String, Value) {
        match self.call(method, params).await {
            Ok(v) => panic!("{method} should fail, returned {v}"),
            Err(jsonrpsee::core::client::Error::Call(e)) => (
                e.code(),
                e.message().to_owned(),
                e.data()
                    .map(|d| serde_json::from_str(d.get()).expect("data json"))
                    .unwrap_or(Value::Null),
            ),
            Err(e) => panic!("{method}: transport error {e}"),
        }
    }

    pub async fn status(&self, id: &str) -> Value {
        self.ok("request.status", vec![json!(id)]).await
    }

    /// Confirms request `id` with the code its email carries, as its owner would.
    pub async fn confirm_by_email(&self, id: &str) {
        let code = self.inbox.code(id).await;
        self.ok("request.confirm", vec![json!(id), json!(code)])
            .await;
    }

    /// Waits until request `id` is in `state` (or fails after `secs`).
    pub async fn wait_state(&self, id: &str, state: &str, secs: u64) -> Value {
        self.wait_for(id, secs, |s| s["state"] == state).await
    }

    /// Waits until request `id`'s status satisfies `done` (or fails after `secs`).
    pub async fn wait_for(&self, id: &str, secs: u64, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let s = self.status(id).await;
            if done(&s) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "request {id} never got there; last {s}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Submits `psbt` for wallet `wid` with `request.submit`; returns the request id.
    pub async fn submit(&self, wid: &str, psbt: &bitcoin::Psbt) -> String {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD.encode(psbt.serialize());
        self.ok("request.submit", vec![json!(wid), json!(b64)])
            .await["request_id"]
            .as_str()
            .expect("id")
            .to_owned()
    }

    /// Registers `descriptor` and confirms it by the emailed code; returns the wallet id.
    pub async fn register(&self, descriptor: &str) -> String {
        self.register_as(descriptor, "alice@example.org").await.0
    }

    /// Registers `descriptor` for `email` and confirms it by the emailed code; returns the
    /// wallet id and the registration's request id.
    pub async fn register_as(&self, descriptor: &str, email: &str) -> (String, String) {
        self.register_full(descriptor, email, None).await
    }

    /// Registers `descriptor` with `policy` and confirms it; returns the wallet id.
    pub async fn register_with_policy(
        &self,
        descriptor: &str,
        policy: &satcosign_cosigner::policy::Policy,
    ) -> String {
        self.register_full(descriptor, "alice@example.org", Some(policy))
            .await
            .0
    }

    async fn register_full(
        &self,
        descriptor: &str,
        email: &str,
        policy: Option<&satcosign_cosigner::policy::Policy>,
    ) -> (String, String) {
        let mut params = vec![json!(descriptor), json!(email), json!("Alice's savings")];
        if let Some(p) = policy {
            params.push(serde_json::to_value(p).expect("policy"));
        }
        let r = self.ok("wallet.register", params).await;
        let rid = r["request_id"].as_str().expect("id").to_owned();
        self.confirm_by_email(&rid).await;
        let done = self.wait_state(&rid, "delivered", 120).await;
        assert_eq!(done["final_state"], "signed", "{done}");
        let wid = r["wallet_id"].as_str().expect("wallet").to_owned();
        assert_eq!(
            self.ok("wallet.status", vec![json!(wid)]).await["state"],
            "active"
        );
        (wid, rid)
    }

    pub fn http_addr(&self) -> std::net::SocketAddr {
        self.system.bridge.http.expect("http")
    }
}

/// A satellite key freshly issued by the bridge (`satellite.new_key`), parsed.
pub async fn new_satellite_key(flow: &Flow) -> satcosign_cosigner::keys::AccountKey {
    let issued = flow.ok("satellite.new_key", vec![]).await;
    let key: satcosign_cosigner::keys::AccountKey = issued["descriptor_key"]
        .as_str()
        .expect("descriptor_key")
        .parse()
        .expect("the issued key parses");
    assert_eq!(
        key.electrum_xpub(),
        issued["electrum_xpub"].as_str().expect("electrum_xpub"),
        "both forms name one key"
    );
    key
}

/// The test wallet around a satellite key freshly issued by the bridge.
pub async fn test_wallet(flow: &Flow) -> satcosign_cosigner::testkit::TestWallet {
    satcosign_cosigner::testkit::TestWallet::with_satellite(new_satellite_key(flow).await)
}

/// A new test wallet registered with `policy` and confirmed: its id, and the wallet.
pub async fn registered_wallet(
    flow: &Flow,
    policy: &satcosign_cosigner::policy::Policy,
) -> (String, satcosign_cosigner::testkit::TestWallet) {
    let w = test_wallet(flow).await;
    (flow.register_with_policy(&w.descriptor, policy).await, w)
}

/// Always in view with no loss, at `bitrate` bit/s.
pub fn sky_at(bitrate: u64) -> Sky {
    Sky {
        bitrate,
        ..sky(0.0)
    }
}

/// Runs Debian's Electrum helper script.
pub fn electrum(args: &[&str]) -> String {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/electrum/wallet.py");
    let out = std::process::Command::new("/usr/bin/python3")
        .arg(script)
        .args(args)
        .output()
        .expect("run /usr/bin/python3 (Debian's python3-electrum)");
    assert!(
        out.status.success(),
        "wallet.py {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf8")
        .trim()
        .to_owned()
}

/// A minimal HTTP/1.1 exchange over a real socket: (status, headers+body text).
pub async fn http_raw(addr: std::net::SocketAddr, request: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(request.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.expect("read");
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, text)
}

/// Checks every input of `tx` with libbitcoinconsensus against the outputs it spends.
/// The python that runs Debian's Electrum of `suite` (`bookworm`: this machine's 4.3.4;
/// `trixie`: 4.5.x; `sid`: 4.8.x), installing it when missing (`scripts/electrum-debian`).
pub fn electrum_python(suite: &str) -> String {
    if suite == "bookworm" {
        return "/usr/bin/python3".into();
    }
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/electrum-debian");
    let out = std::process::Command::new(&script)
        .arg(suite)
        .output()
        .expect("scripts/electrum-debian");
    assert!(
        out.status.success(),
        "scripts/electrum-debian {suite}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_owned()
}

/// Checks that a test program ran in the Electrum it was meant for: its RESULT's
/// `electrum_version` starts with `version`.
pub fn assert_ran_in(r: &Value, version: &str) {
    let ran_in = r["electrum_version"].as_str().unwrap_or_default();
    assert!(
        ran_in.starts_with(version),
        "ran in Electrum {ran_in:?}, not {version}: {r}"
    );
}

/// The transaction in hex at `v[key]` (a test program's RESULT), decoded.
pub fn tx_at(v: &Value, key: &str) -> bitcoin::Transaction {
    let hex_tx = v[key].as_str().unwrap_or_else(|| panic!("no {key} in {v}"));
    bitcoin::consensus::encode::deserialize_hex(hex_tx)
        .unwrap_or_else(|e| panic!("{key} is not a transaction: {e}"))
}

/// The final transaction of a delivered request's status: it spends what `psbt` spends, and
/// Bitcoin Core's interpreter accepts every input.
pub fn assert_final_tx(done: &Value, psbt: &bitcoin::Psbt) -> bitcoin::Transaction {
    let tx: bitcoin::Transaction = bitcoin::consensus::encode::deserialize_hex(
        done["outcome"]["signed"]["tx"].as_str().expect("final tx"),
    )
    .expect("tx");
    assert_eq!(tx.compute_txid(), psbt.unsigned_tx.compute_txid());
    let funding: Vec<bitcoin::Transaction> = psbt
        .inputs
        .iter()
        .filter_map(|i| i.non_witness_utxo.clone())
        .collect();
    verify_with_core(&tx, &funding);
    tx
}

pub fn verify_with_core(tx: &bitcoin::Transaction, spent: &[bitcoin::Transaction]) {
    let raw = bitcoin::consensus::serialize(tx);
    for (i, input) in tx.input.iter().enumerate() {
        let prev = spent
            .iter()
            .find(|p| p.compute_txid() == input.previous_output.txid)
            .expect("spent transaction known");
        let out = &prev.output[input.previous_output.vout as usize];
        out.script_pubkey
            .verify(i, out.value, &raw)
            .unwrap_or_else(|e| panic!("input {i} fails Bitcoin Core's interpreter: {e:?}"));
    }
}

/// A PSBT from the wallet's user key to the satellite as Electrum 4.6's psbt_nostr sends it
/// (NIP-04, kind 4, `{"tx": hex}`, tagged `p`), the satellite named by the Electrum xpub it
/// publishes. Returns the event, the user's Nostr keys and the satellite's Nostr key.
pub fn nostr_dm(
    w: &satcosign_cosigner::testkit::TestWallet,
    satellite_xpub: &str,
    psbt: &bitcoin::Psbt,
) -> (nostr_sdk::Event, nostr_sdk::Keys, nostr_sdk::PublicKey) {
    use nostr_sdk::prelude::{EventBuilder, Kind, Tag};
    let keys_for = satcosign_bridge::nostr_cosigner::keys_for;
    let satellite = keys_for(satellite_xpub).expect("key").public_key();
    // The user's key, as Electrum derives its Nostr identity from the Vpub it shows.
    let user = keys_for(&w.user.public().electrum_xpub()).expect("key");
    let content = nostr_sdk::nips::nip04::encrypt(
        user.secret_key(),
        &satellite,
        serde_json::json!({"tx": hex::encode(psbt.serialize())}).to_string(),
    )
    .expect("nip04");
    let dm = EventBuilder::new(Kind::EncryptedDirectMessage, content)
        .tag(Tag::public_key(satellite))
        .sign_with_keys(&user)
        .expect("sign");
    (dm, user, satellite)
}

/// A WebSocket to the bridge's Nostr relay.
pub type NostrWs =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens a WebSocket to the relay at `addr`.
pub async fn nostr_ws(addr: std::net::SocketAddr) -> NostrWs {
    tokio_tungstenite::connect_async(format!("ws://{addr}"))
        .await
        .expect("websocket")
        .0
}

/// Reads `ws` until a message of kind `until` (past NIP-42's challenge); returns them all.
pub async fn nostr_until(ws: &mut NostrWs, until: &str) -> Vec<serde_json::Value> {
    use futures::StreamExt;
    let mut out = Vec::new();
    loop {
        let m = tokio::time::timeout(Duration::from_secs(120), ws.next())
            .await
            .expect("an answer within 120 s")
            .expect("open")
            .expect("frame");
        if let tokio_tungstenite::tungstenite::Message::Text(t) = m {
            let v: serde_json::Value = serde_json::from_str(&t).expect("json");
            if v[0] == "AUTH" {
                // NIP-42's challenge, sent when the connection opens.
                continue;
            }
            let done = v[0] == until;
            out.push(v);
            if done {
                return out;
            }
        }
    }
}

/// Sends `event` on `ws` and returns the relay's `OK` (past its NIP-42 challenge and any
/// live event).
pub async fn publish_on(ws: &mut NostrWs, event: &nostr_sdk::Event) -> serde_json::Value {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    ws.send(Message::text(
        serde_json::json!(["EVENT", event]).to_string(),
    ))
    .await
    .expect("send");
    loop {
        let m = tokio::time::timeout(Duration::from_secs(20), ws.next())
            .await
            .expect("an answer")
            .expect("open")
            .expect("frame");
        if let Message::Text(t) = m {
            let v: serde_json::Value = serde_json::from_str(&t).expect("json");
            if v[0] == "OK" {
                return v;
            }
        }
    }
}
