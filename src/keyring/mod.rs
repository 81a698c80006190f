//! The keyring: which data keys (as wrapped EDKs) protect which table of a store, and the
//! open-time unwrap of all of them.
//!
//! Invariant: the keyring holds only wrapped keys and public metadata; it is written
//! atomically and redundantly (`durable::Replicated`: two checksummed copies), so a crash
//! during an update leaves the previous or the new keyring, and one damaged copy still
//! opens. An EDK's encryption context names the store, the table id and the DK version,
//! so the KMS refuses to unwrap it for any other place.
//!
//! Security notes: the checksum of a copy only detects damage. Everything the keyring
//! says (suites, whether values are sealed, current versions, seal counts, re-encryption
//! plans, retired versions) is authenticated by an HMAC-SHA256 tag under a key derived
//! from the store-level data key's current version: [`Keyring::open`] reads it
//! unauthenticated (for display, and to know what to unwrap), and the store checks the
//! tag right after the unwrap ([`Keyring::authenticate`]); a keyring that fails is an
//! error at open. A keyring without keys cannot be changed. Putting back an older,
//! genuine keyring (replay) passes its tag: that is the one change this file cannot
//! detect by itself.
//! Not here: using the keys (`kv`), the key lifecycle and every KMS call (`keys`).

use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::cipher::Suite;
use crate::cipher::kdf::MacKey;
use crate::durable::{FsStorage, Replicated, Storage};
use crate::error::{Error, Result};
pub use crate::keys::{KeyFailure, RetryPolicy};
use crate::kms::{EncryptionContext, Timestamp};
use crate::secret::{DataKey, WrappedKey};

/// File name of the keyring (copies `TDE-KEYRING.a` and `.b`) inside a store directory.
pub const KEYRING_FILE: &str = "TDE-KEYRING";
const KEYRING_MAGIC: [u8; 8] = *b"TDEKRNG\x01";
/// Format 2: authenticated (the `mac` field). Format 1 keyrings carried no tag and are
/// refused, since accepting them would let anyone strip the tag.
pub(crate) const FORMAT: u32 = 2;
const MAC_LABEL: &[u8] = b"tde keyring\0";
const META_KEY_LABEL: &[u8] = b"tde metadata key\0";
/// Bounds on what a keyring may hold, checked before anything is unwrapped.
const MAX_TABLES: usize = 100_000;
const MAX_VERSIONS: usize = 10_000;
const MAX_NAME: usize = 1024;
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
    /// Being dropped: its column family is dropped next, then this entry is removed; an
    /// open that finds the mark finishes the drop (so a crash in between can neither
    /// bring the table back nor keep its wrapped keys).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dropping: bool,
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
    /// HMAC-SHA256 (hex) of everything else, under a key derived from the store-level
    /// data key's current version.
    #[serde(default)]
    pub mac: String,
}

/// Keys derived from the store-level data key's versions, to authenticate the keyring,
/// backup manifests and the audit trail.
#[derive(Default)]
pub(crate) struct MetaKeys {
    keys: Vec<(u32, DataKey)>,
}

impl std::fmt::Debug for MetaKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetaKeys").finish_non_exhaustive()
    }
}

impl MetaKeys {
    /// Adds version `version` of the store-level data key `dk` of store `store_id`.
    pub(crate) fn add(&mut self, store_id: &str, version: u32, dk: &DataKey) {
        self.keys.retain(|(v, _)| *v != version);
        let key = crate::cipher::kdf::derive_key(dk, store_id.as_bytes(), META_KEY_LABEL, 32);
        self.keys.push((version, key));
    }

