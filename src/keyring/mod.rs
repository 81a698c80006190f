//! The keyring: which data keys (as wrapped EDKs) protect which table of a store, and the
//! open-time unwrap of all of them.
//!
//! Invariant: the keyring holds only wrapped keys and public metadata; it is written
//! atomically and redundantly (`durable::Replicated`: two checksummed copies), so a crash
//! during an update leaves the previous or the new keyring, and one damaged copy still
//! opens. An EDK's encryption context names the store, the table id and the DK version,
//! so the KMS refuses to unwrap it for any other place.
//! Not here: using the keys (`kv`), talking to the KMS beyond unwrap/generate (`kms`).

mod unwrap;

use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::cipher::Suite;
use crate::durable::{FsStorage, Replicated, Storage};
use crate::error::{Error, Result};
use crate::kms::{DataKeySpec, EncryptionContext, GeneratedDataKey, Kms, Timestamp};
use crate::secret::WrappedKey;
pub use unwrap::{KeyFailure, RetryPolicy};
pub(crate) use unwrap::{UnwrapRequest, unwrap_all};

/// File name of the keyring (copies `TDE-KEYRING.a` and `.b`) inside a store directory.
pub const KEYRING_FILE: &str = "TDE-KEYRING";
const KEYRING_MAGIC: [u8; 8] = *b"TDEKRNG\x01";
const FORMAT: u32 = 1;
/// Table id of the store-level key (WAL, MANIFEST, OPTIONS, LOG, ...).
pub const STORE_TABLE_ID: u32 = 0;

/// One version of a data key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DkVersion {
    /// Version number, from 1.
    pub version: u32,
    /// The wrapped key.
    pub edk: WrappedKey,
    /// The master key that wrapped it (key id).
    pub cmk_id: String,
    /// When it was created.
    pub created_at: Timestamp,
    /// Values it had sealed when last recorded (saved at rotation, at each key
    /// maintenance and when the store closes).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub seals: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// A table's (or the store's) envelope.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Envelope {
    /// Table id (0 for the store-level key).
    pub table_id: u32,
    /// The master key as configured (id or alias).
    pub cmk: String,
    /// Suite of the data key.
    pub suite: Suite,
    /// Versions, oldest first.
    pub versions: Vec<DkVersion>,
    /// The version used for new data.
    pub current: u32,
    /// Versions whose data was re-encrypted and whose wrapped key was destroyed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retired: Vec<RetiredVersion>,
    /// A re-encryption pass in progress, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reencrypt: Option<ReencryptState>,
}

impl Envelope {
    /// The number the next data key version gets (retired numbers are never reused).
    pub fn next_version(&self) -> u32 {
        self.versions
            .iter()
            .map(|v| v.version)
            .chain(self.retired.iter().map(|r| r.version))
            .max()
            .unwrap_or(0)
            + 1
    }
}

/// A data key version that no data uses any more: its wrapped key is gone.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RetiredVersion {
    /// Version number.
    pub version: u32,
    /// The master key that had wrapped it (key id).
    pub cmk_id: String,
    /// When it was created.
    pub created_at: Timestamp,
    /// When its wrapped key was destroyed.
    pub retired_at: Timestamp,
}

/// A re-encryption pass: which versions it retires, and which files it must rewrite.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReencryptState {
    /// Versions to retire when the pass completes.
    pub retire: Vec<u32>,
    /// Every file numbered up to this one may hold data under those versions; every later
    /// file holds data under newer versions only.
    pub boundary: u64,
}

/// A table entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TableEntry {
    /// The table's name.
    pub name: String,
    /// Whether values are sealed with AEAD (on by default).
    pub value_seal: bool,
    /// Its keys.
    pub envelope: Envelope,
}

/// Everything the keyring file holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyringData {
    /// Format version.
    pub format: u32,
    /// Random store id, hex.
    pub store_id: String,
    /// The KMS the store was created with (a URI, or the KMS's own description).
    pub kms: String,
    /// Master key for tables that do not choose one.
    pub default_key: String,
    /// The store-level key.
    pub store_key: Envelope,
    /// Tables, in creation order.
    pub tables: Vec<TableEntry>,
    /// Next table id to assign.
    pub next_table_id: u32,
}

/// The encryption context of a data key.
pub fn context(store_id: &str, table_id: u32, version: u32) -> EncryptionContext {
    let table = if table_id == STORE_TABLE_ID {
        "store".to_owned()
    } else {
        table_id.to_string()
    };
    EncryptionContext::new()
        .with("tde:store", store_id)
        .with("tde:table", table)
        .with("tde:dk-version", version.to_string())
}

/// Generates a new data key version for `table_id` under `cmk`.
pub(crate) fn generate(
    kms: &dyn Kms,
    store_id: &str,
    table_id: u32,
    version: u32,
    cmk: &str,
    suite: Suite,
    now: Timestamp,
) -> Result<(DkVersion, GeneratedDataKey)> {
    let generated = kms.generate_data_key(
        cmk,
        DataKeySpec::from(suite),
        &context(store_id, table_id, version),
    )?;
    Ok((
        DkVersion {
            version,
            edk: generated.wrapped.clone(),
            cmk_id: generated.key_id.clone(),
            created_at: now,
            seals: 0,
        },
        generated,
    ))
}

/// The keyring file of a store directory.
#[derive(Debug)]
pub struct Keyring {
    storage: Arc<dyn Storage>,
    file: Replicated,
    seq: u64,
    data: KeyringData,
}

