//! The redb engine: one file, with group commit.
//!
//! redb's API is synchronous and every durable commit costs an fsync (two, with two-phase
//! commit, which is on because the bridge stores untrusted input). So writes go through one
//! dedicated writer thread that drains whatever is queued and runs each op in a write
//! transaction of its own committed without fsync, then makes them durable together with
//! one durable commit: a hundred concurrent puts cost one fsync, not a hundred, an op that
//! fails is undone alone, and each caller is answered only after its write is on disk.
//! Reads run on tokio's blocking pool against the last committed snapshot, never on the
//! async worker threads.

use std::any::Any;
use std::path::Path;
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;

use redb::{Database, Durability, ReadableDatabase};
use tokio::sync::oneshot;

use super::mailbox_rows::*;
use super::tables::{ReadTransaction, ReadableTable, WriteTransaction};
use super::{db_err, lock, StoreError, WriterHealth};

/// Most operations folded into one write transaction.
const MAX_BATCH_OPS: usize = 1024;
/// Most message bytes folded into one write transaction.
const MAX_BATCH_BYTES: usize = 16 * 1024 * 1024;

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
        max_total_bytes: u64,
        reply: oneshot::Sender<Result<PutOutcome, StoreError>>,
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

    /// Answers the op with `e` (a caller that went away misses it).
    fn fail(self, e: StoreError) {
        match self {
            WriteOp::Job { reply, .. } => {
                let _ = reply.send(Err(e));
            }
            WriteOp::Put { reply, .. } => {
                let _ = reply.send(Err(e));
            }
            WriteOp::Delete { reply, .. } => {
                let _ = reply.send(Err(e));
            }
            WriteOp::PurgeExpired { reply, .. } => {
                let _ = reply.send(Err(e));
            }
        }
    }
}

/// The database and its writer thread; cheap to clone.
#[derive(Clone)]
pub(super) struct RedbEngine {
    pub(super) db: Arc<Database>,
    writer: std_mpsc::Sender<WriteOp>,
    pub(super) health: Arc<std::sync::Mutex<WriterHealth>>,
}

/// The database's page cache, bytes.
const CACHE_BYTES: usize = 32 << 20;

impl RedbEngine {
    /// Opens (creating if needed) the database at `path` and starts its writer thread.
    pub(super) fn open(path: &Path) -> Result<RedbEngine, StoreError> {
        let open_err = |e: &dyn std::fmt::Display| StoreError::Open {
            path: path.display().to_string(),
            message: e.to_string(),
        };
        // redb's page cache defaults to 1 GiB, which a flood of large mailbox messages fills:
        // bound it so the bridge's memory does not follow what clients write.
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(path)
            .map_err(|e| open_err(&e))?;
        // Create the tables up front so readers never meet a missing table.
        let mut txn = db.begin_write().map_err(|e| open_err(&e))?;
        txn.set_two_phase_commit(true);
        let txn = WriteTransaction::redb(txn);
        txn.open_table(MAILBOX).map_err(|e| open_err(&e))?;
        index_mailbox(&txn).map_err(|e| open_err(&e))?;
        crate::state::create_tables(&txn).map_err(|e| open_err(&e))?;
        crate::state::check_layout(&txn)?;
        let txn = txn.into_redb().ok_or(StoreError::WriterStopped)?;
        txn.commit().map_err(|e| open_err(&e))?;

        let db = Arc::new(db);
        let (tx, rx) = std_mpsc::channel();
        let writer_db = db.clone();
        let health = Arc::new(std::sync::Mutex::new(WriterHealth {
            running: true,
            ..WriterHealth::default()
        }));
        let writer_health = health.clone();
        std::thread::Builder::new()
            .name("redb-writer".into())
            .spawn(move || {
                writer_loop(&writer_db, &rx, &writer_health);
                lock(&writer_health).running = false;
            })
            .map_err(|e| open_err(&e))?;
        Ok(RedbEngine {
            db,
            writer: tx,
            health,
        })
    }

