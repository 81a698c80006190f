//! The encrypted key-value store on RocksDB: a column family per table, a data key per
//! table, every byte of every file sealed (format 2), values optionally sealed one by one.
//!
//! Invariant: data keys are unwrapped once, at open (or when a table is created); reads,
//! writes, iteration, flush and compaction never call the KMS. A table's EDK is durable
//! in the keyring before the table's first write.
//! Not here: the file header and routing (`files.rs`), the keyring (`keyring`), the
//! RocksDB bridge (`ffi::rocksdb`).
//!
//! Security notes: every byte of every file is authenticated by the file system under
//! RocksDB (`ffi/rocksdb_shim.cc`, `files.rs`), bound to its store, table, file and
//! position. With value sealing on (`TableOptions::seal_values`), each value is also bound
//! to its store, table and record key above RocksDB.

mod checkpoint;
pub(crate) mod files;
mod lifecycle;
mod logscan;
mod maintain;
mod reencrypt;
mod rotate;
mod shred;
mod table;
mod watch;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use parking_lot::{Mutex, RwLock};
use rocksdb::{ColumnFamilyDescriptor, DBWithThreadMode, MultiThreaded};

pub use files::PREFIX_LEN;
use files::{FileKey, StoreFiles};
pub use lifecycle::UpgradeReport;
/// The `rocksdb` crate tde is built with, for raw options (`StoreOptions::dangerous`).
pub use rocksdb;
pub use table::{ScanOptions, Snapshot, Table, TableIter, WriteBatch};
use table::{TableState, Views};

use crate::audit::{AUDIT_MAC_LABEL, AuditLog, Reason};
use crate::cipher::Suite;
use crate::clock::SystemClock;
use crate::error::{Error, Result};
use crate::keyring::{self, Envelope, Keyring, KeyringData, RetryPolicy, STORE_TABLE_ID, TableEntry};
pub use crate::keys::{
    AutoRotation, KeyWatch, PendingReencrypt, ReencryptJob, ReencryptOptions, ReencryptProgress,
    ReencryptReport, RetiredKey, RewrapReport, RotatedKey, RotationPolicy, WatchReport,
};
use crate::keys::{EnvelopeId, KeyService, KeyVersionInfo, Named, Scope};
use crate::kms::Kms;
use crate::secret::DataKey;

type Db = DBWithThreadMode<MultiThreaded>;

/// RocksDB background jobs (flushes and compactions) of a store.
const BACKGROUND_JOBS: i32 = 2;

/// The service key used when neither the store nor the table names a master key.
pub const DEFAULT_MASTER_KEY: &str = "alias/acs/tde";

/// How to create or open a store.
#[derive(Clone)]
pub struct StoreOptions {
    kms: Arc<dyn Kms>,
    kms_uri: Option<String>,
    default_key: Option<String>,
    suite: Suite,
    unwrap_parallelism: usize,
    retry: RetryPolicy,
    block_cache_bytes: Option<usize>,
    compression: bool,
    sync_writes: bool,
    seal_limit: u64,
    /// Where KMS calls are recorded instead of the store's own trail (backups record work
    /// on a scratch copy in the trail of what they serve).
    pub(crate) audit: Option<Arc<AuditLog>>,
    raw: Option<RawOptions>,
}

impl std::fmt::Debug for StoreOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreOptions")
            .field("kms", &self.kms.describe())
            .field("default_key", &self.default_key)
            .field("suite", &self.suite)
            .finish_non_exhaustive()
    }
}

impl StoreOptions {
    /// Options with `kms` and defaults for everything else.
    pub fn new(kms: Arc<dyn Kms>) -> StoreOptions {
        StoreOptions {
            kms,
            kms_uri: None,
            default_key: None,
            suite: Suite::Aes256Gcm,
            unwrap_parallelism: 32,
            retry: RetryPolicy::default(),
            block_cache_bytes: None,
            compression: true,
            sync_writes: false,
            seal_limit: u64::MAX,
            audit: None,
            raw: None,
        }
    }

    /// Settings that weaken protection (see [`crate::dangerous`]).
    pub fn dangerous(self) -> crate::dangerous::Dangerous<StoreOptions> {
        crate::dangerous::Dangerous(self)
    }

    /// The KMS URI to record in the store (the CLI reopens with it). Default: the KMS's
    /// own description.
    #[must_use]
    pub fn kms_uri(mut self, uri: impl Into<String>) -> StoreOptions {
        self.kms_uri = Some(uri.into());
        self
    }

    /// The master key for the store-level key and for tables that do not choose one.
    /// Default: the service key `alias/acs/tde`. Only used when creating a store.
    #[must_use]
    pub fn default_key(mut self, key: impl Into<String>) -> StoreOptions {
        self.default_key = Some(key.into());
        self
    }

    /// Suite of the store-level key and default for tables. Default: AES-256-GCM.
    #[must_use]
    pub fn suite(mut self, suite: Suite) -> StoreOptions {
        self.suite = suite;
        self
    }

    /// Most KMS calls in flight while unwrapping keys at open. Default: 32.
    #[must_use]
    pub fn unwrap_parallelism(mut self, n: usize) -> StoreOptions {
        self.unwrap_parallelism = n.max(1);
        self
    }

