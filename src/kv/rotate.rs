//! Online master-key rotation: rewrap a store's EDKs under the current version of their
//! master key, or under another master key, while the store keeps serving.
//!
//! Invariant: only the keyring changes, in one atomic update; the data keys stay the same
//! (so no data file is rewritten and reads and writes never pause), and a crash leaves the
//! old or the new keyring, each of which opens as long as its master keys are usable.
//! Migration to another KMS works the same way, with the unwrap and wrap done by two KMSs.
//! Data-key rotation (`Store::rotate_data_key`) adds a new data key version for new
//! writes; `reencrypt.rs` moves old data to it and retires the old versions.

use std::sync::Arc;

use super::files::FileKey;
use super::{SealCount, Store, cf_name, value_key};
use crate::audit::{AuditEvent, Reason};
use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::keyring::{self, Envelope, KeyringData, RetryPolicy, STORE_TABLE_ID};
use crate::secret::WrappedKey;

/// What a rewrap did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RewrapReport {
    /// Envelopes (tables, and the store-level key) rewrapped.
    pub envelopes: usize,
    /// Wrapped data keys replaced.
    pub wrapped_keys: usize,
}

/// The envelopes a rotation of `table` touches: that table's, or (for `None`) the
/// store-level key's and every table's, each with the name the audit trail uses.
fn targets<'a>(data: &'a KeyringData, table: Option<&str>) -> Result<Vec<(String, &'a Envelope)>> {
    match table {
        Some(name) => {
            let entry = data
                .tables
                .iter()
                .find(|t| t.name == name)
                .ok_or_else(|| Error::NoSuchTable(name.to_owned()))?;
            Ok(vec![(entry.name.clone(), &entry.envelope)])
        }
        None => Ok(std::iter::once(("(store)".to_owned(), &data.store_key))
            .chain(data.tables.iter().map(|t| (t.name.clone(), &t.envelope)))
            .collect()),
    }
}

