//! Watches each transaction the bridge broadcast until it is buried, so `request.status`
//! and `request.subscribe` can say where it stands: in the mempool, confirmed in block N
//! with k confirmations, or not seen by the server.
//!
//! A watch is written in the same redb transaction that records the broadcast, so a
//! restart resumes every watch. The upstream server is asked about one script of the
//! transaction: the first input's previous output, a script of the user's own wallet, whose
//! history is short and lists the transaction once it is in the mempool or a block. A watch
//! ends after `upstream.confirmations` blocks, or after `upstream.watch_secs` without the
//! server ever showing the transaction.

use std::sync::Arc;
use std::time::Duration;

use crate::store::tables::{ReadableTable, TableDefinition, WriteTransaction};
use bitcoin::{ScriptBuf, Txid};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use satcosign_cosigner::decision::RequestId;

use crate::config::UpstreamConfig;
use crate::service::{unix_now, Service, ServiceError};
use crate::state::{db_err, from_bytes, to_bytes};
use crate::store::StoreError;
use crate::upstream::{Upstream, UpstreamError};

/// Watched transactions: request id -> [`Watch`].
pub const WATCHES: TableDefinition<&[u8; 16], &[u8]> = TableDefinition::new("watches");

/// Where a broadcast transaction stands, as the upstream server last said.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChainStatus {
    /// Not looked up yet.
    Broadcast,
    /// In the server's mempool.
    Mempool,
    /// In a block.
    Confirmed {
        /// The block's height.
        height: u32,
        /// Blocks from it to the tip, itself included.
        confirmations: u32,
    },
    /// The server does not show it (dropped, replaced, or a server that lost it).
    NotSeen,
}

/// One watched transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Watch {
    /// The transaction.
    pub txid: Txid,
    /// The script whose history is looked up.
    pub script: ScriptBuf,
    /// When the watch began, unix seconds.
    pub since: u64,
    /// The last answer.
    pub status: ChainStatus,
    /// When it was last looked up, unix seconds (0: never).
    pub checked_at: u64,
    /// No longer looked up: buried deep enough, or never seen for too long.
    pub done: bool,
}

impl Watch {
    /// A new watch of `txid` through `script`.
    pub fn new(txid: Txid, script: ScriptBuf, now: u64) -> Watch {
        Watch {
            txid,
            script,
            since: now,
            status: ChainStatus::Broadcast,
            checked_at: 0,
            done: false,
        }
    }

    /// As `request.status` shows it (`outcome.signed.broadcast.chain`).
    pub fn json(&self) -> Value {
        let (status, height, confirmations) = match self.status {
            ChainStatus::Broadcast => ("broadcast", None, 0),
            ChainStatus::Mempool => ("mempool", None, 0),
            ChainStatus::Confirmed {
                height,
                confirmations,
            } => ("confirmed", Some(height), confirmations),
            ChainStatus::NotSeen => ("not_seen", None, 0),
        };
        json!({
            "status": status,
            "height": height,
            "confirmations": confirmations,
            "checked_at": (self.checked_at > 0).then_some(self.checked_at),
            "watching": !self.done,
        })
    }
}

/// Starts watching, inside the transaction that records the broadcast.
pub fn start_in(txn: &WriteTransaction, id: RequestId, watch: &Watch) -> Result<(), StoreError> {
    txn.open_table(WATCHES)
        .map_err(db_err)?
        .insert(&id.0, to_bytes(watch).as_slice())
        .map_err(db_err)?;
    Ok(())
}

/// The watch of request `id`, if its transaction was broadcast.
pub async fn of(service: &Service, id: RequestId) -> Result<Option<Watch>, ServiceError> {
    Ok(service
        .store
        .read(move |txn| {
            let t = txn.open_table(WATCHES).map_err(db_err)?;
            let v = t.get(&id.0).map_err(db_err)?;
            v.map(|v| from_bytes::<Watch>(v.value())).transpose()
        })
        .await?)
}

/// Looks every open watch up every `upstream.poll_secs`, until the bridge stops.
pub async fn run(service: Arc<Service>, upstream: Arc<dyn Upstream>, config: UpstreamConfig) {
    let mut every = tokio::time::interval(Duration::from_secs(config.poll_secs));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        if let Err(e) = poll(&service, &upstream, &config).await {
            tracing::warn!(error = %e, "cannot look up broadcast transactions; will retry");
        }
    }
}

/// One round: asks the server about every open watch and records what changed; tells
/// subscribers. Returns how many watches changed.
pub async fn poll(
    service: &Service,
    upstream: &Arc<dyn Upstream>,
    config: &UpstreamConfig,
) -> Result<usize, ServiceError> {
    let open: Vec<(RequestId, Watch)> = service
        .store
        .read(|txn| {
            let t = txn.open_table(WATCHES).map_err(db_err)?;
            let mut out = Vec::new();
            for row in t.iter().map_err(db_err)? {
                let (k, v) = row.map_err(db_err)?;
                let w: Watch = from_bytes(v.value())?;
                if !w.done {
                    out.push((RequestId(*k.value()), w));
                }
            }
            Ok(out)
        })
        .await?;
    let up = upstream.clone();
    if open.is_empty() {
        // Nothing to ask about: still ask for the tip, so `/health` knows whether the
        // server is there before a broadcast needs it.
        let _ = tokio::task::spawn_blocking(move || up.tip_height()).await;
        return Ok(0);
    }
    let (confirmations, watch_secs) = (config.confirmations, config.watch_secs);
    let updated = tokio::task::spawn_blocking(move || -> Result<_, UpstreamError> {
        let tip = up.tip_height()?;
        let now = unix_now();
        let mut updated = Vec::new();
        for (id, mut w) in open {
            let seen = up
                .history(&w.script)?
                .into_iter()
                .find(|h| h.txid == w.txid);
            w.status = match seen {
                None => ChainStatus::NotSeen,
                Some(h) => match h.height {
                    None => ChainStatus::Mempool,
                    Some(height) => ChainStatus::Confirmed {
                        height,
                        confirmations: tip.saturating_sub(height).saturating_add(1),
                    },
                },
            };
            w.checked_at = now;
            w.done = match w.status {
                ChainStatus::Confirmed {
                    confirmations: c, ..
                } => c >= confirmations,
                ChainStatus::NotSeen => now.saturating_sub(w.since) >= watch_secs,
                _ => false,
            };
            updated.push((id, w));
        }
        Ok(updated)
    })
    .await
    .map_err(db_err)??;
    let changed = service
        .store
        .write(move |txn| {
            let mut t = txn
                .open_table(WATCHES)
                .map_err(db_err)?;
            let mut changed = Vec::new();
            for (id, w) in updated {
                let old = t
                    .get(&id.0)
                    .map_err(db_err)?
                    .map(|v| from_bytes::<Watch>(v.value()))
                    .transpose()?;
                let differs = old
                    .as_ref()
                    .is_none_or(|o| o.status != w.status || o.done != w.done);
                t.insert(&id.0, to_bytes(&w).as_slice())
                    .map_err(db_err)?;
                if differs {
                    tracing::info!(request = %id, txid = %w.txid, status = ?w.status, "chain status");
                    changed.push(id);
                }
            }
            Ok(changed)
        })
        .await?;
    for id in &changed {
        service.changed(*id);
    }
    Ok(changed.len())
}
