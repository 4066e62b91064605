//! Where the cosigner-pool mailbox keeps its slots: one interface, [`MailboxRows`], with two
//! backends, the bridge's redb store ([`Store`], the embedded default) and PostgreSQL
//! ([`crate::postgres::PgStore`]). Each operation is one transaction: a put checks the
//! quota and replaces the slot atomically, so two bridges on one database never overfill
//! it, and each returns only once durable.

use futures::future::BoxFuture;

use crate::store::{MailboxEntry, PutOutcome, Store, StoreError};

/// A mailbox backend.
pub trait MailboxRows: Send + Sync {
    /// Stores `message` in slot `key` until `expires_at_ms`, replacing what was there,
    /// unless the mailbox would then hold more than `max_total_bytes` of messages.
    fn put(
        &self,
        key: [u8; 32],
        expires_at_ms: u64,
        message: String,
        max_total_bytes: u64,
    ) -> BoxFuture<'_, Result<PutOutcome, StoreError>>;
    /// Slot `key`'s entry, expired or not.
    fn get(&self, key: [u8; 32]) -> BoxFuture<'_, Result<Option<MailboxEntry>, StoreError>>;
    /// Empties slot `key`; returns the expiry of the entry it held.
    fn delete(&self, key: [u8; 32]) -> BoxFuture<'_, Result<Option<u64>, StoreError>>;
    /// Removes every entry that expired at or before `now_ms`; returns how many.
    fn purge_expired(&self, now_ms: u64) -> BoxFuture<'_, Result<usize, StoreError>>;
    /// Message bytes held (what the quota counts).
    fn held_bytes(&self) -> BoxFuture<'_, Result<u64, StoreError>>;
}

impl MailboxRows for Store {
    fn put(
        &self,
        key: [u8; 32],
        expires_at_ms: u64,
        message: String,
        max_total_bytes: u64,
    ) -> BoxFuture<'_, Result<PutOutcome, StoreError>> {
        Box::pin(self.mailbox_put(key, expires_at_ms, message, max_total_bytes))
    }
    fn get(&self, key: [u8; 32]) -> BoxFuture<'_, Result<Option<MailboxEntry>, StoreError>> {
        Box::pin(self.mailbox_get(key))
    }
    fn delete(&self, key: [u8; 32]) -> BoxFuture<'_, Result<Option<u64>, StoreError>> {
        Box::pin(self.mailbox_delete(key))
    }
    fn purge_expired(&self, now_ms: u64) -> BoxFuture<'_, Result<usize, StoreError>> {
        Box::pin(self.mailbox_purge_expired(now_ms))
    }
    fn held_bytes(&self) -> BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(self.mailbox_bytes())
    }
}
