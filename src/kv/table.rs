//! Table handles: reads and writes of one table, iterators, write batches across tables,
//! and snapshots. Values are sealed here.
//!
//! Invariant: every value written to a table with value sealing is sealed under the
//! table's current data key with associated data binding the store, the table and the
//! record's key; reads pick the key version named in the sealed value.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::{Mutex, RwLock, RwLockReadGuard};
use rocksdb::{BoundColumnFamily, DBRawIteratorWithThreadMode, ReadOptions};
use zeroize::Zeroizing;

use super::{Db, StoreInner, engine};
use crate::cipher::{AeadKey, Sealed, Suite};
use crate::error::{Error, Result};
use crate::keyring::TableEntry;

/// A table's value keys and which one seals new values.
pub(crate) struct Keys {
    /// By version. A table has one or two live versions; a scan beats hashing.
    versions: Vec<(u32, Arc<AeadKey>)>,
    current: u32,
}

impl Keys {
    fn get(&self, version: u32) -> Option<&Arc<AeadKey>> {
        self.versions.iter().find(|(v, _)| *v == version).map(|(_, k)| k)
    }
}

pub(crate) struct TableState {
    pub(crate) id: u32,
    pub(crate) name: String,
    pub(crate) cf: String,
    pub(crate) seal: bool,
    pub(crate) suite: Suite,
    /// Writers hold a read guard from sealing until the write is in the memtable, and
    /// readers from the read until the value is opened; rotation and retirement take the
    /// write guard, so no write lands under a version older than the current one once a
    /// rotation returns, and no read still needs a retired one.
    keys: RwLock<Keys>,
    /// Set when the table's master key was revoked: (master key, why).
    revoked: RwLock<Option<(String, String)>>,
    /// Values re-sealed under the current version by compaction.
    pub(crate) resealed: AtomicU64,
    /// Values compaction could not open (they keep their old version).
    pub(crate) reseal_failures: AtomicU64,
}

impl TableState {
    pub(crate) fn new(entry: &TableEntry, keys: HashMap<u32, Arc<AeadKey>>) -> TableState {
        TableState {
            id: entry.envelope.table_id,
            name: entry.name.clone(),
            cf: super::cf_name(entry.envelope.table_id),
            seal: entry.value_seal,
            suite: entry.envelope.suite,
            keys: RwLock::new(Keys {
                versions: keys.into_iter().collect(),
                current: entry.envelope.current,
            }),
            revoked: RwLock::new(None),
            resealed: AtomicU64::new(0),
            reseal_failures: AtomicU64::new(0),
        }
    }

    /// Adds a value key version and makes it the one that seals new values. Returns once
    /// every write sealed under an older version is in the memtable.
    pub(crate) fn make_current(&self, version: u32, key: Arc<AeadKey>) {
        let mut keys = self.keys.write();
        keys.versions.retain(|(v, _)| *v != version);
        keys.versions.push((version, key));
        keys.current = version;
    }

    /// Forgets a value key version (wiped once no operation in flight holds it). Returns
    /// once every read that might still need it has finished.
    pub(crate) fn forget(&self, version: u32) {
        self.keys.write().versions.retain(|(v, _)| *v != version);
    }

    /// The value key of `version` (for the seal-count check).
    pub(crate) fn key(&self, version: u32) -> Option<Arc<AeadKey>> {
        self.keys.read().get(version).cloned()
    }

    /// Fails closed: every later operation returns [`Error::KeyRevoked`] and the value
    /// keys are dropped (wiped, once no operation in flight still holds one).
    pub(crate) fn revoke(&self, key: &str, why: &str) {
        *self.revoked.write() = Some((key.to_owned(), why.to_owned()));
        self.keys.write().versions.clear();
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

    /// The guard writers and readers hold (none for tables without value sealing).
    fn guard(&self) -> Option<RwLockReadGuard<'_, Keys>> {
        self.seal.then(|| self.keys.read())
    }

