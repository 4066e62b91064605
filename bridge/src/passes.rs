//! The pass schedule from the orbit: the operator's element set and ground stations
//! (`[satellite.orbit]`), the windows predicted from them for each station, the link told
//! to transmit only in them, and how fresh the elements are.
//!
//! Prediction is [`satcosign_link::orbit`]'s. The windows of every station together are
//! the link's schedule: the satellite is in view when any station sees it. They are
//! predicted at start and again every [`REFRESH`], over `horizon_hours`. Elements older
//! than `max_element_age_days` still predict (an old orbit is better than none), but are
//! reported stale in `satellite.info` and `/health` so the operator loads fresh ones, with
//! `satellite.set_elements` and the operator's token (kept in the data directory's
//! `elements.tle` for the next start).

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use serde::Deserialize;
use serde_json::{json, Value};

use satcosign_link::link::{LinkHandle, PassWindow};
use satcosign_link::orbit::{predict, Orbit, OrbitError, Pass, Station};
use satcosign_link::schedule::{to_instant, Window};
use satcosign_link::store::LinkStore;
use satcosign_link::transport::stations::StationsView;

use crate::config::ConfigError;
pub use crate::ground_stations::{StationConfig, StationRadio};

/// How often the windows are predicted again.
pub const REFRESH: Duration = Duration::from_secs(3600);

/// `[satellite.orbit]`: where the satellite's passes come from.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OrbitConfig {
    /// The satellite's two-line element set, `["1 …", "2 …"]`; empty: no prediction (the
    /// link then takes the satellite to be in view, or follows `dev`'s simulated sky).
    pub tle: Vec<String>,
    /// Or the element set as a CCSDS OMM in JSON (CelesTrak's `FORMAT=json`): one object,
    /// or an array of one. Give `tle` or `omm`, not both.
    pub omm: Option<String>,
    /// Elements older than this are reported stale. Default 7.
    pub max_element_age_days: u64,
    /// How far ahead windows are predicted, hours. Default 48.
    pub horizon_hours: u64,
    /// The ground stations.
    pub stations: Vec<StationConfig>,
    /// A file holding the operator's token (at least 16 characters): with it,
    /// `satellite.set_elements` loads a fresher element set at run time. Without it the
    /// method is off.
    pub operator_token_file: Option<std::path::PathBuf>,
}

impl Default for OrbitConfig {
    fn default() -> Self {
        OrbitConfig {
            tle: Vec::new(),
            omm: None,
            max_element_age_days: 7,
            horizon_hours: 48,
            stations: Vec::new(),
            operator_token_file: None,
        }
    }
}

fn invalid(key: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        reason: reason.into(),
    }
}

impl OrbitConfig {
    /// Checks every value (the elements parse and propagate, the stations are on Earth
    /// with distinct names).
    pub fn check(&self) -> Result<(), ConfigError> {
        self.plan().map(|_| ())
    }

    /// Each station's own radio, checked (`None` for a station without one).
    pub fn radios(&self) -> Result<Vec<Option<StationRadio>>, ConfigError> {
        self.stations.iter().map(StationConfig::radio).collect()
    }

