//! The bridge under hostile clients, measured.
//!
//! Each row starts a fresh `satcosign-dev` (the release binary beside this one, on
//! its default limits) and runs a well-behaved client on its own connection from
//! 127.0.0.1: `server.ping`, `cosigner.get` of its own slot and `request.status`, one call
//! every few milliseconds. It measures that client for a quiet spell (the baseline, in the
//! same run and on the same bridge), then again while one attack runs from other loopback
//! addresses (127.0.0.2 and up, peers as on a real network). It prints the well-behaved
//! client's latency against its quiet baseline, the calls that failed or came back wrong,
//! the bridge's peak memory and open files (read from `/proc`), its database's growth,
//! and how often the bridge's limits turned the attacker away (from `/metrics`).
//!
//! The goals: the well-behaved client's p99 stays within 5x its quiet baseline, it sees
//! no error, and the bridge stays under 256 MB.

use std::io::BufRead as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use base64::Engine as _;
use clap::Parser;
use futures::{SinkExt, StreamExt};
use nostr::{EventBuilder, JsonUtil, Keys, Kind, Tag};
use satcosign_bench::{table, Samples};
use satcosign_cosigner::testkit::{foreign_script, SpendSpec, TestWallet};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;

/// Measure the well-behaved client's service while each kind of hostile client attacks.
#[derive(Parser, Debug)]
#[command(name = "hostile-load", about)]
struct Args {
    /// Seconds of the quiet baseline in each row.
    #[arg(long, default_value_t = 3.0)]
    quiet: f64,
    /// Seconds each attack runs: long enough that each attacker's allowed burst (4 MB of
    /// reads per address, a minute's puts) is not the whole measurement.
    #[arg(long, default_value_t = 20.0)]
    seconds: f64,
    /// Milliseconds between the well-behaved client's calls.
    #[arg(long, default_value_t = 5)]
    interval_ms: u64,
    /// Only the attacks whose names contain this.
    #[arg(long)]
    only: Option<String>,
    /// The embedded system's binary (default: `satcosign-dev` beside this one).
    #[arg(long)]
    bridge: Option<PathBuf>,
}

/// The attacks, each from addresses other than the well-behaved client's.
#[derive(Clone, Copy, Debug)]
enum Attack {
    None,
    NeverReading,
    SlotHog,
    RelayIdle,
    RelayFlood,
    MailboxFlood,
    OverLimits,
    CostlySubmits,
}

impl Attack {
    const ALL: [Attack; 8] = [
        Attack::None,
        Attack::NeverReading,
        Attack::SlotHog,
        Attack::RelayIdle,
        Attack::RelayFlood,
        Attack::MailboxFlood,
        Attack::OverLimits,
        Attack::CostlySubmits,
    ];

    fn name(self) -> &'static str {
        match self {
            Attack::None => "none (quiet again)",
            Attack::NeverReading => "16 never-reading clients asking for 0.9 MB answers",
            Attack::SlotHog => "one peer opening 3x1000 connections",
            Attack::RelayIdle => "40 peers holding relay sockets with no headers",
            Attack::RelayFlood => "relay: 100 kB events from strangers and members",
            Attack::MailboxFlood => "32 peers putting 0.7 MB messages",
            Attack::OverLimits => "oversized batches, subscriptions and lines",
            Attack::CostlySubmits => "request.submit of 250-input PSBTs",
        }
    }
}

/// A running bridge child on a temporary data folder; killed when dropped.
struct Bridge {
    child: Child,
    tcp: SocketAddr,
    http: SocketAddr,
    relay: SocketAddr,
    data: PathBuf,
    _dir: tempfile::TempDir,
}