    /// Retries of throttled or unavailable KMS calls at open. Default: [`RetryPolicy::default`].
    #[must_use]
    pub fn retry(mut self, retry: RetryPolicy) -> StoreOptions {
        self.retry = retry;
        self
    }

    /// RocksDB block cache size; `Some(0)` disables the block cache. Default: RocksDB's
    /// (32 MiB).
    #[must_use]
    pub fn block_cache_bytes(mut self, bytes: Option<usize>) -> StoreOptions {
        self.block_cache_bytes = bytes;
        self
    }

    /// LZ4 compression of SST blocks (effective only for tables without value sealing,
    /// since sealed values do not compress). Default: on.
    #[must_use]
    pub fn compression(mut self, on: bool) -> StoreOptions {
        self.compression = on;
        self
    }

    /// fsync the WAL on every write. Default: off (as RocksDB).
    #[must_use]
    pub fn sync_writes(mut self, on: bool) -> StoreOptions {
        self.sync_writes = on;
        self
    }

    /// Lowers the number of values one data key version may seal below its suite's limit
    /// ([`crate::cipher::Suite::seal_limit`]: 2^32 for the GCM suites, the bound for random
    /// 96-bit nonces; none for AEGIS-256), which is the default. Automatic rotation
    /// ([`Store::maintain_keys`]) rotates a version at 3/4 of it; at the limit, writes to
    /// the table fail with [`Error::KeyExhausted`] until the key is rotated.
    #[must_use]
    pub fn seal_limit(mut self, limit: u64) -> StoreOptions {
        self.seal_limit = limit.max(1);
        self
    }

    /// The RocksDB options tde gives a store's column families (block cache, compression,
    /// WAL recovery mode), without the encrypted Env. Public so that benchmarks configure
    /// plain RocksDB the same way.
    pub fn rocksdb_options(block_cache_bytes: Option<usize>, compression: bool) -> rocksdb::Options {
        let mut opts = rocksdb::Options::default();
        opts.create_missing_column_families(true);
        opts.set_compression_type(if compression {
            rocksdb::DBCompressionType::Lz4
        } else {
            rocksdb::DBCompressionType::None
        });
        opts.set_max_background_jobs(BACKGROUND_JOBS);
        // The file system cuts a torn tail of a log itself (and says so); anything else that
        // does not authenticate is an error at open, not silently dropped data.
        opts.set_wal_recovery_mode(rocksdb::DBRecoveryMode::AbsoluteConsistency);
        opts.set_bytes_per_sync(1 << 20);
        let mut block = rocksdb::BlockBasedOptions::default();
        // Point reads of absent keys skip the table files that cannot hold them.
        block.set_bloom_filter(10.0, false);
        match block_cache_bytes {
            Some(0) => block.disable_cache(),
            Some(bytes) => block.set_block_cache(&rocksdb::Cache::new_lru_cache(bytes)),
            None => {}
        }
        opts.set_block_based_table_factory(&block);
        opts
    }
}

/// Facts about a table.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TableInfo {
    /// Name.
    pub name: String,
    /// Internal id (its column family is `t<id>`).
    pub id: u32,
    /// Master key as configured.
    pub master_key: String,
    /// Suite.
    pub suite: Suite,
    /// Whether values are sealed with AEAD.
    pub value_seal: bool,
    /// Current data key version.
    pub data_key_version: u32,
    /// Every data key version: state and seals (counted live).
    pub versions: Vec<KeyVersionInfo>,
}

/// Options for a new table.
#[derive(Debug, Clone)]
pub struct TableOptions {
    master_key: Option<String>,
    suite: Option<Suite>,
    value_seal: bool,
}

impl Default for TableOptions {
    /// The store's default master key and suite; values not sealed one by one (the file
    /// layer authenticates every byte).
    fn default() -> TableOptions {
        TableOptions {
            master_key: None,
            suite: None,
            value_seal: false,
        }
    }
}

impl TableOptions {
    /// The defaults.
    pub fn new() -> TableOptions {
        TableOptions::default()
    }

    /// The master key that wraps the table's data key. Default: the store's default key.
    #[must_use]
    pub fn master_key(mut self, key: impl Into<String>) -> TableOptions {
        self.master_key = Some(key.into());
        self
    }

    /// The suite. Default: the store's suite.
    #[must_use]
    pub fn suite(mut self, suite: Suite) -> TableOptions {
        self.suite = Some(suite);
        self
    }

    /// Seal each value with AEAD as well, bound to its table, record key and key
    /// version. Default: off. Every byte of every file is authenticated either way (the
    /// file layer seals 4 KiB chunks and log frames); sealing values adds a binding of
    /// each value to its record that holds above RocksDB, at the price of an AEAD
    /// operation per read and write, 28–54 bytes per value, and values that no longer
    /// compress.
    #[must_use]
    pub fn seal_values(mut self, on: bool) -> TableOptions {
        self.value_seal = on;
        self
    }
}

/// Changes to the RocksDB options of a store (see [`crate::dangerous::Dangerous`]).
pub type RawOptions = Arc<dyn Fn(&mut rocksdb::Options) + Send + Sync>;

