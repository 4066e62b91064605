//! One PostgreSQL transaction over the bridge's tables, driven from a blocking thread.
//!
//! The bridge's rules run as synchronous closures inside a transaction (that is how redb
//! works), so the PostgreSQL side runs them the same way, off the async workers (writes on
//! the writer thread, reads on tokio's blocking pool): each statement waits on the async
//! client through the runtime's handle.
//!
//! Isolation. A write transaction first takes one transaction-scoped advisory lock, so the
//! bridge's writes are serialized across every replica on the database, as redb's single
//! writer serializes them in one process: a rule that reads a request and advances it can
//! never interleave with another replica doing the same, and no retry loop is needed. Reads
//! run in `REPEATABLE READ READ ONLY` snapshots and never wait for writers.

use std::ops::Bound;

use deadpool_postgres::Object;
use tokio::runtime::Handle;

use super::table_error::TableError;

/// The advisory lock every write transaction holds (an arbitrary, fixed number).
pub(crate) const WRITE_LOCK: i64 = 0x5a7c_0517;

fn pg_err(table: &str, e: impl std::fmt::Display) -> TableError {
    TableError(format!("postgres, table {table}: {e}"))
}

/// A row's key (sorted form) and value.
pub type KeyValue = (Vec<u8>, Vec<u8>);

/// An open transaction on one pooled connection.
pub struct PgTxn {
    client: Object,
    rt: Handle,
    open: bool,
}

impl PgTxn {
    /// Begins a write transaction, holding the write lock.
    pub fn begin_write(client: Object, rt: Handle) -> Result<PgTxn, TableError> {
        // Open from the first statement: if BEGIN half-succeeds, Drop rolls it back.
        let txn = PgTxn {
            client,
            rt,
            open: true,
        };
        txn.batch(&format!(
            "BEGIN ISOLATION LEVEL READ COMMITTED; SELECT pg_advisory_xact_lock({WRITE_LOCK})"
        ))?;
        Ok(txn)
    }

    /// Begins a read-only snapshot.
    pub fn begin_read(client: Object, rt: Handle) -> Result<PgTxn, TableError> {
        // Open from the first statement: if BEGIN half-succeeds, Drop rolls it back.
        let txn = PgTxn {
            client,
            rt,
            open: true,
        };
        txn.batch("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")?;
        Ok(txn)
    }

    pub(crate) fn batch(&self, sql: &str) -> Result<(), TableError> {
        self.rt
            .block_on(self.client.batch_execute(sql))
            .map_err(|e| TableError(format!("postgres: {e}")))
    }

    /// Commits; durable when it returns.
    pub fn commit(mut self) -> Result<(), TableError> {
        self.open = false;
        self.batch("COMMIT")
    }

    /// Undoes everything.
    pub fn rollback(mut self) -> Result<(), TableError> {
        self.open = false;
        self.batch("ROLLBACK")
    }

    fn rows(
        &self,
        table: &str,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>, TableError> {
        self.rt.block_on(async {
            let statement = self
                .client
                .prepare_cached(sql)
                .await
                .map_err(|e| pg_err(table, e))?;
            self.client
                .query(&statement, params)
                .await
                .map_err(|e| pg_err(table, e))
        })
    }

    fn first_value(
        &self,
        table: &str,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Option<Vec<u8>>, TableError> {
        let rows = self.rows(table, sql, params)?;
        rows.first()
            .map(|r| r.try_get::<_, Option<Vec<u8>>>(0))
            .transpose()
            .map(Option::flatten)
            .map_err(|e| pg_err(table, e))
    }

    /// The value at `key` in `table`.
    pub fn get(&self, table: &str, key: &[u8]) -> Result<Option<Vec<u8>>, TableError> {
        self.first_value(
            table,
            "SELECT v FROM kv WHERE tbl = $1 AND k = $2",
            &[&table, &key],
        )
    }

    /// Sets `key` to `value`; returns the value it replaced.
    pub fn put(
        &self,
        table: &str,
        key: &[u8],
        value: &[u8],
    ) -> Result<Option<Vec<u8>>, TableError> {
        self.first_value(
            table,
            "WITH old AS (SELECT v FROM kv WHERE tbl = $1 AND k = $2)
             INSERT INTO kv (tbl, k, v) VALUES ($1, $2, $3)
             ON CONFLICT (tbl, k) DO UPDATE SET v = excluded.v
             RETURNING (SELECT v FROM old)",
            &[&table, &key, &value],
        )
    }

    /// Removes `key`; returns the value it held.
    pub fn delete(&self, table: &str, key: &[u8]) -> Result<Option<Vec<u8>>, TableError> {
        self.first_value(
            table,
            "DELETE FROM kv WHERE tbl = $1 AND k = $2 RETURNING v",
            &[&table, &key],
        )
    }

    /// The rows of `table` between the bounds, in key order.
    pub fn scan(
        &self,
        table: &str,
        lower: Bound<Vec<u8>>,
        upper: Bound<Vec<u8>>,
    ) -> Result<Vec<KeyValue>, TableError> {
        let mut sql = String::from("SELECT k, v FROM kv WHERE tbl = $1");
        let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = vec![&table];
        let (lo, hi);
        match &lower {
            Bound::Included(k) | Bound::Excluded(k) => {
                lo = k.as_slice();
                params.push(&lo);
                let op = if matches!(lower, Bound::Included(_)) {
                    ">="
                } else {
                    ">"
                };
                sql.push_str(&format!(" AND k {op} ${}", params.len()));
            }
            Bound::Unbounded => {}
        }
        match &upper {
            Bound::Included(k) | Bound::Excluded(k) => {
                hi = k.as_slice();
                params.push(&hi);
                let op = if matches!(upper, Bound::Included(_)) {
                    "<="
                } else {
                    "<"
                };
                sql.push_str(&format!(" AND k {op} ${}", params.len()));
            }
            Bound::Unbounded => {}
        }
        sql.push_str(" ORDER BY k");
        let rows = self.rows(table, &sql, &params)?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect::<Result<_, tokio_postgres::Error>>()
            .map_err(|e| pg_err(table, e))
    }
}

impl Drop for PgTxn {
    /// A transaction left open (its rule failed half-way, or panicked) is rolled back before
    /// its connection goes back to the pool.
    fn drop(&mut self) {
        if self.open {
            let _ = self.rt.block_on(self.client.batch_execute("ROLLBACK"));
        }
    }
}
