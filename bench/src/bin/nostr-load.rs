//! Load generator for the bridge's Nostr relay.
//!
//! N WebSocket connections, each sending one message and waiting for its answer (closed
//! loop), in three scenarios: a minimal tokio-tungstenite echo server (the baseline: the
//! fastest any WebSocket server could answer here, with the same client and messages),
//! `EVENT` -> `OK` on the relay (each a new signed event of an encrypted-PSBT size, checked
//! and stored durably in redb), and `REQ` by id -> `EVENT` + `EOSE` for stored events.
//! Events are signed before the clock starts.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use futures::{SinkExt, StreamExt};
use nostr::{EventBuilder, JsonUtil, Kind, Tag};
use satcosign_bench::{table, Samples};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

/// Measure the Nostr relay's throughput and latency against a WebSocket echo baseline.
#[derive(Parser, Debug)]
#[command(name = "nostr-load", about)]
struct Args {
    /// Concurrent connections.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Seconds per scenario.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Content size of each event, bytes (a NIP-04 encrypted 2-of-3 PSBT is ~2.5 KB).
    #[arg(long, default_value_t = 2500)]
    content_bytes: usize,
    /// Events signed in advance (a scenario stops early if it runs out).
    #[arg(long, default_value_t = 30_000)]
    events: usize,
}

async fn echo_server() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            let _ = sock.set_nodelay(true);
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(sock).await else {
                    return;
                };
                while let Some(Ok(m)) = ws.next().await {
                    if m.is_text() && ws.send(m).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    Ok(addr)
}

/// How a scenario turns a prepared event into a request, and knows its answer is complete.
#[derive(Clone, Copy)]
enum Scenario {
    Echo,
    Publish,
    QueryById,
}

async fn run(
    addr: SocketAddr,
    args: &Args,
    scenario: Scenario,
    events: Arc<Vec<(String, String)>>,
    cycle: usize,
) -> anyhow::Result<(Samples, usize)> {
    let deadline = Duration::from_secs_f64(args.seconds);
    let start = Instant::now();
    let per_conn = events.len() / args.connections;
    let mut tasks = Vec::new();
    for conn in 0..args.connections {
        let events = events.clone();
        tasks.push(tokio::spawn(async move {
            let sock = tokio::net::TcpStream::connect(addr).await?;
            sock.set_nodelay(true)?;
            let (mut ws, _) = tokio_tungstenite::client_async(format!("ws://{addr}"), sock).await?;
            let mut micros = Vec::new();
            for i in 0..per_conn {
                if start.elapsed() >= deadline {
                    break;
                }
                // Queries cycle over the events this connection published.
                let (id, json) = &events[conn * per_conn + i % cycle.max(1)];
                let request = match scenario {
                    Scenario::Echo | Scenario::Publish => format!("[\"EVENT\",{json}]"),
                    Scenario::QueryById => format!("[\"REQ\",\"q{i}\",{{\"ids\":[\"{id}\"]}}]"),
                };
                let t = Instant::now();
                let mut found = false;
                ws.send(Message::text(request)).await?;
                loop {
                    let Some(m) = ws.next().await else {
                        anyhow::bail!("the server closed the connection");
                    };
                    let Message::Text(text) = m? else { continue };
                    if text.starts_with("[\"AUTH\"") {
                        // NIP-42's challenge, sent when the connection opens.
                        continue;
                    }
                    let done = match scenario {
                        Scenario::Echo => true,
                        Scenario::Publish => {
                            anyhow::ensure!(
                                text.starts_with("[\"OK\"") && text.contains(",true,"),
                                "not accepted: {text}"
                            );
                            true
                        }
                        Scenario::QueryById => {
                            if text.starts_with("[\"EVENT\"") {
                                found = true;
                            }
                            text.starts_with("[\"EOSE\"")
                        }
                    };
                    if done {
                        break;
                    }
                }
                if let Scenario::QueryById = scenario {
                    anyhow::ensure!(found, "stored event {id} was not returned");
                    ws.send(Message::text(format!("[\"CLOSE\",\"q{i}\"]")))
                        .await?;
                }
                micros.push(u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX));
            }
            Ok::<_, anyhow::Error>(micros)
        }));
    }
    let mut samples = Samples::default();
    let mut fewest = usize::MAX;
    for t in tasks {
        let m = t.await??;
        fewest = fewest.min(m.len());
        samples.micros.extend(m);
    }
    samples.elapsed = start.elapsed();
    Ok((samples, fewest))
}