impl Bridge {
    fn start(bin: &Path) -> anyhow::Result<Bridge> {
        let dir = tempfile::tempdir()?;
        let data = dir.path().join("data");
        let mut child = Command::new(bin)
            .args([
                "dev",
                "--electrum-tcp",
                "127.0.0.1:0",
                "--http",
                "127.0.0.1:0",
            ])
            .args([
                "--nostr",
                "127.0.0.1:0",
                "--pass-up",
                "3600",
                "--pass-period",
                "3600",
            ])
            .arg("--data-dir")
            .arg(&data)
            .env("RUST_LOG", "error")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let stdout = std::io::BufReader::new(child.stdout.take().context("stdout")?);
        let printed: Vec<String> = stdout
            .lines()
            .map_while(Result::ok)
            .take_while(|l| l != "ready")
            .collect();
        let find = |prefix: &str| -> anyhow::Result<SocketAddr> {
            printed
                .iter()
                .find_map(|l| l.strip_prefix(prefix))
                .map(|a| a.trim_start_matches("ws://").trim_start_matches("http://"))
                .with_context(|| format!("no {prefix:?} in {printed:?}"))?
                .parse()
                .with_context(|| format!("{prefix} address"))
        };
        Ok(Bridge {
            tcp: find("electrum tcp: ")?,
            http: find("http: ")?,
            relay: find("nostr relay: ")?,
            child,
            data,
            _dir: dir,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn database_bytes(&self) -> u64 {
        std::fs::read_dir(&self.data)
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter(|e| e.path().extension().is_some_and(|x| x == "redb"))
                    .map(|e| e.metadata().map_or(0, |m| m.len()))
                    .sum()
            })
            .unwrap_or(0)
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP connection from 127.0.0.`host`.
async fn from(host: u8, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from(([127, 0, 0, host], 0)))?;
    socket.connect(to).await
}

/// One line-delimited JSON-RPC connection over TCP.
struct LineClient {
    reader: BufReader<tokio::net::tcp::OwnedReadHalf>,
    writer: tokio::net::tcp::OwnedWriteHalf,
    next: u64,
}

impl LineClient {
    fn new(stream: TcpStream) -> LineClient {
        let _ = stream.set_nodelay(true);
        let (r, w) = stream.into_split();
        LineClient {
            reader: BufReader::new(r),
            writer: w,
            next: 1,
        }
    }

    async fn call(&mut self, method: &str, params: Value) -> anyhow::Result<Value> {
        let id = self.next;
        self.next += 1;
        let line = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        self.writer
            .write_all(format!("{line}\n").as_bytes())
            .await?;
        let mut answer = String::new();
        if self.reader.read_line(&mut answer).await? == 0 {
            anyhow::bail!("{method}: the connection closed");
        }
        let v: Value = serde_json::from_str(&answer)?;
        anyhow::ensure!(v["id"] == id, "{method}: answer to another id: {v}");
        Ok(v)
    }
}

/// A JSON-RPC call over HTTP/1.1 on a kept-alive connection; returns the answer's body.
async fn http_call(
    stream: &mut BufReader<TcpStream>,
    method: &str,
    params: Value,
) -> anyhow::Result<Value> {
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).to_string();
    let head = format!(
        "POST / HTTP/1.1\r\nHost: bridge\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    stream.get_mut().write_all(head.as_bytes()).await?;
    stream.get_mut().write_all(body.as_bytes()).await?;
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        anyhow::ensure!(stream.read_line(&mut line).await? > 0, "closed");
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse()?;
            }
        }
    }
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).await?;
    Ok(serde_json::from_slice(&body)?)
}

/// A JSON-RPC call over a new HTTP connection from 127.0.0.1.
async fn admin_call(bridge: &Bridge, method: &str, params: Value) -> anyhow::Result<Value> {
    let mut s = BufReader::new(TcpStream::connect(bridge.http).await?);
    let v = http_call(&mut s, method, params).await?;
    anyhow::ensure!(v["error"].is_null(), "{method}: {v}");
    Ok(v["result"].clone())
}