impl Keyring {
    fn replicated() -> Replicated {
        Replicated::new(KEYRING_FILE, "keyring", KEYRING_MAGIC)
    }

    /// Writes a new keyring into `dir`.
    ///
    /// # Errors
    /// [`Error::Io`].
    pub fn create(dir: &Path, data: KeyringData) -> Result<Keyring> {
        Keyring::create_in(Arc::new(FsStorage::new(dir)), data)
    }

    /// As [`Keyring::create`], through `storage` (tests simulate crashes with it).
    ///
    /// # Errors
    /// [`Error::Io`].
    pub fn create_in(storage: Arc<dyn Storage>, data: KeyringData) -> Result<Keyring> {
        let mut keyring = Keyring {
            storage,
            file: Keyring::replicated(),
            seq: 0,
            data,
        };
        keyring.save()?;
        Ok(keyring)
    }

    /// Reads the keyring of `dir`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if `dir` has no keyring (not a tde store);
    /// [`Error::Corrupt`] if no copy is valid.
    pub fn open(dir: &Path) -> Result<Keyring> {
        Keyring::open_in(Arc::new(FsStorage::new(dir)))
    }

    /// As [`Keyring::open`], through `storage`.
    ///
    /// # Errors
    /// As [`Keyring::open`].
    pub fn open_in(storage: Arc<dyn Storage>) -> Result<Keyring> {
        let file = Keyring::replicated();
        let loaded = file.read(&*storage)?.ok_or_else(|| {
            Error::InvalidArgument(format!(
                "{} is not a tde store (it has no keyring)",
                storage.path("").display()
            ))
        })?;
        let data: KeyringData = serde_json::from_slice(&loaded.payload).map_err(|e| Error::Corrupt {
            what: "keyring",
            path: storage.path(KEYRING_FILE),
            detail: e.to_string(),
        })?;
        if data.format != FORMAT {
            return Err(Error::Corrupt {
                what: "keyring",
                path: storage.path(KEYRING_FILE),
                detail: format!("unsupported format {}", data.format),
            });
        }
        Ok(Keyring {
            storage,
            file,
            seq: loaded.seq,
            data,
        })
    }

    /// The contents.
    pub fn data(&self) -> &KeyringData {
        &self.data
    }

    /// Applies `change` to a copy and persists it; on error nothing changes.
    ///
    /// # Errors
    /// Whatever `change` returns; [`Error::Io`] if the write fails.
    pub fn update<T>(&mut self, change: impl FnOnce(&mut KeyringData) -> Result<T>) -> Result<T> {
        let mut next = self.data.clone();
        let out = change(&mut next)?;
        let previous = std::mem::replace(&mut self.data, next);
        if let Err(e) = self.save() {
            self.data = previous;
            return Err(e);
        }
        Ok(out)
    }

    fn save(&mut self) -> Result<()> {
        let payload = serde_json::to_vec(&self.data).map_err(|e| Error::InvalidArgument(e.to_string()))?;
        self.file.write(&*self.storage, self.seq + 1, &payload)?;
        self.seq += 1;
        Ok(())
    }
}

#[cfg(all(test, feature = "testing"))]
mod tests {
    use super::*;
    use crate::testing::CrashStorage;

    fn data(tables: usize) -> KeyringData {
        let envelope = |id: u32| Envelope {
            table_id: id,
            cmk: "alias/acs/tde".into(),
            suite: Suite::Aes256Gcm,
            versions: vec![DkVersion {
                version: 1,
                edk: WrappedKey::from_bytes(vec![id as u8; 60]),
                cmk_id: "k".into(),
                created_at: Timestamp(0),
                seals: 0,
            }],
            current: 1,
            retired: Vec::new(),
            reencrypt: None,
        };
        KeyringData {
            format: FORMAT,
            store_id: "00".repeat(16),
            kms: "local:/kms".into(),
            default_key: "alias/acs/tde".into(),
            store_key: envelope(0),
            tables: (1..=tables as u32)
                .map(|id| TableEntry {
                    name: format!("t{id}"),
                    value_seal: true,
                    envelope: envelope(id),
                })
                .collect(),
            next_table_id: tables as u32 + 1,
        }
    }

    #[test]
    fn a_crash_at_any_point_of_an_update_leaves_the_old_or_the_new_keyring() {
        for torn in [false, true] {
            let mut completed = false;
            for cut in 0..20 {
                let dir = tempfile::tempdir().unwrap();
                Keyring::create(dir.path(), data(2)).unwrap();
                let storage = CrashStorage::new(dir.path(), cut, torn);
                let result = Keyring::open_in(storage.clone()).and_then(|mut k| {
                    k.update(|d| {
                        d.tables.push(data(3).tables.remove(2));
                        d.next_table_id = 4;
                        Ok(())
                    })
                });
                let reopened =
                    Keyring::open(dir.path()).unwrap_or_else(|e| panic!("cut {cut}: unreadable: {e}"));
                let n = reopened.data().tables.len();
                match result {
                    Ok(()) => {
                        assert!(!storage.crashed());
                        assert_eq!(n, 3);
                        completed = true;
                        break;
                    }
                    Err(_) => assert!(n == 2 || n == 3, "cut {cut}: {n} tables"),
                }
            }
            assert!(completed, "the update never completed");
        }
    }
}
