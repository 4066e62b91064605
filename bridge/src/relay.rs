//! Moves requests forward: emails the code, queues confirmed requests on the radio link,
//! merges the cosigner's answers, finalizes and broadcasts, and delivers the outcome.
//!
//! Each step is driven from the request's persisted state, so the same code resumes every
//! request after a restart. A step performs its side effect first and then commits the
//! transition (see [`crate::lifecycle`]); a request is claimed while a step runs so two tasks
//! never work on it at once. Answers from the link are acknowledged only after the
//! transition that records them is durable.
//!
//! Work is found by wake-ups, not polling: each announced transition, each message the link
//! says the satellite acknowledged, each retry when its backoff ends, and a request freed by
//! another task. A sweep of every active request every few seconds is only the safety net.
//! The parts: `outbound` (to the link), `inbound` (answers from it) and `deliver`.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinSet;

use satcosign_cosigner::decision::RequestId;
use satcosign_link::link::LinkHandle;
use satcosign_link::store::LinkStore;

use crate::lifecycle::Step;
use crate::service::{unix_now, Service, ServiceError};
use crate::state::State;
use crate::store::StoreError;

mod deliver;
mod inbound;
mod lockdown;
mod outbound;

/// How often every active request is looked at, besides the wake-ups (transitions, the
/// link's acknowledgements, retries): a safety sweep, not the way work is found.
const SCAN_EVERY: Duration = Duration::from_secs(5);
/// How often expired codes are swept.
const EXPIRE_EVERY: Duration = Duration::from_secs(30);
/// Longest wait before a step that keeps failing (a mail server down) is tried again.
const MAX_RETRY_WAIT: Duration = Duration::from_secs(300);

/// A request whose last step failed: not tried again before `until`.
struct Backoff {
    until: std::time::Instant,
    failures: u32,
}

/// The relay between the service and the link.
pub struct Relay<S: LinkStore + Clone> {
    service: Arc<Service>,
    link: Arc<LinkHandle<S>>,
    link_store: S,
    /// `SATCOSIGN_TEST_HOLD_AT=broadcast`: freeze after a broadcast and before its record,
    /// so a test can kill the bridge there.
    hold_after_broadcast: bool,
    /// Requests whose last step failed, waiting 1 s, 2 s, 4 s... (at most
    /// [`MAX_RETRY_WAIT`]) before the next try, so a dead mail server is not hammered.
    backoff: std::sync::Mutex<std::collections::HashMap<RequestId, Backoff>>,
    /// Requests woken while another task held them: stepped again when it lets go.
    again: std::sync::Mutex<std::collections::HashSet<RequestId>>,
    /// Link message -> the queued request it carries, to wake on its acknowledgement.
    in_flight: std::sync::Mutex<std::collections::HashMap<u64, RequestId>>,
}

/// What wakes the relay's scheduler.
enum Work {
    /// Look at one request.
    Step(RequestId),
    /// Look at every active request (a wake-up was missed).
    Sweep,
}