    /// The MAC key for `purpose` under version `version`, if that version is known.
    pub(crate) fn mac_key(&self, version: u32, purpose: &[u8]) -> Option<MacKey> {
        self.keys
            .iter()
            .find(|(v, _)| *v == version)
            .map(|(_, k)| MacKey::derive(k, b"", purpose))
    }
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

/// The keyring file of a store directory.
#[derive(Debug)]
pub struct Keyring {
    storage: Arc<dyn Storage>,
    file: Replicated,
    seq: u64,
    data: KeyringData,
    meta: MetaKeys,
    authenticated: bool,
}

fn corrupt(storage: &dyn Storage, detail: impl Into<String>) -> Error {
    Error::Corrupt {
        what: "keyring",
        path: storage.path(KEYRING_FILE),
        detail: detail.into(),
    }
}

impl KeyringData {
    fn signed_bytes(&self, seq: u64) -> Result<Vec<u8>> {
        let mut unsigned = self.clone();
        unsigned.mac = String::new();
        let mut bytes = seq.to_le_bytes().to_vec();
        serde_json::to_writer(&mut bytes, &unsigned).map_err(|e| Error::InvalidArgument(e.to_string()))?;
        Ok(bytes)
    }

    /// Checks that the keyring is consistent and within bounds: what an attacker could
    /// write here is refused before it becomes a KMS call, a loop bound or a path.
    fn validate(&self) -> std::result::Result<(), String> {
        let hex32 = |s: &str| s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit());
        if !hex32(&self.store_id) {
            return Err(format!("bad store id {:?}", short(&self.store_id)));
        }
        for (what, text) in [("KMS", &self.kms), ("default key", &self.default_key)] {
            if text.len() > 4096 || text.chars().any(char::is_control) {
                return Err(format!("bad {what} {:?}", short(text)));
            }
        }
        if self.tables.len() > MAX_TABLES {
            return Err(format!("{} tables, at most {MAX_TABLES}", self.tables.len()));
        }
        if self.store_key.table_id != STORE_TABLE_ID {
            return Err("the store-level key has a table id".into());
        }
        validate_envelope(&self.store_key)?;
        let mut ids = std::collections::HashSet::new();
        let mut names = std::collections::HashSet::new();
        for t in &self.tables {
            let id = t.envelope.table_id;
            if id == STORE_TABLE_ID || id >= self.next_table_id || !ids.insert(id) {
                return Err(format!("table id {id} is reserved, repeated or not yet assigned"));
            }
            if t.name.is_empty() || t.name.len() > MAX_NAME || !names.insert(t.name.as_str()) {
                return Err(format!(
                    "table name {:?} is empty, too long or repeated",
                    short(&t.name)
                ));
            }
            validate_envelope(&t.envelope).map_err(|e| format!("table {:?}: {e}", short(&t.name)))?;
        }
        Ok(())
    }
}

fn short(s: &str) -> String {
    s.chars().take(64).collect()
}

fn validate_envelope(e: &Envelope) -> std::result::Result<(), String> {
    if e.versions.is_empty() || e.versions.len() > MAX_VERSIONS || e.retired.len() > MAX_VERSIONS {
        return Err(format!("{} key versions", e.versions.len()));
    }
    if e.cmk.len() > 2048 || e.cmk.chars().any(char::is_control) {
        return Err("bad master key name".into());
    }
    let mut seen = std::collections::HashSet::new();
    for v in &e.versions {
        if v.version == 0 || !seen.insert(v.version) || v.edk.as_bytes().len() > 64 * 1024 {
            return Err(format!("bad data key version {}", v.version));
        }
    }
    for r in &e.retired {
        if !seen.insert(r.version) {
            return Err(format!("version {} is both retired and live", r.version));
        }
    }
    if !e.versions.iter().any(|v| v.version == e.current) {
        return Err(format!("the current version {} has no wrapped key", e.current));
    }
    if let Some(plan) = &e.reencrypt
        && plan
            .retire
            .iter()
            .any(|r| *r == e.current || !e.versions.iter().any(|v| v.version == *r))
    {
        return Err("the re-encryption plan retires a version that is current or absent".into());
    }
    Ok(())
}

impl Keyring {
    fn replicated() -> Replicated {
        Replicated::new(KEYRING_FILE, "keyring", KEYRING_MAGIC)
    }

