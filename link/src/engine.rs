//! The link protocol as a state machine with no I/O: frames in, bursts of frames out, and
//! a wake-up time. Designed for long, lossy, half-duplex links in the manner of LTP
//! (RFC 5326) and CCSDS CFDP class 2 rather than TCP:
//!
//! - no handshake: a message goes out whole, in one transmission (burst), as soon as the
//!   channel is ours;
//! - the last frame of a transmission says so, which hands the channel to the peer;
//! - the receiver answers a transmission once, with what it is missing (a REPORT bitmap)
//!   and what it delivered (ACK); an application reply queued meanwhile rides in the same
//!   transmission, so the reply itself carries the acknowledgement;
//! - only the gaps are resent; if nothing is heard, one probe fragment is resent to draw
//!   a report, with exponential back-off (so a pass that ends mid-transfer costs little and
//!   the transfer resumes at the next pass);
//! - every transmission costs a radio preamble, so the engine sends few, full bursts.
//!
//! Exactly once: message ids are persisted with the outbox; the receiver records delivered
//! ids in the same transaction that puts the message in its inbox, and acknowledges
//! duplicates without delivering them again.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use tokio::time::Instant;

use crate::crypto::{Cipher, ReplayWindow};
use crate::frame::{
    varint_len, FrameError, Plain, Record, FLAG_END_OF_BURST, MAX_COUNTER, OVERHEAD,
};
use crate::store::{LinkStore, StoreError};

/// Counters reserved durably at a time.
const COUNTER_BLOCK: u64 = 1024;

/// Tuning of the protocol; the defaults suit 1200-9600 bit/s with 30-300 ms preambles.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Largest frame the transport carries, bytes (default 256).
    pub mtu: usize,
    /// Most frames in one transmission (default 64).
    pub max_burst_frames: usize,
    /// Largest message, bytes (default 1 MiB).
    pub max_message: usize,
    /// Channel bit rate, for timeouts (default 9600).
    pub bitrate: u64,
    /// One-way propagation delay, for timeouts (default 20 ms).
    pub latency: Duration,
    /// Preamble and turnaround per transmission, for timeouts (default 300 ms).
    pub preamble: Duration,
    /// How long a receiver waits before answering, so an application reply can ride along.
    pub response_delay: Duration,
    /// Longest wait before retrying when nothing is heard (default 30 s: short enough that
    /// probes keep landing inside a pass of a few minutes, long enough to cost little air).
    pub max_rto: Duration,
    /// Frame loss expected on the channel (0..1). Above zero, messages carry Reed-Solomon
    /// parity fragments sized so that a transmission survives this loss with 95%
    /// probability, and resends carry a margin too: a lossy pass needs no extra round trip.
    pub expected_loss: f64,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            mtu: 256,
            max_burst_frames: 64,
            max_message: 1 << 20,
            bitrate: 9600,
            latency: Duration::from_millis(20),
            preamble: Duration::from_millis(300),
            response_delay: Duration::from_millis(50),
            max_rto: Duration::from_secs(30),
            expected_loss: 0.0,
        }
    }
}

/// Why a message cannot be sent.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// Empty, or over the configured maximum.
    #[error("message of {size} bytes is outside 1..={max}")]
    Size {
        /// Its size.
        size: usize,
        /// The maximum.
        max: usize,
    },
    /// The store failed; nothing was queued.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Counters for operators.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Transmissions (bursts; each costs a preamble).
    pub transmissions: u64,
    /// Frames sent.
    pub frames_sent: u64,
    /// Bytes sent.
    pub bytes_sent: u64,
    /// Data frames sent again.
    pub frames_resent: u64,
    /// Frames received and accepted.
    pub frames_received: u64,
    /// Bytes received (accepted frames).
    pub bytes_received: u64,
    /// Frames rejected: damaged (CRC) or too short.
    pub rejected_damaged: u64,
    /// Frames rejected: forged, wrong key or wrong direction.
    pub rejected_forged: u64,
    /// Frames rejected: replayed or stale.
    pub rejected_replayed: u64,
    /// Authentic frames whose record did not parse.
    pub rejected_malformed: u64,
    /// Messages delivered to the inbox.
    pub messages_delivered: u64,
    /// Duplicate messages acknowledged but not delivered again.
    pub duplicates_suppressed: u64,
    /// Messages acknowledged by the peer.
    pub messages_acknowledged: u64,
}

