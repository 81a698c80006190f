//! Where backups live: a directory, or a prefix in S3-compatible object storage
//! (`s3://BUCKET/PREFIX`, with the `s3` feature).
//!
//! Both hold the same layout under their root: `objects/<sha256>`, `backups/<id>.json`
//! and the destination's audit trail `TDE-AUDIT`. The backup logic (`super`) only ever
//! names an object by a validated SHA-256, a manifest by a validated id, and the trail;
//! this module maps those names to files or object keys, so nothing a manifest says can
//! address anything else.
//!
//! What each kind guarantees:
//! - a directory: objects and manifests are written to a temporary file, synced and
//!   renamed; entries are opened without following symbolic links and must be regular
//!   files; `objects/` and `backups/` must be real directories;
//! - object storage: a PUT (or a completed multipart upload) is atomic, so a reader sees
//!   a whole object or none; an interrupted multipart upload is aborted and never
//!   becomes visible. Its audit trail is read, continued in a scratch file and written
//!   back whole when the operation ends: two operations on one destination at the same
//!   time may lose one's records (the later write wins).

use std::fmt;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::audit::{AUDIT_FILE, AuditLog};
use crate::error::{Error, Result};

pub(super) const OBJECTS: &str = "objects";
pub(super) const BACKUPS: &str = "backups";

/// A backup destination: a directory (any path) or `s3://BUCKET/PREFIX`.
///
/// Cheap to clone. Every function of [`crate::backup`] takes anything that converts into
/// one, a `&Path` included.
#[derive(Clone)]
pub struct Destination {
    inner: Arc<dyn Backend>,
}

impl fmt::Debug for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Destination").field(&self.inner.name()).finish()
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.inner.name())
    }
}

impl Destination {
    /// The directory `path`.
    pub fn dir(path: impl Into<PathBuf>) -> Destination {
        Destination {
            inner: Arc::new(DirBackend { root: path.into() }),
        }
    }

    /// `s3://BUCKET/PREFIX` (with the `s3` feature), else a directory.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a malformed `s3://` URL, or one given to a build
    /// without the `s3` feature.
    pub fn parse(s: &str) -> Result<Destination> {
        if let Some(rest) = s.strip_prefix("s3://") {
            return Self::s3(rest);
        }
        if s.contains("://") {
            return Err(Error::InvalidArgument(format!(
                "{s:?}: a backup destination is a directory or s3://BUCKET/PREFIX"
            )));
        }
        Ok(Destination::dir(s))
    }

    #[cfg(feature = "s3")]
    fn s3(rest: &str) -> Result<Destination> {
        Ok(Destination {
            inner: Arc::new(super::s3::S3Backend::connect(rest)?),
        })
    }

    #[cfg(not(feature = "s3"))]
    fn s3(_rest: &str) -> Result<Destination> {
        Err(Error::InvalidArgument(
            "s3:// destinations need tde built with the `s3` feature (cargo build --features s3)".into(),
        ))
    }

    /// The directory, for a destination that is one.
    pub fn local_path(&self) -> Option<&Path> {
        self.inner.local_path()
    }

    pub(super) fn backend(&self) -> &dyn Backend {
        &*self.inner
    }

    /// The destination's audit trail, ready to continue; [`Trail::finish`] stores it.
    pub(super) fn trail(&self) -> Result<Trail> {
        self.inner.prepare(false)?;
        match self.local_path() {
            Some(root) => Ok(Trail {
                log: Arc::new(AuditLog::open(root, super::DESTINATION_CHAIN)?),
                scratch: None,
            }),
            None => {
                let scratch = super::scratch(".tde-trail-")?;
                let path = scratch.path().join(AUDIT_FILE);
                self.inner.fetch_trail(&path)?;
                Ok(Trail {
                    log: Arc::new(AuditLog::open(scratch.path(), super::DESTINATION_CHAIN)?),
                    scratch: Some((scratch, self.clone())),
                })
            }
        }
    }

    /// A copy of the destination's audit trail in a scratch directory (for a directory,
    /// the trail itself): for reading and verifying.
    pub(super) fn trail_copy(&self) -> Result<(PathBuf, Option<tempfile::TempDir>)> {
        self.inner.prepare(false)?;
        match self.local_path() {
            Some(root) => Ok((root.join(AUDIT_FILE), None)),
            None => {
                let scratch = super::scratch(".tde-trail-")?;
                let path = scratch.path().join(AUDIT_FILE);
                self.inner.fetch_trail(&path)?;
                Ok((path, Some(scratch)))
            }
        }
    }
}

