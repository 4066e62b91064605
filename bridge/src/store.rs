//! The bridge's durable state in redb, with group commit.
//!
//! redb's API is synchronous and every durable commit costs an fsync (two, with two-phase
//! commit, which is on because the bridge stores untrusted input). So writes go through one
//! dedicated writer thread that drains whatever is queued and commits it as a single write
//! transaction: a hundred concurrent puts cost one commit, not a hundred, and each caller
//! is answered only after its write is on disk. Reads run on tokio's blocking pool against
//! the last committed snapshot, never on the async worker threads.

use std::path::Path;
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;

use std::any::Any;

use redb::{
    Database, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction,
};
use tokio::sync::oneshot;

/// Mailbox slots: keyhash -> expiry (unix ms, 8 bytes big-endian) followed by the message text.
const MAILBOX: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("mailbox");

/// Most operations folded into one write transaction.
const MAX_BATCH_OPS: usize = 1024;
/// Most message bytes folded into one write transaction.
const MAX_BATCH_BYTES: usize = 16 * 1024 * 1024;

/// A storage failure; the operation that met it changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database file could not be created or opened.
    #[error("cannot open database {path}: {message}")]
    Open {
        /// Database file.
        path: String,
        /// redb's message.
        message: String,
    },
    /// A transaction failed.
    #[error("database error: {0}")]
    Database(String),
    /// The writer thread is gone (the bridge is shutting down).
    #[error("database writer has stopped")]
    WriterStopped,
}

fn db_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Database(e.to_string())
}

/// A write job: runs inside the batch's transaction and returns its result (domain errors
/// belong inside `T`; an `Err` aborts the whole batch).
type Job =
    Box<dyn FnOnce(&WriteTransaction) -> Result<Box<dyn Any + Send>, StoreError> + Send + 'static>;

enum WriteOp {
    Job {
        job: Job,
        reply: oneshot::Sender<Result<Box<dyn Any + Send>, StoreError>>,
    },
    Put {
        key: [u8; 32],
        expires_at_ms: u64,
        message: String,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    Delete {
        key: [u8; 32],
        reply: oneshot::Sender<Result<Option<u64>, StoreError>>,
    },
    PurgeExpired {
        now_ms: u64,
        reply: oneshot::Sender<Result<usize, StoreError>>,
    },
}

impl WriteOp {
    fn weight(&self) -> usize {
        match self {
            WriteOp::Put { message, .. } => message.len(),
            _ => 0,
        }
    }
}

/// Handle to the database; cheap to clone.
#[derive(Clone)]
pub struct Store {
    db: Arc<Database>,
    writer: std_mpsc::Sender<WriteOp>,
}

impl Store {
    /// A handle that tells when every clone of this store (and its writer) is gone, so the
    /// file can be opened again.
    pub fn released(&self) -> Released {
        Released::of(Arc::downgrade(&self.db))
    }
}

/// Something whose last handle is awaited at shutdown (a database, a store), and, for a
/// database, its file's lock: the last handle going away is not the file being closed, and
/// a restart must be able to take the lock (redb's `Database already open` otherwise).
pub struct Released {
    handle: Box<dyn AnyWeak>,
    file: Option<std::path::PathBuf>,
}

trait AnyWeak: Send + Sync {
    fn alive(&self) -> bool;
}

impl<T: Send + Sync> AnyWeak for std::sync::Weak<T> {
    fn alive(&self) -> bool {
        self.strong_count() > 0
    }
}

impl Released {
    /// Tracks `weak`'s target.
    pub fn of<T: Send + Sync + 'static>(weak: std::sync::Weak<T>) -> Released {
        Released {
            handle: Box::new(weak),
            file: None,
        }
    }

    /// Also waits for the lock on the database file at `path` to be free.
    pub fn file(mut self, path: impl Into<std::path::PathBuf>) -> Released {
        self.file = Some(path.into());
        self
    }

    /// Whether the file's lock can be taken now (a missing file has none).
    fn file_free(&self) -> bool {
        let Some(path) = &self.file else {
            return true;
        };
        let Ok(f) = std::fs::File::open(path) else {
            return true;
        };
        match f.try_lock() {
            Ok(()) => f.unlock().is_ok(),
            Err(std::fs::TryLockError::WouldBlock) => false,
            Err(std::fs::TryLockError::Error(_)) => true,
        }
    }

