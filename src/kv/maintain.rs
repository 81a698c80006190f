//! Automatic data key rotation: before a version reaches its seal limit, and optionally on
//! a schedule; and the seal counts that make the first possible across restarts.
//!
//! Invariant: each table's seal count is saved in the keyring at every maintenance round,
//! at every data key rotation and when the store closes, and restored at open. A crash
//! loses at most the seals since the last save; rotation starts at 3/4 of the limit, so a
//! quarter of it (2^30 seals by default) covers that.
//! Not here: re-encrypting the old data (`reencrypt.rs`).

use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

use super::{RotatedKey, Store, StoreInner};
use crate::cipher::KeyUsage;
use crate::clock::Clock;
use crate::error::Result;

/// When data keys rotate on their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RotationPolicy {
    max_age: Option<Duration>,
    interval: Duration,
}

impl Default for RotationPolicy {
    /// Rotate at 3/4 of the seal limit only; check every minute.
    fn default() -> RotationPolicy {
        RotationPolicy {
            max_age: None,
            interval: Duration::from_secs(60),
        }
    }
}

impl RotationPolicy {
    /// Also rotate a table's data key once its current version is older than `age`.
    #[must_use]
    pub fn max_age(mut self, age: Duration) -> RotationPolicy {
        self.max_age = Some(age);
        self
    }

    /// How often [`Store::auto_rotate`] checks. Default: every minute.
    #[must_use]
    pub fn check_every(mut self, interval: Duration) -> RotationPolicy {
        self.interval = interval.max(Duration::from_millis(10));
        self
    }
}

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
                let versions = data
                    .tables
                    .iter_mut()
                    .filter(|t| t.envelope.table_id == *id)
                    .flat_map(|t| t.envelope.versions.iter_mut());
                for v in versions.filter(|v| v.version == *version) {
                    v.seals = v.seals.max(*seals);
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
        let now = inner.clock.now();
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
                    let current = entry.envelope.current;
                    let worn = state.key(current).is_some_and(|k| k.usage() != KeyUsage::Fresh);
                    let old = policy.max_age.is_some_and(|age| {
                        entry
                            .envelope
                            .versions
                            .iter()
                            .find(|v| v.version == current)
                            .is_some_and(|v| v.created_at.0.saturating_add(age.as_secs()) <= now.0)
                    });
                    worn || old
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

    /// Runs [`Store::maintain_keys`] every `policy` interval in a background thread
    /// until the returned handle is dropped.
    pub fn auto_rotate(&self, policy: RotationPolicy) -> AutoRotation {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let rotated = Arc::new(Mutex::new(Vec::new()));
        let last_error = Arc::new(Mutex::new(None));
        let weak: Weak<StoreInner> = Arc::downgrade(&self.inner);
        let thread = {
            let (stop, rotated, last_error) = (stop.clone(), rotated.clone(), last_error.clone());
            std::thread::Builder::new()
                .name("tde-auto-rotate".into())
                .spawn(move || {
                    loop {
                        {
                            let mut stopped = stop.0.lock();
                            if !*stopped {
                                stop.1.wait_for(&mut stopped, policy.interval);
                            }
                            if *stopped {
                                return;
                            }
                        }
                        let Some(inner) = weak.upgrade() else { return };
                        match (Store { inner }).maintain_keys(&policy) {
                            Ok(r) => rotated.lock().extend(r),
                            Err(e) => *last_error.lock() = Some(e.to_string()),
                        }
                    }
                })
                .ok()
        };
        AutoRotation {
            stop,
            rotated,
            last_error,
            thread,
        }
    }
}

/// Automatic rotation running in the background; stops when dropped.
pub struct AutoRotation {
    stop: Arc<(Mutex<bool>, Condvar)>,
    rotated: Arc<Mutex<Vec<RotatedKey>>>,
    last_error: Arc<Mutex<Option<String>>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for AutoRotation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AutoRotation").finish_non_exhaustive()
    }
}

impl AutoRotation {
    /// Every rotation made so far.
    pub fn rotated(&self) -> Vec<RotatedKey> {
        self.rotated.lock().clone()
    }

    /// The last round's error, if the last failing round is the latest news.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().clone()
    }
}

impl Drop for AutoRotation {
    fn drop(&mut self) {
        *self.stop.0.lock() = true;
        self.stop.1.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
