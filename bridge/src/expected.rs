//! When a request will reach the satellite, as its owner is told: the start of the first
//! pass (of any ground station) with room left for it after the messages queued ahead, or
//! "now" while such a pass is under way, with the station's name when the passes come from
//! the orbit ([`crate::passes`]).
//!
//! Room is an estimate: a pass carries [`AIR_SHARE`] of its bit rate times its length on a
//! clean channel (preambles, turnarounds and acknowledgements take the rest), less what the
//! expected frame loss costs twice over: the lost frames, and the parity and resends that
//! replace them ([`share`]; measured on the simulated channel, see
//! `tests/expected_pass.rs`). The queue ahead is what the link still has to send of each
//! older message. It is
//! computed afresh at every look, so it moves when a pass is missed or the queue drains.
//! A spend held on the satellite is expected at the first pass after its release.
//! Shown for a request that is confirmed and not yet answered (`confirmed`, `queued`,
//! `sent`) in `request.status` and its pushes, on the confirmation page, and (as the wait
//! after confirming) in the confirmation email.

use std::sync::Arc;
use std::time::SystemTime;

use serde_json::{json, Value};

use crate::passes::PassPlan;
use crate::rpc::LinkStatusFn;
use crate::rpc_signing::unix;
use crate::state::{Action, RequestRecord, State};

/// The share of a clean pass's raw bit rate that carries queued bytes (measured: 0.80-0.81
/// for passes of one to eight minutes at 9600 bit/s with 256-byte frames).
pub const AIR_SHARE: f64 = 0.8;

/// The share of a pass's raw bit rate that carries queued bytes at frame loss `loss`.
pub fn share(loss: f64) -> f64 {
    let kept = 1.0 - loss.clamp(0.0, 0.9);
    AIR_SHARE * kept * kept
}
/// What a request not yet queued is taken to need on the air, bytes (a compact signing
/// request of a few inputs; the real size is known once it is queued).
const UNQUEUED_BYTES: usize = 600;

/// What the estimate is made from.
#[derive(Clone)]
pub struct Sky {
    /// The link's status (its schedule's passes and its queue).
    pub link: LinkStatusFn,
    /// The passes predicted per station, when `[satellite.orbit]` is set.
    pub passes: Option<Arc<PassPlan>>,
    /// The channel's bit rate.
    pub bitrate: u64,
    /// The frame loss the link expects (`satellite.expected_loss`).
    pub expected_loss: f64,
}

/// The expected time.
#[derive(Debug, Clone, PartialEq)]
pub struct Expected {
    /// When the pass that should carry it starts (now, if it is under way).
    pub at: SystemTime,
    /// The station of that pass, when known.
    pub station: Option<String>,
    /// Whether that pass is under way now.
    pub in_view: bool,
}

/// The expected time for request `r` as if it were in `state`, or `None` when it is not
/// waiting for the satellite (or nothing is known of the passes).
pub fn expected(sky: &Sky, r: &RequestRecord, state: State, now: SystemTime) -> Option<Expected> {
    if !matches!(state, State::Confirmed | State::Queued | State::Sent)
        || !matches!(
            r.action,
            Action::Register | Action::Sign { .. } | Action::SetPolicy { .. }
        )
    {
        return None;
    }
    let status = (sky.link)();
    // What must go up before this request has: the older messages' bytes left, and its own.
    let ahead: usize = match (state, r.link_msg) {
        (State::Sent, _) => 0,
        (_, Some(m)) => bytes_through(&status, m),
        (_, None) => behind_everything(&status),
    };
    // A spend the satellite holds goes up again at the first pass after its release.
    let from = match r.hold {
        Some(h) => now.max(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(h.releases_at)),
        None => now,
    };
    let mut e = pass_with_room(sky, &status, ahead, from)?;
    e.in_view &= from <= now;
    Some(e)
}

/// The expected time for the queued link message `msg_id` to reach the satellite.
pub fn for_link_message(sky: &Sky, msg_id: u64, now: SystemTime) -> Option<Expected> {
    let status = (sky.link)();
    pass_with_room(sky, &status, bytes_through(&status, msg_id), now)
}

/// The bytes the link still has to send up to and including message `m`.
fn bytes_through(status: &satcosign_link::link::LinkStatus, m: u64) -> usize {
    status
        .queue
        .iter()
        .filter(|(id, _)| *id <= m)
        .map(|(_, b)| b)
        .sum()
}

/// When a request confirmed now would be expected: behind everything queued (the operator's
/// page draws the queue there).
pub fn for_a_new_request(sky: &Sky, now: SystemTime) -> Option<Expected> {
    let status = (sky.link)();
    pass_with_room(sky, &status, behind_everything(&status), now)
}

/// The bytes ahead of a request not yet queued: the whole queue and its own.
fn behind_everything(status: &satcosign_link::link::LinkStatus) -> usize {
    status.queue.iter().map(|(_, b)| b).sum::<usize>() + UNQUEUED_BYTES
}

