//! The bridge's tables, one API over either backend.
//!
//! Every record the bridge keeps (wallets, requests, tokens, rate limits, Nostr events,
//! watches) lives in a named table of keys and values. The code that reads and changes
//! them is written once, against this module: a transaction opens a table and gets,
//! inserts, removes and walks its rows. Underneath, a table is either a typed redb table
//! (the embedded default, whose files stay as they were) or the rows of that name in
//! PostgreSQL's `kv` table, where a key is stored in an order-preserving form so that a
//! walk and a range come back in the same order as redb's.
//!
//! The API mirrors redb's (`open_table`, `get`, `insert`, `remove`, `iter`, `range`, and
//! guards with `value()`), so a rule reads the same whichever engine keeps it.

use std::borrow::Borrow;
use std::marker::PhantomData;
use std::ops::{Bound, RangeBounds};

use super::pg_txn::PgTxn;

pub use super::table_error::TableError;

fn redb_err(table: &str, e: impl std::fmt::Display) -> TableError {
    TableError(format!("table {table}: {e}"))
}

/// A column type: redb's encoding for values, plus what PostgreSQL needs for keys.
pub trait Column: redb::Value + 'static {
    /// Whether `bytes` (redb's encoding) is a valid value of this type; a row that is not
    /// is reported as corrupt rather than decoded.
    fn valid(bytes: &[u8]) -> bool;
    /// redb's encoding turned into one whose byte order is the key order.
    fn to_sorted(bytes: &[u8]) -> Vec<u8> {
        bytes.to_vec()
    }
    /// The inverse of [`Column::to_sorted`].
    fn from_sorted(bytes: &[u8]) -> Vec<u8> {
        bytes.to_vec()
    }
}

impl Column for &'static [u8] {
    fn valid(_: &[u8]) -> bool {
        true
    }
}

impl<const N: usize> Column for &'static [u8; N] {
    fn valid(bytes: &[u8]) -> bool {
        bytes.len() == N
    }
}

impl Column for &'static str {
    fn valid(bytes: &[u8]) -> bool {
        std::str::from_utf8(bytes).is_ok()
    }
}

impl Column for () {
    fn valid(bytes: &[u8]) -> bool {
        bytes.is_empty()
    }
}

macro_rules! integer_column {
    ($t:ty) => {
        impl Column for $t {
            fn valid(bytes: &[u8]) -> bool {
                bytes.len() == std::mem::size_of::<$t>()
            }
            // redb stores integers little-endian; big-endian sorts as the numbers do.
            fn to_sorted(bytes: &[u8]) -> Vec<u8> {
                bytes.iter().rev().copied().collect()
            }
            fn from_sorted(bytes: &[u8]) -> Vec<u8> {
                bytes.iter().rev().copied().collect()
            }
        }
    };
}
integer_column!(u32);
integer_column!(u64);

/// A table's name and types; `const`, like redb's.
pub struct TableDefinition<K, V> {
    name: &'static str,
    types: PhantomData<fn() -> (K, V)>,
}

impl<K, V> Clone for TableDefinition<K, V> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<K, V> Copy for TableDefinition<K, V> {}

impl<K: Column + redb::Key, V: Column> TableDefinition<K, V> {
    /// The table called `name`.
    pub const fn new(name: &'static str) -> Self {
        TableDefinition {
            name,
            types: PhantomData,
        }
    }

    /// Its name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    fn redb(&self) -> redb::TableDefinition<'static, K, V> {
        redb::TableDefinition::new(self.name)
    }
}

/// A value read from a table (owned; `value()` decodes it).
pub struct Guard<T> {
    bytes: Vec<u8>,
    of: PhantomData<fn() -> T>,
}

impl<T: Column> Guard<T> {
    fn new(table: &str, bytes: Vec<u8>) -> Result<Guard<T>, TableError> {
        if !T::valid(&bytes) {
            return Err(TableError(format!(
                "table {table}: a row does not decode (corrupt)"
            )));
        }
        Ok(Guard {
            bytes,
            of: PhantomData,
        })
    }

    fn of_redb(guard: &redb::AccessGuard<'_, T>) -> Guard<T> {
        Guard {
            bytes: T::as_bytes(&guard.value()).as_ref().to_vec(),
            of: PhantomData,
        }
    }

