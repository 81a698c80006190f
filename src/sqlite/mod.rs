//! SQLite databases on tde (feature `sqlite`): the `tde` VFS (`ffi::sqlite_vfs`) seals
//! every page of the database file in SQLite's reserved bytes and every record of its
//! rollback journal; the envelope (KMS, master key, wrapped data key) lives beside the
//! database, and the keys come from the shared key lifecycle (`keys`).
//!
//! Invariant: the data key is unwrapped once, at open; reads and writes never call the
//! KMS. A page is bound to its database and number; a journal record to its database, its
//! journal header and its offset.
//! Not yet: the WAL (refused: SQLite stays in rollback-journal mode), rotation and the
//! other lifecycle verbs, temporary files on disk (refused; `temp_store = MEMORY`).

use std::path::Path;
use std::sync::Arc;

use crate::audit::{AuditLog, Reason};
use crate::cipher::{AeadKey, Detached, Nonce, Suite, TAG_LEN};
use crate::durable::{FsStorage, Replicated};
use crate::error::{Error, Result};
use crate::ffi::sqlite_vfs as vfs;
use crate::keyring::Envelope;
use crate::keys::{EnvelopeId, KeyService, Named, RetryPolicy, Scope};
use crate::kms::Kms;
use crate::secret::DataKey;

/// The master key a database's data key is wrapped under unless told otherwise.
const DEFAULT_MASTER_KEY: &str = crate::kv::DEFAULT_MASTER_KEY;

mod files;

/// Page layout (P = page size, R = reserve):
///
/// ```text
/// 0 .. P-R        ciphertext of the page's content
/// P-R ..          nonce (12 bytes for the GCM suites, 32 for AEGIS-256) | tag (16)
///                 | key version (4, LE) | zeros
/// AAD             "tde sqlite page\0" | database id (16) | page number (u32 LE)
/// ```
///
/// A rollback journal record (page number, page, checksum: 8 + P bytes) is sealed whole,
/// so that neither the page nor SQLite's checksum of its plaintext is readable: the
/// page number, the page's content and the checksum are one AEAD message, whose nonce,
/// tag and key version go into the journaled page's reserved bytes; its AAD is
/// "tde sqlite journal\0" | database id | the journal header's random salt | the
/// record's offset (u64 LE).
pub(crate) struct PageCipher {
    /// The database's path, for messages.
    label: String,
    key: AeadKey,
    db_id: [u8; 16],
    page_size: usize,
}

impl PageCipher {
    fn reserve(&self) -> usize {
        self.key.suite().nonce_len() + TAG_LEN + 4
    }

    fn page_aad(&self, pgno: u32) -> Vec<u8> {
        [b"tde sqlite page\0".as_slice(), &self.db_id, &pgno.to_le_bytes()].concat()
    }

    fn record_aad(&self, salt: u32, at: u64) -> Vec<u8> {
        [
            b"tde sqlite journal\0".as_slice(),
            &self.db_id,
            &salt.to_le_bytes(),
            &at.to_le_bytes(),
        ]
        .concat()
    }

    /// Seals `msg` in place; writes nonce, tag and version into `tail` (the reserve).
    fn seal(&self, aad: &[u8], msg: &mut [u8], tail: &mut [u8]) -> bool {
        let Ok(d) = self.key.seal_detached(aad, msg) else {
            return false;
        };
        let n = d.nonce.as_slice().len();
        tail.fill(0);
        tail[..n].copy_from_slice(d.nonce.as_slice());
        tail[n..n + TAG_LEN].copy_from_slice(&d.tag);
        tail[n + TAG_LEN..n + TAG_LEN + 4].copy_from_slice(&self.key.version().to_le_bytes());
        true
    }

    /// Opens `msg` in place against the nonce and tag in `tail`, then zeroes `tail`.
    fn open(&self, aad: &[u8], msg: &mut [u8], tail: &mut [u8]) -> bool {
        let n = self.key.suite().nonce_len();
        let Ok(nonce) = Nonce::from_slice(&tail[..n]) else {
            return false;
        };
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&tail[n..n + TAG_LEN]);
        let ok = self.key.open_detached(aad, &Detached { nonce, tag }, msg).is_ok();
        tail.fill(0);
        ok
    }
}

