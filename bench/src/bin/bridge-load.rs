//! Load generator for the bridge's Electrum-protocol TCP transport.
//!
//! Opens N concurrent connections, each sending one request and waiting for its answer
//! (closed loop), and reports requests/s and p50/p99 latency for `server.ping`,
//! `cosigner.put` (durable) and `cosigner.get`, and, in the same run and with the same
//! client, for a minimal tokio newline echo server as the baseline. The bridge runs twice,
//! side by side: on redb (the default) and on PostgreSQL (a private cluster). Then reads
//! go to one replica and to two on the same database, each replica a runtime of one worker
//! thread (a machine of one core).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use base64::Engine as _;
use clap::Parser;
use satcosign_bench::{table, Samples};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// Measure the bridge's Electrum TCP throughput and latency against an echo baseline.
#[derive(Parser, Debug)]
#[command(name = "bridge-load", about)]
struct Args {
    /// Concurrent connections.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Seconds per scenario.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Decoded size of each mailbox message, bytes (an encrypted PSBT is ~1 KB).
    #[arg(long, default_value_t = 1024)]
    message_bytes: usize,
}

/// A minimal newline echo server: the fastest any line protocol server could be here.
async fn echo_server() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            let _ = sock.set_nodelay(true);
            tokio::spawn(async move {
                let (r, mut w) = sock.into_split();
                let mut r = BufReader::new(r);
                let mut line = String::new();
                loop {
                    line.clear();
                    match r.read_line(&mut line).await {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {
                            if w.write_all(line.as_bytes()).await.is_err() {
                                break;
                            }
                        }
                    }
                }
            });
        }
    });
    Ok(addr)
}

/// Makes the request line for connection `conn`'s `i`-th request.
type MakeLine = fn(usize, u64, &str) -> String;

fn ping_line(_: usize, i: u64, _: &str) -> String {
    format!(r#"{{"jsonrpc":"2.0","id":{i},"method":"server.ping","params":[]}}"#)
}

fn key(conn: usize, i: u64) -> String {
    format!("{:032x}{:032x}", conn, i % 256)
}

fn put_line(conn: usize, i: u64, msg: &str) -> String {
    format!(
        r#"{{"jsonrpc":"2.0","id":{i},"method":"cosigner.put","params":["{}","{msg}"]}}"#,
        key(conn, i)
    )
}

fn get_line(conn: usize, i: u64, _: &str) -> String {
    format!(
        r#"{{"jsonrpc":"2.0","id":{i},"method":"cosigner.get","params":["{}"]}}"#,
        key(conn, i)
    )
}

/// Runs `make`'s requests from every connection; connection `i` goes to `addrs[i % len]`.
async fn run_scenario(
    addrs: &[SocketAddr],
    args: &Args,
    make: MakeLine,
    message: &str,
) -> anyhow::Result<Samples> {
    let deadline = Duration::from_secs_f64(args.seconds);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for conn in 0..args.connections {
        let message = message.to_owned();
        let addr = addrs[conn % addrs.len()];
        tasks.push(tokio::spawn(async move {
            let sock = TcpStream::connect(addr).await?;
            sock.set_nodelay(true)?;
            let (r, mut w) = sock.into_split();
            let mut r = BufReader::new(r);
            let mut micros = Vec::new();
            let mut answer = String::new();
            let mut i = 0u64;
            while start.elapsed() < deadline {
                let mut req = make(conn, i, &message);
                req.push('\n');
                let t = Instant::now();
                w.write_all(req.as_bytes()).await?;
                answer.clear();
                if r.read_line(&mut answer).await? == 0 {
                    anyhow::bail!("server closed the connection");
                }
                if answer.contains("\"error\"") {
                    anyhow::bail!("request failed: {answer}");
                }
                micros.push(u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX));
                i += 1;
            }
            Ok::<_, anyhow::Error>(micros)
        }));
    }
    let mut samples = Samples::default();
    for t in tasks {
        samples.micros.extend(t.await??);
    }
    samples.elapsed = start.elapsed();
    Ok(samples)
}

