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
//! - every transmission costs a radio preamble, so the engine sends few, full bursts;
//! - passes are short: with a [`Schedule`] the engine transmits only in view, sends what it
//!   holds the moment a pass begins (a one-frame beacon if it holds nothing, so a peer that
//!   knows no schedule answers), ends every transmission early enough that the peer's answer
//!   fits in the same window, keeps retry timers inside windows, and caps a burst at half
//!   of the window so that turns (and acknowledgements) alternate while a long message
//!   crosses;
//! - after a transmission the peer has the turn: a side stays quiet until the peer's answer
//!   could have begun, and frames that queued while it was transmitting do not hand it the
//!   turn back;
//! - a side that restarts with a queue sends a short burst and doubles it each time the peer
//!   answers, so an end that lives only a few seconds still moves its oldest messages
//!   instead of replaying its whole outbox into the air.
//!
//! Exactly once: message ids are persisted with the outbox; the receiver records delivered
//! ids in the same transaction that puts the message in its inbox, and acknowledges
//! duplicates without delivering them again.

//!
//! The engine's parts: `receive` (frames in), `pacing` (when and how much to transmit:
//! passes, turns, restarts), `fec` (erasure coding), `status` (what operators see).
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use tokio::time::Instant;

use crate::crypto::{Cipher, ReplayWindow};
use crate::frame::{varint_len, Plain, Record, FLAG_END_OF_BURST, MAX_COUNTER, OVERHEAD};
use crate::schedule::{Schedule, Window};
use crate::store::{LinkStore, StoreError};

mod fec;
mod pacing;
mod receive;
mod status;