impl vfs::Database for PageCipher {
    fn main(self: Arc<Self>) -> Box<dyn vfs::SealedFile> {
        Box::new(files::MainFile::new(self))
    }
    fn journal(self: Arc<Self>) -> Box<dyn vfs::SealedFile> {
        Box::new(files::Journal::new(self))
    }
}

/// Options for a SQLite database on tde.
#[derive(Clone)]
pub struct SqliteOptions {
    kms: Arc<dyn Kms>,
    kms_uri: Option<String>,
    master_key: Option<String>,
    suite: Suite,
    retry: RetryPolicy,
}

impl std::fmt::Debug for SqliteOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteOptions")
            .field("kms", &self.kms.describe())
            .field("master_key", &self.master_key)
            .field("suite", &self.suite)
            .finish_non_exhaustive()
    }
}

impl SqliteOptions {
    /// Defaults: the default master key, AES-256-GCM, the default retry policy.
    pub fn new(kms: Arc<dyn Kms>) -> SqliteOptions {
        SqliteOptions {
            kms,
            kms_uri: None,
            master_key: None,
            suite: Suite::Aes256Gcm,
            retry: RetryPolicy::default(),
        }
    }

    /// The master key that wraps the database's data key.
    #[must_use]
    pub fn master_key(mut self, key: impl Into<String>) -> SqliteOptions {
        self.master_key = Some(key.into());
        self
    }

    /// The suite.
    #[must_use]
    pub fn suite(mut self, suite: Suite) -> SqliteOptions {
        self.suite = suite;
        self
    }

    /// The KMS URI to record with the database.
    #[must_use]
    pub fn kms_uri(mut self, uri: impl Into<String>) -> SqliteOptions {
        self.kms_uri = Some(uri.into());
        self
    }
}

/// tde's error for a SQLite error: a page that failed authentication is
/// [`Error::Authentication`] naming the database and the page; anything else is
/// [`Error::Engine`] with SQLite's message.
pub fn explain(e: rusqlite::Error) -> Error {
    let ours = matches!(&e, rusqlite::Error::SqliteFailure(f, _) if f.extended_code == rusqlite::ffi::SQLITE_IOERR_DATA);
    match files::take_failure() {
        Some(location) if ours => Error::Authentication { location },
        _ => {
            let kind = match &e {
                rusqlite::Error::SqliteFailure(f, _) => match f.code {
                    rusqlite::ErrorCode::DatabaseCorrupt => crate::EngineErrorKind::Corruption,
                    rusqlite::ErrorCode::SystemIoFailure | rusqlite::ErrorCode::DiskFull => {
                        crate::EngineErrorKind::Io
                    }
                    rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked => {
                        crate::EngineErrorKind::Busy
                    }
                    _ => crate::EngineErrorKind::Other,
                },
                _ => crate::EngineErrorKind::Other,
            };
            Error::engine(kind, format!("SQLite: {e}"))
        }
    }
}

/// What the envelope file beside a database holds (public: the data key is wrapped).
#[derive(serde::Serialize, serde::Deserialize)]
struct Meta {
    db_id: String,
    page_size: usize,
    kms: String,
    envelope: Envelope,
}

const ENVELOPE_MAGIC: [u8; 8] = *b"TDESQLT\0";
const PAGE_SIZE: usize = 4096;
const MAC_LABEL: &[u8] = b"tde sqlite envelope\0";

/// A SQLite database on tde: its keys, unwrapped once at open; connections on it seal
/// every page and journal record.
pub struct Database {
    inner: Arc<Registered>,
}

/// A database's keys registered with the VFS while a [`Database`] or one of its
/// [`Connection`]s is alive.
struct Registered {
    path: std::path::PathBuf,
    cipher: Arc<PageCipher>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        let cipher: Arc<dyn vfs::Database> = self.cipher.clone();
        vfs::unregister(&self.path.to_string_lossy(), &cipher);
    }
}

