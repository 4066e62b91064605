//! The bridge's rules on PostgreSQL, group-committed.
//!
//! Every write transaction holds the database's write lock (see [`crate::store::PgTxn`]),
//! so writes run one after another, and each used to pay its own lock, round trips and WAL
//! flush. As on redb, one writer thread now takes whatever rules are queued and runs them
//! in one transaction, each inside a savepoint of its own: a rule that fails is undone
//! alone, the others stand, and one commit makes them all durable. Each caller is answered
//! after that commit.

use std::any::Any;
use std::sync::mpsc as std_mpsc;

use deadpool_postgres::Pool;
use tokio::runtime::Handle;
use tokio::sync::oneshot;

use super::db_err;
use crate::store::{PgTxn, StoreError, WriteTransaction};

/// Most rules in one transaction.
const MAX_BATCH: usize = 256;

type Value = Box<dyn Any + Send>;
type Job = Box<dyn FnOnce(&WriteTransaction) -> Result<Value, StoreError> + Send>;

struct Queued {
    job: Job,
    reply: oneshot::Sender<Result<Value, StoreError>>,
}

/// The queue in front of the writer thread; cheap to clone. The thread ends when the last
/// handle is dropped.
#[derive(Clone)]
pub(super) struct Writer {
    tx: std_mpsc::Sender<Queued>,
}

impl Writer {
    /// Starts the writer thread on `pool`, reaching the runtime through `rt`.
    pub(super) fn start(pool: Pool, rt: Handle) -> Result<Writer, StoreError> {
        let (tx, rx) = std_mpsc::channel::<Queued>();
        std::thread::Builder::new()
            .name("pg-writer".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut batch = vec![first];
                    while batch.len() < MAX_BATCH {
                        match rx.try_recv() {
                            Ok(q) => batch.push(q),
                            Err(_) => break,
                        }
                    }
                    run_batch(&pool, &rt, batch);
                }
            })
            .map_err(db_err)?;
        Ok(Writer { tx })
    }

    /// Runs `job` in the next transaction; its result once that commit returned.
    pub(super) async fn write<T: Send + 'static>(
        &self,
        job: impl FnOnce(&WriteTransaction) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Queued {
                job: Box::new(move |txn| job(txn).map(|v| Box::new(v) as Value)),
                reply,
            })
            .map_err(|_| StoreError::WriterStopped)?;
        let value = answer.await.map_err(|_| StoreError::WriterStopped)??;
        value
            .downcast::<T>()
            .map(|b| *b)
            .map_err(|_| StoreError::Database("write job returned another type".into()))
    }
}

/// Runs one rule, catching a panic as its failure.
fn run_job(job: Job, txn: &WriteTransaction) -> Result<Value, StoreError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(txn))).unwrap_or_else(|_| {
        tracing::error!("a database rule panicked; it was undone");
        Err(StoreError::Database("the rule panicked".into()))
    })
}

fn run_batch(pool: &Pool, rt: &Handle, batch: Vec<Queued>) {
    let (jobs, replies): (Vec<Job>, Vec<_>) = batch.into_iter().map(|q| (q.job, q.reply)).unzip();
    match apply(pool, rt, jobs) {
        Ok(outcomes) => {
            for (reply, outcome) in replies.into_iter().zip(outcomes) {
                let _ = reply.send(outcome);
            }
        }
        Err(e) => {
            tracing::warn!(rules = replies.len(), error = %e, "a write batch failed; none of it is stored");
            for reply in replies {
                let _ = reply.send(Err(StoreError::Database(e.to_string())));
            }
        }
    }
}

/// One transaction for `jobs`; each one's outcome, or the error that undid them all.
fn apply(
    pool: &Pool,
    rt: &Handle,
    jobs: Vec<Job>,
) -> Result<Vec<Result<Value, StoreError>>, StoreError> {
    let client = rt.block_on(pool.get()).map_err(db_err)?;
    let txn = WriteTransaction::postgres(PgTxn::begin_write(client, rt.clone())?);
    let alone = jobs.len() == 1;
    let mut outcomes = Vec::with_capacity(jobs.len());
    for job in jobs {
        if alone {
            outcomes.push(run_job(job, &txn));
            continue;
        }
        txn.savepoint()?;
        let outcome = run_job(job, &txn);
        if outcome.is_ok() {
            txn.release_savepoint()?;
        } else {
            txn.rollback_to_savepoint()?;
        }
        outcomes.push(outcome);
    }
    let txn = txn
        .into_postgres()
        .ok_or_else(|| db_err("not a postgres transaction"))?;
    if alone && outcomes.iter().all(Result::is_err) {
        txn.rollback()?;
    } else {
        txn.commit()?;
    }
    Ok(outcomes)
}
