//! Several ground stations as one radio. Each station is a dumb relay with its own transport
//! (a KISS TNC over TCP or serial, UDP) and its own passes; [`GroundStations`] sends each
//! transmission through the station that has the satellite in view and hears every station.
//!
//! A message begun over one station continues over the next because nothing of it belongs
//! to a station: fragments, acknowledgements and the store-and-forward state stay in the
//! link's engine, which sees only one radio. What the stations add is *where* the satellite
//! can be heard, and that is one rule, [`plan`]: the passes of every station are cut into
//! disjoint segments, each inside one station's window (at any moment the station in view
//! whose pass lasts longest carries the link). The engine is given those segments as its
//! schedule, so it sizes every transmission to end inside one station's pass, and this
//! transport routes each transmission to the segment's station. Nothing is sent outside a
//! pass.
//!
//! Where no segment covers the moment (no passes known, or predictions ran out), a
//! transmission goes out over every station that works, as the satellite may be over any.
//! A station whose transport fails is taken out of service (its counters say so); the
//! others carry on.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::time::Instant;

use super::Transport;
use crate::schedule::{Schedule, Window};

type Boxed<'a, T> = Pin<Box<dyn Future<Output = std::io::Result<T>> + Send + 'a>>;

/// A [`Transport`] behind a box, so that stations of different kinds sit in one list.
trait Radio: Send {
    fn transmit_boxed(&mut self, frames: Vec<Vec<u8>>) -> Boxed<'_, ()>;
    fn recv_boxed(&mut self) -> Boxed<'_, Vec<u8>>;
}

impl<T: Transport> Radio for T {
    fn transmit_boxed(&mut self, frames: Vec<Vec<u8>>) -> Boxed<'_, ()> {
        Box::pin(self.transmit(frames))
    }
    fn recv_boxed(&mut self) -> Boxed<'_, Vec<u8>> {
        Box::pin(self.recv())
    }
}

/// One station's counters, as `/metrics` shows them.
#[derive(Debug, Default)]
pub struct StationCounters {
    /// Transmissions handed to this station.
    pub transmissions: AtomicU64,
    /// Frames sent through it.
    pub frames_sent: AtomicU64,
    /// Bytes sent through it.
    pub bytes_sent: AtomicU64,
    /// Frames heard through it (before the link checks them).
    pub frames_heard: AtomicU64,
    /// Bytes heard through it.
    pub bytes_heard: AtomicU64,
    /// Transmissions its transport failed to take.
    pub transmit_errors: AtomicU64,
    /// Whether its transport works (false once it failed to receive).
    pub down: AtomicBool,
    /// For a transport that reconnects: whether it is connected now.
    pub connected: std::sync::OnceLock<Arc<AtomicBool>>,
}

/// A copy of one station's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StationStats {
    /// The station's name.
    pub name: String,
    /// The kind of transport (`udp`, `kiss-tcp`, `kiss-serial`, `sim`).
    pub transport: String,
    /// Transmissions handed to it.
    pub transmissions: u64,
    /// Frames sent through it.
    pub frames_sent: u64,
    /// Bytes sent through it.
    pub bytes_sent: u64,
    /// Frames heard through it.
    pub frames_heard: u64,
    /// Bytes heard through it.
    pub bytes_heard: u64,
    /// Transmissions its transport failed to take.
    pub transmit_errors: u64,
    /// Whether its transport works.
    pub up: bool,
    /// Whether the link sends through it now.
    pub carrying: bool,
}

/// Who carries the link when: disjoint segments, sorted, each with its station's index.
#[derive(Debug, Clone, Default)]
struct Route {
    segments: Vec<(Window, usize)>,
}

impl Route {
    fn station_at(&self, t: Instant) -> Option<usize> {
        let after = self.segments.partition_point(|(w, _)| w.start <= t);
        let (w, k) = *self.segments.get(after.checked_sub(1)?)?;
        (t < w.end).then_some(k)
    }
}

