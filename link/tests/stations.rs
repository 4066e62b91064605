//! Two ground stations whose passes come from the orbit (the fixture's element set and
//! stations), each its own simulated channel to the satellite, carry one 20 KB message that
//! starts over one station and finishes over the other, in paused virtual time. Every
//! fragment is delivered exactly once and nothing is sent outside any station's pass.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use satcosign_link::engine::EngineConfig;
use satcosign_link::link::LinkHandle;
use satcosign_link::orbit::predict;
use satcosign_link::schedule::{Schedule, Window};
use satcosign_link::store::MemStore;
use satcosign_link::transport::sim::{Loss, SimChannel, SimConfig};
use satcosign_link::transport::stations::{plan, GroundStations, StationsView};
use tokio::time::Instant;

use common::{pass_fixture, runtime, PassFixture};

/// Each fixture station's passes over the fixture's three days, on tokio's clock (the
/// fixture's start is now).
fn passes_from_orbit() -> (Vec<String>, Vec<Vec<Window>>) {
    let PassFixture {
        orbit,
        stations,
        start,
        ..
    } = pass_fixture();
    let from = UNIX_EPOCH + Duration::from_secs_f64(start);
    let predicted =
        predict(&orbit, &stations, from, Duration::from_secs(3 * 86_400)).expect("predicted");
    let now = Instant::now();
    let at = |t: SystemTime| now + t.duration_since(from).expect("after the start");
    let windows = predicted
        .iter()
        .map(|passes| {
            passes
                .iter()
                .map(|p| Window {
                    start: at(p.start),
                    end: at(p.end),
                })
                .collect()
        })
        .collect();
    (stations.into_iter().map(|s| s.name).collect(), windows)
}

/// One side's radio: a [`GroundStations`] over its end of every station's channel, with
/// the passes set; returns the engine's schedule too.
fn radio(
    side: usize,
    names: &[String],
    channels: &[SimChannel],
    windows: &[Vec<Window>],
) -> (GroundStations, StationsView, Schedule) {
    let mut stations = GroundStations::new();
    for (name, channel) in names.iter().zip(channels) {
        stations.add(name, "sim", channel.attach(side));
    }
    let view = stations.view();
    let schedule = view.set_passes(windows);
    (stations, view, schedule)
}

fn link(
    side: usize,
    config: &EngineConfig,
    radio: GroundStations,
    schedule: Schedule,
) -> LinkHandle<MemStore> {
    LinkHandle::spawn(
        common::engine(side, config.clone(), &MemStore::new(), schedule),
        radio,
    )
}

/// What one run showed.
struct Handover {
    first: String,
    second: String,
    ground: Vec<satcosign_link::transport::stations::StationStats>,
    ground_stats: satcosign_link::engine::Stats,
    satellite_stats: satcosign_link::engine::Stats,
    out_of_view: u64,
    delivered: Vec<Vec<u8>>,
}

async fn carry_over_a_handover(loss: f64, seed: u64) -> Handover {
    let (names, windows) = passes_from_orbit();
    let segments = plan(&windows);
    // A pass of one station that the other station's pass follows, each long enough to
    // carry part of the message.
    let pair = segments
        .windows(2)
        .find(|p| {
            p[0].1 != p[1].1
                && p[0].0.len() >= Duration::from_secs(120)
                && p[1].0.len() >= Duration::from_secs(240)
        })
        .expect("a handover between the two stations in three days");
    let (first, second) = (pair[0], pair[1]);
    let sim = SimConfig {
        bitrate: 1200,
        loss: Loss::Bernoulli(loss),
        seed,
        ..SimConfig::default()
    };
    let channels: Vec<SimChannel> = windows
        .iter()
        .enumerate()
        .map(|(k, ws)| {
            SimChannel::with_schedule(
                SimConfig {
                    seed: seed + k as u64,
                    ..sim.clone()
                },
                Schedule::Windows(ws.clone()),
            )
        })
        .collect();
    let config = EngineConfig {
        bitrate: sim.bitrate,
        latency: sim.latency,
        preamble: sim.preamble + sim.turnaround,
        expected_loss: loss,
        ..EngineConfig::default()
    };
    let (ground_radio, ground_view, ground_schedule) = radio(0, &names, &channels, &windows);
    let (sat_radio, _, sat_schedule) = radio(1, &names, &channels, &windows);
    let ground = link(0, &config, ground_radio, ground_schedule);
    let satellite = link(1, &config, sat_radio, sat_schedule);

    // Queue the message a minute before the first station loses the satellite: at 1200
    // bit/s, 20 KB takes more than two minutes of air.
    tokio::time::sleep_until(first.0.end - Duration::from_secs(60)).await;
    let message: Vec<u8> = (0..20 * 1024u32).map(|i| (i * 7 + i / 251) as u8).collect();
    ground.send(message.clone()).await.expect("queued");
    let mut delivered = Vec::new();
    let deadline = second.0.end + Duration::from_secs(3 * 3600);
    loop {
        tokio::select! {
            got = satellite.recv() => {
                let (id, payload) = got.expect("received");
                satellite.ack(id).expect("ack");
                delivered.push(payload);
            }
            () = tokio::time::sleep_until(deadline) => break,
        }
        if ground.status().queue_depth == 0 {
            // Acknowledged: give late duplicates a pass to show up, then stop.
            tokio::time::sleep(Duration::from_secs(1800)).await;
            while let Ok(Ok((id, payload))) =
                tokio::time::timeout(Duration::ZERO, satellite.recv()).await
            {
                satellite.ack(id).expect("ack");
                delivered.push(payload);
            }
            break;
        }
    }
    assert!(
        delivered.iter().all(|d| d == &message),
        "the message arrives intact"
    );
    Handover {
        first: names[first.1].clone(),
        second: names[second.1].clone(),
        ground: ground_view.stats(),
        ground_stats: ground.status().stats,
        satellite_stats: satellite.status().stats,
        out_of_view: channels.iter().map(|c| c.stats().out_of_view).sum(),
        delivered,
    }
}

