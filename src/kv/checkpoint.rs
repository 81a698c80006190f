//! Consistent snapshots of a store's files, for backups: a RocksDB checkpoint (SST files
//! hard-linked, so the same ciphertext bytes; a new MANIFEST, CURRENT and OPTIONS,
//! encrypted under the store-level key like the originals) plus the keyring, taken under
//! the keyring lock so the two agree, and the audit trail.

use std::path::PathBuf;

use super::{Store, engine};
use crate::error::{Error, Result};
use crate::keyring::KEYRING_FILE;

const PREFIX: &str = ".tde-checkpoint-";

/// A checkpoint directory inside the store; removed when dropped.
#[derive(Debug)]
pub(crate) struct Checkpoint {
    pub(crate) dir: PathBuf,
}

impl Drop for Checkpoint {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Store {
    /// The key that authenticates backup manifests now: (store-level data key version,
    /// its derived HMAC key).
    pub(crate) fn manifest_key(&self) -> Result<(u32, crate::cipher::kdf::MacKey)> {
        let keyring = self.inner.keyring.lock();
        let version = keyring.data().store_key.current;
        let key = keyring
            .mac_key(version, crate::backup::MANIFEST_MAC_LABEL)
            .ok_or_else(|| Error::InvalidArgument(format!("no store-level data key version {version}")))?;
        Ok((version, key))
    }

    /// The backup-manifest key under store-level data key version `version`, if the
    /// store holds that version.
    pub(crate) fn manifest_key_at(&self, version: u32) -> Option<crate::cipher::kdf::MacKey> {
        self.inner
            .keyring
            .lock()
            .mac_key(version, crate::backup::MANIFEST_MAC_LABEL)
    }

    /// Takes a checkpoint of the store's files and keyring (flushing memtables first).
    pub(crate) fn checkpoint(&self) -> Result<Checkpoint> {
        let inner = &self.inner;
        let _keyring = inner.keyring.lock();
        // Leftovers of an interrupted backup.
        if let Ok(entries) = std::fs::read_dir(&inner.path) {
            for entry in entries.flatten() {
                if entry.file_name().to_string_lossy().starts_with(PREFIX) {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }
        let mut id = [0u8; 8];
        crate::error::os_random(&mut id)?;
        let checkpoint = Checkpoint {
            dir: inner.path.join(format!("{PREFIX}{}", crate::hex::encode(&id))),
        };
        rocksdb::checkpoint::Checkpoint::new(&inner.db)
            .and_then(|c| c.create_checkpoint(&checkpoint.dir))
            .map_err(engine)?;
        for copy in ["a", "b"] {
            let name = format!("{KEYRING_FILE}.{copy}");
            std::fs::copy(inner.path.join(&name), checkpoint.dir.join(&name)).map_err(|e| {
                Error::io(
                    format!("copying the keyring into {}", checkpoint.dir.display()),
                    e,
                )
            })?;
        }
        // The audit trail travels with the backup: a restored store continues its chain.
        inner
            .keys
            .audit()
            .copy_to(&checkpoint.dir.join(crate::audit::AUDIT_FILE))?;
        Ok(checkpoint)
    }
}