impl crate::dangerous::Dangerous<StoreOptions> {
    /// **Raw RocksDB options.** `change` is applied to the options of the store and of
    /// every column family, before tde installs its encrypted environment and listener
    /// (which it always does, whatever `change` sets). Options that would make RocksDB
    /// rewrite bytes of an existing file under the same keystream, or read and write
    /// around the encrypted file layer, are refused when the store opens:
    /// `recycle_log_file_num` > 0, `allow_mmap_reads`, `allow_mmap_writes`. (tde offers
    /// no SST ingestion, whose `write_global_seqno` would rewrite a file in place.)
    pub fn rocksdb_options(
        self,
        change: impl Fn(&mut rocksdb::Options) + Send + Sync + 'static,
    ) -> StoreOptions {
        let mut options = self.0;
        options.raw = Some(Arc::new(change));
        options
    }
}

impl StoreInner {
    /// Flushes every memtable to SST files and syncs the WAL.
    pub(crate) fn flush_all(&self) -> Result<()> {
        let names: Vec<String> = std::iter::once("default".to_owned())
            .chain(self.tables.read().values().map(|t| t.cf.clone()))
            .collect();
        for name in names {
            if let Some(cf) = self.db.cf_handle(&name) {
                self.db.flush_cf(&cf).map_err(engine)?;
            }
        }
        self.db.flush_wal(true).map_err(engine)
    }

    /// The KMS the store uses now.
    pub(crate) fn kms(&self) -> Arc<dyn Kms> {
        self.keys.kms()
    }
}

/// The name the audit trail and messages use for the store-level key.
pub(crate) const STORE_LABEL: &str = "(store)";

/// The envelope of the store-level key, named.
pub(crate) fn store_envelope() -> Named {
    Named {
        id: EnvelopeId::Store,
        label: STORE_LABEL.to_owned(),
    }
}

/// The envelope of table `id` named `name`.
pub(crate) fn table_envelope(id: u32, name: &str) -> Named {
    Named {
        id: EnvelopeId::Table(id),
        label: name.to_owned(),
    }
}

pub(crate) struct StoreInner {
    path: PathBuf,
    pub(crate) db: Db,
    files: Arc<StoreFiles>,
    keyring: Mutex<Keyring>,
    tables: RwLock<BTreeMap<String, Arc<TableState>>>,
    /// The key lifecycle: KMS (replaced by a migration), retries, audit trail.
    keys: KeyService,
    /// What the store was opened with (to reopen it).
    options: StoreOptions,
    pub(crate) store_id: [u8; 16],
    suite: Suite,
    clock: SystemClock,
    pub(crate) write_options: rocksdb::WriteOptions,
    cf_options: rocksdb::Options,
    views: Views,
    seal_limit: u64,
    /// One re-encryption pass at a time.
    reencrypting: Mutex<()>,
    /// Logs whose torn tails were cut at open: (file name, bytes cut).
    torn: Mutex<Vec<(String, u64)>>,
}

impl Drop for StoreInner {
    fn drop(&mut self) {
        // Best effort: a failure only means the next open counts from the last save.
        let _ = self.save_seal_counts();
    }
}

