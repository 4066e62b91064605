//! A simulated radio channel between two sides, for tests and benchmarks. Seeded, and timed
//! with tokio's clock so it runs in paused virtual time (an hour of passes in milliseconds).
//!
//! Models: bit rate, one-way latency, a preamble per transmission, half-duplex turnaround
//! (and collisions: a side that is transmitting hears nothing), carrier sense (a side defers
//! while it hears the other's carrier, as a TNC's CSMA does; two sides that key up within the
//! propagation delay of each other still collide), Bernoulli or Gilbert-Elliott burst loss,
//! bit errors, duplication, reordering (extra delay), and pass windows (the satellite is in
//! view for `up` out of every `period`, the first window `first_pass_in` after the channel is
//! made), given as a [`Schedule`] that the engines can be handed too.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::Transport;
use crate::schedule::Schedule;

/// Frame loss model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Loss {
    /// Each frame lost independently with this probability.
    Bernoulli(f64),
    /// Two-state burst loss: good/bad states, per-frame transition and loss probabilities.
    GilbertElliott {
        /// P(good -> bad) per frame.
        p_good_to_bad: f64,
        /// P(bad -> good) per frame.
        p_bad_to_good: f64,
        /// Loss probability in the good state.
        loss_good: f64,
        /// Loss probability in the bad state.
        loss_bad: f64,
    },
}

impl Loss {
    /// The long-run fraction of frames lost: what a link should be told to expect.
    pub fn mean(self) -> f64 {
        match self {
            Loss::Bernoulli(p) => p,
            Loss::GilbertElliott {
                p_good_to_bad,
                p_bad_to_good,
                loss_good,
                loss_bad,
            } => {
                let switching = p_good_to_bad + p_bad_to_good;
                if switching <= 0.0 {
                    return loss_good;
                }
                let bad = p_good_to_bad / switching;
                bad * loss_bad + (1.0 - bad) * loss_good
            }
        }
    }
}

/// Visibility windows: in view for `up` at the start of every `period`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Passes {
    /// Time in view per period.
    pub up: Duration,
    /// Period.
    pub period: Duration,
}

/// The channel's behaviour.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Bits per second.
    pub bitrate: u64,
    /// One-way propagation delay.
    pub latency: Duration,
    /// Preamble (TXDELAY) per transmission.
    pub preamble: Duration,
    /// Receive-to-transmit turnaround.
    pub turnaround: Duration,
    /// Frame loss.
    pub loss: Loss,
    /// Probability that each bit is flipped.
    pub bit_error_rate: f64,
    /// Probability that a frame arrives twice.
    pub duplicate: f64,
    /// Probability that a frame is delayed by up to `reorder_delay` (arriving out of order).
    pub reorder: f64,
    /// Largest extra delay of a reordered frame.
    pub reorder_delay: Duration,
    /// Pass windows; `None`: always in view.
    pub passes: Option<Passes>,
    /// How long after the channel is made the first pass begins (zero: in view at once).
    pub first_pass_in: Duration,
    /// Seed.
    pub seed: u64,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            bitrate: 9600,
            latency: Duration::from_millis(10),
            preamble: Duration::from_millis(300),
            turnaround: Duration::from_millis(10),
            loss: Loss::Bernoulli(0.0),
            bit_error_rate: 0.0,
            duplicate: 0.0,
            reorder: 0.0,
            reorder_delay: Duration::from_millis(200),
            passes: None,
            first_pass_in: Duration::ZERO,
            seed: 1,
        }
    }
}

/// What happened on the air.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AirStats {
    /// Transmissions (each with a preamble).
    pub transmissions: u64,
    /// Frames transmitted.
    pub frames: u64,
    /// Bytes transmitted.
    pub bytes: u64,
    /// Frames lost (loss model).
    pub lost: u64,
    /// Frames with flipped bits.
    pub corrupted: u64,
    /// Frames that arrived while the receiver was transmitting, or out of view.
    pub unheard: u64,
    /// Total air time of every transmission, preambles included.
    pub air_time: Duration,
    /// Transmissions that began or ended out of view (a link that keeps to its passes
    /// makes none).
    pub out_of_view: u64,
}

struct Shared {
    cfg: SimConfig,
    rng: u64,
    bad_state: bool,
    schedule: Schedule,
    /// Each side's radio: bumped when a side is attached again (its process restarted).
    generation: [u64; 2],
    /// When each side's previous radio went silent (its process died).
    cut_at: [Instant; 2],
    tx_interval: [(Instant, Instant); 2],
    inbox: [Option<mpsc::UnboundedSender<Vec<u8>>>; 2],
    stats: AirStats,
}

