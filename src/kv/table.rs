//! Table handles: reads and writes of one table, iterators, write batches across tables,
//! and snapshots. Values are sealed here.
//!
//! Invariant: every value written to a table with value sealing is sealed under the
//! table's current data key with associated data binding the store, the table and the
//! record's key; reads pick the key version named in the sealed value.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::RwLock;
use rocksdb::{BoundColumnFamily, DBRawIteratorWithThreadMode, ReadOptions};

use super::{Db, StoreInner, engine};
use crate::cipher::{AeadKey, Sealed, Suite};
use crate::error::{Error, Result};
use crate::keyring::TableEntry;

pub(crate) struct TableState {
    pub(crate) id: u32,
    pub(crate) name: String,
    pub(crate) cf: String,
    pub(crate) seal: bool,
    pub(crate) suite: Suite,
    keys: RwLock<HashMap<u32, Arc<AeadKey>>>,
    current: u32,
    /// Set when the table's master key was revoked: (master key, why).
    revoked: RwLock<Option<(String, String)>>,
}

impl TableState {
    pub(crate) fn new(entry: &TableEntry, keys: HashMap<u32, Arc<AeadKey>>) -> TableState {
        TableState {
            id: entry.envelope.table_id,
            name: entry.name.clone(),
            cf: super::cf_name(entry.envelope.table_id),
            seal: entry.value_seal,
            suite: entry.envelope.suite,
            keys: RwLock::new(keys),
            current: entry.envelope.current,
            revoked: RwLock::new(None),
        }
    }

    /// Fails closed: every later operation returns [`Error::KeyRevoked`] and the value
    /// keys are dropped (wiped, once no operation in flight still holds one).
    pub(crate) fn revoke(&self, key: &str, why: &str) {
        *self.revoked.write() = Some((key.to_owned(), why.to_owned()));
        self.keys.write().clear();
    }

    pub(crate) fn is_revoked(&self) -> bool {
        self.revoked.read().is_some()
    }

    pub(crate) fn check(&self) -> Result<()> {
        match &*self.revoked.read() {
            Some((key, why)) => Err(Error::KeyRevoked {
                table: self.name.clone(),
                key: key.clone(),
                reason: why.clone(),
            }),
            None => Ok(()),
        }
    }
}

/// Calls `f` with the associated data of a value: domain, store id, table id, key.
fn with_aad<T>(store_id: &[u8; 16], table_id: u32, key: &[u8], f: impl FnOnce(&[u8]) -> T) -> T {
    const DOMAIN: &[u8] = b"tde kv value\0";
    const FIXED: usize = DOMAIN.len() + 16 + 4;
    let mut stack = [0u8; 256];
    let fill = |buf: &mut [u8]| {
        buf[..DOMAIN.len()].copy_from_slice(DOMAIN);
        buf[DOMAIN.len()..DOMAIN.len() + 16].copy_from_slice(store_id);
        buf[DOMAIN.len() + 16..FIXED].copy_from_slice(&table_id.to_le_bytes());
        buf[FIXED..].copy_from_slice(key);
    };
    if FIXED + key.len() <= stack.len() {
        let buf = &mut stack[..FIXED + key.len()];
        fill(buf);
        f(buf)
    } else {
        let mut heap = vec![0u8; FIXED + key.len()];
        fill(&mut heap);
        f(&heap)
    }
}

fn key_preview(key: &[u8]) -> String {
    let shown = &key[..key.len().min(32)];
    if shown.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
        format!(
            "{:?}{}",
            String::from_utf8_lossy(shown),
            if key.len() > 32 { "..." } else { "" }
        )
    } else {
        format!(
            "0x{}{}",
            crate::hex::encode(shown),
            if key.len() > 32 { "..." } else { "" }
        )
    }
}

impl TableState {
    fn encode(&self, store_id: &[u8; 16], key: &[u8], value: &[u8]) -> Result<Vec<u8>> {
        if !self.seal {
            return Ok(value.to_vec());
        }
        let keys = self.keys.read();
        let Some(aead) = keys.get(&self.current) else {
            drop(keys);
            self.check()?;
            return Err(Error::InvalidArgument(format!(
                "table {:?} has no current data key",
                self.name
            )));
        };
        with_aad(store_id, self.id, key, |aad| aead.seal(aad, value))
    }

    fn decode(&self, store_id: &[u8; 16], key: &[u8], stored: &[u8]) -> Result<Vec<u8>> {
        if !self.seal {
            return Ok(stored.to_vec());
        }
        let location = || format!("table {:?}, key {}", self.name, key_preview(key));
        let sealed = Sealed::parse(stored).map_err(|_| Error::Authentication { location: location() })?;
        let keys = self.keys.read();
        let Some(aead) = keys.get(&sealed.key_version) else {
            drop(keys);
            self.check()?;
            return Err(Error::Authentication {
                location: format!(
                    "{} (sealed with unknown data key version {})",
                    location(),
                    sealed.key_version
                ),
            });
        };
        with_aad(store_id, self.id, key, |aad| aead.open(aad, stored)).map_err(|e| e.at(location()))
    }
}

