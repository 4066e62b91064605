//! Passes predicted from the orbit: when the satellite is in view of each ground station.
//!
//! The satellite's position comes from its element set (a TLE) by SGP4 (the `sgp4` crate,
//! checked against the reference implementation's vectors), in the TEME frame. It is
//! turned into Earth-fixed coordinates by the Greenwich mean sidereal time (IAU 1982, as
//! SGP4's own theory uses; polar motion ignored), and compared with each station's
//! position on the WGS-84 ellipsoid. A station has the satellite in view while its
//! elevation is at least the station's minimum.
//!
//! Windows are found by sampling the elevation every [`STEP_SECS`] seconds, with the
//! propagation shared by every station, and each crossing of the minimum refined by
//! bisection to 10 ms; a peak between samples that comes near the minimum is refined too,
//! so a short grazing pass is not missed. The pass windows feed the link's
//! [`Schedule`](crate::schedule::Schedule) through
//! [`Schedule::from_system`](crate::schedule::Schedule::from_system).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Seconds between elevation samples.
pub const STEP_SECS: f64 = 20.0;

/// WGS-84 equatorial radius, km.
const EARTH_A_KM: f64 = 6378.137;
/// WGS-84 flattening.
const EARTH_F: f64 = 1.0 / 298.257_223_563;

/// Why an element set or a station cannot be used; names what was wrong.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum OrbitError {
    /// The TLE does not parse.
    #[error("element set: {0}")]
    Elements(String),
    /// SGP4 cannot propagate these elements (a decayed or impossible orbit).
    #[error("element set cannot be propagated: {0}")]
    Propagation(String),
    /// A station's position is out of range.
    #[error("ground station {name}: {reason}")]
    Station {
        /// The station.
        name: String,
        /// What is wrong.
        reason: String,
    },
}

/// A satellite's orbit, ready to propagate.
pub struct Orbit {
    constants: sgp4::Constants,
    epoch: chrono::NaiveDateTime,
    /// The element set it came from, as given (two lines, or an OMM in JSON): what
    /// [`Orbit::parse`] reads back.
    pub source: String,
}

impl std::fmt::Debug for Orbit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Orbit").field("epoch", &self.epoch).finish()
    }
}

impl Orbit {
    /// From a two-line element set.
    pub fn from_tle(line1: &str, line2: &str) -> Result<Orbit, OrbitError> {
        let elements =
            sgp4::Elements::from_tle(None, line1.trim().as_bytes(), line2.trim().as_bytes())
                .map_err(|e| OrbitError::Elements(e.to_string()))?;
        Orbit::from_elements(&elements, format!("{}\n{}\n", line1.trim(), line2.trim()))
    }

    /// From a CCSDS Orbit Mean-Elements Message in JSON (as CelesTrak and Space-Track give
    /// it): one object, or an array holding one.
    pub fn from_omm_json(text: &str) -> Result<Orbit, OrbitError> {
        let value: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| OrbitError::Elements(format!("the OMM is not JSON: {e}")))?;
        let object = match value {
            serde_json::Value::Array(mut list) if list.len() == 1 => list.remove(0),
            serde_json::Value::Array(list) => {
                return Err(OrbitError::Elements(format!(
                    "one OMM object expected, {} given",
                    list.len()
                )))
            }
            other => other,
        };
        let elements: sgp4::Elements = serde_json::from_value(object)
            .map_err(|e| OrbitError::Elements(format!("the OMM does not parse: {e}")))?;
        Orbit::from_elements(&elements, text.trim().to_owned())
    }

    /// From either form: an OMM in JSON (starting with `{` or `[`), or a two-line element
    /// set (a name line before the two lines is allowed).
    pub fn parse(text: &str) -> Result<Orbit, OrbitError> {
        let trimmed = text.trim();
        if trimmed.starts_with('{') || trimmed.starts_with('[') {
            return Orbit::from_omm_json(trimmed);
        }
        let lines: Vec<&str> = trimmed
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        match lines.as_slice() {
            [.., l1, l2] if l1.starts_with("1 ") && l2.starts_with("2 ") => Orbit::from_tle(l1, l2),
            _ => Err(OrbitError::Elements(
                "neither an OMM in JSON nor two element lines (`1 …`, `2 …`)".into(),
            )),
        }
    }

    fn from_elements(elements: &sgp4::Elements, source: String) -> Result<Orbit, OrbitError> {
        let constants = sgp4::Constants::from_elements(elements)
            .map_err(|e| OrbitError::Propagation(e.to_string()))?;
        Ok(Orbit {
            epoch: elements.datetime,
            constants,
            source,
        })
    }

    /// The time of the elements.
    pub fn epoch(&self) -> SystemTime {
        let ms = self.epoch.and_utc().timestamp_millis();
        if ms >= 0 {
            UNIX_EPOCH + Duration::from_millis(ms.unsigned_abs())
        } else {
            UNIX_EPOCH
        }
    }

    /// How old the elements are at `now` (zero if they are from the future).
    pub fn age(&self, now: SystemTime) -> Duration {
        now.duration_since(self.epoch()).unwrap_or_default()
    }

    /// The satellite's Earth-fixed position (km) at `t`.
    pub fn earth_fixed_at(&self, t: SystemTime) -> Result<[f64; 3], OrbitError> {
        self.ecef_at(unix(t))
    }

    /// The satellite's Earth-fixed position (km) at `unix` seconds.
    fn ecef_at(&self, unix: f64) -> Result<[f64; 3], OrbitError> {
        let epoch_unix = self.epoch.and_utc().timestamp_millis() as f64 / 1000.0;
        let minutes = (unix - epoch_unix) / 60.0;
        let p = self
            .constants
            .propagate(sgp4::MinutesSinceEpoch(minutes))
            .map_err(|e| OrbitError::Propagation(e.to_string()))?;
        let theta = gmst(unix);
        let (s, c) = theta.sin_cos();
        let [x, y, z] = p.position;
        Ok([c * x + s * y, -s * x + c * y, z])
    }
}

