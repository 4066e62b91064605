//! A connection's outgoing queue with a byte budget, and Electrum-style server pushes.
//!
//! Every line an Electrum-protocol connection will send (answers and pushes) waits in its
//! [`Outgoing`] queue until the writer has written it. The queue counts its unsent bytes:
//! while they exceed the connection's budget, the connection reads no more requests (a
//! client that never reads stops being served, instead of growing the bridge's memory), and
//! pushes are refused, so a subscriber that does not read is forgotten. An answer is always
//! queued: the reader waits before it reads the next request, so the queue never holds more
//! than the budget and one answer (itself capped).
//!
//! Electrum servers notify subscribers with a bare call, `{"method": ..., "params": [...]}`,
//! on the same connection that subscribed. The Electrum TCP transport puts a [`Pusher`]
//! into every call's extensions, so any method can keep it and notify the client later.
//! On HTTP there is no connection to push to, and no `Pusher` is present.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use serde_json::Value;
use tokio::sync::{mpsc, Notify};

/// The sending side of a connection's outgoing queue.
#[derive(Clone, Debug)]
pub struct Outgoing {
    tx: mpsc::UnboundedSender<String>,
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    queued: AtomicUsize,
    drained: Notify,
    budget: usize,
    subscriptions: AtomicUsize,
    max_subscriptions: usize,
}

/// The writer's side of a connection's outgoing queue.
#[derive(Debug)]
pub struct OutgoingRx {
    rx: mpsc::UnboundedReceiver<String>,
    shared: Arc<Shared>,
}

/// A queue whose sender stops reading past `budget` unsent bytes, for a connection that
/// may hold `max_subscriptions` subscriptions.
pub fn outgoing(budget: usize, max_subscriptions: usize) -> (Outgoing, OutgoingRx) {
    let (tx, rx) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared {
        queued: AtomicUsize::new(0),
        drained: Notify::new(),
        budget,
        subscriptions: AtomicUsize::new(0),
        max_subscriptions,
    });
    (
        Outgoing {
            tx,
            shared: shared.clone(),
        },
        OutgoingRx { rx, shared },
    )
}

impl Outgoing {
    /// Queues an answer (always: see the module doc). False if the connection is gone.
    pub fn send(&self, line: String) -> bool {
        self.shared
            .queued
            .fetch_add(line.len() + 1, Ordering::AcqRel);
        self.tx.send(line).is_ok()
    }

    /// Queues a push unless the queue is over its budget. False if refused or gone.
    pub fn try_push(&self, line: String) -> bool {
        if self.over_budget() {
            crate::metrics::limit_hit("electrum_push_dropped");
            return false;
        }
        self.send(line)
    }

    /// Unsent bytes.
    pub fn queued_bytes(&self) -> usize {
        self.shared.queued.load(Ordering::Acquire)
    }

    /// Whether the unsent bytes exceed the budget.
    pub fn over_budget(&self) -> bool {
        self.queued_bytes() > self.shared.budget
    }

    /// Waits until the unsent bytes are within the budget.
    pub async fn within_budget(&self) {
        loop {
            let drained = self.shared.drained.notified();
            if !self.over_budget() {
                return;
            }
            drained.await;
        }
    }

    /// Whether the connection has closed.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// Waits until the connection has closed.
    pub async fn closed(&self) {
        self.tx.closed().await
    }
}

impl OutgoingRx {
    /// The next line to write.
    pub async fn recv(&mut self) -> Option<String> {
        self.rx.recv().await
    }

    /// The next line, if one is queued.
    pub fn try_recv(&mut self) -> Option<String> {
        self.rx.try_recv().ok()
    }

    /// Refuses new lines; those queued can still be received.
    pub fn close(&mut self) {
        self.rx.close()
    }

    /// Records that `line` was written.
    pub fn written(&self, line: &str) {
        self.shared
            .queued
            .fetch_sub(line.len() + 1, Ordering::AcqRel);
        self.shared.drained.notify_waiters();
    }
}

/// A handle that sends notifications to one Electrum-protocol connection.
#[derive(Clone, Debug)]
pub struct Pusher {
    out: Outgoing,
}

impl Pusher {
    /// A pusher writing lines into a connection's outgoing queue.
    pub fn new(out: Outgoing) -> Pusher {
        Pusher { out }
    }

    /// Queues `{"jsonrpc":"2.0","method":method,"params":params}`. Returns `false` when the
    /// connection is gone or too far behind, so holders can forget it.
    pub fn push(&self, method: &str, params: Vec<Value>) -> bool {
        let line = serde_json::json!({"jsonrpc": "2.0", "method": method, "params": params});
        self.out.try_push(line.to_string())
    }

    /// A subscription slot on this connection, held while the subscription lasts; `Err`
    /// with the limit when the connection holds as many as it may.
    pub fn subscription(&self) -> Result<Subscription, usize> {
        let s = &self.out.shared;
        let taken = s
            .subscriptions
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < s.max_subscriptions).then_some(n + 1)
            });
        match taken {
            Ok(_) => Ok(Subscription { shared: s.clone() }),
            Err(_) => {
                crate::metrics::limit_hit("electrum_subscriptions");
                Err(s.max_subscriptions)
            }
        }
    }

    /// Whether the connection has closed.
    pub fn is_closed(&self) -> bool {
        self.out.is_closed()
    }

    /// Waits until the connection has closed.
    pub async fn closed(&self) {
        self.out.closed().await
    }
}

/// One subscription's slot on its connection, given back when dropped.
#[derive(Debug)]
pub struct Subscription {
    shared: Arc<Shared>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.shared.subscriptions.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_budget_holds_pushes_and_is_freed_by_writing() {
        let (out, mut rx) = outgoing(10, 1);
        assert!(out.send("0123456789".into()), "an answer always queues");
        assert!(out.over_budget());
        let pusher = Pusher::new(out.clone());
        assert!(!pusher.push("m", vec![]), "no push past the budget");
        let waiting = tokio::spawn({
            let out = out.clone();
            async move { out.within_budget().await }
        });
        let line = rx.recv().await.expect("line");
        rx.written(&line);
        waiting.await.expect("freed");
        assert_eq!(out.queued_bytes(), 0);
        assert!(pusher.push("m", vec![]));
        let slot = pusher.subscription().expect("one subscription");
        assert_eq!(pusher.subscription().expect_err("one only"), 1);
        drop(slot);
        pusher.subscription().expect("its slot came back");
    }
}
