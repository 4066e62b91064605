//! What the satellite has recorded, read back for operators and tests: a wallet's spend
//! ledger, its policy state (the policy in force, a loosening that waits, allowlist
//! destinations that wait for their delay) and the audit log. Nothing here writes.

use redb::ReadableTable as _;

use crate::daemon::Cosigner;
use crate::decision::LedgerEntry;
use crate::policy::PolicyState;
use crate::state::{
    self, db_err, from_bytes, AuditEntry, StateError, WalletRecord, AUDIT, WALLETS,
};
use crate::wallet::WalletId;

impl Cosigner {
    /// The wallet's ledger entries after `since` (for operators and tests).
    pub fn ledger(&self, wallet: &WalletId, since: u64) -> Result<Vec<LedgerEntry>, StateError> {
        let txn = self.begin()?;
        let entries = state::ledger_since(&txn, wallet, since)?;
        txn.abort().map_err(db_err)?;
        Ok(entries)
    }

    /// A wallet's policy state: the policy in force, a loosening that waits, and the
    /// allowlist destinations that wait for their delay (for operators and tests).
    pub fn policy_state(&self, wallet: &WalletId) -> Result<Option<PolicyState>, StateError> {
        let txn = self.begin_read()?;
        let table = txn.open_table(WALLETS).map_err(db_err)?;
        let record: Option<WalletRecord> = match table.get(&wallet.0).map_err(db_err)? {
            Some(v) => Some(from_bytes("wallets", v.value())?),
            None => None,
        };
        Ok(record.map(|r| r.policy))
    }

    /// The whole audit log, oldest first.
    pub fn audit_log(&self) -> Result<Vec<AuditEntry>, StateError> {
        let txn = self.begin_read()?;
        let table = txn.open_table(AUDIT).map_err(db_err)?;
        let mut out = Vec::new();
        for row in table.iter().map_err(db_err)? {
            let (_, v) = row.map_err(db_err)?;
            out.push(from_bytes("audit", v.value())?);
        }
        Ok(out)
    }
}