/// Greenwich mean sidereal time (IAU 1982), radians, at `unix` seconds (UT1 taken as UTC).
fn gmst(unix: f64) -> f64 {
    let jd = unix / 86_400.0 + 2_440_587.5;
    let t = (jd - 2_451_545.0) / 36_525.0;
    let seconds = 67_310.548_41 + (876_600.0 * 3600.0 + 8_640_184.812_866) * t + 0.093_104 * t * t
        - 6.2e-6 * t * t * t;
    (seconds.rem_euclid(86_400.0) / 86_400.0) * std::f64::consts::TAU
}

/// A ground station.
#[derive(Debug, Clone, PartialEq)]
pub struct Station {
    /// Its name.
    pub name: String,
    /// Geodetic latitude, degrees (north positive).
    pub latitude_deg: f64,
    /// Longitude, degrees (east positive).
    pub longitude_deg: f64,
    /// Height above the WGS-84 ellipsoid, metres.
    pub altitude_m: f64,
    /// Lowest elevation at which it hears the satellite, degrees.
    pub min_elevation_deg: f64,
}

impl Station {
    /// Checks the position and the minimum elevation.
    pub fn check(&self) -> Result<(), OrbitError> {
        let bad = |reason: &str| OrbitError::Station {
            name: self.name.clone(),
            reason: reason.to_owned(),
        };
        if !(-90.0..=90.0).contains(&self.latitude_deg) {
            return Err(bad("latitude_deg must be within -90..=90"));
        }
        if !(-180.0..=180.0).contains(&self.longitude_deg) {
            return Err(bad("longitude_deg must be within -180..=180"));
        }
        if !(-500.0..=9000.0).contains(&self.altitude_m) {
            return Err(bad("altitude_m must be within -500..=9000"));
        }
        if !(0.0..=60.0).contains(&self.min_elevation_deg) {
            return Err(bad("min_elevation_deg must be within 0..=60"));
        }
        Ok(())
    }

    /// Earth-fixed position (km) and local "up" unit vector.
    fn frame(&self) -> ([f64; 3], [f64; 3]) {
        let (lat, lon) = (
            self.latitude_deg.to_radians(),
            self.longitude_deg.to_radians(),
        );
        let e2 = EARTH_F * (2.0 - EARTH_F);
        let n = EARTH_A_KM / (1.0 - e2 * lat.sin().powi(2)).sqrt();
        let h = self.altitude_m / 1000.0;
        let pos = [
            (n + h) * lat.cos() * lon.cos(),
            (n + h) * lat.cos() * lon.sin(),
            (n * (1.0 - e2) + h) * lat.sin(),
        ];
        let up = [lat.cos() * lon.cos(), lat.cos() * lon.sin(), lat.sin()];
        (pos, up)
    }
}

/// Elevation, degrees, of a satellite at `sat` (Earth-fixed, km) seen from `frame`.
fn elevation((pos, up): &([f64; 3], [f64; 3]), sat: &[f64; 3]) -> f64 {
    let d = [sat[0] - pos[0], sat[1] - pos[1], sat[2] - pos[2]];
    let range = (d[0] * d[0] + d[1] * d[1] + d[2] * d[2]).sqrt();
    let sin_el = (d[0] * up[0] + d[1] * up[1] + d[2] * up[2]) / range;
    sin_el.clamp(-1.0, 1.0).asin().to_degrees()
}