    /// Writes a new keyring into `dir`, authenticated under `store_key`, the plaintext of
    /// the store-level data key's current version.
    ///
    /// # Errors
    /// [`Error::Io`].
    pub(crate) fn create(dir: &Path, data: KeyringData, store_key: &DataKey) -> Result<Keyring> {
        Keyring::create_in(Arc::new(FsStorage::new(dir)), data, store_key)
    }

    /// As [`Keyring::create`], through `storage` (tests simulate crashes with it).
    ///
    /// # Errors
    /// [`Error::Io`].
    pub(crate) fn create_in(
        storage: Arc<dyn Storage>,
        data: KeyringData,
        store_key: &DataKey,
    ) -> Result<Keyring> {
        let mut meta = MetaKeys::default();
        meta.add(&data.store_id, data.store_key.current, store_key);
        let mut keyring = Keyring {
            storage,
            file: Keyring::replicated(),
            seq: 0,
            data,
            meta,
            authenticated: true,
        };
        keyring.save()?;
        Ok(keyring)
    }

    /// Reads the keyring of `dir`, not yet authenticated: what it says is as recorded
    /// until [`Keyring::authenticate`] has checked it with the store-level data key.
    /// Its structure and bounds are checked.
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
    pub(crate) fn open_in(storage: Arc<dyn Storage>) -> Result<Keyring> {
        let file = Keyring::replicated();
        let loaded = file.read(&*storage)?.ok_or_else(|| {
            Error::InvalidArgument(format!(
                "{} is not a tde store (it has no keyring)",
                storage.path("").display()
            ))
        })?;
        let data: KeyringData =
            serde_json::from_slice(&loaded.payload).map_err(|e| corrupt(&*storage, e.to_string()))?;
        if data.format != FORMAT {
            return Err(corrupt(
                &*storage,
                format!(
                    "format {} (this version of tde reads format {FORMAT} only, whose keyrings are authenticated)",
                    data.format
                ),
            ));
        }
        data.validate().map_err(|e| corrupt(&*storage, e))?;
        Ok(Keyring {
            storage,
            file,
            seq: loaded.seq,
            data,
            meta: MetaKeys::default(),
            authenticated: false,
        })
    }

    /// Checks the keyring's tag with the store-level data key versions `store_keys`
    /// (version, plaintext), unwrapped by the KMS with the contexts the keyring names,
    /// and keeps them to authenticate later changes.
    ///
    /// # Errors
    /// [`Error::Authentication`] if anything in the keyring was changed by someone without
    /// the store's keys (or a version is missing).
    pub(crate) fn authenticate<'a>(
        &mut self,
        store_keys: impl IntoIterator<Item = (u32, &'a DataKey)>,
    ) -> Result<()> {
        let mut meta = MetaKeys::default();
        for (version, dk) in store_keys {
            meta.add(&self.data.store_id, version, dk);
        }
        let failed = || Error::Authentication {
            location: format!(
                "keyring {} (edited, or taken from another store)",
                self.storage.path(KEYRING_FILE).display()
            ),
        };
        let key = meta
            .mac_key(self.data.store_key.current, MAC_LABEL)
            .ok_or_else(failed)?;
        let tag = crate::hex::decode(&self.data.mac).map_err(|_| failed())?;
        if !key.verify(&[&self.data.signed_bytes(self.seq)?], &tag) {
            return Err(failed());
        }
        self.meta = meta;
        self.authenticated = true;
        Ok(())
    }

    /// Keeps version `version` of the store-level data key, so that the keyring can be
    /// authenticated once that version becomes current.
    pub(crate) fn add_store_key(&mut self, version: u32, dk: &DataKey) {
        let store_id = self.data.store_id.clone();
        self.meta.add(&store_id, version, dk);
    }

    /// The MAC key for `purpose` under the store-level key's version `version`.
    pub(crate) fn mac_key(&self, version: u32, purpose: &[u8]) -> Option<MacKey> {
        self.meta.mac_key(version, purpose)
    }

