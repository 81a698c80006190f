//! The key lifecycle, once for every engine: envelopes (a table's or a store's wrapped
//! data key versions) and every operation on them — generate, unwrap at open, rotate,
//! rewrap, migrate, plan and retire old versions, count seals and rotate before the limit
//! — with one retry policy and one audit record per KMS call.
//!
//! Invariant: this is the only module above `kms` that calls a KMS. Engines (the RocksDB
//! store, the page store, a backup's copy of either) say where their envelopes live
//! ([`Scope`], [`EnvelopeId`]) and commit the envelopes this layer returns durably; they
//! hold no rotation, rewrap, migration, retirement or seal-count logic of their own.
//! Every call is recorded in the engine's audit trail before its result is used, each
//! retry attempt included.
//! Not here: using the keys (`kv`, `page`), the files that hold envelopes (`keyring`,
//! the tablespace header), the trail's format (`audit`).

mod job;
mod lifecycle;
mod policy;
mod retry;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::{Mutex, RwLock};

pub(crate) use job::JobControl;
pub use job::{Job, JobProgress};
pub(crate) use lifecycle::describe_envelope;
pub use lifecycle::{
    AutoRotation, EnvelopeInfo, IntegrityReport, KeyLifecycle, KeyVersionInfo, KeyWatch, KeysDescription,
    PartReport, PendingReencrypt, ReencryptJob, ReencryptOptions, ReencryptProgress, ReencryptReport,
    RetiredKey, RewrapReport, RotatedKey, VersionState, WatchReport, reencrypt_all,
};
pub use policy::RotationPolicy;
pub(crate) use policy::{due_for_rotation, leased_count, old_versions, record_seals, retire};
pub use retry::RetryPolicy;

use crate::audit::{AuditEvent, AuditLog, Reason};
use crate::cipher::Suite;
use crate::clock::{Clock, SystemClock};
use crate::error::{Error, Result};
use crate::keyring::{DkVersion, Envelope};
use crate::kms::{DataKeySpec, EncryptionContext, KeyMetadata, Kms, KmsError};
use crate::secret::{DataKey, WrappedKey};

/// Which envelope of a store is meant: the store-level key (a RocksDB store's WAL,
/// MANIFEST and other store files; a tablespace's only key), or a table's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind", content = "id")]
pub enum EnvelopeId {
    /// The store-level key.
    Store,
    /// The key of the table with this id.
    Table(u32),
}

impl EnvelopeId {
    /// The table id recorded in a keyring and in file headers (0 for the store).
    pub(crate) fn table_id(self) -> u32 {
        match self {
            EnvelopeId::Store => crate::keyring::STORE_TABLE_ID,
            EnvelopeId::Table(id) => id,
        }
    }

    /// The identifier of the envelope recorded with table id `id`.
    pub(crate) fn of(id: u32) -> EnvelopeId {
        if id == crate::keyring::STORE_TABLE_ID {
            EnvelopeId::Store
        } else {
            EnvelopeId::Table(id)
        }
    }
}

/// What owns the envelopes, which fixes the encryption context their wrapped keys are
/// bound to (so a wrapped key cannot be moved to another store, table or tablespace).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Scope {
    /// A RocksDB store (hex store id).
    Store(String),
    /// A page-store tablespace.
    Tablespace([u8; 16]),
    /// A SQLite database.
    #[cfg(feature = "sqlite")]
    Sqlite([u8; 16]),
}

impl Scope {
    /// The encryption context of version `version` of envelope `id`.
    pub(crate) fn context(&self, id: EnvelopeId, version: u32) -> EncryptionContext {
        match self {
            Scope::Store(store_id) => crate::keyring::context(store_id, id.table_id(), version),
            Scope::Tablespace(ts) => EncryptionContext::new()
                .with("tde:tablespace", crate::hex::encode(ts))
                .with("tde:dk-version", version.to_string()),
            #[cfg(feature = "sqlite")]
            Scope::Sqlite(db) => EncryptionContext::new()
                .with("tde:sqlite-db", crate::hex::encode(db))
                .with("tde:dk-version", version.to_string()),
        }
    }
}

/// An envelope named for messages and the audit trail: its typed id and a label (the
/// table's name, `(store)`, or the tablespace's name).
#[derive(Debug, Clone)]
pub(crate) struct Named {
    pub id: EnvelopeId,
    pub label: String,
}