    /// The plan this configuration describes; `None` without elements.
    pub fn plan(&self) -> Result<Option<PassPlan>, ConfigError> {
        let orbit = match (self.tle.as_slice(), &self.omm) {
            ([], None) => {
                if !self.stations.is_empty() {
                    return Err(invalid(
                        "satellite.orbit.tle",
                        "stations are listed but no element set (tle or omm) predicts their passes",
                    ));
                }
                return Ok(None);
            }
            ([_, ..], Some(_)) => {
                return Err(invalid(
                    "satellite.orbit.omm",
                    "give the element set once: tle or omm, not both",
                ))
            }
            ([], Some(omm)) => Orbit::from_omm_json(omm)
                .map_err(|e| invalid("satellite.orbit.omm", e.to_string()))?,
            ([line1, line2], None) => Orbit::from_tle(line1, line2)
                .map_err(|e| invalid("satellite.orbit.tle", e.to_string()))?,
            (lines, None) => {
                return Err(invalid(
                    "satellite.orbit.tle",
                    format!("two lines expected, {} given", lines.len()),
                ))
            }
        };
        if self.stations.is_empty() {
            return Err(invalid(
                "satellite.orbit.stations",
                "at least one ground station is needed",
            ));
        }
        let mut names = std::collections::HashSet::new();
        for s in &self.stations {
            if s.name.trim().is_empty() || !names.insert(s.name.as_str()) {
                return Err(invalid(
                    "satellite.orbit.stations",
                    format!("station name `{}` is empty or used twice", s.name),
                ));
            }
            s.station()
                .check()
                .map_err(|e| invalid("satellite.orbit.stations", e.to_string()))?;
        }
        let radios = self.radios()?;
        if radios.iter().any(Option::is_some) && radios.iter().any(Option::is_none) {
            return Err(invalid(
                "satellite.orbit.stations",
                "either every station has its own `transport` or none has",
            ));
        }
        if !(1..=3650).contains(&self.max_element_age_days) {
            return Err(invalid(
                "satellite.orbit.max_element_age_days",
                "must be within 1..=3650",
            ));
        }
        if !(1..=24 * 14).contains(&self.horizon_hours) {
            return Err(invalid(
                "satellite.orbit.horizon_hours",
                "must be within 1..=336",
            ));
        }
        let operator = match &self.operator_token_file {
            None => None,
            Some(path) => {
                let token = std::fs::read_to_string(path).map_err(|e| {
                    invalid(
                        "satellite.orbit.operator_token_file",
                        format!("{}: {e}", path.display()),
                    )
                })?;
                let token = token.trim();
                if token.len() < 16 {
                    return Err(invalid(
                        "satellite.orbit.operator_token_file",
                        "the token must be at least 16 characters",
                    ));
                }
                Some(token_hash(token))
            }
        };
        Ok(Some(PassPlan {
            orbit: RwLock::new(orbit),
            operator,
            saved: None,
            changed: tokio::sync::Notify::new(),
            stations: self.stations.iter().map(StationConfig::station).collect(),
            max_age: Duration::from_secs(self.max_element_age_days * 86_400),
            horizon: Duration::from_secs(self.horizon_hours * 3600),
            predicted: RwLock::new(Vec::new()),
            radios: std::sync::OnceLock::new(),
        }))
    }
}

fn token_hash(token: &str) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(token.as_bytes()).into()
}

/// Why `satellite.set_elements` refused an element set.
#[derive(Debug, thiserror::Error)]
pub enum ElementsError {
    /// No operator token is configured: the method is off.
    #[error("loading elements is off: set satellite.orbit.operator_token_file")]
    Off,
    /// The token is wrong.
    #[error("the operator token is wrong")]
    NotOperator,
    /// The lines do not make an element set.
    #[error("{0}")]
    Bad(OrbitError),
    /// The elements' time is in the future.
    #[error("the elements' time ({epoch}) is in the future")]
    Future {
        /// Their time, unix seconds.
        epoch: u64,
    },
    /// The elements are not newer than those in use.
    #[error("the elements' time ({epoch}) is not after that of the elements in use ({current})")]
    NotNewer {
        /// Their time, unix seconds.
        epoch: u64,
        /// The time of those in use, unix seconds.
        current: u64,
    },
    /// They could not be kept for the next start.
    #[error("cannot save the elements: {0}")]
    Save(String),
}

/// The orbit, the stations and their latest predicted passes.
#[derive(Debug)]
pub struct PassPlan {
    orbit: RwLock<Orbit>,
    /// SHA-256 of the operator's token, when elements may be loaded at run time.
    operator: Option<[u8; 32]>,
    /// Where loaded elements are kept for the next start.
    saved: Option<std::path::PathBuf>,
    /// Woken when new elements are loaded.
    changed: tokio::sync::Notify,
    stations: Vec<Station>,
    max_age: Duration,
    horizon: Duration,
    predicted: RwLock<Vec<Vec<Pass>>>,
    /// The stations' own radios, when each has one (in the order of `stations`).
    radios: std::sync::OnceLock<StationsView>,
}

