//! The radio link's durable state kept with the rest of the bridge's state, so that on
//! PostgreSQL whichever bridge holds the database carries on the link where the last one
//! stopped: the same outbox, the same delivered ids, and never a counter used twice.
//!
//! The link calls its store synchronously (it runs its disk work off the async workers);
//! each call here is one transaction of [`Store`], waited for on the calling thread.

use satcosign_link::store::{LinkStore, StoreError as LinkStoreError};

use std::sync::Arc;

use super::fence::{check, Fence};
use super::tables::{ReadableTable, TableDefinition};
use super::{Store, StoreError, WriteTransaction};

const OUTBOX: TableDefinition<u64, &[u8]> = TableDefinition::new("link_outbox");
const INBOX: TableDefinition<u64, &[u8]> = TableDefinition::new("link_inbox");
const DELIVERED: TableDefinition<u64, ()> = TableDefinition::new("link_delivered");
const META: TableDefinition<&str, u64> = TableDefinition::new("link_meta");
const WITHDRAWN: TableDefinition<u64, ()> = TableDefinition::new("link_withdrawn");

fn link_err(e: StoreError) -> LinkStoreError {
    LinkStoreError(e.to_string())
}

/// The link's state in the bridge's [`Store`], written only under the ground lease.
#[derive(Clone)]
pub struct LinkRows {
    store: Store,
    fence: Arc<Fence>,
}

impl LinkRows {
    /// The link's rows in `store`, each write checked against the token in `fence`.
    pub fn new(store: Store, fence: Arc<Fence>) -> LinkRows {
        LinkRows { store, fence }
    }

    /// Runs `job` in a write transaction, if this replica still holds the lease.
    fn write<T: Send + 'static>(
        &self,
        job: impl FnOnce(&WriteTransaction) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, LinkStoreError> {
        let held = self.fence.token();
        self.wait(self.store.write(move |txn| {
            check(txn, held)?;
            job(txn)
        }))
    }

    /// Waits for `f` on this thread, letting the runtime's other tasks move to another
    /// worker; a single-threaded runtime cannot wait here and gets an error.
    fn wait<T>(
        &self,
        f: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, LinkStoreError> {
        use tokio::runtime::{Handle, RuntimeFlavor};
        match Handle::try_current() {
            Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(|| h.block_on(f)).map_err(link_err)
            }
            Ok(_) => Err(LinkStoreError(
                "the link's rows need a multi-threaded runtime".into(),
            )),
            Err(_) => Err(LinkStoreError("no runtime to reach the database".into())),
        }
    }

    fn meta(&self, key: &'static str) -> Result<u64, LinkStoreError> {
        self.wait(
            self.store
                .read(move |txn| Ok(txn.open_table(META)?.get(key)?.map_or(0, |g| g.value()))),
        )
    }
}

impl LinkStore for LinkRows {
    fn enqueue(&self, payload: &[u8]) -> Result<u64, LinkStoreError> {
        let payload = payload.to_vec();
        self.write(move |txn| {
            let mut meta = txn.open_table(META)?;
            let id = meta.get("next_id")?.map_or(0, |g| g.value()) + 1;
            meta.insert("next_id", id)?;
            txn.open_table(OUTBOX)?.insert(id, payload.as_slice())?;
            Ok(id)
        })
    }

    fn outbox(&self) -> Result<Vec<(u64, Vec<u8>)>, LinkStoreError> {
        self.wait(self.store.read(|txn| {
            let t = txn.open_table(OUTBOX)?;
            let mut out = Vec::new();
            for row in t.iter()? {
                let (k, v) = row?;
                out.push((k.value(), v.value().to_vec()));
            }
            Ok(out)
        }))
    }

    fn is_queued(&self, id: u64) -> Result<bool, LinkStoreError> {
        self.wait(
            self.store
                .read(move |txn| Ok(txn.open_table(OUTBOX)?.get(id)?.is_some())),
        )
    }

    fn acknowledged(&self, id: u64) -> Result<(), LinkStoreError> {
        self.write(move |txn| {
            txn.open_table(OUTBOX)?.remove(id)?;
            Ok(())
        })
    }

    fn withdraw(&self, id: u64) -> Result<(), LinkStoreError> {
        self.write(move |txn| {
            txn.open_table(OUTBOX)?.remove(id)?;
            txn.open_table(WITHDRAWN)?.insert(id, ())?;
            Ok(())
        })
    }

