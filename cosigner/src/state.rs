//! The cosigner's durable state in redb: registered wallets with their policies, the spend
//! ledger, the outpoints it signed (with the signed PSBTs), and an audit log of every
//! decision. Two-phase commit is on; every decision is one write transaction, so the
//! ledger debit and the outpoint record are on disk before a signature is released.

use redb::{ReadableTable, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};

use crate::decision::{Hold, LedgerEntry, RequestId};
use crate::policy::PolicyState;
use crate::wallet::WalletId;

/// wallet id -> [`WalletRecord`].
pub(crate) const WALLETS: TableDefinition<&[u8; 16], &[u8]> = TableDefinition::new("wallets");
/// wallet id (16) | at (8, BE) | request id (16) -> amount, sat.
pub(crate) const LEDGER: TableDefinition<&[u8; 40], u64> = TableDefinition::new("ledger");
/// txid (32) | vout (4, BE) -> [`OutpointRecord`].
pub(crate) const OUTPOINTS: TableDefinition<&[u8; 36], &[u8]> = TableDefinition::new("outpoints");
/// txid -> [`SignedRecord`].
pub(crate) const SIGNED: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("signed");
/// wallet key index -> the wallet registered with it: each key serves one wallet only.
pub(crate) const KEY_INDEXES: TableDefinition<u32, &[u8; 16]> = TableDefinition::new("key_indexes");
/// a registered wallet key's public key (33 bytes) -> its index: no wallet may hold
/// another wallet's satellite key among its members.
pub(crate) const WALLET_KEYS: TableDefinition<&[u8; 33], u32> = TableDefinition::new("wallet_keys");
/// Same key as [`LEDGER`] -> what that signature sent back to the wallet as change, sat.
pub(crate) const LEDGER_CHANGE: TableDefinition<&[u8; 40], u64> =
    TableDefinition::new("ledger_change");
/// request id -> its [`Hold`], from the first time a large spend reached the satellite.
pub(crate) const HOLDS: TableDefinition<&[u8; 16], &[u8]> = TableDefinition::new("holds");
/// request id -> when the user's cancel reached the satellite (unix seconds).
pub(crate) const CANCELLED: TableDefinition<&[u8; 16], u64> = TableDefinition::new("cancelled");
/// `format` -> the layout of this database's records ([`FORMAT`]).
pub(crate) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// The record layout this build writes: 2 has versioned policies with their guards (velocity,
/// change cap, allowlist delays, holds, lockdown). A database of another layout is refused
/// at open, never misread.
pub const FORMAT: u64 = 2;
/// sequence -> [`AuditEntry`].
pub(crate) const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");

/// A registered wallet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WalletRecord {
    /// The normalized multipath descriptor.
    pub descriptor: String,
    /// Its policy.
    pub policy: PolicyState,
    /// When it was registered, unix seconds.
    pub registered_at: u64,
    /// The index of its satellite key (see [`crate::keys`]).
    pub key_index: u32,
}

/// A transaction the cosigner signed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedRecord {
    /// The request that signed it.
    pub request_id: RequestId,
    /// The wallet.
    pub wallet_id: WalletId,
    /// The PSBT as released, with the satellite's signatures.
    pub psbt: Vec<u8>,
}

/// One decision, as kept in the audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// When, unix seconds.
    pub at: u64,
    /// What was asked: `register`, `policy`, `sign`.
    pub action: String,
    /// The wallet, if known.
    pub wallet_id: Option<WalletId>,
    /// The request, for signing.
    pub request_id: Option<RequestId>,
    /// `signed`, `retry`, `registered`, `applied`, `deferred`, or a refusal code.
    pub outcome: String,
    /// Human-readable detail (amounts, reasons). Never keys.
    pub detail: String,
}

/// A storage failure.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// redb failed.
    #[error("database: {0}")]
    Database(String),
    /// The database was written in another record layout.
    #[error("the database's records are in layout {found}; this build reads layout {expected}: keep the old build for it, or start a new database and register the wallets again")]
    Format {
        /// The layout found (1: before layouts were recorded).
        found: u64,
        /// The layout this build reads.
        expected: u64,
    },
    /// A stored record does not decode (corruption or a version mismatch).
    #[error("stored record in {table} does not decode: {reason}")]
    Corrupt {
        /// The table.
        table: &'static str,
        /// Why.
        reason: String,
    },
}

pub(crate) fn db_err(e: impl std::fmt::Display) -> StateError {
    StateError::Database(e.to_string())
}

pub(crate) fn to_bytes<T: Serialize>(v: &T) -> Vec<u8> {
    postcard::to_stdvec(v).unwrap_or_default()
}

pub(crate) fn from_bytes<'a, T: Deserialize<'a>>(
    table: &'static str,
    bytes: &'a [u8],
) -> Result<T, StateError> {
    postcard::from_bytes(bytes).map_err(|e| StateError::Corrupt {
        table,
        reason: e.to_string(),
    })
}

pub(crate) fn ledger_key(wallet: &WalletId, at: u64, request: &RequestId) -> [u8; 40] {
    let mut k = [0u8; 40];
    k[..16].copy_from_slice(&wallet.0);
    k[16..24].copy_from_slice(&at.to_be_bytes());
    k[24..].copy_from_slice(&request.0);
    k
}