    /// Compaction's re-seal: a value sealed under an older version is opened and sealed
    /// again under the current one into `out`. Returns false to keep the value as it is
    /// (already current, or not openable, which is counted and leaves it untouched).
    pub(crate) fn reseal(&self, store_id: &[u8; 16], key: &[u8], value: &[u8], out: &mut Vec<u8>) -> bool {
        let Ok(sealed) = Sealed::parse(value) else {
            self.reseal_failures.fetch_add(1, Ordering::Relaxed);
            return false;
        };
        // `read_recursive`: a writer holding a read guard may be waiting for this very
        // compaction (a write stall) while a rotation waits for the write guard.
        let keys = self.keys.read_recursive();
        if sealed.key_version == keys.current {
            return false;
        }
        let (Some(old), Some(new)) = (keys.get(sealed.key_version), keys.get(keys.current)) else {
            self.reseal_failures.fetch_add(1, Ordering::Relaxed);
            return false;
        };
        let resealed = with_aad(store_id, self.id, key, |aad| {
            let plain = zeroize::Zeroizing::new(old.open(aad, value)?);
            new.seal_into(aad, &plain, out)
        });
        if resealed.is_err() {
            out.clear();
            self.reseal_failures.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        self.resealed.fetch_add(1, Ordering::Relaxed);
        true
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
    /// Seals `value` under the current version; the caller holds `keys` (from
    /// [`TableState::guard`]) until the write is applied.
    fn encode(&self, keys: Option<&Keys>, store_id: &[u8; 16], key: &[u8], value: &[u8]) -> Result<Vec<u8>> {
        let Some(keys) = keys else {
            return Ok(value.to_vec());
        };
        let Some(aead) = keys.get(keys.current) else {
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
        self.decode_locked(&self.keys.read(), store_id, key, stored)
    }

    fn decode_locked(&self, keys: &Keys, store_id: &[u8; 16], key: &[u8], stored: &[u8]) -> Result<Vec<u8>> {
        let location = || format!("table {:?}, key {}", self.name, key_preview(key));
        let sealed = Sealed::parse(stored).map_err(|_| Error::Authentication { location: location() })?;
        let Some(aead) = keys.get(sealed.key_version) else {
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
    pub fn put(&self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Result<()> {
        let (key, value) = (key.as_ref(), value.as_ref());
        let keys = self.state.guard();
        let stored = self
            .state
            .encode(keys.as_deref(), &self.store.store_id, key, value)?;
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
    pub fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<Vec<u8>>> {
        self.get_opt(key.as_ref(), &ReadOptions::default())
    }

    fn get_opt(&self, key: &[u8], opts: &ReadOptions) -> Result<Option<Vec<u8>>> {
        let keys = self.state.guard();
        match self
            .store
            .db
            .get_pinned_cf_opt(&self.cf()?, key, opts)
            .map_err(engine)?
        {
            Some(stored) => Ok(Some(match &keys {
                Some(keys) => self
                    .state
                    .decode_locked(keys, &self.store.store_id, key, &stored)?,
                None => stored.to_vec(),
            })),
            None => Ok(None),
        }
    }

    /// Deletes `key`.
    ///
    /// # Errors
    /// [`Error::Engine`].
    pub fn delete(&self, key: impl AsRef<[u8]>) -> Result<()> {
        self.store
            .db
            .delete_cf_opt(&self.cf()?, key.as_ref(), &self.store.write_options)
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
        let view = self.store.views.enter();
        let mut raw = self.store.db.raw_iterator_cf_opt(&self.cf()?, opts);
        raw.seek_to_first();
        Ok(TableIter {
            raw,
            table: self,
            done: false,
            _view: view,
        })
    }
}

/// An iterator over `(key, value)` pairs of a table. Yields an error (and then stops) if
/// a value fails authentication or a file is corrupt.
pub struct TableIter<'a> {
    raw: DBRawIteratorWithThreadMode<'a, Db>,
    table: &'a Table,
    done: bool,
    _view: View<'a>,
}

/// Live snapshots and iterators, numbered in creation order: a data key version is
/// retired only once every view that might still read data under it is gone.
#[derive(Default)]
pub(crate) struct Views {
    next: AtomicU64,
    live: Mutex<BTreeMap<u64, usize>>,
}

impl Views {
    fn enter(&self) -> View<'_> {
        let serial = self.next.fetch_add(1, Ordering::SeqCst);
        *self.live.lock().entry(serial).or_default() += 1;
        View { views: self, serial }
    }

    /// The serial number the next view will get.
    pub(crate) fn next_serial(&self) -> u64 {
        self.next.load(Ordering::SeqCst)
    }

    /// How many live views were created before serial `before`.
    pub(crate) fn older_than(&self, before: u64) -> usize {
        self.live.lock().range(..before).map(|(_, n)| n).sum()
    }
}

/// A registered view; unregisters on drop.
pub(crate) struct View<'a> {
    views: &'a Views,
    serial: u64,
}

impl Drop for View<'_> {
    fn drop(&mut self) {
        let mut live = self.views.live.lock();
        if let Some(n) = live.get_mut(&self.serial) {
            *n -= 1;
            if *n == 0 {
                live.remove(&self.serial);
            }
        }
    }
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
            _ => Err(Error::engine(
                crate::EngineErrorKind::Other,
                "iterator returned no entry",
            )),
        };
        if item.is_err() {
            self.done = true;
        } else {
            self.raw.next();
        }
        Some(item)
    }
}

/// Writes to any tables, applied atomically by [`super::Store::write`]. Values are sealed
/// when the batch is written (under each table's data key version of that moment); until
/// then the batch holds them in memory, wiped on drop.
pub struct WriteBatch {
    store: Arc<StoreInner>,
    ops: Vec<Op>,
    error: Option<Error>,
}

struct Op {
    table: Arc<TableState>,
    key: Vec<u8>,
    /// `None` for a delete.
    value: Option<Zeroizing<Vec<u8>>>,
}

impl WriteBatch {
    pub(crate) fn new(store: Arc<StoreInner>) -> WriteBatch {
        WriteBatch {
            store,
            ops: Vec::new(),
            error: None,
        }
    }

