//! Ciphertext backups of a store: consistent, incremental, verifiable without keys,
//! restorable only with the KMS.
//!
//! Invariant: a backup holds exactly the ciphertext bytes of the store's files (a RocksDB
//! checkpoint taken under the keyring lock, so data and keyring agree) and the keyring
//! (wrapped keys only), each stored once by its SHA-256 and listed with its size and hash
//! in the backup's manifest. The manifest is written last, atomically: a backup that was
//! interrupted has no manifest and does not exist; the next one reuses what was copied.
//! Not here: opening the store (`kv`), talking to the KMS beyond what restore needs.
//!
//! Layout of a backup destination (a directory, or `s3://BUCKET/PREFIX` in object
//! storage; see [`Destination`]):
//!
//! ```text
//! DEST/objects/<sha256>       one file per distinct content (SST files are shared)
//! DEST/backups/<id>.json      manifest: id, time, store id, KMS, files (name, size,
//!                             sha256), an HMAC under the store's keys, and a SHA-256
//! DEST/TDE-AUDIT              the KMS calls of rewraps and deep verifications
//! ```
//!
//! Security notes: nothing in a backup is plaintext, and no key is in it unwrapped. A
//! restored store uses random nonces like any other, so writing to it after a restore
//! cannot repeat a nonce under the same key with more than the usual (negligible)
//! probability.
//!
//! A destination is hostile input: whoever can write it can write anything there. Every
//! manifest field is validated before use (ids and file names are short names of a fixed
//! alphabet, object names are 64 hex digits, sizes and counts are bounded); manifests and
//! objects are opened without following symbolic links, and `objects/` and `backups/`
//! must be real directories; scratch work (deep verification, rewrapping) happens in the
//! system's temporary directory, never in the destination; nothing outside `objects/`
//! and `backups/` is ever changed or removed. The SHA-256 checksum of a manifest finds
//! accidental damage without keys. Authenticity needs the keys: each manifest carries an
//! HMAC-SHA256 under a key derived from the store's (or tablespace's) data key, checked
//! by restore, `verify --deep` and rewrap, so a manifest edited to name other objects (an
//! older keyring, another backup's files) is refused. Replacing a whole destination with
//! an older genuine copy cannot be told apart from that older state.

mod destination;
#[cfg(feature = "s3")]
mod s3;

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

pub use destination::Destination;
use destination::{open_regular, sync_dir};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::cipher::kdf::MacKey;
use crate::clock::{Clock, SystemClock};
use crate::error::{Error, Result};
use crate::kms::Timestamp;
use crate::kv::{Store, StoreOptions};
use crate::page::{BufferPool, Tablespace, TablespaceOptions};

/// Format 2: manifests carry an HMAC. Format 1 manifests had none and are refused.
const FORMAT: u32 = 2;
/// What a manifest's HMAC key is derived for.
pub(crate) const MANIFEST_MAC_LABEL: &[u8] = b"tde backup manifest\0";
/// Bounds on what a manifest may say.
const MAX_MANIFEST_BYTES: u64 = 64 << 20;
const MAX_FILES: usize = 1_000_000;
const MAX_NAME: usize = 255;
const MAX_ID: usize = 64;
const MAX_TEXT: usize = 4096;

/// One file of a backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupFile {
    /// Its name in the store directory.
    pub name: String,
    /// Bytes.
    pub size: u64,
    /// SHA-256 of its bytes (hex): also its object name.
    pub sha256: String,
}

/// What a backup holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackupKind {
    /// A key-value store (its files and keyring).
    #[default]
    Store,
    /// A page-store tablespace (one file; its header holds the wrapped keys).
    Tablespace,
}

impl BackupKind {
    fn is_store(&self) -> bool {
        *self == BackupKind::Store
    }
}

/// A backup's manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Format version.
    pub format: u32,
    /// A store or a tablespace.
    #[serde(default, skip_serializing_if = "BackupKind::is_store")]
    pub kind: BackupKind,
    /// Backup id (sortable by time).
    pub id: String,
    /// When it was taken.
    pub created: Timestamp,
    /// The store's id.
    pub store_id: String,
    /// The KMS the store's keyring names.
    pub kms: String,
    /// Every file, keyring included.
    pub files: Vec<BackupFile>,
    /// The data key version (store-level key, or the tablespace's key) whose derived key
    /// made `mac`.
    pub mac_version: u32,
    /// HMAC-SHA256 (hex) of this manifest's JSON with `mac` and `checksum` empty.
    pub mac: String,
    /// SHA-256 of this manifest's JSON with this field empty (hex): finds damage without
    /// keys, proves nothing against someone who can rewrite the manifest.
    pub checksum: String,
}

/// What `create` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupReport {
    /// The new backup's id.
    pub id: String,
    /// Files in the backup.
    pub files: usize,
    /// Bytes in the backup.
    pub bytes: u64,
    /// Bytes copied this time (the rest was already in the destination).
    pub copied_bytes: u64,
}

