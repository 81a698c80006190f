//! Online master-key rotation: rewrap a store's EDKs under the current version of their
//! master key, or under another master key, while the store keeps serving.
//!
//! Invariant: only the keyring changes, in one atomic update; the data keys stay the same
//! (so no data file is rewritten and reads and writes never pause), and a crash leaves the
//! old or the new keyring, each of which opens as long as its master keys are usable.
//! Not here: data-key rotation, which re-encrypts data.

use super::Store;
use crate::audit::{AuditEvent, Reason};
use crate::error::{Error, Result};
use crate::keyring::{self, Envelope, RetryPolicy, STORE_TABLE_ID};
use crate::secret::WrappedKey;

/// What a rewrap did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RewrapReport {
    /// Envelopes (tables, and the store-level key) rewrapped.
    pub envelopes: usize,
    /// Wrapped data keys replaced.
    pub wrapped_keys: usize,
}

impl Store {
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
        let mut targets: Vec<(String, Envelope)> = Vec::new();
        match table {
            Some(name) => {
                let entry = data
                    .tables
                    .iter()
                    .find(|t| t.name == name)
                    .ok_or_else(|| Error::NoSuchTable(name.to_owned()))?;
                targets.push((entry.name.clone(), entry.envelope.clone()));
            }
            None => {
                targets.push(("(store)".to_owned(), data.store_key.clone()));
                targets.extend(data.tables.iter().map(|t| (t.name.clone(), t.envelope.clone())));
            }
        }
        let retry = RetryPolicy::default();
        let mut report = RewrapReport {
            envelopes: 0,
            wrapped_keys: 0,
        };
        let mut rewrapped = Vec::with_capacity(targets.len());
        for (name, envelope) in targets {
            let dest = to_key.unwrap_or(&envelope.cmk).to_owned();
            let described = retry.run(|| inner.kms.describe_key(&dest));
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
                let wrapped = retry.run(|| {
                    inner
                        .kms
                        .re_encrypt(version.edk.as_bytes(), &context, &dest, &context)
                });
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