/// A data key version made current by [`Store::rotate_data_key`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotatedKey {
    /// The table, or `(store)` for the store-level key.
    pub table: String,
    /// The new current version.
    pub version: u32,
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
        let data = keyring.data().clone();
        let targets = targets(&data, table)?;
        let kms = inner.kms();
        let now = inner.clock.now();
        let mut made = Vec::with_capacity(targets.len());
        for (name, envelope) in targets {
            let version = envelope.next_version();
            let generated = keyring::generate(
                &*kms,
                &data.store_id,
                envelope.table_id,
                version,
                &envelope.cmk,
                envelope.suite,
                now,
            );
            inner.audit.append(&AuditEvent {
                op: "generate-data-key",
                key: &envelope.cmk,
                table: &name,
                reason: Reason::Rotate,
                error: generated.as_ref().err().map(ToString::to_string),
            })?;
            let (dk_version, generated) = generated?;
            let (id, suite) = (envelope.table_id, envelope.suite);
            if id == STORE_TABLE_ID {
                keyring.add_store_key(version, &generated.plaintext);
            }
            let file_key = FileKey::derive(suite, &generated.plaintext, &inner.store_id, id, version);
            let value = (id != STORE_TABLE_ID)
                .then(|| {
                    value_key(
                        suite,
                        &generated.plaintext,
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
            made.push((name, id, dk_version, file_key, value));
        }
        keyring.update(|data| {
            for (_, id, dk_version, _, _) in &made {
                let envelope = if *id == STORE_TABLE_ID {
                    &mut data.store_key
                } else {
                    match data.tables.iter_mut().find(|t| t.envelope.table_id == *id) {
                        Some(t) => &mut t.envelope,
                        None => continue,
                    }
                };
                envelope.versions.push(dk_version.clone());
                envelope.current = dk_version.version;
            }
            Ok(())
        })?;
        let tables = inner.tables.read();
        let mut rotated = Vec::with_capacity(made.len());
        for (name, id, dk_version, file_key, value) in made {
            let version = dk_version.version;
            inner.files.add_key(id, version, file_key);
            if id == STORE_TABLE_ID {
                inner.files.set_store_version(version);
                if let Some(key) = keyring.mac_key(version, crate::audit::AUDIT_MAC_LABEL) {
                    inner.audit.set_key(version, key);
                }
            } else {
                inner.files.set_current(&cf_name(id), id, version);
                if let (Some(state), Some(value)) = (tables.get(&name), value) {
                    state.make_current(version, Arc::new(value));
                }
            }
            rotated.push(RotatedKey { table: name, version });
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
        let data = keyring.data().clone();
        let targets = targets(&data, table)?;
        let retry = RetryPolicy::default();
        let kms = inner.kms();
        let mut report = RewrapReport {
            envelopes: 0,
            wrapped_keys: 0,
        };
        let mut rewrapped = Vec::with_capacity(targets.len());
        for (name, envelope) in targets {
            let dest = to_key.unwrap_or(&envelope.cmk).to_owned();
            let described = retry.run(|| kms.describe_key(&dest));
            inner.audit.append(&AuditEvent {
                op: "describe-key",
                key: &dest,
                table: &name,
                reason: Reason::Rotate,
                error: described.as_ref().err().map(ToString::to_string),
            })?;
            let key_id = described?.key_id;
            let mut next = envelope.clone();
            next.cmk = dest.clone();
            for version in &mut next.versions {
                let context = keyring::context(&data.store_id, envelope.table_id, version.version);
                let wrapped = retry.run(|| kms.re_encrypt(version.edk.as_bytes(), &context, &dest, &context));
                inner.audit.append(&AuditEvent {
                    op: "re-encrypt",
                    key: &dest,
                    table: &name,
                    reason: Reason::Rotate,
                    error: wrapped.as_ref().err().map(ToString::to_string),
                })?;
                version.edk = WrappedKey::from_bytes(wrapped?);
                version.cmk_id = key_id.clone();
                report.wrapped_keys += 1;
            }
            report.envelopes += 1;
            rewrapped.push(next);
        }
        keyring.update(|data| {
            for envelope in rewrapped {
                if envelope.table_id == STORE_TABLE_ID {
                    data.store_key = envelope;
                } else if let Some(t) = data
                    .tables
                    .iter_mut()
                    .find(|t| t.envelope.table_id == envelope.table_id)
                {
                    t.envelope = envelope;
                }
            }
            if let (None, Some(key)) = (table, to_key) {
                data.default_key = key.to_owned();
            }
            Ok(())
        })?;
        Ok(report)
    }
}

impl Store {
    /// Moves the whole store to master key `to_key` of the KMS `to` (another KMS, or the
    /// same one), online: every wrapped data key is unwrapped by the current KMS and
    /// wrapped by `to`, in memory only; then the keyring switches in one atomic write
    /// (recording `to_kms_uri`, default `to`'s description) and the store uses `to` from
    /// then on. The data keys do not change, so no data file is rewritten and reads and
    /// writes continue. A crash leaves the old or the new keyring, each complete.
    ///
    /// # Errors
    /// [`Error::Kms`] if either KMS refuses (nothing changes); [`Error::Io`].
    pub fn migrate(
        &self,
        to: std::sync::Arc<dyn crate::kms::Kms>,
        to_key: &str,
        to_kms_uri: Option<&str>,
    ) -> Result<RewrapReport> {
        let inner = &self.inner;
        let mut keyring = inner.keyring.lock();
        let from = inner.kms();
        let retry = RetryPolicy::default();
        let mut next = keyring.data().clone();
        let store_id = next.store_id.clone();
        let names: Vec<String> = std::iter::once("(store)".to_owned())
            .chain(next.tables.iter().map(|t| t.name.clone()))
            .collect();
        let described = retry.run(|| to.describe_key(to_key));
        inner.audit.append(&AuditEvent {
            op: "describe-key",
            key: to_key,
            table: "(store)",
            reason: Reason::Migrate,
            error: described.as_ref().err().map(ToString::to_string),
        })?;
        let key_id = described?.key_id;
        let mut report = RewrapReport {
            envelopes: 0,
            wrapped_keys: 0,
        };
        let envelopes =
            std::iter::once(&mut next.store_key).chain(next.tables.iter_mut().map(|t| &mut t.envelope));
        for (envelope, name) in envelopes.zip(&names) {
            for version in &mut envelope.versions {
                let context = keyring::context(&store_id, envelope.table_id, version.version);
                let plain = retry.run(|| from.decrypt(version.edk.as_bytes(), &context));
                inner.audit.append(&AuditEvent {
                    op: "decrypt",
                    key: &envelope.cmk,
                    table: name,
                    reason: Reason::Migrate,
                    error: plain.as_ref().err().map(ToString::to_string),
                })?;
                let plain = plain?;
                let wrapped = retry.run(|| to.encrypt(to_key, plain.expose(), &context));
                drop(plain);
                inner.audit.append(&AuditEvent {
                    op: "encrypt",
                    key: to_key,
                    table: name,
                    reason: Reason::Migrate,
                    error: wrapped.as_ref().err().map(ToString::to_string),
                })?;
                version.edk = WrappedKey::from_bytes(wrapped?);
                version.cmk_id = key_id.clone();
                report.wrapped_keys += 1;
            }
            envelope.cmk = to_key.to_owned();
            report.envelopes += 1;
        }
        next.default_key = to_key.to_owned();
        next.kms = to_kms_uri.map_or_else(|| to.describe(), ToOwned::to_owned);
        keyring.update(|data| {
            *data = next;
            Ok(())
        })?;
        *inner.kms.write() = to;
        Ok(report)
    }
}
