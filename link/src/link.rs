//! Runs a link [`Engine`] over a [`Transport`] in a tokio task, for an application:
//! [`LinkHandle::send`] queues a message durably, [`LinkHandle::recv`] returns the next
//! delivered message and [`LinkHandle::ack`] removes it once the application has acted on it
//! (so a crash between the two redelivers from the persisted inbox, never from the air).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::engine::{Engine, SendError, Stats};
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
    /// Whether the peer was heard recently (within `heard_window`).
    pub up: bool,
    /// The pass in progress or the next one, if passes were given ([`LinkHandle::set_passes`]).
    pub next_pass: Option<PassWindow>,
    /// Messages queued and not yet acknowledged.
    pub queue_depth: usize,
    /// Counters.
    pub stats: Stats,
}

enum Cmd {
    Send(Vec<u8>, oneshot::Sender<Result<u64, SendError>>),
}

/// The application's side of a running link.
pub struct LinkHandle<S: LinkStore + Clone> {
    cmd: mpsc::Sender<Cmd>,
    store: S,
    delivered: Arc<Notify>,
    status: watch::Receiver<LinkStatus>,
    passes: std::sync::Mutex<Vec<PassWindow>>,
    task: JoinHandle<Result<(), StoreError>>,
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
        let (status_tx, status_rx) = watch::channel(LinkStatus::default());
        let heard_window = Duration::from_secs(60);
        let task = tokio::spawn(async move {
            let result = async {
                let mut last_heard: Option<Instant> = None;
                let mut failures: u64 = 0;
                loop {
                    // The clock is read for each burst: a transmission takes air time.
                    while let Some(burst) = engine.poll_transmit(Instant::now())? {
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
                                    break;
                                }
                                Some(Cmd::Send(payload, reply)) = cmd_rx.recv() => {
                                    let _ = reply.send(engine.send(&payload));
                                }
                            }
                        }
                    }
                    let _ = status_tx.send(LinkStatus {
                        next_pass: None,
                        up: last_heard.is_some_and(|t| Instant::now() - t < heard_window),
                        queue_depth: engine.queue_depth(),
                        stats: engine.stats().clone(),
                    });
                    let wake = engine
                        .next_wakeup()
                        .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
                    tokio::select! {
                        frame = transport.recv() => match frame {
                            Ok(f) => {
                                let received_before = engine.stats().frames_received;
                                if engine.on_frame(&f, Instant::now())? {
                                    notify.notify_one();
                                }
                                if engine.stats().frames_received > received_before {
                                    last_heard = Some(Instant::now());
                                }
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "receive failed; link stopping");
                                return Ok(());
                            }
                        },
                        cmd = cmd_rx.recv() => match cmd {
                            Some(Cmd::Send(payload, reply)) => {
                                let _ = reply.send(engine.send(&payload));
                            }
                            None => return Ok(()),
                        },
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
            passes: std::sync::Mutex::new(Vec::new()),
            task,
        }
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

    /// The next delivered message (waiting for one). Call [`Self::ack`] once it is handled.
    pub async fn recv(&self) -> Result<(u64, Vec<u8>), LinkError> {
        loop {
            let notified = self.delivered.notified();
            if let Some(m) = self.store.inbox_first()? {
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
        Ok(self.store.inbox_remove(id)?)
    }

    /// The link's status.
    pub fn status(&self) -> LinkStatus {
        let mut status = self.status.borrow().clone();
        let now = std::time::SystemTime::now();
        let passes = self.passes.lock().unwrap_or_else(|p| p.into_inner());
        status.next_pass = passes
            .iter()
            .filter(|w| w.end > now)
            .min_by_key(|w| w.start)
            .copied();
        status
    }

    /// Tells the link the predicted passes (from the operator's orbit predictions), so its
    /// status can say when the satellite is next in view.
    pub fn set_passes(&self, windows: Vec<PassWindow>) {
        *self.passes.lock().unwrap_or_else(|p| p.into_inner()) = windows;
    }

    /// Stops the link (a crash, as far as the protocol is concerned: only the store remains).
    pub fn stop(self) {
        self.task.abort();
    }
}

impl<S: LinkStore + Clone> Drop for LinkHandle<S> {
    /// The link runs as long as its handle: dropping the handle stops it, releasing its
    /// transport and store.
    fn drop(&mut self) {
        self.task.abort();
    }
}
