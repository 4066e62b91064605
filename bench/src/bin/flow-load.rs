//! Signing requests through the whole system: the email gate (confirmations automated) and
//! the simulated radio link to the in-process cosigner.
//!
//! Reports requests per second, the latency of each stage (the satellite always in view, so
//! no time waiting for a pass or for the user is counted), and the air bytes per request
//! (both directions, frames, acknowledgements and resends included) against the raw PSBT's
//! size, the baseline a link that carried PSBTs as they are would start from.
//!
//! `--store postgres` runs the same load twice, on redb (the baseline) and on PostgreSQL (a
//! private cluster), and prints them side by side.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use base64::Engine as _;
use clap::Parser;
use satcosign_bench::{table, Samples};
use satcosign_bridge::config::{Config, Network};
use satcosign_bridge::dev::{start_dev_with, Sky};
use satcosign_bridge::mail::{Email, Mailer, SendFuture};
use satcosign_bridge::state::State;
use satcosign_cosigner::decision::RequestId;
use tokio::sync::Notify;

#[derive(Parser, Debug)]
#[command(about = "Signing requests through the email gate and the simulated link")]
struct Args {
    /// Requests in the load phase.
    #[arg(long, default_value_t = 1000)]
    requests: usize,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Link bit rate (a fast pass; air bytes do not depend on it).
    #[arg(long, default_value_t = 1_000_000)]
    bitrate: u64,
    /// Frame loss on the link.
    #[arg(long, default_value_t = 0.0)]
    loss: f64,
    /// `redb` alone, or `postgres` too (side by side with redb).
    #[arg(long, default_value = "redb", value_parser = ["redb", "postgres"])]
    store: String,
}

/// One engine's headline figures.
struct Headline {
    engine: &'static str,
    per_sec: f64,
    submit_ms: f64,
    confirm_ms: f64,
    total_ms: f64,
}

/// Keeps each emailed code in memory, as a user who reads mail at once.
#[derive(Clone, Default)]
struct Codes {
    by_id: Arc<Mutex<HashMap<String, String>>>,
    arrived: Arc<Notify>,
}

impl Mailer for Codes {
    fn send(&self, email: Email) -> SendFuture<'_> {
        Box::pin(async move {
            if let Some(at) = email.text.find("/confirm/") {
                let rest = &email.text[at + 9..];
                if let Some((id, tail)) = rest.split_once("?t=") {
                    let code: String = tail
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                        .collect();
                    self.by_id.lock().expect("lock").insert(id.to_owned(), code);
                    self.arrived.notify_waiters();
                }
            }
            Ok(())
        })
    }
    fn describe(&self) -> String {
        "memory".into()
    }
}

impl Codes {
    async fn code(&self, id: &RequestId) -> String {
        let key = id.to_string();
        loop {
            let notified = self.arrived.notified();
            if let Some(c) = self.by_id.lock().expect("lock").remove(&key) {
                return c;
            }
            notified.await;
        }
    }
}

#[derive(Default)]
struct Stages {
    submit: Samples,
    email: Samples,
    confirm: Samples,
    queue: Samples,
    link: Samples,
    deliver: Samples,
    total: Samples,
}

fn micros(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

#[tokio::main]
#[allow(clippy::print_stdout)] // a benchmark prints its table
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let mut headlines = vec![measure(&args, None, 1).await?];
    if args.store == "postgres" {
        let pg =
            tokio::task::spawn_blocking(satcosign_bridge::dev_postgres::Postgres::start).await?;
        headlines.push(measure(&args, Some(&pg), 1).await?);
        headlines.push(measure(&args, Some(&pg), 2).await?);
    }
    if headlines.len() > 1 {
        let base = headlines[0].per_sec;
        let rows: Vec<Vec<String>> = headlines
            .iter()
            .map(|h| {
                vec![
                    h.engine.to_owned(),
                    format!("{:.1}", h.per_sec),
                    format!("{:.2}", h.per_sec / base),
                    format!("{:.1}", h.submit_ms),
                    format!("{:.1}", h.confirm_ms),
                    format!("{:.1}", h.total_ms),
                ]
            })
            .collect();
        println!("\nthe same load on each engine (p50 latencies)");
        println!(
            "{}",
            table(
                &[
                    "engine",
                    "requests/s",
                    "x redb",
                    "submit ms",
                    "confirm ms",
                    "whole request ms"
                ],
                &rows
            )
        );
    }
    Ok(())
}