    /// Waits until the last handle is dropped (tasks that held it are ending) and the file's
    /// lock is free; `false` if it is still held after `timeout`.
    pub async fn wait(&self, timeout: std::time::Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.handle.alive() || !self.file_free() {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        true
    }
}

/// A mailbox entry as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailboxEntry {
    /// When the entry stops being served, unix milliseconds.
    pub expires_at_ms: u64,
    /// The message text exactly as put.
    pub message: String,
}

fn encode_entry(expires_at_ms: u64, message: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(8 + message.len());
    v.extend_from_slice(&expires_at_ms.to_be_bytes());
    v.extend_from_slice(message.as_bytes());
    v
}

fn decode_entry(bytes: &[u8]) -> Result<MailboxEntry, StoreError> {
    if bytes.len() < 8 {
        return Err(StoreError::Database(
            "mailbox entry shorter than its header".into(),
        ));
    }
    let (head, body) = bytes.split_at(8);
    let mut expiry = [0u8; 8];
    expiry.copy_from_slice(head);
    let message = std::str::from_utf8(body)
        .map_err(|_| StoreError::Database("mailbox entry is not UTF-8".into()))?
        .to_owned();
    Ok(MailboxEntry {
        expires_at_ms: u64::from_be_bytes(expiry),
        message,
    })
}

impl Store {
    /// Opens (creating if needed) the database at `path` and starts its writer thread.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let open_err = |e: &dyn std::fmt::Display| StoreError::Open {
            path: path.display().to_string(),
            message: e.to_string(),
        };
        let db = Database::create(path).map_err(|e| open_err(&e))?;
        // Create the tables up front so readers never meet a missing table.
        let mut txn = db.begin_write().map_err(|e| open_err(&e))?;
        txn.set_two_phase_commit(true);
        txn.open_table(MAILBOX).map_err(|e| open_err(&e))?;
        crate::state::create_tables(&txn).map_err(|e| open_err(&e))?;
        txn.commit().map_err(|e| open_err(&e))?;

        let db = Arc::new(db);
        let (tx, rx) = std_mpsc::channel();
        let writer_db = db.clone();
        std::thread::Builder::new()
            .name("redb-writer".into())
            .spawn(move || writer_loop(&writer_db, &rx))
            .map_err(|e| open_err(&e))?;
        Ok(Store { db, writer: tx })
    }

    async fn submit<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> WriteOp,
    ) -> Result<T, StoreError> {
        let (reply, wait) = oneshot::channel();
        self.writer
            .send(make(reply))
            .map_err(|_| StoreError::WriterStopped)?;
        wait.await.map_err(|_| StoreError::WriterStopped)?
    }

    /// Stores `message` in slot `key`, replacing what was there; returns once durable.
    pub async fn mailbox_put(
        &self,
        key: [u8; 32],
        expires_at_ms: u64,
        message: String,
    ) -> Result<(), StoreError> {
        self.submit(|reply| WriteOp::Put {
            key,
            expires_at_ms,
            message,
            reply,
        })
        .await
    }

    /// Empties slot `key`; returns the expiry (unix ms) of the entry it held, if any.
    pub async fn mailbox_delete(&self, key: [u8; 32]) -> Result<Option<u64>, StoreError> {
        self.submit(|reply| WriteOp::Delete { key, reply }).await
    }

    /// Removes every entry that expired at or before `now_ms`; returns how many.
    pub async fn mailbox_purge_expired(&self, now_ms: u64) -> Result<usize, StoreError> {
        self.submit(|reply| WriteOp::PurgeExpired { now_ms, reply })
            .await
    }

    /// Runs `job` in a write transaction (grouped with others) and returns its result once
    /// the transaction is durable. Domain errors belong inside `T`: an `Err` from the job
    /// aborts every write of its batch.
    pub async fn write<T: Send + 'static>(
        &self,
        job: impl FnOnce(&WriteTransaction) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let any = self
            .submit(|reply| WriteOp::Job {
                job: Box::new(move |txn| job(txn).map(|t| Box::new(t) as Box<dyn Any + Send>)),
                reply,
            })
            .await?;
        any.downcast::<T>()
            .map(|b| *b)
            .map_err(|_| StoreError::Database("write job returned another type".into()))
    }

    /// Runs `f` on a read transaction of the last committed state, off the async threads.
    pub async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&ReadTransaction) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let txn = db.begin_read().map_err(db_err)?;
            f(&txn)
        })
        .await
        .map_err(db_err)?
    }

    /// Reads slot `key` from the last committed state.
    pub async fn mailbox_get(&self, key: [u8; 32]) -> Result<Option<MailboxEntry>, StoreError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let txn = db.begin_read().map_err(db_err)?;
            let table = txn.open_table(MAILBOX).map_err(db_err)?;
            match table.get(&key).map_err(db_err)? {
                Some(v) => decode_entry(v.value()).map(Some),
                None => Ok(None),
            }
        })
        .await
        .map_err(db_err)?
    }
}

