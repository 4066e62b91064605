//! Frames in: each is opened (CRC, authentication, replay window) before anything is
//! believed; data fragments are gathered (and rebuilt from parity) into messages delivered
//! exactly once; acknowledgements and reports free or re-queue what we sent; the end of the
//! peer's transmission gives us the turn.

use tokio::time::Instant;

use super::{fec, Engine, InMsg};
use crate::frame::{FrameError, Plain, Record, FLAG_END_OF_BURST};
use crate::store::{LinkStore, StoreError};

impl<S: LinkStore> Engine<S> {
    /// Handles one received frame. Returns whether a message was delivered to the inbox.
    pub fn on_frame(&mut self, frame: &[u8], now: Instant) -> Result<bool, StoreError> {
        let (counter, plain) = match self.cipher.open(frame) {
            Ok(x) => x,
            Err(e) => {
                self.reject(e);
                return Ok(false);
            }
        };
        if let Err(e) = self.window.check(counter) {
            self.reject(e);
            return Ok(false);
        }
        let plain = match Plain::decode(&plain) {
            Ok(p) => p,
            Err(e) => {
                self.reject(e);
                return Ok(false);
            }
        };
        self.window.accept(counter);
        self.peer_heard_at = Some(now);
        // The peer is in reach again: retry at full speed.
        self.backoff = 0;
        self.stats.frames_received += 1;
        self.stats.bytes_received += frame.len() as u64;
        let end = plain.flags & FLAG_END_OF_BURST != 0;
        self.peer_talking_until = (!end).then(|| now + self.idle_gap());
        // A frame read just after our own transmission was on the air before it ended (it
        // queued while we were deaf to it): the peer has heard us since, and the turn is its.
        let stale = self.tx_end.is_some_and(|t| now < t + self.cfg.preamble / 2);
        if end && !stale {
            self.quiet_until = None;
        }
        let mut delivered = false;
        match plain.record {
            Record::Data {
                msg_id,
                index,
                count,
                parity,
                chunk,
            } => {
                self.data_in_burst = true;
                delivered = self.on_data(msg_id, index, count, parity, chunk)?;
            }
            Record::Ack { msg_ids } => {
                for id in msg_ids {
                    self.feedback_in_burst.insert(id);
                    if self.out.remove(&id).is_some() {
                        self.store.acknowledged(id)?;
                        self.stats.messages_acknowledged += 1;
                        self.newly_acknowledged.push(id);
                    }
                }
                self.backoff = 0;
            }
            Record::Report {
                msg_id,
                count,
                received,
            } => {
                self.feedback_in_burst.insert(msg_id);
                let expected_loss = self.cfg.expected_loss;
                if let Some(m) = self.out.get_mut(&msg_id) {
                    if m.chunks.len() == count as usize {
                        let got = |i: usize| received[i / 8] & (1 << (i % 8)) != 0;
                        let missing: Vec<usize> =
                            (0..m.chunks.len()).filter(|&i| !got(i)).collect();
                        let have = m.chunks.len() - missing.len();
                        // Without parity every gap is needed; with it, any `data - have`
                        // fragments do, plus a margin for the expected loss.
                        let needed = if m.data == m.chunks.len() {
                            missing.len()
                        } else {
                            let short = m.data.saturating_sub(have);
                            short + fec::parity_for(short, expected_loss)
                        };
                        for p in m.pending.iter_mut() {
                            *p = false;
                        }
                        for &i in missing.iter().take(needed.max(1)) {
                            m.pending[i] = true;
                        }
                    }
                }
                self.backoff = 0;
            }
        }
        if end {
            self.peer_burst_ended(now);
        }
        Ok(delivered)
    }

    pub(super) fn reject(&mut self, e: FrameError) {
        match e {
            FrameError::TooShort | FrameError::BadCrc => self.stats.rejected_damaged += 1,
            FrameError::WrongHeader | FrameError::Forged => self.stats.rejected_forged += 1,
            FrameError::Replayed | FrameError::Stale => self.stats.rejected_replayed += 1,
            FrameError::Malformed => self.stats.rejected_malformed += 1,
        }
        tracing::debug!(reason = %e, "frame rejected");
    }

    pub(super) fn peer_burst_ended(&mut self, now: Instant) {
        self.peer_talking_until = None;
        // The peer has had its turn; we may transmit again without waiting out a timeout.
        self.awaiting_until = None;
        // A message we sent whole that the peer's turn said nothing about did not reach it
        // whole (or its last frame was lost): an implicit NAK. Probe it now rather than
        // after a timeout; the peer's report then names the gaps. Only a turn that answered
        // something counts: a turn with no feedback at all may have been made before our
        // transmission reached the peer (a beacon its radio held back while we had the
        // channel), and says nothing about what we sent.
        let feedback = std::mem::take(&mut self.feedback_in_burst);
        let answered = !feedback.is_empty();
        // The peer answered: the next transmission may be longer (slow start after a restart).
        self.burst_limit = (self.burst_limit * 2).min(self.cfg.max_burst_frames.max(1));
        for (id, m) in self.out.iter_mut() {
            let all_sent = m.ever_sent.iter().all(|s| *s) && !m.pending.iter().any(|p| *p);
            if answered && all_sent && !feedback.contains(id) {
                if let Some(last) = m.pending.last_mut() {
                    *last = true;
                }
            }
        }
        if self.data_in_burst {
            self.data_in_burst = false;
            self.respond_at = Some(now + self.cfg.response_delay);
        }
    }

    pub(super) fn on_data(
        &mut self,
        id: u64,
        index: u32,
        count: u32,
        parity: u32,
        chunk: Vec<u8>,
    ) -> Result<bool, StoreError> {
        if self.store.is_delivered(id)? {
            self.acks_due.insert(id);
            self.stats.duplicates_suppressed += 1;
            return Ok(false);
        }
        let total = count as usize + parity as usize;
        let max_parts = self.cfg.max_message / 16 + 1;
        if total > max_parts {
            self.stats.rejected_malformed += 1;
            return Ok(false);
        }
        let m = self.inbound.entry(id).or_insert_with(|| InMsg {
            parts: vec![None; total],
            data: count as usize,
            have: 0,
        });
        if m.parts.len() != total || m.data != count as usize {
            self.stats.rejected_malformed += 1;
            return Ok(false);
        }
        let slot = &mut m.parts[index as usize];
        if slot.is_none() {
            *slot = Some(chunk);
            m.have += 1;
        }
        if m.have < m.data {
            self.reports_due.insert(id);
            return Ok(false);
        }
        let Some(m) = self.inbound.remove(&id) else {
            return Ok(false);
        };
        let Some(payload) = fec::assemble(m.parts, m.data) else {
            // Inconsistent fragments (impossible with authentic frames): start over.
            self.stats.rejected_malformed += 1;
            return Ok(false);
        };
        self.reports_due.remove(&id);
        self.acks_due.insert(id);
        let fresh = self.store.deliver(id, &payload, self.window.highest())?;
        if fresh {
            self.stats.messages_delivered += 1;
        }
        Ok(fresh)
    }
}
