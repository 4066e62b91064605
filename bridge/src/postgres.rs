//! The bridge's state in PostgreSQL, for operators who run their ground on a database
//! server they already run and back up. A pool of connections (`deadpool-postgres`) over
//! `tokio-postgres`, on loopback or a Unix socket (no TLS of its own). The schema is
//! versioned: [`MIGRATIONS`] run at connect, in order, each once, under an advisory lock so
//! that bridges starting together on one database apply each exactly once.
//!
//! The mailbox has relational rows of its own ([`MailboxRows`]), its puts batched against
//! the quota (`mailbox_puts`); every other table of the bridge, the radio link's included,
//! is rows of one `kv` table, written by rules group-committed in savepoints (`writer`,
//! over [`crate::store::PgTxn`]). Every replica on the database serves clients; the one
//! holding the ground lease ([`PgStore::take_ground`]) drives the radio link, and replicas
//! hear each other's changes by `LISTEN`/`NOTIFY` ([`crate::peers`]).

use std::sync::{Arc, Mutex};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use futures::future::BoxFuture;
use tokio_postgres::NoTls;

mod lease;
mod mailbox_puts;
mod writer;

use crate::mailbox_rows::MailboxRows;
use crate::store::{
    lock, MailboxEntry, PgTxn, PutOutcome, ReadTransaction, StoreError, WriteTransaction,
    WriterHealth,
};

/// The schema, one step per version (version = index + 1).
pub const MIGRATIONS: &[&str] = &[
    // 1: the cosigner-pool mailbox, with its byte total for the quota.
    "CREATE TABLE mailbox (
         keyhash bytea PRIMARY KEY CHECK (octet_length(keyhash) = 32),
         expires_at_ms bigint NOT NULL,
         message text NOT NULL
     );
     CREATE INDEX mailbox_expiry ON mailbox (expires_at_ms);
     CREATE TABLE mailbox_totals (id int PRIMARY KEY CHECK (id = 1), bytes bigint NOT NULL);
     INSERT INTO mailbox_totals VALUES (1, 0);",
    // 2: the bridge's other tables (see `store::tables`): keys in their sorted form.
    "CREATE TABLE kv (
         tbl text NOT NULL,
         k bytea NOT NULL,
         v bytea NOT NULL,
         PRIMARY KEY (tbl, k)
     );",
];

/// An arbitrary, fixed key for the migrations' advisory lock.
const MIGRATION_LOCK: i64 = 0x5a7c_0516;
/// How long opening a connection may take.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// How long a call waits for a free connection of the pool.
const POOL_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

pub(crate) fn db_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Database(format!("postgres: {e}"))
}

pub(crate) fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

pub(crate) fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// A pool of connections to the bridge's database, its schema up to date.
#[derive(Clone)]
pub struct PgStore {
    pool: Pool,
    puts: mailbox_puts::PutQueue,
    writer: writer::Writer,
    health: Arc<Mutex<WriterHealth>>,
    /// The connection holding [`GROUND_LOCK`], while this replica holds the lease.
    ground: Arc<tokio::sync::Mutex<Option<deadpool_postgres::ClientWrapper>>>,
    /// Where the server is, for connections outside the pool (`LISTEN`).
    config: Arc<tokio_postgres::Config>,
}

