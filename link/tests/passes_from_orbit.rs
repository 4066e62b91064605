//! Pass windows predicted from an element set agree with an independent implementation
//! (Skyfield; `fixtures/passes/make_passes.py` made `passes.json`): two stations over three
//! days, every acquisition and loss of signal within a few seconds, none missing, none extra.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

mod common;

use common::{pass_fixture, PassFixture};
use satcosign_link::orbit::predict;
use serde_json::Value;

/// The tolerance for acquisition, culmination and loss times.
const SECONDS: f64 = 3.0;

fn unix(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs_f64()
}

#[test]
fn windows_of_two_stations_over_three_days_agree_with_skyfield() {
    let PassFixture {
        orbit,
        stations,
        start,
        days,
        windows: expected,
    } = pass_fixture();
    let from = UNIX_EPOCH + Duration::from_secs_f64(start);
    let horizon = Duration::from_secs(days * 86_400);
    let predicted = predict(&orbit, &stations, from, horizon).expect("predicted");
    assert!(expected.len() >= 20, "a fixture worth the name");
    let mut worst: f64 = 0.0;
    for (station, passes) in stations.iter().zip(&predicted) {
        // Passes cut by the start or the end of the span are not in the fixture.
        let whole: Vec<_> = passes
            .iter()
            .filter(|p| {
                unix(p.start) > start + 1.0 && unix(p.end) < start + horizon.as_secs_f64() - 1.0
            })
            .collect();
        let theirs: Vec<&Value> = expected
            .iter()
            .filter(|w| w["station"] == station.name.as_str())
            .collect();
        assert_eq!(
            whole.len(),
            theirs.len(),
            "{}: {} passes predicted, Skyfield finds {}",
            station.name,
            whole.len(),
            theirs.len()
        );
        for (ours, w) in whole.iter().zip(&theirs) {
            for (what, a, b) in [
                (
                    "acquisition",
                    unix(ours.start),
                    w["start"].as_f64().expect("start"),
                ),
                (
                    "culmination",
                    unix(ours.culmination),
                    w["culmination"].as_f64().expect("culmination"),
                ),
                (
                    "loss of signal",
                    unix(ours.end),
                    w["end"].as_f64().expect("end"),
                ),
            ] {
                let off = (a - b).abs();
                worst = worst.max(off);
                // The culmination is a flat maximum: a few seconds more are allowed there.
                let allowed = if what == "culmination" {
                    3.0 * SECONDS
                } else {
                    SECONDS
                };
                assert!(
                    off <= allowed,
                    "{} {what}: ours {a:.1}, Skyfield {b:.1} ({off:.1} s apart)",
                    station.name
                );
            }
            let el = w["max_elevation_deg"].as_f64().expect("elevation");
            assert!(
                (ours.max_elevation_deg - el).abs() < 0.2,
                "{}: culmination at {:.2} deg, Skyfield {el:.2}",
                station.name,
                ours.max_elevation_deg
            );
        }
    }
    eprintln!("largest difference from Skyfield: {worst:.2} s");
}
