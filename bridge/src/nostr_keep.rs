//! Answers that outlast Electrum's window. Electrum's `psbt_nostr` asks only for events of
//! the last 24 hours (its `KEEP_DELAY`) and ignores older ones, so an answer published while
//! the wallet was closed for a day would be lost to it. The bridge keeps every answer to a
//! Nostr request available to its wallet until the wallet has fetched it, its transaction is
//! seen on chain, or [`KEEP_FOR_SECS`] have passed.
//!
//! Keeping it available means replacing it, shortly before it leaves Electrum's window, by a
//! fresh copy (the same content, encrypted again, a new time) and deleting the old copy in
//! the same transaction: a wallet that connects at any moment finds exactly one copy. Once a
//! copy has been sent to a subscription of the wallet's key, no other is made: Electrum
//! remembers the events it has shown by id, and a fresh copy, with a new id, would show the
//! user the transaction twice.
//!
//! The table [`NOSTR_KEPT`] holds, per request, the copy on the relay now; the sweep runs
//! every [`SWEEP_EVERY`] and after a restart, so a kill between two copies loses nothing (the
//! swap is one transaction).

use std::time::Duration;

use crate::store::tables::{ReadableTable, TableDefinition, WriteTransaction};
use nostr::Event;

use crate::nostr_cosigner::NostrCosigner;
use crate::nostr_relay::{NostrRelay, NOSTR_EVENTS};
use crate::service::{Service, ServiceError};
use crate::store::StoreError;
use crate::watch::ChainStatus;
use satcosign_cosigner::decision::RequestId;

/// Request id -> the answer's copy on the relay now ([`Kept`]).
pub const NOSTR_KEPT: TableDefinition<&[u8; 16], &[u8]> = TableDefinition::new("nostr_kept");

/// How long an answer is kept for a wallet that has not fetched it.
pub const KEEP_FOR_SECS: u64 = 7 * 24 * 3600;
/// A copy this old is replaced: Electrum ignores events older than 24 hours, and the sweep
/// runs every [`SWEEP_EVERY`].
pub const REFRESH_AFTER_SECS: u64 = 22 * 3600;
/// How often kept answers are looked at.
pub const SWEEP_EVERY: Duration = Duration::from_secs(600);

fn db_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Database(e.to_string())
}

/// The copy of an answer on the relay now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kept {
    /// Its event id.
    pub event: [u8; 32],
    /// When it was made, unix seconds (its `created_at`).
    pub created: u64,
    /// When the first copy was made.
    pub first: u64,
    /// Whether a copy was sent to a subscription of the wallet's key.
    pub delivered: bool,
}

impl Kept {
    fn to_bytes(self) -> [u8; 49] {
        let mut out = [0u8; 49];
        out[..32].copy_from_slice(&self.event);
        out[32..40].copy_from_slice(&self.created.to_be_bytes());
        out[40..48].copy_from_slice(&self.first.to_be_bytes());
        out[48] = u8::from(self.delivered);
        out
    }

    fn from_bytes(b: &[u8]) -> Option<Kept> {
        let b: &[u8; 49] = b.try_into().ok()?;
        Some(Kept {
            event: b[..32].try_into().ok()?,
            created: u64::from_be_bytes(b[32..40].try_into().ok()?),
            first: u64::from_be_bytes(b[40..48].try_into().ok()?),
            delivered: b[48] != 0,
        })
    }
}

/// Starts keeping `answer` to request `id`, inside the transaction that stores it.
pub fn keep_in(txn: &WriteTransaction, id: RequestId, answer: &Event) -> Result<(), StoreError> {
    let created = answer.created_at.as_secs();
    let kept = Kept {
        event: answer.id.to_bytes(),
        created,
        first: created,
        delivered: false,
    };
    txn.open_table(NOSTR_KEPT)
        .map_err(db_err)?
        .insert(&id.0, kept.to_bytes().as_slice())
        .map_err(db_err)?;
    Ok(())
}

/// Every kept answer.
pub async fn all(service: &Service) -> Result<Vec<(RequestId, Kept)>, StoreError> {
    service
        .store
        .read(|txn| {
            let t = txn.open_table(NOSTR_KEPT).map_err(db_err)?;
            let mut out = Vec::new();
            for row in t.iter().map_err(db_err)? {
                let (k, v) = row.map_err(db_err)?;
                if let Some(kept) = Kept::from_bytes(v.value()) {
                    out.push((RequestId(*k.value()), kept));
                }
            }
            Ok(out)
        })
        .await
}

