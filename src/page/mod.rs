//! The encrypted page store, for engines that manage their own fixed-size pages (B-trees,
//! heap files): a tablespace is one file with its own data key; pages are sealed on their
//! way to disk and opened on their way into a shared [`BufferPool`].
//!
//! Invariant: every page in the file and the journal after the header is sealed with
//! AEAD bound to its tablespace, page number and key version; page 0 carries the envelope
//! (wrapped data keys), so the file plus the KMS is enough to open it. The data key is
//! unwrapped once, at open; the read and write paths never call the KMS. A pool hit does
//! no cryptography.
//! Not here: the pool's replacement policy (`pool.rs`), the byte formats (`header.rs`,
//! `codec.rs`, `journal.rs`), file access (`io.rs`).
//!
//! Durability: pages reach the file only through the journal (`journal.rs`). `sync`
//! appends every dirty page to the journal and commits it with one fsync: all writes
//! before it are durable, atomically. A checkpoint (when the journal passes a threshold,
//! and on close) copies committed pages into place. After a crash, open replays committed
//! frames and drops the rest, so every page is at its content of the last completed sync,
//! authentic, even if a page write was torn. After any failed write or fsync the
//! tablespace is poisoned: it refuses writes until reopened.
//!
//! Page numbers: the engine sees pages `0..page_count()` of [`Tablespace::page_size`]
//! bytes (physical size minus the suite's [`reserve`]); engine page `n` is physical page
//! `n + 1`.
//! Pages never written read as zeros. Pages past the file's recorded page count read as
//! zeros; inside it, every page must authenticate (a zeroed or truncated page is an error).
//!
//! ```
//! use std::sync::Arc;
//! use tde::page::{BufferPool, Tablespace, TablespaceOptions};
//!
//! # fn main() -> tde::Result<()> {
//! # let dir = tempfile::tempdir().map_err(|e| tde::Error::InvalidArgument(e.to_string()))?;
//! let kms = Arc::new(tde::kms::local::LocalKms::create(dir.path().join("kms"))?);
//! let pool = BufferPool::new(16 << 20);
//! let options = TablespaceOptions::new(kms);
//! let ts = Tablespace::create(dir.path().join("orders.tdb"), &options, &pool)?;
//! let (n, mut page) = ts.allocate()?;
//! page[..5].copy_from_slice(b"hello");
//! drop(page);
//! ts.sync()?;
//! assert_eq!(&ts.read(n)?[..5], b"hello");
//! ts.close()?;
//! # Ok(())
//! # }
//! ```
//!
//! Security notes: authenticity is per page, not per tablespace: an attacker who can write
//! the file can roll a page back to an older sealed version of the same page, or the whole
//! file to an older copy. Page size, page count and key metadata are public.

mod codec;
mod header;
mod io;
mod journal;
mod lifecycle;
mod pool;
mod rotate;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::{Mutex, RwLock};
use zeroize::Zeroize;

use codec::Sealing;
pub use codec::{RESERVE, reserve};
pub use header::{FORMAT_VERSION, MAGIC, PageSize};
use header::{Header, Meta};
pub use io::{FileIo, PageFile, PageIo, journal_path};
use journal::Journal;
use pool::{Access, Guard, Owner};
pub use pool::{BufferPool, PageMut, PageRef, PoolStats};

use crate::audit::{AUDIT_MAC_LABEL, AuditLog, Reason};
use crate::cipher::{AeadKey, Suite};
use crate::error::{Error, Result};
use crate::keyring::{Envelope, RetryPolicy};
use crate::keys::{EnvelopeId, JobControl, KeyService, KeyVersionInfo, Named, Scope};
use crate::kms::{EncryptionContext, Kms};
use crate::kv::DEFAULT_MASTER_KEY;
use crate::secret::DataKey;

/// Journal size at which `sync` also checkpoints. Default of
/// [`TablespaceOptions::checkpoint_bytes`].
pub const DEFAULT_CHECKPOINT_BYTES: u64 = 64 << 20;

/// How to create or open a tablespace.
#[derive(Clone)]
pub struct TablespaceOptions {
    kms: Arc<dyn Kms>,
    kms_uri: Option<String>,
    master_key: Option<String>,
    suite: Suite,
    page_size: PageSize,
    retry: RetryPolicy,
    checkpoint_bytes: u64,
    encrypted: bool,
    seal_limit: u64,
    /// Where KMS calls are recorded instead of the tablespace's own trail (backups record
    /// work on a scratch copy in the trail of what they serve).
    pub(crate) audit: Option<Arc<AuditLog>>,
}

impl std::fmt::Debug for TablespaceOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TablespaceOptions")
            .field("kms", &self.kms.describe())
            .field("master_key", &self.master_key)
            .field("suite", &self.suite)
            .field("page_size", &self.page_size)
            .field("encrypted", &self.encrypted)
            .finish_non_exhaustive()
    }
}

impl TablespaceOptions {
    /// Options with `kms` and defaults for everything else.
    pub fn new(kms: Arc<dyn Kms>) -> TablespaceOptions {
        TablespaceOptions {
            kms,
            kms_uri: None,
            master_key: None,
            suite: Suite::Aes256Gcm,
            page_size: PageSize::default(),
            retry: RetryPolicy::default(),
            checkpoint_bytes: DEFAULT_CHECKPOINT_BYTES,
            encrypted: true,
            seal_limit: u64::MAX,
            audit: None,
        }
    }

