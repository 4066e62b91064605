//! Durable mailbox puts per second (`cosigner.put`'s storage, each answered only once on
//! disk) on the bridge's two backends in the same run: redb with its group commit (the
//! baseline) and PostgreSQL (a private cluster started for the run, `dev_postgres`), with
//! 1 and 64 writers, and with two bridges' pools on one PostgreSQL database.

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use satcosign_bench::table;
use satcosign_bridge::mailbox_rows::MailboxRows;
use satcosign_bridge::postgres::PgStore;
use satcosign_bridge::store::Store;

/// Storage benchmark.
#[derive(Parser, Debug)]
#[command(name = "store-put", about)]
struct Args {
    /// Seconds per cell.
    #[arg(long, default_value_t = 3)]
    secs: u64,
    /// Bytes per message (a partially signed 2-of-3 PSBT, encrypted and base64: ~1.5 KB).
    #[arg(long, default_value_t = 1500)]
    bytes: usize,
}

/// Durable puts per second by `writers` tasks spread over `backends` for `secs`.
async fn puts_per_sec(backends: &[Arc<dyn MailboxRows>], writers: usize, args: &Args) -> f64 {
    let message = "A".repeat(args.bytes);
    let deadline = Instant::now() + Duration::from_secs(args.secs);
    let mut tasks = Vec::new();
    for w in 0..writers {
        let rows = backends[w % backends.len()].clone();
        let message = message.clone();
        tasks.push(tokio::spawn(async move {
            let mut done = 0u64;
            let mut n = 0u32;
            while Instant::now() < deadline {
                let mut key = [0u8; 32];
                key[..4].copy_from_slice(&(w as u32).to_be_bytes());
                key[4..8].copy_from_slice(&n.to_be_bytes());
                n = n.wrapping_add(1);
                rows.put(key, u64::MAX / 2, message.clone(), u64::MAX / 4)
                    .await
                    .expect("put");
                done += 1;
            }
            done
        }));
    }
    let start = Instant::now();
    let mut total = 0;
    for t in tasks {
        total += t.await.expect("writer");
    }
    total as f64 / start.elapsed().as_secs_f64()
}

#[allow(clippy::print_stdout)]
#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dir = tempfile::tempdir()?;
    let redb: Arc<dyn MailboxRows> = Arc::new(Store::open(&dir.path().join("bench.redb"))?);
    let pg = tokio::task::spawn_blocking(satcosign_bridge::dev_postgres::Postgres::start).await?;
    let one: Arc<dyn MailboxRows> = Arc::new(PgStore::connect(&pg.url(), 32).await?);
    let two: Arc<dyn MailboxRows> = Arc::new(PgStore::connect(&pg.url(), 32).await?);
    let mut rows = Vec::new();
    let mut baseline = Vec::new();
    for writers in [1usize, 64] {
        let base = puts_per_sec(std::slice::from_ref(&redb), writers, &args).await;
        baseline.push(base);
        rows.push(vec![
            "redb (baseline)".into(),
            writers.to_string(),
            format!("{base:.0}"),
            "1.00".into(),
        ]);
    }
    for (name, backends) in [
        ("PostgreSQL, one bridge", vec![one.clone()]),
        ("PostgreSQL, two bridges", vec![one.clone(), two.clone()]),
    ] {
        for (i, writers) in [1usize, 64].into_iter().enumerate() {
            let r = puts_per_sec(&backends, writers, &args).await;
            rows.push(vec![
                name.into(),
                writers.to_string(),
                format!("{r:.0}"),
                format!("{:.2}", r / baseline[i]),
            ]);
        }
    }
    println!(
        "store-put: durable mailbox puts of {} bytes, {} s per cell",
        args.bytes, args.secs
    );
    println!(
        "{}",
        table(&["backend", "writers", "puts/s", "x redb"], &rows)
    );
    println!("goal (#18): PostgreSQL durable puts at least 5,000/s on this 2-core machine");
    drop(pg);
    Ok(())
}
