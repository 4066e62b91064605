//! What the link keeps across restarts, behind one trait: the outbox (messages not yet
//! acknowledged), the ids of messages already delivered (so a retransmission after a crash
//! is acknowledged, not delivered twice), the inbox the application reads, the next message
//! id, the counter reservation (so no nonce is reused) and the receive high-water mark (so
//! captured frames are stale after a restart). [`RedbStore`] is the real one; [`MemStore`]
//! keeps the same state in memory for simulations, and survives a simulated restart by
//! being shared.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

/// A storage failure.
#[derive(Debug, thiserror::Error)]
#[error("link store: {0}")]
pub struct StoreError(pub String);

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError(e.to_string())
}

/// The link's durable state.
pub trait LinkStore: Send + Sync + 'static {
    /// Stores a message to send; returns its id (ids only grow).
    fn enqueue(&self, payload: &[u8]) -> Result<u64, StoreError>;
    /// Every message not yet acknowledged, oldest first.
    fn outbox(&self) -> Result<Vec<(u64, Vec<u8>)>, StoreError>;
    /// Whether message `id` is still waiting for its acknowledgement (a point lookup: no
    /// payload is copied).
    fn is_queued(&self, id: u64) -> Result<bool, StoreError>;
    /// Forgets an acknowledged message.
    fn acknowledged(&self, id: u64) -> Result<(), StoreError>;
    /// Takes message `id`, never transmitted, out of the outbox and records that it was
    /// withdrawn, in one transaction: asked again after a crash, the answer is the same.
    fn withdraw(&self, id: u64) -> Result<(), StoreError>;
    /// Whether message `id` was withdrawn.
    fn was_withdrawn(&self, id: u64) -> Result<bool, StoreError>;
    /// Reserves `n` counters; returns the first. Durable before it returns.
    fn reserve_counters(&self, n: u64) -> Result<u64, StoreError>;
    /// Whether message `id` from the peer was delivered before.
    fn is_delivered(&self, id: u64) -> Result<bool, StoreError>;
    /// Delivers message `id` into the inbox exactly once and records the receive high-water
    /// mark, in one transaction. Returns false if it was delivered before.
    fn deliver(&self, id: u64, payload: &[u8], rx_high: u64) -> Result<bool, StoreError>;
    /// The receive high-water mark.
    fn rx_high(&self) -> Result<u64, StoreError>;
    /// The oldest message in the inbox.
    fn inbox_first(&self) -> Result<Option<(u64, Vec<u8>)>, StoreError>;
    /// Removes a message the application has taken.
    fn inbox_remove(&self, id: u64) -> Result<(), StoreError>;
}

#[derive(Default)]
struct MemState {
    next_id: u64,
    outbox: BTreeMap<u64, Vec<u8>>,
    counters: u64,
    delivered: BTreeSet<u64>,
    withdrawn: BTreeSet<u64>,
    inbox: BTreeMap<u64, Vec<u8>>,
    rx_high: u64,
}

/// The link's state in memory. Clones share it, which is how a simulated restart keeps it.
#[derive(Clone, Default)]
pub struct MemStore(Arc<Mutex<MemState>>);