/// One pass over one station.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pass {
    /// Acquisition: the elevation reaches the station's minimum.
    pub start: SystemTime,
    /// Culmination: the highest point.
    pub culmination: SystemTime,
    /// Elevation at culmination, degrees.
    pub max_elevation_deg: f64,
    /// Loss of signal: the elevation falls below the minimum.
    pub end: SystemTime,
}

/// The passes of each station (in the order given) from `from` for `horizon`. A pass in
/// progress at `from` starts at `from`; one still in progress at the horizon ends there.
pub fn predict(
    orbit: &Orbit,
    stations: &[Station],
    from: SystemTime,
    horizon: Duration,
) -> Result<Vec<Vec<Pass>>, OrbitError> {
    for s in stations {
        s.check()?;
    }
    let t0 = unix(from);
    let t_end = t0 + horizon.as_secs_f64();
    let frames: Vec<_> = stations.iter().map(Station::frame).collect();
    let mins: Vec<f64> = stations.iter().map(|s| s.min_elevation_deg).collect();
    let steps = ((t_end - t0) / STEP_SECS).ceil() as usize;
    // Elevation of every station at every sample; one propagation per sample.
    let mut samples = vec![Vec::with_capacity(steps + 1); stations.len()];
    let mut times = Vec::with_capacity(steps + 1);
    for i in 0..=steps {
        let t = (t0 + i as f64 * STEP_SECS).min(t_end);
        let sat = orbit.ecef_at(t)?;
        times.push(t);
        for (k, f) in frames.iter().enumerate() {
            samples[k].push(elevation(f, &sat));
        }
    }
    let mut out = Vec::with_capacity(stations.len());
    for (k, f) in frames.iter().enumerate() {
        let min = mins[k];
        let el = |t: f64| orbit.ecef_at(t).map(|sat| elevation(f, &sat) - min);
        let above = &samples[k];
        let mut passes = Vec::new();
        let mut start = (above[0] >= min).then_some(t0);
        for i in 1..times.len() {
            let (a, b) = (above[i - 1] - min, above[i] - min);
            match (a >= 0.0, b >= 0.0) {
                (false, true) => start = Some(crossing(&el, times[i - 1], times[i])?),
                (true, false) => {
                    let end = crossing(&el, times[i - 1], times[i])?;
                    if let Some(s) = start.take() {
                        passes.push(finish(&el, s, end, min)?);
                    }
                }
                (false, false) => {
                    // A peak between samples that may poke above the minimum.
                    let peak_here = i + 1 < times.len()
                        && above[i] > above[i - 1]
                        && above[i] >= above[i + 1]
                        && b > -3.0;
                    if peak_here {
                        let (tp, ep) = peak(&el, times[i - 1], times[i + 1])?;
                        if ep >= 0.0 {
                            let s = crossing(&el, times[i - 1], tp)?;
                            let e = crossing(&el, tp, times[i + 1])?;
                            passes.push(finish(&el, s, e, min)?);
                        }
                    }
                }
                (true, true) => {}
            }
        }
        if let Some(s) = start {
            passes.push(finish(&el, s, t_end, min)?);
        }
        out.push(passes);
    }
    Ok(out)
}

fn unix(t: SystemTime) -> f64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}

fn system(t: f64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs_f64(t.max(0.0))
}

/// Where `f` changes sign between `a` and `b` (one of them at or above zero), to 10 ms.
fn crossing(
    f: &impl Fn(f64) -> Result<f64, OrbitError>,
    mut a: f64,
    mut b: f64,
) -> Result<f64, OrbitError> {
    let rising = f(a)? < 0.0;
    while b - a > 0.01 {
        let m = (a + b) / 2.0;
        if (f(m)? < 0.0) == rising {
            a = m;
        } else {
            b = m;
        }
    }
    Ok((a + b) / 2.0)
}

/// The highest point of `f` between `a` and `b` (one peak there), to 0.5 s.
fn peak(
    f: &impl Fn(f64) -> Result<f64, OrbitError>,
    mut a: f64,
    mut b: f64,
) -> Result<(f64, f64), OrbitError> {
    while b - a > 0.5 {
        let m1 = a + (b - a) / 3.0;
        let m2 = b - (b - a) / 3.0;
        if f(m1)? < f(m2)? {
            a = m1;
        } else {
            b = m2;
        }
    }
    let t = (a + b) / 2.0;
    Ok((t, f(t)?))
}