    fn was_withdrawn(&self, id: u64) -> Result<bool, LinkStoreError> {
        self.wait(
            self.store
                .read(move |txn| Ok(txn.open_table(WITHDRAWN)?.get(id)?.is_some())),
        )
    }

    fn reserve_counters(&self, n: u64) -> Result<u64, LinkStoreError> {
        self.write(move |txn| {
            let mut meta = txn.open_table(META)?;
            let used = meta.get("counters")?.map_or(0, |g| g.value());
            meta.insert("counters", used + n)?;
            Ok(used + 1)
        })
    }

    fn is_delivered(&self, id: u64) -> Result<bool, LinkStoreError> {
        self.wait(
            self.store
                .read(move |txn| Ok(txn.open_table(DELIVERED)?.get(id)?.is_some())),
        )
    }

    fn deliver(&self, id: u64, payload: &[u8], rx_high: u64) -> Result<bool, LinkStoreError> {
        let payload = payload.to_vec();
        self.write(move |txn| {
            let mut meta = txn.open_table(META)?;
            let high = meta.get("rx_high")?.map_or(0, |g| g.value());
            meta.insert("rx_high", high.max(rx_high))?;
            if txn.open_table(DELIVERED)?.insert(id, ())?.is_some() {
                return Ok(false);
            }
            txn.open_table(INBOX)?.insert(id, payload.as_slice())?;
            Ok(true)
        })
    }

    fn rx_high(&self) -> Result<u64, LinkStoreError> {
        self.meta("rx_high")
    }

    fn inbox_first(&self) -> Result<Option<(u64, Vec<u8>)>, LinkStoreError> {
        self.wait(self.store.read(|txn| {
            let t = txn.open_table(INBOX)?;
            let first = t.iter()?.next().transpose()?;
            Ok(first.map(|(k, v)| (k.value(), v.value().to_vec())))
        }))
    }

    fn inbox_remove(&self, id: u64) -> Result<(), LinkStoreError> {
        self.write(move |txn| {
            txn.open_table(INBOX)?.remove(id)?;
            Ok(())
        })
    }
}

/// Where the bridge's link keeps its state: `link.redb` in the data folder beside a redb
/// store, or [`LinkRows`] in PostgreSQL beside a PostgreSQL store.
#[derive(Clone)]
pub enum LinkState {
    /// `<data_dir>/link.redb`.
    File(std::sync::Arc<satcosign_link::store::RedbStore>),
    /// The bridge's own database.
    Shared(LinkRows),
}

macro_rules! delegate {
    ($self:ident, $s:ident => $call:expr) => {
        match $self {
            LinkState::File($s) => $call,
            LinkState::Shared($s) => $call,
        }
    };
}

impl LinkStore for LinkState {
    fn enqueue(&self, payload: &[u8]) -> Result<u64, LinkStoreError> {
        delegate!(self, s => s.enqueue(payload))
    }
    fn outbox(&self) -> Result<Vec<(u64, Vec<u8>)>, LinkStoreError> {
        delegate!(self, s => s.outbox())
    }
    fn is_queued(&self, id: u64) -> Result<bool, LinkStoreError> {
        delegate!(self, s => s.is_queued(id))
    }
    fn acknowledged(&self, id: u64) -> Result<(), LinkStoreError> {
        delegate!(self, s => s.acknowledged(id))
    }
    fn withdraw(&self, id: u64) -> Result<(), LinkStoreError> {
        delegate!(self, s => s.withdraw(id))
    }
    fn was_withdrawn(&self, id: u64) -> Result<bool, LinkStoreError> {
        delegate!(self, s => s.was_withdrawn(id))
    }
    fn reserve_counters(&self, n: u64) -> Result<u64, LinkStoreError> {
        delegate!(self, s => s.reserve_counters(n))
    }
    fn is_delivered(&self, id: u64) -> Result<bool, LinkStoreError> {
        delegate!(self, s => s.is_delivered(id))
    }
    fn deliver(&self, id: u64, payload: &[u8], rx_high: u64) -> Result<bool, LinkStoreError> {
        delegate!(self, s => s.deliver(id, payload, rx_high))
    }
    fn rx_high(&self) -> Result<u64, LinkStoreError> {
        delegate!(self, s => s.rx_high())
    }
    fn inbox_first(&self) -> Result<Option<(u64, Vec<u8>)>, LinkStoreError> {
        delegate!(self, s => s.inbox_first())
    }
    fn inbox_remove(&self, id: u64) -> Result<(), LinkStoreError> {
        delegate!(self, s => s.inbox_remove(id))
    }
}