impl PgStore {
    /// Connects to `url` (a libpq connection string or `postgres://` URL) with at most
    /// `pool_size` connections, and brings the schema up to date.
    pub async fn connect(url: &str, pool_size: usize) -> Result<PgStore, StoreError> {
        let config: tokio_postgres::Config = url.parse().map_err(db_err)?;
        let manager = Manager::from_config(
            config.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        // A server that does not answer (down, or a network that drops packets) fails a
        // call in seconds with a clear error, rather than holding it until TCP gives up.
        let pool = Pool::builder(manager)
            .max_size(pool_size.max(1))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .create_timeout(Some(CONNECT_TIMEOUT))
            .wait_timeout(Some(POOL_WAIT))
            .build()
            .map_err(db_err)?;
        let store = PgStore {
            puts: mailbox_puts::PutQueue::start(pool.clone()),
            writer: writer::Writer::start(pool.clone(), tokio::runtime::Handle::current())?,
            pool,
            health: Arc::new(Mutex::new(WriterHealth {
                running: true,
                ..WriterHealth::default()
            })),
            ground: Arc::default(),
            config: Arc::new(config),
        };
        store.migrate().await?;
        Ok(store)
    }

    /// Asks the server whether it answers (within 2 s), and records the answer for
    /// `/health`.
    pub async fn probe(&self) {
        let attempt = async {
            let client = self.pool.get().await.map_err(db_err)?;
            client.simple_query("SELECT 1").await.map_err(db_err)?;
            Ok::<(), StoreError>(())
        };
        let result = tokio::time::timeout(std::time::Duration::from_secs(2), attempt)
            .await
            .unwrap_or_else(|_| Err(db_err("no answer within 2 s")));
        self.note(&result);
    }

    /// Where the server is, for a connection of its own.
    pub fn connection_config(&self) -> &tokio_postgres::Config {
        &self.config
    }

    /// A connection from the pool.
    pub(crate) async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(db_err)
    }

    /// A handle that is alive while any clone of this store is.
    pub fn handle(&self) -> std::sync::Weak<Mutex<WriterHealth>> {
        Arc::downgrade(&self.health)
    }

    /// Whether the last transaction reached the server, and the last failure.
    pub fn writer_health(&self) -> WriterHealth {
        lock(&self.health).clone()
    }

    /// Records how a transaction went: the server is reachable again after a success.
    fn note<T>(&self, result: &Result<T, StoreError>) {
        let mut h = lock(&self.health);
        match result {
            Ok(_) => {
                h.running = true;
                h.last_error = None;
            }
            Err(e @ StoreError::Database(message)) if message.starts_with("postgres") => {
                h.running = false;
                h.failed_batches += 1;
                h.last_error = Some(e.to_string());
            }
            Err(_) => {}
        }
    }