pub use fec::parity_for;
use fec::MAX_FEC_SHARDS;
pub use status::{HeadState, HeadStatus, Stats};

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
    schedule: Schedule,
    /// The pass we last transmitted in (to see a new one begin).
    pass: Option<Window>,
    /// A one-frame beacon is due (a pass began).
    beacon_due: bool,
    /// Most data frames in the next transmission (slow start after a restart).
    burst_limit: usize,
    /// Listen before the first transmission after a restart; set at the first poll.
    listen_first: bool,
    listen_until: Option<Instant>,
    /// When our last transmission ends on the air (estimated from its air time).
    tx_end: Option<Instant>,
    /// After a transmission the peer has the turn: we stay quiet until its answer could
    /// have begun to arrive.
    quiet_until: Option<Instant>,
    peer_heard_at: Option<Instant>,
    /// Messages the peer acknowledged since [`Engine::take_acknowledged`] last ran.
    newly_acknowledged: Vec<u64>,
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
            schedule: Schedule::Always,
            pass: None,
            beacon_due: false,
            burst_limit: 0,
            listen_first: false,
            listen_until: None,
            tx_end: None,
            quiet_until: None,
            peer_heard_at: None,
            newly_acknowledged: Vec::new(),
        };
        e.burst_limit = e.cfg.max_burst_frames.max(1);
        for (id, payload) in e.store.outbox()? {
            e.add_out(id, &payload);
        }
        if !e.out.is_empty() {
            // A restart with a queue: hear the peer out first, then start small.
            e.listen_first = true;
            e.burst_limit = e.restart_burst();
        }
        Ok(e)
    }

    /// Sets the pass schedule (replacing any earlier one).
    pub fn set_schedule(&mut self, schedule: Schedule) {
        self.schedule = schedule;
        self.pass = None;
    }

    /// The pass schedule.
    pub fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    /// When a frame of the peer was last accepted.
    pub fn peer_heard_at(&self) -> Option<Instant> {
        self.peer_heard_at
    }

    /// Where the oldest queued message stands.
    pub fn head(&self, now: Instant) -> Option<HeadStatus> {
        let (&msg_id, m) = self.out.iter().next()?;
        let state = if !self.schedule.in_view(now) {
            HeadState::WaitingForPass
        } else if m.pending.iter().any(|p| *p) {
            HeadState::Sending
        } else {
            HeadState::AwaitingAck
        };
        Some(HeadStatus {
            msg_id,
            fragments: m.chunks.len(),
            fragments_sent: m.ever_sent.iter().filter(|s| **s).count(),
            state,
        })
    }

    /// Operator counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Messages queued and not yet acknowledged.
    pub fn queue_depth(&self) -> usize {
        self.out.len()
    }

    /// The ids of the messages the peer acknowledged since the last call (each once), so
    /// the application learns what arrived without reading the outbox.
    pub fn take_acknowledged(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.newly_acknowledged)
    }

    /// Each queued message, oldest first, with the bytes of its fragments still to send
    /// (for estimating when a message will have gone).
    pub fn queued_bytes(&self) -> Vec<(u64, usize)> {
        self.out
            .iter()
            .map(|(id, m)| {
                let left = m
                    .chunks
                    .iter()
                    .zip(&m.pending)
                    .filter(|(_, p)| **p)
                    .map(|(c, _)| c.len())
                    .sum();
                (*id, left)
            })
            .collect()
    }

    /// Whether message `id` is still queued (not yet acknowledged).
    pub fn is_queued(&self, id: u64) -> bool {
        self.out.contains_key(&id)
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
                if parity > 0 && fec::rs(k, parity).is_some_and(|r| r.encode(&mut shards).is_ok()) {
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

    /// Takes back queued message `id` if no fragment of it was ever transmitted, so the
    /// peer cannot have it; returns whether it is taken back (false: it went, wholly or in
    /// part). Asking again, after a crash too, answers true for a message taken back.
    pub fn withdraw(&mut self, id: u64) -> Result<bool, StoreError> {
        let untouched = self
            .out
            .get(&id)
            .is_some_and(|m| !m.ever_sent.iter().any(|s| *s));
        if untouched {
            // Out of the persisted outbox, and recorded, first: a crash after it can
            // neither send it again nor forget that it was taken back.
            self.store.withdraw(id)?;
            self.out.remove(&id);
            return Ok(true);
        }
        if self.out.contains_key(&id) {
            return Ok(false);
        }
        self.store.was_withdrawn(id)
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

    /// When the engine next needs [`Self::poll_transmit`] called, if ever.
    pub fn next_wakeup(&self, now: Instant) -> Option<Instant> {
        // Holding back (after a restart, or while the peer has the turn): nothing before then.
        let hold = self.listen_until.into_iter().chain(self.quiet_until).max();
        if let Some(h) = hold.filter(|h| *h > now) {
            return Some(h);
        }
        // The same order in which `poll_transmit` gates: while the peer talks nothing else
        // happens, then a due response, then a retransmission timeout.
        let timer = self
            .peer_talking_until
            .or(self.respond_at)
            .or(self.awaiting_until);
        if !self.schedule.is_known() {
            return timer;
        }
        match self.schedule.current(now) {
            // Out of view: nothing until the next pass begins.
            None => self.schedule.next(now).map(|w| w.start),
            // A pass began that the engine has not acted on yet.
            Some(w) if self.pass != Some(w) => Some(now),
            // In view: the timer, and at the latest the next pass (whatever did not fit in
            // the rest of this one goes then).
            Some(_) => match (timer, self.schedule.next(now).map(|w| w.start)) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            },
        }
    }

    fn has_pending_data(&self) -> bool {
        self.out.values().any(|m| m.pending.iter().any(|p| *p))
    }

    fn rto(&self, burst_bytes: usize) -> Duration {
        let base = self.base_rto(burst_bytes);
        let scaled = base.mul_f64(self.jitter * f64::from(1u32 << self.backoff.min(10)));
        scaled.min(self.cfg.max_rto.max(base))
    }

    /// The time a transmission of `burst_bytes` and the peer's answer take, with no back-off.
    fn base_rto(&self, burst_bytes: usize) -> Duration {
        self.cfg.preamble * 2
            + self.frame_airtime(burst_bytes)
            + self.frame_airtime(self.cfg.mtu * 4)
            + self.cfg.latency * 2
            + self.cfg.response_delay
            + self.idle_gap()
            + Duration::from_millis(200)
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
            let delay = self.rto(0);
            self.awaiting_until = Some(self.retry_at(now, delay, self.base_rto(0)));
        }
        Ok(out)
    }

    fn poll_transmit_inner(&mut self, now: Instant) -> Result<Option<Vec<Vec<u8>>>, StoreError> {
        // Out of view, nothing goes; a pass that begins resends at once.
        let Some(pass) = self.schedule.current(now) else {
            self.pass = None;
            return Ok(None);
        };
        if self.schedule.is_known() && self.pass != Some(pass) {
            self.pass = Some(pass);
            self.pass_began(now);
        }
        if std::mem::take(&mut self.listen_first) {
            // After a restart both sides may start at once (one process held both, or both
            // rebooted): the side with the larger jitter holds back a moment, so the other's
            // carrier is on the air before it would key up (the radio's carrier sense then
            // defers it).
            let until = now + self.idle_gap().mul_f64((self.jitter - 1.0).max(0.0));
            self.listen_until = Some(self.listen_until.map_or(until, |l| l.max(until)));
        }
        if let Some(until) = self.listen_until {
            if now < until {
                return Ok(None);
            }
            self.listen_until = None;
        }
        if let Some(until) = self.quiet_until {
            if now < until {
                return Ok(None);
            }
            self.quiet_until = None;
        }
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
        if !must_respond && !data && !self.beacon_due {
            return Ok(None);
        }

        // What the rest of the pass allows: feedback must end before loss of signal; data
        // must also leave the peer room to answer, and takes at most half of the window
        // so turns alternate while a long message crosses.
        let remaining = pass.end.saturating_duration_since(now);
        let frame_air = self
            .frame_airtime(self.cfg.mtu)
            .max(Duration::from_micros(1));
        let feedback = self.feedback_records();
        let feedback_bytes: usize = feedback
            .iter()
            .map(|r| {
                OVERHEAD
                    + Plain {
                        flags: 0,
                        record: r.clone(),
                    }
                    .encode()
                    .len()
            })
            .sum();
        let feedback_air = self.frame_airtime(feedback_bytes);
        if self.cfg.preamble + feedback_air > remaining {
            // Not even the feedback fits before loss of signal: it goes with the next pass.
            self.respond_at = None;
            return Ok(None);
        }
        let mut data_room =
            remaining.saturating_sub(self.cfg.preamble + feedback_air + self.answer_room());
        if self.schedule.is_known() {
            data_room = data_room.min((pass.len() / 2).max(frame_air));
        }
        let data_budget = (data_room.as_secs_f64() / frame_air.as_secs_f64()) as usize;
        let data_budget = data_budget
            .min(self.burst_limit)
            .min(self.cfg.max_burst_frames.saturating_sub(feedback.len()));
        if feedback.is_empty() && (!data || data_budget == 0) && !self.beacon_due {
            // Nothing to say, or nothing fits in the rest of this pass: the next one.
            self.respond_at = None;
            return Ok(None);
        }
        self.acks_due.clear();
        self.reports_due.clear();

        let mut records: Vec<Record> = feedback;
        let mut data_frames = 0;
        if may_send_data {
            'outer: for (&id, m) in self.out.iter_mut() {
                let count = m.data as u32;
                let parity = (m.chunks.len() - m.data) as u32;
                for i in 0..m.chunks.len() {
                    if data_frames >= data_budget {
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
        if records.is_empty() {
            // A pass began and we have nothing to say: one empty acknowledgement tells the
            // peer we are here, so a peer with no schedule of its own answers now.
            records.push(Record::Ack {
                msg_ids: Vec::new(),
            });
        }
        self.beacon_due = false;
        self.respond_at = None;
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
        self.transmitted(now + self.cfg.preamble + self.frame_airtime(bytes));
        if data_frames > 0 {
            let delay = self.rto(bytes);
            self.awaiting_until = Some(self.retry_at(now, delay, self.base_rto(bytes)));
        }
        Ok(Some(frames))
    }

    /// The acknowledgements (as many ids per frame as fit) and reports now due.
    fn feedback_records(&self) -> Vec<Record> {
        let mut records: Vec<Record> = Vec::new();
        if !self.acks_due.is_empty() {
            let room = self.cfg.mtu.saturating_sub(OVERHEAD + 1 + 3);
            let mut batch = Vec::new();
            let mut used = 0;
            for &id in &self.acks_due {
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
        for &id in &self.reports_due {
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
        records
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