impl Shared {
    fn next(&mut self) -> u64 {
        // SplitMix64.
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && (self.next() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
    fn lose(&mut self) -> bool {
        match self.cfg.loss {
            Loss::Bernoulli(p) => self.chance(p),
            Loss::GilbertElliott {
                p_good_to_bad,
                p_bad_to_good,
                loss_good,
                loss_bad,
            } => {
                let flip = if self.bad_state {
                    p_bad_to_good
                } else {
                    p_good_to_bad
                };
                if self.chance(flip) {
                    self.bad_state = !self.bad_state;
                }
                let p = if self.bad_state { loss_bad } else { loss_good };
                self.chance(p)
            }
        }
    }
    fn in_view(&self, at: Instant) -> bool {
        self.schedule.in_view(at)
    }
}

/// A simulated channel; attach a transport to each of its two sides.
#[derive(Clone)]
pub struct SimChannel(Arc<Mutex<Shared>>);

impl SimChannel {
    /// A new channel; time (and pass windows) start now.
    pub fn new(cfg: SimConfig) -> SimChannel {
        let now = Instant::now();
        let schedule = match cfg.passes {
            None => Schedule::Always,
            Some(p) => Schedule::Periodic {
                first: now + cfg.first_pass_in,
                up: p.up,
                period: p.period,
            },
        };
        SimChannel::with_schedule(cfg, schedule)
    }

    /// A new channel whose satellite is in view by `schedule` (for passes predicted from an
    /// orbit); `cfg.passes` is not used.
    pub fn with_schedule(cfg: SimConfig, schedule: Schedule) -> SimChannel {
        let now = Instant::now();
        SimChannel(Arc::new(Mutex::new(Shared {
            rng: cfg.seed,
            cfg,
            bad_state: false,
            schedule,
            generation: [0; 2],
            cut_at: [now; 2],
            tx_interval: [(now, now); 2],
            inbox: [None, None],
            stats: AirStats::default(),
        })))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Attaches a radio to side 0 or 1 (replacing any earlier one: a restart). A restart
    /// cuts whatever the side's previous radio was still transmitting: a process that dies
    /// stops keying its transmitter.
    pub fn attach(&self, side: usize) -> SimTransport {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut s = self.lock();
        let now = Instant::now();
        let side = side & 1;
        s.inbox[side] = Some(tx);
        s.generation[side] += 1;
        s.cut_at[side] = now;
        let (start, end) = s.tx_interval[side];
        s.tx_interval[side] = (start.min(now), end.min(now));
        drop(s);
        SimTransport {
            channel: self.clone(),
            side: side & 1,
            rx,
        }
    }

    /// What happened on the air so far.
    pub fn stats(&self) -> AirStats {
        self.lock().stats.clone()
    }

    /// Whether the satellite is in view at `at`.
    pub fn in_view(&self, at: Instant) -> bool {
        self.lock().in_view(at)
    }

    /// The channel's pass schedule, to hand to the engines on either side.
    pub fn schedule(&self) -> Schedule {
        self.lock().schedule.clone()
    }
}

/// One side's radio on a [`SimChannel`].
pub struct SimTransport {
    channel: SimChannel,
    side: usize,
    rx: mpsc::UnboundedReceiver<Vec<u8>>,
}

impl Transport for SimTransport {
    async fn transmit(&mut self, frames: Vec<Vec<u8>>) -> std::io::Result<()> {
        // Carrier sense, as a TNC's CSMA does: while the other side's carrier is heard here
        // (once it has propagated, and in view), wait for it to end, then sense again.
        loop {
            let wait = {
                let s = self.channel.lock();
                let now = Instant::now();
                let (other_start, other_end) = s.tx_interval[1 - self.side];
                let latency = s.cfg.latency;
                (other_start + latency <= now && now < other_end + latency && s.in_view(now))
                    .then_some(other_end + latency)
            };
            match wait {
                Some(until) => tokio::time::sleep_until(until).await,
                None => break,
            }
        }
        let end = {
            let mut s = self.channel.lock();
            let now = Instant::now();
            let cfg = s.cfg.clone();
            let start = now.max(s.tx_interval[self.side].1);
            let start = start + cfg.turnaround;
            let mut t = start + cfg.preamble;
            for frame in &frames {
                t += Duration::from_secs_f64(frame.len() as f64 * 8.0 / cfg.bitrate as f64);
                s.stats.frames += 1;
                s.stats.bytes += frame.len() as u64;
                if s.lose() {
                    s.stats.lost += 1;
                    continue;
                }
                let mut frame = frame.clone();
                if cfg.bit_error_rate > 0.0 {
                    let mut damaged = false;
                    for i in 0..frame.len() * 8 {
                        if s.chance(cfg.bit_error_rate) {
                            frame[i / 8] ^= 1 << (i % 8);
                            damaged = true;
                        }
                    }
                    if damaged {
                        s.stats.corrupted += 1;
                    }
                }
                let mut arrive = t + cfg.latency;
                if s.chance(cfg.reorder) {
                    let extra = s.next() % cfg.reorder_delay.as_micros().max(1) as u64;
                    arrive += Duration::from_micros(extra);
                }
                let copies = if s.chance(cfg.duplicate) { 2 } else { 1 };
                let (generation, sent_at) = (s.generation[self.side], t);
                let from = self.side;
                for copy in 0..copies {
                    let at = arrive + Duration::from_millis(copy * 30);
                    let channel = self.channel.clone();
                    let to = 1 - self.side;
                    let frame = frame.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep_until(at).await;
                        let mut s = channel.lock();
                        if s.generation[from] != generation && sent_at > s.cut_at[from] {
                            // The sender died before this frame was on the air.
                            s.stats.unheard += 1;
                            return;
                        }
                        let (tx_start, tx_end) = s.tx_interval[to];
                        let deaf = tx_start <= at && at < tx_end;
                        if deaf || !s.in_view(at) {
                            s.stats.unheard += 1;
                            return;
                        }
                        if let Some(inbox) = &s.inbox[to] {
                            let _ = inbox.send(frame);
                        }
                    });
                }
            }
            s.tx_interval[self.side] = (start, t);
            if s.schedule.current(start).is_none_or(|w| w.end < t) {
                s.stats.out_of_view += 1;
            }
            s.stats.transmissions += 1;
            s.stats.air_time += t - start;
            t
        };
        tokio::time::sleep_until(end).await;
        Ok(())
    }

    async fn recv(&mut self) -> std::io::Result<Vec<u8>> {
        self.rx
            .recv()
            .await
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "channel closed"))
    }
}
