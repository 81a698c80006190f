//! Automatic data key rotation on a RocksDB store, and the seal counts that make it work
//! across restarts. The policy (when a version is due, how counts are recorded) is the
//! keys layer's; this file reads the counts from the tables' keys and commits them to the
//! keyring.
//!
//! Invariant: each table's seal count is saved in the keyring at every maintenance round,
//! at every data key rotation and when the store closes, and restored at open. A crash
//! loses at most the seals since the last save; rotation starts at 3/4 of the limit, so a
//! quarter of it (2^30 seals by default) covers that.

use std::sync::{Arc, Weak};

use super::{Store, StoreInner};
use crate::error::Result;
use crate::keys::{AutoRotation, EnvelopeId, Job, RotatedKey, RotationPolicy};

impl StoreInner {
    /// Records each table's seal counts in the keyring (one write, if any changed).
    pub(crate) fn save_seal_counts(&self) -> Result<()> {
        // Keyring before tables: the order every other path takes them in.
        let mut keyring = self.keyring.lock();
        let counts: Vec<(u32, u32, u64)> = {
            let tables = self.tables.read();
            keyring
                .data()
                .tables
                .iter()
                .filter_map(|entry| Some((entry, tables.get(&entry.name)?)))
                .flat_map(|(entry, state)| {
                    entry.envelope.versions.iter().filter_map(move |v| {
                        let seals = state.key(v.version)?.seals();
                        (seals > v.seals).then_some((entry.envelope.table_id, v.version, seals))
                    })
                })
                .collect()
        };
        if counts.is_empty() {
            return Ok(());
        }
        keyring.update(|data| {
            for (id, version, seals) in &counts {
                if let Some(envelope) = super::rotate::envelope_mut(data, EnvelopeId::Table(*id)) {
                    crate::keys::record_seals(envelope, *version, *seals);
                }
            }
            Ok(())
        })
    }
}

impl Store {
    /// One round of key maintenance: saves the seal counts, then rotates the data key of
    /// every table whose current version is past 3/4 of its seal limit, or older than
    /// the policy's maximum age. Returns the new versions (re-encrypt with
    /// [`Store::reencrypt`] to retire the old ones).
    ///
    /// # Errors
    /// [`crate::Error::Io`] if the keyring cannot be written; [`crate::Error::Kms`] if a
    /// master key refuses (earlier rotations of the round stand).
    pub fn maintain_keys(&self, policy: &RotationPolicy) -> Result<Vec<RotatedKey>> {
        let inner = &self.inner;
        inner.save_seal_counts()?;
        let now = crate::clock::Clock::now(&inner.clock);
        let due: Vec<String> = {
            let keyring = inner.keyring.lock();
            let tables = inner.tables.read();
            keyring
                .data()
                .tables
                .iter()
                .filter(|entry| {
                    let Some(state) = tables.get(&entry.name).filter(|s| !s.is_revoked()) else {
                        return false;
                    };
                    let usage = state.key(entry.envelope.current).map(|k| k.usage());
                    crate::keys::due_for_rotation(&entry.envelope, usage, policy, now)
                })
                .map(|entry| entry.name.clone())
                .collect()
        };
        let mut rotated = Vec::new();
        for name in due {
            rotated.extend(self.rotate_data_key(Some(&name))?);
        }
        Ok(rotated)
    }

    /// Runs [`Store::maintain_keys`] every `policy` interval in a background job until
    /// the returned handle is dropped.
    pub fn auto_rotate(&self, policy: RotationPolicy) -> AutoRotation {
        let weak: Weak<StoreInner> = Arc::downgrade(&self.inner);
        Job::periodic("tde-auto-rotate", policy.interval(), move |control| {
            let inner = weak.upgrade()?;
            let outcome = (Store { inner }).maintain_keys(&policy);
            if let Ok(rotated) = &outcome {
                control.update(|p| p.rotated.extend(rotated.iter().cloned()));
            }
            Some(outcome)
        })
    }
}