#[allow(clippy::print_stdout)]
fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("server")
        .build()?;
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .thread_name("client")
        .build()?;

    let dir = tempfile::tempdir()?;
    let (echo, system, members) = server_rt.block_on(async {
        let echo = echo_server().await?;
        let mut config = satcosign_bridge::config::Config {
            data_dir: dir.path().join("data"),
            network: satcosign_bridge::config::Network::Regtest,
            ..Default::default()
        };
        config.electrum.tcp = "127.0.0.1:0".into();
        config.http.listen = String::new();
        config.nostr.listen = "127.0.0.1:0".into();
        // A benchmark floods on purpose, from one address.
        config.nostr.messages_per_minute = u32::MAX;
        config.nostr.max_connections_per_peer = config.nostr.max_connections;
        // Every load client is 127.0.0.1: no per-peer read rate.
        config.limits.read_bytes_per_second_per_peer = 1 << 40;
        config.limits.read_burst_bytes_per_peer = 1 << 40;
        config.nostr.max_stored_bytes = 4 << 30;
        config.nostr.max_stored_bytes_per_author = 4 << 30;
        let system =
            satcosign_bridge::dev::start_dev(config, satcosign_bridge::dev::Sky::default()).await?;
        // The relay carries only wallets' messages: four registered wallets, whose user
        // and backup keys write to each other.
        let service = system
            .bridge
            .service
            .clone()
            .ok_or_else(|| anyhow::anyhow!("dev has a service"))?;
        let mut members = Vec::new();
        for i in 0..4 {
            let w = satcosign_cosigner::testkit::TestWallet::with_members(
                &format!("load user {i}"),
                &format!("load backup {i}"),
                service.new_key(None).await?,
            );
            service
                .register_wallet(
                    vec![w.descriptor.clone()],
                    format!("load{i}@example.org"),
                    "load".into(),
                    None,
                    None,
                )
                .await?;
            let identity = |x: &satcosign_cosigner::keys::CosignerKey| {
                satcosign_bridge::nostr_cosigner::keys_for(&x.public().electrum_xpub())
                    .ok_or_else(|| anyhow::anyhow!("no identity"))
            };
            let (user, backup) = (identity(&w.user)?, identity(&w.backup)?);
            members.push((user.clone(), backup.public_key()));
            members.push((backup, user.public_key()));
        }
        anyhow::Ok((echo, system, members))
    })?;

    // Events signed in advance: kind 4 with a p tag and a content the size of an
    // encrypted PSBT, by the wallets' keys to their cosigners.
    let content = "A".repeat(args.content_bytes);
    let events: Vec<(String, String)> = (0..args.events)
        .map(|i| {
            let (author, to) = &members[i % members.len()];
            let e = EventBuilder::new(Kind::EncryptedDirectMessage, format!("{i}{content}"))
                .tag(Tag::public_key(*to))
                .sign_with_keys(author)
                .map_err(|e| anyhow::anyhow!("sign: {e}"))?;
            Ok((e.id.to_hex(), e.as_json()))
        })
        .collect::<anyhow::Result<_>>()?;
    let events = Arc::new(events);
    let bridge = &system.bridge;
    let relay = bridge.nostr.expect("relay configured");

    let scenarios = [
        ("websocket echo (baseline)", echo, Scenario::Echo),
        ("relay EVENT -> OK (durable)", relay, Scenario::Publish),
        ("relay REQ by id -> EOSE", relay, Scenario::QueryById),
    ];
    let mut rows = Vec::new();
    let mut rates = Vec::new();
    let mut published = usize::MAX;
    for (name, addr, scenario) in scenarios {
        let cycle = match scenario {
            Scenario::QueryById => published,
            _ => usize::MAX,
        };
        let (mut s, fewest) =
            client_rt.block_on(run(addr, &args, scenario, events.clone(), cycle))?;
        if let Scenario::Publish = scenario {
            published = fewest;
        }
        rates.push(s.rate());
        rows.push(vec![
            name.to_owned(),
            format!("{:.0}", s.rate()),
            format!("{:.2}", f64::from(s.quantile(0.5)) / 1000.0),
            format!("{:.2}", f64::from(s.quantile(0.99)) / 1000.0),
            s.micros.len().to_string(),
        ]);
    }
    println!(
        "nostr-load: {} connections, {:.1} s per scenario, {} B content, {} cores",
        args.connections,
        args.seconds,
        args.content_bytes,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "{}",
        table(
            &["scenario", "msg/s", "p50 ms", "p99 ms", "messages"],
            &rows
        )
    );
    println!(
        "durable EVENT / echo: {:.2}; REQ / echo: {:.2}",
        rates[1] / rates[0],
        rates[2] / rates[0]
    );
    server_rt.block_on(system.stop());
    Ok(())
}