/// The sum of the bridge's limit hits, from `/metrics`.
async fn limit_hits(bridge: &Bridge) -> anyhow::Result<u64> {
    let mut s = TcpStream::connect(bridge.http).await?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await?;
    let mut text = String::new();
    s.read_to_string(&mut text).await?;
    Ok(text
        .lines()
        .filter(|l| l.starts_with("satcosign_limit_hits_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum())
}

fn slot(tag: u8) -> String {
    hex::encode([tag; 32])
}

fn message(bytes: usize, tag: u8) -> String {
    base64::engine::general_purpose::STANDARD.encode(vec![tag; bytes])
}

/// The well-behaved client's view of one spell: latencies and failed calls.
struct Probe {
    samples: Samples,
    errors: u64,
}

/// Calls `server.ping`, `cosigner.get` of its own slot and `request.status` in turn, one
/// every `interval`, for `spell`; a call fails if it errs, is unanswered for 5 s, or its
/// slot no longer holds `mine`.
async fn probe(tcp: SocketAddr, mine: &str, spell: Duration, interval: Duration) -> Probe {
    let mut samples = Samples::default();
    let mut errors = 0;
    let mut client = match TcpStream::connect(tcp).await {
        Ok(s) => LineClient::new(s),
        Err(_) => return Probe { samples, errors: 1 },
    };
    let start = Instant::now();
    let mut tick = tokio::time::interval(interval);
    let mut i = 0u64;
    while start.elapsed() < spell {
        tick.tick().await;
        i += 1;
        let (method, params) = match i % 3 {
            0 => ("server.ping", json!([])),
            1 => ("cosigner.get", json!([slot(1)])),
            _ => (
                "request.status",
                json!(["00000000000000000000000000000000"]),
            ),
        };
        let t = Instant::now();
        let answer =
            tokio::time::timeout(Duration::from_secs(5), client.call(method, params)).await;
        let good = match (&answer, method) {
            (Ok(Ok(v)), "server.ping") => v["error"].is_null(),
            (Ok(Ok(v)), "cosigner.get") => v["result"] == mine,
            // An unknown request is refused with a JSON-RPC error: that is the answer.
            (Ok(Ok(v)), _) => v["error"]["code"].is_i64(),
            _ => false,
        };
        if good {
            samples.micros.push(t.elapsed().as_micros() as u32);
        } else {
            errors += 1;
            if answer.is_err() || matches!(answer, Ok(Err(_))) {
                match TcpStream::connect(tcp).await {
                    Ok(s) => client = LineClient::new(s),
                    Err(_) => tokio::time::sleep(interval).await,
                }
            }
        }
    }
    samples.elapsed = start.elapsed();
    Probe { samples, errors }
}

/// Peak resident memory (MB) and open files of `pid`, sampled until `stop`.
async fn watch(pid: u32, stop: Arc<AtomicBool>) -> (u64, u64) {
    let (mut rss, mut files) = (0u64, 0u64);
    while !stop.load(Ordering::Relaxed) {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let kb = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0);
        rss = rss.max(kb / 1024);
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64);
        files = files.max(fds);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (rss, files)
}

/// What attacks need prepared before the clock starts.
struct Prepared {
    /// Registered wallets' members' Nostr identities (user, backup).
    members: Vec<(Keys, Keys)>,
    /// A wallet registered and never confirmed.
    pending_wallet: String,
    /// A signed 250-input PSBT of that wallet, base64.
    big_psbt: String,
}

async fn prepare(bridge: &Bridge) -> anyhow::Result<Prepared> {
    let mut members = Vec::new();
    let mut pending_wallet = String::new();
    let mut big_psbt = String::new();
    for i in 0..2 {
        let key = admin_call(bridge, "satellite.new_key", json!([])).await?;
        let key = key["descriptor_key"]
            .as_str()
            .context("descriptor_key")?
            .parse()
            .map_err(|e| anyhow::anyhow!("descriptor key: {e:?}"))?;
        let w = TestWallet::with_members(&format!("hostile user {i}"), &format!("hb {i}"), key);
        let r = admin_call(
            bridge,
            "wallet.register",
            json!([w.descriptor, format!("h{i}@example.org"), "hostile"]),
        )
        .await?;
        pending_wallet = r["wallet_id"].as_str().context("wallet_id")?.to_owned();
        let identity = |k: &satcosign_cosigner::keys::CosignerKey| {
            satcosign_bridge::nostr_cosigner::keys_for(&k.public().electrum_xpub())
                .context("no Nostr identity")
        };
        members.push((identity(&w.user)?, identity(&w.backup)?));
        if big_psbt.is_empty() {
            let mut psbt = w.psbt(&SpendSpec {
                inputs: (0..250).map(|n| (0, n, 10_000)).collect(),
                payments: vec![(foreign_script(1), 2_000_000)],
                change: None,
            });
            w.sign_with(&w.user, &mut psbt);
            big_psbt = base64::engine::general_purpose::STANDARD.encode(psbt.serialize());
        }
    }
    Ok(Prepared {
        members,
        pending_wallet,
        big_psbt,
    })
}

/// Starts `attack` against `bridge`; the tasks run until the set is dropped.
fn launch(
    attack: Attack,
    bridge: &Bridge,
    prepared: &Arc<Prepared>,
    sent: &Arc<AtomicU64>,
) -> JoinSet<()> {
    let mut set = JoinSet::new();
    let (tcp, http, relay) = (bridge.tcp, bridge.http, bridge.relay);
    match attack {
        Attack::None => {}
        Attack::NeverReading => {
            let get = format!(
                "{}\n",
                json!({"jsonrpc": "2.0", "id": 1, "method": "cosigner.get", "params": [slot(2)]})
            );
            for _ in 0..16 {
                let (get, sent) = (get.clone(), sent.clone());
                set.spawn(async move {
                    let Ok(mut s) = from(2, tcp).await else {
                        return;
                    };
                    while s.write_all(get.as_bytes()).await.is_ok() {
                        sent.fetch_add(1, Ordering::Relaxed);
                    }
                    std::future::pending::<()>().await;
                });
            }
        }
        Attack::SlotHog => {
            for to in [tcp, relay, http] {
                let sent = sent.clone();
                set.spawn(async move {
                    let mut held = Vec::new();
                    for _ in 0..1000 {
                        if let Ok(s) = from(2, to).await {
                            held.push(s);
                            sent.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    std::future::pending::<()>().await;
                });
            }
        }
        Attack::RelayIdle => {
            for host in 2..42u8 {
                for _ in 0..16 {
                    let sent = sent.clone();
                    set.spawn(async move {
                        loop {
                            let Ok(mut s) = from(host, relay).await else {
                                tokio::time::sleep(Duration::from_millis(50)).await;
                                continue;
                            };
                            sent.fetch_add(1, Ordering::Relaxed);
                            let mut byte = [0u8; 1];
                            // Held until the bridge closes it (its header timeout).
                            let _ = s.read(&mut byte).await;
                        }
                    });
                }
            }
        }
        Attack::RelayFlood => {
            let authors: Vec<(Keys, Keys)> = prepared
                .members
                .iter()
                .flat_map(|(a, b)| [(a.clone(), b.clone()), (b.clone(), a.clone())])
                .chain((0..2).map(|_| (Keys::generate(), Keys::generate())))
                .collect();
            for (n, (author, to)) in authors.into_iter().enumerate() {
                let sent = sent.clone();
                set.spawn(async move {
                    let host = 2 + n as u8;
                    let mut i = 0u64;
                    loop {
                        let Ok(sock) = from(host, relay).await else {
                            return;
                        };
                        let Ok((mut ws, _)) =
                            tokio_tungstenite::client_async(format!("ws://{relay}"), sock).await
                        else {
                            return;
                        };
                        // A new connection each 100 events, as a flooder resets its rate.
                        for _ in 0..100 {
                            i += 1;
                            let Ok(e) = EventBuilder::new(
                                Kind::EncryptedDirectMessage,
                                format!("{i}{}", "A".repeat(100_000)),
                            )
                            .tag(Tag::public_key(to.public_key()))
                            .sign_with_keys(&author) else {
                                return;
                            };
                            let text = format!(r#"["EVENT",{}]"#, e.as_json());
                            if ws.send(Message::text(text)).await.is_err() {
                                break;
                            }
                            sent.fetch_add(1, Ordering::Relaxed);
                            match ws.next().await {
                                Some(Ok(_)) => {}
                                _ => break,
                            }
                        }
                    }
                });
            }
        }
        Attack::MailboxFlood => {
            let big = message(700_000, 9);
            for host in 10..42u8 {
                let (big, sent) = (big.clone(), sent.clone());
                set.spawn(async move {
                    let Ok(s) = from(host, tcp).await else { return };
                    let mut c = LineClient::new(s);
                    for i in 0u32.. {
                        let mut key = [host; 32];
                        key[..4].copy_from_slice(&i.to_be_bytes());
                        let line = format!(
                            r#"{{"jsonrpc":"2.0","id":{i},"method":"cosigner.put","params":["{}","{big}"]}}"#,
                            hex::encode(key)
                        );
                        if c.writer.write_all(format!("{line}\n").as_bytes()).await.is_err() {
                            return;
                        }
                        let mut answer = String::new();
                        if !matches!(c.reader.read_line(&mut answer).await, Ok(n) if n > 0) {
                            return;
                        }
                        sent.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
        }
        Attack::OverLimits => {
            let batch = Value::Array(
                (0..100)
                    .map(|i| json!({"jsonrpc": "2.0", "id": i, "method": "cosigner.get", "params": [slot(2)]}))
                    .collect(),
            )
            .to_string();
            let subscribe = Value::Array(
                (0..100)
                    .map(|i| json!({"jsonrpc": "2.0", "id": i, "method": "request.subscribe", "params": [format!("{i:032x}")]}))
                    .collect(),
            )
            .to_string();
            let long_line = "x".repeat(1_100_000);
            for n in 0..8u8 {
                let lines = [batch.clone(), subscribe.clone(), long_line.clone()];
                let sent = sent.clone();
                set.spawn(async move {
                    loop {
                        let Ok(s) = from(2 + n, tcp).await else {
                            return;
                        };
                        let (r, mut w) = s.into_split();
                        let mut r = BufReader::new(r);
                        let mut answer = String::new();
                        for line in lines.iter().cycle() {
                            if w.write_all(format!("{line}\n").as_bytes()).await.is_err() {
                                break;
                            }
                            sent.fetch_add(1, Ordering::Relaxed);
                            answer.clear();
                            if !matches!(r.read_line(&mut answer).await, Ok(n) if n > 0) {
                                break;
                            }
                        }
                    }
                });
            }
        }
        Attack::CostlySubmits => {
            for n in 0..8u8 {
                let (p, sent) = (prepared.clone(), sent.clone());
                set.spawn(async move {
                    loop {
                        let Ok(s) = from(2 + n, http).await else {
                            return;
                        };
                        let mut s = BufReader::new(s);
                        for i in 0u64.. {
                            let wallet = if i % 2 == 0 {
                                p.pending_wallet.clone()
                            } else {
                                format!("{i:032x}")
                            };
                            if http_call(&mut s, "request.submit", json!([wallet, p.big_psbt]))
                                .await
                                .is_err()
                            {
                                break;
                            }
                            sent.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        }
    }
    set
}

/// One row: a fresh bridge, its quiet baseline, then the attack.
async fn row(args: &Args, bin: &Path, attack: Attack) -> anyhow::Result<Vec<String>> {
    let bridge = Bridge::start(bin)?;
    let prepared = Arc::new(prepare(&bridge).await?);
    let mine = message(1000, 1);
    let mut setup = LineClient::new(TcpStream::connect(bridge.tcp).await?);
    for (tag, bytes) in [(1, 1000), (2, 700_000)] {
        let content = if tag == 1 {
            mine.clone()
        } else {
            message(bytes, tag)
        };
        let v = setup
            .call("cosigner.put", json!([slot(tag), content]))
            .await?;
        anyhow::ensure!(v["error"].is_null(), "setup put: {v}");
    }
    let interval = Duration::from_millis(args.interval_ms);
    let mut quiet = probe(
        bridge.tcp,
        &mine,
        Duration::from_secs_f64(args.quiet),
        interval,
    )
    .await;
    let (db_before, hits_before) = (bridge.database_bytes(), limit_hits(&bridge).await?);

    let stop = Arc::new(AtomicBool::new(false));
    let watcher = tokio::spawn(watch(bridge.pid(), stop.clone()));
    let sent = Arc::new(AtomicU64::new(0));
    let attackers = launch(attack, &bridge, &prepared, &sent);
    // The well-behaved client runs on its own thread and runtime, so the attackers' work in
    // this process does not delay it: only the bridge's does.
    let (tcp, own, spell) = (
        bridge.tcp,
        mine.clone(),
        Duration::from_secs_f64(args.seconds),
    );
    let mut during = tokio::task::spawn_blocking(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map(|rt| rt.block_on(probe(tcp, &own, spell, interval)))
    })
    .await??;
    drop(attackers);
    stop.store(true, Ordering::Relaxed);
    let (rss, files) = watcher.await?;
    let db_growth = bridge.database_bytes().saturating_sub(db_before);
    let hits = limit_hits(&bridge).await?.saturating_sub(hits_before);
    let (q99, d50, d99) = (
        quiet.samples.quantile(0.99),
        during.samples.quantile(0.5),
        during.samples.quantile(0.99),
    );
    let ms = |us: u32| format!("{:.2}", f64::from(us) / 1000.0);
    Ok(vec![
        attack.name().to_owned(),
        sent.load(Ordering::Relaxed).to_string(),
        during.samples.micros.len().to_string(),
        ms(quiet.samples.quantile(0.5)),
        ms(q99),
        ms(d50),
        ms(d99),
        format!("{:.1}x", f64::from(d99) / f64::from(q99.max(1))),
        (quiet.errors + during.errors).to_string(),
        rss.to_string(),
        files.to_string(),
        format!("{:.1}", db_growth as f64 / 1e6),
        hits.to_string(),
    ])
}

#[allow(clippy::print_stdout)] // a benchmark prints its table
fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let bin = match &args.bridge {
        Some(b) => b.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("no folder")?
            .join("satcosign-dev"),
    };
    anyhow::ensure!(
        bin.exists(),
        "{} is missing: build it with `cargo build --release -p satcosign-bridge --features dev`",
        bin.display()
    );
    // The attacks hold thousands of sockets.
    satcosign_bridge::admission::raise_open_files();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut rows = Vec::new();
    for attack in Attack::ALL {
        if let Some(only) = &args.only {
            if !attack.name().contains(only.as_str()) {
                continue;
            }
        }
        rows.push(runtime.block_on(row(&args, &bin, attack))?);
    }
    println!(
        "The bridge under hostile clients: a fresh `satcosign-dev` per row on default \
         limits; a well-behaved client calls every {} ms, {} s quiet (baseline), then {} s \
         under attack.",
        args.interval_ms, args.quiet, args.seconds
    );
    println!(
        "{}",
        table(
            &[
                "attack",
                "attacker msgs",
                "calls",
                "quiet p50 ms",
                "quiet p99 ms",
                "p50 ms",
                "p99 ms",
                "p99/quiet",
                "errors",
                "peak RSS MB",
                "peak files",
                "DB growth MB",
                "limit hits",
            ],
            &rows
        )
    );
    println!("Goals: p99 within 5x the quiet baseline, 0 errors, peak RSS under 256 MB.");
    Ok(())
}
