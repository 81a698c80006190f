//! Data key rotation and page-by-page re-encryption of a tablespace.
//!
//! Invariant: a new version enters the header together with the first pages sealed under
//! it (in the same journal commit), so a crash leaves either neither or both; a version is
//! retired (its wrapped key removed from the header) only after every page of the file
//! names a newer one and the journal has been checkpointed.
//! Not here: the key-value store's re-encryption (`kv::reencrypt`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::codec::stored_version;
use super::{Inner, PageFile, Tablespace, envelope_name, header_key, io_error, page_key};
use crate::audit::{AuditEvent, Reason};
use crate::clock::{Clock, SystemClock};
use crate::error::{Error, Result};
use crate::keys::{
    AutoRotation, EnvelopeId, Job, JobControl, PendingReencrypt, ReencryptJob, ReencryptOptions,
    ReencryptReport, RetiredKey, RewrapReport, RotatedKey, RotationPolicy, WatchReport,
};
use crate::kms::{KeyState, Kms};

/// Pages rewritten between two commits.
const BATCH_PAGES: u64 = 256;

impl Tablespace {
    /// Makes a new data key version (one KMS call) current: pages written from now on are
    /// sealed under it; pages under older versions stay readable. Durable with the next
    /// [`Tablespace::sync`], together with the first pages sealed under it.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for an unencrypted tablespace; [`Error::Kms`].
    pub fn rotate_data_key(&self) -> Result<u32> {
        let inner = &*self.inner;
        inner.check_encrypted()?;
        let _one = inner.sync_lock.lock();
        inner.check_poisoned()?;
        let envelope = inner.durable.lock().header.meta.envelope.clone();
        let new = inner
            .keys
            .rotate(&envelope_name(&inner.name), &envelope, Reason::Rotate)?;
        let version = new.record.version;
        let pages = page_key(envelope.suite, &new.key, &inner.id, version)?.with_seal_limit(inner.seal_limit);
        let header = header_key(envelope.suite, &new.key, &inner.id, version)?;
        inner
            .meta
            .lock()
            .add(&crate::hex::encode(&inner.id), version, &new.key);
        if let Some(key) = inner.meta.lock().mac_key(version, crate::audit::AUDIT_MAC_LABEL) {
            inner.keys.audit().set_key(version, key);
        }
        let mut durable = inner.durable.lock();
        let meta_envelope = &mut durable.header.meta.envelope;
        meta_envelope.versions.push(new.record);
        meta_envelope.current = version;
        durable.header_changed = true;
        inner.sealing.write().make_current(version, Arc::new(pages));
        *inner.header_key.write() = Arc::new(header);
        Ok(version)
    }

    /// What awaits re-encryption: the versions older than the current one, and the bytes
    /// of the tablespace (every page is read to find the ones under them).
    ///
    /// # Errors
    /// [`Error::Io`].
    pub fn reencrypt_status(&self) -> Result<Vec<PendingReencrypt>> {
        let inner = &*self.inner;
        let (versions, total) = {
            let durable = inner.durable.lock();
            (
                crate::keys::old_versions(&durable.header.meta.envelope),
                durable.disk_pages.saturating_sub(1),
            )
        };
        if versions.is_empty() || !inner.encrypted {
            return Ok(Vec::new());
        }
        let mut raw = vec![0u8; inner.physical];
        let mut pages = 0u64;
        for physical in 1..=total {
            inner.read_raw(physical, &mut raw)?;
            if versions.contains(&stored_version(&raw, inner.physical - inner.logical)) {
                pages += 1;
            }
        }
        Ok(vec![PendingReencrypt {
            table: inner.name.clone(),
            versions,
            started: false,
            bytes: pages * inner.physical as u64,
        }])
    }