    /// Lowers the number of pages one data key version may seal below its suite's limit
    /// ([`crate::cipher::Suite::seal_limit`]: 2^32 for the GCM suites, the bound for random
    /// 96-bit nonces; none for AEGIS-256), which is the default. The count is kept in the header
    /// across opens; automatic rotation ([`Tablespace::maintain_keys`]) rotates a version
    /// at 3/4 of it, and at the limit writes fail with [`Error::KeyExhausted`] until the
    /// key is rotated.
    #[must_use]
    pub fn seal_limit(mut self, limit: u64) -> TablespaceOptions {
        self.seal_limit = limit.max(1);
        self
    }

    /// Settings that weaken protection (see [`crate::dangerous`]).
    pub fn dangerous(self) -> crate::dangerous::Dangerous<TablespaceOptions> {
        crate::dangerous::Dangerous(self)
    }

    /// The KMS URI recorded in the header (the CLI reopens with it). Default: the KMS's
    /// own description.
    #[must_use]
    pub fn kms_uri(mut self, uri: impl Into<String>) -> TablespaceOptions {
        self.kms_uri = Some(uri.into());
        self
    }

    /// Master key that wraps the data key. Default: the service key `alias/acs/tde`.
    /// Only used when creating.
    #[must_use]
    pub fn master_key(mut self, key: impl Into<String>) -> TablespaceOptions {
        self.master_key = Some(key.into());
        self
    }

    /// Suite. Default: AES-256-GCM. Only used when creating.
    #[must_use]
    pub fn suite(mut self, suite: Suite) -> TablespaceOptions {
        self.suite = suite;
        self
    }

    /// Physical page size. Default: 16 KiB. Only used when creating; the engine sees this
    /// minus the suite's [`reserve`] (32 bytes for the GCM suites, 52 for AEGIS-256).
    #[must_use]
    pub fn page_size(mut self, size: PageSize) -> TablespaceOptions {
        self.page_size = size;
        self
    }

    /// Retries of throttled or unavailable KMS calls. Default: [`RetryPolicy::default`].
    #[must_use]
    pub fn retry(mut self, retry: RetryPolicy) -> TablespaceOptions {
        self.retry = retry;
        self
    }

    /// Journal size at which `sync` also checkpoints (copies pages into place). Smaller
    /// means a shorter journal and recovery, larger means fewer in-place writes.
    /// Default: 64 MiB. `0` checkpoints at every sync.
    #[must_use]
    pub fn checkpoint_bytes(mut self, bytes: u64) -> TablespaceOptions {
        self.checkpoint_bytes = bytes;
        self
    }
}

impl crate::dangerous::Dangerous<TablespaceOptions> {
    /// **Insecure.** Creates (or opens) a tablespace whose pages are *not* encrypted:
    /// same format, journal and pool, zero reserve. For measuring what encryption costs;
    /// never for data. Opening such a tablespace without this setting fails, and so does
    /// opening an encrypted one with it.
    pub fn unencrypted(self) -> TablespaceOptions {
        let mut options = self.0;
        options.encrypted = false;
        options
    }
}

/// Facts about an open tablespace.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TablespaceInfo {
    /// Name recorded at creation.
    pub name: String,
    /// Tablespace id (hex).
    pub id: String,
    /// Physical page size in bytes.
    pub physical_page_size: usize,
    /// Bytes of each page the engine sees.
    pub page_size: usize,
    /// Engine pages.
    pub page_count: u64,
    /// Master key as configured.
    pub master_key: String,
    /// Suite.
    pub suite: Suite,
    /// Current data key version.
    pub data_key_version: u32,
    /// Whether pages are encrypted.
    pub encrypted: bool,
    /// The KMS recorded at creation.
    pub kms: String,
    /// Every data key version: state and seals. From [`Tablespace::inspect`] (no key),
    /// the counts are as recorded in the header, not verified; from an open tablespace,
    /// counted live.
    pub versions: Vec<KeyVersionInfo>,
}

/// Counters of one tablespace since it was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TablespaceStats {
    /// Pages read from the file or the journal (pool misses that needed I/O).
    pub pages_read: u64,
    /// Pages decrypted and authenticated.
    pub pages_opened: u64,
    /// Pages sealed.
    pub pages_sealed: u64,
    /// Frames appended to the journal.
    pub journal_frames: u64,
    /// Commits (syncs that had something to write).
    pub commits: u64,
    /// Checkpoints.
    pub checkpoints: u64,
}

#[derive(Default)]
struct Counters {
    pages_read: AtomicU64,
    pages_opened: AtomicU64,
    pages_sealed: AtomicU64,
    journal_frames: AtomicU64,
    commits: AtomicU64,
    checkpoints: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

struct Durable {
    journal: Journal,
    /// Physical pages the committed header records.
    disk_pages: u64,
    header: Header,
    /// The header changed (a key rotated or retired) and goes into the next commit.
    header_changed: bool,
}

struct Inner {
    owner: u64,
    pool: BufferPool,
    io: Arc<dyn PageIo>,
    id: [u8; 16],
    name: String,
    physical: usize,
    logical: usize,
    /// Replaced by data key rotation (a new version) and re-encryption (retirement).
    sealing: RwLock<Sealing>,
    header_key: RwLock<Arc<AeadKey>>,
    /// Keys for metadata about this tablespace (backup manifests, the audit trail), per
    /// data key version.
    meta: Mutex<crate::keyring::MetaKeys>,
    encrypted: bool,
    /// The key lifecycle: KMS (replaced by a migration), retries, audit trail.
    keys: KeyService,
    /// What it was opened with (to reopen it).
    options: TablespaceOptions,
    seal_limit: u64,
    /// Jobs running on it (re-encryption), cancelled at close.
    jobs: Mutex<Vec<Weak<JobControl>>>,
    /// One re-encryption at a time.
    reencrypting: Mutex<()>,
    /// Set when the key watch found the master key revoked: (key, why); `is_revoked`
    /// says so without a lock on the read path.
    revoked: RwLock<Option<(String, String)>>,
    is_revoked: AtomicBool,
    /// Set by close.
    closing: Mutex<bool>,
    /// The data file (its description, for storage that is not a file system).
    location: PathBuf,
    durable: Mutex<Durable>,
    sync_lock: Mutex<()>,
    /// Engine pages (highest written + 1).
    pages: AtomicU64,
    poisoned: Mutex<Option<String>>,
    checkpoint_bytes: u64,
    counters: Counters,
}

/// An open tablespace. Safe to share between threads (`&Tablespace` is enough; wrap it
/// in an `Arc` to share ownership). Dropping it closes it, ignoring errors; call
/// [`Tablespace::close`] to see them.
pub struct Tablespace {
    inner: Arc<Inner>,
    closed: bool,
}

impl std::fmt::Debug for Tablespace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tablespace")
            .field("name", &self.inner.name)
            .field("file", &self.inner.io.describe(PageFile::Data))
            .finish_non_exhaustive()
    }
}