pub(crate) fn outpoint_key(op: &bitcoin::OutPoint) -> [u8; 36] {
    use bitcoin::hashes::Hash as _;
    let mut k = [0u8; 36];
    k[..32].copy_from_slice(op.txid.as_byte_array());
    k[32..].copy_from_slice(&op.vout.to_be_bytes());
    k
}

/// Every ledger entry of `wallet` after `since` (unix seconds, exclusive).
pub(crate) fn ledger_since(
    txn: &WriteTransaction,
    wallet: &WalletId,
    since: u64,
) -> Result<Vec<LedgerEntry>, StateError> {
    let table = txn.open_table(LEDGER).map_err(db_err)?;
    let change = txn.open_table(LEDGER_CHANGE).map_err(db_err)?;
    let start = ledger_key(wallet, since.saturating_add(1), &RequestId([0; 16]));
    let end = ledger_key(wallet, u64::MAX, &RequestId([0xff; 16]));
    let mut out = Vec::new();
    for row in table.range::<&[u8; 40]>(&start..=&end).map_err(db_err)? {
        let (k, v) = row.map_err(db_err)?;
        let k = k.value();
        let mut at = [0u8; 8];
        at.copy_from_slice(&k[16..24]);
        let mut req = [0u8; 16];
        req.copy_from_slice(&k[24..]);
        let change_sat = change.get(k).map_err(db_err)?.map_or(0, |c| c.value());
        out.push(LedgerEntry {
            at: u64::from_be_bytes(at),
            amount_sat: v.value(),
            request_id: RequestId(req),
            change_sat,
        });
    }
    Ok(out)
}

/// Appends to the audit log.
pub(crate) fn audit(txn: &WriteTransaction, entry: &AuditEntry) -> Result<(), StateError> {
    let mut table = txn.open_table(AUDIT).map_err(db_err)?;
    let next = table
        .last()
        .map_err(db_err)?
        .map_or(0, |(k, _)| k.value() + 1);
    table
        .insert(next, to_bytes(entry).as_slice())
        .map_err(db_err)?;
    Ok(())
}

/// Records one signature's debit in the ledger.
pub(crate) fn debit(
    txn: &WriteTransaction,
    wallet: &WalletId,
    entry: &LedgerEntry,
) -> Result<(), StateError> {
    let key = ledger_key(wallet, entry.at, &entry.request_id);
    let mut ledger = txn.open_table(LEDGER).map_err(db_err)?;
    ledger.insert(&key, entry.amount_sat).map_err(db_err)?;
    let mut change = txn.open_table(LEDGER_CHANGE).map_err(db_err)?;
    change.insert(&key, entry.change_sat).map_err(db_err)?;
    Ok(())
}

/// Removes a debit (its transaction was replaced).
pub(crate) fn undo_debit(
    txn: &WriteTransaction,
    wallet: &WalletId,
    entry: &LedgerEntry,
) -> Result<(), StateError> {
    let key = ledger_key(wallet, entry.at, &entry.request_id);
    txn.open_table(LEDGER)
        .map_err(db_err)?
        .remove(&key)
        .map_err(db_err)?;
    txn.open_table(LEDGER_CHANGE)
        .map_err(db_err)?
        .remove(&key)
        .map_err(db_err)?;
    Ok(())
}

/// Request `id`'s hold, if one began.
pub(crate) fn hold(txn: &WriteTransaction, id: &RequestId) -> Result<Option<Hold>, StateError> {
    let table = txn.open_table(HOLDS).map_err(db_err)?;
    let v = table.get(&id.0).map_err(db_err)?;
    v.map(|v| from_bytes("holds", v.value())).transpose()
}

/// Whether the user cancelled request `id`.
pub(crate) fn cancelled(txn: &WriteTransaction, id: &RequestId) -> Result<bool, StateError> {
    let table = txn.open_table(CANCELLED).map_err(db_err)?;
    let v = table.get(&id.0).map_err(db_err)?;
    Ok(v.is_some())
}

/// Creates every table so readers never meet a missing one, and checks the database's
/// record layout (recording it in a new database).
pub(crate) fn create_tables(txn: &WriteTransaction) -> Result<(), StateError> {
    {
        let mut meta = txn.open_table(META).map_err(db_err)?;
        let found = meta.get("format").map_err(db_err)?.map(|v| v.value());
        match found {
            Some(FORMAT) => {}
            Some(found) => {
                return Err(StateError::Format {
                    found,
                    expected: FORMAT,
                })
            }
            None => {
                let wallets = txn.open_table(WALLETS).map_err(db_err)?;
                if wallets.first().map_err(db_err)?.is_some() {
                    return Err(StateError::Format {
                        found: 1,
                        expected: FORMAT,
                    });
                }
                meta.insert("format", FORMAT).map_err(db_err)?;
            }
        }
    }
    txn.open_table(LEDGER_CHANGE).map_err(db_err)?;
    txn.open_table(HOLDS).map_err(db_err)?;
    txn.open_table(CANCELLED).map_err(db_err)?;
    txn.open_table(WALLETS).map_err(db_err)?;
    txn.open_table(LEDGER).map_err(db_err)?;
    txn.open_table(OUTPOINTS).map_err(db_err)?;
    txn.open_table(SIGNED).map_err(db_err)?;
    txn.open_table(AUDIT).map_err(db_err)?;
    txn.open_table(KEY_INDEXES).map_err(db_err)?;
    txn.open_table(WALLET_KEYS).map_err(db_err)?;
    Ok(())
}