impl From<&Path> for Destination {
    fn from(path: &Path) -> Destination {
        Destination::dir(path)
    }
}

impl From<&PathBuf> for Destination {
    fn from(path: &PathBuf) -> Destination {
        Destination::dir(path.as_path())
    }
}

impl From<PathBuf> for Destination {
    fn from(path: PathBuf) -> Destination {
        Destination::dir(path)
    }
}

impl From<&Destination> for Destination {
    fn from(dest: &Destination) -> Destination {
        dest.clone()
    }
}

/// A destination's audit trail for one operation.
pub(super) struct Trail {
    pub(super) log: Arc<AuditLog>,
    /// For object storage: the scratch copy and where it goes back.
    scratch: Option<(tempfile::TempDir, Destination)>,
}

impl Trail {
    /// Stores the trail back (object storage); a directory's trail is already in place.
    pub(super) fn finish(self) -> Result<()> {
        if let Some((scratch, dest)) = &self.scratch {
            dest.inner.store_trail(&scratch.path().join(AUDIT_FILE))?;
        }
        Ok(())
    }
}

/// One kind of destination. Names are validated by the caller: `sha` is 64 hex digits,
/// `id` a backup id.
pub(super) trait Backend: Send + Sync {
    /// For messages: the path or URL.
    fn name(&self) -> String;
    /// The directory, for a local destination.
    fn local_path(&self) -> Option<&Path> {
        None
    }
    /// Where object `sha` is, for messages.
    fn object_location(&self, sha: &str) -> PathBuf;
    /// Checks the layout (creating it when `create`).
    fn prepare(&self, create: bool) -> Result<()>;
    /// The size of object `sha` if it is there (as a regular file).
    fn object_size(&self, sha: &str) -> Result<Option<u64>>;
    /// Stores the file `from` as object `sha`, replacing whatever is under that name.
    fn put_object(&self, sha: &str, from: &Path) -> Result<()>;
    /// Makes the objects stored so far durable.
    fn sync_objects(&self) -> Result<()>;
    /// Reads object `sha`; `None` if it is missing.
    fn open_object(&self, sha: &str) -> Result<Option<Box<dyn Read + '_>>>;
    /// Removes object `sha` (best effort).
    fn remove_object(&self, sha: &str);
    /// The names of the entries under `backups/`.
    fn manifest_names(&self) -> Result<Vec<String>>;
    /// The bytes of manifest `id`, at most `max` (more is an error).
    fn read_manifest(&self, id: &str, max: u64) -> Result<Vec<u8>>;
    /// Writes manifest `id` atomically.
    fn write_manifest(&self, id: &str, bytes: &[u8]) -> Result<()>;
    /// Copies the audit trail to `to` (nothing if there is none yet).
    fn fetch_trail(&self, to: &Path) -> Result<()>;
    /// Replaces the audit trail with `from`.
    fn store_trail(&self, from: &Path) -> Result<()>;
}

fn io(what: &str, path: &Path, e: std::io::Error) -> Error {
    Error::io(format!("{what} {}", path.display()), e)
}

/// Opens `path` for reading without following a symbolic link, and only if it is a
/// regular file.
pub(super) fn open_regular(path: &Path) -> Result<File> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::custom_flags(&mut options, libc::O_NOFOLLOW);
    let file = options.open(path).map_err(|e| match e.raw_os_error() {
        #[cfg(unix)]
        Some(libc::ELOOP) => super::corrupt(path, "is a symbolic link".into()),
        _ => io("opening", path, e),
    })?;
    let meta = file.metadata().map_err(|e| io("reading", path, e))?;
    if !meta.is_file() {
        return Err(super::corrupt(path, "is not a regular file".into()));
    }
    Ok(file)
}

pub(super) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io("syncing", dir, e))
}

/// Copies `from` to `to` through a temporary file, fsynced, then renamed.
fn copy_durably(from: &Path, to: &Path) -> Result<()> {
    let tmp = to.with_extension("tmp");
    let mut source = open_regular(from)?;
    let mut out = File::create(&tmp).map_err(|e| io("creating", &tmp, e))?;
    std::io::copy(&mut source, &mut out)
        .and_then(|_| out.sync_all())
        .map_err(|e| io("copying to", &tmp, e))?;
    std::fs::rename(&tmp, to).map_err(|e| io("renaming", &tmp, e))
}

/// A directory.
struct DirBackend {
    root: PathBuf,
}

impl DirBackend {
    fn object(&self, sha: &str) -> PathBuf {
        self.root.join(OBJECTS).join(sha)
    }