    /// Starts re-encrypting, in the background, every page sealed under an older data
    /// key version, committing every 256 pages (each commit is a [`Tablespace::sync`],
    /// so run it between transactions or accept that it commits theirs), at the
    /// options' rate; then checkpoints and retires the old versions. Stopping halfway is
    /// safe: the next pass continues with the pages still under old versions. Closing the
    /// tablespace cancels the job.
    pub fn reencrypt(&self, options: ReencryptOptions) -> ReencryptJob {
        let control: Arc<JobControl> = Arc::default();
        let inner = self.inner.clone();
        inner.jobs.lock().push(Arc::downgrade(&control));
        Job::start("tde-reencrypt", control, move |control| {
            let Some(_one) = inner.reencrypting.try_lock() else {
                return Err(Error::InvalidArgument(
                    "a re-encryption pass is already running on this tablespace".into(),
                ));
            };
            // A handle that does not close the tablespace when dropped.
            let ts = Tablespace {
                inner: inner.clone(),
                closed: true,
            };
            ts.reencrypt_pass(options, control)
        })
    }

    fn reencrypt_pass(&self, options: ReencryptOptions, control: &JobControl) -> Result<ReencryptReport> {
        let inner = &*self.inner;
        let mut report = ReencryptReport::default();
        let (old, current): (Vec<u32>, u32) = {
            let durable = inner.durable.lock();
            let envelope = &durable.header.meta.envelope;
            (crate::keys::old_versions(envelope), envelope.current)
        };
        if old.is_empty() || !inner.encrypted {
            return Ok(report);
        }
        control.update(|p| p.table = Some(inner.name.clone()));
        self.sync()?;
        let total = inner.durable.lock().disk_pages.saturating_sub(1);
        let page_bytes = inner.physical as u64;
        control.update(|p| p.total_bytes = total * page_bytes);
        let started = Instant::now();
        let mut raw = vec![0u8; inner.physical];
        let mut batch = 0;
        for physical in 1..=total {
            control.check()?;
            inner.read_raw(physical, &mut raw)?;
            if stored_version(&raw, inner.physical - inner.logical) != current {
                drop(self.write(physical - 1)?);
                report.resealed_values += 1;
                batch += 1;
            }
            if batch == BATCH_PAGES || (physical == total && batch > 0) {
                self.sync()?;
                batch = 0;
                control.update(|p| p.done_bytes = physical * page_bytes);
                if let Some(rate) = options.rate {
                    let due = Duration::from_secs_f64(
                        (report.resealed_values * page_bytes) as f64 / rate.max(1) as f64,
                    );
                    control.sleep(due.saturating_sub(started.elapsed()))?;
                }
            }
        }
        report.rewritten_bytes = report.resealed_values * page_bytes;
        self.sync()?;
        control.update(|p| p.done_bytes = total * page_bytes);
        // Every page now names the current version, in the journal or the file; after a
        // checkpoint, in the file.
        self.checkpoint()?;
        for physical in 1..=total {
            inner.read_raw(physical, &mut raw)?;
            let version = stored_version(&raw, inner.physical - inner.logical);
            if version != current {
                return Err(Error::Corrupt {
                    what: "tablespace",
                    path: inner.io.describe(PageFile::Data).into(),
                    detail: format!(
                        "page {} still names data key version {version} after re-encryption",
                        physical - 1
                    ),
                });
            }
        }
        let (cmk, retired) = {
            let _one = inner.sync_lock.lock();
            let mut durable = inner.durable.lock();
            let envelope = &mut durable.header.meta.envelope;
            let retired = crate::keys::retire(envelope, &old, SystemClock.now());
            let cmk = envelope.cmk.clone();
            durable.header_changed = true;
            (cmk, retired)
        };
        self.checkpoint()?;
        let mut sealing = inner.sealing.write();
        for version in retired {
            sealing.forget(version);
            inner.keys.audit().append(&AuditEvent {
                op: "retire-data-key",
                key: &cmk,
                table: &inner.name,
                reason: Reason::Rotate,
                error: None,
            })?;
            let retired = RetiredKey {
                table: inner.name.clone(),
                version,
            };
            control.update(|p| p.retired.push(retired.clone()));
            report.retired.push(retired);
        }
        Ok(report)
    }