/// What `verify` checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// Backups checked.
    pub backups: usize,
    /// Files checked (a shared file counts once per backup).
    pub files: usize,
    /// Bytes hashed.
    pub bytes: u64,
    /// With `--deep`: records authenticated (and every manifest's HMAC checked).
    pub records: Option<u64>,
}

fn io(what: &str, path: &Path, e: std::io::Error) -> Error {
    Error::io(format!("{what} {}", path.display()), e)
}

fn corrupt(path: &Path, detail: String) -> Error {
    Error::Corrupt {
        what: "backup",
        path: path.to_path_buf(),
        detail,
    }
}

/// Whether `name` is a plain file name tde would write: letters, digits, `.`, `_`, `-`,
/// not starting with a dot, at most 255 bytes. Never a path.
fn is_plain_name(name: &str, max: usize) -> bool {
    !name.is_empty()
        && name.len() <= max
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'+'))
}

fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn is_text(s: &str) -> bool {
    s.len() <= MAX_TEXT && !s.chars().any(char::is_control)
}

fn sha256_of(mut reader: impl Read, path: &Path, limit: u64) -> Result<(u64, String)> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = reader.read(&mut buf).map_err(|e| io("reading", path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
        if size > limit {
            break;
        }
    }
    Ok((size, crate::hex::encode(&hasher.finalize())))
}

fn sha256_file(path: &Path) -> Result<(u64, String)> {
    sha256_of(open_regular(path)?, path, u64::MAX)
}

/// Copies the object of `file` to `to`, checking its size and SHA-256 on the way: a
/// mismatch leaves nothing at `to`, and no more than the recorded size is ever read.
fn copy_verified(dest: &Destination, manifest: &Manifest, file: &BackupFile, to: &Path) -> Result<()> {
    let (object, source) = open_object(dest, manifest, file)?;
    let tmp = to.with_file_name(format!(
        ".{}.tmp",
        to.file_name().map(|n| n.to_string_lossy()).unwrap_or_default()
    ));
    let result = (|| {
        let mut out = File::create(&tmp).map_err(|e| io("creating", &tmp, e))?;
        let mut hasher = Sha256::new();
        let mut reader = source.take(file.size.saturating_add(1));
        let mut buf = vec![0u8; 1 << 20];
        let mut size = 0u64;
        loop {
            let n = reader.read(&mut buf).map_err(|e| io("reading", &object, e))?;
            if n == 0 {
                break;
            }
            size += n as u64;
            if size > file.size {
                break;
            }
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n]).map_err(|e| io("writing", &tmp, e))?;
        }
        if size != file.size || crate::hex::encode(&hasher.finalize()) != file.sha256 {
            return Err(mismatch(&object, manifest, file));
        }
        out.sync_all().map_err(|e| io("syncing", &tmp, e))?;
        std::fs::rename(&tmp, to).map_err(|e| io("renaming", &tmp, e))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// The object holding `file`'s bytes (its name was validated with the manifest), open for
/// reading, and where it is.
fn open_object<'a>(
    dest: &'a Destination,
    manifest: &Manifest,
    file: &BackupFile,
) -> Result<(PathBuf, Box<dyn Read + 'a>)> {
    let object = dest.backend().object_location(&file.sha256);
    match dest.backend().open_object(&file.sha256)? {
        Some(reader) => Ok((object, reader)),
        None => Err(corrupt(
            &object,
            format!("backup {}: {} is missing", manifest.id, file.name),
        )),
    }
}

fn mismatch(object: &Path, manifest: &Manifest, file: &BackupFile) -> Error {
    corrupt(
        object,
        format!(
            "backup {}: {} does not match its checksum",
            manifest.id, file.name
        ),
    )
}

impl Manifest {
    fn unsigned_json(&self, keep_mac: bool) -> Result<Vec<u8>> {
        let mut unsigned = self.clone();
        unsigned.checksum = String::new();
        if !keep_mac {
            unsigned.mac = String::new();
        }
        serde_json::to_vec(&unsigned).map_err(|e| Error::InvalidArgument(e.to_string()))
    }

    fn checksum_of(&self) -> Result<String> {
        Ok(crate::hex::encode(&Sha256::digest(self.unsigned_json(true)?)))
    }

    /// Sets the HMAC under `key` (derived from data key version `version`) and the
    /// checksum.
    fn seal(&mut self, version: u32, key: &MacKey) -> Result<()> {
        self.mac_version = version;
        self.mac = crate::hex::encode(&key.tag(&[MANIFEST_MAC_LABEL, &self.unsigned_json(false)?]));
        self.checksum = self.checksum_of()?;
        Ok(())
    }

    /// Checks the HMAC with `key` (derived from data key version `mac_version`).
    ///
    /// # Errors
    /// [`Error::Authentication`] naming the backup.
    fn authenticate(&self, key: Option<&MacKey>) -> Result<()> {
        let tag = crate::hex::decode(&self.mac).unwrap_or_default();
        let signed = self.unsigned_json(false)?;
        let ok = key.is_some_and(|k| k.verify(&[MANIFEST_MAC_LABEL, &signed], &tag));
        if ok {
            Ok(())
        } else {
            Err(Error::Authentication {
                location: format!(
                    "manifest of backup {} (edited, or made to name other files)",
                    self.id
                ),
            })
        }
    }