    /// How the writer is doing.
    pub(super) fn writer_health(&self) -> WriterHealth {
        lock(&self.health).clone()
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

    /// Stores `message` in slot `key`, replacing what was there, unless the mailbox would
    /// then hold more than `max_total_bytes` of messages; returns once durable.
    pub(super) async fn mailbox_put(
        &self,
        key: [u8; 32],
        expires_at_ms: u64,
        message: String,
        max_total_bytes: u64,
    ) -> Result<PutOutcome, StoreError> {
        self.submit(|reply| WriteOp::Put {
            key,
            expires_at_ms,
            message,
            max_total_bytes,
            reply,
        })
        .await
    }

    /// Message bytes the mailbox holds (expired entries not yet swept included).
    pub(super) async fn mailbox_bytes(&self) -> Result<u64, StoreError> {
        self.read(|txn| {
            let t = txn.open_table(MAILBOX_TOTALS).map_err(db_err)?;
            Ok(t.get("bytes").map_err(db_err)?.map_or(0, |v| v.value()))
        })
        .await
    }

    /// Empties slot `key`; returns the expiry (unix ms) of the entry it held, if any.
    pub(super) async fn mailbox_delete(&self, key: [u8; 32]) -> Result<Option<u64>, StoreError> {
        self.submit(|reply| WriteOp::Delete { key, reply }).await
    }

    /// Removes every entry that expired at or before `now_ms`; returns how many.
    pub(super) async fn mailbox_purge_expired(&self, now_ms: u64) -> Result<usize, StoreError> {
        self.submit(|reply| WriteOp::PurgeExpired { now_ms, reply })
            .await
    }

    /// Runs `job` in a write transaction (grouped with others) and returns its result once
    /// the transaction is durable. Domain errors belong inside `T`: an `Err` from the job
    /// aborts every write of its batch.
    pub(super) async fn write<T: Send + 'static>(
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
    pub(super) async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&ReadTransaction) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let txn = ReadTransaction::redb(db.begin_read().map_err(db_err)?);
            f(&txn)
        })
        .await
        .map_err(db_err)?
    }

    /// Reads slot `key` from the last committed state.
    pub(super) async fn mailbox_get(
        &self,
        key: [u8; 32],
    ) -> Result<Option<MailboxEntry>, StoreError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let txn = ReadTransaction::redb(db.begin_read().map_err(db_err)?);
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

fn writer_loop(
    db: &Database,
    rx: &std_mpsc::Receiver<WriteOp>,
    health: &std::sync::Mutex<WriterHealth>,
) {
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
        // A panic in a job would leave the bridge half alive: answering `/health` and
        // reads, never writing again. Stop the whole process instead, with a clear line,
        // so its supervisor restarts it: every state is durable, and a restart resumes
        // every request where its last commit left it.
        let committed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            commit_batch(db, batch, health);
        }));
        if let Err(panic) = committed {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic".into());
            tracing::error!(
                panic = %what,
                "the database writer panicked; nothing of its batch was stored. Stopping the \
                 bridge so that its supervisor restarts it"
            );
            std::process::exit(70);
        }
    }
    tracing::debug!("database writer stopped");
}

/// What one op did inside the (not yet committed) transaction.
enum Outcome {
    Job(Box<dyn Any + Send>),
    Put(PutOutcome),
    Delete(Option<u64>),
    Purge(usize),
}

/// Runs one op inside `txn`.
fn run_op(txn: &WriteTransaction, op: &mut WriteOp) -> Result<Outcome, StoreError> {
    Ok(match op {
        WriteOp::Job { job, .. } => {
            let job = std::mem::replace(
                job,
                Box::new(|_| Err(StoreError::Database("job ran twice".into()))),
            );
            Outcome::Job(job(txn)?)
        }
        WriteOp::Put {
            key,
            expires_at_ms,
            message,
            max_total_bytes,
            ..
        } => Outcome::Put(put_in(txn, key, *expires_at_ms, message, *max_total_bytes)?),
        WriteOp::Delete { key, .. } => Outcome::Delete(delete_in(txn, key)?),
        WriteOp::PurgeExpired { now_ms, .. } => Outcome::Purge(purge_in(txn, *now_ms)?),
    })
}

/// Applies a batch: each op in a transaction of its own, so an op that fails is undone
/// alone and the others stand; those transactions commit without waiting for the disk,
/// and one durable commit at the end makes them all durable at once (the group commit).
/// Each op's result, for its reply once that commit returned.
fn apply_batch(
    db: &Database,
    batch: &mut [WriteOp],
) -> Result<Vec<Result<Outcome, StoreError>>, StoreError> {
    let mut outcomes = Vec::with_capacity(batch.len());
    for op in batch.iter_mut() {
        let mut txn = db.begin_write().map_err(db_err)?;
        txn.set_durability(Durability::None).map_err(db_err)?;
        let txn = WriteTransaction::redb(txn);
        let outcome = run_op(&txn, op);
        let txn = txn.into_redb().ok_or(StoreError::WriterStopped)?;
        match outcome {
            Ok(outcome) => {
                txn.commit().map_err(db_err)?;
                outcomes.push(Ok(outcome));
            }
            Err(e) => {
                txn.abort().map_err(db_err)?;
                tracing::warn!(error = %e, "a write failed alone; the rest of its batch stands");
                outcomes.push(Err(e));
            }
        }
    }
    let mut durable = db.begin_write().map_err(db_err)?;
    durable.set_two_phase_commit(true);
    durable.commit().map_err(db_err)?;
    Ok(outcomes)
}