/// A connection on a [`Database`]: a `rusqlite::Connection` (through `Deref`) that keeps
/// the database's keys registered while it lives.
pub struct Connection {
    conn: rusqlite::Connection,
    _keys: Arc<Registered>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("path", &self._keys.path)
            .finish_non_exhaustive()
    }
}

impl std::ops::Deref for Connection {
    type Target = rusqlite::Connection;
    fn deref(&self) -> &rusqlite::Connection {
        &self.conn
    }
}

impl std::ops::DerefMut for Connection {
    fn deref_mut(&mut self) -> &mut rusqlite::Connection {
        &mut self.conn
    }
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Database")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

fn envelope_file(path: &Path) -> Result<(FsStorage, Replicated)> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| Error::InvalidArgument(format!("{} names no file", path.display())))?
        .to_string_lossy()
        .into_owned();
    Ok((
        FsStorage::new(dir),
        Replicated::new(&format!("{name}-tde"), "SQLite envelope", ENVELOPE_MAGIC),
    ))
}

fn key_service(path: &Path, id: &[u8; 16], options: &SqliteOptions) -> Result<KeyService> {
    let mut audit = path.as_os_str().to_owned();
    audit.push("-audit");
    let audit = Arc::new(AuditLog::open_at(audit.into(), &crate::hex::encode(id))?);
    Ok(KeyService::new(
        Scope::Sqlite(*id),
        options.kms.clone(),
        audit,
        options.retry,
    ))
}

/// The MAC of the envelope file's payload, under a key derived from the data key.
fn envelope_mac(dk: &DataKey, id: &[u8; 16], payload: &[u8]) -> [u8; 32] {
    use hmac::{KeyInit, Mac};
    let key = crate::cipher::kdf::derive_key(dk, id, MAC_LABEL, 32);
    let mut mac = <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(key.expose())
        .unwrap_or_else(|_| unreachable!());
    mac.update(payload);
    mac.finalize().into_bytes().into()
}

/// The KMS recorded in the envelope of the database at `path` (read before anything is
/// authenticated: pass `--kms` where the directory is not trusted).
///
/// # Errors
/// [`Error::Format`] if there is no envelope; [`Error::Io`].
pub fn recorded_kms(path: impl AsRef<Path>) -> Result<String> {
    let (storage, file) = envelope_file(path.as_ref())?;
    let loaded = file.read(&storage)?.ok_or_else(|| Error::Format {
        what: "SQLite envelope",
        detail: format!("{} has no envelope file beside it", path.as_ref().display()),
    })?;
    let body = &loaded.payload[..loaded.payload.len().saturating_sub(32)];
    let meta: Meta = serde_json::from_slice(body).map_err(|e| Error::Format {
        what: "SQLite envelope",
        detail: e.to_string(),
    })?;
    Ok(meta.kms)
}

/// Whether a database on tde (its envelope) exists at `path`.
///
/// # Errors
/// [`Error::Io`].
pub fn exists(path: impl AsRef<Path>) -> Result<bool> {
    let (storage, file) = envelope_file(path.as_ref())?;
    file.exists(&storage)
}

impl Database {
    /// Creates a database at `path` (which must not exist): a new data key (one KMS
    /// call), recorded wrapped in the envelope file beside it (`PATH-tde.a`, `.b`).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if the file exists; [`Error::Kms`]; [`Error::Io`].
    pub fn create(path: impl AsRef<Path>, options: &SqliteOptions) -> Result<Database> {
        let path = std::path::absolute(path.as_ref())
            .map_err(|e| Error::io(format!("resolving {}", path.as_ref().display()), e))?;
        let (storage, file) = envelope_file(&path)?;
        if path.exists() || file.exists(&storage)? {
            return Err(Error::InvalidArgument(format!(
                "{} already exists",
                path.display()
            )));
        }
        let mut id = [0u8; 16];
        crate::error::os_random(&mut id)?;
        let cmk = options
            .master_key
            .clone()
            .unwrap_or_else(|| DEFAULT_MASTER_KEY.to_owned());
        let keys = key_service(&path, &id, options)?;
        let name = Named {
            id: EnvelopeId::Store,
            label: path.display().to_string(),
        };
        let generated = keys.generate(&name, &cmk, options.suite, 1, Reason::Create)?;
        let meta = Meta {
            db_id: crate::hex::encode(&id),
            page_size: PAGE_SIZE,
            kms: options.kms_uri.clone().unwrap_or_else(|| options.kms.describe()),
            envelope: Envelope {
                table_id: 1,
                cmk,
                suite: options.suite,
                versions: vec![generated.record],
                current: 1,
                retired: Vec::new(),
                reencrypt: None,
            },
        };
        let mut payload = serde_json::to_vec(&meta).map_err(|e| Error::InvalidArgument(e.to_string()))?;
        let mac = envelope_mac(&generated.key, &id, &payload);
        payload.extend_from_slice(&mac);
        file.write(&storage, 1, &payload)?;
        Database::assemble(path, id, options.suite, 1, &generated.key)
    }