/// The encryption context of a tablespace's data key.
pub fn context(tablespace_id: &[u8; 16], version: u32) -> EncryptionContext {
    Scope::Tablespace(*tablespace_id).context(EnvelopeId::Store, version)
}

/// The tablespace's envelope, named.
fn envelope_name(name: &str) -> Named {
    Named {
        id: EnvelopeId::Store,
        label: name.to_owned(),
    }
}

/// The key service of the tablespace `id` on `io`: its trail is the override in
/// `options`, else the file beside the tablespace, else memory.
fn key_service(io: &dyn PageIo, id: &[u8; 16], options: &TablespaceOptions) -> Result<KeyService> {
    let chain = crate::hex::encode(id);
    let audit = match (&options.audit, io.audit_path()) {
        (Some(audit), _) => audit.clone(),
        (None, Some(path)) => Arc::new(AuditLog::open_at(path, &chain)?),
        (None, None) => Arc::new(AuditLog::in_memory(&chain)),
    };
    Ok(KeyService::new(
        Scope::Tablespace(*id),
        options.kms.clone(),
        audit,
        options.retry,
    ))
}

fn derived(suite: Suite, dk: &DataKey, id: &[u8; 16], label: &[u8], version: u32) -> Result<AeadKey> {
    let mut info = label.to_vec();
    info.extend_from_slice(&version.to_le_bytes());
    let key = crate::cipher::kdf::derive_key(dk, id, &info, suite.key_len());
    AeadKey::new(suite, version, &key)
}

fn page_key(suite: Suite, dk: &DataKey, id: &[u8; 16], version: u32) -> Result<AeadKey> {
    derived(suite, dk, id, b"tde page key\0", version)
}

/// The header's MAC is a GMAC, so its suite is a GCM suite: the tablespace's, or
/// AES-256-GCM for an AEGIS-256 tablespace (the header keeps a 12-byte nonce).
fn header_key(suite: Suite, dk: &DataKey, id: &[u8; 16], version: u32) -> Result<AeadKey> {
    let suite = match suite {
        Suite::Aegis256 => Suite::Aes256Gcm,
        gcm => gcm,
    };
    derived(suite, dk, id, b"tde tablespace header key\0", version)
}

fn info_of(
    header: &Header,
    physical: usize,
    page_count: u64,
    live: &dyn Fn(u32) -> Option<u64>,
) -> TablespaceInfo {
    let meta = &header.meta;
    TablespaceInfo {
        name: meta.name.clone(),
        id: crate::hex::encode(&header.id),
        physical_page_size: physical,
        page_size: physical
            - if meta.encrypted {
                codec::reserve(meta.envelope.suite)
            } else {
                RESERVE
            },
        page_count,
        master_key: meta.envelope.cmk.clone(),
        suite: meta.envelope.suite,
        data_key_version: meta.envelope.current,
        encrypted: meta.encrypted,
        kms: meta.kms.clone(),
        versions: crate::keys::describe_envelope(EnvelopeId::Store, &meta.name, &meta.envelope, live)
            .versions,
    }
}

fn io_error(io: &dyn PageIo, file: PageFile, what: &str, e: std::io::Error) -> Error {
    Error::io(format!("{what} {}", io.describe(file)), e)
}

impl Tablespace {
    /// Creates a tablespace file at `path` (which must not exist) and its journal, with a
    /// new data key (one KMS call). The name recorded is the file name.
    ///
    /// # Errors
    /// [`Error::Io`] (including an existing file); [`Error::Kms`] if the master key
    /// cannot be used.
    pub fn create(
        path: impl AsRef<Path>,
        options: &TablespaceOptions,
        pool: &BufferPool,
    ) -> Result<Tablespace> {
        let path = path.as_ref();
        let audit = crate::audit::tablespace_audit_path(path);
        if std::fs::symlink_metadata(&audit).is_ok() {
            return Err(Error::InvalidArgument(format!(
                "{} already exists (the audit trail of an earlier tablespace at this path?); \
                 move it away before creating a tablespace here",
                audit.display()
            )));
        }
        let io =
            FileIo::open(path, true).map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        Tablespace::create_with(Arc::new(io), &name, options, pool)
    }