fn writer_loop(db: &Database, rx: &std_mpsc::Receiver<WriteOp>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        let mut bytes = batch[0].weight();
        while batch.len() < MAX_BATCH_OPS && bytes < MAX_BATCH_BYTES {
            match rx.try_recv() {
                Ok(op) => {
                    bytes += op.weight();
                    batch.push(op);
                }
                Err(_) => break,
            }
        }
        commit_batch(db, batch);
    }
    tracing::debug!("database writer stopped");
}

/// What one op did inside the (not yet committed) transaction.
enum Outcome {
    Job(Box<dyn Any + Send>),
    Put,
    Delete(Option<u64>),
    Purge(usize),
}

fn apply_batch(db: &Database, batch: &mut [WriteOp]) -> Result<Vec<Outcome>, StoreError> {
    let mut outcomes = Vec::with_capacity(batch.len());
    let mut txn = db.begin_write().map_err(db_err)?;
    txn.set_two_phase_commit(true);
    for op in batch.iter_mut() {
        if let WriteOp::Job { job, .. } = op {
            let job = std::mem::replace(
                job,
                Box::new(|_| Err(StoreError::Database("job ran twice".into()))),
            );
            outcomes.push(Outcome::Job(job(&txn)?));
            continue;
        }
        let mut table = txn.open_table(MAILBOX).map_err(db_err)?;
        {
            let outcome = match op {
                WriteOp::Job { .. } => unreachable!("handled above"),
                WriteOp::Put {
                    key,
                    expires_at_ms,
                    message,
                    ..
                } => {
                    let value = encode_entry(*expires_at_ms, message);
                    table.insert(&*key, value.as_slice()).map_err(db_err)?;
                    Outcome::Put
                }
                WriteOp::Delete { key, .. } => {
                    let removed = table.remove(&*key).map_err(db_err)?;
                    let expiry = match removed {
                        Some(v) => Some(decode_entry(v.value())?.expires_at_ms),
                        None => None,
                    };
                    Outcome::Delete(expiry)
                }
                WriteOp::PurgeExpired { now_ms, .. } => {
                    let mut expired = Vec::new();
                    for row in table.iter().map_err(db_err)? {
                        let (k, v) = row.map_err(db_err)?;
                        if decode_entry(v.value())?.expires_at_ms <= *now_ms {
                            expired.push(*k.value());
                        }
                    }
                    for k in &expired {
                        table.remove(k).map_err(db_err)?;
                    }
                    Outcome::Purge(expired.len())
                }
            };
            outcomes.push(outcome);
        }
    }
    txn.commit().map_err(db_err)?;
    Ok(outcomes)
}

fn commit_batch(db: &Database, mut batch: Vec<WriteOp>) {
    let count = batch.len();
    // A caller that went away (connection closed) simply misses its answer: `send` errors
    // are ignored on purpose.
    match apply_batch(db, &mut batch) {
        Ok(outcomes) => {
            tracing::trace!(ops = count, "committed write batch");
            for (op, outcome) in batch.into_iter().zip(outcomes) {
                match (op, outcome) {
                    (WriteOp::Job { reply, .. }, Outcome::Job(value)) => {
                        let _ = reply.send(Ok(value));
                    }
                    (WriteOp::Put { reply, .. }, Outcome::Put) => {
                        let _ = reply.send(Ok(()));
                    }
                    (WriteOp::Delete { reply, .. }, Outcome::Delete(existed)) => {
                        let _ = reply.send(Ok(existed));
                    }
                    (WriteOp::PurgeExpired { reply, .. }, Outcome::Purge(n)) => {
                        let _ = reply.send(Ok(n));
                    }
                    _ => unreachable!("outcomes are produced in the order of their ops"),
                }
            }
        }
        Err(e) => {
            tracing::error!(ops = count, error = %e, "write batch failed; nothing in it was stored");
            for op in batch {
                let err = StoreError::Database(e.to_string());
                match op {
                    WriteOp::Job { reply, .. } => {
                        let _ = reply.send(Err(err));
                    }
                    WriteOp::Put { reply, .. } => {
                        let _ = reply.send(Err(err));
                    }
                    WriteOp::Delete { reply, .. } => {
                        let _ = reply.send(Err(err));
                    }
                    WriteOp::PurgeExpired { reply, .. } => {
                        let _ = reply.send(Err(err));
                    }
                }
            }
        }
    }
}