impl MemStore {
    /// An empty store.
    pub fn new() -> MemStore {
        MemStore::default()
    }
    fn lock(&self) -> std::sync::MutexGuard<'_, MemState> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl LinkStore for MemStore {
    fn enqueue(&self, payload: &[u8]) -> Result<u64, StoreError> {
        let mut s = self.lock();
        s.next_id += 1;
        let id = s.next_id;
        s.outbox.insert(id, payload.to_vec());
        Ok(id)
    }
    fn outbox(&self) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        Ok(self
            .lock()
            .outbox
            .iter()
            .map(|(k, v)| (*k, v.clone()))
            .collect())
    }
    fn is_queued(&self, id: u64) -> Result<bool, StoreError> {
        Ok(self.lock().outbox.contains_key(&id))
    }
    fn acknowledged(&self, id: u64) -> Result<(), StoreError> {
        self.lock().outbox.remove(&id);
        Ok(())
    }
    fn withdraw(&self, id: u64) -> Result<(), StoreError> {
        let mut s = self.lock();
        s.outbox.remove(&id);
        s.withdrawn.insert(id);
        Ok(())
    }
    fn was_withdrawn(&self, id: u64) -> Result<bool, StoreError> {
        Ok(self.lock().withdrawn.contains(&id))
    }
    fn reserve_counters(&self, n: u64) -> Result<u64, StoreError> {
        let mut s = self.lock();
        let first = s.counters + 1;
        s.counters += n;
        Ok(first)
    }
    fn is_delivered(&self, id: u64) -> Result<bool, StoreError> {
        Ok(self.lock().delivered.contains(&id))
    }
    fn deliver(&self, id: u64, payload: &[u8], rx_high: u64) -> Result<bool, StoreError> {
        let mut s = self.lock();
        s.rx_high = s.rx_high.max(rx_high);
        if !s.delivered.insert(id) {
            return Ok(false);
        }
        s.inbox.insert(id, payload.to_vec());
        Ok(true)
    }
    fn rx_high(&self) -> Result<u64, StoreError> {
        Ok(self.lock().rx_high)
    }
    fn inbox_first(&self) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        Ok(self
            .lock()
            .inbox
            .iter()
            .next()
            .map(|(k, v)| (*k, v.clone())))
    }
    fn inbox_remove(&self, id: u64) -> Result<(), StoreError> {
        self.lock().inbox.remove(&id);
        Ok(())
    }
}

impl<T: LinkStore> LinkStore for Arc<T> {
    fn enqueue(&self, payload: &[u8]) -> Result<u64, StoreError> {
        (**self).enqueue(payload)
    }
    fn outbox(&self) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        (**self).outbox()
    }
    fn is_queued(&self, id: u64) -> Result<bool, StoreError> {
        (**self).is_queued(id)
    }
    fn acknowledged(&self, id: u64) -> Result<(), StoreError> {
        (**self).acknowledged(id)
    }
    fn withdraw(&self, id: u64) -> Result<(), StoreError> {
        (**self).withdraw(id)
    }
    fn was_withdrawn(&self, id: u64) -> Result<bool, StoreError> {
        (**self).was_withdrawn(id)
    }
    fn reserve_counters(&self, n: u64) -> Result<u64, StoreError> {
        (**self).reserve_counters(n)
    }
    fn is_delivered(&self, id: u64) -> Result<bool, StoreError> {
        (**self).is_delivered(id)
    }
    fn deliver(&self, id: u64, payload: &[u8], rx_high: u64) -> Result<bool, StoreError> {
        (**self).deliver(id, payload, rx_high)
    }
    fn rx_high(&self) -> Result<u64, StoreError> {
        (**self).rx_high()
    }
    fn inbox_first(&self) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        (**self).inbox_first()
    }
    fn inbox_remove(&self, id: u64) -> Result<(), StoreError> {
        (**self).inbox_remove(id)
    }
}

const OUTBOX: TableDefinition<u64, &[u8]> = TableDefinition::new("link_outbox");
const INBOX: TableDefinition<u64, &[u8]> = TableDefinition::new("link_inbox");
const DELIVERED: TableDefinition<u64, ()> = TableDefinition::new("link_delivered");
const META: TableDefinition<&str, u64> = TableDefinition::new("link_meta");
const WITHDRAWN: TableDefinition<u64, ()> = TableDefinition::new("link_withdrawn");

/// The link's state in a redb file (two-phase commit on).
pub struct RedbStore {
    db: Database,
}

impl RedbStore {
    /// Opens or creates the store.
    pub fn open(path: &Path) -> Result<RedbStore, StoreError> {
        let db = Database::create(path).map_err(err)?;
        let mut txn = db.begin_write().map_err(err)?;
        txn.set_two_phase_commit(true);
        txn.open_table(OUTBOX).map_err(err)?;
        txn.open_table(INBOX).map_err(err)?;
        txn.open_table(DELIVERED).map_err(err)?;
        txn.open_table(META).map_err(err)?;
        txn.open_table(WITHDRAWN).map_err(err)?;
        txn.commit().map_err(err)?;
        Ok(RedbStore { db })
    }

    fn write<T>(
        &self,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut txn = self.db.begin_write().map_err(err)?;
        txn.set_two_phase_commit(true);
        let out = f(&txn)?;
        txn.commit().map_err(err)?;
        Ok(out)
    }

