//! The mailbox's rows in redb: slots (keyhash -> expiry and message), the expiry index the
//! sweep reads, and the byte total the quota counts; each operation runs inside the writer's
//! transaction ([`super::Store`]'s group commit) and keeps the three consistent.

use super::tables::{ReadableTable, TableDefinition, WriteTransaction};

use super::{db_err, StoreError};

/// Mailbox slots: keyhash -> expiry (unix ms, 8 bytes big-endian) followed by the message text.
pub(super) const MAILBOX: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("mailbox");
/// The mailbox's expiry index: expiry (8 bytes big-endian) then keyhash, so the sweep reads
/// only what has expired.
pub(super) const MAILBOX_EXPIRY: TableDefinition<&[u8; 40], ()> =
    TableDefinition::new("mailbox_expiry");
/// The mailbox's totals: `"bytes"` -> message bytes held (what the quota counts).
pub(super) const MAILBOX_TOTALS: TableDefinition<&str, u64> =
    TableDefinition::new("mailbox_totals");

/// What a mailbox put did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    /// The message is stored (and durable).
    Stored,
    /// The mailbox holds `held` bytes and this message would take it past its quota;
    /// nothing changed.
    Full {
        /// Message bytes held now.
        held: u64,
    },
}

/// A mailbox entry as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailboxEntry {
    /// When the entry stops being served, unix milliseconds.
    pub expires_at_ms: u64,
    /// The message text exactly as put.
    pub message: String,
}

pub(super) fn encode_entry(expires_at_ms: u64, message: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(8 + message.len());
    v.extend_from_slice(&expires_at_ms.to_be_bytes());
    v.extend_from_slice(message.as_bytes());
    v
}

pub(super) fn decode_entry(bytes: &[u8]) -> Result<MailboxEntry, StoreError> {
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

pub(super) fn expiry_key(expires_at_ms: u64, key: &[u8; 32]) -> [u8; 40] {
    let mut k = [0u8; 40];
    k[..8].copy_from_slice(&expires_at_ms.to_be_bytes());
    k[8..].copy_from_slice(key);
    k
}

pub(super) fn held_bytes(txn: &WriteTransaction) -> Result<u64, StoreError> {
    let t = txn.open_table(MAILBOX_TOTALS).map_err(db_err)?;
    let held = t.get("bytes").map_err(db_err)?.map_or(0, |v| v.value());
    Ok(held)
}

pub(super) fn set_held_bytes(txn: &WriteTransaction, bytes: u64) -> Result<(), StoreError> {
    let mut t = txn.open_table(MAILBOX_TOTALS).map_err(db_err)?;
    t.insert("bytes", bytes).map_err(db_err)?;
    Ok(())
}

/// Builds the expiry index and the byte total of a mailbox written before they existed.
pub(super) fn index_mailbox(txn: &WriteTransaction) -> Result<(), StoreError> {
    if txn
        .open_table(MAILBOX_TOTALS)
        .map_err(db_err)?
        .get("bytes")
        .map_err(db_err)?
        .is_some()
    {
        return Ok(());
    }
    let mut bytes = 0u64;
    let mut index = Vec::new();
    for row in txn
        .open_table(MAILBOX)
        .map_err(db_err)?
        .iter()
        .map_err(db_err)?
    {
        let (k, v) = row.map_err(db_err)?;
        let entry = decode_entry(v.value())?;
        bytes += entry.message.len() as u64;
        index.push(expiry_key(entry.expires_at_ms, k.value()));
    }
    let mut t = txn.open_table(MAILBOX_EXPIRY).map_err(db_err)?;
    for k in &index {
        t.insert(k, ()).map_err(db_err)?;
    }
    drop(t);
    set_held_bytes(txn, bytes)
}

/// Removes slot `key`'s entry and its index row; returns the entry.
pub(super) fn remove_entry(
    txn: &WriteTransaction,
    key: &[u8; 32],
) -> Result<Option<MailboxEntry>, StoreError> {
    let mut table = txn.open_table(MAILBOX).map_err(db_err)?;
    let old = match table.remove(key).map_err(db_err)? {
        Some(v) => decode_entry(v.value())?,
        None => return Ok(None),
    };
    drop(table);
    txn.open_table(MAILBOX_EXPIRY)
        .map_err(db_err)?
        .remove(&expiry_key(old.expires_at_ms, key))
        .map_err(db_err)?;
    Ok(Some(old))
}

pub(super) fn put_in(
    txn: &WriteTransaction,
    key: &[u8; 32],
    expires_at_ms: u64,
    message: &str,
    max_total_bytes: u64,
) -> Result<PutOutcome, StoreError> {
    let held = held_bytes(txn)?;
    let replaced = txn
        .open_table(MAILBOX)
        .map_err(db_err)?
        .get(key)
        .map_err(db_err)?
        .map(|v| v.value().len().saturating_sub(8) as u64)
        .unwrap_or(0);
    let after = held - replaced.min(held) + message.len() as u64;
    if after > max_total_bytes && after > held {
        return Ok(PutOutcome::Full { held });
    }
    remove_entry(txn, key)?;
    let value = encode_entry(expires_at_ms, message);
    txn.open_table(MAILBOX)
        .map_err(db_err)?
        .insert(key, value.as_slice())
        .map_err(db_err)?;
    txn.open_table(MAILBOX_EXPIRY)
        .map_err(db_err)?
        .insert(&expiry_key(expires_at_ms, key), ())
        .map_err(db_err)?;
    set_held_bytes(txn, after)?;
    Ok(PutOutcome::Stored)
}

pub(super) fn delete_in(txn: &WriteTransaction, key: &[u8; 32]) -> Result<Option<u64>, StoreError> {
    let Some(old) = remove_entry(txn, key)? else {
        return Ok(None);
    };
    let held = held_bytes(txn)?;
    set_held_bytes(txn, held.saturating_sub(old.message.len() as u64))?;
    Ok(Some(old.expires_at_ms))
}

/// Removes the entries that expired at or before `now_ms`, reading only those (through the
/// expiry index).
pub(super) fn purge_in(txn: &WriteTransaction, now_ms: u64) -> Result<usize, StoreError> {
    let expired: Vec<[u8; 32]> = {
        let index = txn.open_table(MAILBOX_EXPIRY).map_err(db_err)?;
        let upto = expiry_key(now_ms, &[0xff; 32]);
        let mut out = Vec::new();
        for row in index.range::<&[u8; 40]>(..=&upto).map_err(db_err)? {
            let (k, _) = row.map_err(db_err)?;
            let mut key = [0u8; 32];
            key.copy_from_slice(&k.value()[8..]);
            out.push(key);
        }
        out
    };
    for key in &expired {
        delete_in(txn, key)?;
    }
    Ok(expired.len())
}