fn commit_batch(db: &Database, mut batch: Vec<WriteOp>, health: &std::sync::Mutex<WriterHealth>) {
    let count = batch.len();
    // A caller that went away (connection closed) simply misses its answer: `send` errors
    // are ignored on purpose.
    match apply_batch(db, &mut batch) {
        Ok(outcomes) => {
            tracing::trace!(ops = count, "committed write batch");
            lock(health).last_error = None;
            for (op, outcome) in batch.into_iter().zip(outcomes) {
                match (op, outcome) {
                    (WriteOp::Job { reply, .. }, Ok(Outcome::Job(value))) => {
                        let _ = reply.send(Ok(value));
                    }
                    (WriteOp::Put { reply, .. }, Ok(Outcome::Put(outcome))) => {
                        let _ = reply.send(Ok(outcome));
                    }
                    (WriteOp::Delete { reply, .. }, Ok(Outcome::Delete(existed))) => {
                        let _ = reply.send(Ok(existed));
                    }
                    (WriteOp::PurgeExpired { reply, .. }, Ok(Outcome::Purge(n))) => {
                        let _ = reply.send(Ok(n));
                    }
                    (op, Err(e)) => op.fail(e),
                    _ => unreachable!("outcomes are produced in the order of their ops"),
                }
            }
        }
        Err(e) => {
            tracing::error!(ops = count, error = %e, "write batch failed; nothing in it was stored");
            {
                let mut h = lock(health);
                h.failed_batches += 1;
                h.last_error = Some(e.to_string());
            }
            for op in batch {
                op.fail(StoreError::Database(e.to_string()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tables::{ReadableTable, TableDefinition};
    use crate::store::Store;
    use std::future::Future as _;

    const NUMBERS: TableDefinition<u32, u32> = TableDefinition::new("numbers");

    /// Jobs queued together while the writer is busy share one batch; every fifth writes
    /// and then fails. It alone is undone, the rest are answered and found after a reopen.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failing_write_fails_alone_and_the_rest_of_its_batch_is_durable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t.redb");
        let store = Store::open(&path).expect("open");
        let (release, hold) = std_mpsc::channel::<()>();
        let (started, writer_busy) = oneshot::channel::<()>();
        let blocker = tokio::spawn({
            let store = store.clone();
            async move {
                store
                    .write(move |_| {
                        let _ = started.send(());
                        let _ = hold.recv();
                        Ok(())
                    })
                    .await
            }
        });
        writer_busy.await.expect("the writer took the first job");
        let mut jobs = Vec::new();
        for n in 0u32..40 {
            let mut job = Box::pin(store.write(move |txn| {
                txn.open_table(NUMBERS)
                    .map_err(db_err)?
                    .insert(n, n * 10)
                    .map_err(db_err)?;
                if n % 5 == 0 {
                    return Err(StoreError::Database(format!("job {n} fails")));
                }
                Ok(n)
            }));
            // One poll sends it to the writer's queue, behind the blocker.
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            assert!(job.as_mut().poll(&mut cx).is_pending());
            jobs.push(job);
        }
        release.send(()).expect("release");
        blocker.await.expect("blocker").expect("blocker job");
        for (n, job) in jobs.into_iter().enumerate() {
            let result = job.await;
            if n % 5 == 0 {
                let e = result.expect_err("fails");
                assert!(e.to_string().contains(&format!("job {n} fails")), "{e}");
            } else {
                assert_eq!(result.expect("stands"), n as u32);
            }
        }
        let released = store.released().file(&path);
        drop(store);
        assert!(released.wait(std::time::Duration::from_secs(10)).await);
        let store = Store::open(&path).expect("reopen");
        let kept = store
            .read(|txn| {
                let t = txn.open_table(NUMBERS).map_err(db_err)?;
                let mut kept = Vec::new();
                for row in t.iter().map_err(db_err)? {
                    kept.push(row.map_err(db_err)?.0.value());
                }
                Ok(kept)
            })
            .await
            .expect("read");
        let expected: Vec<u32> = (0..40).filter(|n| n % 5 != 0).collect();
        assert_eq!(kept, expected);
    }
}
