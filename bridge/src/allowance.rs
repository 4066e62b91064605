//! Rolling-window allowances kept in the database: how many times something may happen
//! per key within a window (registrations per inbox, per client address and in all;
//! changes per wallet; satellite keys per client and in all).
//!
//! Each key holds the times it was used within its window. Taking several allowances is
//! all or nothing: when one is used up, none is taken, and the caller learns which one and
//! when it frees up. Runs inside the caller's write transaction, so the count and the
//! action it allows commit together.

use crate::store::tables::{ReadableTable, Table};

use crate::state::{db_err, from_bytes, to_bytes};
use crate::store::StoreError;

/// One allowance: at most `max` uses of `key` per `window_secs`.
#[derive(Debug, Clone, Copy)]
pub struct Allowance {
    /// What is counted (a hash of the inbox, client or wallet).
    pub key: [u8; 32],
    /// Uses allowed within the window.
    pub max: u32,
    /// The window, seconds.
    pub window_secs: u64,
    /// What a refusal says is used up, e.g. "registrations for this email address".
    pub what: &'static str,
}

/// An allowance that is used up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsedUp {
    /// Its `what`.
    pub what: &'static str,
    /// When its oldest use leaves the window (unix seconds).
    pub frees_at: u64,
}

/// Takes one use of every allowance at `now`, or none of them.
pub fn take(
    table: &mut Table<'_, &'static [u8; 32], &'static [u8]>,
    allowances: &[Allowance],
    now: u64,
) -> Result<Result<(), UsedUp>, StoreError> {
    let mut updated = Vec::with_capacity(allowances.len());
    for a in allowances {
        let mut times: Vec<u64> = match table.get(&a.key).map_err(db_err)? {
            Some(v) => from_bytes(v.value())?,
            None => Vec::new(),
        };
        times.retain(|t| t + a.window_secs > now);
        if times.len() >= a.max as usize {
            let oldest = times.iter().min().copied().unwrap_or(now);
            return Ok(Err(UsedUp {
                what: a.what,
                frees_at: oldest + a.window_secs,
            }));
        }
        times.push(now);
        updated.push((a.key, times));
    }
    for (key, times) in updated {
        table
            .insert(&key, to_bytes(&times).as_slice())
            .map_err(db_err)?;
    }
    Ok(Ok(()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tables::TableDefinition;

    const T: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("t");

    #[tokio::test]
    async fn all_or_nothing_within_the_window() {
        let dir = tempfile::tempdir().expect("dir");
        let store = crate::store::Store::open(&dir.path().join("a.redb")).expect("db");
        store
            .write(|txn| {
                let mut t = txn.open_table(T)?;
                all_or_nothing(&mut t);
                Ok(())
            })
            .await
            .expect("write");
    }

    fn all_or_nothing(t: &mut Table<'_, &'static [u8; 32], &'static [u8]>) {
        let one = |key: u8, max| Allowance {
            key: [key; 32],
            max,
            window_secs: 100,
            what: if key == 1 { "one" } else { "two" },
        };
        let both = [one(1, 2), one(2, 1)];
        assert_eq!(take(t, &both, 1000).expect("db"), Ok(()));
        // The second is used up: nothing is taken from the first either.
        let refused = take(t, &both, 1010).expect("db");
        assert_eq!(
            refused,
            Err(UsedUp {
                what: "two",
                frees_at: 1100
            })
        );
        assert_eq!(take(t, &[one(1, 2)], 1020).expect("db"), Ok(()));
        assert!(take(t, &[one(1, 2)], 1030).expect("db").is_err());
        // Out of the window, uses come back.
        assert_eq!(take(t, &both, 1100).expect("db"), Ok(()));
    }
}