struct OutMsg {
    /// Data fragments (the first `data`), then parity fragments.
    chunks: Vec<Vec<u8>>,
    data: usize,
    pending: Vec<bool>,
    ever_sent: Vec<bool>,
}

struct InMsg {
    parts: Vec<Option<Vec<u8>>>,
    data: usize,
    have: usize,
}

/// Most fragments (data + parity) an erasure-coded message may have (GF(256)).
const MAX_FEC_SHARDS: usize = 255;

/// Parity fragments for `k` data fragments so that at most 5% of transmissions lose more
/// than the parity can replace, at loss rate `p`.
pub fn parity_for(k: usize, p: f64) -> usize {
    if p <= 0.0 || k == 0 {
        return 0;
    }
    let p = p.min(0.9);
    for r in 0..=MAX_FEC_SHARDS.saturating_sub(k) {
        let n = k + r;
        // P(losses <= r) for Binomial(n, p).
        let mut term = (1.0 - p).powi(n as i32);
        let mut cdf = term;
        for i in 1..=r {
            term *= (n - i + 1) as f64 / i as f64 * p / (1.0 - p);
            cdf += term;
        }
        if 1.0 - cdf <= 0.05 {
            return r;
        }
    }
    MAX_FEC_SHARDS.saturating_sub(k)
}

fn rs(data: usize, parity: usize) -> Option<reed_solomon_erasure::galois_8::ReedSolomon> {
    reed_solomon_erasure::galois_8::ReedSolomon::new(data, parity).ok()
}

/// The protocol state of one side.
pub struct Engine<S: LinkStore> {
    cfg: EngineConfig,
    cipher: Cipher,
    store: S,
    jitter: f64,
    out: BTreeMap<u64, OutMsg>,
    inbound: HashMap<u64, InMsg>,
    acks_due: BTreeSet<u64>,
    reports_due: BTreeSet<u64>,
    respond_at: Option<Instant>,
    awaiting_until: Option<Instant>,
    backoff: u32,
    peer_talking_until: Option<Instant>,
    data_in_burst: bool,
    feedback_in_burst: BTreeSet<u64>,
    tx_next: u64,
    tx_reserved_end: u64,
    window: ReplayWindow,
    stats: Stats,
}

impl<S: LinkStore> Engine<S> {
    /// An engine over `store`, resuming whatever it holds (unacknowledged messages go again).
    /// `jitter` scales every retransmission timeout (about 1.0; give the two sides different
    /// values, e.g. 1.0 and 1.37, so their timers never stay in step on a half-duplex channel).
    pub fn new(
        cfg: EngineConfig,
        cipher: Cipher,
        store: S,
        jitter: f64,
    ) -> Result<Self, StoreError> {
        let window = ReplayWindow::new(store.rx_high()?);
        let mut e = Engine {
            cfg,
            cipher,
            store,
            jitter,
            out: BTreeMap::new(),
            inbound: HashMap::new(),
            acks_due: BTreeSet::new(),
            reports_due: BTreeSet::new(),
            respond_at: None,
            awaiting_until: None,
            backoff: 0,
            peer_talking_until: None,
            data_in_burst: false,
            feedback_in_burst: BTreeSet::new(),
            tx_next: 0,
            tx_reserved_end: 0,
            window,
            stats: Stats::default(),
        };
        for (id, payload) in e.store.outbox()? {
            e.add_out(id, &payload);
        }
        Ok(e)
    }

