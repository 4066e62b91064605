//! A user's cancel of a signing request, as it arrives over the link: recorded durably, so
//! the request is never signed afterwards, however often the ground asks. A large spend's
//! hold (see [`crate::decision`]) exists for this: the user has until its release to cancel.
//!
//! A cancel that comes after the satellite signed is answered
//! [`CancelOutcome::AlreadySigned`]: the user learns it was too late, and the record of the
//! cancel still stands.

use redb::ReadableTable;

use crate::daemon::Cosigner;
use crate::decision::RequestId;
use crate::protocol::{Cancel, CancelOutcome};
use crate::state::{self, db_err, AuditEntry, StateError, CANCELLED, LEDGER, WALLETS};
use crate::wallet::WalletId;

impl Cosigner {
    /// Records the cancel of `c.request_id` at `now`.
    pub(crate) fn cancel(&self, c: &Cancel, now: u64) -> Result<CancelOutcome, StateError> {
        let txn = self.begin()?;
        let registered = txn
            .open_table(WALLETS)
            .map_err(db_err)?
            .get(&c.wallet_id.0)
            .map_err(db_err)?
            .is_some();
        let outcome = if !registered {
            CancelOutcome::UnknownWallet
        } else {
            txn.open_table(CANCELLED)
                .map_err(db_err)?
                .insert(&c.request_id.0, now)
                .map_err(db_err)?;
            if signed(&txn, &c.wallet_id, &c.request_id)? {
                CancelOutcome::AlreadySigned
            } else {
                CancelOutcome::Cancelled
            }
        };
        let result = match outcome {
            CancelOutcome::Cancelled => "cancelled",
            CancelOutcome::AlreadySigned => "already_signed",
            CancelOutcome::UnknownWallet => "unknown_wallet",
        };
        state::audit(
            &txn,
            &AuditEntry {
                at: now,
                action: "cancel".into(),
                wallet_id: Some(c.wallet_id),
                request_id: Some(c.request_id),
                outcome: result.into(),
                detail: String::new(),
            },
        )?;
        txn.commit().map_err(db_err)?;
        tracing::info!(request = %c.request_id, outcome = result, "cancel");
        Ok(outcome)
    }
}

/// Whether the wallet's ledger holds a signature for `request`.
fn signed(
    txn: &redb::WriteTransaction,
    wallet: &WalletId,
    request: &RequestId,
) -> Result<bool, StateError> {
    let table = txn.open_table(LEDGER).map_err(db_err)?;
    let start = state::ledger_key(wallet, 0, &RequestId([0; 16]));
    let end = state::ledger_key(wallet, u64::MAX, &RequestId([0xff; 16]));
    for row in table.range::<&[u8; 40]>(&start..=&end).map_err(db_err)? {
        let (k, _) = row.map_err(db_err)?;
        if k.value()[24..] == request.0 {
            return Ok(true);
        }
    }
    Ok(false)
}