/// A handle on one table. Cheap to clone.
#[derive(Clone)]
pub struct Table {
    store: Arc<StoreInner>,
    state: Arc<TableState>,
}

impl std::fmt::Debug for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Table")
            .field("name", &self.state.name)
            .finish_non_exhaustive()
    }
}

/// Which part of a table to iterate.
#[derive(Debug, Clone, Default)]
pub struct ScanOptions {
    /// Only keys starting with this prefix.
    pub prefix: Option<Vec<u8>>,
    /// First key (inclusive).
    pub start: Option<Vec<u8>>,
    /// End key (exclusive).
    pub end: Option<Vec<u8>>,
}

impl ScanOptions {
    /// Keys starting with `prefix`.
    pub fn prefix(prefix: impl Into<Vec<u8>>) -> ScanOptions {
        ScanOptions {
            prefix: Some(prefix.into()),
            ..ScanOptions::default()
        }
    }

    /// Keys in `start..end`.
    pub fn range(start: impl Into<Vec<u8>>, end: impl Into<Vec<u8>>) -> ScanOptions {
        ScanOptions {
            start: Some(start.into()),
            end: Some(end.into()),
            ..ScanOptions::default()
        }
    }

    fn read_options(&self) -> ReadOptions {
        let mut opts = ReadOptions::default();
        let mut lower = self.start.clone();
        let mut upper = self.end.clone();
        if let Some(prefix) = &self.prefix {
            lower = Some(lower.map_or_else(|| prefix.clone(), |s| s.max(prefix.clone())));
            if let Some(next) = successor(prefix) {
                upper = Some(upper.map_or_else(|| next.clone(), |e| e.min(next.clone())));
            }
        }
        if let Some(lower) = lower {
            opts.set_iterate_lower_bound(lower);
        }
        if let Some(upper) = upper {
            opts.set_iterate_upper_bound(upper);
        }
        opts
    }
}

/// The smallest key greater than every key with `prefix`, if any.
fn successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut next = prefix.to_vec();
    while let Some(last) = next.pop() {
        if last != 0xff {
            next.push(last + 1);
            return Some(next);
        }
    }
    None
}

impl Table {
    pub(crate) fn new(store: Arc<StoreInner>, state: Arc<TableState>) -> Table {
        Table { store, state }
    }

    /// The table's name.
    pub fn name(&self) -> &str {
        &self.state.name
    }

    /// Whether values are sealed with AEAD.
    pub fn value_seal(&self) -> bool {
        self.state.seal
    }

    /// The table's suite.
    pub fn suite(&self) -> Suite {
        self.state.suite
    }

    fn cf(&self) -> Result<Arc<BoundColumnFamily<'_>>> {
        self.state.check()?;
        self.store
            .db
            .cf_handle(&self.state.cf)
            .ok_or_else(|| Error::NoSuchTable(self.state.name.clone()))
    }

    /// Writes `value` under `key`.
    ///
    /// # Errors
    /// [`Error::NoSuchTable`] if the table was dropped; [`Error::Engine`].
    pub fn put(&self, key: &[u8], value: &[u8]) -> Result<()> {
        let stored = self.state.encode(&self.store.store_id, key, value)?;
        self.store
            .db
            .put_cf_opt(&self.cf()?, key, stored, &self.store.write_options)
            .map_err(engine)
    }

    /// Reads the value under `key`.
    ///
    /// # Errors
    /// [`Error::Authentication`] naming the table and key if the stored value was
    /// modified or moved; [`Error::Engine`] for corrupt files.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.get_opt(key, &ReadOptions::default())
    }

    fn get_opt(&self, key: &[u8], opts: &ReadOptions) -> Result<Option<Vec<u8>>> {
        match self
            .store
            .db
            .get_pinned_cf_opt(&self.cf()?, key, opts)
            .map_err(engine)?
        {
            Some(stored) => Ok(Some(self.state.decode(&self.store.store_id, key, &stored)?)),
            None => Ok(None),
        }
    }

    /// Deletes `key`.
    ///
    /// # Errors
    /// [`Error::Engine`].
    pub fn delete(&self, key: &[u8]) -> Result<()> {
        self.store
            .db
            .delete_cf_opt(&self.cf()?, key, &self.store.write_options)
            .map_err(engine)
    }

    /// Iterates over the whole table in key order.
    ///
    /// # Errors
    /// [`Error::NoSuchTable`].
    pub fn iter(&self) -> Result<TableIter<'_>> {
        self.scan(&ScanOptions::default())
    }

    /// Iterates over a prefix or range in key order.
    ///
    /// # Errors
    /// [`Error::NoSuchTable`].
    pub fn scan(&self, options: &ScanOptions) -> Result<TableIter<'_>> {
        self.scan_opt(options.read_options())
    }

    fn scan_opt(&self, opts: ReadOptions) -> Result<TableIter<'_>> {
        let mut raw = self.store.db.raw_iterator_cf_opt(&self.cf()?, opts);
        raw.seek_to_first();
        Ok(TableIter {
            raw,
            table: self,
            done: false,
        })
    }
}