    /// The contents: as recorded, and authenticated once [`Keyring::authenticate`] passed.
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
        if !self.authenticated {
            return Err(Error::InvalidArgument(
                "the keyring was read without its keys and cannot be changed".into(),
            ));
        }
        self.data
            .validate()
            .map_err(|e| Error::InvalidArgument(format!("keyring change refused: {e}")))?;
        let seq = self.seq + 1;
        let key = self
            .meta
            .mac_key(self.data.store_key.current, MAC_LABEL)
            .ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "no key for version {} of the store-level data key",
                    self.data.store_key.current
                ))
            })?;
        self.data.mac = crate::hex::encode(&key.tag(&[&self.data.signed_bytes(seq)?]));
        let payload = serde_json::to_vec(&self.data).map_err(|e| Error::InvalidArgument(e.to_string()))?;
        self.file.write(&*self.storage, seq, &payload)?;
        self.seq = seq;
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
                    dropping: false,
                })
                .collect(),
            next_table_id: tables as u32 + 1,
            mac: String::new(),
        }
    }

    #[test]
    fn a_crash_at_any_point_of_an_update_leaves_the_old_or_the_new_keyring() {
        for torn in [false, true] {
            let mut completed = false;
            for cut in 0..20 {
                let dir = tempfile::tempdir().unwrap();
                let dk = DataKey::from_slice(&[9u8; 32]);
                Keyring::create(dir.path(), data(2), &dk).unwrap();
                let storage = CrashStorage::new(dir.path(), cut, torn);
                let result = Keyring::open_in(storage.clone()).and_then(|mut k| {
                    k.authenticate([(1, &dk)])?;
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

    #[test]
    fn an_edited_or_foreign_keyring_fails_authentication_and_cannot_be_saved_unread() {
        let dir = tempfile::tempdir().unwrap();
        let dk = DataKey::from_slice(&[9u8; 32]);
        Keyring::create(dir.path(), data(2), &dk).unwrap();
        let mut k = Keyring::open(dir.path()).unwrap();
        assert!(k.update(|_| Ok(())).is_err(), "saved without its keys");
        k.authenticate([(1, &dk)]).unwrap();
        k.update(|d| {
            d.tables[0].value_seal = false;
            Ok(())
        })
        .unwrap();
        // Someone without the key turns value sealing back on (or any other field): the
        // checksum is easy to fix up, the tag is not.
        let storage = FsStorage::new(dir.path());
        let replicated = Keyring::replicated();
        let loaded = replicated.read(&storage).unwrap().unwrap();
        let mut forged: KeyringData = serde_json::from_slice(&loaded.payload).unwrap();
        forged.tables[0].value_seal = true;
        replicated
            .write(&storage, loaded.seq + 1, &serde_json::to_vec(&forged).unwrap())
            .unwrap();
        let mut k = Keyring::open(dir.path()).unwrap();
        assert!(matches!(
            k.authenticate([(1, &dk)]),
            Err(Error::Authentication { .. })
        ));
        // Another key (another store's) fails too.
        let mut k = Keyring::open(dir.path()).unwrap();
        let other = DataKey::from_slice(&[8u8; 32]);
        assert!(matches!(
            k.authenticate([(1, &other)]),
            Err(Error::Authentication { .. })
        ));
    }

    #[test]
    fn inconsistent_keyrings_are_refused_before_any_unwrap() {
        let mut bad = Vec::new();
        let mut d = data(2);
        d.tables[1].envelope.table_id = 1;
        bad.push(d);
        let mut d = data(1);
        d.tables[0].envelope.current = 7;
        bad.push(d);
        let mut d = data(1);
        d.store_key.reencrypt = Some(ReencryptState {
            retire: vec![1],
            boundary: 0,
        });
        bad.push(d);
        let mut d = data(1);
        d.store_id = "../../etc".into();
        bad.push(d);
        for d in bad {
            let dir = tempfile::tempdir().unwrap();
            let storage = FsStorage::new(dir.path());
            Keyring::replicated()
                .write(&storage, 1, &serde_json::to_vec(&d).unwrap())
                .unwrap();
            assert!(matches!(Keyring::open(dir.path()), Err(Error::Corrupt { .. })));
        }
    }
}