/// A table and key that could not be unwrapped.
#[derive(Debug)]
pub struct KeyFailure {
    /// Which envelope.
    pub envelope: EnvelopeId,
    /// The table's name (`(store)` for a store-level key, the tablespace's name).
    pub table: String,
    /// The data key version.
    pub version: u32,
    /// The master key.
    pub key: String,
    /// What the KMS said.
    pub error: KmsError,
}

impl std::fmt::Display for KeyFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "table {:?} (data key v{}, master key {}): {}",
            self.table, self.version, self.key, self.error
        )
    }
}

/// One data key version unwrapped at open.
pub(crate) struct Unwrapped {
    pub id: EnvelopeId,
    pub version: u32,
    pub suite: Suite,
    pub key: DataKey,
}

/// A data key version made by [`KeyService::rotate`] or [`KeyService::generate`]: the
/// record to add to the envelope, and the plaintext key.
pub(crate) struct NewVersion {
    pub record: DkVersion,
    pub key: DataKey,
}

/// The key lifecycle of one store or tablespace: its KMS (replaced by a migration), its
/// retry policy, and its audit trail.
pub(crate) struct KeyService {
    scope: Scope,
    kms: RwLock<Arc<dyn Kms>>,
    audit: Arc<AuditLog>,
    retry: RetryPolicy,
}

impl std::fmt::Debug for KeyService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyService")
            .field("scope", &self.scope)
            .field("kms", &self.kms.read().describe())
            .finish_non_exhaustive()
    }
}

/// An audit record waiting to be written (calls made in parallel are recorded together).
struct Attempt {
    op: &'static str,
    key: String,
    label: String,
    error: Option<String>,
}

impl KeyService {
    pub(crate) fn new(
        scope: Scope,
        kms: Arc<dyn Kms>,
        audit: Arc<AuditLog>,
        retry: RetryPolicy,
    ) -> KeyService {
        KeyService {
            scope,
            kms: RwLock::new(kms),
            audit,
            retry,
        }
    }

    /// The KMS in use now.
    pub(crate) fn kms(&self) -> Arc<dyn Kms> {
        self.kms.read().clone()
    }

    /// The audit trail every call is recorded in.
    pub(crate) fn audit(&self) -> &Arc<AuditLog> {
        &self.audit
    }

    /// The encryption context of version `version` of envelope `id`.
    pub(crate) fn context(&self, id: EnvelopeId, version: u32) -> EncryptionContext {
        self.scope.context(id, version)
    }

    /// Runs one KMS operation with the retry policy, recording every attempt.
    fn call<T>(
        &self,
        op: &'static str,
        key: &str,
        label: &str,
        reason: Reason,
        mut call: impl FnMut() -> Result<T, KmsError>,
    ) -> Result<T> {
        let mut attempts = Vec::new();
        let outcome = self.retry.run_observed(&mut call, &mut |e| {
            attempts.push(Attempt {
                op,
                key: key.to_owned(),
                label: label.to_owned(),
                error: e.map(ToString::to_string),
            });
        });
        self.record(reason, &attempts)?;
        Ok(outcome?)
    }

    fn record(&self, reason: Reason, attempts: &[Attempt]) -> Result<()> {
        self.audit.append_all(attempts.iter().map(|a| AuditEvent {
            op: a.op,
            key: &a.key,
            table: &a.label,
            reason,
            error: a.error.clone(),
        }))
    }

    /// Generates version `version` of envelope `target` under master key `cmk`.
    ///
    /// # Errors
    /// [`Error::Kms`]; [`Error::Io`] if the audit record cannot be written.
    pub(crate) fn generate(
        &self,
        target: &Named,
        cmk: &str,
        suite: Suite,
        version: u32,
        reason: Reason,
    ) -> Result<NewVersion> {
        let kms = self.kms();
        let context = self.context(target.id, version);
        let generated = self.call("generate-data-key", cmk, &target.label, reason, || {
            kms.generate_data_key(cmk, DataKeySpec::from(suite), &context)
        })?;
        Ok(NewVersion {
            record: DkVersion {
                version,
                edk: generated.wrapped,
                cmk_id: generated.key_id,
                created_at: SystemClock.now(),
                seals: 0,
            },
            key: generated.plaintext,
        })
    }