impl<S> Relay<S>
where
    S: LinkStore + Clone + Send + Sync + 'static,
{
    /// A relay over `link`, whose store is `link_store`.
    pub fn new(service: Arc<Service>, link: Arc<LinkHandle<S>>, link_store: S) -> Arc<Relay<S>> {
        Arc::new(Relay {
            service,
            link,
            link_store,
            hold_after_broadcast: std::env::var("SATCOSIGN_TEST_HOLD_AT")
                .is_ok_and(|v| v == "broadcast"),
            backoff: std::sync::Mutex::new(std::collections::HashMap::new()),
            again: std::sync::Mutex::new(std::collections::HashSet::new()),
            in_flight: std::sync::Mutex::new(std::collections::HashMap::new()),
        })
    }

    /// Runs until the link stops: one task receives answers, another drives requests.
    /// Every task it starts is its own (a [`JoinSet`]): aborting `run` stops them all.
    pub async fn run(self: Arc<Self>) {
        let mut tasks = JoinSet::new();
        let receiver = {
            let me = self.clone();
            tasks.spawn(async move { me.receive_loop().await })
        };
        let (work_tx, mut work_rx) = mpsc::unbounded_channel::<Work>();
        let mut events = self.service.events();
        let wake = work_tx.clone();
        tasks.spawn(async move {
            loop {
                let work = match events.recv().await {
                    Ok(e) => Work::Step(e.id),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => Work::Sweep,
                    Err(_) => return,
                };
                if wake.send(work).is_err() {
                    return;
                }
            }
        });
        // The link says which messages reached the satellite: their requests are sent.
        let mut acked = self.link.acknowledged();
        let (me, wake) = (self.clone(), work_tx.clone());
        tasks.spawn(async move {
            loop {
                let work = match acked.recv().await {
                    Ok(msg) => {
                        let carried = me
                            .in_flight
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .remove(&msg);
                        match carried {
                            Some(id) => Work::Step(id),
                            None => continue,
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => Work::Sweep,
                    Err(_) => return,
                };
                if wake.send(work).is_err() {
                    return;
                }
            }
        });
        let mut scan = tokio::time::interval(SCAN_EVERY);
        let mut expire = tokio::time::interval(EXPIRE_EVERY);
        loop {
            // Reap the steps that ended.
            while tasks.try_join_next().is_some() {}
            tokio::select! {
                Some(work) = work_rx.recv() => match work {
                    Work::Step(id) => self.spawn_step(&mut tasks, &work_tx, id),
                    Work::Sweep => self.sweep(&mut tasks, &work_tx).await,
                },
                _ = scan.tick() => self.sweep(&mut tasks, &work_tx).await,
                _ = expire.tick() => {
                    if let Err(e) = self.service.expire_stale().await {
                        tracing::warn!(error = %e, "cannot sweep expired codes");
                    }
                }
                _ = async { while !receiver.is_finished() { tokio::time::sleep(Duration::from_secs(1)).await } } => break,
            }
        }
        tasks.abort_all();
        tracing::warn!("relay stopped: the link has stopped");
    }

    async fn sweep(self: &Arc<Self>, tasks: &mut JoinSet<()>, wake: &mpsc::UnboundedSender<Work>) {
        match self.service.active_requests().await {
            Ok(ids) => ids
                .into_iter()
                .for_each(|id| self.spawn_step(tasks, wake, id)),
            Err(e) => tracing::warn!(error = %e, "cannot list active requests"),
        }
    }

    fn spawn_step(
        self: &Arc<Self>,
        tasks: &mut JoinSet<()>,
        wake: &mpsc::UnboundedSender<Work>,
        id: RequestId,
    ) {
        let now = std::time::Instant::now();
        let waiting = self
            .backoff
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .is_some_and(|b| b.until > now);
        if waiting {
            return;
        }
        let me = self.clone();
        let wake = wake.clone();
        tasks.spawn(async move {
            let result = me.step(id).await;
            if me
                .again
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id)
            {
                let _ = wake.send(Work::Step(id));
            }
            let retry_in = me.note_result(id, result);
            if let Some(wait) = retry_in {
                tokio::time::sleep(wait).await;
                let _ = wake.send(Work::Step(id));
            }
        });
    }

    /// Records how request `id`'s step ended; after a failure, how long until the next
    /// try (1 s, 2 s, 4 s... at most [`MAX_RETRY_WAIT`]).
    fn note_result(&self, id: RequestId, result: Result<(), ServiceError>) -> Option<Duration> {
        let mut backoff = self.backoff.lock().unwrap_or_else(|p| p.into_inner());
        let e = match result {
            Ok(()) => {
                backoff.remove(&id);
                return None;
            }
            Err(e) => e,
        };
        let b = backoff.entry(id).or_insert(Backoff {
            until: std::time::Instant::now(),
            failures: 0,
        });
        b.failures += 1;
        let wait = Duration::from_secs(1u64 << (b.failures - 1).min(16)).min(MAX_RETRY_WAIT);
        b.until = std::time::Instant::now() + wait;
        tracing::warn!(request = %id, error = %e, failures = b.failures,
            retry_in_secs = wait.as_secs(), "request step failed; will retry");
        Some(wait)
    }

    /// Does the next thing for request `id`, if anything is due and nobody else is on it.
    pub async fn step(&self, id: RequestId) -> Result<(), ServiceError> {
        let Some(_claim) = self.service.claim(id) else {
            // Another task has it: look again when that one is done.
            self.again
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(id);
            return Ok(());
        };
        let r = self.service.request(id).await?;
        match r.state {
            State::Received => self.service.send_confirmation(&r).await,
            // A held spend is asked for again from its release (the sweep comes back for it).
            State::Confirmed if r.hold.is_some_and(|h| unix_now() < h.releases_at) => Ok(()),
            State::Confirmed if self.locks_down(&r) => self.lock_down(&r).await,
            State::Confirmed => self.queue(&r).await,
            State::Queued => {
                let Some(msg) = r.link_msg else { return Ok(()) };
                // Woken by its acknowledgement, or by the sweep: one point lookup says.
                self.in_flight
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(msg, id);
                let store = self.link_store.clone();
                let pending = tokio::task::spawn_blocking(move || store.is_queued(msg))
                    .await
                    .map_err(|e| StoreError::Database(e.to_string()))?
                    .map_err(|e| StoreError::Database(e.to_string()))?;
                if !pending {
                    self.in_flight
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&msg);
                    self.to_sent(id).await?;
                }
                Ok(())
            }
            State::Signed | State::Refused | State::Expired | State::Cancelled => {
                if r.hold.is_some() && r.state != State::Signed {
                    // The satellite holds it: tell it never to sign (at most twice, after a
                    // crash here; it records a cancel once).
                    self.cancel_on_satellite(&r).await?;
                }
                self.deliver(r).await
            }
            State::AwaitingEmail | State::Sent | State::Delivered => Ok(()),
        }
    }

    async fn to_sent(&self, id: RequestId) -> Result<(), ServiceError> {
        self.service
            .take(id, Step::Acknowledged, |_, _| Ok(()))
            .await?;
        Ok(())
    }
}