/// An iterator over `(key, value)` pairs of a table. Yields an error (and then stops) if
/// a value fails authentication or a file is corrupt.
pub struct TableIter<'a> {
    raw: DBRawIteratorWithThreadMode<'a, Db>,
    table: &'a Table,
    done: bool,
}

impl Iterator for TableIter<'_> {
    type Item = Result<(Vec<u8>, Vec<u8>)>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        if !self.raw.valid() {
            self.done = true;
            return self.raw.status().err().map(|e| Err(engine(e)));
        }
        let item = match (self.raw.key(), self.raw.value()) {
            (Some(k), Some(v)) => self
                .table
                .state
                .decode(&self.table.store.store_id, k, v)
                .map(|value| (k.to_vec(), value)),
            _ => Err(Error::Engine("iterator returned no entry".into())),
        };
        if item.is_err() {
            self.done = true;
        } else {
            self.raw.next();
        }
        Some(item)
    }
}

/// Writes to any tables, applied atomically by [`super::Store::write`].
pub struct WriteBatch {
    store: Arc<StoreInner>,
    inner: rocksdb::WriteBatch,
    error: Option<Error>,
}

impl WriteBatch {
    pub(crate) fn new(store: Arc<StoreInner>) -> WriteBatch {
        WriteBatch {
            store,
            inner: rocksdb::WriteBatch::default(),
            error: None,
        }
    }

    /// Adds a put.
    pub fn put(&mut self, table: &Table, key: &[u8], value: &[u8]) {
        let stored = match table.state.encode(&self.store.store_id, key, value) {
            Ok(s) => s,
            Err(e) => {
                self.error.get_or_insert(e);
                return;
            }
        };
        if let Some(cf) = WriteBatch::cf_for(&self.store, table, &mut self.error) {
            self.inner.put_cf(&cf, key, stored);
        }
    }

    /// Adds a delete.
    pub fn delete(&mut self, table: &Table, key: &[u8]) {
        if let Some(cf) = WriteBatch::cf_for(&self.store, table, &mut self.error) {
            self.inner.delete_cf(&cf, key);
        }
    }

    fn cf_for<'s>(
        store: &'s Arc<StoreInner>,
        table: &Table,
        error: &mut Option<Error>,
    ) -> Option<Arc<BoundColumnFamily<'s>>> {
        if !Arc::ptr_eq(&table.store, store) {
            error.get_or_insert(Error::InvalidArgument(format!(
                "table {:?} belongs to another store",
                table.state.name
            )));
            return None;
        }
        if let Err(e) = table.state.check() {
            error.get_or_insert(e);
            return None;
        }
        let cf = store.db.cf_handle(&table.state.cf);
        if cf.is_none() {
            error.get_or_insert(Error::NoSuchTable(table.state.name.clone()));
        }
        cf
    }

    /// Number of operations in the batch.
    pub fn len(&self) -> usize {
        self.inner.len()
    }

    /// Whether the batch is empty.
    pub fn is_empty(&self) -> bool {
        self.inner.is_empty()
    }

    pub(crate) fn into_inner(self) -> Result<rocksdb::WriteBatch> {
        match self.error {
            Some(e) => Err(e),
            None => Ok(self.inner),
        }
    }
}

/// A consistent, read-only view of every table at one point in time.
pub struct Snapshot<'a> {
    snapshot: rocksdb::SnapshotWithThreadMode<'a, Db>,
}

impl<'a> Snapshot<'a> {
    pub(crate) fn new(store: &'a Arc<StoreInner>) -> Snapshot<'a> {
        Snapshot {
            snapshot: store.db.snapshot(),
        }
    }

    fn read_options(&self, base: ReadOptions) -> ReadOptions {
        let mut opts = base;
        opts.set_snapshot(&self.snapshot);
        opts
    }

    /// Reads `key` of `table` as of the snapshot.
    ///
    /// # Errors
    /// As [`Table::get`].
    pub fn get(&self, table: &Table, key: &[u8]) -> Result<Option<Vec<u8>>> {
        table.get_opt(key, &self.read_options(ReadOptions::default()))
    }

    /// Iterates over `table` as of the snapshot.
    ///
    /// # Errors
    /// As [`Table::scan`].
    pub fn scan<'t>(&'t self, table: &'t Table, options: &ScanOptions) -> Result<TableIter<'t>> {
        table.scan_opt(self.read_options(options.read_options()))
    }
}