#[test]
fn a_message_begun_over_one_station_finishes_over_the_next_exactly_once() {
    runtime().block_on(async {
        let run = carry_over_a_handover(0.0, 7).await;
        assert_eq!(run.delivered.len(), 1, "delivered exactly once");
        let by_name = |n: &str| {
            run.ground
                .iter()
                .find(|s| s.name == n)
                .expect("station listed")
                .clone()
        };
        let (first, second) = (by_name(&run.first), by_name(&run.second));
        assert!(
            first.frames_sent > 0 && second.frames_sent > 0,
            "the message starts over {} and finishes over {}: {:?}",
            run.first,
            run.second,
            run.ground
        );
        // Without loss, each fragment is sent once: the second station carries on where the
        // first stopped, it does not start again.
        assert_eq!(run.ground_stats.frames_resent, 0, "{:?}", run.ground_stats);
        assert_eq!(run.satellite_stats.messages_delivered, 1);
        assert_eq!(run.satellite_stats.duplicates_suppressed, 0);
        assert_eq!(run.out_of_view, 0, "nothing is sent outside a pass");
    });
}

#[test]
fn with_loss_the_handover_still_delivers_once_and_only_in_passes() {
    runtime().block_on(async {
        for seed in [11, 12, 13] {
            let run = carry_over_a_handover(0.1, seed).await;
            assert_eq!(
                run.delivered.len(),
                1,
                "seed {seed}: delivered exactly once"
            );
            assert!(
                run.ground.iter().all(|s| s.frames_sent > 0),
                "seed {seed}: both stations carried it: {:?}",
                run.ground
            );
            assert_eq!(run.satellite_stats.messages_delivered, 1, "seed {seed}");
            assert_eq!(run.out_of_view, 0, "seed {seed}: nothing outside a pass");
        }
    });
}

/// A station whose transport fails (its TNC connection closes) is taken out of service and
/// says so; the other carries on, and a transmission with no pass known goes out over every
/// working station.
#[test]
fn a_station_whose_transport_fails_is_taken_out_and_the_other_carries_on() {
    use satcosign_link::transport::kiss::{Callsign, KissTransport};
    use satcosign_link::transport::Transport as _;
    runtime().block_on(async {
        let (ours, theirs) = tokio::io::duplex(4096);
        let (read, write) = tokio::io::split(ours);
        let call = |c: &str| Callsign::new(c, 0).expect("call");
        let channel = SimChannel::new(SimConfig::default());
        let mut stations = GroundStations::new();
        stations.add(
            "tnc",
            "kiss-tcp",
            KissTransport::new(read, write, call("GROUND"), call("SAT")),
        );
        stations.add("radio", "sim", channel.attach(0));
        // A TNC over TCP that nobody runs: it cannot take a transmission.
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("port")
            .local_addr()
            .expect("addr");
        stations.add(
            "absent",
            "kiss-tcp",
            satcosign_link::transport::kiss::KissTcpStation::new(
                &closed.to_string(),
                call("GROUND"),
                call("SAT"),
            ),
        );
        let view = stations.view();
        let mut satellite = channel.attach(1);
        // The TNC goes away.
        drop(theirs);
        satellite
            .transmit(vec![b"hello".to_vec()])
            .await
            .expect("sent");
        let heard = stations.recv().await.expect("the other station hears");
        assert_eq!(heard, b"hello");
        let stats = view.stats();
        assert!(!stats[0].up && stats[1].up, "{stats:?}");
        // No passes known: every working station calls, and only those; one station that
        // cannot take it does not make the transmission fail.
        stations
            .transmit(vec![b"anyone?".to_vec()])
            .await
            .expect("sent over the working station");
        assert_eq!(satellite.recv().await.expect("heard"), b"anyone?");
        let stats = view.stats();
        assert_eq!((stats[0].transmissions, stats[1].transmissions), (0, 1));
        assert_eq!(stats[2].transmit_errors, 1, "{stats:?}");
        assert!(!stats[2].up, "an absent TNC is not up");
    });
}