#[allow(clippy::print_stdout)]
fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // Servers and clients get separate runtimes so the load generator's own work does not
    // run on the server's worker threads (the machine's cores are still shared).
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
    let pg_dir = tempfile::tempdir()?;
    let pg = satcosign_bridge::dev_postgres::Postgres::start();
    let start_bridge = |data_dir: std::path::PathBuf, pg_url: Option<String>| async move {
        let mut config = satcosign_bridge::config::Config {
            data_dir,
            ..Default::default()
        };
        if let Some(url) = pg_url {
            config.store.backend = satcosign_bridge::config::Backend::Postgres;
            config.store.url = Some(url);
        }
        config.electrum.tcp = "127.0.0.1:0".into();
        config.http.listen = String::new();
        config.nostr.listen = String::new();
        // Every load connection comes from 127.0.0.1: this measures throughput, not the
        // per-client shares (`scripts/bench hostile` measures those).
        config.electrum.max_connections_per_peer = config.electrum.max_connections;
        config.mailbox.puts_per_minute_per_peer = 100_000;
        config.mailbox.put_bytes_per_minute_per_peer = 1 << 40;
        config.limits.read_bytes_per_second_per_peer = 1 << 40;
        config.limits.read_burst_bytes_per_peer = 1 << 40;
        config.mailbox.max_total_bytes = 1 << 40;
        anyhow::Ok(satcosign_bridge::start(&config).await?)
    };
    let (echo, bridge, pg_bridge) = server_rt.block_on(async {
        let echo = echo_server().await?;
        let bridge = start_bridge(dir.path().join("data"), None).await?;
        let pg_bridge = start_bridge(pg_dir.path().join("data"), Some(pg.url())).await?;
        anyhow::Ok((echo, bridge, pg_bridge))
    })?;
    // Replicas as machines of one core each, on the same database: each has a runtime of
    // one worker thread.
    let one_core = |name: &str| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .thread_name(name)
            .build()
    };
    let (replica_rt, second_rt) = (one_core("replica-a")?, one_core("replica-b")?);
    let replica_a = replica_rt.block_on(start_bridge(pg_dir.path().join("a"), Some(pg.url())))?;
    let replica_b = second_rt.block_on(start_bridge(pg_dir.path().join("b"), Some(pg.url())))?;
    let bridge_addr = [bridge.electrum_tcp.expect("tcp listener configured")];
    let pg_addr = [pg_bridge.electrum_tcp.expect("tcp listener configured")];
    let one = [replica_a.electrum_tcp.expect("tcp listener configured")];
    let two = [
        one[0],
        replica_b.electrum_tcp.expect("tcp listener configured"),
    ];
    let message =
        base64::engine::general_purpose::STANDARD.encode(vec![0x5au8; args.message_bytes]);

    let scenarios: [(&str, &[SocketAddr], MakeLine); 8] = [
        ("echo server (baseline)", &[echo], ping_line),
        ("bridge server.ping", &bridge_addr, ping_line),
        ("redb: cosigner.put (durable)", &bridge_addr, put_line),
        ("redb: cosigner.get", &bridge_addr, get_line),
        ("postgres: cosigner.put (durable)", &pg_addr, put_line),
        ("postgres: cosigner.get", &pg_addr, get_line),
        ("postgres: get, 1 one-core replica", &one, get_line),
        ("postgres: get, 2 one-core replicas", &two, get_line),
    ];
    let mut rows = Vec::new();
    let mut rates = Vec::new();
    for (name, addr, make) in scenarios {
        let mut s = client_rt.block_on(run_scenario(addr, &args, make, &message))?;
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
        "bridge-load: {} connections, {:.1} s per scenario, {} B messages, {} cores",
        args.connections,
        args.seconds,
        args.message_bytes,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "{}",
        table(
            &["scenario", "req/s", "p50 ms", "p99 ms", "requests"],
            &rows
        )
    );
    println!(
        "server.ping / echo baseline: {:.2} (goal >= 0.50); durable puts/s: redb {:.0}, \
         postgres {:.0} (goal >= 5000 each); postgres reads, 2 replicas / 1: {:.2} \
         (goal >= 1.6)",
        rates[1] / rates[0],
        rates[2],
        rates[4],
        rates[7] / rates[6]
    );
    server_rt.block_on(async {
        bridge.stop().await;
        pg_bridge.stop().await;
    });
    replica_rt.block_on(replica_a.stop());
    second_rt.block_on(replica_b.stop());
    drop(pg);
    Ok(())
}