    fn meta(&self, key: &str) -> Result<u64, StoreError> {
        let txn = self.db.begin_read().map_err(err)?;
        let t = txn.open_table(META).map_err(err)?;
        Ok(t.get(key).map_err(err)?.map_or(0, |v| v.value()))
    }
}

impl LinkStore for RedbStore {
    fn enqueue(&self, payload: &[u8]) -> Result<u64, StoreError> {
        self.write(|txn| {
            let mut meta = txn.open_table(META).map_err(err)?;
            let id = meta.get("next_id").map_err(err)?.map_or(0, |v| v.value()) + 1;
            meta.insert("next_id", id).map_err(err)?;
            txn.open_table(OUTBOX)
                .map_err(err)?
                .insert(id, payload)
                .map_err(err)?;
            Ok(id)
        })
    }
    fn outbox(&self) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let txn = self.db.begin_read().map_err(err)?;
        let t = txn.open_table(OUTBOX).map_err(err)?;
        let mut out = Vec::new();
        for row in t.iter().map_err(err)? {
            let (k, v) = row.map_err(err)?;
            out.push((k.value(), v.value().to_vec()));
        }
        Ok(out)
    }
    fn is_queued(&self, id: u64) -> Result<bool, StoreError> {
        let txn = self.db.begin_read().map_err(err)?;
        let t = txn.open_table(OUTBOX).map_err(err)?;
        Ok(t.get(id).map_err(err)?.is_some())
    }
    fn acknowledged(&self, id: u64) -> Result<(), StoreError> {
        self.write(|txn| {
            txn.open_table(OUTBOX)
                .map_err(err)?
                .remove(id)
                .map_err(err)?;
            Ok(())
        })
    }
    fn withdraw(&self, id: u64) -> Result<(), StoreError> {
        self.write(|txn| {
            txn.open_table(OUTBOX)
                .map_err(err)?
                .remove(id)
                .map_err(err)?;
            txn.open_table(WITHDRAWN)
                .map_err(err)?
                .insert(id, ())
                .map_err(err)?;
            Ok(())
        })
    }
    fn was_withdrawn(&self, id: u64) -> Result<bool, StoreError> {
        let txn = self.db.begin_read().map_err(err)?;
        let t = txn.open_table(WITHDRAWN).map_err(err)?;
        Ok(t.get(id).map_err(err)?.is_some())
    }
    fn reserve_counters(&self, n: u64) -> Result<u64, StoreError> {
        self.write(|txn| {
            let mut meta = txn.open_table(META).map_err(err)?;
            let used = meta.get("counters").map_err(err)?.map_or(0, |v| v.value());
            meta.insert("counters", used + n).map_err(err)?;
            Ok(used + 1)
        })
    }
    fn is_delivered(&self, id: u64) -> Result<bool, StoreError> {
        let txn = self.db.begin_read().map_err(err)?;
        let t = txn.open_table(DELIVERED).map_err(err)?;
        Ok(t.get(id).map_err(err)?.is_some())
    }
    fn deliver(&self, id: u64, payload: &[u8], rx_high: u64) -> Result<bool, StoreError> {
        self.write(|txn| {
            let mut meta = txn.open_table(META).map_err(err)?;
            let high = meta.get("rx_high").map_err(err)?.map_or(0, |v| v.value());
            meta.insert("rx_high", high.max(rx_high)).map_err(err)?;
            let mut delivered = txn.open_table(DELIVERED).map_err(err)?;
            if delivered.insert(id, ()).map_err(err)?.is_some() {
                return Ok(false);
            }
            txn.open_table(INBOX)
                .map_err(err)?
                .insert(id, payload)
                .map_err(err)?;
            Ok(true)
        })
    }
    fn rx_high(&self) -> Result<u64, StoreError> {
        self.meta("rx_high")
    }
    fn inbox_first(&self) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        let txn = self.db.begin_read().map_err(err)?;
        let t = txn.open_table(INBOX).map_err(err)?;
        let first = t.first().map_err(err)?;
        Ok(first.map(|(k, v)| (k.value(), v.value().to_vec())))
    }
    fn inbox_remove(&self, id: u64) -> Result<(), StoreError> {
        self.write(|txn| {
            txn.open_table(INBOX)
                .map_err(err)?
                .remove(id)
                .map_err(err)?;
            Ok(())
        })
    }
}