    /// The value.
    pub fn value(&self) -> T::SelfType<'_> {
        T::from_bytes(&self.bytes)
    }
}

/// One row of a walk.
pub type Row<K, V> = Result<(Guard<K>, Guard<V>), TableError>;
/// The rows of a walk, in key order.
pub type Rows<'t, K, V> = Box<dyn DoubleEndedIterator<Item = Row<K, V>> + 't>;

/// Reads a table has, in a read or a write transaction.
pub trait ReadableTable<K: Column + redb::Key, V: Column> {
    /// The value at `key`.
    fn get<'a>(&self, key: impl Borrow<K::SelfType<'a>>) -> Result<Option<Guard<V>>, TableError>;
    /// Every row within `range`, in key order.
    fn range<'a, KR>(&self, range: impl RangeBounds<KR> + 'a) -> Result<Rows<'_, K, V>, TableError>
    where
        KR: Borrow<K::SelfType<'a>> + 'a;
    /// Every row, in key order.
    fn iter(&self) -> Result<Rows<'_, K, V>, TableError>;
}

/// A write transaction on either engine.
pub struct WriteTransaction(WriteEngine);

enum WriteEngine {
    Redb(Box<redb::WriteTransaction>),
    Postgres(Box<PgTxn>),
}

impl WriteTransaction {
    pub(super) fn redb(txn: redb::WriteTransaction) -> WriteTransaction {
        WriteTransaction(WriteEngine::Redb(Box::new(txn)))
    }

    pub(crate) fn postgres(txn: PgTxn) -> WriteTransaction {
        WriteTransaction(WriteEngine::Postgres(Box::new(txn)))
    }

    pub(super) fn into_redb(self) -> Option<redb::WriteTransaction> {
        match self.0 {
            WriteEngine::Redb(txn) => Some(*txn),
            WriteEngine::Postgres(_) => None,
        }
    }

    pub(crate) fn into_postgres(self) -> Option<PgTxn> {
        match self.0 {
            WriteEngine::Postgres(txn) => Some(*txn),
            WriteEngine::Redb(_) => None,
        }
    }

    fn pg(&self) -> Result<&PgTxn, TableError> {
        match &self.0 {
            WriteEngine::Postgres(txn) => Ok(txn),
            WriteEngine::Redb(_) => Err(TableError("savepoints are PostgreSQL's".into())),
        }
    }

    /// Marks a point the next [`Self::rollback_to_savepoint`] returns to (PostgreSQL).
    pub(crate) fn savepoint(&self) -> Result<(), TableError> {
        self.pg()?.batch("SAVEPOINT rule")
    }

    /// Keeps what was done since the savepoint (PostgreSQL).
    pub(crate) fn release_savepoint(&self) -> Result<(), TableError> {
        self.pg()?.batch("RELEASE SAVEPOINT rule")
    }

    /// Undoes what was done since the savepoint (PostgreSQL).
    pub(crate) fn rollback_to_savepoint(&self) -> Result<(), TableError> {
        self.pg()?.batch("ROLLBACK TO SAVEPOINT rule")
    }

    /// Opens table `def` for reading and writing (creating it if it does not exist).
    pub fn open_table<K: Column + redb::Key, V: Column>(
        &self,
        def: TableDefinition<K, V>,
    ) -> Result<Table<'_, K, V>, TableError> {
        let engine = match &self.0 {
            WriteEngine::Redb(txn) => Engine::RedbWrite(
                txn.open_table(def.redb())
                    .map_err(|e| redb_err(def.name, e))?,
            ),
            WriteEngine::Postgres(txn) => Engine::Postgres(txn),
        };
        Ok(Table(Open {
            name: def.name,
            engine,
        }))
    }
}

/// A read transaction on either engine: a snapshot of what was committed.
pub struct ReadTransaction(ReadEngine);

enum ReadEngine {
    Redb(redb::ReadTransaction),
    Postgres(PgTxn),
}

impl ReadTransaction {
    pub(super) fn redb(txn: redb::ReadTransaction) -> ReadTransaction {
        ReadTransaction(ReadEngine::Redb(txn))
    }

