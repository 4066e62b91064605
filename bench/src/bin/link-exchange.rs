//! A request and its reply over the simulated half-duplex radio: total time, transmissions
//! and bytes on air, against the physical limit and a stop-and-wait baseline (one frame,
//! wait for its acknowledgement, as AX.25 connected mode with window 1) on the same channel.
//! Runs in tokio's paused virtual time; each cell is the mean over several seeds.

use std::time::Duration;

use clap::Parser;
use satcosign_bench::table;
use satcosign_link::crypto::{Cipher, Identity};
use satcosign_link::engine::{Engine, EngineConfig};
use satcosign_link::link::LinkHandle;
use satcosign_link::store::MemStore;
use satcosign_link::transport::sim::{Loss, Passes, SimChannel, SimConfig, SimTransport};
use satcosign_link::transport::Transport;
use tokio::time::Instant;

/// Link exchange benchmark.
#[derive(Parser, Debug)]
#[command(name = "link-exchange", about)]
struct Args {
    /// Seeds per cell.
    #[arg(long, default_value_t = 20)]
    seeds: u64,
    /// Bit rate.
    #[arg(long, default_value_t = 9600)]
    bitrate: u64,
    /// Preamble (TXDELAY), milliseconds.
    #[arg(long, default_value_t = 300)]
    preamble_ms: u64,
}

struct Run {
    time: Duration,
    transmissions: u64,
    bytes: u64,
}

fn sim(args: &Args, latency: Duration, loss: f64, seed: u64) -> SimConfig {
    SimConfig {
        bitrate: args.bitrate,
        latency,
        preamble: Duration::from_millis(args.preamble_ms),
        turnaround: Duration::from_millis(10),
        loss: Loss::Bernoulli(loss),
        seed,
        ..SimConfig::default()
    }
}

fn link(side: usize, channel: &SimChannel, cfg: &SimConfig) -> LinkHandle<MemStore> {
    link_with(side, channel, cfg, false)
}

/// A side of the link; with `schedule`, it is told the channel's passes, as the bridge is.
fn link_with(
    side: usize,
    channel: &SimChannel,
    cfg: &SimConfig,
    schedule: bool,
) -> LinkHandle<MemStore> {
    let (me, peer) = if side == 0 {
        ([1u8; 32], [2u8; 32])
    } else {
        ([2u8; 32], [1u8; 32])
    };
    let cipher = Cipher::new(
        &Identity::from_bytes(me),
        &Identity::from_bytes(peer).public(),
    );
    let engine_cfg = EngineConfig {
        bitrate: cfg.bitrate,
        latency: cfg.latency,
        preamble: cfg.preamble + cfg.turnaround,
        // Erasure coding sized to the channel's loss, as an operator would set it.
        expected_loss: cfg.loss.mean(),
        ..EngineConfig::default()
    };
    let jitter = if side == 0 { 1.0 } else { 1.37 };
    let mut engine = Engine::new(engine_cfg, cipher, MemStore::new(), jitter).expect("engine");
    if schedule {
        engine.set_schedule(channel.schedule());
    }
    LinkHandle::spawn(engine, channel.attach(side))
}

/// A request confirmed `confirm_at` into the channel's life and the satellite's reply, on a
/// channel with passes: the time from confirmation to the reply, the part of it spent
/// waiting for the first pass, and how many passes carried it.
struct PassRun {
    time: Duration,
    waiting: Duration,
    /// Time in view between confirmation and reply.
    in_view: Duration,
    passes: u32,
    transmissions: u64,
}

async fn over_passes(cfg: SimConfig, size: usize, confirm_at: Duration) -> PassRun {
    let channel = SimChannel::new(cfg.clone());
    let schedule = channel.schedule();
    let ground = link_with(0, &channel, &cfg, true);
    let sat = link_with(1, &channel, &cfg, true);
    tokio::time::sleep(confirm_at).await;
    let start = Instant::now();
    request_and_reply(&ground, &sat, size).await;
    let end = Instant::now();
    let first = match schedule.current(start) {
        Some(w) => w,
        None => schedule.next(start).expect("passes"),
    };
    let mut passes = 1;
    let mut w = first;
    let overlap = |w: satcosign_link::schedule::Window| {
        w.end.min(end).saturating_duration_since(w.start.max(start))
    };
    let mut in_view = overlap(w);
    while w.end < end {
        w = schedule.next(w.start).expect("passes");
        passes += 1;
        in_view += overlap(w);
    }
    let air = channel.stats();
    ground.stop();
    sat.stop();
    PassRun {
        time: end - start,
        waiting: first.start.saturating_duration_since(start),
        in_view,
        passes,
        transmissions: air.transmissions,
    }
}