/// Records that the copy `event` of request `id`'s answer reached the wallet.
pub async fn mark_delivered(
    service: &Service,
    id: RequestId,
    event: [u8; 32],
) -> Result<(), StoreError> {
    service
        .store
        .write(move |txn| {
            let mut t = txn.open_table(NOSTR_KEPT).map_err(db_err)?;
            let kept = t
                .get(&id.0)
                .map_err(db_err)?
                .and_then(|v| Kept::from_bytes(v.value()));
            if let Some(mut kept) = kept.filter(|k| k.event == event && !k.delivered) {
                kept.delivered = true;
                t.insert(&id.0, kept.to_bytes().as_slice())
                    .map_err(db_err)?;
            }
            Ok(())
        })
        .await
}

/// What a sweep did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Sweep {
    /// Copies replaced by fresh ones.
    pub refreshed: usize,
    /// Answers no longer kept (fetched, on chain, or too old).
    pub released: usize,
}

/// What becomes of one kept answer at `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    /// Nothing yet.
    Wait,
    /// A fresh copy replaces this one.
    Refresh,
    /// No longer kept: the wallet has it, its transaction is on chain, or it is too old.
    Release,
}

/// The rule, in one place.
fn fate(kept: &Kept, on_chain: bool, now: u64) -> Fate {
    if kept.delivered || on_chain || now >= kept.first.saturating_add(KEEP_FOR_SECS) {
        Fate::Release
    } else if now >= kept.created.saturating_add(REFRESH_AFTER_SECS) {
        Fate::Refresh
    } else {
        Fate::Wait
    }
}

/// Looks at every kept answer once: replaces the copies about to leave Electrum's window,
/// releases those no longer needed.
pub async fn sweep(cosigner: &NostrCosigner, service: &Service) -> Result<Sweep, ServiceError> {
    let now = crate::service::unix_now();
    let mut done = Sweep::default();
    for (id, kept) in all(service).await? {
        let on_chain = crate::watch::of(service, id).await?.is_some_and(|w| {
            matches!(
                w.status,
                ChainStatus::Mempool | ChainStatus::Confirmed { .. }
            )
        });
        match fate(&kept, on_chain, now) {
            Fate::Wait => {}
            Fate::Release => {
                service
                    .store
                    .write(move |txn| {
                        txn.open_table(NOSTR_KEPT)
                            .map_err(db_err)?
                            .remove(&id.0)
                            .map_err(db_err)?;
                        Ok(())
                    })
                    .await?;
                cosigner.forget_kept(&kept.event);
                done.released += 1;
            }
            Fate::Refresh => {
                let r = service.request(id).await?;
                let Some(fresh) = cosigner.reply_for(&r).await? else {
                    continue;
                };
                let stored = fresh.clone();
                let old = kept.event;
                service
                    .store
                    .write(move |txn| {
                        txn.open_table(NOSTR_EVENTS)
                            .map_err(db_err)?
                            .remove(&old)
                            .map_err(db_err)?;
                        NostrRelay::store_in(txn, &stored)?;
                        let next = Kept {
                            event: stored.id.to_bytes(),
                            created: stored.created_at.as_secs(),
                            ..kept
                        };
                        txn.open_table(NOSTR_KEPT)
                            .map_err(db_err)?
                            .insert(&id.0, next.to_bytes().as_slice())
                            .map_err(db_err)?;
                        Ok(())
                    })
                    .await?;
                tracing::info!(request = %id, old = %hex::encode(old), new = %fresh.id, "an answer not yet fetched was renewed for Electrum's 24-hour window");
                cosigner.replaced(old, id, fresh);
                done.refreshed += 1;
            }
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_is_renewed_until_fetched_on_chain_or_a_week_old() {
        let kept = Kept {
            event: [1; 32],
            created: 1_000_000,
            first: 1_000_000,
            delivered: false,
        };
        assert_eq!(Kept::from_bytes(&kept.to_bytes()), Some(kept));
        assert_eq!(fate(&kept, false, 1_000_000 + 3600), Fate::Wait);
        assert_eq!(
            fate(&kept, false, 1_000_000 + REFRESH_AFTER_SECS),
            Fate::Refresh
        );
        assert_eq!(fate(&kept, true, 1_000_000 + 3600), Fate::Release);
        let fetched = Kept {
            delivered: true,
            ..kept
        };
        assert_eq!(
            fate(&fetched, false, 1_000_000 + REFRESH_AFTER_SECS),
            Fate::Release
        );
        let renewed = Kept {
            created: 1_000_000 + 6 * 86_400,
            ..kept
        };
        assert_eq!(
            fate(&renewed, false, 1_000_000 + KEEP_FOR_SECS),
            Fate::Release
        );
        // Renewed copies are never older than Electrum's window at a sweep.
        assert!(REFRESH_AFTER_SECS + SWEEP_EVERY.as_secs() < 24 * 3600);
    }
}
