//! Mailbox puts on PostgreSQL with group commit.
//!
//! Every put must be checked against the mailbox's quota, which is one total; so puts
//! serialize on that total's row, and one transaction per put costs one WAL flush each:
//! a few hundred puts a second. Instead, one task per bridge takes whatever puts are queued
//! and runs them as one transaction: it locks the total once, checks each put in order
//! against the running total (exactly as if they ran one by one), writes the survivors in
//! one statement, and commits once. Each caller is answered only after that commit, so a
//! put is still durable when it returns; a failed commit fails every put in it, and none
//! is stored.

use std::collections::HashMap;

use deadpool_postgres::Pool;
use tokio::sync::{mpsc, oneshot};

use super::{db_err, to_i64, to_u64};
use crate::store::{PutOutcome, StoreError};

/// Most puts in one transaction.
const MAX_BATCH: usize = 512;
/// Puts that may wait for the task; more wait for room (memory stays bounded).
const QUEUE: usize = 4096;

struct Put {
    key: [u8; 32],
    expires_at_ms: u64,
    message: String,
    max_total_bytes: u64,
    reply: oneshot::Sender<Result<PutOutcome, StoreError>>,
}

/// The queue in front of the put task; cheap to clone.
#[derive(Clone)]
pub(super) struct PutQueue {
    tx: mpsc::Sender<Put>,
}

impl PutQueue {
    /// Starts the task; it ends when the last queue handle is dropped.
    pub(super) fn start(pool: Pool) -> PutQueue {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run(pool, rx));
        PutQueue { tx }
    }

    /// Stores `message` in slot `key` unless the mailbox would then hold more than
    /// `max_total_bytes`; returns once committed.
    pub(super) async fn put(
        &self,
        key: [u8; 32],
        expires_at_ms: u64,
        message: String,
        max_total_bytes: u64,
    ) -> Result<PutOutcome, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Put {
                key,
                expires_at_ms,
                message,
                max_total_bytes,
                reply,
            })
            .await
            .map_err(|_| StoreError::WriterStopped)?;
        answer.await.map_err(|_| StoreError::WriterStopped)?
    }
}

async fn run(pool: Pool, mut rx: mpsc::Receiver<Put>) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(put) => batch.push(put),
                Err(_) => break,
            }
        }
        match commit(&pool, &batch).await {
            Ok(outcomes) => {
                for (put, outcome) in batch.into_iter().zip(outcomes) {
                    let _ = put.reply.send(Ok(outcome));
                }
            }
            Err(e) => {
                tracing::warn!(puts = batch.len(), error = %e, "mailbox puts failed; none stored");
                for put in batch {
                    let _ = put.reply.send(Err(StoreError::Database(e.to_string())));
                }
            }
        }
    }
}

/// Runs `batch` as one transaction; each put's outcome, in order.
async fn commit(pool: &Pool, batch: &[Put]) -> Result<Vec<PutOutcome>, StoreError> {
    let mut client = pool.get().await.map_err(db_err)?;
    let tx = client.transaction().await.map_err(db_err)?;
    // The total's row lock orders this batch after every other bridge's.
    let mut held = to_u64(
        tx.query_one(
            "SELECT bytes FROM mailbox_totals WHERE id = 1 FOR UPDATE",
            &[],
        )
        .await
        .map_err(db_err)?
        .get(0),
    );
    let keys: Vec<&[u8]> = batch.iter().map(|p| p.key.as_slice()).collect();
    let mut lengths: HashMap<[u8; 32], u64> = HashMap::new();
    for row in tx
        .query(
            "SELECT keyhash, octet_length(message) FROM mailbox WHERE keyhash = ANY($1)",
            &[&keys],
        )
        .await
        .map_err(db_err)?
    {
        let key: Vec<u8> = row.get(0);
        if let Ok(key) = <[u8; 32]>::try_from(key.as_slice()) {
            lengths.insert(key, u64::try_from(row.get::<_, i32>(1)).unwrap_or(0));
        }
    }
    // In order, as if one by one; the last put to a slot is what the slot holds.
    let mut outcomes = Vec::with_capacity(batch.len());
    let mut last: HashMap<[u8; 32], usize> = HashMap::new();
    for (i, put) in batch.iter().enumerate() {
        let replaced = lengths.get(&put.key).copied().unwrap_or(0);
        let after = held - replaced.min(held) + put.message.len() as u64;
        if after > put.max_total_bytes && after > held {
            outcomes.push(PutOutcome::Full { held });
            continue;
        }
        held = after;
        lengths.insert(put.key, put.message.len() as u64);
        last.insert(put.key, i);
        outcomes.push(PutOutcome::Stored);
    }
    if !last.is_empty() {
        let (mut ks, mut expiries, mut messages) = (Vec::new(), Vec::new(), Vec::new());
        for &i in last.values() {
            ks.push(batch[i].key.as_slice());
            expiries.push(to_i64(batch[i].expires_at_ms));
            messages.push(batch[i].message.as_str());
        }
        tx.execute(
            "INSERT INTO mailbox (keyhash, expires_at_ms, message)
             SELECT * FROM unnest($1::bytea[], $2::bigint[], $3::text[])
             ON CONFLICT (keyhash) DO UPDATE
             SET expires_at_ms = excluded.expires_at_ms, message = excluded.message",
            &[&ks, &expiries, &messages],
        )
        .await
        .map_err(db_err)?;
        tx.execute(
            "UPDATE mailbox_totals SET bytes = $1 WHERE id = 1",
            &[&to_i64(held)],
        )
        .await
        .map_err(db_err)?;
    }
    tx.commit().await.map_err(db_err)?;
    Ok(outcomes)
}