/// The ground sends a request of `size` bytes; the satellite replies as soon as it is
/// delivered; returns when the reply is delivered.
async fn request_and_reply(ground: &LinkHandle<MemStore>, sat: &LinkHandle<MemStore>, size: usize) {
    ground.send(vec![0x11; size]).await.expect("send");
    let (id, _) = sat.recv().await.expect("request");
    sat.send(vec![0x22; size]).await.expect("reply");
    sat.ack(id).expect("ack");
    let (_, reply) = ground.recv().await.expect("reply");
    assert_eq!(reply.len(), size);
}

/// Ours: the ground sends a request; the satellite replies as soon as it is delivered.
async fn ours(cfg: SimConfig, size: usize) -> Run {
    let channel = SimChannel::new(cfg.clone());
    let ground = link(0, &channel, &cfg);
    let sat = link(1, &channel, &cfg);
    let start = Instant::now();
    request_and_reply(&ground, &sat, size).await;
    let time = start.elapsed();
    let air = channel.stats();
    ground.stop();
    sat.stop();
    Run {
        time,
        transmissions: air.transmissions,
        bytes: air.bytes,
    }
}

/// Sends `frames` stop-and-wait from `tx` to `rx`: one frame, then wait for its ack.
async fn stop_and_wait_one_way(
    tx: &mut SimTransport,
    rx: &mut SimTransport,
    frames: usize,
    frame_len: usize,
    timeout: Duration,
) {
    let mut seq = 0u32;
    let mut expected = 0u32;
    while (seq as usize) < frames {
        let mut f = vec![0u8; frame_len];
        f[..4].copy_from_slice(&seq.to_be_bytes());
        tx.transmit(vec![f]).await.expect("transmit");
        let deadline = Instant::now() + timeout;
        // Wait for the frame at the receiver, which acknowledges every frame it hears.
        let acked = loop {
            tokio::select! {
                got = rx.recv() => {
                    let got = got.expect("recv");
                    let n = u32::from_be_bytes([got[0], got[1], got[2], got[3]]);
                    if n == expected { expected += 1; }
                    let mut ack = vec![0u8; 31];
                    ack[..4].copy_from_slice(&n.to_be_bytes());
                    rx.transmit(vec![ack]).await.expect("ack");
                }
                ack = tx.recv() => {
                    let ack = ack.expect("recv");
                    if u32::from_be_bytes([ack[0], ack[1], ack[2], ack[3]]) == seq { break true; }
                }
                _ = tokio::time::sleep_until(deadline) => break false,
            }
        };
        if acked {
            seq += 1;
        }
    }
}

async fn stop_and_wait(cfg: SimConfig, size: usize) -> Run {
    let channel = SimChannel::new(cfg.clone());
    let mut a = channel.attach(0);
    let mut b = channel.attach(1);
    // Same frame size and payload per frame as the link uses (256-byte frames).
    let per_frame = 256 - 33;
    let frames = size.div_ceil(per_frame);
    let airtime = |bytes: usize| Duration::from_secs_f64(bytes as f64 * 8.0 / cfg.bitrate as f64);
    let timeout = (cfg.preamble + cfg.turnaround) * 2
        + airtime(256 + 31)
        + cfg.latency * 2
        + Duration::from_millis(200);
    let start = Instant::now();
    stop_and_wait_one_way(&mut a, &mut b, frames, 256, timeout).await;
    stop_and_wait_one_way(&mut b, &mut a, frames, 256, timeout).await;
    let air = channel.stats();
    Run {
        time: start.elapsed(),
        transmissions: air.transmissions,
        bytes: air.bytes,
    }
}

/// A runtime in tokio's paused virtual time.
fn paused() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("runtime")
}

fn mean(runs: &[Run]) -> (f64, f64, f64) {
    let n = runs.len() as f64;
    (
        runs.iter().map(|r| r.time.as_secs_f64()).sum::<f64>() / n,
        runs.iter().map(|r| r.transmissions as f64).sum::<f64>() / n,
        runs.iter().map(|r| r.bytes as f64).sum::<f64>() / n,
    )
}