    /// Opens the database at `path`: reads its envelope file, unwraps its data key (the
    /// only KMS call) and checks the envelope's MAC.
    ///
    /// # Errors
    /// [`Error::KeysUnavailable`]; [`Error::Authentication`] for an edited envelope;
    /// [`Error::Format`] if there is none; [`Error::Io`].
    pub fn open(path: impl AsRef<Path>, options: &SqliteOptions) -> Result<Database> {
        let path = std::path::absolute(path.as_ref())
            .map_err(|e| Error::io(format!("resolving {}", path.as_ref().display()), e))?;
        let (storage, file) = envelope_file(&path)?;
        let loaded = file.read(&storage)?.ok_or_else(|| Error::Format {
            what: "SQLite envelope",
            detail: format!("{} has no envelope file beside it", path.display()),
        })?;
        let payload = &loaded.payload;
        if payload.len() < 32 {
            return Err(Error::Format {
                what: "SQLite envelope",
                detail: "too short".into(),
            });
        }
        let (body, mac) = payload.split_at(payload.len() - 32);
        let meta: Meta = serde_json::from_slice(body).map_err(|e| Error::Format {
            what: "SQLite envelope",
            detail: e.to_string(),
        })?;
        if meta.page_size != PAGE_SIZE {
            return Err(Error::Format {
                what: "SQLite envelope",
                detail: format!("page size {}", meta.page_size),
            });
        }
        let id: [u8; 16] = crate::hex::decode(&meta.db_id)
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or_else(|| Error::Format {
                what: "SQLite envelope",
                detail: "a malformed database id".into(),
            })?;
        let keys = key_service(&path, &id, options)?;
        let name = Named {
            id: EnvelopeId::Store,
            label: path.display().to_string(),
        };
        let unwrapped = keys.unwrap_envelope(&name, &meta.envelope, Reason::Open)?;
        let current = unwrapped
            .iter()
            .find(|k| k.version == meta.envelope.current)
            .ok_or_else(|| Error::Format {
                what: "SQLite envelope",
                detail: "no current data key".into(),
            })?;
        if !crate::secret::ct_eq(&envelope_mac(&current.key, &id, body), mac) {
            return Err(Error::Authentication {
                location: format!("the envelope of {}", path.display()),
            });
        }
        Database::assemble(path, id, meta.envelope.suite, current.version, &current.key)
    }

    fn assemble(
        path: std::path::PathBuf,
        db_id: [u8; 16],
        suite: Suite,
        version: u32,
        dk: &DataKey,
    ) -> Result<Database> {
        let key = crate::cipher::kdf::derive_key(dk, &db_id, b"tde sqlite page key\0", suite.key_len());
        let cipher = Arc::new(PageCipher {
            label: path.display().to_string(),
            key: AeadKey::new(suite, version, &key)?,
            db_id,
            page_size: PAGE_SIZE,
        });
        let inner = Arc::new(Registered { path, cipher });
        let cipher: Arc<dyn vfs::Database> = inner.cipher.clone();
        vfs::register(inner.path.to_string_lossy().into_owned(), cipher);
        Ok(Database { inner })
    }

