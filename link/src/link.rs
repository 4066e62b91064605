//! Runs a link [`Engine`] over a [`Transport`] in a tokio task, for an application:
//! [`LinkHandle::send`] queues a message durably, [`LinkHandle::recv`] returns the next
//! delivered message and [`LinkHandle::ack`] removes it once the application has acted on it
//! (so a crash between the two redelivers from the persisted inbox, never from the air).
//! [`LinkHandle::acknowledged`] tells which sent messages the peer acknowledged, as they
//! are.
//!
//! The engine's store commits with fsync. Every call that reaches it runs through
//! [`blocking`], which on a multi-threaded runtime hands the worker's other tasks to
//! another thread first, so a slow disk never stalls the tasks that share the worker.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, mpsc, oneshot, watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::engine::{Engine, HeadState, HeadStatus, SendError, Stats};
use crate::schedule::{Schedule, Window};
use crate::store::{LinkStore, StoreError};
use crate::transport::Transport;

/// A predicted pass: the satellite is in view from `start` to `end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PassWindow {
    /// Acquisition of signal.
    pub start: std::time::SystemTime,
    /// Loss of signal.
    pub end: std::time::SystemTime,
}

/// What operators and users see of the link.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkStatus {
    /// Whether a pass schedule is known; without one the link takes the peer to be in view.
    pub passes_known: bool,
    /// Whether the peer is in view now, from the schedule (not from what was heard).
    pub in_view: bool,
    /// The pass in progress, if any.
    pub current_pass: Option<PassWindow>,
    /// The next pass that has not started (never the one in progress).
    pub next_pass: Option<PassWindow>,
    /// When a frame of the peer was last heard (accepted), if ever since start.
    pub peer_heard_at: Option<std::time::SystemTime>,
    /// Where the oldest queued message stands.
    pub head: Option<HeadStatus>,
    /// Messages queued and not yet acknowledged.
    pub queue_depth: usize,
    /// Counters.
    pub stats: Stats,
    /// Whether the link task runs (it stops when its store or transport fails).
    pub running: bool,
    /// Each queued message, oldest first, with the bytes it still has to send.
    pub queue: Vec<(u64, usize)>,
    /// The passes from now on (the current one first), at most [`UPCOMING`].
    pub upcoming: Vec<PassWindow>,
}

/// How many passes ahead [`LinkStatus::upcoming`] lists.
pub const UPCOMING: usize = 32;

/// What the link task publishes after each step; the handle adds what the clock tells.
#[derive(Debug, Clone, Default)]
struct Published {
    peer_heard_at: Option<Instant>,
    head: Option<HeadStatus>,
    queue_depth: usize,
    queue: Vec<(u64, usize)>,
    stats: Stats,
}

enum Cmd {
    Send(Vec<u8>, oneshot::Sender<Result<u64, SendError>>),
    Withdraw(u64, oneshot::Sender<Result<bool, StoreError>>),
}

/// `t` on the wall clock, for showing to people.
fn to_system(t: Instant) -> std::time::SystemTime {
    let (now, wall) = (Instant::now(), std::time::SystemTime::now());
    if t >= now {
        wall + (t - now)
    } else {
        wall.checked_sub(now - t).unwrap_or(wall)
    }
}

fn pass_window(w: Window) -> PassWindow {
    PassWindow {
        start: to_system(w.start),
        end: to_system(w.end),
    }
}

/// The application's side of a running link.
pub struct LinkHandle<S: LinkStore + Clone> {
    cmd: mpsc::Sender<Cmd>,
    store: S,
    delivered: Arc<Notify>,
    status: watch::Receiver<Published>,
    schedule: watch::Sender<Schedule>,
    acknowledged: broadcast::Sender<u64>,
    task: JoinHandle<Result<(), StoreError>>,
}

