//! What a path holds, and opening it as a [`KeyLifecycle`]: the one place that tells a
//! RocksDB store (a directory with a keyring) from a page-store tablespace (a file that
//! starts with the tablespace magic), for tools that take a path.
//!
//! Security notes: what [`recorded_kms`] returns is read without keys (the keyring's and
//! the header's authentication needs the data keys the KMS unwraps). Someone who can
//! write the store can point it at another KMS; opening then fails unless that KMS holds
//! keys for every wrapped key and the keyring's tag, which means the whole store was
//! replaced. Pin the KMS (`--kms`, `TDE_KMS`) where that matters.

use std::path::Path;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::keys::KeyLifecycle;
use crate::kms::Kms;
use crate::kv::{Store, StoreOptions};
use crate::page::{BufferPool, Tablespace, TablespaceOptions};

/// What a path holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum EngineKind {
    /// A RocksDB store directory.
    Store,
    /// A page-store tablespace file.
    Tablespace,
}

/// What `path` holds.
///
/// # Errors
/// [`Error::InvalidArgument`] if it is neither a store nor a tablespace; [`Error::Io`].
pub fn identify(path: &Path) -> Result<EngineKind> {
    let meta =
        std::fs::symlink_metadata(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    if meta.is_dir() {
        if std::fs::symlink_metadata(path.join(format!("{}.a", crate::keyring::KEYRING_FILE))).is_ok()
            || std::fs::symlink_metadata(path.join(format!("{}.b", crate::keyring::KEYRING_FILE))).is_ok()
        {
            return Ok(EngineKind::Store);
        }
        return Err(Error::InvalidArgument(format!(
            "{} is a directory without a keyring: not a tde store",
            path.display()
        )));
    }
    if meta.is_file() {
        let mut magic = [0u8; 8];
        let read = std::fs::File::open(path)
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic))
            .is_ok();
        if read && magic == crate::page::MAGIC {
            return Ok(EngineKind::Tablespace);
        }
    }
    Err(Error::InvalidArgument(format!(
        "{} is neither a tde store nor a tablespace",
        path.display()
    )))
}

/// The KMS `path` records (URI or description), read without keys.
///
/// # Errors
/// As [`identify`]; [`Error::Corrupt`] or [`Error::Format`] for a damaged keyring or header.
pub fn recorded_kms(path: &Path) -> Result<String> {
    match identify(path)? {
        EngineKind::Store => Ok(crate::keyring::Keyring::open(path)?.data().kms.clone()),
        EngineKind::Tablespace => Ok(Tablespace::inspect(path)?.kms),
    }
}

/// Opens what `path` holds with `kms`, recording `kms_uri` for a later open.
/// A tablespace gets a buffer pool of `pool_bytes` of its own.
///
/// # Errors
/// As [`identify`], [`Store::open`] and [`Tablespace::open`].
pub fn open(
    path: &Path,
    kms: Arc<dyn Kms>,
    kms_uri: Option<&str>,
    pool_bytes: usize,
) -> Result<Box<dyn KeyLifecycle>> {
    match identify(path)? {
        EngineKind::Store => {
            let mut options = StoreOptions::new(kms);
            if let Some(uri) = kms_uri {
                options = options.kms_uri(uri);
            }
            Ok(Box::new(Store::open(path, options)?))
        }
        EngineKind::Tablespace => {
            let mut options = TablespaceOptions::new(kms);
            if let Some(uri) = kms_uri {
                options = options.kms_uri(uri);
            }
            Ok(Box::new(Tablespace::open(
                path,
                &options,
                &BufferPool::new(pool_bytes),
            )?))
        }
    }
}

/// The audit trail of what `path` holds: (its file, its chain id), read without keys.
///
/// # Errors
/// As [`identify`] and [`recorded_kms`].
pub fn audit_trail(path: &Path) -> Result<(std::path::PathBuf, String)> {
    match identify(path)? {
        EngineKind::Store => Ok((
            path.join(crate::audit::AUDIT_FILE),
            crate::keyring::Keyring::open(path)?.data().store_id.clone(),
        )),
        EngineKind::Tablespace => Ok((
            crate::audit::tablespace_audit_path(path),
            Tablespace::inspect(path)?.id,
        )),
    }
}
