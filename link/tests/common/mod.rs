//! Two link endpoints over a simulated channel, in tokio's paused virtual time.
#![allow(dead_code)]

use std::collections::HashMap;
use std::time::Duration;

use satcosign_link::crypto::{Cipher, Identity};
use satcosign_link::engine::{Engine, EngineConfig};
use satcosign_link::link::LinkHandle;
use satcosign_link::store::MemStore;
use satcosign_link::transport::sim::{SimChannel, SimConfig};

pub const GROUND: [u8; 32] = [1; 32];
pub const SAT: [u8; 32] = [2; 32];

/// A runtime in tokio's paused virtual time: an hour of passes in milliseconds.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("runtime")
}

/// The engine's view of the channel. Even seeds also turn on erasure coding sized to the
/// channel's loss, so the property tests cover both plain selective repeat and FEC.
pub fn engine_config(sim: &SimConfig) -> EngineConfig {
    let loss = sim.loss.mean();
    EngineConfig {
        bitrate: sim.bitrate,
        latency: sim.latency,
        preamble: sim.preamble + sim.turnaround,
        expected_loss: if sim.seed.is_multiple_of(2) {
            loss
        } else {
            0.0
        },
        ..EngineConfig::default()
    }
}

/// Starts side `side` (0 ground, 1 satellite) on `channel` with `store`.
pub fn start(
    side: usize,
    channel: &SimChannel,
    store: &MemStore,
    sim: &SimConfig,
) -> LinkHandle<MemStore> {
    start_with(side, channel, store, engine_config(sim))
}

/// As [`start`], with the engine's configuration given.
pub fn start_with(
    side: usize,
    channel: &SimChannel,
    store: &MemStore,
    config: EngineConfig,
) -> LinkHandle<MemStore> {
    // Both ends know the passes, as the bridge and a satellite with orbit predictions do.
    let engine = engine(side, config, store, channel.schedule());
    LinkHandle::spawn(engine, channel.attach(side))
}

/// The engine of side `side` (0 ground, 1 satellite) with `config` on `store`, following
/// `schedule`.
pub fn engine(
    side: usize,
    config: EngineConfig,
    store: &MemStore,
    schedule: satcosign_link::schedule::Schedule,
) -> Engine<MemStore> {
    let (me, peer) = if side == 0 {
        (GROUND, SAT)
    } else {
        (SAT, GROUND)
    };
    let me = Identity::from_bytes(me);
    let cipher = Cipher::new(&me, &Identity::from_bytes(peer).public());
    let jitter = if side == 0 { 1.0 } else { 1.37 };
    let mut engine = Engine::new(config, cipher, store.clone(), jitter).expect("engine");
    engine.set_schedule(schedule);
    engine
}

/// The pass fixture (`fixtures/passes/`, made by Skyfield): the element set, the two
/// stations, the span it covers, and the windows Skyfield found.
pub struct PassFixture {
    pub orbit: satcosign_link::orbit::Orbit,
    pub stations: Vec<satcosign_link::orbit::Station>,
    /// Its start, unix seconds.
    pub start: f64,
    pub days: u64,
    pub windows: Vec<serde_json::Value>,
}

pub fn pass_fixture() -> PassFixture {
    let fixture: serde_json::Value =
        serde_json::from_str(include_str!("../fixtures/passes/passes.json")).expect("fixture");
    let tle: Vec<&str> = fixture["tle"]
        .as_array()
        .expect("tle")
        .iter()
        .map(|l| l.as_str().expect("line"))
        .collect();
    let orbit = satcosign_link::orbit::Orbit::from_tle(tle[0], tle[1]).expect("elements");
    let stations = fixture["stations"]
        .as_array()
        .expect("stations")
        .iter()
        .map(|s| satcosign_link::orbit::Station {
            name: s["name"].as_str().expect("name").to_owned(),
            latitude_deg: s["latitude_deg"].as_f64().expect("lat"),
            longitude_deg: s["longitude_deg"].as_f64().expect("lon"),
            altitude_m: s["altitude_m"].as_f64().expect("alt"),
            min_elevation_deg: s["min_elevation_deg"].as_f64().expect("min"),
        })
        .collect();
    PassFixture {
        orbit,
        stations,
        start: fixture["start_unix"].as_f64().expect("start"),
        days: fixture["days"].as_u64().expect("days"),
        windows: fixture["windows"].as_array().expect("windows").clone(),
    }
}

