//! The key-state watch: while a store is open, ask the KMS now and then whether each
//! master key in use is still usable, and fail closed the tables whose key is not.
//!
//! Invariant: a table whose master key is disabled, pending deletion, without material,
//! gone, or no longer permitted stops serving within one interval: every operation on it
//! returns [`crate::Error::KeyRevoked`], its column family is flushed and its compactions
//! stopped, and its data keys (value and file keys) are dropped from memory. A KMS that
//! is merely unreachable or throttling changes nothing; it is reported. A revoked table
//! comes back only by reopening the store once the key is usable again.
//! Not here: unwrapping at open (`keyring`).
//!
//! The watch asks for key *state* (`describe_key`), and, where the KMS can tell without
//! unwrapping (AWS KMS: `Decrypt` with `DryRun`), whether this store may still unwrap
//! under the key, since a revoked grant or a changed policy changes no key state. It
//! never asks for key material, and each call is in the audit trail with reason `watch`.

use std::collections::BTreeMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use super::{STORE_LABEL, Store, StoreInner, engine};
use crate::audit::Reason;
use crate::error::{Error, Result};
use crate::keys::{Job, KeyWatch, WatchReport};
use crate::kms::KeyState;

impl Store {
    /// Starts a background thread that runs [`Store::check_keys`] every `interval` for as
    /// long as the returned guard and the store live.
    pub fn watch_keys(&self, interval: Duration) -> KeyWatch {
        let weak: Weak<StoreInner> = Arc::downgrade(&self.inner);
        Job::periodic("tde-key-watch", interval, move |_| {
            let inner = weak.upgrade()?;
            Some(Store { inner }.check_keys())
        })
    }

    /// One round of the key-state watch: asks the KMS for the state of every master key
    /// in use and fails closed the tables whose key is no longer usable. A revoked
    /// store-level key fails every table.
    ///
    /// # Errors
    /// [`Error::Io`] if the audit trail cannot be written.
    pub fn check_keys(&self) -> Result<WatchReport> {
        let inner = &self.inner;
        // Each master key in use, the tables under it, and one wrapped data key of its to
        // ask whether it may still be unwrapped.
        type Sample = (crate::keys::EnvelopeId, Option<crate::keyring::DkVersion>);
        let (store_key, by_key, samples) = {
            let keyring = inner.keyring.lock();
            let data = keyring.data();
            let current =
                |e: &crate::keyring::Envelope| e.versions.iter().find(|v| v.version == e.current).cloned();
            let mut by_key: BTreeMap<String, Vec<String>> = BTreeMap::new();
            let mut samples: BTreeMap<String, Sample> = BTreeMap::new();
            by_key.entry(data.store_key.cmk.clone()).or_default();
            samples.insert(
                data.store_key.cmk.clone(),
                (crate::keys::EnvelopeId::Store, current(&data.store_key)),
            );
            for t in &data.tables {
                by_key
                    .entry(t.envelope.cmk.clone())
                    .or_default()
                    .push(t.name.clone());
                samples.entry(t.envelope.cmk.clone()).or_insert((
                    crate::keys::EnvelopeId::Table(t.envelope.table_id),
                    current(&t.envelope),
                ));
            }
            (data.store_key.cmk.clone(), by_key, samples)
        };
        let mut report = WatchReport::default();
        for (key, tables) in by_key {
            report.keys_checked += 1;
            let label = tables.first().map_or(STORE_LABEL, String::as_str);
            // The key's state, then (where the KMS can tell) whether this store may still
            // unwrap under it: a revoked grant or a changed policy changes no key state.
            let usable = inner
                .keys
                .describe_key(&key, label, Reason::Watch)
                .and_then(|meta| match samples.get(&key) {
                    Some((id, Some(version))) if meta.state == KeyState::Enabled => inner
                        .keys
                        .check_unwrap(*id, version, label, Reason::Watch)
                        .map(|()| meta),
                    _ => Ok(meta),
                });
            let why = match usable {
                Ok(meta) if meta.state == KeyState::Enabled => continue,
                Ok(meta) => format!("the key is {}", meta.state),
                Err(e) if crate::keys::revoking(&e) => e.to_string(),
                Err(e @ Error::Io { .. }) => return Err(e),
                Err(e) => {
                    report.unreachable.push((key, e.to_string()));
                    continue;
                }
            };
            let affected: Vec<String> = if key == store_key {
                inner.tables.read().keys().cloned().collect()
            } else {
                tables
            };
            for table in affected {
                if self.revoke_table(&table, &key, &why)? {
                    report.revoked.push((table, key.clone(), why.clone()));
                }
            }
        }
        Ok(report)
    }

    /// Fails `table` closed; `false` if it already was (or is gone).
    fn revoke_table(&self, table: &str, key: &str, why: &str) -> Result<bool> {
        let inner = &self.inner;
        let Some(state) = inner.tables.read().get(table).cloned() else {
            return Ok(false);
        };
        if state.is_revoked() {
            return Ok(false);
        }
        // Stop new operations first, then make sure RocksDB never needs the file keys
        // again (nothing left to flush, no compactions), then drop the keys.
        state.revoke(key, why);
        if let Some(cf) = inner.db.cf_handle(&state.cf) {
            inner.db.flush_cf(&cf).map_err(engine)?;
            inner
                .db
                .set_options_cf(&cf, &[("disable_auto_compactions", "true")])
                .map_err(engine)?;
        }
        inner.files.remove_table(&state.cf, state.id);
        Ok(true)
    }
}