    /// Checks every field before any is used.
    fn validate(&self, path: &Path, expected_id: &str) -> Result<()> {
        let bad = |detail: String| Err(corrupt(path, detail));
        if self.id != expected_id {
            return bad(format!(
                "the manifest's id {:?} is not its file name",
                short(&self.id)
            ));
        }
        let hex32 = self.store_id.len() == 32 && self.store_id.bytes().all(|b| b.is_ascii_hexdigit());
        if !hex32 || !is_text(&self.kms) || self.mac.len() > 128 {
            return bad("malformed store id, KMS or MAC".into());
        }
        if self.files.is_empty() || self.files.len() > MAX_FILES {
            return bad(format!("{} files", self.files.len()));
        }
        let mut names = std::collections::HashSet::new();
        for f in &self.files {
            if !is_plain_name(&f.name, MAX_NAME) || !names.insert(f.name.as_str()) {
                return bad(format!("bad or repeated file name {:?}", short(&f.name)));
            }
            if !is_sha256_hex(&f.sha256) {
                return bad(format!("{}: bad object name {:?}", f.name, short(&f.sha256)));
            }
            if f.size > 1 << 50 {
                return bad(format!("{}: size {} is out of range", f.name, f.size));
            }
        }
        match self.kind {
            BackupKind::Tablespace
                if self.files.len() > 2
                    || self
                        .files
                        .get(1)
                        .is_some_and(|f| f.name != format!("{}-audit", self.files[0].name)) =>
            {
                bad(format!(
                    "backup {} of a tablespace must hold its file and at most its audit trail",
                    self.id
                ))
            }
            BackupKind::Store
                if !self
                    .files
                    .iter()
                    .any(|f| f.name.starts_with(crate::keyring::KEYRING_FILE)) =>
            {
                bad(format!("backup {} of a store holds no keyring", self.id))
            }
            _ => Ok(()),
        }
    }

    fn read(dest: &Destination, id: &str) -> Result<Manifest> {
        let bytes = dest.backend().read_manifest(id, MAX_MANIFEST_BYTES)?;
        let location = manifest_location(dest, id);
        let path = location.as_path();
        let manifest: Manifest =
            serde_json::from_slice(&bytes).map_err(|e| corrupt(path, format!("manifest: {e}")))?;
        if manifest.format != FORMAT {
            return Err(corrupt(
                path,
                format!(
                    "format {} (this version of tde reads format {FORMAT}, whose manifests are authenticated)",
                    manifest.format
                ),
            ));
        }
        if manifest.checksum_of()? != manifest.checksum {
            return Err(corrupt(
                path,
                "the manifest was modified (checksum mismatch)".into(),
            ));
        }
        manifest.validate(path, id)?;
        Ok(manifest)
    }
}

/// Where manifest `id` is, for messages.
fn manifest_location(dest: &Destination, id: &str) -> PathBuf {
    PathBuf::from(format!("{dest}/{}/{id}.json", destination::BACKUPS))
}

fn short(s: &str) -> String {
    s.chars().take(64).collect()
}

/// Whether `id` has the shape of a backup id (`20261129T081900.123456789Z`, perhaps
/// followed by `+` signs).
fn is_backup_id(id: &str) -> bool {
    is_plain_name(id, MAX_ID)
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'T' | b'Z' | b'.' | b'+'))
}

/// The ids of the manifests in `dest`, sorted; other files are ignored.
fn manifest_ids(dest: &Destination) -> Result<Vec<String>> {
    let mut ids = Vec::new();
    for name in dest.backend().manifest_names()? {
        if let Some(id) = name.strip_suffix(".json")
            && is_backup_id(id)
        {
            ids.push(id.to_owned());
        }
    }
    ids.sort();
    Ok(ids)
}

/// A new backup id: the time to the nanosecond, so ids sort in the order backups were
/// taken, and later than every id already in `dest`.
fn new_id(dest: &Destination) -> Result<String> {
    let now = std::time::SystemTime::now();
    let nanos = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|e| Error::InvalidArgument(e.to_string()))?
        .subsec_nanos();
    let stamp = humantime::format_rfc3339_seconds(now)
        .to_string()
        .replace([':', '-'], "");
    let mut id = format!("{}.{nanos:09}Z", stamp.trim_end_matches('Z'));
    if let Some(last) = manifest_ids(dest)?.last()
        && *last >= id
    {
        id = format!("{last}+");
    }
    if !is_backup_id(&id) {
        return Err(Error::InvalidArgument(format!(
            "{dest} holds too many backups taken in the same nanosecond"
        )));
    }
    Ok(id)
}

/// Takes a backup of the open `store` into `dest` (created if needed). Files already in
/// `dest` from earlier backups are not copied again.
///
/// # Errors
/// [`Error::Io`] (the store is unchanged; earlier backups in `dest` are intact);
/// [`Error::Corrupt`] if `dest`'s layout was tampered with; [`Error::Engine`] if RocksDB
/// cannot take the checkpoint.
pub fn create(store: &Store, dest: impl Into<Destination>) -> Result<BackupReport> {
    create_with_progress(store, dest, &mut |_, _| {})
}