    /// Rewraps the tablespace's data keys under `to_key`, or under the current version of
    /// their own master key if `None` (after the KMS rotated it): the KMS re-encrypts each
    /// wrapped key; no page changes. Durable with the next [`Tablespace::sync`]; sync
    /// before disabling the old master key.
    ///
    /// # Errors
    /// [`Error::Kms`] if a master key refuses (nothing changes).
    pub fn rewrap(&self, to_key: Option<&str>) -> Result<RewrapReport> {
        self.rewrap_to(None, to_key, None)
    }

    /// Moves the tablespace to master key `to_key` of the KMS `to`: every data key is
    /// unwrapped by the current KMS and wrapped by `to`, in memory; the header records
    /// `to_kms_uri` (default: `to`'s description) and the tablespace uses `to` from then
    /// on. No page changes. Durable with the next [`Tablespace::sync`].
    ///
    /// # Errors
    /// [`Error::Kms`] if either KMS refuses (nothing changes).
    pub fn migrate(&self, to: Arc<dyn Kms>, to_key: &str, to_kms_uri: Option<&str>) -> Result<RewrapReport> {
        let uri = to_kms_uri.map_or_else(|| to.describe(), ToOwned::to_owned);
        self.rewrap_to(Some(to), Some(to_key), Some(uri))
    }

    fn rewrap_to(
        &self,
        to: Option<Arc<dyn Kms>>,
        to_key: Option<&str>,
        uri: Option<String>,
    ) -> Result<RewrapReport> {
        let inner = &*self.inner;
        inner.check_encrypted()?;
        let _one = inner.sync_lock.lock();
        let envelope = inner.durable.lock().header.meta.envelope.clone();
        let reason = if to.is_some() {
            Reason::Migrate
        } else {
            Reason::Rotate
        };
        let (mut rewrapped, report) = inner.keys.rewrap(
            &[(envelope_name(&inner.name), envelope)],
            to.as_ref(),
            to_key,
            reason,
        )?;
        let mut durable = inner.durable.lock();
        if let Some(envelope) = rewrapped.pop() {
            durable.header.meta.envelope = envelope;
        }
        if let (Some(kms), Some(uri)) = (to, uri) {
            durable.header.meta.kms = uri;
            inner.keys.switch_kms(kms);
        }
        durable.header_changed = true;
        Ok(report)
    }

    /// One round of key maintenance: records the seal counts (with the next commit) and
    /// rotates the data key if its current version is past 3/4 of its seal limit or older
    /// than the policy allows.
    ///
    /// # Errors
    /// [`Error::Kms`]; [`Error::Poisoned`].
    pub fn maintain_keys(&self, policy: &RotationPolicy) -> Result<Vec<RotatedKey>> {
        let inner = &*self.inner;
        if !inner.encrypted || inner.revoked.read().is_some() {
            return Ok(Vec::new());
        }
        let due = {
            let durable = inner.durable.lock();
            let envelope = &durable.header.meta.envelope;
            let usage = inner.sealing.read().key(envelope.current).map(|k| k.usage());
            crate::keys::due_for_rotation(envelope, usage, policy, SystemClock.now())
        };
        if !due {
            return Ok(Vec::new());
        }
        let version = self.rotate_data_key()?;
        Ok(vec![RotatedKey {
            table: inner.name.clone(),
            version,
        }])
    }

    /// Runs [`Tablespace::maintain_keys`] every `policy` interval in a background job
    /// until the returned handle is dropped or the tablespace closes.
    pub fn auto_rotate(&self, policy: RotationPolicy) -> AutoRotation {
        let weak = Arc::downgrade(&self.inner);
        Job::periodic("tde-auto-rotate", policy.interval(), move |control| {
            let inner = weak.upgrade()?;
            if inner.closing() {
                return None;
            }
            let ts = Tablespace { inner, closed: true };
            let outcome = ts.maintain_keys(&policy);
            if let Ok(rotated) = &outcome {
                control.update(|p| p.rotated.extend(rotated.iter().cloned()));
            }
            Some(outcome)
        })
    }

