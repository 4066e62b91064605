//! The ground lease on PostgreSQL (see [`crate::ground`]): which replica drives the link.
//!
//! The lease is a session-level advisory lock of the server's, held on a connection of its
//! own kept out of the pool. It goes when that connection does: a replica that was killed
//! frees it at once, and the server drops one it cannot reach within the lease (the
//! connection's TCP timeouts are set to it). The holder shows it is alive by a query on
//! that connection every quarter of the lease; a replica waiting for the lease that sees
//! the holder's session silent for a whole lease (a process frozen, whose kernel still
//! answers TCP) ends that session, and takes the lease. The holder stops driving when a
//! query of its own takes half the lease, before anyone could take over; and whoever takes
//! the lease raises the fencing token, so a holder that wakes late cannot write the link.

use std::time::Duration;

use super::{db_err, PgStore};
use crate::store::StoreError;

/// The advisory lock of the ground lease.
const GROUND_LOCK: i64 = 0x5a7c_0518;

type LeaseClient = deadpool_postgres::ClientWrapper;

impl PgStore {
    /// Takes the ground lease if no replica holds it: its fencing token, or `None`.
    pub async fn try_take_ground(&self, lease: Duration) -> Result<Option<u64>, StoreError> {
        let client = self.lease_connection(lease).await?;
        if !try_lock(&client).await? {
            return Ok(None);
        }
        self.took_ground(client).await.map(Some)
    }

    /// Waits while another replica holds the ground lease (ending the holder's session if
    /// it has been silent for a whole lease), takes it, and returns its fencing token.
    pub async fn take_ground(&self, lease: Duration) -> Result<u64, StoreError> {
        let client = self.lease_connection(lease).await?;
        loop {
            if try_lock(&client).await? {
                return self.took_ground(client).await;
            }
            end_silent_holder(&client, lease).await?;
            tokio::time::sleep(lease / 4).await;
        }
    }

    /// A connection of its own for the lease's lock, which the server drops within `lease`
    /// once it stops hearing from this replica.
    async fn lease_connection(&self, lease: Duration) -> Result<LeaseClient, StoreError> {
        let client = deadpool_postgres::Object::take(self.pool.get().await.map_err(db_err)?);
        let secs = lease.as_secs().max(2);
        client
            .batch_execute(&format!(
                "SET application_name = 'satcosign ground lease'; \
                 SET tcp_user_timeout = {ms}; SET tcp_keepalives_idle = {idle}; \
                 SET tcp_keepalives_interval = 1; SET tcp_keepalives_count = {count};",
                ms = lease.as_millis(),
                idle = secs / 2,
                count = secs / 2,
            ))
            .await
            .map_err(db_err)?;
        Ok(client)
    }

    /// Raises the fencing token now that `client` holds the lock, and keeps the lock.
    async fn took_ground(&self, client: LeaseClient) -> Result<u64, StoreError> {
        let token = self.write(crate::store::fence::raise).await?;
        *self.ground.lock().await = Some(client);
        Ok(token)
    }

    /// Returns once this replica can no longer be sure it holds the ground lease: the lock's
    /// connection was cut, or a query on it did not answer within half the lease. Meanwhile
    /// those queries, every quarter of the lease, show the others that it is alive.
    pub async fn ground_lost(&self, lease: Duration) {
        loop {
            tokio::time::sleep(lease / 4).await;
            let held = self.ground.lock().await;
            let Some(client) = held.as_ref() else { return };
            if client.is_closed() {
                return;
            }
            match tokio::time::timeout(lease / 2, client.simple_query("SELECT 1")).await {
                Ok(Ok(_)) => {}
                _ => return,
            }
        }
    }

    /// Lets the ground lease go (its connection is closed).
    pub async fn release_ground(&self) {
        self.ground.lock().await.take();
    }
}

async fn try_lock(client: &LeaseClient) -> Result<bool, StoreError> {
    Ok(client
        .query_one("SELECT pg_try_advisory_lock($1)", &[&GROUND_LOCK])
        .await
        .map_err(db_err)?
        .get(0))
}

/// Ends the session holding the lease on this database if it has sat idle for longer than
/// `lease`: its replica stopped showing that it is alive.
async fn end_silent_holder(client: &LeaseClient, lease: Duration) -> Result<(), StoreError> {
    let ended = client
        .query(
            "SELECT pg_terminate_backend(a.pid) FROM pg_locks l \
             JOIN pg_stat_activity a ON a.pid = l.pid \
             WHERE l.locktype = 'advisory' AND l.granted \
               AND l.classid = ($1::int8 >> 32)::oid AND l.objid = ($1::int8 & 4294967295)::oid \
               AND l.objsubid = 1 \
               AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
               AND a.state = 'idle' \
               AND now() - a.state_change > make_interval(secs => $2::float8)",
            &[&GROUND_LOCK, &lease.as_secs_f64()],
        )
        .await
        .map_err(db_err)?;
    if !ended.is_empty() {
        tracing::warn!(
            lease_secs = lease.as_secs_f64(),
            "the ground lease's holder was silent for a whole lease: its session was ended, \
             to take over"
        );
    }
    Ok(())
}