    /// A new connection on the database (created empty with its reserve on first use).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if SQLite refuses the file or the VFS.
    pub fn connection(&self) -> Result<Connection> {
        if !vfs::install() {
            return Err(Error::InvalidArgument("SQLite refused the tde VFS".into()));
        }
        let conn = rusqlite::Connection::open_with_flags_and_vfs(
            &self.inner.path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE
                | rusqlite::OpenFlags::SQLITE_OPEN_CREATE
                | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
            c"tde",
        )
        .map_err(explain)?;
        conn.execute_batch(&format!(
            "PRAGMA page_size = {PAGE_SIZE}; PRAGMA temp_store = MEMORY;"
        ))
        .map_err(explain)?;
        let reserve = self.inner.cipher.reserve();
        let rc = vfs::set_reserve(&conn, reserve);
        if rc != rusqlite::ffi::SQLITE_OK {
            return Err(Error::InvalidArgument(format!(
                "SQLite refused {reserve} reserved bytes ({rc})"
            )));
        }
        Ok(Connection {
            conn,
            _keys: self.inner.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kms::local::LocalKms;

    fn options(dir: &Path) -> SqliteOptions {
        let kms = match LocalKms::open(dir.join("kms")) {
            Ok(kms) => kms,
            Err(_) => LocalKms::create(dir.join("kms")).unwrap(),
        };
        SqliteOptions::new(Arc::new(kms))
    }

    fn count(conn: &rusqlite::Connection, sql: &str) -> i64 {
        conn.query_row(sql, [], |r| r.get(0)).unwrap()
    }

    #[test]
    fn pages_are_sealed_and_read_back_and_the_envelope_is_authenticated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        {
            let db = Database::create(&path, &options(dir.path())).unwrap();
            let conn = db.connection().unwrap();
            conn.execute_batch("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT);")
                .unwrap();
            let tx = conn.unchecked_transaction().unwrap();
            for i in 0..2000 {
                tx.execute("INSERT INTO t VALUES (?1, ?2)", (i, format!("SECRET-MARKER-{i}")))
                    .unwrap();
            }
            tx.commit().unwrap();
        }
        let raw = std::fs::read(&path).unwrap();
        assert!(!raw.windows(13).any(|w| w == b"SECRET-MARKER"));
        assert!(!raw.starts_with(b"SQLite format 3"));
        let db = Database::open(&path, &options(dir.path())).unwrap();
        let conn = db.connection().unwrap();
        assert_eq!(count(&conn, "SELECT count(*) FROM t"), 2000);
        let v: String = conn
            .query_row("SELECT v FROM t WHERE k = 1234", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, "SECRET-MARKER-1234");
        let ok: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(ok, "ok");
        drop((conn, db));

        // A flipped bit in page 3 is an error, never rows.
        let mut raw = raw;
        raw[2 * 4096 + 100] ^= 1;
        std::fs::write(&path, &raw).unwrap();
        let db = Database::open(&path, &options(dir.path())).unwrap();
        let conn = db.connection().unwrap();
        let err = conn
            .query_row("SELECT count(*) FROM t", [], |r| r.get::<_, i64>(0))
            .map_err(explain)
            .unwrap_err();
        assert!(
            matches!(&err, Error::Authentication { location } if location.ends_with("db.sqlite: page 3")),
            "{err:?}"
        );
        drop((conn, db));

        // Another database's file under this envelope: its pages do not authenticate.
        let other = dir.path().join("other.sqlite");
        {
            let db = Database::create(&other, &options(dir.path())).unwrap();
            let conn = db.connection().unwrap();
            conn.execute_batch("CREATE TABLE u (x);").unwrap();
        }
        std::fs::copy(&other, &path).unwrap();
        let db = Database::open(&path, &options(dir.path())).unwrap();
        let refused = db.connection().and_then(|conn| {
            conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get::<_, i64>(0))
                .map_err(|e| Error::InvalidArgument(e.to_string()))
        });
        assert!(refused.is_err());
    }

    #[test]
    fn the_rollback_journal_is_sealed_and_rolls_back_in_process_and_after_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        let journal = dir.path().join("db.sqlite-journal");
        let db = Database::create(&path, &options(dir.path())).unwrap();
        let conn = db.connection().unwrap();
        conn.execute_batch(
            "PRAGMA journal_mode = PERSIST; PRAGMA cache_size = 10;
             CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT);",
        )
        .unwrap();
        let tx = conn.unchecked_transaction().unwrap();
        for i in 0..3000 {
            tx.execute(
                "INSERT INTO t VALUES (?1, ?2)",
                (i, format!("ORIGINAL-MARKER-{i}")),
            )
            .unwrap();
        }
        tx.commit().unwrap();