/// As [`create`], calling `progress(bytes done, bytes total)` after each file.
///
/// # Errors
/// As [`create`].
pub fn create_with_progress(
    store: &Store,
    dest: impl Into<Destination>,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<BackupReport> {
    let dest = dest.into();
    dest.backend().prepare(true)?;
    let checkpoint = store.checkpoint()?;
    let result = ingest(store, &checkpoint.dir, &dest, progress);
    drop(checkpoint);
    result
}

/// Stores `path` as an object of `dest` unless it is there already; returns (size,
/// sha256, bytes copied).
fn store_object(dest: &Destination, path: &Path) -> Result<(u64, String, u64)> {
    let (size, sha256) = sha256_file(path)?;
    if dest.backend().object_size(&sha256)? == Some(size) {
        return Ok((size, sha256, 0));
    }
    // Missing, or a damaged or planted entry under that name: (re)write the real bytes.
    dest.backend().put_object(&sha256, path)?;
    Ok((size, sha256, size))
}

fn ingest(
    store: &Store,
    checkpoint: &Path,
    dest: &Destination,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<BackupReport> {
    let mut names: Vec<String> = std::fs::read_dir(checkpoint)
        .map_err(|e| io("reading", checkpoint, e))?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<std::io::Result<_>>()
        .map_err(|e| io("reading", checkpoint, e))?;
    names.sort();
    let total: u64 = names
        .iter()
        .filter_map(|n| std::fs::metadata(checkpoint.join(n)).ok())
        .map(|m| m.len())
        .sum();
    let mut files = Vec::with_capacity(names.len());
    let (mut bytes, mut copied) = (0u64, 0u64);
    for name in names {
        let (size, sha256, n) = store_object(dest, &checkpoint.join(&name))?;
        copied += n;
        bytes += size;
        files.push(BackupFile { name, size, sha256 });
        progress(bytes.min(total), total);
    }
    dest.backend().sync_objects()?;
    let (version, key) = store.manifest_key()?;
    let mut manifest = Manifest {
        format: FORMAT,
        id: new_id(dest)?,
        kind: BackupKind::Store,
        created: SystemClock.now(),
        store_id: store.store_id(),
        kms: store.recorded_kms(),
        files,
        mac_version: 0,
        mac: String::new(),
        checksum: String::new(),
    };
    manifest.seal(version, &key)?;
    write_manifest(dest, &manifest)?;
    Ok(BackupReport {
        id: manifest.id,
        files: manifest.files.len(),
        bytes,
        copied_bytes: copied,
    })
}

fn write_manifest(dest: &Destination, manifest: &Manifest) -> Result<()> {
    let json = serde_json::to_vec_pretty(manifest).map_err(|e| Error::InvalidArgument(e.to_string()))?;
    dest.backend().write_manifest(&manifest.id, &json)
}

/// Every backup in `dest`, oldest first. Manifests are checked for damage (checksum) and
/// well-formedness, not yet for authenticity (that needs the keys).
///
/// # Errors
/// [`Error::Io`]; [`Error::Corrupt`] for a damaged or malformed manifest.
pub fn list(dest: impl Into<Destination>) -> Result<Vec<Manifest>> {
    let dest = dest.into();
    manifest_ids(&dest)?
        .iter()
        .map(|id| Manifest::read(&dest, id))
        .collect()
}

/// The backup `id`, or the latest.
///
/// # Errors
/// [`Error::InvalidArgument`] if there is none (or no such id); as [`list`].
pub fn find(dest: impl Into<Destination>, id: Option<&str>) -> Result<Manifest> {
    let dest = dest.into();
    let missing = || {
        Error::InvalidArgument(match id {
            Some(id) => format!("{dest} has no backup {id}"),
            None => format!("{dest} holds no backup"),
        })
    };
    let ids = manifest_ids(&dest)?;
    let id = match id {
        Some(id) => ids.into_iter().find(|i| i == id),
        None => ids.into_iter().last(),
    }
    .ok_or_else(missing)?;
    Manifest::read(&dest, &id)
}

/// Checks every backup in `dest` (or only `id`) without any key: each manifest's
/// checksum and fields, and each file's presence, size and SHA-256. This finds damage;
/// authenticity needs the keys ([`verify_deep`]).
///
/// # Errors
/// [`Error::Corrupt`] naming the backup and file; [`Error::Io`].
pub fn verify(dest: impl Into<Destination>, id: Option<&str>) -> Result<VerifyReport> {
    verify_with_progress(dest, id, &mut |_, _| {})
}

/// As [`verify`], calling `progress(bytes done, bytes total)` after each file.
///
/// # Errors
/// As [`verify`].
pub fn verify_with_progress(
    dest: impl Into<Destination>,
    id: Option<&str>,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<VerifyReport> {
    let dest = dest.into();
    let manifests = match id {
        Some(_) => vec![find(&dest, id)?],
        None => list(&dest)?,
    };
    let total: u64 = manifests
        .iter()
        .flat_map(|m| &m.files)
        .fold(0u64, |sum, f| sum.saturating_add(f.size));
    let mut report = VerifyReport {
        backups: 0,
        files: 0,
        bytes: 0,
        records: None,
    };
    for manifest in &manifests {
        for file in &manifest.files {
            check_object(&dest, manifest, file)?;
            report.files += 1;
            report.bytes += file.size;
            progress(report.bytes, total);
        }
        report.backups += 1;
    }
    Ok(report)
}

/// Checks that the object of `file` is there with the size and SHA-256 it records.
fn check_object(dest: &Destination, manifest: &Manifest, file: &BackupFile) -> Result<()> {
    let (object, reader) = open_object(dest, manifest, file)?;
    let (size, sha256) = sha256_of(reader, &object, file.size)?;
    if size != file.size || sha256 != file.sha256 {
        return Err(mismatch(&object, manifest, file));
    }
    Ok(())
}

/// Restores backup `id` (or the latest) of `dest` into `path`, which must not exist or
/// be empty, opens it with `options` (which name the KMS), and checks the manifest's
/// HMAC with the store's keys. On any failure, what was written to `path` is removed.
///
/// # Errors
/// [`Error::InvalidArgument`] if `path` holds anything; [`Error::Corrupt`] if a file does
/// not match its checksum; [`Error::Authentication`] if the manifest or the keyring was
/// forged; [`Error::KeysUnavailable`] if the KMS will not unwrap the keys (a disabled or
/// deleted master key); [`Error::Io`].
pub fn restore(
    dest: impl Into<Destination>,
    id: Option<&str>,
    path: &Path,
    options: StoreOptions,
) -> Result<Store> {
    let dest = dest.into();
    let manifest = find(&dest, id)?;
    if manifest.kind != BackupKind::Store {
        return Err(Error::InvalidArgument(format!(
            "backup {} holds a tablespace; restore it with restore_tablespace",
            manifest.id
        )));
    }
    if path.exists() {
        let mut entries = std::fs::read_dir(path).map_err(|e| io("reading", path, e))?;
        if entries.next().is_some() {
            return Err(Error::InvalidArgument(format!(
                "{} already exists and is not empty; restore into a new directory",
                path.display()
            )));
        }
    }
    std::fs::create_dir_all(path).map_err(|e| io("creating", path, e))?;
    let result = restore_into(&dest, &manifest, path)
        .and_then(|()| Store::open(path, options))
        .and_then(|store| {
            manifest.authenticate(store.manifest_key_at(manifest.mac_version).as_ref())?;
            Ok(store)
        });
    if result.is_err() {
        let _ = std::fs::remove_dir_all(path);
    }
    result
}

fn restore_into(dest: &Destination, manifest: &Manifest, path: &Path) -> Result<()> {
    for file in &manifest.files {
        copy_verified(dest, manifest, file, &path.join(&file.name))?;
    }
    sync_dir(path)
}

/// A scratch directory for work on a backup, in the system's temporary directory (never
/// inside the destination).
fn scratch(what: &str) -> Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix(what)
        .tempdir()
        .map_err(|e| io("creating a directory in", &std::env::temp_dir(), e))
}

/// As [`verify`], then restores the backup into a temporary directory (in the system's
/// temporary directory), checks its manifest's HMAC and reads and authenticates every
/// record of every table (needs the KMS). The KMS calls are recorded in the
/// destination's audit trail ([`audit_records`]).
///
/// # Errors
/// As [`verify`] and [`restore`]; [`Error::Authentication`] for a record or manifest
/// that fails.
pub fn verify_deep(
    dest: impl Into<Destination>,
    id: Option<&str>,
    mut options: StoreOptions,
) -> Result<VerifyReport> {
    let dest = dest.into();
    let mut report = verify(&dest, id)?;
    let scratch = scratch(".tde-deep-verify-")?;
    let target: PathBuf = scratch.path().join("store");
    let trail = dest.trail()?;
    options.audit = Some(trail.log.clone());
    let result = restore(&dest, id, &target, options).and_then(|store| {
        let mut records = 0u64;
        for info in store.tables() {
            let table = store.table(&info.name)?;
            for item in table.iter()? {
                item?;
                records += 1;
            }
        }
        Ok(records)
    });
    // The calls made are recorded whether or not the backup passed.
    trail.finish()?;
    report.records = Some(result?);
    Ok(report)
}

/// The chain id of a backup destination's audit trail.
pub const DESTINATION_CHAIN: &str = "tde backup destination";

/// Whether `path` is a backup destination directory (it has the `backups` and `objects`
/// directories).
pub fn is_destination(path: &Path) -> bool {
    Destination::dir(path).backend().prepare(false).is_ok()
}

/// The records of the audit trail kept in the destination `dest` (`DEST/TDE-AUDIT`):
/// the KMS calls of work on backups that no store or tablespace of their own records
/// (rewrap, deep verification).
///
/// # Errors
/// [`Error::Io`]; [`Error::Corrupt`].
pub fn audit_records(dest: impl Into<Destination>) -> Result<Vec<crate::audit::AuditRecord>> {
    let (path, _scratch) = dest.into().trail_copy()?;
    if std::fs::symlink_metadata(&path).is_err() {
        return Ok(Vec::new());
    }
    crate::audit::read_at(&path)
}

/// Verifies the chain of the destination's audit trail (it is not keyed: a destination
/// has no key of its own); returns the number of records and the last hash.
///
/// # Errors
/// As [`crate::audit::verify`].
pub fn verify_destination_audit(dest: impl Into<Destination>) -> Result<(u64, String)> {
    let (path, _scratch) = dest.into().trail_copy()?;
    crate::audit::verify_at(&path, DESTINATION_CHAIN)
}

/// Rewraps the data keys of backup `id` (or the latest) in `dest` for master key `to_key`
/// of the KMS `to` (`from` itself if `None`), without touching its data files: each EDK
/// is re-encrypted inside the KMS when it stays in `from`, else unwrapped by `from` and
/// wrapped by `to` in memory (the keys layer does both). The keyring and the manifest are
/// authenticated first (which unwraps the store-level key with `from`). Every KMS call is
/// recorded in the destination's audit trail ([`audit_records`]). The backup's
/// keyring and manifest are replaced atomically (same id); its `kms` becomes `to_kms_uri`
/// (default: `to`'s description). The old keyring's objects are removed from `dest` once
/// no backup refers to them.
///
/// # Errors
/// [`Error::Kms`] if a key refuses (nothing changes); [`Error::Authentication`] if the
/// manifest or keyring was forged; [`Error::Corrupt`], [`Error::Io`].
pub fn rewrap(
    dest: impl Into<Destination>,
    id: Option<&str>,
    from: std::sync::Arc<dyn crate::kms::Kms>,
    to: Option<std::sync::Arc<dyn crate::kms::Kms>>,
    to_key: &str,
    to_kms_uri: Option<&str>,
) -> Result<Manifest> {
    let dest = dest.into();
    let manifest = find(&dest, id)?;
    if manifest.kind != BackupKind::Store {
        return Err(Error::InvalidArgument(format!(
            "backup {} holds a tablespace; rewrap it with rewrap_tablespace",
            manifest.id
        )));
    }
    let trail = dest.trail()?;
    let result = rewrap_store(&dest, manifest, &trail.log, from, to, to_key, to_kms_uri);
    trail.finish()?;
    result
}

fn rewrap_store(
    dest: &Destination,
    mut manifest: Manifest,
    audit: &std::sync::Arc<crate::audit::AuditLog>,
    from: std::sync::Arc<dyn crate::kms::Kms>,
    to: Option<std::sync::Arc<dyn crate::kms::Kms>>,
    to_key: &str,
    to_kms_uri: Option<&str>,
) -> Result<Manifest> {
    use crate::keyring::{KEYRING_FILE, Keyring};
    use crate::keys::{EnvelopeId, KeyService, Scope};

    let scratch = scratch(".tde-rewrap-")?;
    let is_keyring = |name: &str| name.starts_with(KEYRING_FILE);
    for file in manifest.files.iter().filter(|f| is_keyring(&f.name)) {
        copy_verified(dest, &manifest, file, &scratch.path().join(&file.name))?;
    }
    let mut keyring = Keyring::open(scratch.path())?;
    let store_id = keyring.data().store_id.clone();
    if store_id != manifest.store_id {
        return Err(corrupt(
            &manifest_location(dest, &manifest.id),
            format!("backup {}: its keyring belongs to another store", manifest.id),
        ));
    }
    let keys = KeyService::new(
        Scope::Store(store_id),
        from,
        audit.clone(),
        crate::keys::RetryPolicy::default(),
    );
    // Authenticate the keyring and the manifest before changing anything.
    let store_key = keyring.data().store_key.clone();
    let unwrapped = keys.unwrap_envelope(
        &crate::kv::store_envelope(),
        &store_key,
        crate::audit::Reason::Backup,
    )?;
    keyring.authenticate(unwrapped.iter().map(|k| (k.version, &k.key)))?;
    drop(unwrapped);
    let mac_key = keyring.mac_key(manifest.mac_version, MANIFEST_MAC_LABEL);
    manifest.authenticate(mac_key.as_ref())?;

    let data = keyring.data().clone();
    let targets: Vec<_> = std::iter::once((crate::kv::store_envelope(), data.store_key.clone()))
        .chain(data.tables.iter().map(|t| {
            (
                crate::kv::table_envelope(t.envelope.table_id, &t.name),
                t.envelope.clone(),
            )
        }))
        .collect();
    let (rewrapped, _) = keys.rewrap(&targets, to.as_ref(), Some(to_key), crate::audit::Reason::Backup)?;
    let kms = to_kms_uri.map_or_else(
        || {
            to.as_ref()
                .map_or_else(|| keys.kms().describe(), |t| t.describe())
        },
        ToOwned::to_owned,
    );
    keyring.update(|data| {
        for ((target, _), envelope) in targets.iter().zip(rewrapped) {
            match target.id {
                EnvelopeId::Store => data.store_key = envelope,
                EnvelopeId::Table(id) => {
                    if let Some(t) = data.tables.iter_mut().find(|t| t.envelope.table_id == id) {
                        t.envelope = envelope;
                    }
                }
            }
        }
        data.default_key = to_key.to_owned();
        data.kms = kms;
        Ok(())
    })?;

    let old: Vec<String> = manifest
        .files
        .iter()
        .filter(|f| is_keyring(&f.name))
        .map(|f| f.sha256.clone())
        .collect();
    for file in manifest.files.iter_mut().filter(|f| is_keyring(&f.name)) {
        let (size, sha256, _) = store_object(dest, &scratch.path().join(&file.name))?;
        file.size = size;
        file.sha256 = sha256;
    }
    dest.backend().sync_objects()?;
    manifest.kms = keyring.data().kms.clone();
    let mac_key = mac_key.ok_or_else(|| Error::InvalidArgument("no manifest key".into()))?;
    manifest.seal(manifest.mac_version, &mac_key)?;
    write_manifest(dest, &manifest)?;
    remove_unreferenced(dest, old);
    Ok(manifest)
}

/// Removes the objects `candidates` (validated object names) that no backup in `dest`
/// refers to any more. If any manifest cannot be read, nothing is removed: an object is
/// only deleted when it is known to be unreferenced.
fn remove_unreferenced(dest: &Destination, candidates: Vec<String>) {
    let Ok(all) = list(dest) else {
        return;
    };
    let referenced: std::collections::HashSet<String> = all
        .into_iter()
        .flat_map(|m| m.files.into_iter().map(|f| f.sha256))
        .collect();
    for sha in candidates
        .into_iter()
        .filter(|s| is_sha256_hex(s) && !referenced.contains(s))
    {
        dest.backend().remove_object(&sha);
    }
}

/// Backs up a page-store tablespace: a consistent copy of its file (synced and
/// checkpointed first; see [`Tablespace::export`]) into `dest`, as ciphertext. The
/// tablespace's header carries its wrapped keys, so the one file is the whole backup.
///
/// # Errors
/// As [`Tablespace::export`]; [`Error::Io`] (earlier backups in `dest` are intact).
pub fn create_tablespace(ts: &Tablespace, dest: impl Into<Destination>) -> Result<BackupReport> {
    let dest = &dest.into();
    dest.backend().prepare(true)?;
    let info = ts.info();
    let scratch = scratch(".tde-tablespace-")?;
    let copy = scratch.path().join("tablespace");
    let mut file = File::create(&copy).map_err(|e| io("creating", &copy, e))?;
    let size = ts.export(&mut file)?;
    file.sync_all().map_err(|e| io("syncing", &copy, e))?;
    drop(file);
    let trail = scratch.path().join("audit");
    ts.copy_audit_to(&trail)?;
    let (_, sha256, mut copied) = store_object(dest, &copy)?;
    let (trail_size, trail_sha256, n) = store_object(dest, &trail)?;
    copied += n;
    dest.backend().sync_objects()?;
    let name = if is_plain_name(&info.name, MAX_NAME - 6) {
        info.name
    } else {
        "tablespace".to_owned()
    };
    let (version, key) = ts.manifest_key()?;
    let mut manifest = Manifest {
        format: FORMAT,
        kind: BackupKind::Tablespace,
        id: new_id(dest)?,
        created: SystemClock.now(),
        store_id: info.id,
        kms: info.kms,
        files: vec![
            BackupFile {
                name: name.clone(),
                size,
                sha256,
            },
            BackupFile {
                name: format!("{name}-audit"),
                size: trail_size,
                sha256: trail_sha256,
            },
        ],
        mac_version: 0,
        mac: String::new(),
        checksum: String::new(),
    };
    manifest.seal(version, &key)?;
    write_manifest(dest, &manifest)?;
    Ok(BackupReport {
        id: manifest.id,
        files: manifest.files.len(),
        bytes: size + trail_size,
        copied_bytes: copied,
    })
}

fn tablespace_manifest(dest: &Destination, id: Option<&str>) -> Result<Manifest> {
    let manifest = find(dest, id)?;
    match manifest.kind {
        BackupKind::Tablespace => Ok(manifest),
        BackupKind::Store => Err(Error::InvalidArgument(format!(
            "backup {} holds a key-value store; restore it with restore",
            manifest.id
        ))),
    }
}

/// Restores tablespace backup `id` (the latest if `None`) to the new file `path`, opens
/// it (which needs the KMS) and checks the manifest's HMAC. On failure nothing is left at
/// `path`.
///
/// # Errors
/// [`Error::InvalidArgument`] if `path` exists or the backup is of a store;
/// [`Error::Corrupt`] if the copy does not match its checksum;
/// [`Error::Authentication`] if the manifest or the header was forged;
/// [`Error::KeysUnavailable`] if the KMS will not unwrap the keys; [`Error::Io`].
pub fn restore_tablespace(
    dest: impl Into<Destination>,
    id: Option<&str>,
    path: &Path,
    options: &TablespaceOptions,
    pool: &BufferPool,
) -> Result<Tablespace> {
    let dest = &dest.into();
    let manifest = tablespace_manifest(dest, id)?;
    let trail = crate::audit::tablespace_audit_path(path);
    if path.exists() || crate::page::journal_path(path).exists() || trail.exists() {
        return Err(Error::InvalidArgument(format!(
            "{} already exists; restore into a new file",
            path.display()
        )));
    }
    // The trail comes back with the file (it continues its chain); backups made before
    // trails were carried bring none, and the tablespace starts a new one.
    let result = copy_verified(dest, &manifest, &manifest.files[0], path)
        .and_then(|()| match manifest.files.get(1) {
            Some(file) => copy_verified(dest, &manifest, file, &trail),
            None => Ok(()),
        })
        .and_then(|()| Tablespace::open(path, options, pool))
        .and_then(|ts| {
            manifest.authenticate(ts.manifest_key_at(manifest.mac_version).as_ref())?;
            if crate::hex::encode(&ts.id()) != manifest.store_id {
                return Err(corrupt(
                    &manifest_location(dest, &manifest.id),
                    format!("backup {}: its file is another tablespace", manifest.id),
                ));
            }
            Ok(ts)
        });
    if result.is_err() {
        let _ = std::fs::remove_file(path);
        let _ = std::fs::remove_file(crate::page::journal_path(path));
        let _ = std::fs::remove_file(&trail);
    }
    result
}

/// As [`verify`], then restores the tablespace backup into a temporary file (in the
/// system's temporary directory) and authenticates its manifest and every page (needs
/// the KMS). `records` counts pages.
///
/// # Errors
/// As [`verify`] and [`restore_tablespace`]; [`Error::Authentication`] for a page.
pub fn verify_deep_tablespace(
    dest: impl Into<Destination>,
    id: Option<&str>,
    options: &TablespaceOptions,
) -> Result<VerifyReport> {
    let dest = dest.into();
    let mut report = verify(&dest, id)?;
    let scratch = scratch(".tde-deep-verify-")?;
    let pool = BufferPool::new(4 << 20);
    let mut options = options.clone();
    let trail = dest.trail()?;
    options.audit = Some(trail.log.clone());
    let pages = restore_tablespace(&dest, id, &scratch.path().join("tablespace"), &options, &pool)
        .and_then(|ts| ts.verify());
    trail.finish()?;
    report.records = Some(pages?);
    Ok(report)
}

/// Rewraps tablespace backup `id` (the latest if `None`) for master key `to_key` of the
/// KMS `to` (within one KMS when `to` is `None`): the copy is opened with `options`
/// (its current KMS) in the system's temporary directory, authenticated, rewrapped or
/// migrated, and stored as the backup's new file under the same id. Only the header page
/// differs; the pages stay as they are. The KMS calls are recorded in the destination's
/// audit trail ([`audit_records`]).
///
/// # Errors
/// [`Error::Kms`] if a key refuses (the backup is unchanged); [`Error::Io`].
pub fn rewrap_tablespace(
    dest: impl Into<Destination>,
    id: Option<&str>,
    options: &TablespaceOptions,
    to: Option<(std::sync::Arc<dyn crate::kms::Kms>, Option<&str>)>,
    to_key: &str,
) -> Result<Manifest> {
    let dest = dest.into();
    let manifest = tablespace_manifest(&dest, id)?;
    let trail = dest.trail()?;
    let mut options = options.clone();
    options.audit = Some(trail.log.clone());
    let result = rewrap_tablespace_in(&dest, manifest, &options, to, to_key);
    trail.finish()?;
    result
}

fn rewrap_tablespace_in(
    dest: &Destination,
    mut manifest: Manifest,
    options: &TablespaceOptions,
    to: Option<(std::sync::Arc<dyn crate::kms::Kms>, Option<&str>)>,
    to_key: &str,
) -> Result<Manifest> {
    let scratch = scratch(".tde-rewrap-")?;
    let copy = scratch.path().join("tablespace");
    let pool = BufferPool::new(4 << 20);
    let ts = restore_tablespace(dest, Some(&manifest.id), &copy, options, &pool)?;
    match to {
        Some((kms, uri)) => ts.migrate(kms, to_key, uri)?,
        None => ts.rewrap(Some(to_key))?,
    };
    let info = ts.info();
    let mac_key = ts.manifest_key_at(manifest.mac_version);
    ts.close()?;
    let (size, sha256, _) = store_object(dest, &copy)?;
    dest.backend().sync_objects()?;
    let name = manifest.files[0].name.clone();
    let old = std::mem::replace(&mut manifest.files[0], BackupFile { name, size, sha256 });
    manifest.kms = info.kms;
    let mac_key = mac_key.ok_or_else(|| Error::InvalidArgument("no manifest key".into()))?;
    manifest.seal(manifest.mac_version, &mac_key)?;
    write_manifest(dest, &manifest)?;
    remove_unreferenced(dest, vec![old.sha256]);
    Ok(manifest)
}