/// Runs the load on redb, or on the PostgreSQL cluster `pg` through `replicas` replicas
/// (requests and confirmations spread over them); prints its tables.
#[allow(clippy::print_stdout)] // a benchmark prints its table
async fn measure(
    args: &Args,
    pg: Option<&satcosign_bridge::dev_postgres::Postgres>,
    replicas: usize,
) -> anyhow::Result<Headline> {
    let dir = tempfile::tempdir()?;
    let mut config = Config {
        data_dir: dir.path().join("data"),
        network: Network::Regtest,
        ..Config::default()
    };
    config.electrum.tcp = String::new();
    config.http.listen = "127.0.0.1:0".into();
    config.nostr.listen = String::new();
    config.gate.max_requests_per_hour = u32::MAX;
    config.default_policy = satcosign_cosigner::testkit::generous_policy();
    let engine = match (pg, replicas) {
        (Some(pg), n) => {
            config.store.backend = satcosign_bridge::config::Backend::Postgres;
            // A database of its own for each run.
            config.store.url = Some(pg.database(&format!("flow_{n}")).await?);
            if n > 1 {
                "postgres, 2 replicas"
            } else {
                "postgres"
            }
        }
        (None, _) => "redb",
    };
    let sky = Sky {
        pass_up: Duration::from_secs(1 << 30),
        pass_period: Duration::from_secs(1 << 30),
        loss: args.loss,
        bitrate: args.bitrate,
        ..Sky::default()
    };
    let codes = Codes::default();
    let system = start_dev_with(config, sky, Some(Box::new(codes.clone()))).await?;
    let service = system.bridge.service.clone().context("service")?;
    // The first drives the ground; the others serve clients beside it.
    let mut others = Vec::new();
    for _ in 1..replicas {
        others.push(system.replica(|_| {}).await?);
    }
    let services: Arc<Vec<Arc<satcosign_bridge::service::Service>>> = Arc::new(
        std::iter::once(service.clone())
            .chain(others.iter().filter_map(|r| r.service.clone()))
            .collect(),
    );
    let key = service.new_key(None).await?;
    let wallet = Arc::new(satcosign_cosigner::testkit::TestWallet::with_satellite(key));

    // Every state change, timed.
    let seen: Arc<Mutex<HashMap<(RequestId, State), Instant>>> = Arc::default();
    let delivered = Arc::new(Notify::new());
    {
        let mut events = service.events();
        let seen = seen.clone();
        let delivered = delivered.clone();
        tokio::spawn(async move {
            while let Ok(e) = events.recv().await {
                seen.lock()
                    .expect("lock")
                    .insert((e.id, e.state), Instant::now());
                if e.state == State::Delivered {
                    delivered.notify_waiters();
                }
            }
        });
    }
    let wait = {
        let seen = seen.clone();
        let delivered = delivered.clone();
        move |id: RequestId| {
            let seen = seen.clone();
            let delivered = delivered.clone();
            async move {
                loop {
                    let n = delivered.notified();
                    if seen
                        .lock()
                        .expect("lock")
                        .contains_key(&(id, State::Delivered))
                    {
                        return;
                    }
                    let _ = tokio::time::timeout(Duration::from_millis(200), n).await;
                }
            }
        }
    };

    let (_, reg) = service
        .register_wallet(
            vec![wallet.descriptor.clone()],
            "bench@example.org".into(),
            "bench".into(),
            None,
            None,
        )
        .await?;
    service.confirm(reg, &codes.code(&reg).await, true).await?;
    wait(reg).await;

    let one = |salt: u32| {
        let service = services[salt as usize % services.len()].clone();
        let codes = codes.clone();
        let wallet = wallet.clone();
        let wait = wait.clone();
        async move {
            let psbt = wallet.typical_signed_psbt(1, salt);
            let raw = psbt.serialize();
            let b64 = base64::engine::general_purpose::STANDARD.encode(&raw);
            let t0 = Instant::now();
            let id = service
                .submit_psbt(Some(wallet.wallet.id), b64.as_bytes(), None)
                .await?;
            let t1 = Instant::now();
            let code = codes.code(&id).await;
            let t2 = Instant::now();
            service.confirm(id, &code, true).await?;
            let t3 = Instant::now();
            wait(id).await;
            anyhow::Ok((id, raw.len(), t0, t1, t2, t3))
        }
    };

    // The typical request alone on the air: its own bytes, no sharing of frames.
    let before = system.channel.stats();
    let mut raw_sizes = Vec::new();
    let singles = 20;
    for i in 0..singles {
        let (_, raw, ..) = one(1_000_000 + i).await?;
        raw_sizes.push(raw);
    }
    let after = system.channel.stats();
    let raw_avg = raw_sizes.iter().sum::<usize>() as f64 / raw_sizes.len() as f64;
    let air_single = (after.bytes - before.bytes) as f64 / f64::from(singles);

    // The load: many requests in flight.
    let before = system.channel.stats();
    let started = Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(args.concurrency));
    let mut handles = Vec::with_capacity(args.requests);
    for i in 0..args.requests {
        let permit = sem.clone().acquire_owned().await?;
        let fut = one(i as u32);
        handles.push(tokio::spawn(async move {
            let r = fut.await;
            drop(permit);
            r
        }));
    }
    let mut results = Vec::with_capacity(handles.len());
    for h in handles {
        results.push(h.await??);
    }
    let elapsed = started.elapsed();
    let after = system.channel.stats();
    let air_load = (after.bytes - before.bytes) as f64 / args.requests as f64;

    let mut st = Stages::default();
    let seen = seen.lock().expect("lock").clone();
    for (id, _, t0, t1, t2, t3) in &results {
        let at = |s| seen.get(&(*id, s)).copied();
        let (Some(awaiting), Some(queued), Some(signed), Some(done)) = (
            at(State::AwaitingEmail),
            at(State::Queued),
            at(State::Signed),
            at(State::Delivered),
        ) else {
            continue;
        };
        st.submit.micros.push(micros(*t1 - *t0));
        st.email
            .micros
            .push(micros(awaiting.saturating_duration_since(*t1)));
        st.confirm.micros.push(micros(*t3 - *t2));
        st.queue
            .micros
            .push(micros(queued.saturating_duration_since(*t3)));
        st.link
            .micros
            .push(micros(signed.saturating_duration_since(queued)));
        st.deliver
            .micros
            .push(micros(done.saturating_duration_since(signed)));
        st.total
            .micros
            .push(micros(done.saturating_duration_since(*t0) - (*t2 - *t1)));
    }
    let rows: Vec<Vec<String>> = [
        ("submit (check, store)", &mut st.submit),
        ("received -> emailed", &mut st.email),
        ("confirm (code checked, consumed)", &mut st.confirm),
        ("confirmed -> queued on the link", &mut st.queue),
        ("queued -> signed (air + cosigner)", &mut st.link),
        ("signed -> delivered", &mut st.deliver),
        ("whole request, less the user", &mut st.total),
    ]
    .into_iter()
    .map(|(name, s)| {
        vec![
            name.to_owned(),
            format!("{:.1}", f64::from(s.quantile(0.5)) / 1000.0),
            format!("{:.1}", f64::from(s.quantile(0.95)) / 1000.0),
        ]
    })
    .collect();
    let p50 = |s: &mut Samples| f64::from(s.quantile(0.5)) / 1000.0;
    let headline = Headline {
        engine,
        per_sec: results.len() as f64 / elapsed.as_secs_f64(),
        submit_ms: p50(&mut st.submit),
        confirm_ms: p50(&mut st.confirm),
        total_ms: p50(&mut st.total),
    };
    println!(
        "flow-load on {engine}: {} requests, {} in flight, link {} bit/s, loss {}",
        args.requests, args.concurrency, args.bitrate, args.loss
    );
    println!(
        "throughput: {:.1} requests/s ({} completed in {:.1} s)\n",
        results.len() as f64 / elapsed.as_secs_f64(),
        results.len(),
        elapsed.as_secs_f64()
    );
    println!("{}\n", table(&["stage", "p50 ms", "p95 ms"], &rows));
    let air_rows = vec![
        vec![
            "raw PSBT (baseline)".to_owned(),
            format!("{raw_avg:.0}"),
            "100%".to_owned(),
        ],
        vec![
            "one request alone, both directions".to_owned(),
            format!("{air_single:.0}"),
            format!("{:.0}%", 100.0 * air_single / raw_avg),
        ],
        vec![
            format!("under load ({} in flight)", args.concurrency),
            format!("{air_load:.0}"),
            format!("{:.0}%", 100.0 * air_load / raw_avg),
        ],
    ];
    println!(
        "{}",
        table(
            &["air bytes per request", "bytes", "of raw PSBT"],
            &air_rows
        )
    );
    println!("goal: one request's air bytes at most 60% of the raw PSBT");
    // The system's databases close once nothing here holds its service.
    drop((service, services));
    for replica in others {
        replica.stop().await;
    }
    system.stop().await;
    Ok(headline)
}