    /// Deletes the closed tablespace at `path`: its file, its journal and its audit
    /// trail (a tablespace is not created over an earlier one's trail). Files that are
    /// not there are skipped.
    ///
    /// # Errors
    /// [`Error::Io`] if a file cannot be removed.
    pub fn remove(path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        for file in [
            path.to_path_buf(),
            journal_path(path),
            crate::audit::tablespace_audit_path(path),
        ] {
            match std::fs::remove_file(&file) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io(format!("removing {}", file.display()), e)),
            }
        }
        Ok(())
    }

    /// Opens the tablespace at `path`: reads its header, unwraps its data key (the only
    /// KMS call), and recovers from its journal.
    ///
    /// # Errors
    /// [`Error::KeysUnavailable`] if the KMS will not unwrap the key (nothing changes on
    /// disk); [`Error::Format`] for a file that is not a tablespace or a damaged header;
    /// [`Error::Authentication`] for a tampered header or journal; [`Error::Io`].
    pub fn open(
        path: impl AsRef<Path>,
        options: &TablespaceOptions,
        pool: &BufferPool,
    ) -> Result<Tablespace> {
        let path = path.as_ref();
        let io =
            FileIo::open(path, false).map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
        Tablespace::open_with(Arc::new(io), options, pool)
    }

    /// As [`Tablespace::create`], on any storage (tests use crash-simulating storage).
    ///
    /// # Errors
    /// As [`Tablespace::create`]; [`Error::InvalidArgument`] if the data file is not empty.
    pub fn create_with(
        io: Arc<dyn PageIo>,
        name: &str,
        options: &TablespaceOptions,
        pool: &BufferPool,
    ) -> Result<Tablespace> {
        let data = PageFile::Data;
        if io.len(data).map_err(|e| io_error(&*io, data, "reading", e))? != 0 {
            return Err(Error::InvalidArgument(format!(
                "{} is not empty; a tablespace is created in a new file",
                io.describe(data)
            )));
        }
        let mut id = [0u8; 16];
        crate::error::os_random(&mut id)?;
        let cmk = options
            .master_key
            .clone()
            .unwrap_or_else(|| DEFAULT_MASTER_KEY.to_owned());
        let keys = key_service(&*io, &id, options)?;
        let generated = keys.generate(&envelope_name(name), &cmk, options.suite, 1, Reason::Create)?;
        let header = Header {
            page_size: options.page_size.bytes() as u32,
            id,
            page_count: 1,
            meta: Meta {
                name: name.to_owned(),
                kms: options.kms_uri.clone().unwrap_or_else(|| options.kms.describe()),
                encrypted: options.encrypted,
                envelope: Envelope {
                    table_id: 1,
                    cmk,
                    suite: options.suite,
                    versions: vec![generated.record],
                    current: 1,
                    retired: Vec::new(),
                    reencrypt: None,
                },
            },
        };
        let dks = vec![(1, generated.key)];
        let hkey = header_key(options.suite, &dks[0].1, &id, 1)?;
        let page = header.encode(&hkey)?;
        io.write_all_at(data, 0, &page)
            .and_then(|()| io.sync(data))
            .map_err(|e| io_error(&*io, data, "writing", e))?;
        let journal = Journal::create(&*io, &id, page.len())
            .map_err(|e| io_error(&*io, PageFile::Journal, "creating", e))?;
        Tablespace::assemble(io, header, dks, journal, keys, options, pool)
    }

    /// As [`Tablespace::open`], on any storage.
    ///
    /// # Errors
    /// As [`Tablespace::open`].
    pub fn open_with(
        io: Arc<dyn PageIo>,
        options: &TablespaceOptions,
        pool: &BufferPool,
    ) -> Result<Tablespace> {
        let (data, jfile) = (PageFile::Data, PageFile::Journal);
        let read_err = |file, e| io_error(&*io, file, "reading", e);
        let data_len = io.len(data).map_err(|e| read_err(data, e))?;
        let mut first = vec![0u8; 4096.min(data_len as usize)];
        io.read_exact_at(data, 0, &mut first)
            .map_err(|e| read_err(data, e))?;
        let on_disk = Header::decode(&first);
        let journal_head = journal::read_header(&*io).map_err(|e| read_err(jfile, e))?;
        if let Some((_, size)) = journal_head {
            // Read before anything is authenticated: bound it before it sizes a buffer.
            PageSize::from_bytes(size).map_err(|_| Error::Corrupt {
                what: "tablespace journal",
                path: io.describe(jfile).into(),
                detail: format!("its header records a page size of {size} bytes"),
            })?;
        }
        let (id, physical) = match (&on_disk, journal_head) {
            (Ok(h), Some((jid, jsize))) if (jid, jsize) != (h.id, h.page_size as usize) => {
                return Err(Error::Format {
                    what: "tablespace journal",
                    detail: format!("{} belongs to another tablespace", io.describe(jfile)),
                });
            }
            (Ok(h), _) => (h.id, h.page_size as usize),
            (Err(_), Some(j)) => j,
            (Err(e), None) => {
                return Err(Error::Format {
                    what: "tablespace header",
                    detail: format!("{}: {e}", io.describe(data)),
                });
            }
        };
        let journal = match journal_head {
            Some(_) => Journal::recover(&*io, &id, physical).map_err(|e| {
                if e.kind() == std::io::ErrorKind::InvalidData {
                    Error::Corrupt {
                        what: "tablespace journal",
                        path: io.describe(jfile).into(),
                        detail: e.to_string(),
                    }
                } else {
                    read_err(jfile, e)
                }
            })?,
            // Written only once the tablespace has opened: a failed open writes nothing.
            None => Journal::empty(&id, physical),
        };
        let fresh_journal = journal_head.is_none();
        // The newest committed header: from the journal if a commit changed it.
        let mut header_page = vec![0u8; physical];
        match journal.find(0) {
            Some(offset) => journal.read(&*io, offset, &mut header_page),
            None => io.read_exact_at(data, 0, &mut header_page),
        }
        .map_err(|e| read_err(data, e))?;
        let header = Header::decode(&header_page).map_err(|e| match e {
            Error::Format { what, detail } => Error::Format {
                what,
                detail: format!("{}: {detail}", io.describe(data)),
            },
            other => other,
        })?;
        if header.meta.encrypted != options.encrypted {
            return Err(Error::InvalidArgument(format!(
                "{} is {}encrypted; open it with{} TablespaceOptions::insecure_unencrypted",
                io.describe(data),
                if header.meta.encrypted { "" } else { "not " },
                if header.meta.encrypted { "out" } else { "" },
            )));
        }
        let keys = key_service(&*io, &id, options)?;
        let dks: Vec<(u32, DataKey)> = keys
            .unwrap_envelope(
                &envelope_name(&header.meta.name),
                &header.meta.envelope,
                Reason::Open,
            )?
            .into_iter()
            .map(|k| (k.version, k.key))
            .collect();
        let header = header.clone();
        let mut ts = Tablespace::assemble(io.clone(), header, dks, journal, keys, options, pool)?;
        let recovered = ts.recover(&header_page).and_then(|()| {
            if fresh_journal {
                Journal::write_header(&*io, &id, physical)
                    .map_err(|e| io_error(&*io, jfile, "creating", e))?;
            }
            Ok(())
        });
        if let Err(e) = recovered {
            // Nothing of a tablespace that failed to open may reach the disk: no close,
            // no sync of the header on drop.
            ts.closed = true;
            ts.inner.pool.inner.unregister(ts.inner.owner);
            return Err(e);
        }
        Ok(ts)
    }

    fn assemble(
        io: Arc<dyn PageIo>,
        header: Header,
        keys: Vec<(u32, DataKey)>,
        journal: Journal,
        service: KeyService,
        options: &TablespaceOptions,
        pool: &BufferPool,
    ) -> Result<Tablespace> {
        let envelope = &header.meta.envelope;
        let suite = envelope.suite;
        let current = envelope.current;
        let mut page_keys = HashMap::new();
        let mut hkey = None;
        let mut meta = crate::keyring::MetaKeys::default();
        for (version, dk) in &keys {
            meta.add(&crate::hex::encode(&header.id), *version, dk);
            let recorded = envelope
                .versions
                .iter()
                .find(|v| v.version == *version)
                .map_or(0, |v| v.seals);
            let key = page_key(suite, dk, &header.id, *version)?
                .with_prior_seals(recorded)
                .with_seal_limit(options.seal_limit);
            page_keys.insert(*version, Arc::new(key));
            if *version == current {
                hkey = Some(header_key(suite, dk, &header.id, *version)?);
            }
        }
        let header_key = hkey.ok_or_else(|| Error::Format {
            what: "tablespace header",
            detail: format!("no data key version {current} in the envelope"),
        })?;
        drop(keys);
        if let Some(key) = meta.mac_key(current, AUDIT_MAC_LABEL) {
            service.audit().set_key(current, key);
        }
        let sealing = if header.meta.encrypted {
            Sealing::Aead {
                keys: page_keys,
                current,
                reserve: codec::reserve(suite),
            }
        } else {
            Sealing::Off
        };
        let physical = header.page_size as usize;
        let reserve = sealing.reserve();
        let disk_pages = header.page_count.max(1);
        let location = PathBuf::from(io.describe(PageFile::Data));
        let inner = Arc::new_cyclic(|weak: &Weak<Inner>| {
            let weak: Weak<dyn Owner> = weak.clone();
            Inner {
                owner: pool.inner.register(weak),
                pool: pool.clone(),
                io,
                id: header.id,
                name: header.meta.name.clone(),
                physical,
                logical: physical - reserve,
                encrypted: matches!(sealing, Sealing::Aead { .. }),
                sealing: RwLock::new(sealing),
                header_key: RwLock::new(Arc::new(header_key)),
                meta: Mutex::new(meta),
                keys: service,
                options: options.clone(),
                seal_limit: options.seal_limit,
                jobs: Mutex::new(Vec::new()),
                reencrypting: Mutex::new(()),
                revoked: RwLock::new(None),
                is_revoked: AtomicBool::new(false),
                closing: Mutex::new(false),
                location,
                pages: AtomicU64::new(disk_pages - 1),
                durable: Mutex::new(Durable {
                    journal,
                    disk_pages,
                    header,
                    header_changed: false,
                }),
                sync_lock: Mutex::new(()),
                poisoned: Mutex::new(None),
                checkpoint_bytes: options.checkpoint_bytes,
                counters: Counters::default(),
            }
        });
        Ok(Tablespace { inner, closed: false })
    }

    /// Open-time recovery: authenticates the header and every committed journal frame,
    /// then replays them into place. Nothing is written if anything fails to authenticate.
    fn recover(&self, header_page: &[u8]) -> Result<()> {
        let inner = &*self.inner;
        let what_header = || format!("header of tablespace {:?}", inner.name);
        let header_key = inner.header_key.read().clone();
        Header::verify(header_page, &header_key).map_err(|e| e.at(what_header()))?;
        let mut durable = inner.durable.lock();
        let io = &*inner.io;
        let mut buf = vec![0u8; inner.physical];
        let mut highest = 0;
        for (page, offset) in durable.journal.pages() {
            durable
                .journal
                .read(io, offset, &mut buf)
                .map_err(|e| io_error(io, PageFile::Journal, "reading", e))?;
            if page == 0 {
                Header::decode(&buf)?;
                Header::verify(&buf, &header_key).map_err(|e| e.at(what_header()))?;
            } else {
                inner.open_page(page, &mut buf, "journal frame of")?;
            }
            highest = highest.max(page);
        }
        if highest >= durable.disk_pages {
            return Err(Error::Format {
                what: "tablespace journal",
                detail: format!(
                    "{} holds page {highest} beyond the committed page count {}",
                    io.describe(PageFile::Journal),
                    durable.disk_pages
                ),
            });
        }
        let journal_len = io
            .len(PageFile::Journal)
            .map_err(|e| io_error(io, PageFile::Journal, "reading", e))?;
        if !durable.journal.is_empty() || journal_len > journal::HEADER_LEN {
            durable
                .journal
                .checkpoint(io)
                .map_err(|e| io_error(io, PageFile::Data, "recovering", e))?;
            bump(&inner.counters.checkpoints);
        }
        let len = io
            .len(PageFile::Data)
            .map_err(|e| io_error(io, PageFile::Data, "reading", e))?;
        let expected = durable.disk_pages.saturating_mul(inner.physical as u64);
        if len < expected {
            return Err(Error::Corrupt {
                what: "tablespace",
                path: io.describe(PageFile::Data).into(),
                detail: format!(
                    "truncated: its header records {} pages ({expected} bytes), the file has {len} bytes",
                    durable.disk_pages
                ),
            });
        }
        Ok(())
    }

    /// Reads the header of the tablespace file at `path` without any key: what it is,
    /// which master key and KMS it needs. Checks the header's checksum, not its MAC (that
    /// needs the data key), and ignores the journal, so the page count may be behind an
    /// uncheckpointed commit.
    ///
    /// # Errors
    /// [`Error::Format`] if `path` is not a tablespace or its header is damaged;
    /// [`Error::Io`].
    pub fn inspect(path: impl AsRef<Path>) -> Result<TablespaceInfo> {
        let path = path.as_ref();
        let mut first = Vec::with_capacity(4096);
        std::io::Read::read_to_end(
            &mut std::io::Read::take(
                std::fs::File::open(path).map_err(|e| Error::io(format!("opening {}", path.display()), e))?,
                4096,
            ),
            &mut first,
        )
        .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        let header = Header::decode(&first)?;
        let physical = header.page_size as usize;
        Ok(info_of(&header, physical, header.page_count.max(1) - 1, &|_| {
            None
        }))
    }

    /// The tablespace file.
    pub fn path(&self) -> &Path {
        &self.inner.location
    }

    /// Bytes of each page the engine sees (the physical page size minus the suite's
    /// [`reserve`]).
    pub fn page_size(&self) -> usize {
        self.inner.logical
    }

    /// Engine pages: one more than the highest page ever written.
    pub fn page_count(&self) -> u64 {
        self.inner.pages.load(Ordering::Acquire)
    }

    /// Facts about the tablespace.
    pub fn info(&self) -> TablespaceInfo {
        let durable = self.inner.durable.lock();
        let sealing = self.inner.sealing.read();
        info_of(&durable.header, self.inner.physical, self.page_count(), &|v| {
            sealing.key(v).map(|k| k.seals())
        })
    }

    /// The tablespace id.
    pub(crate) fn id(&self) -> [u8; 16] {
        self.inner.id
    }

    /// The key that authenticates backup manifests now: (current data key version, its
    /// derived HMAC key).
    pub(crate) fn manifest_key(&self) -> Result<(u32, crate::cipher::kdf::MacKey)> {
        let version = self.inner.durable.lock().header.meta.envelope.current;
        let key = self
            .manifest_key_at(version)
            .ok_or_else(|| Error::InvalidArgument(format!("no data key version {version} in memory")))?;
        Ok((version, key))
    }

    /// The backup-manifest key under data key version `version`, if held.
    pub(crate) fn manifest_key_at(&self, version: u32) -> Option<crate::cipher::kdf::MacKey> {
        self.inner
            .meta
            .lock()
            .mac_key(version, crate::backup::MANIFEST_MAC_LABEL)
    }

    /// Counters since open.
    pub fn stats(&self) -> TablespaceStats {
        let c = &self.inner.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        TablespaceStats {
            pages_read: get(&c.pages_read),
            pages_opened: get(&c.pages_opened),
            pages_sealed: get(&c.pages_sealed),
            journal_frames: get(&c.journal_frames),
            commits: get(&c.commits),
            checkpoints: get(&c.checkpoints),
        }
    }

    fn physical_no(&self, page: u64) -> Result<u64> {
        if page >= (1 << 40) {
            return Err(Error::InvalidArgument(format!(
                "page number {page} is out of range"
            )));
        }
        Ok(page + 1)
    }

    /// Reads engine page `page`: from the pool if it is there (no cryptography), else from
    /// the journal or the file, authenticated and decrypted. A page never written reads as
    /// zeros.
    ///
    /// # Errors
    /// [`Error::Authentication`] naming the tablespace and page if the stored page was
    /// modified or moved; [`Error::BufferPoolFull`]; [`Error::Io`].
    pub fn read(&self, page: u64) -> Result<PageRef<'_>> {
        match self.fetch(page, Access::Read)? {
            Guard::Read(g) => Ok(g),
            Guard::Write(_) => Err(Error::InvalidArgument("the pool returned a write guard".into())),
        }
    }

    /// Opens engine page `page` for writing (reading its current content first) and marks
    /// it dirty. Writing past the end extends the tablespace; pages skipped read as zeros.
    ///
    /// # Errors
    /// As [`Tablespace::read`]; [`Error::Poisoned`] after an earlier write failure.
    pub fn write(&self, page: u64) -> Result<PageMut<'_>> {
        self.inner.check_poisoned()?;
        let guard = match self.fetch(page, Access::Write)? {
            Guard::Write(g) => g,
            Guard::Read(_) => return Err(Error::InvalidArgument("the pool returned a read guard".into())),
        };
        self.inner.pages.fetch_max(page + 1, Ordering::AcqRel);
        Ok(guard)
    }

    /// Appends a new zero page and opens it for writing; returns its number with it.
    ///
    /// # Errors
    /// As [`Tablespace::write`].
    pub fn allocate(&self) -> Result<(u64, PageMut<'_>)> {
        self.inner.check_poisoned()?;
        let page = self.inner.pages.fetch_add(1, Ordering::AcqRel);
        Ok((page, self.write(page)?))
    }

    fn fetch(&self, page: u64, access: Access) -> Result<Guard<'_>> {
        let inner = &*self.inner;
        inner.check_revoked()?;
        let physical = self.physical_no(page)?;
        inner.pool.inner.fetch(
            inner.owner,
            physical,
            inner.physical,
            inner.logical,
            access,
            &|buf| inner.load(physical, buf),
        )
    }

    /// Makes every write so far durable, atomically: dirty pages are sealed and appended
    /// to the journal, which is committed with one fsync. Checkpoints too when the journal
    /// has grown past [`TablespaceOptions::checkpoint_bytes`]. Waits for pages that other
    /// threads hold for writing; a thread must not hold a [`PageMut`] while it syncs.
    ///
    /// # Errors
    /// [`Error::Poisoned`] if an earlier write failed; [`Error::Io`] (the tablespace is
    /// then poisoned).
    pub fn sync(&self) -> Result<()> {
        self.inner.sync(false)
    }

    /// As [`Tablespace::sync`], then copies every journaled page into place and empties
    /// the journal.
    ///
    /// # Errors
    /// As [`Tablespace::sync`].
    pub fn checkpoint(&self) -> Result<()> {
        self.inner.sync(true)
    }

    /// Syncs, checkpoints, and drops this tablespace's frames from the pool (wiping them).
    ///
    /// # Errors
    /// As [`Tablespace::checkpoint`]; the frames are dropped in any case.
    pub fn close(mut self) -> Result<()> {
        self.closed = true;
        let result = self.inner.close();
        self.inner.pool.inner.unregister(self.inner.owner);
        result
    }

    /// Reads and authenticates every page of the tablespace, bypassing the pool; returns
    /// the number of pages checked.
    ///
    /// # Errors
    /// The first failure: [`Error::Authentication`] naming the page, [`Error::Io`].
    pub fn verify(&self) -> Result<u64> {
        self.sync()?;
        let inner = &*self.inner;
        let mut buf = vec![0u8; inner.physical];
        let disk_pages = inner.durable.lock().disk_pages;
        for physical in 1..disk_pages {
            inner.load(physical, &mut buf)?;
        }
        Ok(disk_pages - 1)
    }
}