    fn manifest(&self, id: &str) -> PathBuf {
        self.root.join(BACKUPS).join(format!("{id}.json"))
    }
}

impl Backend for DirBackend {
    fn name(&self) -> String {
        self.root.display().to_string()
    }

    fn local_path(&self) -> Option<&Path> {
        Some(&self.root)
    }

    fn object_location(&self, sha: &str) -> PathBuf {
        self.object(sha)
    }

    fn prepare(&self, create: bool) -> Result<()> {
        for d in [self.root.join(OBJECTS), self.root.join(BACKUPS)] {
            if create && std::fs::symlink_metadata(&d).is_err() {
                std::fs::create_dir_all(&d).map_err(|e| io("creating", &d, e))?;
            }
            let meta = std::fs::symlink_metadata(&d).map_err(|e| io("reading", &d, e))?;
            if !meta.is_dir() {
                return Err(super::corrupt(&d, "is not a directory (a symbolic link?)".into()));
            }
        }
        Ok(())
    }

    fn object_size(&self, sha: &str) -> Result<Option<u64>> {
        Ok(match std::fs::symlink_metadata(self.object(sha)) {
            Ok(meta) if meta.is_file() => Some(meta.len()),
            _ => None,
        })
    }

    fn put_object(&self, sha: &str, from: &Path) -> Result<()> {
        let object = self.object(sha);
        // A damaged or planted entry under that name is replaced with the real bytes.
        if std::fs::symlink_metadata(&object).is_ok() {
            std::fs::remove_file(&object).map_err(|e| io("replacing", &object, e))?;
        }
        copy_durably(from, &object)
    }

    fn sync_objects(&self) -> Result<()> {
        sync_dir(&self.root.join(OBJECTS))
    }

    fn open_object(&self, sha: &str) -> Result<Option<Box<dyn Read + '_>>> {
        let object = self.object(sha);
        if std::fs::symlink_metadata(&object).is_err() {
            return Ok(None);
        }
        Ok(Some(Box::new(open_regular(&object)?)))
    }

    fn remove_object(&self, sha: &str) {
        let _ = std::fs::remove_file(self.object(sha));
    }

    fn manifest_names(&self) -> Result<Vec<String>> {
        self.prepare(false)?;
        let backups = self.root.join(BACKUPS);
        let entries = std::fs::read_dir(&backups).map_err(|e| io("reading", &backups, e))?;
        let mut names = Vec::new();
        for entry in entries {
            let name = entry.map_err(|e| io("reading", &backups, e))?.file_name();
            if let Some(name) = name.to_str() {
                names.push(name.to_owned());
            }
        }
        Ok(names)
    }

    fn read_manifest(&self, id: &str, max: u64) -> Result<Vec<u8>> {
        let path = self.manifest(id);
        let mut bytes = Vec::new();
        open_regular(&path)?
            .take(max + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| io("reading", &path, e))?;
        if bytes.len() as u64 > max {
            return Err(super::corrupt(&path, format!("larger than {max} bytes")));
        }
        Ok(bytes)
    }

    fn write_manifest(&self, id: &str, json: &[u8]) -> Result<()> {
        let backups = self.root.join(BACKUPS);
        let path = self.manifest(id);
        let tmp = backups.join(format!(".{id}.json.tmp"));
        let _ = std::fs::remove_file(&tmp);
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .and_then(|mut f| f.write_all(json).and_then(|()| f.sync_all()))
            .map_err(|e| io("writing", &tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| io("renaming", &tmp, e))?;
        sync_dir(&backups)
    }

    fn fetch_trail(&self, to: &Path) -> Result<()> {
        let trail = self.root.join(AUDIT_FILE);
        if std::fs::symlink_metadata(&trail).is_ok() {
            copy_durably(&trail, to)?;
        }
        Ok(())
    }

    fn store_trail(&self, from: &Path) -> Result<()> {
        copy_durably(from, &self.root.join(AUDIT_FILE))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_tells_directories_from_urls() {
        let d = Destination::parse("/var/backups/tde").unwrap();
        assert_eq!(d.local_path(), Some(Path::new("/var/backups/tde")));
        assert_eq!(d.to_string(), "/var/backups/tde");
        let err = Destination::parse("gs://bucket/x").unwrap_err().to_string();
        assert!(err.contains("s3://BUCKET/PREFIX"), "{err}");
        #[cfg(not(feature = "s3"))]
        {
            let err = Destination::parse("s3://bucket/x").unwrap_err().to_string();
            assert!(err.contains("`s3` feature"), "{err}");
        }
    }
}