/// The first pass with room for `ahead` bytes, from `now`.
fn pass_with_room(
    sky: &Sky,
    status: &satcosign_link::link::LinkStatus,
    ahead: usize,
    now: SystemTime,
) -> Option<Expected> {
    if !status.passes_known || status.upcoming.is_empty() {
        return None;
    }
    let per_sec = sky.bitrate as f64 / 8.0 * share(sky.expected_loss);
    let mut carried = 0.0;
    let mut chosen = status.upcoming.last().copied()?;
    for w in &status.upcoming {
        let from = w.start.max(now);
        let room = w.end.duration_since(from).map_or(0.0, |d| d.as_secs_f64()) * per_sec;
        // A pass that starts the request's turn is the one it is expected in.
        if carried + room >= ahead as f64 || ahead == 0 {
            chosen = *w;
            break;
        }
        carried += room;
    }
    let at = chosen.start.max(now);
    let station = sky.passes.as_ref().and_then(|p| {
        p.station_in_view(at + std::time::Duration::from_secs(1))
            .or_else(|| p.station_in_view(at))
    });
    Some(Expected {
        at,
        station,
        in_view: chosen.start <= now,
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
    use crate::service::new_request;
    use satcosign_cosigner::decision::RequestId;
    use satcosign_cosigner::wallet::WalletId;
    use satcosign_link::link::{LinkStatus, PassWindow};
    use std::time::Duration;

    fn sky(status: LinkStatus) -> Sky {
        Sky {
            link: Arc::new(move || status.clone()),
            passes: None,
            bitrate: 9600,
            expected_loss: 0.0,
        }
    }

    fn request(link_msg: Option<u64>) -> RequestRecord {
        let mut r = new_request(
            RequestId([1; 16]),
            WalletId([2; 16]),
            Action::Register,
            State::Queued,
            0,
        );
        r.link_msg = link_msg;
        r
    }

    /// Three one-minute passes an hour apart; at 9600 bit/s on a clean channel a pass
    /// carries 57,600 bytes.
    fn passes(now: SystemTime, first_in: u64) -> Vec<PassWindow> {
        (0..3)
            .map(|k| PassWindow {
                start: now + Duration::from_secs(first_in + k * 3600),
                end: now + Duration::from_secs(first_in + k * 3600 + 60),
            })
            .collect()
    }

    #[test]
    fn the_expected_pass_is_the_first_with_room_after_the_queue_ahead() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let upcoming = passes(now, 41 * 60);
        let status = |queue: Vec<(u64, usize)>| LinkStatus {
            passes_known: true,
            next_pass: upcoming.first().copied(),
            upcoming: upcoming.clone(),
            queue,
            running: true,
            ..LinkStatus::default()
        };
        // Alone in the queue: the next pass.
        let s = sky(status(vec![(7, 1_000)]));
        let e = expected(&s, &request(Some(7)), State::Queued, now).expect("expected");
        assert_eq!(e.at, upcoming[0].start);
        assert!(
            e.sentence(now).contains("in about 41 minutes"),
            "{}",
            e.sentence(now)
        );
        // 70 kB queued ahead of it: the first pass is full, the second carries it.
        let s = sky(status(vec![(5, 35_000), (6, 35_000), (7, 1_000)]));
        let e = expected(&s, &request(Some(7)), State::Queued, now).expect("expected");
        assert_eq!(e.at, upcoming[1].start);
        // The older messages are not held back by a younger one.
        let e = expected(&s, &request(Some(5)), State::Queued, now).expect("expected");
        assert_eq!(e.at, upcoming[0].start);
        // Confirmed, not yet queued: behind everything queued.
        let e = expected(&s, &request(None), State::Confirmed, now).expect("expected");
        assert_eq!(e.at, upcoming[1].start);
        // On the satellite already: its answer comes at the next pass.
        let e = expected(&s, &request(Some(7)), State::Sent, now).expect("expected");
        assert_eq!(e.at, upcoming[0].start);
        // Not waiting for the satellite: nothing promised.
        for state in [
            State::Received,
            State::AwaitingEmail,
            State::Signed,
            State::Delivered,
        ] {
            assert_eq!(
                expected(&s, &request(Some(7)), state, now),
                None,
                "{state:?}"
            );
        }
    }

    #[test]
    fn a_pass_under_way_is_now_and_an_unknown_schedule_promises_nothing() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let current = PassWindow {
            start: now - Duration::from_secs(60),
            end: now + Duration::from_secs(300),
        };
        let s = sky(LinkStatus {
            passes_known: true,
            in_view: true,
            current_pass: Some(current),
            upcoming: vec![current],
            running: true,
            ..LinkStatus::default()
        });
        let e = expected(&s, &request(None), State::Confirmed, now).expect("expected");
        assert!(e.in_view && e.at == now);
        assert!(e.sentence(now).contains("under way"));
        let s = sky(LinkStatus::default());
        assert_eq!(expected(&s, &request(None), State::Queued, now), None);
    }
}
