//! The lifecycle API every engine offers through one trait, and the reports it returns.
//!
//! A [`crate::kv::Store`] and a [`crate::page::Tablespace`] implement [`KeyLifecycle`];
//! the CLI resolves a path once to one of them and dispatches through the trait.

use std::path::Path;
use std::sync::Arc;

use serde::Serialize;

use super::{EnvelopeId, Job, JobProgress, RotationPolicy};
use crate::cipher::Suite;
use crate::error::Result;
use crate::keyring::Envelope;
use crate::kms::{Kms, Timestamp};

/// A data key version made current by a rotation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RotatedKey {
    /// The table, or `(store)` for a store-level key (a tablespace's name for its key).
    pub table: String,
    /// The new current version.
    pub version: u32,
}

/// What a rewrap or migration did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RewrapReport {
    /// Envelopes (tables, and the store-level key) rewrapped.
    pub envelopes: usize,
    /// Wrapped data keys replaced.
    pub wrapped_keys: usize,
}

/// A data key version retired by a re-encryption pass.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RetiredKey {
    /// The table, or `(store)` (a tablespace's name for its key).
    pub table: String,
    /// The retired version.
    pub version: u32,
}

/// How to run a re-encryption pass.
#[derive(Debug, Clone, Copy)]
pub struct ReencryptOptions {
    pub(crate) rate: Option<u64>,
    pub(crate) threads: usize,
}

impl Default for ReencryptOptions {
    /// As fast as the engine goes, on up to 4 threads (the machine's cores).
    fn default() -> ReencryptOptions {
        ReencryptOptions {
            rate: None,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get().min(4)),
        }
    }
}

impl ReencryptOptions {
    /// Compactions a RocksDB rewrite step runs at once. Re-sealing values costs CPU (an
    /// AEAD open and seal per value) that a plain compaction does not spend, so more than
    /// one thread keeps the pass near compaction speed. Default: the machine's cores, at
    /// most 4. The page store rewrites on one thread.
    #[must_use]
    pub fn threads(mut self, n: usize) -> ReencryptOptions {
        self.threads = n.clamp(1, 64);
        self
    }

    /// The rate limit, in bytes per second.
    pub fn rate_bytes(&self) -> Option<u64> {
        self.rate
    }

    /// Compactions a rewrite step runs at once.
    pub fn thread_count(&self) -> usize {
        self.threads
    }

    /// Rewrites at most `bytes_per_sec` of old files (or pages) per second, on average.
    /// Default: as fast as the engine goes.
    #[must_use]
    pub fn rate_limit(mut self, bytes_per_sec: u64) -> ReencryptOptions {
        self.rate = Some(bytes_per_sec.max(1));
        self
    }
}

/// Where a re-encryption pass is.
pub type ReencryptProgress = JobProgress;

/// What a re-encryption pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReencryptReport {
    /// Versions retired.
    pub retired: Vec<RetiredKey>,
    /// Bytes of old files (or pages) rewritten.
    pub rewritten_bytes: u64,
    /// Values (or pages) sealed again under a newer version.
    pub resealed_values: u64,
    /// Store-level files still under an old version; they are replaced when the store
    /// next opens, after which another pass retires that version
    /// ([`reencrypt_all`] does both).
    pub pending_reopen: Vec<String>,
}

/// What still awaits re-encryption.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PendingReencrypt {
    /// The table, or `(store)` (a tablespace's name).
    pub table: String,
    /// Versions older than the current one, not yet retired.
    pub versions: Vec<u32>,
    /// Whether a pass has started on them (and will resume).
    pub started: bool,
    /// Bytes of live files (or pages) under those versions.
    pub bytes: u64,
}

/// A re-encryption pass running in the background; cancelled when dropped. A cancelled
/// or crashed pass resumes where it stopped.
pub type ReencryptJob = Job<ReencryptReport>;

/// What one round of the key-state watch found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct WatchReport {
    /// Master keys checked.
    pub keys_checked: usize,
    /// Tables failed closed in this round: (table, master key, reason).
    pub revoked: Vec<(String, String, String)>,
    /// Keys whose state could not be learned (KMS unreachable or throttling): (key, error).
    pub unreachable: Vec<(String, String)>,
}

/// A running key-state watch; stops when dropped. [`Job::last`] holds the last round.
pub type KeyWatch = Job<WatchReport>;

/// Automatic rotation running in the background; stops when dropped.
/// [`Job::rotated`] lists what it rotated, [`Job::last_error`] its latest failure.
pub type AutoRotation = Job<Vec<RotatedKey>>;