    /// One round of the key-state watch: asks the KMS for the state of the master key
    /// and, if it is revoked (disabled, pending deletion, gone, not permitted), fails the
    /// tablespace closed: every later read or write returns [`Error::KeyRevoked`], its
    /// pages are dropped from the pool and its keys from memory.
    ///
    /// # Errors
    /// [`Error::Io`] if the audit trail cannot be written.
    pub fn check_keys(&self) -> Result<WatchReport> {
        let inner = &*self.inner;
        let (key, current) = {
            let durable = inner.durable.lock();
            let envelope = &durable.header.meta.envelope;
            let current = envelope
                .versions
                .iter()
                .find(|v| v.version == envelope.current)
                .cloned();
            (envelope.cmk.clone(), current)
        };
        let mut report = WatchReport {
            keys_checked: 1,
            ..WatchReport::default()
        };
        // The key's state, then (where the KMS can tell) whether this tablespace may still
        // unwrap under it: a revoked grant or a changed policy changes no key state.
        let usable = inner
            .keys
            .describe_key(&key, &inner.name, Reason::Watch)
            .and_then(|meta| match &current {
                Some(version) if meta.state == KeyState::Enabled => inner
                    .keys
                    .check_unwrap(EnvelopeId::Store, version, &inner.name, Reason::Watch)
                    .map(|()| meta),
                _ => Ok(meta),
            });
        let why = match usable {
            Ok(meta) if meta.state == KeyState::Enabled => return Ok(report),
            Ok(meta) => format!("the key is {}", meta.state),
            Err(e) if crate::keys::revoking(&e) => e.to_string(),
            Err(e @ Error::Io { .. }) => return Err(e),
            Err(e) => {
                report.unreachable.push((key, e.to_string()));
                return Ok(report);
            }
        };
        if inner.revoked.read().is_some() {
            return Ok(report);
        }
        // Stop new operations, then drop what the pool holds in plaintext and the keys.
        *inner.revoked.write() = Some((key.clone(), why.clone()));
        inner.is_revoked.store(true, std::sync::atomic::Ordering::Release);
        inner
            .poisoned
            .lock()
            .get_or_insert_with(|| format!("master key {key} revoked: {why}"));
        inner.pool.inner.drop_frames(inner.owner);
        inner.sealing.write().forget_all();
        report.revoked.push((inner.name.clone(), key, why));
        Ok(report)
    }
}

impl Tablespace {
    /// Writes a consistent copy of the tablespace file to `out`: syncs and checkpoints,
    /// then copies the file while no checkpoint can change it. Returns the bytes written.
    /// The copy is ciphertext, and opens alone with the KMS.
    ///
    /// # Errors
    /// As [`Tablespace::checkpoint`]; [`Error::Io`] if `out` fails.
    pub fn export(&self, out: &mut dyn std::io::Write) -> Result<u64> {
        let inner = &*self.inner;
        let _one = inner.sync_lock.lock();
        inner.sync_locked(true)?;
        let len = inner.durable.lock().disk_pages * inner.physical as u64;
        let mut buf = vec![0u8; inner.physical * 64];
        let mut at = 0;
        while at < len {
            let n = (len - at).min(buf.len() as u64) as usize;
            inner
                .io
                .read_exact_at(PageFile::Data, at, &mut buf[..n])
                .map_err(|e| io_error(&*inner.io, PageFile::Data, "reading", e))?;
            out.write_all(&buf[..n])
                .map_err(|e| Error::io("writing the copy of a tablespace", e))?;
            at += n as u64;
        }
        Ok(len)
    }
}

impl Inner {
    fn check_encrypted(&self) -> Result<()> {
        if self.encrypted {
            Ok(())
        } else {
            Err(Error::InvalidArgument(format!(
                "tablespace {:?} is not encrypted",
                self.name
            )))
        }
    }

    /// The stored bytes of `physical` (newest committed copy: journal, else file), not
    /// opened.
    fn read_raw(&self, physical: u64, buf: &mut [u8]) -> Result<()> {
        let durable = self.durable.lock();
        match durable.journal.find(physical) {
            Some(offset) => durable.journal.read(&*self.io, offset, buf),
            None => self
                .io
                .read_exact_at(PageFile::Data, physical * self.physical as u64, buf),
        }
        .map_err(|e| io_error(&*self.io, PageFile::Data, "reading", e))
    }
}