    /// Runs `job` in a write transaction (group-committed with others queued, serialized
    /// with every other bridge's writes) and returns its result once committed; an `Err`
    /// from the job undoes its writes alone.
    pub async fn write<T: Send + 'static>(
        &self,
        job: impl FnOnce(&WriteTransaction) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let result = self.writer.write(job).await;
        self.note(&result);
        result
    }

    /// Runs `f` on a snapshot of what is committed.
    pub async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&ReadTransaction) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let result = async {
            let client = self.pool.get().await.map_err(db_err)?;
            let rt = tokio::runtime::Handle::current();
            tokio::task::spawn_blocking(move || {
                let txn = ReadTransaction::postgres(PgTxn::begin_read(client, rt)?);
                let result = f(&txn);
                if let Some(txn) = txn.into_postgres() {
                    txn.commit()?;
                }
                result
            })
            .await
            .map_err(db_err)?
        }
        .await;
        self.note(&result);
        result
    }

    /// The schema version in use.
    pub async fn version(&self) -> Result<usize, StoreError> {
        let client = self.pool.get().await.map_err(db_err)?;
        let row = client
            .query_one("SELECT coalesce(max(version), 0) FROM schema_version", &[])
            .await
            .map_err(db_err)?;
        Ok(usize::try_from(row.get::<_, i32>(0)).unwrap_or(0))
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        let mut client = self.pool.get().await.map_err(db_err)?;
        let tx = client.transaction().await.map_err(db_err)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(db_err)?;
        tx.batch_execute("CREATE TABLE IF NOT EXISTS schema_version (version int PRIMARY KEY)")
            .await
            .map_err(db_err)?;
        let done: i32 = tx
            .query_one("SELECT coalesce(max(version), 0) FROM schema_version", &[])
            .await
            .map_err(db_err)?
            .get(0);
        for (i, step) in MIGRATIONS.iter().enumerate() {
            let version = i32::try_from(i + 1).unwrap_or(i32::MAX);
            if version <= done {
                continue;
            }
            tx.batch_execute(step)
                .await
                .map_err(|e| db_err(format!("migration {version}: {e}")))?;
            tx.execute("INSERT INTO schema_version VALUES ($1)", &[&version])
                .await
                .map_err(db_err)?;
            tracing::info!(version, "database schema migrated");
        }
        tx.commit().await.map_err(db_err)
    }

    async fn get_row(&self, key: [u8; 32]) -> Result<Option<MailboxEntry>, StoreError> {
        let client = self.pool.get().await.map_err(db_err)?;
        // Prepared once per connection: a read is then one round trip, with no planning.
        let select = client
            .prepare_cached("SELECT expires_at_ms, message FROM mailbox WHERE keyhash = $1")
            .await
            .map_err(db_err)?;
        let row = client
            .query_opt(&select, &[&key.as_slice()])
            .await
            .map_err(db_err)?;
        Ok(row.map(|r| MailboxEntry {
            expires_at_ms: to_u64(r.get(0)),
            message: r.get(1),
        }))
    }

    /// Deletes the rows `condition` (with `param`) selects and lowers the total by their
    /// bytes, in one transaction; returns the deleted rows' expiries.
    async fn delete_where(
        &self,
        condition: &str,
        param: &(dyn tokio_postgres::types::ToSql + Sync),
    ) -> Result<Vec<u64>, StoreError> {
        let mut client = self.pool.get().await.map_err(db_err)?;
        let tx = client.transaction().await.map_err(db_err)?;
        tx.execute("SELECT 1 FROM mailbox_totals WHERE id = 1 FOR UPDATE", &[])
            .await
            .map_err(db_err)?;
        let rows = tx
            .query(
                &format!(
                    "DELETE FROM mailbox WHERE {condition} \
                     RETURNING expires_at_ms, octet_length(message)"
                ),
                &[param],
            )
            .await
            .map_err(db_err)?;
        let freed: i64 = rows.iter().map(|r| i64::from(r.get::<_, i32>(1))).sum();
        if freed > 0 {
            tx.execute(
                "UPDATE mailbox_totals SET bytes = greatest(bytes - $1, 0) WHERE id = 1",
                &[&freed],
            )
            .await
            .map_err(db_err)?;
        }
        tx.commit().await.map_err(db_err)?;
        Ok(rows.iter().map(|r| to_u64(r.get(0))).collect())
    }
}

impl MailboxRows for PgStore {
    fn put(
        &self,
        key: [u8; 32],
        expires_at_ms: u64,
        message: String,
        max_total_bytes: u64,
    ) -> BoxFuture<'_, Result<PutOutcome, StoreError>> {
        Box::pin(self.puts.put(key, expires_at_ms, message, max_total_bytes))
    }

    fn get(&self, key: [u8; 32]) -> BoxFuture<'_, Result<Option<MailboxEntry>, StoreError>> {
        Box::pin(self.get_row(key))
    }

    fn delete(&self, key: [u8; 32]) -> BoxFuture<'_, Result<Option<u64>, StoreError>> {
        Box::pin(async move {
            let key = key.to_vec();
            Ok(self
                .delete_where("keyhash = $1", &key)
                .await?
                .into_iter()
                .next())
        })
    }

    fn purge_expired(&self, now_ms: u64) -> BoxFuture<'_, Result<usize, StoreError>> {
        Box::pin(async move {
            let now = to_i64(now_ms);
            Ok(self.delete_where("expires_at_ms <= $1", &now).await?.len())
        })
    }

    fn held_bytes(&self) -> BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(async move {
            let client = self.pool.get().await.map_err(db_err)?;
            let row = client
                .query_one("SELECT bytes FROM mailbox_totals WHERE id = 1", &[])
                .await
                .map_err(db_err)?;
            Ok(to_u64(row.get(0)))
        })
    }
}