impl Drop for Tablespace {
    fn drop(&mut self) {
        if !self.closed {
            let _ = self.inner.close();
            self.inner.pool.inner.unregister(self.inner.owner);
        }
    }
}

impl Inner {
    /// [`Error::KeyRevoked`] once the key watch failed the tablespace closed.
    fn check_revoked(&self) -> Result<()> {
        if !self.is_revoked.load(Ordering::Acquire) {
            return Ok(());
        }
        match &*self.revoked.read() {
            Some((key, reason)) => Err(Error::KeyRevoked {
                table: self.name.clone(),
                key: key.clone(),
                reason: reason.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Records the seal counts of the header's versions: exactly (`exact`, at close), or
    /// (at a commit) leased ahead of the current version's count as the keys layer says
    /// ([`crate::keys::leased_count`]). Returns whether the header changed.
    fn record_seals(&self, durable: &mut Durable, exact: bool) -> bool {
        if !self.encrypted {
            return false;
        }
        let sealing = self.sealing.read();
        let envelope = &mut durable.header.meta.envelope;
        let mut changed = false;
        for v in &mut envelope.versions {
            let Some(seals) = sealing.key(v.version).map(|k| k.seals()) else {
                continue;
            };
            if exact {
                changed |= v.seals != seals;
                v.seals = seals;
            } else if v.version == envelope.current
                && let Some(count) = crate::keys::leased_count(v.seals, seals, self.seal_limit)
            {
                v.seals = count;
                changed = true;
            }
        }
        changed
    }

    fn check_poisoned(&self) -> Result<()> {
        self.check_revoked()?;
        match &*self.poisoned.lock() {
            Some(cause) => Err(Error::Poisoned {
                tablespace: self.name.clone(),
                cause: cause.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Records that a write failed, and returns the error.
    fn poison(&self, file: PageFile, what: &str, e: std::io::Error) -> Error {
        let err = io_error(&*self.io, file, what, e);
        self.poisoned.lock().get_or_insert_with(|| err.to_string());
        err
    }

    fn open_page(&self, physical: u64, buf: &mut [u8], what: &str) -> Result<()> {
        let describe = || format!("{what} tablespace {:?} page {}", self.name, physical - 1);
        self.sealing.read().open(&self.id, physical, buf, &describe)?;
        if self.encrypted {
            bump(&self.counters.pages_opened);
        }
        Ok(())
    }

    /// Fills `buf` (zeroed, physical size) with the plain content of `physical`.
    fn load(&self, physical: u64, buf: &mut [u8]) -> Result<()> {
        // A page not in the pool is either in the journal (its newest version), or in the
        // file, or was never written. It cannot enter the journal while we read it from
        // the file: only the pool writes pages, and it holds this page's frame locked.
        let from_journal = {
            let durable = self.durable.lock();
            match durable.journal.find(physical) {
                Some(offset) => {
                    durable
                        .journal
                        .read(&*self.io, offset, buf)
                        .map_err(|e| io_error(&*self.io, PageFile::Journal, "reading", e))?;
                    true
                }
                None if physical >= durable.disk_pages => return Ok(()),
                None => false,
            }
        };
        if !from_journal {
            let offset = physical * self.physical as u64;
            self.io.read_exact_at(PageFile::Data, offset, buf).map_err(|e| {
                if e.kind() == std::io::ErrorKind::UnexpectedEof {
                    Error::Corrupt {
                        what: "tablespace",
                        path: self.io.describe(PageFile::Data).into(),
                        detail: format!("truncated: page {} is missing", physical - 1),
                    }
                } else {
                    io_error(&*self.io, PageFile::Data, "reading", e)
                }
            })?;
        }
        bump(&self.counters.pages_read);
        self.open_page(physical, buf, "")
    }

    /// Seals a copy of `frame` for `physical` and appends it to the journal.
    fn append(&self, durable: &mut Durable, physical: u64, frame: &[u8], sealed: &mut Vec<u8>) -> Result<()> {
        sealed.clear();
        sealed.extend_from_slice(frame);
        if let Err(e) = self.sealing.read().seal(&self.id, physical, sealed) {
            sealed.zeroize();
            return Err(e);
        }
        if self.encrypted {
            bump(&self.counters.pages_sealed);
        }
        durable
            .journal
            .append(&*self.io, physical, sealed)
            .map_err(|e| self.poison(PageFile::Journal, "appending to", e))?;
        bump(&self.counters.journal_frames);
        Ok(())
    }

    fn sync(&self, checkpoint: bool) -> Result<()> {
        let _one_at_a_time = self.sync_lock.lock();
        self.sync_locked(checkpoint)
    }

    /// As [`Inner::sync`], with `sync_lock` held by the caller.
    fn sync_locked(&self, checkpoint: bool) -> Result<()> {
        self.check_poisoned()?;
        let mut sealed = Vec::with_capacity(self.physical);
        for (physical, pin) in self.pool.inner.dirty_frames(self.owner) {
            let frame = pin.frame().read();
            if pin.frame().take_dirty() {
                let mut durable = self.durable.lock();
                if let Err(e) = self.append(&mut durable, physical, &frame, &mut sealed) {
                    pin.frame().mark_dirty();
                    return Err(e);
                }
            }
        }
        let mut durable = self.durable.lock();
        let durable = &mut *durable;
        // Pages past the committed end: fill any gap with sealed zero pages (so every page
        // inside the file authenticates) and commit a header with the new page count.
        let highest = durable.journal.pages().last().map_or(0, |(p, _)| *p);
        if highest >= durable.disk_pages {
            let zero = vec![0u8; self.physical];
            for gap in durable.disk_pages..highest {
                if durable.journal.find(gap).is_none() {
                    self.append(durable, gap, &zero, &mut sealed)?;
                }
            }
            durable.header.page_count = highest + 1;
            durable.disk_pages = highest + 1;
            durable.header_changed = true;
        }
        // Every seal of this commit is made: its count goes into the same commit.
        if self.record_seals(durable, checkpoint && self.closing()) {
            durable.header_changed = true;
        }
        if durable.header_changed {
            let page = durable.header.encode(&self.header_key.read())?;
            durable
                .journal
                .append(&*self.io, 0, &page)
                .map_err(|e| self.poison(PageFile::Journal, "appending to", e))?;
            bump(&self.counters.journal_frames);
            durable.header_changed = false;
        }
        let frames_before = durable.journal.len();
        durable
            .journal
            .commit(&*self.io)
            .map_err(|e| self.poison(PageFile::Journal, "committing", e))?;
        if durable.journal.len() != frames_before {
            bump(&self.counters.commits);
        }
        if checkpoint || durable.journal.len() >= self.checkpoint_bytes.max(journal::HEADER_LEN + 1) {
            durable
                .journal
                .checkpoint(&*self.io)
                .map_err(|e| self.poison(PageFile::Data, "checkpointing into", e))?;
            bump(&self.counters.checkpoints);
        }
        Ok(())
    }

    fn close(&self) -> Result<()> {
        // Jobs first: none may write once the tablespace is gone.
        let jobs: Vec<Arc<JobControl>> = self.jobs.lock().drain(..).filter_map(|j| j.upgrade()).collect();
        for job in &jobs {
            job.cancel();
        }
        for job in jobs {
            while !job.finished() {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        }
        if self.poisoned.lock().is_some() {
            return self.check_poisoned();
        }
        *self.closing.lock() = true;
        self.sync(true)
    }

    /// Whether the tablespace is closing (its last commit records exact seal counts).
    fn closing(&self) -> bool {
        *self.closing.lock()
    }
}

impl Owner for Inner {
    fn write_back(&self, page: u64, frame: &[u8]) -> Result<()> {
        self.check_poisoned()?;
        let mut sealed = Vec::with_capacity(self.physical);
        let mut durable = self.durable.lock();
        self.append(&mut durable, page, frame, &mut sealed)
    }
}