impl PassPlan {
    /// Predicts every station's passes from `now` over the horizon and keeps them; returns
    /// each station's windows (in the order of the stations).
    pub fn refresh(&self, now: SystemTime) -> Result<Vec<Vec<PassWindow>>, OrbitError> {
        let passes = predict(&self.orbit(), &self.stations, now, self.horizon)?;
        let windows = passes
            .iter()
            .map(|station| {
                station
                    .iter()
                    .map(|p| PassWindow {
                        start: p.start,
                        end: p.end,
                    })
                    .collect()
            })
            .collect();
        *self.predicted.write().unwrap_or_else(|p| p.into_inner()) = passes;
        Ok(windows)
    }

    /// Hands the plan the stations' own radios (once): from then on each station is told
    /// its own passes, and the link follows [`satcosign_link::transport::stations::plan`].
    pub fn attach_radios(&self, view: StationsView) {
        let _ = self.radios.set(view);
    }

    /// The stations' own radios and their counters, when each station has one.
    pub fn radios(&self) -> Option<&StationsView> {
        self.radios.get()
    }

    /// Each station's passes that overlap `now .. now + span`, by name.
    pub fn passes_within(&self, now: SystemTime, span: Duration) -> Vec<(String, Vec<Pass>)> {
        let predicted = self.predicted.read().unwrap_or_else(|p| p.into_inner());
        self.stations
            .iter()
            .enumerate()
            .map(|(k, s)| {
                let passes = predicted
                    .get(k)
                    .into_iter()
                    .flatten()
                    .filter(|p| p.end > now && p.start < now + span)
                    .copied()
                    .collect();
                (s.name.clone(), passes)
            })
            .collect()
    }

    /// The station that has the satellite in view at `t` (the highest, if several do).
    pub fn station_in_view(&self, t: SystemTime) -> Option<String> {
        let predicted = self.predicted.read().unwrap_or_else(|p| p.into_inner());
        predicted
            .iter()
            .zip(&self.stations)
            .filter_map(|(passes, s)| {
                passes
                    .iter()
                    .find(|p| p.start <= t && t <= p.end)
                    .map(|p| (p.max_elevation_deg, &s.name))
            })
            .max_by(|a, b| a.0.total_cmp(&b.0))
            .map(|(_, name)| name.clone())
    }

    /// Whether the elements are older than the configured age at `now`.
    pub fn stale(&self, now: SystemTime) -> bool {
        self.orbit().age(now) > self.max_age
    }

    /// How old the elements are at `now`.
    pub fn age(&self, now: SystemTime) -> Duration {
        self.orbit().age(now)
    }

    fn orbit(&self) -> std::sync::RwLockReadGuard<'_, Orbit> {
        self.orbit.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps loaded elements in `path` (the data directory's `elements.tle`), and uses the
    /// ones already there when they are newer than the configuration's.
    pub fn with_saved_elements(mut self, path: std::path::PathBuf) -> PassPlan {
        if let Ok(text) = std::fs::read_to_string(&path) {
            match Orbit::parse(&text) {
                Ok(o) if o.epoch() > self.orbit().epoch() => {
                    tracing::info!(path = %path.display(), "using the element set loaded last");
                    *self.orbit.write().unwrap_or_else(|p| p.into_inner()) = o;
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "ignoring saved elements")
                }
            }
        }
        self.saved = Some(path);
        self
    }

