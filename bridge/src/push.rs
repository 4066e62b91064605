//! Electrum-style server pushes.
//!
//! Electrum servers notify subscribers with a bare call, `{"method": ..., "params": [...]}`,
//! on the same connection that subscribed. The Electrum TCP transport puts a [`Pusher`]
//! into every call's extensions, so any method can keep it and notify the client later.
//! On HTTP there is no connection to push to, and no `Pusher` is present.

use serde_json::Value;
use tokio::sync::mpsc;

/// A handle that sends notifications to one Electrum-protocol connection.
#[derive(Clone, Debug)]
pub struct Pusher {
    tx: mpsc::Sender<String>,
}

impl Pusher {
    /// A pusher writing lines into a connection's outgoing queue.
    pub fn new(tx: mpsc::Sender<String>) -> Pusher {
        Pusher { tx }
    }

    /// Queues `{"jsonrpc":"2.0","method":method,"params":params}`. Returns `false` when the
    /// connection is gone or too far behind, so holders can forget it.
    pub fn push(&self, method: &str, params: Vec<Value>) -> bool {
        let line = serde_json::json!({"jsonrpc": "2.0", "method": method, "params": params});
        self.tx.try_send(line.to_string()).is_ok()
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