fn finish(
    f: &impl Fn(f64) -> Result<f64, OrbitError>,
    start: f64,
    end: f64,
    min: f64,
) -> Result<Pass, OrbitError> {
    let (tc, ec) = peak(f, start, end)?;
    Ok(Pass {
        start: system(start),
        culmination: system(tc),
        max_elevation_deg: ec + min,
        end: system(end),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ISS (ZARYA), an element set of 2008 (the sgp4 crate's and Celestrak's example).
    const ISS: [&str; 2] = [
        "1 25544U 98067A   08264.51782528 -.00002182  00000-0 -11606-4 0  2927",
        "2 25544  51.6416 247.4627 0006703 130.5360 325.0288 15.72125391563537",
    ];

    #[test]
    fn the_epoch_is_read_and_bad_lines_are_named() {
        let o = Orbit::from_tle(ISS[0], ISS[1]).expect("parses");
        let epoch = o
            .epoch()
            .duration_since(UNIX_EPOCH)
            .expect("after 1970")
            .as_secs();
        // 2008, day 264.51782528: 2008-09-20 12:25:40 UTC.
        assert_eq!(epoch, 1_221_913_540);
        let e = Orbit::from_tle("1 25544U garbage", ISS[1]).expect_err("bad line");
        assert!(e.to_string().contains("element set"), "{e}");
        let s = Station {
            name: "north".into(),
            latitude_deg: 91.0,
            longitude_deg: 0.0,
            altitude_m: 0.0,
            min_elevation_deg: 10.0,
        };
        let e = s.check().expect_err("latitude");
        assert!(
            e.to_string().contains("north") && e.to_string().contains("latitude"),
            "{e}"
        );
    }

    /// The same element set as an OMM in JSON, as CelesTrak's `FORMAT=json` gives it.
    const ISS_OMM: &str = r#"[{"OBJECT_NAME":"ISS (ZARYA)","OBJECT_ID":"1998-067A",
        "EPOCH":"2008-09-20T12:25:40.104192","MEAN_MOTION":15.72125391,
        "ECCENTRICITY":0.0006703,"INCLINATION":51.6416,"RA_OF_ASC_NODE":247.4627,
        "ARG_OF_PERICENTER":130.536,"MEAN_ANOMALY":325.0288,"EPHEMERIS_TYPE":0,
        "CLASSIFICATION_TYPE":"U","NORAD_CAT_ID":25544,"ELEMENT_SET_NO":292,
        "REV_AT_EPOCH":56353,"BSTAR":-1.1606e-5,"MEAN_MOTION_DOT":-2.182e-5,
        "MEAN_MOTION_DDOT":0}]"#;

    #[test]
    fn an_omm_in_json_and_the_two_lines_give_the_same_orbit() {
        let tle = Orbit::parse(&format!("ISS (ZARYA)\n{}\n{}\n", ISS[0], ISS[1])).expect("tle");
        let omm = Orbit::parse(ISS_OMM).expect("omm");
        assert_eq!(tle.epoch(), omm.epoch());
        for hours in [0u64, 6, 24, 72] {
            let t = tle.epoch() + Duration::from_secs(hours * 3600);
            let (a, b) = (
                tle.earth_fixed_at(t).expect("tle"),
                omm.earth_fixed_at(t).expect("omm"),
            );
            let d = ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2) + (a[2] - b[2]).powi(2)).sqrt();
            assert!(d < 0.01, "{hours} h: {d} km apart");
        }
        // What is kept reads back as the same orbit.
        assert_eq!(
            Orbit::parse(&omm.source).expect("again").epoch(),
            omm.epoch()
        );
        assert_eq!(
            Orbit::parse(&tle.source).expect("again").epoch(),
            tle.epoch()
        );
        for (bad, says) in [
            ("[]", "one OMM object"),
            ("{\"EPOCH\": 5}", "does not parse"),
            ("{not json", "not JSON"),
            ("hello", "neither"),
        ] {
            let e = Orbit::parse(bad).expect_err(bad);
            assert!(e.to_string().contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn a_station_under_the_orbit_sees_several_passes_a_day_of_minutes_each() {
        let o = Orbit::from_tle(ISS[0], ISS[1]).expect("parses");
        let station = Station {
            name: "mid".into(),
            latitude_deg: 45.0,
            longitude_deg: 7.0,
            altitude_m: 300.0,
            min_elevation_deg: 10.0,
        };
        let passes = predict(&o, &[station], o.epoch(), Duration::from_secs(86_400))
            .expect("predicted")
            .remove(0);
        assert!((2..=8).contains(&passes.len()), "{passes:?}");
        for p in &passes {
            let up = p.end.duration_since(p.start).expect("ordered").as_secs();
            assert!((10..=900).contains(&up), "{p:?}");
            assert!(p.start <= p.culmination && p.culmination <= p.end);
            assert!(
                p.max_elevation_deg >= 10.0 && p.max_elevation_deg <= 90.0,
                "{p:?}"
            );
        }
    }
}