/// Cuts the passes of every station (`windows[k]` for station `k`) into disjoint segments,
/// each inside one station's pass: at each moment the station in view whose pass ends last
/// carries the link until that pass ends. Returns the segments, sorted.
pub fn plan(windows: &[Vec<Window>]) -> Vec<(Window, usize)> {
    let mut all: Vec<(Window, usize)> = windows
        .iter()
        .enumerate()
        .flat_map(|(k, ws)| ws.iter().filter(|w| !w.is_empty()).map(move |w| (*w, k)))
        .collect();
    all.sort_by_key(|(w, _)| w.start);
    let mut segments: Vec<(Window, usize)> = Vec::new();
    let mut t = match all.first() {
        Some((w, _)) => w.start,
        None => return segments,
    };
    loop {
        // Passes in view at `t`: the one that lasts longest carries on.
        let best = all
            .iter()
            .filter(|(w, _)| w.start <= t && t < w.end)
            .max_by_key(|(w, k)| (w.end, std::cmp::Reverse(*k)));
        match best {
            Some((w, k)) => {
                segments.push((
                    Window {
                        start: t,
                        end: w.end,
                    },
                    *k,
                ));
                t = w.end;
            }
            None => match all.iter().map(|(w, _)| w.start).filter(|s| *s > t).min() {
                Some(next) => t = next,
                None => return segments,
            },
        }
    }
}

struct Member {
    name: String,
    kind: String,
    radio: Box<dyn Radio>,
    counters: Arc<StationCounters>,
}

/// The operator's side of [`GroundStations`]: sets each station's passes, reads counters.
#[derive(Clone)]
pub struct StationsView {
    names: Arc<Vec<(String, String)>>,
    counters: Arc<Vec<Arc<StationCounters>>>,
    route: Arc<Mutex<Route>>,
}

impl std::fmt::Debug for StationsView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.names.iter().map(|(name, _)| name))
            .finish()
    }
}

impl StationsView {
    /// Gives each station its passes (`windows[k]` for the `k`th station added) and returns
    /// the schedule the link's engine must follow: the segments of [`plan`]. Hand it to
    /// [`crate::link::LinkHandle::set_schedule`].
    pub fn set_passes(&self, windows: &[Vec<Window>]) -> Schedule {
        let segments = plan(windows);
        let schedule = if segments.is_empty() {
            Schedule::Always
        } else {
            Schedule::Windows(segments.iter().map(|(w, _)| *w).collect())
        };
        *self.route.lock().unwrap_or_else(|p| p.into_inner()) = Route { segments };
        schedule
    }

    /// The station that carries the link at `t`, by name.
    pub fn carrier_at(&self, t: Instant) -> Option<String> {
        let route = self.route.lock().unwrap_or_else(|p| p.into_inner());
        route.station_at(t).map(|k| self.names[k].0.clone())
    }

    /// Every station's counters, in the order they were added.
    pub fn stats(&self) -> Vec<StationStats> {
        let carrying = self
            .route
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .station_at(Instant::now());
        self.names
            .iter()
            .zip(self.counters.iter())
            .enumerate()
            .map(|(k, ((name, kind), c))| StationStats {
                name: name.clone(),
                transport: kind.clone(),
                transmissions: c.transmissions.load(Ordering::Relaxed),
                frames_sent: c.frames_sent.load(Ordering::Relaxed),
                bytes_sent: c.bytes_sent.load(Ordering::Relaxed),
                frames_heard: c.frames_heard.load(Ordering::Relaxed),
                bytes_heard: c.bytes_heard.load(Ordering::Relaxed),
                transmit_errors: c.transmit_errors.load(Ordering::Relaxed),
                up: !c.down.load(Ordering::Relaxed)
                    && c.connected.get().is_none_or(|f| f.load(Ordering::Relaxed)),
                carrying: carrying == Some(k),
            })
            .collect()
    }
}

/// Several ground stations as one [`Transport`].
pub struct GroundStations {
    members: Vec<Member>,
    route: Arc<Mutex<Route>>,
}

impl Default for GroundStations {
    fn default() -> Self {
        GroundStations::new()
    }
}

impl GroundStations {
    /// No stations yet.
    pub fn new() -> GroundStations {
        GroundStations {
            members: Vec::new(),
            route: Arc::new(Mutex::new(Route::default())),
        }
    }

    /// Adds a station named `name` whose radio is `transport` (of kind `kind`, for
    /// operators). Its index is the number of stations added before it.
    pub fn add<T: Transport>(&mut self, name: &str, kind: &str, transport: T) {
        let counters = Arc::new(StationCounters::default());
        if let Some(flag) = transport.connected_flag() {
            let _ = counters.connected.set(flag);
        }
        self.members.push(Member {
            name: name.to_owned(),
            kind: kind.to_owned(),
            radio: Box::new(transport),
            counters,
        });
    }

    /// How many stations there are.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The view that sets passes and reads counters (take it before handing the stations to
    /// the link).
    pub fn view(&self) -> StationsView {
        StationsView {
            names: Arc::new(
                self.members
                    .iter()
                    .map(|m| (m.name.clone(), m.kind.clone()))
                    .collect(),
            ),
            counters: Arc::new(self.members.iter().map(|m| m.counters.clone()).collect()),
            route: self.route.clone(),
        }
    }

