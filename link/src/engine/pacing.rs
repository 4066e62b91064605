//! When a side may transmit and how much: the pass schedule (send at once when a pass
//! begins, keep retries inside windows, leave the peer room to answer before loss of
//! signal), the turn after each transmission, and the short first burst after a restart.

use std::time::Duration;

use tokio::time::Instant;

use super::Engine;
use crate::store::LinkStore;

impl<S: LinkStore> Engine<S> {
    /// Data frames in the first transmission after a restart: what fits in about a second
    /// of air, so a side that lives only seconds still hears the peer's answer.
    pub(super) fn restart_burst(&self) -> usize {
        let room = Duration::from_secs(1).saturating_sub(self.cfg.preamble);
        let per = self.frame_airtime(self.cfg.mtu).as_secs_f64().max(1e-6);
        ((room.as_secs_f64() / per) as usize).clamp(1, self.cfg.max_burst_frames.max(1))
    }

    /// Air time the peer needs to answer a transmission: its turnaround and preamble, two
    /// full frames (acknowledgements, a report, or the start of its reply), the response
    /// delay, and propagation both ways.
    pub(super) fn answer_room(&self) -> Duration {
        self.cfg.preamble
            + self.frame_airtime(self.cfg.mtu * 2)
            + self.cfg.response_delay
            + self.cfg.latency * 2
    }

    /// When to retry after `delay`, kept inside passes: a timer that would run past the last
    /// moment of the current window from which a probe and its answer still fit fires at
    /// that moment, or, if no round fits any more, at the next pass (which resends at once).
    pub(super) fn retry_at(&self, now: Instant, delay: Duration, round: Duration) -> Instant {
        let t = now + delay;
        if !self.schedule.is_known() {
            return t;
        }
        let next = self.schedule.next(now).map(|w| w.start);
        match self.schedule.current(now) {
            Some(w) => {
                let probe = self.cfg.preamble + self.frame_airtime(self.cfg.mtu);
                let last = w
                    .end
                    .checked_sub(probe + self.answer_room())
                    .filter(|l| *l >= w.start);
                match last {
                    Some(l) if t <= l => t,
                    Some(l) if l >= now + round => l,
                    _ => next.unwrap_or(t),
                }
            }
            None => next.unwrap_or(t),
        }
    }

    /// A pass began: the peer is (again) in view, so whatever waits goes now instead of at
    /// the end of a timer that may land outside the window.
    pub(super) fn pass_began(&mut self, now: Instant) {
        // The side with the larger jitter waits a moment, so the two do not key up together.
        let hold = self.idle_gap().mul_f64((self.jitter - 1.0).max(0.0));
        if !hold.is_zero() {
            self.listen_until = Some(now + hold);
        }
        self.backoff = 0;
        self.awaiting_until = None;
        self.peer_talking_until = None;
        for m in self.out.values_mut() {
            if !m.pending.iter().any(|p| *p) {
                // Sent whole in an earlier pass and never acknowledged: a probe draws the
                // peer's report (or its acknowledgement), and only the gaps go again.
                if let Some(last) = m.pending.last_mut() {
                    *last = true;
                }
            }
        }
        self.beacon_due = true;
    }

    /// Tells the engine when the transmission it last returned ended on the air, if the
    /// radio knows (it may have deferred it, for another's carrier); otherwise the engine
    /// goes by its own estimate. After it, the peer has the turn.
    pub fn transmitted(&mut self, end: Instant) {
        let end = self.tx_end.map_or(end, |t| t.max(end));
        self.tx_end = Some(end);
        // The peer answers a response delay after our last frame; its first frame needs its
        // preamble and its own air time to reach us.
        self.quiet_until = Some(
            end + self.cfg.latency * 2
                + self.cfg.response_delay
                + self.cfg.preamble
                + self.frame_airtime(self.cfg.mtu)
                + Duration::from_millis(50),
        );
    }
}