/// Runs `f`, which touches the disk, without stalling the async worker it is called on
/// (tokio's `block_in_place` on a multi-threaded runtime; as is on a single-threaded one,
/// where there is no other worker to hand tasks to).
pub fn blocking<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// Why the link stopped or a call failed.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The link task has stopped.
    #[error("the link has stopped")]
    Stopped,
    /// Sending failed.
    #[error(transparent)]
    Send(#[from] SendError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl<S: LinkStore + Clone> LinkHandle<S> {
    /// Starts the link.
    pub fn spawn<T: Transport>(mut engine: Engine<S>, mut transport: T) -> LinkHandle<S> {
        let store = engine.store().clone();
        let (cmd_tx, mut cmd_rx) = mpsc::channel::<Cmd>(64);
        let delivered = Arc::new(Notify::new());
        let notify = delivered.clone();
        let (status_tx, status_rx) = watch::channel(Published::default());
        let (schedule_tx, mut schedule_rx) = watch::channel(engine.schedule().clone());
        let (acked_tx, _) = broadcast::channel(1024);
        let acknowledged = acked_tx.clone();
        let task = tokio::spawn(async move {
            let result = async {
                let mut failures: u64 = 0;
                loop {
                    // The clock is read for each burst: a transmission takes air time.
                    while let Some(burst) = blocking(|| engine.poll_transmit(Instant::now()))? {
                        // A transmission lasts its air time (a preamble, then the frames);
                        // messages handed over meanwhile are stored at once, so `send`
                        // never waits for the radio.
                        let transmit = transport.transmit(burst);
                        tokio::pin!(transmit);
                        loop {
                            tokio::select! {
                                result = &mut transmit => {
                                    if let Err(e) = result {
                                        failures += 1;
                                        // Every transmission fails while the peer's socket
                                        // is gone: say so once, then once in a hundred.
                                        if failures % 100 == 1 {
                                            tracing::warn!(error = %e, failures, "transmit failed");
                                        }
                                    } else {
                                        failures = 0;
                                    }
                                    engine.transmitted(Instant::now());
                                    break;
                                }
                                Some(cmd) = cmd_rx.recv() => {
                                    blocking(|| apply(&mut engine, cmd, &status_tx));
                                }
                            }
                        }
                    }
                    let now = Instant::now();
                    publish(&engine, &status_tx);
                    let wake = engine
                        .next_wakeup(now)
                        .unwrap_or_else(|| now + Duration::from_secs(3600));
                    tokio::select! {
                        frame = transport.recv() => match frame {
                            Ok(f) => {
                                if blocking(|| engine.on_frame(&f, Instant::now()))? {
                                    notify.notify_one();
                                }
                                for id in engine.take_acknowledged() {
                                    // Nobody listening is fine: the outbox says it too.
                                    let _ = acked_tx.send(id);
                                }
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "receive failed; link stopping");
                                return Ok(());
                            }
                        },
                        cmd = cmd_rx.recv() => match cmd {
                            Some(cmd) => blocking(|| apply(&mut engine, cmd, &status_tx)),
                            None => return Ok(()),
                        },
                        Ok(()) = schedule_rx.changed() => {
                            engine.set_schedule(schedule_rx.borrow_and_update().clone());
                        }
                        _ = tokio::time::sleep_until(wake) => {}
                    }
                }
            }
            .await;
            if let Err(e) = &result {
                tracing::error!(error = %e, "link stopped: its store failed");
            }
            result
        });
        LinkHandle {
            cmd: cmd_tx,
            store,
            delivered,
            status: status_rx,
            schedule: schedule_tx,
            acknowledged,
            task,
        }
    }

    /// The ids of sent messages as the peer acknowledges them. A receiver that falls more
    /// than 1024 behind misses some (`Lagged`): [`LinkStore::is_queued`] tells for sure.
    pub fn acknowledged(&self) -> broadcast::Receiver<u64> {
        self.acknowledged.subscribe()
    }

    /// Whether the link task still runs (it stops when its store or transport fails).
    pub fn is_running(&self) -> bool {
        !self.task.is_finished()
    }

    /// Queues a message durably; returns its id once it is stored.
    pub async fn send(&self, payload: Vec<u8>) -> Result<u64, LinkError> {
        let (tx, rx) = oneshot::channel();
        self.cmd
            .send(Cmd::Send(payload, tx))
            .await
            .map_err(|_| LinkError::Stopped)?;
        Ok(rx.await.map_err(|_| LinkError::Stopped)??)
    }

    /// Takes back queued message `id` if none of it was ever transmitted (see
    /// [`Engine::withdraw`]); returns whether it was taken back.
    pub async fn withdraw(&self, id: u64) -> Result<bool, LinkError> {
        let (tx, rx) = oneshot::channel();
        self.cmd
            .send(Cmd::Withdraw(id, tx))
            .await
            .map_err(|_| LinkError::Stopped)?;
        Ok(rx.await.map_err(|_| LinkError::Stopped)??)
    }

    /// The next delivered message (waiting for one). Call [`Self::ack`] once it is handled.
    pub async fn recv(&self) -> Result<(u64, Vec<u8>), LinkError> {
        loop {
            let notified = self.delivered.notified();
            if let Some(m) = blocking(|| self.store.inbox_first())? {
                return Ok(m);
            }
            if self.task.is_finished() {
                return Err(LinkError::Stopped);
            }
            notified.await;
        }
    }

    /// Removes a handled message from the inbox.
    pub fn ack(&self, id: u64) -> Result<(), LinkError> {
        Ok(blocking(|| self.store.inbox_remove(id))?)
    }

    /// The link's status.
    pub fn status(&self) -> LinkStatus {
        let p = self.status.borrow().clone();
        let schedule = self.schedule.borrow().clone();
        let now = Instant::now();
        let current = schedule.current(now);
        let in_view = current.is_some();
        let head = p.head.map(|mut h| {
            // The task published this before the clock moved on: what the schedule says now.
            h.state = match (in_view, h.state) {
                (false, _) => HeadState::WaitingForPass,
                (true, HeadState::WaitingForPass) => HeadState::Sending,
                (true, s) => s,
            };
            h
        });
        let mut upcoming = Vec::new();
        if schedule.is_known() {
            let mut at = now;
            if let Some(w) = current {
                upcoming.push(pass_window(w));
                at = w.end;
            }
            while upcoming.len() < UPCOMING {
                match schedule.next(at) {
                    Some(w) if w.end > at => {
                        upcoming.push(pass_window(w));
                        at = w.end;
                    }
                    _ => break,
                }
            }
        }
        LinkStatus {
            upcoming,
            passes_known: schedule.is_known(),
            in_view,
            current_pass: current.filter(|_| schedule.is_known()).map(pass_window),
            next_pass: schedule.next(now).map(pass_window),
            peer_heard_at: p.peer_heard_at.map(to_system),
            head,
            queue_depth: p.queue_depth,
            queue: p.queue,
            stats: p.stats,
            running: !self.task.is_finished(),
        }
    }

    /// Tells the link the predicted passes in wall-clock time (from the operator's orbit
    /// predictions): it transmits only in them, and its status says when the next one is.
    pub fn set_passes(&self, windows: Vec<PassWindow>) {
        let list: Vec<_> = windows.iter().map(|w| (w.start, w.end)).collect();
        self.set_schedule(Schedule::from_system(&list));
    }

    /// Gives the link its pass schedule (replacing any earlier one).
    pub fn set_schedule(&self, schedule: Schedule) {
        // The task applies it at once (it also wakes for it).
        self.schedule.send_replace(schedule);
    }

    /// Stops the link (a crash, as far as the protocol is concerned: only the store remains).
    pub fn stop(self) {
        self.task.abort();
    }
}

/// Publishes what the engine says now for [`LinkHandle::status`].
fn publish<S: LinkStore>(engine: &Engine<S>, status: &watch::Sender<Published>) {
    let _ = status.send(Published {
        peer_heard_at: engine.peer_heard_at(),
        head: engine.head(Instant::now()),
        queue_depth: engine.queue_depth(),
        queue: engine.queued_bytes(),
        stats: engine.stats().clone(),
    });
}

/// Applies a command; the status is published before the caller hears back, so a caller
/// that queued a message sees it in [`LinkHandle::status`] at once.
fn apply<S: LinkStore>(engine: &mut Engine<S>, cmd: Cmd, status: &watch::Sender<Published>) {
    match cmd {
        Cmd::Send(payload, reply) => {
            let result = engine.send(&payload);
            publish(engine, status);
            let _ = reply.send(result);
        }
        Cmd::Withdraw(id, reply) => {
            let result = engine.withdraw(id);
            publish(engine, status);
            let _ = reply.send(result);
        }
    }
}

impl<S: LinkStore + Clone> Drop for LinkHandle<S> {
    /// The link runs as long as its handle: dropping the handle stops it, releasing its
    /// transport and store.
    fn drop(&mut self) {
        self.task.abort();
    }
}