#[allow(clippy::print_stdout)]
fn main() {
    let args = Args::parse();
    let mut rows = Vec::new();
    for size in [1024usize, 4096] {
        for latency_ms in [10u64, 250] {
            for loss in [0.0, 0.01, 0.10, 0.30] {
                let latency = Duration::from_millis(latency_ms);
                let (mut a, mut b) = (Vec::new(), Vec::new());
                for seed in 1..=args.seeds {
                    let cfg = sim(&args, latency, loss, seed);
                    let rt = paused();
                    a.push(rt.block_on(ours(cfg.clone(), size)));
                    b.push(rt.block_on(stop_and_wait(cfg, size)));
                }
                let limit = (2 * size * 8) as f64 / args.bitrate as f64
                    + 2.0 * (args.preamble_ms as f64 / 1000.0)
                    + 2.0 * latency.as_secs_f64();
                let (t, tx, bytes) = mean(&a);
                let (st, stx, _) = mean(&b);
                rows.push(vec![
                    format!("{} KB", size / 1024),
                    format!("{latency_ms} ms"),
                    format!("{:.0}%", loss * 100.0),
                    format!("{t:.2}"),
                    format!("{limit:.2}"),
                    format!("{:.2}x", t / limit),
                    format!("{tx:.1}"),
                    format!("{bytes:.0}"),
                    format!("{st:.2}"),
                    format!("{stx:.0}"),
                    format!("{:.1}x", st / t),
                ]);
            }
        }
    }
    println!(
        "link-exchange: request + reply of each size, {} bit/s half duplex, {} ms preamble, mean of {} seeds",
        args.bitrate, args.preamble_ms, args.seeds
    );
    println!(
        "{}",
        table(
            &[
                "size each way",
                "one-way latency",
                "frame loss",
                "time s",
                "limit s",
                "vs limit",
                "transmissions",
                "bytes on air",
                "stop-and-wait s",
                "s&w transmissions",
                "speedup"
            ],
            &rows
        )
    );
    println!("goals: <= 1.15x limit at 0% loss, <= 1.5x at 10%, completes at 30%, >= 3x faster than stop-and-wait at 10%");

    // Short passes: 30 s in view every 90 s, 10% loss, confirmed at a moment spread over a
    // period (by seed), against the same traffic in one long window.
    let mut rows = Vec::new();
    for size in [512usize, 1024, 4096] {
        let (mut long, mut short) = (Vec::new(), Vec::new());
        for seed in 1..=args.seeds {
            let base = sim(&args, Duration::from_millis(10), 0.10, seed);
            long.push(paused().block_on(ours(base.clone(), size)));
            let passes = SimConfig {
                passes: Some(Passes {
                    up: Duration::from_secs(30),
                    period: Duration::from_secs(90),
                }),
                ..base
            };
            let confirm_at = Duration::from_millis(seed.wrapping_mul(7919) % 90_000);
            short.push(paused().block_on(over_passes(passes, size, confirm_at)));
        }
        let n = short.len() as f64;
        let avg = |f: &dyn Fn(&PassRun) -> f64| short.iter().map(f).sum::<f64>() / n;
        let (lt, ltx, _) = mean(&long);
        let t = avg(&|r| r.time.as_secs_f64());
        let wait = avg(&|r| r.waiting.as_secs_f64());
        let in_pass = avg(&|r| r.in_view.as_secs_f64());
        let worst_passes = short.iter().map(|r| r.passes).max().unwrap_or(0);
        rows.push(vec![
            format!("{size} B"),
            format!("{lt:.2}"),
            format!("{ltx:.1}"),
            format!("{t:.1}"),
            format!("{wait:.1}"),
            format!("{in_pass:.2}"),
            format!("{:.2}x", in_pass / lt),
            format!("{:.2}", avg(&|r| f64::from(r.passes))),
            format!("{worst_passes}"),
            format!("{:.1}", avg(&|r| r.transmissions as f64)),
        ]);
    }
    println!();
    println!(
        "link-exchange over passes: request + reply, 30 s in view every 90 s, 10% loss, confirmed at a moment spread over the period; mean of {} seeds",
        args.seeds
    );
    println!(
        "{}",
        table(
            &[
                "size each way",
                "one long window s",
                "long transmissions",
                "passes: confirmation to reply s",
                "of which waiting for the pass s",
                "in view s",
                "in view vs long",
                "passes used (mean)",
                "passes used (worst)",
                "transmissions"
            ],
            &rows
        )
    );
    println!("goal: carried in the first pass with room for it (passes used 1, worst <= 2 when confirmed near a pass's end), in-pass time near the long window's");
}
