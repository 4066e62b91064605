//! What the bridge has seen the satellite sign and allow, per wallet: the ground's copy of
//! the history the satellite's rules read (velocity, the rolling limits, the change cap,
//! allowlist destinations that wait for their delay).
//!
//! A dry run (`request.check`) judges a spend with the same pure check as the satellite
//! (`satcosign_cosigner::decision::check_policy`), so with this copy it reports what the
//! satellite would refuse, with the same figures, instead of the owner learning it a pass
//! later.
//! The copy is written from the satellite's own answers: a spend counts from the moment its
//! signature came down (a little after the satellite signed it, so the ground errs on the
//! strict side), and an allowlist addition from the moment the satellite applied it. The
//! satellite's ledger stays the word that counts.
//!
//! Rows are only written for spends that the wallet's owner confirmed and the satellite
//! signed, and for confirmed policy changes: a stranger cannot grow them.

use std::collections::BTreeMap;

use satcosign_cosigner::decision::{LedgerEntry, RequestId};
use satcosign_cosigner::policy::{Policy, PolicyState};
use satcosign_cosigner::wallet::WalletId;

use crate::service::{Service, ServiceError};
use crate::state::{db_err, from_bytes, to_bytes};
use crate::store::tables::{ReadableTable, TableDefinition, WriteTransaction};
use crate::store::StoreError;

/// Wallet id, signing time (big-endian) and request id -> the spend's [`LedgerEntry`].
pub const SIGNED_SPENDS: TableDefinition<&[u8; 40], &[u8]> = TableDefinition::new("signed_spends");

/// Wallet id -> when each allowlist destination added under a delay may first be paid.
pub const ALLOWLIST_SINCE: TableDefinition<&[u8; 16], &[u8]> =
    TableDefinition::new("allowlist_since");

/// Creates the tables.
pub fn create_tables(txn: &WriteTransaction) -> Result<(), crate::store::tables::TableError> {
    txn.open_table(SIGNED_SPENDS)?;
    txn.open_table(ALLOWLIST_SINCE)?;
    Ok(())
}

fn key(wallet: &WalletId, at: u64, request: &RequestId) -> [u8; 40] {
    let mut k = [0u8; 40];
    k[..16].copy_from_slice(&wallet.0);
    k[16..24].copy_from_slice(&at.to_be_bytes());
    k[24..].copy_from_slice(&request.0);
    k
}

/// Inside a write transaction: the satellite signed `entry` for `wallet`; a fee bump's
/// `replaces` no longer counts (the satellite credits it back the same way).
pub fn record_signed(
    txn: &WriteTransaction,
    wallet: &WalletId,
    entry: &LedgerEntry,
    replaces: Option<RequestId>,
) -> Result<(), StoreError> {
    let mut t = txn.open_table(SIGNED_SPENDS).map_err(db_err)?;
    if let Some(old) = replaces {
        let (lo, hi) = (
            key(wallet, 0, &RequestId([0; 16])),
            key(wallet, u64::MAX, &RequestId([0xff; 16])),
        );
        let mut stale = Vec::new();
        for row in t.range::<&[u8; 40]>(&lo..=&hi).map_err(db_err)? {
            let (k, _) = row.map_err(db_err)?;
            let k = *k.value();
            if k[24..] == old.0 {
                stale.push(k);
            }
        }
        for k in stale {
            t.remove(&k).map_err(db_err)?;
        }
    }
    t.insert(
        &key(wallet, entry.at, &entry.request_id),
        to_bytes(entry).as_slice(),
    )
    .map_err(db_err)?;
    Ok(())
}

/// Inside a write transaction: the satellite applied `new` at `now` over `in_force`; the
/// destinations it added under `in_force`'s allowlist delay wait from now, as there.
pub fn record_policy_applied(
    txn: &WriteTransaction,
    wallet: &WalletId,
    in_force: &Policy,
    new: &Policy,
    now: u64,
) -> Result<(), StoreError> {
    let mut t = txn.open_table(ALLOWLIST_SINCE).map_err(db_err)?;
    let since = match t.get(&wallet.0).map_err(db_err)? {
        Some(v) => from_bytes::<BTreeMap<Vec<u8>, u64>>(v.value())?,
        None => BTreeMap::new(),
    };
    // The satellite's own bookkeeping, replayed: the same function decides the same way.
    let mut mirror = PolicyState {
        current: in_force.clone(),
        pending: None,
        allowlist_since: since,
    };
    mirror.update(new.clone(), now, 0);
    if mirror.allowlist_since.is_empty() {
        t.remove(&wallet.0).map_err(db_err)?;
    } else {
        t.insert(&wallet.0, to_bytes(&mirror.allowlist_since).as_slice())
            .map_err(db_err)?;
    }
    Ok(())
}

/// What the ground knows of a wallet's history, owned (see [`SatelliteHistory::view`]).
#[derive(Debug, Clone, Default)]
pub struct SatelliteHistory {
    /// Spends signed within the window the policy's rules read.
    pub ledger: Vec<LedgerEntry>,
    /// Allowlist destinations that wait for their delay.
    pub allowlist_since: BTreeMap<Vec<u8>, u64>,
}

impl SatelliteHistory {
    /// As the pure decision reads it.
    pub fn view(&self) -> satcosign_cosigner::decision::History<'_> {
        satcosign_cosigner::decision::History {
            ledger: &self.ledger,
            allowlist_since: &self.allowlist_since,
        }
    }
}

impl Service {
    /// Wallet `wallet`'s history as far as `policy`'s rules read back from `now`.
    pub(crate) async fn satellite_history(
        &self,
        wallet: WalletId,
        policy: &Policy,
        now: u64,
    ) -> Result<SatelliteHistory, ServiceError> {
        let window = policy.period_secs.max(policy.min_secs_between_signatures);
        let from = now.saturating_sub(window);
        Ok(self
            .store
            .read(move |txn| {
                let t = txn.open_table(SIGNED_SPENDS).map_err(db_err)?;
                let (lo, hi) = (
                    key(&wallet, from, &RequestId([0; 16])),
                    key(&wallet, u64::MAX, &RequestId([0xff; 16])),
                );
                let mut ledger = Vec::new();
                for row in t.range::<&[u8; 40]>(&lo..=&hi).map_err(db_err)? {
                    let (_, v) = row.map_err(db_err)?;
                    ledger.push(from_bytes::<LedgerEntry>(v.value())?);
                }
                let t = txn.open_table(ALLOWLIST_SINCE).map_err(db_err)?;
                let allowlist_since = match t.get(&wallet.0).map_err(db_err)? {
                    Some(v) => from_bytes(v.value())?,
                    None => BTreeMap::new(),
                };
                Ok(SatelliteHistory {
                    ledger,
                    allowlist_since,
                })
            })
            .await?)
    }
}