    /// Operator counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Messages queued and not yet acknowledged.
    pub fn queue_depth(&self) -> usize {
        self.out.len()
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }

    fn chunk_size(&self, id: u64, count: u64) -> usize {
        // kind, id, index and count, and the parity count when erasure-coded.
        self.cfg
            .mtu
            .saturating_sub(OVERHEAD + 1 + varint_len(id) + 3 * varint_len(count))
            .max(1)
    }

    fn add_out(&mut self, id: u64, payload: &[u8]) {
        // Fragment count and chunk size depend on each other through the varint sizes.
        let size = self.chunk_size(
            id,
            payload.len().div_ceil(self.chunk_size(id, 1)) as u64 + 1,
        );
        let k = payload.len().div_ceil(size).max(1);
        if parity_for(k + 1, self.cfg.expected_loss) > 0 {
            // Erasure-coded: the payload, prefixed with its length, padded to equal shards.
            let mut framed = Vec::with_capacity(payload.len() + 10);
            crate::frame::put_varint(&mut framed, payload.len() as u64);
            framed.extend_from_slice(payload);
            let k = framed.len().div_ceil(size);
            if k < MAX_FEC_SHARDS {
                let parity = parity_for(k, self.cfg.expected_loss).min(MAX_FEC_SHARDS - k);
                framed.resize(k * size, 0);
                let mut shards: Vec<Vec<u8>> = framed.chunks(size).map(<[u8]>::to_vec).collect();
                shards.extend(std::iter::repeat_n(vec![0u8; size], parity));
                if parity > 0 && rs(k, parity).is_some_and(|r| r.encode(&mut shards).is_ok()) {
                    self.insert_out(id, shards, k);
                    return;
                }
            }
        }
        let chunks: Vec<Vec<u8>> = payload.chunks(size).map(<[u8]>::to_vec).collect();
        let k = chunks.len();
        self.insert_out(id, chunks, k);
    }

    fn insert_out(&mut self, id: u64, chunks: Vec<Vec<u8>>, data: usize) {
        let n = chunks.len();
        self.out.insert(
            id,
            OutMsg {
                chunks,
                data,
                pending: vec![true; n],
                ever_sent: vec![false; n],
            },
        );
    }

    /// Queues a message durably; it goes at the next chance.
    pub fn send(&mut self, payload: &[u8]) -> Result<u64, SendError> {
        if payload.is_empty() || payload.len() > self.cfg.max_message {
            return Err(SendError::Size {
                size: payload.len(),
                max: self.cfg.max_message,
            });
        }
        let id = self.store.enqueue(payload)?;
        self.add_out(id, payload);
        Ok(id)
    }

    fn frame_airtime(&self, bytes: usize) -> Duration {
        Duration::from_secs_f64(bytes as f64 * 8.0 / self.cfg.bitrate.max(1) as f64)
    }

    fn idle_gap(&self) -> Duration {
        // Two full frames of silence end the peer's transmission even if its last frame was lost.
        self.frame_airtime(self.cfg.mtu) * 2 + Duration::from_millis(50)
    }

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
        // The peer is in reach again: retry at full speed.
        self.backoff = 0;
        self.stats.frames_received += 1;
        self.stats.bytes_received += frame.len() as u64;
        let end = plain.flags & FLAG_END_OF_BURST != 0;
        self.peer_talking_until = (!end).then(|| now + self.idle_gap());
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
                            short + parity_for(short, expected_loss)
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

    fn reject(&mut self, e: FrameError) {
        match e {
            FrameError::TooShort | FrameError::BadCrc => self.stats.rejected_damaged += 1,
            FrameError::WrongHeader | FrameError::Forged => self.stats.rejected_forged += 1,
            FrameError::Replayed | FrameError::Stale => self.stats.rejected_replayed += 1,
            FrameError::Malformed => self.stats.rejected_malformed += 1,
        }
        tracing::debug!(reason = %e, "frame rejected");
    }

