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
//! Layout of a backup destination:
//!
//! ```text
//! DEST/objects/<sha256>       one file per distinct content (SST files are shared)
//! DEST/backups/<id>.json      manifest: id, time, store id, KMS, files (name, size,
//!                             sha256), and a SHA-256 of the manifest itself
//! ```
//!
//! Security notes: nothing in a backup is plaintext, and no key is in it unwrapped. A
//! restored store uses random nonces like any other, so writing to it after a restore
//! cannot repeat a nonce under the same key with more than the usual (negligible)
//! probability.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::clock::{Clock, SystemClock};
use crate::error::{Error, Result};
use crate::kms::Timestamp;
use crate::kv::{Store, StoreOptions};
use crate::page::{BufferPool, Tablespace, TablespaceOptions};

const FORMAT: u32 = 1;
const OBJECTS: &str = "objects";
const BACKUPS: &str = "backups";

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
    /// SHA-256 of this manifest's JSON with this field empty (hex).
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
    /// With `--deep`: records authenticated.
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

fn sha256_file(path: &Path) -> Result<(u64, String)> {
    let mut file = File::open(path).map_err(|e| io("reading", path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(|e| io("reading", path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((size, crate::hex::encode(&hasher.finalize())))
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io("syncing", dir, e))
}

/// Copies `from` to `to` through a temporary file, fsynced, then renamed.
fn copy_durably(from: &Path, to: &Path) -> Result<()> {
    let tmp = to.with_extension("tmp");
    std::fs::copy(from, &tmp).map_err(|e| io("copying to", &tmp, e))?;
    File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(|e| io("syncing", &tmp, e))?;
    std::fs::rename(&tmp, to).map_err(|e| io("renaming", &tmp, e))
}

impl Manifest {
    fn checksum_of(&self) -> Result<String> {
        let mut unsigned = self.clone();
        unsigned.checksum = String::new();
        let bytes = serde_json::to_vec(&unsigned).map_err(|e| Error::InvalidArgument(e.to_string()))?;
        Ok(crate::hex::encode(&Sha256::digest(&bytes)))
    }

    fn read(path: &Path) -> Result<Manifest> {
        let bytes = std::fs::read(path).map_err(|e| io("reading", path, e))?;
        let manifest: Manifest =
            serde_json::from_slice(&bytes).map_err(|e| corrupt(path, format!("manifest: {e}")))?;
        if manifest.format != FORMAT {
            return Err(corrupt(path, format!("unsupported format {}", manifest.format)));
        }
        if manifest.checksum_of()? != manifest.checksum {
            return Err(corrupt(
                path,
                "the manifest was modified (checksum mismatch)".into(),
            ));
        }
        Ok(manifest)
    }
}

/// A new backup id: the time to the nanosecond, so ids sort in the order backups were
/// taken, and later than every id already in `dest`.
fn new_id(dest: &Path) -> Result<String> {
    let now = std::time::SystemTime::now();
    let nanos = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|e| Error::InvalidArgument(e.to_string()))?
        .subsec_nanos();
    let stamp = humantime::format_rfc3339_seconds(now)
        .to_string()
        .replace([':', '-'], "");
    let mut id = format!("{}.{nanos:09}Z", stamp.trim_end_matches('Z'));
    if let Some(last) = list(dest)?.last()
        && last.id >= id
    {
        id = format!("{}+", last.id);
    }
    Ok(id)
}

/// Takes a backup of the open `store` into `dest` (created if needed). Files already in
/// `dest` from earlier backups are not copied again.
///
/// # Errors
/// [`Error::Io`] (the store is unchanged; earlier backups in `dest` are intact);
/// [`Error::Engine`] if RocksDB cannot take the checkpoint.
pub fn create(store: &Store, dest: &Path) -> Result<BackupReport> {
    create_with_progress(store, dest, &mut |_, _| {})
}

/// As [`create`], calling `progress(bytes done, bytes total)` after each file.
///
/// # Errors
/// As [`create`].
pub fn create_with_progress(
    store: &Store,
    dest: &Path,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<BackupReport> {
    let objects = dest.join(OBJECTS);
    let backups = dest.join(BACKUPS);
    for d in [&objects, &backups] {
        std::fs::create_dir_all(d).map_err(|e| io("creating", d, e))?;
    }
    let checkpoint = store.checkpoint()?;
    let result = ingest(store, &checkpoint.dir, dest, progress);
    drop(checkpoint);
    result
}

fn ingest(
    store: &Store,
    checkpoint: &Path,
    dest: &Path,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<BackupReport> {
    let objects = dest.join(OBJECTS);
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
        let path = checkpoint.join(&name);
        let (size, sha256) = sha256_file(&path)?;
        let object = objects.join(&sha256);
        if !object.exists() {
            copy_durably(&path, &object)?;
            copied += size;
        }
        bytes += size;
        files.push(BackupFile { name, size, sha256 });
        progress(bytes.min(total), total);
    }
    sync_dir(&objects)?;
    let now = SystemClock.now();
    let mut manifest = Manifest {
        format: FORMAT,
        id: new_id(dest)?,
        kind: BackupKind::Store,
        created: now,
        store_id: store.store_id(),
        kms: store.recorded_kms(),
        files,
        checksum: String::new(),
    };
    manifest.checksum = manifest.checksum_of()?;
    write_manifest(dest, &manifest)?;
    Ok(BackupReport {
        id: manifest.id,
        files: manifest.files.len(),
        bytes,
        copied_bytes: copied,
    })
}

fn write_manifest(dest: &Path, manifest: &Manifest) -> Result<()> {
    let backups = dest.join(BACKUPS);
    let path = backups.join(format!("{}.json", manifest.id));
    let tmp = path.with_extension("tmp");
    let json = serde_json::to_vec_pretty(manifest).map_err(|e| Error::InvalidArgument(e.to_string()))?;
    File::create(&tmp)
        .and_then(|mut f| f.write_all(&json).and_then(|()| f.sync_all()))
        .map_err(|e| io("writing", &tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| io("renaming", &tmp, e))?;
    sync_dir(&backups)
}

/// Every backup in `dest`, oldest first.
///
/// # Errors
/// [`Error::Io`]; [`Error::Corrupt`] for a damaged manifest.
pub fn list(dest: &Path) -> Result<Vec<Manifest>> {
    let backups = dest.join(BACKUPS);
    let entries = std::fs::read_dir(&backups).map_err(|e| io("reading", &backups, e))?;
    let mut out = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| io("reading", &backups, e))?.path();
        if path.extension().is_some_and(|x| x == "json") {
            out.push(Manifest::read(&path)?);
        }
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}

/// The backup `id`, or the latest.
///
/// # Errors
/// [`Error::InvalidArgument`] if there is none (or no such id); as [`list`].
pub fn find(dest: &Path, id: Option<&str>) -> Result<Manifest> {
    let all = list(dest)?;
    match id {
        Some(id) => all.into_iter().find(|m| m.id == id),
        None => all.into_iter().last(),
    }
    .ok_or_else(|| {
        Error::InvalidArgument(match id {
            Some(id) => format!("{} has no backup {id}", dest.display()),
            None => format!("{} holds no backup", dest.display()),
        })
    })
}

/// Checks every backup in `dest` (or only `id`) without any key: each manifest's
/// checksum, and each file's presence, size and SHA-256.
///
/// # Errors
/// [`Error::Corrupt`] naming the backup and file; [`Error::Io`].
pub fn verify(dest: &Path, id: Option<&str>) -> Result<VerifyReport> {
    verify_with_progress(dest, id, &mut |_, _| {})
}

/// As [`verify`], calling `progress(bytes done, bytes total)` after each file.
///
/// # Errors
/// As [`verify`].
pub fn verify_with_progress(
    dest: &Path,
    id: Option<&str>,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<VerifyReport> {
    let manifests = match id {
        Some(_) => vec![find(dest, id)?],
        None => list(dest)?,
    };
    let total: u64 = manifests.iter().flat_map(|m| &m.files).map(|f| f.size).sum();
    let mut report = VerifyReport {
        backups: 0,
        files: 0,
        bytes: 0,
        records: None,
    };
    for manifest in &manifests {
        for file in &manifest.files {
            let object = dest.join(OBJECTS).join(&file.sha256);
            if !object.exists() {
                return Err(corrupt(
                    &object,
                    format!("backup {}: {} is missing", manifest.id, file.name),
                ));
            }
            check_copy(&object, &object, manifest, file)?;
            report.files += 1;
            report.bytes += file.size;
            progress(report.bytes, total);
        }
        report.backups += 1;
    }
    Ok(report)
}

/// Checks that `path` (a copy of `object`) has the size and SHA-256 `file` records.
fn check_copy(path: &Path, object: &Path, manifest: &Manifest, file: &BackupFile) -> Result<()> {
    let (size, sha256) = sha256_file(path)?;
    if size != file.size || sha256 != file.sha256 {
        return Err(corrupt(
            object,
            format!(
                "backup {}: {} does not match its checksum",
                manifest.id, file.name
            ),
        ));
    }
    Ok(())
}

/// Restores backup `id` (or the latest) of `dest` into `path`, which must not exist or
/// be empty, and opens it with `options` (which name the KMS). On any failure, what was
/// written to `path` is removed.
///
/// # Errors
/// [`Error::InvalidArgument`] if `path` holds anything; [`Error::Corrupt`] if a file does
/// not match its checksum; [`Error::KeysUnavailable`] if the KMS will not unwrap the keys
/// (a disabled or deleted master key); [`Error::Io`].
pub fn restore(dest: &Path, id: Option<&str>, path: &Path, options: StoreOptions) -> Result<Store> {
    let manifest = find(dest, id)?;
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
    let result = restore_into(dest, &manifest, path).and_then(|()| Store::open(path, options));
    if result.is_err() {
        let _ = std::fs::remove_dir_all(path);
    }
    result
}

fn restore_into(dest: &Path, manifest: &Manifest, path: &Path) -> Result<()> {
    for file in &manifest.files {
        if file.name.contains(['/', '\\']) || file.name.starts_with('.') {
            return Err(corrupt(
                dest,
                format!("backup {}: bad file name {:?}", manifest.id, file.name),
            ));
        }
        let object = dest.join(OBJECTS).join(&file.sha256);
        let target = path.join(&file.name);
        copy_durably(&object, &target)?;
        check_copy(&target, &object, manifest, file)?;
    }
    sync_dir(path)
}

/// As [`verify`], then restores the backup into a temporary directory inside `dest` and
/// reads and authenticates every record of every table (needs the KMS).
///
/// # Errors
/// As [`verify`] and [`restore`]; [`Error::Authentication`] for a record that fails.
pub fn verify_deep(dest: &Path, id: Option<&str>, options: StoreOptions) -> Result<VerifyReport> {
    let mut report = verify(dest, id)?;
    let scratch = tempfile::Builder::new()
        .prefix(".deep-verify-")
        .tempdir_in(dest)
        .map_err(|e| io("creating a directory in", dest, e))?;
    let target: PathBuf = scratch.path().join("store");
    let store = restore(dest, id, &target, options)?;
    let mut records = 0u64;
    for info in store.tables() {
        let table = store.table(&info.name)?;
        for item in table.iter()? {
            item?;
            records += 1;
        }
    }
    report.records = Some(records);
    Ok(report)
}

/// Rewraps the data keys of backup `id` (or the latest) in `dest` for master key `to_key`
/// of the KMS `to`, without touching its data files: each EDK is re-encrypted inside the
/// KMS when `to` is the KMS that wrapped it (`from`), else unwrapped by `from` and wrapped
/// by `to` in memory. The backup's keyring and manifest are replaced atomically (same id);
/// its `kms` becomes `to_kms_uri` (default: `to`'s description). The old keyring's files
/// are removed from `dest` once no backup refers to them.
///
/// # Errors
/// [`Error::Kms`] if a key refuses (nothing changes); [`Error::Corrupt`], [`Error::Io`].
pub fn rewrap(
    dest: &Path,
    id: Option<&str>,
    from: &dyn crate::kms::Kms,
    to: &dyn crate::kms::Kms,
    same_kms: bool,
    to_key: &str,
    to_kms_uri: Option<&str>,
) -> Result<Manifest> {
    use crate::keyring::{KEYRING_FILE, Keyring};
    use crate::secret::WrappedKey;

    let mut manifest = find(dest, id)?;
    if manifest.kind != BackupKind::Store {
        return Err(Error::InvalidArgument(format!(
            "backup {} holds a tablespace; rewrap it with rewrap_tablespace",
            manifest.id
        )));
    }
    let scratch = tempfile::Builder::new()
        .prefix(".rewrap-")
        .tempdir_in(dest)
        .map_err(|e| io("creating a directory in", dest, e))?;
    let is_keyring = |name: &str| name.starts_with(KEYRING_FILE);
    for file in manifest.files.iter().filter(|f| is_keyring(&f.name)) {
        std::fs::copy(
            dest.join(OBJECTS).join(&file.sha256),
            scratch.path().join(&file.name),
        )
        .map_err(|e| io("copying into", scratch.path(), e))?;
    }
    let mut keyring = Keyring::open(scratch.path())?;
    let key_id = to.describe_key(to_key)?.key_id;
    let store_id = keyring.data().store_id.clone();
    let rewrap_one = |table_id: u32, version: u32, edk: &WrappedKey| -> Result<WrappedKey> {
        let context = crate::keyring::context(&store_id, table_id, version);
        let bytes = if same_kms {
            from.re_encrypt(edk.as_bytes(), &context, to_key, &context)?
        } else {
            let plain = from.decrypt(edk.as_bytes(), &context)?;
            to.encrypt(to_key, plain.expose(), &context)?
        };
        Ok(WrappedKey::from_bytes(bytes))
    };
    let mut next = keyring.data().clone();
    for envelope in
        std::iter::once(&mut next.store_key).chain(next.tables.iter_mut().map(|t| &mut t.envelope))
    {
        for v in &mut envelope.versions {
            v.edk = rewrap_one(envelope.table_id, v.version, &v.edk)?;
            v.cmk_id = key_id.clone();
        }
        envelope.cmk = to_key.to_owned();
    }
    next.default_key = to_key.to_owned();
    next.kms = to_kms_uri.map_or_else(|| to.describe(), ToOwned::to_owned);
    keyring.update(|data| {
        *data = next;
        Ok(())
    })?;

    let old: Vec<String> = manifest
        .files
        .iter()
        .filter(|f| is_keyring(&f.name))
        .map(|f| f.sha256.clone())
        .collect();
    for file in manifest.files.iter_mut().filter(|f| is_keyring(&f.name)) {
        let path = scratch.path().join(&file.name);
        let (size, sha256) = sha256_file(&path)?;
        let object = dest.join(OBJECTS).join(&sha256);
        if !object.exists() {
            copy_durably(&path, &object)?;
        }
        *file = BackupFile {
            name: file.name.clone(),
            size,
            sha256,
        };
    }
    sync_dir(&dest.join(OBJECTS))?;
    manifest.kms = keyring.data().kms.clone();
    manifest.checksum = manifest.checksum_of()?;
    write_manifest(dest, &manifest)?;

    // Old wrapped keys that no backup refers to any more.
    let referenced: std::collections::HashSet<String> = list(dest)?
        .into_iter()
        .flat_map(|m| m.files.into_iter().map(|f| f.sha256))
        .collect();
    for sha in old.into_iter().filter(|s| !referenced.contains(s)) {
        let _ = std::fs::remove_file(dest.join(OBJECTS).join(sha));
    }
    Ok(manifest)
}

/// Backs up a page-store tablespace: a consistent copy of its file (synced and
/// checkpointed first; see [`Tablespace::export`]) into `dest`, as ciphertext. The
/// tablespace's header carries its wrapped keys, so the one file is the whole backup.
///
/// # Errors
/// As [`Tablespace::export`]; [`Error::Io`] (earlier backups in `dest` are intact).
pub fn create_tablespace(ts: &Tablespace, dest: &Path) -> Result<BackupReport> {
    let objects = dest.join(OBJECTS);
    for d in [&objects, &dest.join(BACKUPS)] {
        std::fs::create_dir_all(d).map_err(|e| io("creating", d, e))?;
    }
    let info = ts.info();
    let mut scratch = tempfile::Builder::new()
        .prefix(".tablespace-")
        .tempfile_in(dest)
        .map_err(|e| io("creating a file in", dest, e))?;
    let size = ts.export(scratch.as_file_mut())?;
    scratch
        .as_file()
        .sync_all()
        .map_err(|e| io("syncing", scratch.path(), e))?;
    let (_, sha256) = sha256_file(scratch.path())?;
    let object = objects.join(&sha256);
    let copied = if object.exists() {
        0
    } else {
        scratch
            .persist(&object)
            .map_err(|e| io("storing", &object, e.error))?;
        size
    };
    sync_dir(&objects)?;
    let mut manifest = Manifest {
        format: FORMAT,
        kind: BackupKind::Tablespace,
        id: new_id(dest)?,
        created: SystemClock.now(),
        store_id: info.id,
        kms: info.kms,
        files: vec![BackupFile {
            name: info.name,
            size,
            sha256,
        }],
        checksum: String::new(),
    };
    manifest.checksum = manifest.checksum_of()?;
    write_manifest(dest, &manifest)?;
    Ok(BackupReport {
        id: manifest.id,
        files: 1,
        bytes: size,
        copied_bytes: copied,
    })
}

fn tablespace_manifest(dest: &Path, id: Option<&str>) -> Result<Manifest> {
    let manifest = find(dest, id)?;
    match (manifest.kind, manifest.files.as_slice()) {
        (BackupKind::Tablespace, [_]) => Ok(manifest),
        (BackupKind::Tablespace, _) => Err(corrupt(
            dest,
            format!(
                "backup {} of a tablespace must hold exactly one file",
                manifest.id
            ),
        )),
        (BackupKind::Store, _) => Err(Error::InvalidArgument(format!(
            "backup {} holds a key-value store; restore it with restore",
            manifest.id
        ))),
    }
}

/// Restores tablespace backup `id` (the latest if `None`) to the new file `path` and opens
/// it (which needs the KMS). On failure nothing is left at `path`.
///
/// # Errors
/// [`Error::InvalidArgument`] if `path` exists or the backup is of a store;
/// [`Error::Corrupt`] if the copy does not match its checksum;
/// [`Error::KeysUnavailable`] if the KMS will not unwrap the keys; [`Error::Io`].
pub fn restore_tablespace(
    dest: &Path,
    id: Option<&str>,
    path: &Path,
    options: &TablespaceOptions,
    pool: &BufferPool,
) -> Result<Tablespace> {
    let manifest = tablespace_manifest(dest, id)?;
    if path.exists() || crate::page::journal_path(path).exists() {
        return Err(Error::InvalidArgument(format!(
            "{} already exists; restore into a new file",
            path.display()
        )));
    }
    let file = &manifest.files[0];
    let object = dest.join(OBJECTS).join(&file.sha256);
    let result = copy_durably(&object, path)
        .and_then(|()| check_copy(path, &object, &manifest, file))
        .and_then(|()| Tablespace::open(path, options, pool));
    if result.is_err() {
        let _ = std::fs::remove_file(path);
        let _ = std::fs::remove_file(crate::page::journal_path(path));
    }
    result
}

/// As [`verify`], then restores the tablespace backup into a temporary file inside `dest`
/// and authenticates every page (needs the KMS). `records` counts pages.
///
/// # Errors
/// As [`verify`] and [`restore_tablespace`]; [`Error::Authentication`] for a page.
pub fn verify_deep_tablespace(
    dest: &Path,
    id: Option<&str>,
    options: &TablespaceOptions,
) -> Result<VerifyReport> {
    let mut report = verify(dest, id)?;
    let scratch = tempfile::Builder::new()
        .prefix(".deep-verify-")
        .tempdir_in(dest)
        .map_err(|e| io("creating a directory in", dest, e))?;
    let pool = BufferPool::new(4 << 20);
    let ts = restore_tablespace(dest, id, &scratch.path().join("tablespace"), options, &pool)?;
    report.records = Some(ts.verify()?);
    Ok(report)
}

/// Rewraps tablespace backup `id` (the latest if `None`) for master key `to_key` of the
/// KMS `to` (within one KMS when `to` is `None`): the copy is opened with `options`
/// (its current KMS), rewrapped or migrated, and stored as the backup's new file under
/// the same id. Only the header page differs; the pages stay as they are.
///
/// # Errors
/// [`Error::Kms`] if a key refuses (the backup is unchanged); [`Error::Io`].
pub fn rewrap_tablespace(
    dest: &Path,
    id: Option<&str>,
    options: &TablespaceOptions,
    to: Option<(std::sync::Arc<dyn crate::kms::Kms>, Option<&str>)>,
    to_key: &str,
) -> Result<Manifest> {
    let mut manifest = tablespace_manifest(dest, id)?;
    let scratch = tempfile::Builder::new()
        .prefix(".rewrap-")
        .tempdir_in(dest)
        .map_err(|e| io("creating a directory in", dest, e))?;
    let copy = scratch.path().join("tablespace");
    let pool = BufferPool::new(4 << 20);
    let ts = restore_tablespace(dest, Some(&manifest.id), &copy, options, &pool)?;
    match to {
        Some((kms, uri)) => ts.migrate(kms, to_key, uri)?,
        None => ts.rewrap(Some(to_key))?,
    }
    let info = ts.info();
    ts.close()?;
    let (size, sha256) = sha256_file(&copy)?;
    let object = dest.join(OBJECTS).join(&sha256);
    if !object.exists() {
        copy_durably(&copy, &object)?;
    }
    sync_dir(&dest.join(OBJECTS))?;
    let old = std::mem::replace(
        &mut manifest.files[0],
        BackupFile {
            name: info.name,
            size,
            sha256,
        },
    );
    manifest.kms = info.kms;
    manifest.checksum = manifest.checksum_of()?;
    write_manifest(dest, &manifest)?;
    let referenced = list(dest)?
        .into_iter()
        .any(|m| m.files.iter().any(|f| f.sha256 == old.sha256));
    if !referenced {
        let _ = std::fs::remove_file(dest.join(OBJECTS).join(old.sha256));
    }
    Ok(manifest)
}
