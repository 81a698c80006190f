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
//! The watch asks for key *state* only (`describe_key`), never for key material, and each
//! call is in the audit trail with reason `watch`.

use std::collections::BTreeMap;
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

use super::{Store, StoreInner, engine};
use crate::audit::{AuditEvent, Reason};
use crate::error::Result;
use crate::kms::{KeyState, KmsErrorKind};

/// What one round of the watch found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WatchReport {
    /// Master keys checked.
    pub keys_checked: usize,
    /// Tables failed closed in this round: (table, master key, reason).
    pub revoked: Vec<(String, String, String)>,
    /// Keys whose state could not be learned (KMS unreachable or throttling): (key, error).
    pub unreachable: Vec<(String, String)>,
}

/// A running key-state watch; stops when dropped.
pub struct KeyWatch {
    stop: Arc<(Mutex<bool>, Condvar)>,
    last: Arc<Mutex<Option<Result<WatchReport, String>>>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for KeyWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyWatch").finish_non_exhaustive()
    }
}

impl KeyWatch {
    /// The last round's report (or its error), if a round has run.
    pub fn last(&self) -> Option<Result<WatchReport, String>> {
        self.last.lock().clone()
    }
}

impl Drop for KeyWatch {
    fn drop(&mut self) {
        *self.stop.0.lock() = true;
        self.stop.1.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Whether a failed `describe_key` means the key is revoked (rather than unreachable).
fn revoking(kind: KmsErrorKind) -> bool {
    matches!(
        kind,
        KmsErrorKind::Disabled
            | KmsErrorKind::PendingDeletion
            | KmsErrorKind::NotFound
            | KmsErrorKind::AccessDenied
            | KmsErrorKind::PendingImport
    )
}

impl Store {
    /// Starts a background thread that runs [`Store::check_keys`] every `interval` for as
    /// long as the returned guard and the store live.
    pub fn watch_keys(&self, interval: Duration) -> KeyWatch {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let last = Arc::new(Mutex::new(None));
        let weak: Weak<StoreInner> = Arc::downgrade(&self.inner);
        let (stop2, last2) = (stop.clone(), last.clone());
        let thread = std::thread::Builder::new()
            .name("tde-key-watch".into())
            .spawn(move || {
                loop {
                    {
                        let mut stopped = stop2.0.lock();
                        if !*stopped {
                            stop2.1.wait_for(&mut stopped, interval);
                        }
                        if *stopped {
                            return;
                        }
                    }
                    let Some(inner) = weak.upgrade() else { return };
                    let report = Store { inner }.check_keys().map_err(|e| e.to_string());
                    *last2.lock() = Some(report);
                }
            })
            .ok();
        KeyWatch { stop, last, thread }
    }

    /// One round of the key-state watch: asks the KMS for the state of every master key
    /// in use and fails closed the tables whose key is no longer usable. A revoked
    /// store-level key fails every table.
    ///
    /// # Errors
    /// [`Error::Io`] if the audit trail cannot be written.
    pub fn check_keys(&self) -> Result<WatchReport> {
        let inner = &self.inner;
        let (store_key, by_key) = {
            let keyring = inner.keyring.lock();
            let data = keyring.data();
            let mut by_key: BTreeMap<String, Vec<String>> = BTreeMap::new();
            by_key.entry(data.store_key.cmk.clone()).or_default();
            for t in &data.tables {
                by_key
                    .entry(t.envelope.cmk.clone())
                    .or_default()
                    .push(t.name.clone());
            }
            (data.store_key.cmk.clone(), by_key)
        };
        let mut report = WatchReport::default();
        for (key, tables) in by_key {
            report.keys_checked += 1;
            let described = inner.kms().describe_key(&key);
            inner.audit.append(&AuditEvent {
                op: "describe-key",
                key: &key,
                table: if tables.is_empty() { "(store)" } else { &tables[0] },
                reason: Reason::Watch,
                error: described.as_ref().err().map(ToString::to_string),
            })?;
            let why = match described {
                Ok(meta) if meta.state == KeyState::Enabled => continue,
                Ok(meta) => format!("the key is {}", meta.state),
                Err(e) if revoking(e.kind()) => e.to_string(),
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