    /// `satellite.set_elements` and `satellite.set_omm`: checks the operator's `token`, and
    /// that the element set (two lines, or an OMM in JSON) parses, is not from the future
    /// (a day's grace) and is newer than the one in use;
    /// then keeps it for the next start, uses it, and has the passes predicted again.
    /// Returns the new elements' time.
    pub fn load_elements(
        &self,
        elements: &str,
        token: &str,
        now: SystemTime,
    ) -> Result<SystemTime, ElementsError> {
        let Some(expected) = self.operator else {
            return Err(ElementsError::Off);
        };
        let given = token_hash(token.trim());
        // Compared in full, whatever differs first.
        if given
            .iter()
            .zip(expected)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            != 0
        {
            return Err(ElementsError::NotOperator);
        }
        let orbit = Orbit::parse(elements).map_err(ElementsError::Bad)?;
        let unix = crate::rpc_signing::unix;
        if orbit.epoch() > now + Duration::from_secs(86_400) {
            return Err(ElementsError::Future {
                epoch: unix(orbit.epoch()),
            });
        }
        let current = self.orbit().epoch();
        if orbit.epoch() <= current {
            return Err(ElementsError::NotNewer {
                epoch: unix(orbit.epoch()),
                current: unix(current),
            });
        }
        if let Some(path) = &self.saved {
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, &orbit.source)
                .and_then(|()| std::fs::rename(&tmp, path))
                .map_err(|e| ElementsError::Save(format!("{}: {e}", path.display())))?;
        }
        let epoch = orbit.epoch();
        *self.orbit.write().unwrap_or_else(|p| p.into_inner()) = orbit;
        tracing::info!(epoch = unix(epoch), "new element set loaded");
        self.changed.notify_one();
        Ok(epoch)
    }

    /// As `satellite.info` shows it: the elements' time and age, and each station with its
    /// next passes (at most `per_station`, none that ended before `now`).
    pub fn to_json(&self, now: SystemTime, per_station: usize) -> Value {
        let unix = crate::rpc_signing::unix;
        let predicted = self.predicted.read().unwrap_or_else(|p| p.into_inner());
        let radios = self.radios().map(StationsView::stats).unwrap_or_default();
        let stations: Vec<Value> = self
            .stations
            .iter()
            .enumerate()
            .map(|(k, s)| {
                let next: Vec<Value> = predicted
                    .get(k)
                    .into_iter()
                    .flatten()
                    .filter(|p| p.end > now)
                    .take(per_station)
                    .map(|p| {
                        json!({
                            "start": unix(p.start),
                            "culmination": unix(p.culmination),
                            "max_elevation_deg": (p.max_elevation_deg * 10.0).round() / 10.0,
                            "end": unix(p.end),
                        })
                    })
                    .collect();
                let mut station = json!({
                    "name": s.name,
                    "latitude_deg": s.latitude_deg,
                    "longitude_deg": s.longitude_deg,
                    "altitude_m": s.altitude_m,
                    "min_elevation_deg": s.min_elevation_deg,
                    "next_passes": next,
                });
                if let Some(r) = radios.get(k) {
                    station["radio"] = json!({
                        "transport": r.transport,
                        "up": r.up,
                        "carrying": r.carrying,
                        "transmissions": r.transmissions,
                        "frames_sent": r.frames_sent,
                        "frames_heard": r.frames_heard,
                        "transmit_errors": r.transmit_errors,
                    });
                }
                station
            })
            .collect();
        json!({
            "elements_epoch": unix(self.orbit().epoch()),
            "elements_age_secs": self.age(now).as_secs(),
            "elements_stale": self.stale(now),
            "stations": stations,
        })
    }
}

/// Keeps the link's schedule predicted: now, and every [`REFRESH`] after.
pub async fn run<S>(plan: Arc<PassPlan>, link: Arc<LinkHandle<S>>)
where
    S: LinkStore + Clone + Send + Sync + 'static,
{
    let mut every = tokio::time::interval(REFRESH);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            () = plan.changed.notified() => {}
        }
        let p = plan.clone();
        let predicted = tokio::task::spawn_blocking(move || p.refresh(SystemTime::now())).await;
        match predicted {
            Ok(Ok(by_station)) => {
                let count: usize = by_station.iter().map(Vec::len).sum();
                tracing::info!(windows = count, "pass windows predicted");
                if plan.stale(SystemTime::now()) {
                    tracing::warn!(
                        age_days = plan.age(SystemTime::now()).as_secs() / 86_400,
                        "the satellite's elements are stale: load a fresh element set"
                    );
                }
                match plan.radios() {
                    // Each station its own passes; the link follows who carries it when.
                    Some(view) => {
                        let windows: Vec<Vec<Window>> = by_station
                            .iter()
                            .map(|ws| {
                                ws.iter()
                                    .map(|w| Window {
                                        start: to_instant(w.start),
                                        end: to_instant(w.end),
                                    })
                                    .collect()
                            })
                            .collect();
                        link.set_schedule(view.set_passes(&windows));
                    }
                    None => link.set_passes(by_station.into_iter().flatten().collect()),
                }
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot predict passes"),
            Err(e) => tracing::warn!(error = %e, "pass prediction stopped"),
        }
    }
}
