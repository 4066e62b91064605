//! When the peer can hear us: the pass schedule, in the runtime's clock.
//!
//! The engine uses it to transmit only in view, to size each transmission so that it ends
//! (with room for the peer's answer) before loss of signal, to keep retry timers inside
//! windows, and to start sending the moment a pass begins. The simulated channel uses the same
//! type to decide what is heard, so tests and the engine agree on one definition of "in view".
//!
//! Times are [`tokio::time::Instant`]s so that paused-time tests run an hour of passes in
//! milliseconds; [`Schedule::from_system`] converts predicted windows given in wall-clock time.

use std::time::{Duration, SystemTime};

use tokio::time::Instant;

/// One pass: the peer is in view from `start` (acquisition) to `end` (loss of signal).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Window {
    /// Acquisition of signal.
    pub start: Instant,
    /// Loss of signal.
    pub end: Instant,
}

impl Window {
    /// How long the window lasts.
    pub fn len(&self) -> Duration {
        self.end.saturating_duration_since(self.start)
    }

    /// Whether the window is empty.
    pub fn is_empty(&self) -> bool {
        self.end <= self.start
    }
}

/// The pass schedule.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Schedule {
    /// Always in view, or nothing is known (the engine then transmits whenever it has
    /// something to say, as before passes were known).
    #[default]
    Always,
    /// In view for `up` at the start of every `period`; a window starts at `first`.
    Periodic {
        /// The start of one window (any one: windows repeat both ways from it).
        first: Instant,
        /// Time in view per period.
        up: Duration,
        /// Period.
        period: Duration,
    },
    /// Listed windows, sorted and disjoint. Outside them the peer is out of view; after the
    /// last one nothing is known, and the peer is taken to be in view (so a link whose
    /// predictions ran out keeps trying rather than falling silent).
    Windows(Vec<Window>),
}

/// A far-away end for "always in view".
fn far(now: Instant) -> Instant {
    now + Duration::from_secs(100 * 365 * 24 * 3600)
}

/// A wall-clock time (an orbit prediction) on the runtime's clock.
pub fn to_instant(t: SystemTime) -> Instant {
    let (now_sys, now) = (SystemTime::now(), Instant::now());
    match t.duration_since(now_sys) {
        Ok(ahead) => now + ahead,
        Err(e) => now.checked_sub(e.duration()).unwrap_or(now),
    }
}

impl Schedule {
    /// A schedule from windows given in wall-clock time (orbit predictions), sorted, with
    /// overlapping windows merged and past ones dropped.
    pub fn from_system(windows: &[(SystemTime, SystemTime)]) -> Schedule {
        let now_sys = SystemTime::now();
        let mut list: Vec<Window> = windows
            .iter()
            .filter(|(s, e)| e > s && *e > now_sys)
            .map(|(s, e)| Window {
                start: to_instant(*s),
                end: to_instant(*e),
            })
            .collect();
        list.sort();
        let mut merged: Vec<Window> = Vec::with_capacity(list.len());
        for w in list {
            match merged.last_mut() {
                Some(last) if w.start <= last.end => last.end = last.end.max(w.end),
                _ => merged.push(w),
            }
        }
        if merged.is_empty() {
            Schedule::Always
        } else {
            Schedule::Windows(merged)
        }
    }

    /// Whether any schedule is known (anything but [`Schedule::Always`]).
    pub fn is_known(&self) -> bool {
        !matches!(self, Schedule::Always)
    }

    /// The window the peer is in view in at `t`, if it is in view.
    pub fn current(&self, t: Instant) -> Option<Window> {
        match self {
            Schedule::Always => Some(Window {
                start: t,
                end: far(t),
            }),
            Schedule::Periodic { first, up, period } => {
                let start = periodic_start_at_or_before(*first, *period, t)?;
                let end = start + *up;
                (t < end).then_some(Window { start, end })
            }
            Schedule::Windows(list) => {
                let after = list.partition_point(|w| w.start <= t);
                match after.checked_sub(1).map(|i| list[i]) {
                    Some(w) if t < w.end => Some(w),
                    _ if after == list.len() && list.last().is_none_or(|w| t >= w.end) => {
                        Some(Window {
                            start: list.last().map_or(t, |w| w.end),
                            end: far(t),
                        })
                    }
                    _ => None,
                }
            }
        }
    }