    /// Adds a put.
    pub fn put(&mut self, table: &Table, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        self.add(table, key.as_ref(), Some(Zeroizing::new(value.as_ref().to_vec())));
    }

    /// Adds a delete.
    pub fn delete(&mut self, table: &Table, key: impl AsRef<[u8]>) {
        self.add(table, key.as_ref(), None);
    }

    fn add(&mut self, table: &Table, key: &[u8], value: Option<Zeroizing<Vec<u8>>>) {
        if self.error.is_some() {
            return;
        }
        if !Arc::ptr_eq(&table.store, &self.store) {
            self.error = Some(Error::InvalidArgument(format!(
                "table {:?} belongs to another store",
                table.state.name
            )));
            return;
        }
        if let Err(e) = table.cf() {
            self.error = Some(e);
            return;
        }
        self.ops.push(Op {
            table: table.state.clone(),
            key: key.to_vec(),
            value,
        });
    }

    /// Number of operations in the batch.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Whether the batch is empty.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Seals every value and applies the batch, holding each table's key guard (in table
    /// id order) until RocksDB has applied it.
    pub(crate) fn apply(self, store: &Arc<StoreInner>) -> Result<()> {
        if !Arc::ptr_eq(store, &self.store) {
            return Err(Error::InvalidArgument(
                "the batch belongs to another store".into(),
            ));
        }
        if let Some(e) = self.error {
            return Err(e);
        }
        let store = &self.store;
        let mut tables: Vec<&Arc<TableState>> = self.ops.iter().map(|op| &op.table).collect();
        tables.sort_by_key(|t| t.id);
        tables.dedup_by_key(|t| t.id);
        let guards: Vec<(u32, Option<RwLockReadGuard<'_, Keys>>)> =
            tables.iter().map(|t| (t.id, t.guard())).collect();
        let mut batch = rocksdb::WriteBatch::default();
        for op in &self.ops {
            op.table.check()?;
            let cf = store
                .db
                .cf_handle(&op.table.cf)
                .ok_or_else(|| Error::NoSuchTable(op.table.name.clone()))?;
            match &op.value {
                Some(value) => {
                    let keys = guards
                        .binary_search_by_key(&op.table.id, |(id, _)| *id)
                        .ok()
                        .and_then(|i| guards[i].1.as_deref());
                    let stored = op.table.encode(keys, &store.store_id, &op.key, value)?;
                    batch.put_cf(&cf, &op.key, stored);
                }
                None => batch.delete_cf(&cf, &op.key),
            }
        }
        store.db.write_opt(batch, &store.write_options).map_err(engine)
    }
}

/// A consistent, read-only view of every table at one point in time.
pub struct Snapshot<'a> {
    snapshot: rocksdb::SnapshotWithThreadMode<'a, Db>,
    _view: View<'a>,
}

impl<'a> Snapshot<'a> {
    pub(crate) fn new(store: &'a Arc<StoreInner>) -> Snapshot<'a> {
        Snapshot {
            _view: store.views.enter(),
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
    pub fn get(&self, table: &Table, key: impl AsRef<[u8]>) -> Result<Option<Vec<u8>>> {
        table.get_opt(key.as_ref(), &self.read_options(ReadOptions::default()))
    }

    /// Iterates over `table` as of the snapshot.
    ///
    /// # Errors
    /// As [`Table::scan`].
    pub fn scan<'t>(&'t self, table: &'t Table, options: &ScanOptions) -> Result<TableIter<'t>> {
        table.scan_opt(self.read_options(options.read_options()))
    }
}