    pub(crate) fn postgres(txn: PgTxn) -> ReadTransaction {
        ReadTransaction(ReadEngine::Postgres(txn))
    }

    pub(crate) fn into_postgres(self) -> Option<PgTxn> {
        match self.0 {
            ReadEngine::Postgres(txn) => Some(txn),
            ReadEngine::Redb(_) => None,
        }
    }

    /// Opens table `def` for reading.
    pub fn open_table<K: Column + redb::Key, V: Column>(
        &self,
        def: TableDefinition<K, V>,
    ) -> Result<ReadOnlyTable<'_, K, V>, TableError> {
        let engine = match &self.0 {
            ReadEngine::Redb(txn) => Engine::RedbRead(
                txn.open_table(def.redb())
                    .map_err(|e| redb_err(def.name, e))?,
            ),
            ReadEngine::Postgres(txn) => Engine::Postgres(txn),
        };
        Ok(ReadOnlyTable(Open {
            name: def.name,
            engine,
        }))
    }
}

/// A table open in a write transaction.
pub struct Table<'t, K: Column + redb::Key, V: Column>(Open<'t, K, V>);

/// A table open in a read transaction.
pub struct ReadOnlyTable<'t, K: Column + redb::Key, V: Column>(Open<'t, K, V>);

/// An open table of either engine, read or write.
struct Open<'t, K: Column + redb::Key, V: Column> {
    name: &'static str,
    engine: Engine<'t, K, V>,
}

enum Engine<'t, K: Column + redb::Key, V: Column> {
    RedbWrite(redb::Table<'t, K, V>),
    RedbRead(redb::ReadOnlyTable<K, V>),
    Postgres(&'t PgTxn),
}

/// A redb walk as owned rows.
fn redb_rows<'t, K: Column + redb::Key, V: Column>(
    name: &'static str,
    range: redb::Range<'t, K, V>,
) -> Rows<'t, K, V> {
    Box::new(range.map(move |row| {
        let (k, v) = row.map_err(|e| redb_err(name, e))?;
        Ok((Guard::of_redb(&k), Guard::of_redb(&v)))
    }))
}

fn sorted_key<K: Column>(key: &K::SelfType<'_>) -> Vec<u8> {
    K::to_sorted(K::as_bytes(key).as_ref())
}

fn sorted_bound<'a, K: Column, KR: Borrow<K::SelfType<'a>>>(b: Bound<&KR>) -> Bound<Vec<u8>> {
    match b {
        Bound::Included(k) => Bound::Included(sorted_key::<K>(k.borrow())),
        Bound::Excluded(k) => Bound::Excluded(sorted_key::<K>(k.borrow())),
        Bound::Unbounded => Bound::Unbounded,
    }
}

fn pg_get<K: Column, V: Column>(
    txn: &PgTxn,
    name: &'static str,
    key: &K::SelfType<'_>,
) -> Result<Option<Guard<V>>, TableError> {
    txn.get(name, &sorted_key::<K>(key))?
        .map(|v| Guard::new(name, v))
        .transpose()
}

fn pg_rows<'t, K: Column, V: Column>(
    txn: &PgTxn,
    name: &'static str,
    lower: Bound<Vec<u8>>,
    upper: Bound<Vec<u8>>,
) -> Result<Rows<'t, K, V>, TableError> {
    let rows = txn.scan(name, lower, upper)?;
    Ok(Box::new(rows.into_iter().map(move |(k, v)| {
        Ok((Guard::new(name, K::from_sorted(&k))?, Guard::new(name, v)?))
    })))
}

fn redb_get<'a, K, V, T>(
    name: &'static str,
    t: &T,
    key: impl Borrow<K::SelfType<'a>>,
) -> Result<Option<Guard<V>>, TableError>
where
    K: Column + redb::Key,
    V: Column,
    T: redb::ReadableTable<K, V>,
{
    Ok(t.get(key)
        .map_err(|e| redb_err(name, e))?
        .map(|g| Guard::of_redb(&g)))
}