/// What a data key version is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum VersionState {
    /// New data is sealed under it.
    Current,
    /// Older: still opens its data, until re-encryption retires it.
    Readable,
    /// Older, and a re-encryption pass that retires it has started.
    Retiring,
    /// Retired: its data was rewritten and its wrapped key destroyed.
    Retired,
}

/// One data key version of an envelope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyVersionInfo {
    /// Version number.
    pub version: u32,
    /// What it is doing.
    pub state: VersionState,
    /// Seals made under it: counted live for an open store, else as recorded.
    pub seals: u64,
    /// The master key id that wraps it (that wrapped it, if retired).
    pub master_key_id: String,
    /// When it was created.
    pub created_at: Timestamp,
    /// When it was retired.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retired_at: Option<Timestamp>,
}

/// One envelope: a table's keys, or the store-level key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EnvelopeInfo {
    /// Which envelope.
    pub envelope: EnvelopeId,
    /// The table's name, `(store)`, or the tablespace's name.
    pub name: String,
    /// The master key as configured.
    pub master_key: String,
    /// Suite.
    pub suite: Suite,
    /// The current version.
    pub current: u32,
    /// Every version, live and retired, oldest first.
    pub versions: Vec<KeyVersionInfo>,
}

/// Everything about an engine's keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeysDescription {
    /// `store` or `tablespace`.
    pub kind: &'static str,
    /// The KMS recorded (URI or description).
    pub kms: String,
    /// Every envelope.
    pub envelopes: Vec<EnvelopeInfo>,
}

/// The description of `envelope`, with `live` giving the current seal count of a version
/// whose key is in memory (else the recorded count is shown).
pub(crate) fn describe_envelope(
    id: EnvelopeId,
    name: &str,
    envelope: &Envelope,
    live: &dyn Fn(u32) -> Option<u64>,
) -> EnvelopeInfo {
    let retiring = envelope
        .reencrypt
        .as_ref()
        .map(|r| r.retire.clone())
        .unwrap_or_default();
    let mut versions: Vec<KeyVersionInfo> = envelope
        .versions
        .iter()
        .map(|v| KeyVersionInfo {
            version: v.version,
            state: if v.version == envelope.current {
                VersionState::Current
            } else if retiring.contains(&v.version) {
                VersionState::Retiring
            } else {
                VersionState::Readable
            },
            seals: live(v.version).unwrap_or(v.seals),
            master_key_id: v.cmk_id.clone(),
            created_at: v.created_at,
            retired_at: None,
        })
        .chain(envelope.retired.iter().map(|r| KeyVersionInfo {
            version: r.version,
            state: VersionState::Retired,
            seals: 0,
            master_key_id: r.cmk_id.clone(),
            created_at: r.created_at,
            retired_at: Some(r.retired_at),
        }))
        .collect();
    versions.sort_by_key(|v| v.version);
    EnvelopeInfo {
        envelope: id,
        name: name.to_owned(),
        master_key: envelope.cmk.clone(),
        suite: envelope.suite,
        current: envelope.current,
        versions,
    }
}

/// One part of an integrity check: a table, or a tablespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartReport {
    /// The table's (or tablespace's) name.
    pub name: String,
    /// Records (or pages) read and authenticated.
    pub checked: u64,
    /// The first failure, if any.
    pub error: Option<String>,
}

/// What a full integrity check found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IntegrityReport {
    /// `records` or `pages`.
    pub unit: &'static str,
    /// Each part checked.
    pub parts: Vec<PartReport>,
    /// Stores: each of RocksDB's files, every byte of it authenticated (`checked` counts
    /// its bytes of plaintext). Tablespaces: empty (their pages are the parts).
    pub files: Vec<PartReport>,
}

impl IntegrityReport {
    /// Items authenticated in all.
    pub fn checked(&self) -> u64 {
        self.parts.iter().map(|p| p.checked).sum()
    }

    /// Parts and files that failed.
    pub fn failures(&self) -> usize {
        self.parts
            .iter()
            .chain(&self.files)
            .filter(|p| p.error.is_some())
            .count()
    }
}

/// The key lifecycle, the same for every engine.
///
/// `table` arguments name a table of a RocksDB store (`None`: every table and the
/// store-level key); a tablespace has one envelope and refuses a table name.
pub trait KeyLifecycle: Send + Sync {
    /// `store` or `tablespace`.
    fn kind(&self) -> &'static str;

    /// Where it lives.
    fn location(&self) -> &Path;

    /// Envelopes, versions, their states and seal counts.
    fn describe(&self) -> KeysDescription;