/// An encrypted key-value store. Cheap to clone (a handle); safe to share between
/// threads.
#[derive(Clone)]
pub struct Store {
    inner: Arc<StoreInner>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

fn engine(e: rocksdb::Error) -> Error {
    use rocksdb::ErrorKind as K;
    // A file's bytes that failed authentication in tde's file system under RocksDB.
    if e.kind() == K::Corruption {
        let message = e.clone().into_string();
        if let Some(at) = message.find(crate::ffi::rocksdb::AUTH_MARKER) {
            return Error::Authentication {
                location: message[at + crate::ffi::rocksdb::AUTH_MARKER.len()..].to_owned(),
            };
        }
    }
    let kind = match e.kind() {
        K::Corruption => crate::EngineErrorKind::Corruption,
        K::IOError => crate::EngineErrorKind::Io,
        K::Busy | K::TryAgain | K::TimedOut => crate::EngineErrorKind::Busy,
        _ => crate::EngineErrorKind::Other,
    };
    Error::engine(kind, e.into_string())
}

fn cf_name(id: u32) -> String {
    format!("t{id}")
}

fn parse_store_id(hex: &str) -> Result<[u8; 16]> {
    crate::hex::decode(hex)?.try_into().map_err(|_| Error::Format {
        what: "store id",
        detail: "not 16 bytes".into(),
    })
}

/// Where a value key's seal count starts, and where it stops.
#[derive(Clone, Copy)]
struct SealCount {
    prior: u64,
    limit: u64,
}

fn value_key(
    suite: Suite,
    dk: &DataKey,
    store_id: &[u8; 16],
    table_id: u32,
    version: u32,
    count: SealCount,
) -> Result<crate::cipher::AeadKey> {
    let mut info = b"tde kv value key\0".to_vec();
    info.extend_from_slice(&table_id.to_le_bytes());
    info.extend_from_slice(&version.to_le_bytes());
    let key = crate::cipher::kdf::derive_key(dk, store_id, &info, suite.key_len());
    Ok(crate::cipher::AeadKey::new(suite, version, &key)?
        .with_prior_seals(count.prior)
        .with_seal_limit(count.limit))
}

/// A table's column family options: the store's, plus (for tables with value sealing)
/// the compaction filter that re-seals values under the current data key version.
fn table_cf_options(
    base: &rocksdb::Options,
    state: Option<&Arc<TableState>>,
    store_id: [u8; 16],
) -> rocksdb::Options {
    let mut options = base.clone();
    if let Some(state) = state.filter(|s| s.seal) {
        let state = Arc::downgrade(state);
        crate::ffi::rocksdb::set_value_rewrite(
            &mut options,
            "tde-reseal",
            Arc::new(move |key: &[u8], value: &[u8], out: &mut Vec<u8>| {
                state
                    .upgrade()
                    .is_some_and(|s| s.reseal(&store_id, key, value, out))
            }),
        );
    }
    options
}

fn check_layouts() -> Result<()> {
    static CHECKED: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    CHECKED
        .get_or_init(|| crate::ffi::rocksdb::layout_check().map_err(|e| e.to_string()))
        .clone()
        .map_err(Error::InvalidArgument)?;
    if crate::ffi::rocksdb::prefix_length() != PREFIX_LEN {
        return Err(Error::InvalidArgument(
            "the shim's file prefix length changed".into(),
        ));
    }
    Ok(())
}

impl Store {
    /// Creates a new store in `path` (which must not exist, or be an empty directory).
    /// Calls the KMS once, for the store-level data key.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if `path` holds anything; [`Error::Kms`] if the default
    /// master key cannot be used; [`Error::Io`], [`Error::Engine`].
    pub fn create(path: impl AsRef<Path>, options: StoreOptions) -> Result<Store> {
        check_layouts()?;
        let path = path.as_ref();
        if path.exists() {
            let mut entries =
                std::fs::read_dir(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
            if entries.next().is_some() {
                return Err(Error::InvalidArgument(format!(
                    "{} already exists and is not empty; a store is created in a new directory",
                    path.display()
                )));
            }
        }
        let existed = path.exists();
        std::fs::create_dir_all(path).map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
        let mut store_id = [0u8; 16];
        crate::error::os_random(&mut store_id)?;
        let store_hex = crate::hex::encode(&store_id);
        let default_key = options
            .default_key
            .clone()
            .unwrap_or_else(|| DEFAULT_MASTER_KEY.to_owned());
        let generated = AuditLog::open(path, &store_hex).and_then(|audit| {
            let keys = KeyService::new(
                Scope::Store(store_hex.clone()),
                options.kms.clone(),
                Arc::new(audit),
                options.retry,
            );
            keys.generate(&store_envelope(), &default_key, options.suite, 1, Reason::Create)
        });
        let generated = match generated {
            Ok(g) => g,
            Err(e) => {
                // No store came to be (the KMS refused its first key): leave the
                // directory as it was, so that a later create can use it.
                if existed {
                    let _ = std::fs::remove_file(path.join(crate::audit::AUDIT_FILE));
                } else {
                    let _ = std::fs::remove_dir_all(path);
                }
                return Err(e);
            }
        };
        Keyring::create(
            path,
            KeyringData {
                format: keyring::FORMAT,
                store_id: store_hex,
                kms: options.kms_uri.clone().unwrap_or_else(|| options.kms.describe()),
                default_key: default_key.clone(),
                store_key: Envelope {
                    table_id: STORE_TABLE_ID,
                    cmk: default_key,
                    suite: options.suite,
                    versions: vec![generated.record.clone()],
                    current: 1,
                    retired: Vec::new(),
                    reencrypt: None,
                },
                tables: Vec::new(),
                next_table_id: 1,
                mac: String::new(),
            },
            &generated.key,
        )?;
        drop(generated);
        Store::open_inner(path, options, true)
    }

    /// Opens an existing store: reads the keyring and unwraps every data key once, with
    /// bounded parallelism and retries.
    ///
    /// # Errors
    /// [`Error::KeysUnavailable`] naming every table and key that could not be unwrapped
    /// (nothing on disk changes); [`Error::InvalidArgument`] if `path` is not a store;
    /// [`Error::Corrupt`] for a damaged keyring; [`Error::Engine`] if RocksDB refuses
    /// the files (e.g. they belong to another store).
    pub fn open(path: impl AsRef<Path>, options: StoreOptions) -> Result<Store> {
        check_layouts()?;
        Store::open_inner(path.as_ref(), options, false)
    }

    fn open_inner(path: &Path, options: StoreOptions, create: bool) -> Result<Store> {
        let mut keyring = Keyring::open(path)?;
        let data = keyring.data().clone();
        let store_id = parse_store_id(&data.store_id)?;

        // Unwrap every data key once. Nothing the keyring says counts until its tag
        // checks out, which the store-level keys allow; then the trail is keyed.
        let audit = match &options.audit {
            Some(audit) => audit.clone(),
            None => Arc::new(AuditLog::open(path, &data.store_id)?),
        };
        let keys = KeyService::new(
            Scope::Store(data.store_id.clone()),
            options.kms.clone(),
            audit.clone(),
            options.retry,
        );
        let envelopes: Vec<(Named, &Envelope)> = std::iter::once((store_envelope(), &data.store_key))
            .chain(
                data.tables
                    .iter()
                    .map(|t| (table_envelope(t.envelope.table_id, &t.name), &t.envelope)),
            )
            .collect();
        let unwrapped = keys.unwrap_all(
            &envelopes,
            options.unwrap_parallelism,
            Reason::Open,
            &mut |keys| {
                keyring.authenticate(
                    keys.iter()
                        .filter(|k| k.id == EnvelopeId::Store)
                        .map(|k| (k.version, &k.key)),
                )?;
                let current = data.store_key.current;
                if let Some(key) = keyring.mac_key(current, AUDIT_MAC_LABEL) {
                    audit.set_key(current, key);
                }
                Ok(())
            },
        )?;

        let files = Arc::new(StoreFiles::new(store_id, data.store_key.current));
        let mut by_table: BTreeMap<u32, Vec<(u32, Suite, &DataKey)>> = BTreeMap::new();
        for k in &unwrapped {
            let table_id = k.id.table_id();
            files.add_key(
                table_id,
                k.version,
                FileKey::derive(k.suite, &k.key, &store_id, table_id, k.version),
            );
            by_table
                .entry(table_id)
                .or_default()
                .push((k.version, k.suite, &k.key));
        }
        let mut tables = BTreeMap::new();
        for entry in &data.tables {
            let id = entry.envelope.table_id;
            files.set_current(&cf_name(id), id, entry.envelope.current);
            let mut aead = std::collections::HashMap::new();
            for (version, suite, key) in by_table.get(&id).map(Vec::as_slice).unwrap_or_default() {
                aead.insert(
                    *version,
                    Arc::new(value_key(
                        *suite,
                        key,
                        &store_id,
                        id,
                        *version,
                        SealCount {
                            prior: entry
                                .envelope
                                .versions
                                .iter()
                                .find(|v| v.version == *version)
                                .map_or(0, |v| v.seals),
                            limit: options.seal_limit,
                        },
                    )?),
                );
            }
            if !entry.dropping {
                tables.insert(entry.name.clone(), Arc::new(TableState::new(entry, aead)));
            }
        }
        drop(by_table);
        drop(unwrapped);

        let crypto: Arc<dyn crate::ffi::rocksdb::FileCrypto> = files.clone();
        let env = crate::ffi::rocksdb::encrypted_env(&crypto)?;
        // One block cache for the whole store: every column family gets a copy of these
        // options, which share the table factory and its cache.
        let mut cf_options = StoreOptions::rocksdb_options(options.block_cache_bytes, options.compression);
        if let Some(change) = &options.raw {
            change(&mut cf_options);
            let risky = crate::ffi::rocksdb::risky_options(&cf_options);
            if !risky.is_empty() {
                return Err(Error::InvalidArgument(format!(
                    "RocksDB options refused: {} (they would rewrite encrypted bytes under a used \
                     keystream or bypass the encrypted file layer)",
                    risky.join(", ")
                )));
            }
        }
        let mut opts = cf_options.clone();
        opts.create_if_missing(create);
        opts.set_env(&env);
        crate::ffi::rocksdb::add_sst_listener(&mut opts, &crypto)?;

        let mut names: Vec<String> = if create {
            vec!["default".to_owned()]
        } else {
            // RocksDB's log reader can loop forever on one damaged record header.
            logscan::check_logs(&files, path)?;
            Db::list_cf(&opts, path).map_err(engine)?
        };
        for entry in data.tables.iter().filter(|t| !t.dropping) {
            let name = cf_name(entry.envelope.table_id);
            if !names.contains(&name) {
                names.push(name);
            }
        }
        let descriptors = names.iter().map(|n| {
            let state = tables.values().find(|t: &&Arc<TableState>| t.cf == *n);
            ColumnFamilyDescriptor::new(n, table_cf_options(&cf_options, state, store_id))
        });
        let db = Db::open_cf_descriptors(&opts, path, descriptors).map_err(engine)?;
        // Column families whose table is no longer in the keyring, or is marked as being
        // dropped (a crash during a drop): finish the drop.
        for name in &names {
            let live = name == "default"
                || data
                    .tables
                    .iter()
                    .any(|t| !t.dropping && cf_name(t.envelope.table_id) == *name);
            if !live {
                db.drop_cf(name).map_err(engine)?;
            }
        }
        let mut write_options = rocksdb::WriteOptions::default();
        write_options.set_sync(options.sync_writes);
        let store = Store {
            inner: Arc::new(StoreInner {
                path: path.to_path_buf(),
                db,
                files,
                keyring: Mutex::new(keyring),
                tables: RwLock::new(tables),
                keys,
                store_id,
                suite: options.suite,
                clock: SystemClock,
                write_options,
                cf_options,
                views: Views::default(),
                seal_limit: options.seal_limit,
                options,
                reencrypting: Mutex::new(()),
                torn: Mutex::new(Vec::new()),
            }),
        };
        if data.tables.iter().any(|t| t.dropping) {
            store.finish_drops()?;
        }
        // A crash mid-append leaves a torn last frame in a log; the file system cut it.
        // Never silent: each cut is in the audit trail and in `Store::torn_tails`.
        let torn = store.inner.files.take_torn();
        for (file, bytes) in &torn {
            store.inner.keys.audit().append(&crate::audit::AuditEvent {
                op: "torn-tail-cut",
                key: "",
                table: file,
                reason: Reason::Open,
                error: Some(format!("{bytes} bytes of a torn last frame cut")),
            })?;
        }
        *store.inner.torn.lock() = torn;
        Ok(store)
    }

    /// The logs whose torn last frame (a crash mid-append) was cut when the store opened:
    /// (file name, bytes cut). Each is also in the audit trail (`torn-tail-cut`).
    pub fn torn_tails(&self) -> Vec<(String, u64)> {
        self.inner.torn.lock().clone()
    }

    /// Removes the keyring entries of tables whose drop a crash interrupted (their
    /// column families are gone by now), and retires the log that held their records.
    fn finish_drops(&self) -> Result<()> {
        let inner = &self.inner;
        let mut keyring = inner.keyring.lock();
        let dropping: Vec<u32> = keyring
            .data()
            .tables
            .iter()
            .filter(|t| t.dropping)
            .map(|t| t.envelope.table_id)
            .collect();
        keyring.update(|data| {
            data.tables.retain(|t| !t.dropping);
            Ok(())
        })?;
        drop(keyring);
        for id in dropping {
            inner.files.remove_table(&cf_name(id), id);
        }
        self.retire_log()
    }

    /// Verifies the store's audit trail with its keys: the hash chain, and the MAC of
    /// every keyed record (see [`crate::audit`]).
    ///
    /// # Errors
    /// [`Error::Authentication`] for a forged record; [`Error::Corrupt`] for a broken
    /// chain; [`Error::Io`].
    pub fn verify_audit(&self) -> Result<crate::audit::AuditReport> {
        let keyring = self.inner.keyring.lock();
        let path = self.inner.path.join(crate::audit::AUDIT_FILE);
        crate::audit::verify_keyed(&path, &keyring.data().store_id, &|v| {
            keyring.mac_key(v, AUDIT_MAC_LABEL)
        })
    }

    /// The store's directory.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The random store id (hex).
    pub fn store_id(&self) -> String {
        crate::hex::encode(&self.inner.store_id)
    }

    /// The KMS recorded when the store was created (URI or description).
    pub fn recorded_kms(&self) -> String {
        self.inner.keyring.lock().data().kms.clone()
    }

    /// Creates a table with its own data key (one KMS call). The wrapped key is durable
    /// in the keyring before the table exists.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if the name is taken or empty; [`Error::Kms`] if the
    /// master key cannot be used; [`Error::Io`], [`Error::Engine`].
    pub fn create_table(&self, name: &str, options: &TableOptions) -> Result<Table> {
        if name.is_empty() || name.len() > 255 {
            return Err(Error::InvalidArgument("table names are 1 to 255 bytes".into()));
        }
        let inner = &self.inner;
        let mut keyring = inner.keyring.lock();
        if keyring.data().tables.iter().any(|t| t.name == name) {
            return Err(Error::InvalidArgument(format!("table {name:?} already exists")));
        }
        let id = keyring.data().next_table_id;
        let cmk = options
            .master_key
            .clone()
            .unwrap_or_else(|| keyring.data().default_key.clone());
        let suite = options.suite.unwrap_or(inner.suite);
        let generated =
            inner
                .keys
                .generate(&table_envelope(id, name), &cmk, suite, 1, Reason::CreateTable)?;
        let entry = TableEntry {
            name: name.to_owned(),
            value_seal: options.value_seal,
            dropping: false,
            envelope: Envelope {
                table_id: id,
                cmk,
                suite,
                versions: vec![generated.record.clone()],
                current: 1,
                retired: Vec::new(),
                reencrypt: None,
            },
        };
        keyring.update(|data| {
            data.tables.push(entry.clone());
            data.next_table_id = id + 1;
            Ok(())
        })?;
        let cf = cf_name(id);
        inner.files.add_key(
            id,
            1,
            FileKey::derive(suite, &generated.key, &inner.store_id, id, 1),
        );
        inner.files.set_current(&cf, id, 1);
        let mut aead = std::collections::HashMap::new();
        aead.insert(
            1,
            Arc::new(value_key(
                suite,
                &generated.key,
                &inner.store_id,
                id,
                1,
                SealCount {
                    prior: 0,
                    limit: inner.seal_limit,
                },
            )?),
        );
        let state = Arc::new(TableState::new(&entry, aead));
        inner
            .db
            .create_cf(
                &cf,
                &table_cf_options(&inner.cf_options, Some(&state), inner.store_id),
            )
            .map_err(engine)?;
        inner.tables.write().insert(name.to_owned(), state.clone());
        Ok(Table::new(self.inner.clone(), state))
    }

    /// A handle on an existing table.
    ///
    /// # Errors
    /// [`Error::NoSuchTable`].
    pub fn table(&self, name: &str) -> Result<Table> {
        let state = self
            .inner
            .tables
            .read()
            .get(name)
            .cloned()
            .ok_or_else(|| Error::NoSuchTable(name.to_owned()))?;
        Ok(Table::new(self.inner.clone(), state))
    }

    /// Every table, in name order.
    pub fn tables(&self) -> Vec<TableInfo> {
        let keyring = self.inner.keyring.lock();
        let states = self.inner.tables.read();
        let mut out: Vec<TableInfo> = keyring
            .data()
            .tables
            .iter()
            .map(|t| TableInfo {
                name: t.name.clone(),
                id: t.envelope.table_id,
                master_key: t.envelope.cmk.clone(),
                suite: t.envelope.suite,
                value_seal: t.value_seal,
                data_key_version: t.envelope.current,
                versions: crate::keys::describe_envelope(
                    EnvelopeId::Table(t.envelope.table_id),
                    &t.name,
                    &t.envelope,
                    &|v| states.get(&t.name)?.key(v).map(|k| k.seals()),
                )
                .versions,
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Drops a table: its column family, then its keys from the keyring.
    ///
    /// # Errors
    /// [`Error::NoSuchTable`]; [`Error::Engine`], [`Error::Io`].
    pub fn drop_table(&self, name: &str) -> Result<()> {
        let inner = &self.inner;
        let mut keyring = inner.keyring.lock();
        let id = keyring
            .data()
            .tables
            .iter()
            .find(|t| t.name == name)
            .map(|t| t.envelope.table_id)
            .ok_or_else(|| Error::NoSuchTable(name.to_owned()))?;
        let cf = cf_name(id);
        // Mark, drop, remove: a crash at any point leaves a mark that the next open
        // finishes, never a table that comes back or keeps its wrapped keys.
        keyring.update(|data| {
            for t in data.tables.iter_mut().filter(|t| t.envelope.table_id == id) {
                t.dropping = true;
            }
            Ok(())
        })?;
        inner.tables.write().remove(name);
        inner.db.drop_cf(&cf).map_err(engine)?;
        keyring.update(|data| {
            data.tables.retain(|t| t.envelope.table_id != id);
            Ok(())
        })?;
        inner.files.remove_table(&cf, id);
        Ok(())
    }

    /// Applies a batch of writes to any tables atomically.
    ///
    /// # Errors
    /// The first error met while building the batch; [`Error::Engine`].
    pub fn write(&self, batch: WriteBatch) -> Result<()> {
        batch.apply(&self.inner)
    }

    /// A new, empty batch.
    pub fn batch(&self) -> WriteBatch {
        WriteBatch::new(self.inner.clone())
    }

    /// A consistent point-in-time view of every table.
    pub fn snapshot(&self) -> Snapshot<'_> {
        Snapshot::new(&self.inner)
    }

    /// Flushes every memtable to SST files and syncs the WAL.
    ///
    /// # Errors
    /// [`Error::Engine`].
    pub fn flush(&self) -> Result<()> {
        self.inner.flush_all()
    }

    /// Compacts every table fully (rewrites every SST file).
    ///
    /// # Errors
    /// [`Error::Engine`].
    pub fn compact(&self) -> Result<()> {
        let db = &self.inner.db;
        let mut opts = rocksdb::CompactOptions::default();
        opts.set_bottommost_level_compaction(rocksdb::BottommostLevelCompaction::Force);
        for name in self.column_families() {
            if let Some(cf) = db.cf_handle(&name) {
                db.compact_range_cf_opt(&cf, None::<&[u8]>, None::<&[u8]>, &opts);
            }
        }
        Ok(())
    }

    fn column_families(&self) -> Vec<String> {
        let mut names = vec!["default".to_owned()];
        names.extend(self.inner.tables.read().values().map(|t| t.cf.clone()));
        names
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kms::local::LocalKms;

    fn store() -> (tempfile::TempDir, Store) {
        let tmp = tempfile::tempdir().unwrap();
        let kms = Arc::new(LocalKms::create(tmp.path().join("kms")).unwrap());
        let store = Store::create(tmp.path().join("db"), StoreOptions::new(kms)).unwrap();
        (tmp, store)
    }

    #[test]
    fn a_crash_at_either_step_of_a_drop_never_brings_the_table_back() {
        for drop_cf_before_crash in [false, true] {
            let (tmp, store) = store();
            store.create_table("gone", &TableOptions::default()).unwrap();
            store.create_table("kept", &TableOptions::default()).unwrap();
            store.table("gone").unwrap().put(b"k", b"secret").unwrap();
            store.table("kept").unwrap().put(b"k", b"v").unwrap();
            let id = store.tables().iter().find(|t| t.name == "gone").unwrap().id;
            // The first step of a drop, then a crash (before or after the column family
            // went).
            store
                .inner
                .keyring
                .lock()
                .update(|d| {
                    for t in d.tables.iter_mut().filter(|t| t.name == "gone") {
                        t.dropping = true;
                    }
                    Ok(())
                })
                .unwrap();
            if drop_cf_before_crash {
                store.inner.db.drop_cf(&cf_name(id)).unwrap();
            }
            drop(store);
            let kms = Arc::new(LocalKms::open(tmp.path().join("kms")).unwrap());
            let store = Store::open(tmp.path().join("db"), StoreOptions::new(kms.clone())).unwrap();
            assert!(matches!(store.table("gone"), Err(Error::NoSuchTable(_))));
            assert_eq!(store.table("kept").unwrap().get(b"k").unwrap().unwrap(), b"v");
            assert!(
                store
                    .inner
                    .keyring
                    .lock()
                    .data()
                    .tables
                    .iter()
                    .all(|t| t.name != "gone")
            );
            assert!(store.inner.db.cf_handle(&cf_name(id)).is_none());
            drop(store);
            // And it stays gone.
            let store = Store::open(tmp.path().join("db"), StoreOptions::new(kms)).unwrap();
            assert_eq!(store.tables().len(), 1);
        }
    }

    fn raw_cf<'a>(store: &'a Store, table: &str) -> Arc<rocksdb::BoundColumnFamily<'a>> {
        let id = store.tables().into_iter().find(|t| t.name == table).unwrap().id;
        store.inner.db.cf_handle(&cf_name(id)).unwrap()
    }

    fn raw_get(store: &Store, table: &str, key: &[u8]) -> Vec<u8> {
        store
            .inner
            .db
            .get_cf(&raw_cf(store, table), key)
            .unwrap()
            .unwrap()
    }

    fn raw_put(store: &Store, table: &str, key: &[u8], value: &[u8]) {
        store.inner.db.put_cf(&raw_cf(store, table), key, value).unwrap();
    }

    #[test]
    fn values_moved_to_another_key_or_table_or_flipped_fail_authentication() {
        let (_tmp, store) = store();
        let sealed = TableOptions::default().seal_values(true);
        let a = store.create_table("a", &sealed).unwrap();
        let b = store.create_table("b", &sealed).unwrap();
        a.put(b"alice", b"balance=100").unwrap();
        a.put(b"mallory", b"balance=0").unwrap();
        let stored = raw_get(&store, "a", b"alice");
        assert!(
            !stored.windows(7).any(|w| w == b"balance"),
            "stored values are sealed"
        );

        raw_put(&store, "a", b"mallory", &stored);
        let err = a.get(b"mallory").unwrap_err();
        assert!(
            matches!(&err, Error::Authentication { location } if location.contains("\"a\"") && location.contains("mallory")),
            "{err}"
        );

        raw_put(&store, "b", b"alice", &stored);
        assert!(matches!(b.get(b"alice"), Err(Error::Authentication { .. })));

        for i in 0..stored.len() {
            let mut flipped = stored.clone();
            flipped[i] ^= 0x10;
            raw_put(&store, "a", b"alice", &flipped);
            assert!(a.get(b"alice").is_err(), "flipping byte {i} went unnoticed");
        }
        raw_put(&store, "a", b"alice", &stored[..10]);
        assert!(matches!(a.get(b"alice"), Err(Error::Authentication { .. })));
        raw_put(&store, "a", b"alice", &stored);
        assert_eq!(a.get(b"alice").unwrap().unwrap(), b"balance=100");
    }

    #[test]
    fn sst_files_are_encrypted_under_their_tables_key_and_the_wal_under_the_store_key() {
        let (tmp, store) = store();
        let a = store.create_table("a", &TableOptions::default()).unwrap();
        let b = store.create_table("b", &TableOptions::default()).unwrap();
        a.put(b"k", b"v").unwrap();
        b.put(b"k", b"v").unwrap();
        store.flush().unwrap();
        let table_of = |path: &std::path::Path| {
            let bytes = std::fs::read(path).unwrap();
            u32::from_le_bytes(bytes[28..32].try_into().unwrap())
        };
        let mut sst_tables = Vec::new();
        for entry in std::fs::read_dir(tmp.path().join("db")).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            if name.ends_with(".sst") {
                sst_tables.push(table_of(&path));
            } else if name.ends_with(".log") || name.starts_with("MANIFEST") || name == "CURRENT" {
                assert_eq!(table_of(&path), 0, "{name} is under the store key");
            }
        }
        sst_tables.sort_unstable();
        let ids: Vec<u32> = store.tables().iter().map(|t| t.id).collect();
        assert_eq!(sst_tables, ids, "one SST per table, each under its table's key");
    }

    #[test]
    fn unsealed_tables_store_values_as_given() {
        let (_tmp, store) = store();
        let t = store
            .create_table(
                "plain-values",
                &TableOptions {
                    value_seal: false,
                    ..TableOptions::default()
                },
            )
            .unwrap();
        t.put(b"k", b"compressible compressible").unwrap();
        assert_eq!(
            raw_get(&store, "plain-values", b"k"),
            b"compressible compressible"
        );
    }

    #[test]
    fn a_value_that_cannot_be_opened_stops_retirement_and_keeps_its_version() {
        let (_tmp, store) = store();
        let a = store
            .create_table("a", &TableOptions::default().seal_values(true))
            .unwrap();
        a.put(b"good", b"value").unwrap();
        let mut forged = raw_get(&store, "a", b"good");
        let last = forged.len() - 1;
        forged[last] ^= 1;
        raw_put(&store, "a", b"forged", &forged);
        store.flush().unwrap();
        store.rotate_data_key(Some("a")).unwrap();
        let err = store
            .reencrypt(super::ReencryptOptions::default())
            .wait()
            .unwrap_err();
        assert!(
            matches!(&err, Error::Corrupt { detail, .. } if detail.contains("values of table \"a\" could not be opened")),
            "{err}"
        );
        assert_eq!(a.get(b"good").unwrap().as_deref(), Some(&b"value"[..]));
        let pending = store.reencrypt_status().unwrap();
        assert!(
            pending.iter().any(|p| p.table == "a" && p.versions == vec![1]),
            "{pending:?}"
        );
    }
}