/// Messages each side received, by payload, with how often.
#[derive(Default, Debug)]
pub struct Received {
    pub by_side: [HashMap<Vec<u8>, usize>; 2],
}

/// Sends `msgs[side]` from each side and runs until both sides received everything the
/// other sent, restarting sides at the given virtual times. Returns what arrived and the
/// virtual time it took. Keeps running `settle` afterwards to catch late duplicates.
pub async fn exchange(
    sim: SimConfig,
    msgs: [Vec<Vec<u8>>; 2],
    restarts: Vec<(Duration, usize)>,
    deadline: Duration,
    settle: Duration,
) -> (Received, Duration, SimChannel) {
    exchange_after(sim, msgs, restarts, deadline, settle, Duration::ZERO).await
}

/// As [`exchange`], but the messages are queued `send_after` into the channel's life.
pub async fn exchange_after(
    sim: SimConfig,
    msgs: [Vec<Vec<u8>>; 2],
    restarts: Vec<(Duration, usize)>,
    deadline: Duration,
    settle: Duration,
    send_after: Duration,
) -> (Received, Duration, SimChannel) {
    let channel = SimChannel::new(sim.clone());
    let stores = [MemStore::new(), MemStore::new()];
    let mut links = [
        start(0, &channel, &stores[0], &sim),
        start(1, &channel, &stores[1], &sim),
    ];
    tokio::time::sleep(send_after).await;
    for side in 0..2 {
        for m in &msgs[side] {
            links[side].send(m.clone()).await.expect("send");
        }
    }
    let t0 = tokio::time::Instant::now();
    let mut received = Received::default();
    let mut restarts = restarts;
    restarts.sort();
    let expected = [msgs[1].len(), msgs[0].len()];
    let mut done_at = None;
    loop {
        let now = t0.elapsed();
        let counts = [
            received.by_side[0].values().sum::<usize>(),
            received.by_side[1].values().sum::<usize>(),
        ];
        if done_at.is_none() && counts[0] >= expected[0] && counts[1] >= expected[1] {
            done_at = Some(now);
        }
        if let Some(d) = done_at {
            if now >= d + settle {
                break;
            }
        }
        if now > deadline {
            if std::env::var_os("LINK_DEBUG").is_some() {
                eprintln!(
                    "deadline: ground {:?}\nsat {:?}",
                    links[0].status(),
                    links[1].status()
                );
            }
            break;
        }
        while restarts.first().is_some_and(|(at, _)| *at <= now) {
            let (_, side) = restarts.remove(0);
            let old =
                std::mem::replace(&mut links[side], start(side, &channel, &stores[side], &sim));
            old.stop();
        }
        let step = tokio::time::sleep(Duration::from_millis(250));
        tokio::select! {
            m = links[0].recv() => {
                let (id, payload) = m.expect("recv");
                *received.by_side[0].entry(payload).or_default() += 1;
                links[0].ack(id).expect("ack");
            }
            m = links[1].recv() => {
                let (id, payload) = m.expect("recv");
                *received.by_side[1].entry(payload).or_default() += 1;
                links[1].ack(id).expect("ack");
            }
            _ = step => {}
        }
    }
    let took = done_at.unwrap_or(deadline);
    for l in links {
        l.stop();
    }
    (received, took, channel)
}

/// Asserts each side received exactly the other's messages, each once and intact.
pub fn assert_exactly_once(received: &Received, msgs: &[Vec<Vec<u8>>; 2]) {
    for side in 0..2 {
        let sent = &msgs[1 - side];
        let got = &received.by_side[side];
        for m in sent {
            let n = got.get(m).copied().unwrap_or(0);
            assert_eq!(
                n,
                1,
                "side {side}: a message of {} bytes arrived {n} times",
                m.len()
            );
        }
        assert_eq!(
            got.len(),
            sent.len(),
            "side {side} received something nobody sent"
        );
    }
}

/// Deterministic message bodies.
pub fn body(tag: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(tag))
        .collect()
}