    /// Makes a new data key version current (one KMS call per envelope); older versions
    /// stay readable until re-encryption retires them.
    ///
    /// # Errors
    /// [`crate::Error::Kms`] (nothing changes); [`crate::Error::Io`].
    fn rotate_data_key(&self, table: Option<&str>) -> Result<Vec<RotatedKey>>;

    /// Rewraps the data keys under `to_key` (their own master key's current version if
    /// `None`), inside the KMS; no data changes.
    ///
    /// # Errors
    /// [`crate::Error::Kms`] (nothing changes); [`crate::Error::Io`].
    fn rewrap(&self, table: Option<&str>, to_key: Option<&str>) -> Result<RewrapReport>;

    /// Moves every data key to master key `to_key` of the KMS `to`, recording
    /// `to_kms_uri`; no data changes.
    ///
    /// # Errors
    /// [`crate::Error::Kms`] if either KMS refuses (nothing changes); [`crate::Error::Io`].
    fn migrate(&self, to: Arc<dyn Kms>, to_key: &str, to_kms_uri: Option<&str>) -> Result<RewrapReport>;

    /// What awaits re-encryption.
    ///
    /// # Errors
    /// [`crate::Error::Io`], [`crate::Error::Engine`].
    fn reencrypt_status(&self) -> Result<Vec<PendingReencrypt>>;

    /// Starts a re-encryption pass in the background (see [`ReencryptJob`]).
    fn reencrypt(&self, options: ReencryptOptions) -> ReencryptJob;

    /// Saves seal counts and rotates every key due under `policy`.
    ///
    /// # Errors
    /// [`crate::Error::Kms`]; [`crate::Error::Io`].
    fn maintain_keys(&self, policy: &RotationPolicy) -> Result<Vec<RotatedKey>>;

    /// Runs [`KeyLifecycle::maintain_keys`] every `policy` interval in the background.
    fn auto_rotate(&self, policy: RotationPolicy) -> AutoRotation;

    /// Asks the KMS for the state of every master key in use and fails closed what a
    /// revoked key protects.
    ///
    /// # Errors
    /// [`crate::Error::Io`] if the audit trail cannot be written.
    fn check_keys(&self) -> Result<WatchReport>;

    /// Reads and authenticates everything (every record of every table; every page).
    ///
    /// # Errors
    /// [`crate::Error::Io`], [`crate::Error::Engine`]; authentication failures are in the
    /// report.
    fn verify(&self) -> Result<IntegrityReport>;

    /// Verifies the audit trail with the keys.
    ///
    /// # Errors
    /// [`crate::Error::Authentication`] for a forged record; [`crate::Error::Corrupt`].
    fn verify_audit(&self) -> Result<crate::audit::AuditReport>;

    /// Takes a ciphertext backup into `dest`, calling `progress(done, total)` in bytes.
    ///
    /// # Errors
    /// As [`crate::backup::create`].
    fn backup(
        &self,
        dest: &crate::backup::Destination,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<crate::backup::BackupReport>;

    /// Closes it and opens it again with the same options (a RocksDB store replaces its
    /// MANIFEST and info log at open).
    ///
    /// # Errors
    /// As the engine's open; [`crate::Error::InvalidArgument`] if other handles are open.
    fn reopen(self: Box<Self>) -> Result<Box<dyn KeyLifecycle>>;

    /// Closes it, reporting errors.
    ///
    /// # Errors
    /// The engine's close errors.
    fn close(self: Box<Self>) -> Result<()>;
}

/// Re-encrypts until every old version is retired, reopening once if store-level
/// files are replaced only at open; `progress` sees the pass's progress every 200 ms.
/// Returns the engine (reopened or not) and what was done.
///
/// # Errors
/// The pass's error.
pub fn reencrypt_all(
    engine: Box<dyn KeyLifecycle>,
    options: ReencryptOptions,
    progress: &mut dyn FnMut(&ReencryptProgress),
) -> Result<(Box<dyn KeyLifecycle>, ReencryptReport)> {
    let mut engine = engine;
    let mut total = ReencryptReport::default();
    for round in 0..2 {
        let job = engine.reencrypt(options);
        loop {
            let finished = job.is_finished();
            progress(&job.progress());
            if finished {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        let report = job.wait()?;
        total.retired.extend(report.retired);
        total.rewritten_bytes += report.rewritten_bytes;
        total.resealed_values += report.resealed_values;
        total.pending_reopen = report.pending_reopen;
        if total.pending_reopen.is_empty() || round == 1 {
            break;
        }
        engine = engine.reopen()?;
    }
    Ok((engine, total))
}
