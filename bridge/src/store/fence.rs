//! The ground lease's fencing token. On PostgreSQL every replica serves clients, but one at
//! a time drives the radio link (see [`crate::ground`]); each time a replica takes the
//! lease it raises the token kept here, and every write of the link's state checks that the
//! token is still its own. A replica that lost the lease, however late it notices, can no
//! longer write: its writes fail with [`StoreError::Fenced`].

use std::sync::atomic::{AtomicU64, Ordering};

use super::tables::{ReadableTable, TableDefinition};
use super::{StoreError, WriteTransaction};

/// `"token"` -> the fencing token of the last replica that took the ground lease.
const GROUND_LEASE: TableDefinition<&str, u64> = TableDefinition::new("ground_lease");

/// The token this replica holds the lease under; 0 while it does not.
#[derive(Debug, Default)]
pub struct Fence(AtomicU64);

impl Fence {
    /// The token held, if any.
    pub fn token(&self) -> Option<u64> {
        match self.0.load(Ordering::SeqCst) {
            0 => None,
            t => Some(t),
        }
    }

    /// Holds `token` (from [`raise`]), or nothing.
    pub fn set(&self, token: Option<u64>) {
        self.0.store(token.unwrap_or(0), Ordering::SeqCst);
    }
}

/// Inside the write transaction that takes the lease: the next token, stored.
pub fn raise(txn: &WriteTransaction) -> Result<u64, StoreError> {
    let mut t = txn.open_table(GROUND_LEASE)?;
    let next = t.get("token")?.map_or(0, |g| g.value()) + 1;
    t.insert("token", next)?;
    Ok(next)
}

/// Inside a write of the link's state: refuses it unless `held` is the latest token.
pub fn check(txn: &WriteTransaction, held: Option<u64>) -> Result<(), StoreError> {
    let current = txn
        .open_table(GROUND_LEASE)?
        .get("token")?
        .map_or(0, |g| g.value());
    match held {
        Some(h) if h == current => Ok(()),
        _ => Err(StoreError::Fenced {
            held: held.unwrap_or(0),
            current,
        }),
    }
}