    async fn send_through(member: &mut Member, frames: Vec<Vec<u8>>) -> std::io::Result<()> {
        let c = member.counters.clone();
        c.transmissions.fetch_add(1, Ordering::Relaxed);
        c.frames_sent
            .fetch_add(frames.len() as u64, Ordering::Relaxed);
        c.bytes_sent.fetch_add(
            frames.iter().map(|f| f.len() as u64).sum(),
            Ordering::Relaxed,
        );
        let result = member.radio.transmit_boxed(frames).await;
        if result.is_err() {
            c.transmit_errors.fetch_add(1, Ordering::Relaxed);
        }
        result
    }
}

impl Transport for GroundStations {
    async fn transmit(&mut self, frames: Vec<Vec<u8>>) -> std::io::Result<()> {
        let carrier = self
            .route
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .station_at(Instant::now());
        match carrier.and_then(|k| self.members.get_mut(k)) {
            Some(member) => GroundStations::send_through(member, frames).await,
            None => {
                // Nobody knows where the satellite is: every working station calls. The
                // transmission went out if any station took it.
                let mut error = None;
                let mut sent = false;
                for member in &mut self.members {
                    if member.counters.down.load(Ordering::Relaxed) {
                        continue;
                    }
                    match GroundStations::send_through(member, frames.clone()).await {
                        Ok(()) => sent = true,
                        Err(e) => error = error.or(Some(e)),
                    }
                }
                match (sent, error) {
                    (true, _) => Ok(()),
                    (false, Some(e)) => Err(e),
                    (false, None) => Err(std::io::Error::new(
                        std::io::ErrorKind::NotConnected,
                        "no ground station works",
                    )),
                }
            }
        }
    }

    async fn recv(&mut self) -> std::io::Result<Vec<u8>> {
        loop {
            let listening: Vec<(usize, Boxed<'_, Vec<u8>>)> = self
                .members
                .iter_mut()
                .enumerate()
                .filter(|(_, m)| !m.counters.down.load(Ordering::Relaxed))
                .map(|(k, m)| (k, m.radio.recv_boxed()))
                .collect();
            if listening.is_empty() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::BrokenPipe,
                    "every ground station's transport has failed",
                ));
            }
            let (indices, futures): (Vec<usize>, Vec<_>) = listening.into_iter().unzip();
            // Every station's `recv` is cancel-safe, so dropping the others loses nothing.
            let (result, i, _) = futures::future::select_all(futures).await;
            let member = &self.members[indices[i]];
            match result {
                Ok(frame) => {
                    member.counters.frames_heard.fetch_add(1, Ordering::Relaxed);
                    member
                        .counters
                        .bytes_heard
                        .fetch_add(frame.len() as u64, Ordering::Relaxed);
                    return Ok(frame);
                }
                Err(e) => {
                    member.counters.down.store(true, Ordering::Relaxed);
                    tracing::warn!(
                        station = %member.name,
                        error = %e,
                        "ground station's transport failed; the others carry on"
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn w(t0: Instant, a: u64, b: u64) -> Window {
        Window {
            start: t0 + Duration::from_secs(a),
            end: t0 + Duration::from_secs(b),
        }
    }

    #[test]
    fn segments_are_disjoint_and_each_inside_its_stations_pass() {
        let t0 = Instant::now();
        let windows = vec![
            vec![w(t0, 0, 10), w(t0, 100, 130)],
            vec![w(t0, 5, 20), w(t0, 110, 120)],
            vec![w(t0, 15, 30), w(t0, 200, 210)],
        ];
        let segments = plan(&windows);
        assert_eq!(
            segments,
            vec![
                (w(t0, 0, 10), 0),
                (w(t0, 10, 20), 1),
                (w(t0, 20, 30), 2),
                (w(t0, 100, 130), 0),
                (w(t0, 200, 210), 2),
            ]
        );
        for pair in segments.windows(2) {
            assert!(pair[0].0.end <= pair[1].0.start);
        }
        for (seg, k) in &segments {
            assert!(windows[*k]
                .iter()
                .any(|p| p.start <= seg.start && seg.end <= p.end));
        }
        let route = Route { segments };
        assert_eq!(route.station_at(t0 + Duration::from_secs(12)), Some(1));
        assert_eq!(route.station_at(t0 + Duration::from_secs(50)), None);
        assert!(plan(&[]).is_empty());
    }
}
