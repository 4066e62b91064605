//! When a request will reach the satellite, as its owner is told: the start of the next
//! pass of any ground station, or "now" while a pass is under way, with the station's name
//! when the passes come from the orbit ([`crate::passes`]).
//!
//! Shown for a request that is confirmed and not yet answered (`confirmed`, `queued`,
//! `sent`) in `request.status` and its pushes, and on the page that confirms it. The
//! estimate is the link's own schedule; it does not yet count the requests queued ahead.

use std::sync::Arc;
use std::time::SystemTime;

use serde_json::{json, Value};

use crate::passes::PassPlan;
use crate::rpc::LinkStatusFn;
use crate::rpc_signing::unix;
use crate::state::State;

/// What the estimate is made from: the link's status and, when known, the orbit's passes.
#[derive(Clone)]
pub struct Sky {
    /// The link's status (its schedule's current and next pass).
    pub link: LinkStatusFn,
    /// The passes predicted per station, when `[satellite.orbit]` is set.
    pub passes: Option<Arc<PassPlan>>,
}

/// The expected time.
#[derive(Debug, Clone, PartialEq)]
pub struct Expected {
    /// When the pass that should carry it starts (now, if one is under way).
    pub at: SystemTime,
    /// The station of that pass, when known.
    pub station: Option<String>,
    /// Whether a pass is under way now.
    pub in_view: bool,
}

/// The expected time for a request in `state`, or `None` when it is not waiting for the
/// satellite (or nothing is known of the passes).
pub fn expected(sky: &Sky, state: State, now: SystemTime) -> Option<Expected> {
    if !matches!(state, State::Confirmed | State::Queued | State::Sent) {
        return None;
    }
    let status = (sky.link)();
    if !status.passes_known {
        return None;
    }
    let station_at = |t: SystemTime| sky.passes.as_ref().and_then(|p| p.station_in_view(t));
    if let Some(current) = status.current_pass.filter(|_| status.in_view) {
        return Some(Expected {
            at: now.max(current.start),
            station: station_at(now),
            in_view: true,
        });
    }
    let next = status.next_pass?;
    Some(Expected {
        at: next.start,
        station: station_at(next.start + std::time::Duration::from_secs(1)),
        in_view: false,
    })
}

impl Expected {
    /// As `request.status` shows it.
    pub fn to_json(&self, now: SystemTime) -> Value {
        json!({
            "at": unix(self.at),
            "in_secs": self.at.duration_since(now).map_or(0, |d| d.as_secs()),
            "station": self.station,
            "in_view": self.in_view,
        })
    }

    /// In words: "next pass over turin at 2026-12-02 14:32 UTC, in about 41 minutes".
    pub fn sentence(&self, now: SystemTime) -> String {
        let over = self
            .station
            .as_ref()
            .map(|s| format!(" over {s}"))
            .unwrap_or_default();
        if self.in_view {
            return format!("a pass{over} is under way now");
        }
        let minutes = self
            .at
            .duration_since(now)
            .map_or(0, |d| d.as_secs().div_ceil(60));
        let when = match minutes {
            0 | 1 => "in about a minute".to_owned(),
            m if m < 120 => format!("in about {m} minutes"),
            m => format!("in about {} hours", m.div_ceil(60)),
        };
        format!(
            "next pass{over} at {}, {when}",
            crate::notice::format_utc(unix(self.at))
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use satcosign_link::link::{LinkStatus, PassWindow};
    use std::time::Duration;

    fn sky(status: LinkStatus) -> Sky {
        Sky {
            link: Arc::new(move || status.clone()),
            passes: None,
        }
    }

    #[test]
    fn waiting_requests_get_the_next_pass_and_others_nothing() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let next = PassWindow {
            start: now + Duration::from_secs(41 * 60),
            end: now + Duration::from_secs(50 * 60),
        };
        let s = sky(LinkStatus {
            passes_known: true,
            next_pass: Some(next),
            running: true,
            ..LinkStatus::default()
        });
        for state in [State::Confirmed, State::Queued, State::Sent] {
            let e = expected(&s, state, now).expect("expected");
            assert_eq!(e.at, next.start);
            assert!(!e.in_view);
            assert_eq!(e.to_json(now)["in_secs"], 41 * 60);
            let words = e.sentence(now);
            assert!(words.contains("in about 41 minutes"), "{words}");
            assert!(words.contains("UTC"), "{words}");
        }
        for state in [
            State::Received,
            State::AwaitingEmail,
            State::Signed,
            State::Delivered,
        ] {
            assert_eq!(expected(&s, state, now), None, "{state:?}");
        }
        // In view: now.
        let s = sky(LinkStatus {
            passes_known: true,
            in_view: true,
            current_pass: Some(PassWindow {
                start: now - Duration::from_secs(60),
                end: now + Duration::from_secs(300),
            }),
            running: true,
            ..LinkStatus::default()
        });
        let e = expected(&s, State::Queued, now).expect("expected");
        assert!(e.in_view && e.at == now);
        assert!(e.sentence(now).contains("under way"));
        // No schedule known: no promise.
        let s = sky(LinkStatus::default());
        assert_eq!(expected(&s, State::Queued, now), None);
    }
}
