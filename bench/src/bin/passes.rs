//! Passes from the orbit: the time to predict every window of 1 and 10 ground stations
//! over 7 days, against the bare SGP4 propagation of the same samples (the baseline, same
//! run); and the mean wait of a request for the satellite to come into view with 1, 2 and 4
//! stations, against one fixed window per orbit, for a day of requests arriving at random.

use std::time::{Duration, Instant, SystemTime};

use clap::Parser;
use satcosign_bench::table;
use satcosign_link::orbit::{predict, Orbit, Station, STEP_SECS};

/// Pass prediction benchmark.
#[derive(Parser, Debug)]
#[command(name = "passes", about)]
struct Args {
    /// Repetitions of each timing (the median is shown).
    #[arg(long, default_value_t = 15)]
    reps: usize,
    /// Requests in the day of traffic.
    #[arg(long, default_value_t = 2000)]
    requests: u64,
}

/// ISS (ZARYA), 2008 (the elements of the link's Skyfield fixture).
const TLE: [&str; 2] = [
    "1 25544U 98067A   08264.51782528 -.00002182  00000-0 -11606-4 0  2927",
    "2 25544  51.6416 247.4627 0006703 130.5360 325.0288 15.72125391563537",
];

fn stations() -> Vec<Station> {
    let at = |name: &str, lat: f64, lon: f64| Station {
        name: name.into(),
        latitude_deg: lat,
        longitude_deg: lon,
        altitude_m: 100.0,
        min_elevation_deg: 10.0,
    };
    vec![
        at("turin", 45.07, 7.69),
        at("perth", -31.95, 115.86),
        at("santiago", -33.45, -70.67),
        at("fairbanks-south", 40.0, -105.0),
        at("nairobi", -1.29, 36.82),
        at("tokyo", 35.68, 139.69),
        at("reykjavik-south", 50.0, -20.0),
        at("auckland", -36.85, 174.76),
        at("mumbai", 19.08, 72.88),
        at("recife", -8.05, -34.88),
    ]
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

#[allow(clippy::print_stdout)]
fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let orbit = Orbit::from_tle(TLE[0], TLE[1])?;
    let from = orbit.epoch();
    let week = Duration::from_secs(7 * 86_400);
    let all = stations();

    let samples = (week.as_secs_f64() / STEP_SECS).ceil() as u64 + 1;
    let baseline = median(
        (0..args.reps)
            .map(|_| {
                let t = Instant::now();
                for i in 0..samples {
                    let at = from + Duration::from_secs_f64(i as f64 * STEP_SECS);
                    std::hint::black_box(orbit.earth_fixed_at(at).ok());
                }
                t.elapsed()
            })
            .collect(),
    );
    let mut rows = vec![vec![
        format!("baseline: {samples} bare SGP4 propagations"),
        "-".into(),
        ms(baseline),
        "1.00".into(),
    ]];
    for n in [1usize, 10] {
        let mut windows = 0;
        let time = median(
            (0..args.reps)
                .map(|_| {
                    let t = Instant::now();
                    let p = predict(&orbit, &all[..n], from, week).expect("predicted");
                    let elapsed = t.elapsed();
                    windows = p.iter().map(Vec::len).sum();
                    elapsed
                })
                .collect(),
        );
        rows.push(vec![
            format!("{n} station(s), 7 days"),
            windows.to_string(),
            ms(time),
            format!("{:.2}", time.as_secs_f64() / baseline.as_secs_f64()),
        ]);
    }
    println!(
        "Pass prediction (median of {} runs; goal: under 50 ms for 10 stations)",
        args.reps
    );
    println!("{}", table(&["case", "windows", "ms", "x baseline"], &rows));

    // A day of requests at random times: how long until the satellite is in view of a
    // station (zero inside a pass). The transfer itself is the link benchmark's.
    let day = Duration::from_secs(86_400);
    let mut seed: u64 = 0x5eed;
    let arrivals: Vec<f64> = (0..args.requests)
        .map(|_| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 11) as f64 / (1u64 << 53) as f64 * day.as_secs_f64()
        })
        .collect();
    let unix = |t: SystemTime| {
        t.duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0)
    };
    let t0 = unix(from);
    // Windows of the next two days, so a request late in the day still finds its pass.
    let mean_wait = |windows: &[(f64, f64)]| -> f64 {
        let total: f64 = arrivals
            .iter()
            .map(|a| {
                let t = t0 + a;
                windows
                    .iter()
                    .filter(|(_, end)| *end > t)
                    .map(|(start, _)| (start - t).max(0.0))
                    .fold(f64::INFINITY, f64::min)
            })
            .sum();
        total / arrivals.len() as f64
    };
    let coverage = |windows: &[(f64, f64)]| -> f64 {
        let mut merged: Vec<(f64, f64)> = windows
            .iter()
            .map(|(s, e)| (s.max(t0), e.min(t0 + day.as_secs_f64())))
            .filter(|(s, e)| e > s)
            .collect();
        merged.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut covered = 0.0;
        let mut reach = f64::NEG_INFINITY;
        for (s, e) in merged {
            let s = s.max(reach);
            if e > s {
                covered += e - s;
            }
            reach = reach.max(e);
        }
        covered / day.as_secs_f64()
    };
    // The baseline: one fixed 10-minute window per orbit (15.72 orbits a day).
    let period = 86_400.0 / 15.721_253_91;
    let fixed: Vec<(f64, f64)> = (0..40)
        .map(|k| (t0 + k as f64 * period, t0 + k as f64 * period + 600.0))
        .collect();
    let base_wait = mean_wait(&fixed);
    let mut rows = vec![vec![
        "baseline: one fixed 10 min window per orbit".into(),
        format!("{:.1}", coverage(&fixed) * 100.0),
        format!("{:.1}", base_wait / 60.0),
        "1.00".into(),
    ]];
    for n in [1usize, 2, 4] {
        let passes = predict(&orbit, &all[..n], from, 2 * day)?;
        let windows: Vec<(f64, f64)> = passes
            .iter()
            .flatten()
            .map(|p| (unix(p.start), unix(p.end)))
            .collect();
        let wait = mean_wait(&windows);
        rows.push(vec![
            format!("{n} station(s) from the orbit"),
            format!("{:.1}", coverage(&windows) * 100.0),
            format!("{:.1}", wait / 60.0),
            format!("{:.2}", wait / base_wait),
        ]);
    }
    println!(
        "\nMean wait for the satellite to be in view, {} requests over a day",
        args.requests
    );
    println!(
        "{}",
        table(
            &[
                "schedule",
                "% of day in view",
                "mean wait, min",
                "x baseline"
            ],
            &rows
        )
    );
    Ok(())
}
