//! Key rotation on a RocksDB store, online: the keys layer makes new versions and new
//! wrappings; this file commits them to the keyring in one atomic update and installs
//! the keys in the file layer and the tables.
//!
//! Invariant: only the keyring changes (no data file is rewritten and reads and writes
//! never pause), and a crash leaves the old or the new keyring, each of which opens as
//! long as its master keys are usable. `reencrypt.rs` moves old data to new versions and
//! retires the old ones.

use std::sync::Arc;

use super::files::FileKey;
use super::{SealCount, Store, cf_name, store_envelope, table_envelope, value_key};
use crate::audit::Reason;
use crate::error::{Error, Result};
use crate::keyring::{Envelope, KeyringData};
use crate::keys::{EnvelopeId, Named, RewrapReport, RotatedKey};
use crate::kms::Kms;

/// The envelopes an operation on `table` touches: that table's, or (for `None`) the
/// store-level key's and every table's.
fn targets(data: &KeyringData, table: Option<&str>) -> Result<Vec<(Named, Envelope)>> {
    match table {
        Some(name) => {
            let entry = data
                .tables
                .iter()
                .find(|t| t.name == name)
                .ok_or_else(|| Error::NoSuchTable(name.to_owned()))?;
            Ok(vec![(
                table_envelope(entry.envelope.table_id, &entry.name),
                entry.envelope.clone(),
            )])
        }
        None => Ok(std::iter::once((store_envelope(), data.store_key.clone()))
            .chain(
                data.tables
                    .iter()
                    .map(|t| (table_envelope(t.envelope.table_id, &t.name), t.envelope.clone())),
            )
            .collect()),
    }
}

/// The envelope `id` of `data`, if it still exists.
pub(crate) fn envelope_mut(data: &mut KeyringData, id: EnvelopeId) -> Option<&mut Envelope> {
    match id {
        EnvelopeId::Store => Some(&mut data.store_key),
        EnvelopeId::Table(id) => data
            .tables
            .iter_mut()
            .find(|t| t.envelope.table_id == id)
            .map(|t| &mut t.envelope),
    }
}

impl Store {
    /// Rotates the data key of `table` (of every table and the store-level key if
    /// `None`): the KMS generates a new version, which seals every value and file written
    /// from now on. Older versions stay readable until a re-encryption pass
    /// ([`Store::reencrypt`]) has moved their data and retired them. Online: one KMS call
    /// per key, one keyring write; when it returns, no write lands under an older version.
    ///
    /// # Errors
    /// [`Error::NoSuchTable`]; [`Error::Kms`] if a master key refuses (nothing changes);
    /// [`Error::Io`] if the keyring cannot be written (nothing changes).
    pub fn rotate_data_key(&self, table: Option<&str>) -> Result<Vec<RotatedKey>> {
        let inner = &self.inner;
        let mut keyring = inner.keyring.lock();
        let targets = targets(keyring.data(), table)?;
        let mut made = Vec::with_capacity(targets.len());
        for (target, envelope) in targets {
            let new = inner.keys.rotate(&target, &envelope, Reason::Rotate)?;
            let (id, suite, version) = (target.id.table_id(), envelope.suite, new.record.version);
            if target.id == EnvelopeId::Store {
                keyring.add_store_key(version, &new.key);
            }
            let file_key = FileKey::derive(suite, &new.key, &inner.store_id, id, version);
            let value = (target.id != EnvelopeId::Store)
                .then(|| {
                    value_key(
                        suite,
                        &new.key,
                        &inner.store_id,
                        id,
                        version,
                        SealCount {
                            prior: 0,
                            limit: inner.seal_limit,
                        },
                    )
                })
                .transpose()?;
            made.push((target, new.record, file_key, value));
        }
        keyring.update(|data| {
            for (target, record, _, _) in &made {
                if let Some(envelope) = envelope_mut(data, target.id) {
                    envelope.versions.push(record.clone());
                    envelope.current = record.version;
                }
            }
            Ok(())
        })?;
        let tables = inner.tables.read();
        let mut rotated = Vec::with_capacity(made.len());
        for (target, record, file_key, value) in made {
            let (id, version) = (target.id.table_id(), record.version);
            inner.files.add_key(id, version, file_key);
            match target.id {
                EnvelopeId::Store => {
                    inner.files.set_store_version(version);
                    if let Some(key) = keyring.mac_key(version, crate::audit::AUDIT_MAC_LABEL) {
                        inner.keys.audit().set_key(version, key);
                    }
                }
                EnvelopeId::Table(_) => {
                    inner.files.set_current(&cf_name(id), id, version);
                    if let (Some(state), Some(value)) = (tables.get(&target.label), value) {
                        state.make_current(version, Arc::new(value));
                    }
                }
            }
            rotated.push(RotatedKey {
                table: target.label,
                version,
            });
        }
        Ok(rotated)
    }

    /// Rewraps the data keys of `table` (every table and the store-level key if `None`)
    /// under `to_key`, or under their own master key's current version if `None` (after
    /// the KMS rotated it). Online: reads and writes continue; no data file changes. With
    /// `table` = `None` and a `to_key`, that key also becomes the store's default.
    ///
    /// # Errors
    /// [`Error::NoSuchTable`]; [`Error::Kms`] if a master key refuses (nothing changes);
    /// [`Error::Io`] if the keyring cannot be written (nothing changes).
    pub fn rewrap(&self, table: Option<&str>, to_key: Option<&str>) -> Result<RewrapReport> {
        let inner = &self.inner;
        // Serialises with table creation and drop; the data path never takes this lock.
        let mut keyring = inner.keyring.lock();
        let targets = targets(keyring.data(), table)?;
        let (rewrapped, report) = inner.keys.rewrap(&targets, None, to_key, Reason::Rotate)?;
        keyring.update(|data| {
            for ((target, _), envelope) in targets.iter().zip(rewrapped) {
                if let Some(slot) = envelope_mut(data, target.id) {
                    *slot = envelope;
                }
            }
            if let (None, Some(key)) = (table, to_key) {
                data.default_key = key.to_owned();
            }
            Ok(())
        })?;
        Ok(report)
    }

    /// Moves the whole store to master key `to_key` of the KMS `to` (another KMS, or the
    /// same one), online: every wrapped data key is unwrapped by the current KMS and
    /// wrapped by `to`, in memory only; then the keyring switches in one atomic write
    /// (recording `to_kms_uri`, default `to`'s description) and the store uses `to` from
    /// then on. The data keys do not change, so no data file is rewritten and reads and
    /// writes continue. A crash leaves the old or the new keyring, each complete.
    ///
    /// # Errors
    /// [`Error::Kms`] if either KMS refuses (nothing changes); [`Error::Io`].
    pub fn migrate(&self, to: Arc<dyn Kms>, to_key: &str, to_kms_uri: Option<&str>) -> Result<RewrapReport> {
        let inner = &self.inner;
        let mut keyring = inner.keyring.lock();
        let targets = targets(keyring.data(), None)?;
        let (moved, report) = inner
            .keys
            .rewrap(&targets, Some(&to), Some(to_key), Reason::Migrate)?;
        keyring.update(|data| {
            for ((target, _), envelope) in targets.iter().zip(moved) {
                if let Some(slot) = envelope_mut(data, target.id) {
                    *slot = envelope;
                }
            }
            data.default_key = to_key.to_owned();
            data.kms = to_kms_uri.map_or_else(|| to.describe(), ToOwned::to_owned);
            Ok(())
        })?;
        inner.keys.switch_kms(to);
        Ok(report)
    }
}