impl<K: Column + redb::Key, V: Column> ReadableTable<K, V> for Open<'_, K, V> {
    fn get<'a>(&self, key: impl Borrow<K::SelfType<'a>>) -> Result<Option<Guard<V>>, TableError> {
        match &self.engine {
            Engine::RedbWrite(t) => redb_get(self.name, t, key),
            Engine::RedbRead(t) => redb_get(self.name, t, key),
            Engine::Postgres(txn) => pg_get::<K, V>(txn, self.name, key.borrow()),
        }
    }

    fn range<'a, KR>(&self, range: impl RangeBounds<KR> + 'a) -> Result<Rows<'_, K, V>, TableError>
    where
        KR: Borrow<K::SelfType<'a>> + 'a,
    {
        use redb::ReadableTable as _;
        let rows = match &self.engine {
            Engine::RedbWrite(t) => t.range(range),
            Engine::RedbRead(t) => t.range(range),
            Engine::Postgres(txn) => {
                return pg_rows(
                    txn,
                    self.name,
                    sorted_bound::<K, KR>(range.start_bound()),
                    sorted_bound::<K, KR>(range.end_bound()),
                )
            }
        };
        Ok(redb_rows(
            self.name,
            rows.map_err(|e| redb_err(self.name, e))?,
        ))
    }

    fn iter(&self) -> Result<Rows<'_, K, V>, TableError> {
        use redb::ReadableTable as _;
        let rows = match &self.engine {
            Engine::RedbWrite(t) => t.iter(),
            Engine::RedbRead(t) => t.iter(),
            Engine::Postgres(txn) => {
                return pg_rows(txn, self.name, Bound::Unbounded, Bound::Unbounded)
            }
        };
        Ok(redb_rows(
            self.name,
            rows.map_err(|e| redb_err(self.name, e))?,
        ))
    }
}

macro_rules! readable {
    ($t:ident) => {
        impl<K: Column + redb::Key, V: Column> ReadableTable<K, V> for $t<'_, K, V> {
            fn get<'a>(
                &self,
                key: impl Borrow<K::SelfType<'a>>,
            ) -> Result<Option<Guard<V>>, TableError> {
                self.0.get(key)
            }
            fn range<'a, KR>(
                &self,
                range: impl RangeBounds<KR> + 'a,
            ) -> Result<Rows<'_, K, V>, TableError>
            where
                KR: Borrow<K::SelfType<'a>> + 'a,
            {
                self.0.range(range)
            }
            fn iter(&self) -> Result<Rows<'_, K, V>, TableError> {
                self.0.iter()
            }
        }
    };
}
readable!(Table);
readable!(ReadOnlyTable);

impl<K: Column + redb::Key, V: Column> Table<'_, K, V> {
    /// Sets `key` to `value`; returns the value it replaced.
    pub fn insert<'k, 'v>(
        &mut self,
        key: impl Borrow<K::SelfType<'k>>,
        value: impl Borrow<V::SelfType<'v>>,
    ) -> Result<Option<Guard<V>>, TableError> {
        let name = self.0.name;
        match &mut self.0.engine {
            Engine::RedbWrite(t) => Ok(t
                .insert(key, value)
                .map_err(|e| redb_err(name, e))?
                .map(|g| Guard::of_redb(&g))),
            Engine::Postgres(txn) => txn
                .put(
                    name,
                    &sorted_key::<K>(key.borrow()),
                    V::as_bytes(value.borrow()).as_ref(),
                )?
                .map(|v| Guard::new(name, v))
                .transpose(),
            Engine::RedbRead(_) => Err(TableError(format!("table {name}: opened to read"))),
        }
    }

    /// Removes `key`; returns the value it held.
    pub fn remove<'k>(
        &mut self,
        key: impl Borrow<K::SelfType<'k>>,
    ) -> Result<Option<Guard<V>>, TableError> {
        let name = self.0.name;
        match &mut self.0.engine {
            Engine::RedbWrite(t) => Ok(t
                .remove(key)
                .map_err(|e| redb_err(name, e))?
                .map(|g| Guard::of_redb(&g))),
            Engine::Postgres(txn) => txn
                .delete(name, &sorted_key::<K>(key.borrow()))?
                .map(|v| Guard::new(name, v))
                .transpose(),
            Engine::RedbRead(_) => Err(TableError(format!("table {name}: opened to read"))),
        }
    }
}
