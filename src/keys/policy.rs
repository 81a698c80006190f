//! Version bookkeeping on an envelope, the same for every engine: which versions are old,
//! retiring them, recording seal counts, and when a version is due for rotation.
//!
//! Seal counts: a data key version may seal at most 2^32 values or pages with random
//! 96-bit nonces (or a lower, configured limit). Each engine records a version's count
//! with its envelope; the count recorded is never below the seals made before the last
//! durable commit, and at open the key starts counting from it. Rotation is due at 3/4 of
//! the limit, which leaves a quarter of it for seals a crash may have left uncounted.

use std::time::Duration;

use crate::cipher::KeyUsage;
use crate::keyring::{Envelope, RetiredVersion};
use crate::kms::Timestamp;

/// When data keys rotate on their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RotationPolicy {
    pub(crate) max_age: Option<Duration>,
    pub(crate) interval: Duration,
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
    /// Also rotate a key once its current version is older than `age`.
    #[must_use]
    pub fn max_age(mut self, age: Duration) -> RotationPolicy {
        self.max_age = Some(age);
        self
    }

    /// How often automatic rotation checks. Default: every minute.
    #[must_use]
    pub fn check_every(mut self, interval: Duration) -> RotationPolicy {
        self.interval = interval.max(Duration::from_millis(10));
        self
    }

    /// The interval between checks.
    pub fn interval(&self) -> Duration {
        self.interval
    }
}

/// Versions of `envelope` older than its current one, not yet retired.
pub(crate) fn old_versions(envelope: &Envelope) -> Vec<u32> {
    envelope
        .versions
        .iter()
        .map(|v| v.version)
        .filter(|v| *v != envelope.current)
        .collect()
}

/// Whether `envelope`'s current version is due for rotation: its key (`usage`, if held)
/// is past 3/4 of its seal limit, or the version is older than the policy allows.
pub(crate) fn due_for_rotation(
    envelope: &Envelope,
    usage: Option<KeyUsage>,
    policy: &RotationPolicy,
    now: Timestamp,
) -> bool {
    let worn = usage.is_some_and(|u| u != KeyUsage::Fresh);
    let old = policy.max_age.is_some_and(|age| {
        envelope
            .versions
            .iter()
            .find(|v| v.version == envelope.current)
            .is_some_and(|v| v.created_at.0.saturating_add(age.as_secs()) <= now.0)
    });
    worn || old
}

/// Records that version `version` of `envelope` has sealed `seals` times; counts only
/// grow. Returns whether the record changed.
pub(crate) fn record_seals(envelope: &mut Envelope, version: u32, seals: u64) -> bool {
    match envelope.versions.iter_mut().find(|v| v.version == version) {
        Some(v) if seals > v.seals => {
            v.seals = seals;
            true
        }
        _ => false,
    }
}

/// How far ahead of the actual count an engine that records counts only with its commits
/// reserves seals (the page store).
fn seal_lease(limit: u64) -> u64 {
    (limit / 64).clamp(1, 1 << 16)
}

/// For an engine that records seal counts only with its commits (the page store): the
/// count to record with a commit, for a version that has sealed `seals` times and has
/// `recorded` on record, if it must be raised. Called after the commit's seals, so the
/// record committed is never below the seals made; raised a lease ahead (never past
/// `limit`), so only one commit in a lease (65,536 seals at the default limit) carries
/// the raise.
pub(crate) fn leased_count(recorded: u64, seals: u64, limit: u64) -> Option<u64> {
    (seals > recorded).then(|| (seals + seal_lease(limit)).min(limit))
}

/// Moves `versions` (never the current one) of `envelope` to its retired list, ends its
/// re-encryption plan, and returns the versions retired.
pub(crate) fn retire(envelope: &mut Envelope, versions: &[u32], now: Timestamp) -> Vec<u32> {
    let current = envelope.current;
    let (gone, kept): (Vec<_>, Vec<_>) = envelope
        .versions
        .drain(..)
        .partition(|v| versions.contains(&v.version) && v.version != current);
    envelope.versions = kept;
    let retired = gone.iter().map(|v| v.version).collect();
    envelope.retired.extend(gone.into_iter().map(|v| RetiredVersion {
        version: v.version,
        cmk_id: v.cmk_id,
        created_at: v.created_at,
        retired_at: now,
    }));
    envelope.reencrypt = None;
    retired
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cipher::Suite;
    use crate::keyring::DkVersion;
    use crate::secret::WrappedKey;

    fn envelope(versions: &[u32], current: u32) -> Envelope {
        Envelope {
            table_id: 1,
            cmk: "k".into(),
            suite: Suite::Aes256Gcm,
            versions: versions
                .iter()
                .map(|v| DkVersion {
                    version: *v,
                    edk: WrappedKey::from_bytes(vec![0; 8]),
                    cmk_id: "k".into(),
                    created_at: Timestamp(100),
                    seals: 0,
                })
                .collect(),
            current,
            retired: Vec::new(),
            reencrypt: None,
        }
    }

    #[test]
    fn retiring_never_takes_the_current_version_and_numbers_are_never_reused() {
        let mut e = envelope(&[1, 2, 3], 3);
        assert_eq!(old_versions(&e), vec![1, 2]);
        assert_eq!(retire(&mut e, &[1, 3], Timestamp(5)), vec![1]);
        assert_eq!(e.versions.len(), 2);
        assert_eq!(e.next_version(), 4);
        retire(&mut e, &[2], Timestamp(6));
        assert_eq!(old_versions(&e), Vec::<u32>::new());
        assert_eq!(e.next_version(), 4);
    }

    #[test]
    fn a_leased_count_stays_ahead_of_the_seals_and_never_passes_the_limit() {
        let limit = 1 << 32;
        assert_eq!(
            leased_count(0, 0, limit),
            None,
            "nothing sealed, nothing to record"
        );
        assert_eq!(leased_count(0, 1, limit), Some(1 + (1 << 16)));
        assert_eq!(leased_count(1 << 16, 10, limit), None);
        assert_eq!(leased_count(1 << 16, (1 << 16) + 1, limit), Some((1 << 17) + 1));
        assert_eq!(leased_count(59, 60, 64), Some(61));
        assert_eq!(leased_count(63, 64, 64), Some(64));
        assert_eq!(leased_count(64, 64, 64), None);
    }

    #[test]
    fn seal_counts_only_grow_and_rotation_is_due_when_worn_or_old() {
        let mut e = envelope(&[1], 1);
        assert!(record_seals(&mut e, 1, 10));
        assert!(!record_seals(&mut e, 1, 5));
        assert_eq!(e.versions[0].seals, 10);
        let policy = RotationPolicy::default();
        assert!(!due_for_rotation(
            &e,
            Some(KeyUsage::Fresh),
            &policy,
            Timestamp(1000)
        ));
        assert!(due_for_rotation(
            &e,
            Some(KeyUsage::RotateSoon),
            &policy,
            Timestamp(1000)
        ));
        let aged = policy.max_age(Duration::from_secs(50));
        assert!(due_for_rotation(&e, None, &aged, Timestamp(150)));
        assert!(!due_for_rotation(&e, None, &aged, Timestamp(149)));
    }
}