    fn peer_burst_ended(&mut self, now: Instant) {
        self.peer_talking_until = None;
        // The peer has had its turn; we may transmit again without waiting out a timeout.
        self.awaiting_until = None;
        // A message we sent whole that the peer's turn said nothing about did not reach it
        // whole (or its last frame was lost): an implicit NAK. Probe it now rather than
        // after a timeout; the peer's report then names the gaps.
        let feedback = std::mem::take(&mut self.feedback_in_burst);
        for (id, m) in self.out.iter_mut() {
            let all_sent = m.ever_sent.iter().all(|s| *s) && !m.pending.iter().any(|p| *p);
            if all_sent && !feedback.contains(id) {
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

    fn on_data(
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
        let Some(payload) = Self::assemble(m) else {
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

    /// Joins a message's fragments, reconstructing missing data from parity if needed.
    fn assemble(m: InMsg) -> Option<Vec<u8>> {
        if m.parts.len() == m.data {
            return Some(m.parts.into_iter().flatten().flatten().collect());
        }
        let mut shards = m.parts;
        let size = shards.iter().flatten().map(Vec::len).next()?;
        if shards.iter().flatten().any(|s| s.len() != size) {
            return None;
        }
        rs(m.data, shards.len() - m.data)?
            .reconstruct_data(&mut shards)
            .ok()?;
        let framed: Vec<u8> = shards
            .into_iter()
            .take(m.data)
            .flatten()
            .flatten()
            .collect();
        let mut rest = framed.as_slice();
        let len = usize::try_from(crate::frame::get_varint(&mut rest)?).ok()?;
        rest.get(..len).map(<[u8]>::to_vec)
    }

    /// When the engine next needs [`Self::poll_transmit`] called, if ever.
    pub fn next_wakeup(&self) -> Option<Instant> {
        // The same order in which `poll_transmit` gates: while the peer talks nothing else
        // happens, then a due response, then a retransmission timeout.
        self.peer_talking_until
            .or(self.respond_at)
            .or(self.awaiting_until)
    }

    fn has_pending_data(&self) -> bool {
        self.out.values().any(|m| m.pending.iter().any(|p| *p))
    }

    fn rto(&self, burst_bytes: usize) -> Duration {
        let base = self.cfg.preamble * 2
            + self.frame_airtime(burst_bytes)
            + self.frame_airtime(self.cfg.mtu * 4)
            + self.cfg.latency * 2
            + self.cfg.response_delay
            + self.idle_gap()
            + Duration::from_millis(200);
        let scaled = base.mul_f64(self.jitter * f64::from(1u32 << self.backoff.min(10)));
        scaled.min(self.cfg.max_rto.max(base))
    }

    /// The frames to transmit now as one transmission, if it is our turn and we have
    /// something to say.
    pub fn poll_transmit(&mut self, now: Instant) -> Result<Option<Vec<Vec<u8>>>, StoreError> {
        let out = self.poll_transmit_inner(now)?;
        // Liveness invariant: every unacknowledged message has fragments pending or a
        // retransmission timer running, whatever the order of losses that led here.
        if !self.out.is_empty()
            && self.awaiting_until.is_none()
            && self.respond_at.is_none()
            && !self.has_pending_data()
        {
            self.awaiting_until = Some(now + self.rto(0));
        }
        Ok(out)
    }

    fn poll_transmit_inner(&mut self, now: Instant) -> Result<Option<Vec<Vec<u8>>>, StoreError> {
        if let Some(until) = self.peer_talking_until {
            if now < until {
                return Ok(None);
            }
            // Silence: the peer's transmission ended without its last frame reaching us.
            self.peer_burst_ended(now);
        }
        let must_respond = self.respond_at.is_some_and(|t| now >= t);
        if self.respond_at.is_some() && !must_respond {
            return Ok(None);
        }
        let timed_out = self.awaiting_until.is_some_and(|t| now >= t);
        if timed_out {
            // Nothing heard: send one probe fragment per unacknowledged message to draw a report.
            for m in self.out.values_mut() {
                if !m.pending.iter().any(|p| *p) {
                    if let Some(last) = m.pending.last_mut() {
                        *last = true;
                    }
                }
            }
            self.backoff += 1;
            self.awaiting_until = None;
        }
        let may_send_data = self.awaiting_until.is_none();
        let data = may_send_data && self.has_pending_data();
        if !must_respond && !data {
            return Ok(None);
        }

        let mut records: Vec<Record> = Vec::new();
        if !self.acks_due.is_empty() {
            // ACKs: as many ids per frame as fit.
            let room = self.cfg.mtu.saturating_sub(OVERHEAD + 1 + 3);
            let mut batch = Vec::new();
            let mut used = 0;
            for id in std::mem::take(&mut self.acks_due) {
                if used + varint_len(id) > room && !batch.is_empty() {
                    records.push(Record::Ack {
                        msg_ids: std::mem::take(&mut batch),
                    });
                    used = 0;
                }
                used += varint_len(id);
                batch.push(id);
            }
            records.push(Record::Ack { msg_ids: batch });
        }
        for id in std::mem::take(&mut self.reports_due) {
            if let Some(m) = self.inbound.get(&id) {
                let mut bitmap = vec![0u8; m.parts.len().div_ceil(8)];
                for (i, p) in m.parts.iter().enumerate() {
                    if p.is_some() {
                        bitmap[i / 8] |= 1 << (i % 8);
                    }
                }
                records.push(Record::Report {
                    msg_id: id,
                    count: m.parts.len() as u32,
                    received: bitmap,
                });
            }
        }
        let mut data_frames = 0;
        if may_send_data {
            'outer: for (&id, m) in self.out.iter_mut() {
                let count = m.data as u32;
                let parity = (m.chunks.len() - m.data) as u32;
                for i in 0..m.chunks.len() {
                    if records.len() >= self.cfg.max_burst_frames {
                        break 'outer;
                    }
                    if m.pending[i] {
                        m.pending[i] = false;
                        if m.ever_sent[i] {
                            self.stats.frames_resent += 1;
                        }
                        m.ever_sent[i] = true;
                        records.push(Record::Data {
                            msg_id: id,
                            index: i as u32,
                            count,
                            parity,
                            chunk: m.chunks[i].clone(),
                        });
                        data_frames += 1;
                    }
                }
            }
        }
        self.respond_at = None;
        if records.is_empty() {
            return Ok(None);
        }
        let last = records.len() - 1;
        let mut frames = Vec::with_capacity(records.len());
        let mut bytes = 0;
        for (i, record) in records.into_iter().enumerate() {
            let flags = if i == last { FLAG_END_OF_BURST } else { 0 };
            let counter = self.next_counter()?;
            let frame = self.cipher.seal(counter, &Plain { flags, record }.encode());
            bytes += frame.len();
            frames.push(frame);
        }
        self.stats.transmissions += 1;
        self.stats.frames_sent += frames.len() as u64;
        self.stats.bytes_sent += bytes as u64;
        if data_frames > 0 {
            self.awaiting_until = Some(now + self.rto(bytes));
        }
        Ok(Some(frames))
    }

    fn next_counter(&mut self) -> Result<u64, StoreError> {
        if self.tx_next == 0 || self.tx_next >= self.tx_reserved_end {
            let first = self.store.reserve_counters(COUNTER_BLOCK)?;
            self.tx_next = first;
            self.tx_reserved_end = first + COUNTER_BLOCK;
        }
        let c = self.tx_next;
        if c > MAX_COUNTER {
            return Err(StoreError(
                "frame counters exhausted; provision new link keys".into(),
            ));
        }
        self.tx_next += 1;
        Ok(c)
    }
}
