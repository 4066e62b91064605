//! The bridge's durable state, on one of two engines behind one interface.
//!
//! - **redb** (the default): one file per bridge, nothing to install; writes go through a
//!   group-committing writer thread ([`redb_engine`]).
//! - **PostgreSQL**: a database server the operator already runs and backs up, which
//!   several bridge replicas can share ([`crate::postgres`]).
//!
//! Either way, a rule runs as one transaction over the bridge's tables ([`tables`]): a
//! [`Store::write`] is durable when it returns, and a [`Store::read`] sees one committed
//! snapshot. The mailbox has its own, faster operations ([`Store::mailbox_put`] and the
//! rest), as rows of its own in each engine.

use std::path::Path;
use std::sync::Arc;

pub mod fence;
mod link_rows;
mod mailbox_rows;
mod pg_txn;
mod redb_engine;
mod table_error;
pub mod tables;

pub use link_rows::{LinkRows, LinkState};
pub use mailbox_rows::{MailboxEntry, PutOutcome};
pub(crate) use pg_txn::PgTxn;
pub use tables::{ReadTransaction, WriteTransaction};

use crate::mailbox_rows::MailboxRows;
use crate::postgres::PgStore;
use redb_engine::RedbEngine;

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
    /// The database holds records in a layout this bridge does not read.
    #[error(
        "the database holds the bridge's records in layout {found}; this bridge reads layout \
         {expected} and will not misread them: start it on a new data folder or database, or \
         run the bridge version that wrote them"
    )]
    Layout {
        /// The layout found.
        found: u32,
        /// The layout this bridge reads.
        expected: u32,
    },
    /// A transaction failed (or the database server could not be reached).
    #[error("database error: {0}")]
    Database(String),
    /// The writer thread is gone (the bridge is shutting down).
    #[error("database writer has stopped")]
    WriterStopped,
    /// A write of the link's state from a replica that no longer holds the ground lease.
    #[error(
        "this replica's ground lease (token {held}) is no longer the latest (token {current}): \
         another replica drives the link now, so this one may not write its state"
    )]
    Fenced {
        /// The token this replica held (0: none).
        held: u64,
        /// The latest token.
        current: u64,
    },
}

pub(crate) fn db_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Database(e.to_string())
}

/// How the database writer is doing, for `/health`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriterHealth {
    /// Whether it can write (redb: its thread runs; PostgreSQL: the last attempt reached
    /// the server).
    pub running: bool,
    /// Batches whose durable commit failed (every op in them was refused).
    pub failed_batches: u64,
    /// The last such failure, cleared by the next batch that commits.
    pub last_error: Option<String>,
}

/// Handle to the database; cheap to clone.
#[derive(Clone)]
pub struct Store {
    engine: Engine,
}

#[derive(Clone)]
enum Engine {
    Redb(RedbEngine),
    Postgres(PgStore),
}

impl Store {
    /// Opens (creating if needed) the redb database at `path` and starts its writer thread.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        Ok(Store {
            engine: Engine::Redb(RedbEngine::open(path)?),
        })
    }

    /// Connects to PostgreSQL at `url` with at most `pool_size` connections, and brings
    /// its schema up to date.
    pub async fn connect_postgres(url: &str, pool_size: usize) -> Result<Store, StoreError> {
        let store = Store {
            engine: Engine::Postgres(PgStore::connect(url, pool_size).await?),
        };
        store.write(crate::state::check_layout).await?;
        Ok(store)
    }

    /// Which engine keeps the state: `"redb"` or `"postgres"`.
    pub fn engine_name(&self) -> &'static str {
        match &self.engine {
            Engine::Redb(_) => "redb",
            Engine::Postgres(_) => "postgres",
        }
    }

    /// The PostgreSQL engine, if that is the one in use.
    pub fn postgres(&self) -> Option<&PgStore> {
        match &self.engine {
            Engine::Postgres(pg) => Some(pg),
            Engine::Redb(_) => None,
        }
    }

    /// A handle that tells when every clone of this store (and its writer) is gone, so the
    /// file can be opened again.
    pub fn released(&self) -> Released {
        match &self.engine {
            Engine::Redb(redb) => Released::of(Arc::downgrade(&redb.db)),
            Engine::Postgres(pg) => Released::of(pg.handle()),
        }
    }

    /// How writing is doing.
    pub fn writer_health(&self) -> WriterHealth {
        match &self.engine {
            Engine::Redb(redb) => redb.writer_health(),
            Engine::Postgres(pg) => pg.writer_health(),
        }
    }

    /// Runs `job` in a write transaction and returns its result once the transaction is
    /// durable. Domain errors belong inside `T`: an `Err` from the job undoes its writes.
    pub async fn write<T: Send + 'static>(
        &self,
        job: impl FnOnce(&WriteTransaction) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        match &self.engine {
            Engine::Redb(redb) => redb.write(job).await,
            Engine::Postgres(pg) => pg.write(job).await,
        }
    }

    /// Runs `f` on a read transaction of the last committed state, off the async threads.
    pub async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&ReadTransaction) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        match &self.engine {
            Engine::Redb(redb) => redb.read(f).await,
            Engine::Postgres(pg) => pg.read(f).await,
        }
    }

    /// Stores `message` in slot `key`, replacing what was there, unless the mailbox would
    /// then hold more than `max_total_bytes` of messages; returns once durable.
    pub async fn mailbox_put(
        &self,
        key: [u8; 32],
        expires_at_ms: u64,
        message: String,
        max_total_bytes: u64,
    ) -> Result<PutOutcome, StoreError> {
        match &self.engine {
            Engine::Redb(redb) => {
                redb.mailbox_put(key, expires_at_ms, message, max_total_bytes)
                    .await
            }
            Engine::Postgres(pg) => pg.put(key, expires_at_ms, message, max_total_bytes).await,
        }
    }

    /// Message bytes the mailbox holds (expired entries not yet swept included).
    pub async fn mailbox_bytes(&self) -> Result<u64, StoreError> {
        match &self.engine {
            Engine::Redb(redb) => redb.mailbox_bytes().await,
            Engine::Postgres(pg) => pg.held_bytes().await,
        }
    }

    /// Empties slot `key`; returns the expiry (unix ms) of the entry it held, if any.
    pub async fn mailbox_delete(&self, key: [u8; 32]) -> Result<Option<u64>, StoreError> {
        match &self.engine {
            Engine::Redb(redb) => redb.mailbox_delete(key).await,
            Engine::Postgres(pg) => pg.delete(key).await,
        }
    }

    /// Removes every entry that expired at or before `now_ms`; returns how many.
    pub async fn mailbox_purge_expired(&self, now_ms: u64) -> Result<usize, StoreError> {
        match &self.engine {
            Engine::Redb(redb) => redb.mailbox_purge_expired(now_ms).await,
            Engine::Postgres(pg) => pg.purge_expired(now_ms).await,
        }
    }

    /// Reads slot `key` from the last committed state.
    pub async fn mailbox_get(&self, key: [u8; 32]) -> Result<Option<MailboxEntry>, StoreError> {
        match &self.engine {
            Engine::Redb(redb) => redb.mailbox_get(key).await,
            Engine::Postgres(pg) => MailboxRows::get(pg, key).await,
        }
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

pub(crate) fn lock(h: &std::sync::Mutex<WriterHealth>) -> std::sync::MutexGuard<'_, WriterHealth> {
    h.lock().unwrap_or_else(|p| p.into_inner())
}