        // ROLLBACK plays the journal back.
        conn.execute_batch("BEGIN; UPDATE t SET v = 'CHANGED-MARKER'; ")
            .unwrap();
        let raw = std::fs::read(&journal).unwrap();
        assert!(raw.len() > 4096 * 10, "the transaction spilled into the journal");
        assert!(!raw.windows(15).any(|w| w == b"ORIGINAL-MARKER"));

        // A crash now: the database file and its hot journal as they are, with the
        // envelope.
        let crashed = dir.path().join("crashed.sqlite");
        for (from, to) in [
            ("db.sqlite", "crashed.sqlite"),
            ("db.sqlite-journal", "crashed.sqlite-journal"),
        ] {
            std::fs::copy(dir.path().join(from), dir.path().join(to)).unwrap();
        }
        for copy in ["a", "b"] {
            let from = dir.path().join(format!("db.sqlite-tde.{copy}"));
            if from.exists() {
                std::fs::copy(from, dir.path().join(format!("crashed.sqlite-tde.{copy}"))).unwrap();
            }
        }

        conn.execute_batch("ROLLBACK").unwrap();
        assert_eq!(
            count(&conn, "SELECT count(*) FROM t WHERE v LIKE 'ORIGINAL-MARKER-%'"),
            3000
        );
        drop((conn, db));

        let db = Database::open(&crashed, &options(dir.path()));
        // The copied envelope names the same database id, so its pages authenticate.
        let db = db.unwrap();
        let conn = db.connection().unwrap();
        assert_eq!(
            count(&conn, "SELECT count(*) FROM t WHERE v LIKE 'ORIGINAL-MARKER-%'"),
            3000
        );
        let ok: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(ok, "ok");
    }

    #[test]
    fn temporary_files_and_a_changed_page_layout_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        let db = Database::create(&path, &options(dir.path())).unwrap();
        let conn = db.connection().unwrap();
        conn.execute_batch("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT); INSERT INTO t VALUES (1, 'a');")
            .unwrap();
        // Temporary tables on disk would be plaintext.
        let temp = conn.execute_batch(
            "PRAGMA temp_store = FILE; CREATE TEMP TABLE x (a); PRAGMA temp.cache_size = 2;
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 500)
             INSERT INTO x SELECT randomblob(9000) FROM n;",
        );
        assert!(temp.is_err());
        conn.execute_batch("PRAGMA temp_store = MEMORY;").unwrap();
        // VACUUM works (its temporary database in memory), but page 1 may not change the
        // page size or the reserve.
        conn.execute_batch("VACUUM;").unwrap();
        assert!(conn.execute_batch("PRAGMA page_size = 8192; VACUUM;").is_err());
        assert_eq!(count(&conn, "SELECT count(*) FROM t"), 1);
        let ok: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(ok, "ok");
    }

    #[test]
    fn an_aegis_256_database_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("aegis.sqlite");
        let options = options(dir.path()).suite(Suite::Aegis256);
        {
            let db = Database::create(&path, &options).unwrap();
            let conn = db.connection().unwrap();
            conn.execute_batch("CREATE TABLE t (v); INSERT INTO t VALUES ('AEGIS-MARKER');")
                .unwrap();
        }
        assert!(
            !std::fs::read(&path)
                .unwrap()
                .windows(12)
                .any(|w| w == b"AEGIS-MARKER")
        );
        let db = Database::open(&path, &options).unwrap();
        let conn = db.connection().unwrap();
        let v: String = conn.query_row("SELECT v FROM t", [], |r| r.get(0)).unwrap();
        assert_eq!(v, "AEGIS-MARKER");
    }
}