    /// Whether the peer is in view at `t`.
    pub fn in_view(&self, t: Instant) -> bool {
        self.current(t).is_some()
    }

    /// The first window that starts after `t` (never the one in progress).
    pub fn next(&self, t: Instant) -> Option<Window> {
        match self {
            Schedule::Always => None,
            Schedule::Periodic { first, up, period } => {
                let start = match periodic_start_at_or_before(*first, *period, t) {
                    Some(s) => s + *period,
                    None => *first,
                };
                Some(Window {
                    start,
                    end: start + *up,
                })
            }
            Schedule::Windows(list) => list.get(list.partition_point(|w| w.start <= t)).copied(),
        }
    }
}

/// The start of the periodic window at or before `t`.
fn periodic_start_at_or_before(first: Instant, period: Duration, t: Instant) -> Option<Instant> {
    let period_ns = period.as_nanos().max(1);
    if t >= first {
        let k = (t - first).as_nanos() / period_ns;
        Some(first + Duration::from_nanos(u64::try_from(k * period_ns).ok()?))
    } else {
        let back = (first - t).as_nanos().div_ceil(period_ns) * period_ns;
        first.checked_sub(Duration::from_nanos(u64::try_from(back).ok()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periodic_windows_repeat_both_ways_and_next_is_never_the_current_one() {
        let t0 = Instant::now();
        let s = Schedule::Periodic {
            first: t0 + Duration::from_secs(50),
            up: Duration::from_secs(10),
            period: Duration::from_secs(60),
        };
        assert!(!s.in_view(t0));
        assert!(s.in_view(t0 + Duration::from_secs(50)));
        assert!(s.in_view(t0 + Duration::from_secs(59)));
        assert!(!s.in_view(t0 + Duration::from_secs(60)));
        // A window before `first`.
        let w = s.current(t0 - Duration::from_secs(5)).expect("in view");
        assert_eq!(w.start, t0 - Duration::from_secs(10));
        assert_eq!(
            s.next(t0).map(|w| w.start),
            Some(t0 + Duration::from_secs(50))
        );
        let inside = t0 + Duration::from_secs(52);
        assert_eq!(
            s.next(inside).map(|w| w.start),
            Some(t0 + Duration::from_secs(110))
        );
    }

    #[test]
    fn listed_windows_are_merged_and_run_out_into_always() {
        let now = SystemTime::now();
        let s = Schedule::from_system(&[
            (
                now + Duration::from_secs(100),
                now + Duration::from_secs(200),
            ),
            (now + Duration::from_secs(10), now + Duration::from_secs(20)),
            (
                now + Duration::from_secs(150),
                now + Duration::from_secs(250),
            ),
            (
                now - Duration::from_secs(100),
                now - Duration::from_secs(50),
            ),
        ]);
        let Schedule::Windows(list) = &s else {
            panic!("windows expected: {s:?}")
        };
        assert_eq!(list.len(), 2, "{list:?}");
        let t = Instant::now();
        assert!(!s.in_view(t));
        assert!(s.in_view(t + Duration::from_secs(15)));
        assert!(!s.in_view(t + Duration::from_secs(50)));
        assert!(s.in_view(t + Duration::from_secs(240)));
        assert!(
            s.in_view(t + Duration::from_secs(1000)),
            "after the last window"
        );
        assert_eq!(s.next(t + Duration::from_secs(1000)), None);
        assert!(Schedule::from_system(&[]) == Schedule::Always);
    }
}