    /// A new data key version for `envelope` (numbered after every live and retired
    /// one), under its master key and suite. The caller adds it to the envelope and makes
    /// it current.
    ///
    /// # Errors
    /// As [`KeyService::generate`].
    pub(crate) fn rotate(&self, target: &Named, envelope: &Envelope, reason: Reason) -> Result<NewVersion> {
        self.generate(
            target,
            &envelope.cmk,
            envelope.suite,
            envelope.next_version(),
            reason,
        )
    }

    /// Unwraps every version of every envelope with at most `parallelism` calls in flight
    /// (all or nothing). `authenticate` sees the keys before the calls are recorded, so
    /// that it can key the audit trail; its error is returned after they are.
    ///
    /// # Errors
    /// [`Error::KeysUnavailable`] naming every envelope and version that failed;
    /// `authenticate`'s error; [`Error::Io`] for the trail.
    pub(crate) fn unwrap_all(
        &self,
        envelopes: &[(Named, &Envelope)],
        parallelism: usize,
        reason: Reason,
        authenticate: &mut dyn FnMut(&[Unwrapped]) -> Result<()>,
    ) -> Result<Vec<Unwrapped>> {
        struct Request<'a> {
            target: &'a Named,
            envelope: &'a Envelope,
            version: &'a DkVersion,
        }
        let requests: Vec<Request<'_>> = envelopes
            .iter()
            .flat_map(|(target, envelope)| {
                envelope.versions.iter().map(move |version| Request {
                    target,
                    envelope,
                    version,
                })
            })
            .collect();
        type Slot = Mutex<Option<(Result<DataKey, KmsError>, Vec<Attempt>)>>;
        let results: Vec<Slot> = requests.iter().map(|_| Mutex::new(None)).collect();
        let next = AtomicUsize::new(0);
        let workers = parallelism.clamp(1, requests.len().max(1));
        let kms = self.kms();
        std::thread::scope(|scope| {
            for _ in 0..workers {
                scope.spawn(|| {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(req) = requests.get(i) else { break };
                        let context = self.context(req.target.id, req.version.version);
                        let spec = DataKeySpec::from(req.envelope.suite);
                        let mut attempts = Vec::new();
                        let outcome = self.retry.run_observed(
                            || kms.decrypt_data_key(&req.version.edk, spec, &context),
                            &mut |e| {
                                attempts.push(Attempt {
                                    op: "decrypt",
                                    key: req.envelope.cmk.clone(),
                                    label: req.target.label.clone(),
                                    error: e.map(ToString::to_string),
                                });
                            },
                        );
                        *results[i].lock() = Some((outcome, attempts));
                    }
                });
            }
        });
        let mut keys = Vec::with_capacity(requests.len());
        let mut failures = Vec::new();
        let mut attempts = Vec::new();
        for (req, slot) in requests.iter().zip(results) {
            let Some((outcome, tried)) = slot.into_inner() else {
                continue;
            };
            attempts.extend(tried);
            match outcome {
                Ok(key) => keys.push(Unwrapped {
                    id: req.target.id,
                    version: req.version.version,
                    suite: req.envelope.suite,
                    key,
                }),
                Err(error) => failures.push(KeyFailure {
                    envelope: req.target.id,
                    table: req.target.label.clone(),
                    version: req.version.version,
                    key: req.envelope.cmk.clone(),
                    error,
                }),
            }
        }
        let authenticated = if failures.is_empty() {
            authenticate(&keys)
        } else {
            Ok(())
        };
        self.record(reason, &attempts)?;
        if !failures.is_empty() {
            return Err(Error::KeysUnavailable { failures });
        }
        authenticated?;
        Ok(keys)
    }

    /// Unwraps every version of one envelope (a backup's copy, or a tablespace header's).
    ///
    /// # Errors
    /// As [`KeyService::unwrap_all`].
    pub(crate) fn unwrap_envelope(
        &self,
        target: &Named,
        envelope: &Envelope,
        reason: Reason,
    ) -> Result<Vec<Unwrapped>> {
        self.unwrap_all(&[(target.clone(), envelope)], 4, reason, &mut |_| Ok(()))
    }

    /// Asks the KMS for the state of `key` (the key watch, and before a rewrap).
    ///
    /// # Errors
    /// [`Error::Kms`] with what the KMS said; [`Error::Io`] for the trail.
    pub(crate) fn describe_key(&self, key: &str, label: &str, reason: Reason) -> Result<KeyMetadata> {
        let kms = self.kms();
        self.call("describe-key", key, label, reason, || kms.describe_key(key))
    }

    /// Asks the KMS, where it can tell without unwrapping, whether version `version` of
    /// envelope `id` may still be unwrapped ([`Kms::check_unwrap`]); `Ok` at once (no
    /// call, no record) for a KMS that cannot tell.
    ///
    /// # Errors
    /// [`Error::Kms`] with what the KMS said; [`Error::Io`] for the trail.
    pub(crate) fn check_unwrap(
        &self,
        id: EnvelopeId,
        version: &crate::keyring::DkVersion,
        label: &str,
        reason: Reason,
    ) -> Result<()> {
        let kms = self.kms();
        if !kms.can_check_unwrap() {
            return Ok(());
        }
        let context = self.scope.context(id, version.version);
        self.call("check-unwrap", &version.cmk_id, label, reason, || {
            kms.check_unwrap(version.edk.as_bytes(), &context)
        })
    }

    /// Rewraps every version of each envelope in `targets` for master key `to_key` (each
    /// envelope's own master key if `None`), of the KMS `to` (this service's KMS if
    /// `None`): inside one KMS with `re_encrypt`, across two by unwrapping here and
    /// wrapping there, in memory. Returns the envelopes to commit; nothing is changed
    /// here. After committing a move to `to`, call [`KeyService::switch_kms`].
    ///
    /// # Errors
    /// [`Error::Kms`] if a key refuses (the caller commits nothing); [`Error::Io`].
    pub(crate) fn rewrap(
        &self,
        targets: &[(Named, Envelope)],
        to: Option<&Arc<dyn Kms>>,
        to_key: Option<&str>,
        reason: Reason,
    ) -> Result<(Vec<Envelope>, RewrapReport)> {
        let from = self.kms();
        let across = to.filter(|to| !Arc::ptr_eq(to, &from));
        let dest_kms = across.unwrap_or(&from).clone();
        let mut report = RewrapReport {
            envelopes: 0,
            wrapped_keys: 0,
        };
        let mut key_ids: std::collections::BTreeMap<String, String> = Default::default();
        let mut out = Vec::with_capacity(targets.len());
        for (target, envelope) in targets {
            let dest = to_key.unwrap_or(&envelope.cmk).to_owned();
            let key_id = match key_ids.get(&dest) {
                Some(id) => id.clone(),
                None => {
                    let id = self
                        .call("describe-key", &dest, &target.label, reason, || {
                            dest_kms.describe_key(&dest)
                        })?
                        .key_id;
                    key_ids.insert(dest.clone(), id.clone());
                    id
                }
            };
            let mut next = envelope.clone();
            for version in &mut next.versions {
                let context = self.context(target.id, version.version);
                let wrapped = match across {
                    None => self.call("re-encrypt", &dest, &target.label, reason, || {
                        from.re_encrypt(version.edk.as_bytes(), &context, &dest, &context)
                    })?,
                    Some(to) => {
                        let plain = self.call("decrypt", &envelope.cmk, &target.label, reason, || {
                            from.decrypt(version.edk.as_bytes(), &context)
                        })?;
                        self.call("encrypt", &dest, &target.label, reason, || {
                            to.encrypt(&dest, plain.expose(), &context)
                        })?
                    }
                };
                version.edk = WrappedKey::from_bytes(wrapped);
                version.cmk_id.clone_from(&key_id);
                report.wrapped_keys += 1;
            }
            next.cmk = dest;
            report.envelopes += 1;
            out.push(next);
        }
        Ok((out, report))
    }

    /// Uses `to` from now on (after a migration was committed).
    pub(crate) fn switch_kms(&self, to: Arc<dyn Kms>) {
        *self.kms.write() = to;
    }
}

/// Whether a failed `describe_key` means the key is revoked (rather than unreachable).
pub(crate) fn revoking(error: &Error) -> bool {
    use crate::kms::KmsErrorKind;
    let Error::Kms(e) = error else { return false };
    matches!(
        e.kind(),
        KmsErrorKind::Disabled
            | KmsErrorKind::PendingDeletion
            | KmsErrorKind::NotFound
            | KmsErrorKind::AccessDenied
            | KmsErrorKind::PendingImport
    )
}
