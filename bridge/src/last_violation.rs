//! `wallet.last_violation`: the most recent refusal of a wallet's spend, read back as
//! Coldcard's "Last Violation" is, so a user can see why the satellite (or the bridge, which
//! refuses early what the satellite would) said no, with every rule broken and its figures.
//!
//! Only spends that passed the wallet's own checks are recorded (their inputs are the
//! wallet's and carry another of its keys' signatures): a stranger cannot write here. One
//! row per wallet, overwritten: the storage is bounded by the wallets.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use satcosign_cosigner::decision::RequestId;
use satcosign_cosigner::refusal::{Refusal, Violation};
use satcosign_cosigner::wallet::WalletId;

use crate::service::{unix_now, Service, ServiceError};
use crate::state::{db_err, from_bytes, to_bytes};
use crate::store::tables::{ReadableTable, TableDefinition, WriteTransaction};
use crate::store::StoreError;

/// Wallet id -> its last refusal.
pub const LAST_VIOLATIONS: TableDefinition<&[u8; 16], &[u8]> =
    TableDefinition::new("last_violations");

/// A refusal as kept.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Kept {
    at: u64,
    request_id: Option<RequestId>,
    /// `bridge` (refused at submit) or `satellite`.
    by: String,
    code: String,
    reason: String,
    violations: Vec<Kept1>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Kept1 {
    rule: String,
    limit: Option<u64>,
    used: Option<u64>,
    would_be: Option<u64>,
    output: Option<u64>,
    /// From when time lifts the violation, if it will.
    ready_at: Option<u64>,
}

impl From<Violation> for Kept1 {
    fn from(v: Violation) -> Kept1 {
        Kept1 {
            rule: v.rule.to_owned(),
            limit: v.limit,
            used: v.used,
            would_be: v.would_be,
            output: v.output.map(|o| o as u64),
            ready_at: v.ready_at,
        }
    }
}

/// Inside a write transaction: `refusal` (by `by`, of request `request_id` if it became
/// one) is now wallet `wallet_id`'s last.
pub fn record(
    txn: &WriteTransaction,
    wallet_id: WalletId,
    request_id: Option<RequestId>,
    by: &str,
    refusal: &Refusal,
    at: u64,
) -> Result<(), StoreError> {
    let kept = Kept {
        at,
        request_id,
        by: by.to_owned(),
        code: refusal.code().to_owned(),
        reason: refusal.to_string(),
        violations: refusal.violations().into_iter().map(Kept1::from).collect(),
    };
    txn.open_table(LAST_VIOLATIONS)
        .map_err(db_err)?
        .insert(&wallet_id.0, to_bytes(&kept).as_slice())
        .map_err(db_err)?;
    Ok(())
}

impl Service {
    /// Records that the bridge refused a spend of wallet `wallet_id` at submit.
    pub(crate) async fn note_refused_spend(&self, wallet_id: WalletId, refusal: &Refusal) {
        let refusal = refusal.clone();
        let now = unix_now();
        let written = self
            .store
            .write(move |txn| record(txn, wallet_id, None, "bridge", &refusal, now))
            .await;
        if let Err(e) = written {
            tracing::warn!(wallet = %wallet_id, error = %e, "cannot record a refused spend");
        }
    }

    /// `wallet.last_violation`: the wallet's most recent refusal, or null.
    pub async fn last_violation(&self, wallet_id: WalletId) -> Result<Value, ServiceError> {
        self.wallet_record(wallet_id).await?;
        let kept = self
            .store
            .read(move |txn| {
                let t = txn.open_table(LAST_VIOLATIONS).map_err(db_err)?;
                match t.get(&wallet_id.0).map_err(db_err)? {
                    Some(v) => Ok(Some(from_bytes::<Kept>(v.value())?)),
                    None => Ok(None),
                }
            })
            .await?;
        Ok(kept.map_or(Value::Null, |k| {
            json!({
                "at": k.at,
                "at_utc": crate::notice::format_utc(k.at),
                "request_id": k.request_id.map(|id| id.to_string()),
                "by": k.by,
                "code": k.code,
                "reason": k.reason,
                "violations": k.violations.iter().map(|v| json!({
                    "rule": v.rule,
                    "limit": v.limit,
                    "used": v.used,
                    "would_be": v.would_be,
                    "output": v.output,
                    "ready_at": v.ready_at,
                })).collect::<Vec<_>>(),
            })
        }))
    }
}
