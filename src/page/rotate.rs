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
use super::{PageFile, Tablespace, context, header_key, io_error, page_key};
use crate::clock::{Clock, SystemClock};
use crate::error::{Error, Result};
use crate::keyring::{DkVersion, RetiredVersion, RetryPolicy};
use crate::kms::{DataKeySpec, Kms};
use crate::secret::WrappedKey;

/// Wraps one data key again: (wrapped key, its encryption context, master key).
type Wrap<'a> = dyn Fn(&[u8], &crate::kms::EncryptionContext, &str) -> Result<Vec<u8>> + 'a;

/// Pages rewritten between two commits.
const BATCH_PAGES: u64 = 256;

/// What a re-encryption of a tablespace did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PageReencrypt {
    /// Pages sealed again under the current version.
    pub rewritten: u64,
    /// Versions retired.
    pub retired: Vec<u32>,
}

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
        let version = envelope.next_version();
        let kms = inner.kms.read().clone();
        let generated = RetryPolicy::default().run(|| {
            kms.generate_data_key(
                &envelope.cmk,
                DataKeySpec::from(envelope.suite),
                &context(&inner.id, version),
            )
        })?;
        let pages = page_key(envelope.suite, &generated.plaintext, &inner.id, version)?;
        let header = header_key(envelope.suite, &generated.plaintext, &inner.id, version)?;
        inner
            .meta
            .lock()
            .add(&crate::hex::encode(&inner.id), version, &generated.plaintext);
        let mut durable = inner.durable.lock();
        let meta_envelope = &mut durable.header.meta.envelope;
        meta_envelope.versions.push(DkVersion {
            version,
            edk: generated.wrapped,
            cmk_id: generated.key_id,
            created_at: SystemClock.now(),
            seals: 0,
        });
        meta_envelope.current = version;
        durable.header_changed = true;
        inner.sealing.write().make_current(version, Arc::new(pages));
        *inner.header_key.write() = Arc::new(header);
        Ok(version)
    }

    /// Re-encrypts every page sealed under an older data key version, committing every
    /// 256 pages (each commit is a [`Tablespace::sync`], so call it between transactions),
    /// at most `rate` bytes per second; then checkpoints and retires the old versions.
    /// `progress(done, total)` is called after each commit, in pages. Stopping halfway is
    /// safe: the next call continues with the pages still under old versions.
    ///
    /// # Errors
    /// As [`Tablespace::sync`] and [`Tablespace::write`].
    pub fn reencrypt(&self, rate: Option<u64>, progress: &mut dyn FnMut(u64, u64)) -> Result<PageReencrypt> {
        let inner = &*self.inner;
        let mut report = PageReencrypt::default();
        let (old, current): (Vec<u32>, u32) = {
            let durable = inner.durable.lock();
            let envelope = &durable.header.meta.envelope;
            (
                envelope
                    .versions
                    .iter()
                    .map(|v| v.version)
                    .filter(|v| *v != envelope.current)
                    .collect(),
                envelope.current,
            )
        };
        if old.is_empty() || !inner.encrypted {
            return Ok(report);
        }
        self.sync()?;
        let total = inner.durable.lock().disk_pages.saturating_sub(1);
        let started = Instant::now();
        let mut raw = vec![0u8; inner.physical];
        let mut batch = 0;
        for physical in 1..=total {
            inner.read_raw(physical, &mut raw)?;
            if stored_version(&raw) == current {
                continue;
            }
            drop(self.write(physical - 1)?);
            report.rewritten += 1;
            batch += 1;
            if batch == BATCH_PAGES || physical == total {
                self.sync()?;
                batch = 0;
                progress(physical, total);
                if let Some(rate) = rate {
                    let due = Duration::from_secs_f64(
                        (report.rewritten * inner.physical as u64) as f64 / rate.max(1) as f64,
                    );
                    std::thread::sleep(due.saturating_sub(started.elapsed()));
                }
            }
        }
        self.sync()?;
        progress(total, total);
        // Every page now names the current version, in the journal or the file; after a
        // checkpoint, in the file.
        self.checkpoint()?;
        for physical in 1..=total {
            inner.read_raw(physical, &mut raw)?;
            let version = stored_version(&raw);
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
        {
            let _one = inner.sync_lock.lock();
            let mut durable = inner.durable.lock();
            let envelope = &mut durable.header.meta.envelope;
            let now = SystemClock.now();
            let (gone, kept): (Vec<_>, Vec<_>) = envelope
                .versions
                .drain(..)
                .partition(|v| old.contains(&v.version));
            envelope.versions = kept;
            for v in gone {
                report.retired.push(v.version);
                envelope.retired.push(RetiredVersion {
                    version: v.version,
                    cmk_id: v.cmk_id,
                    created_at: v.created_at,
                    retired_at: now,
                });
            }
            durable.header_changed = true;
        }
        self.checkpoint()?;
        let mut sealing = inner.sealing.write();
        for version in &report.retired {
            sealing.forget(*version);
        }
        Ok(report)
    }
}

impl Tablespace {
    /// Rewraps the tablespace's data keys under `to_key`, or under the current version of
    /// their own master key if `None` (after the KMS rotated it): the KMS re-encrypts each
    /// wrapped key; no page changes. Durable with the next [`Tablespace::sync`]; sync
    /// before disabling the old master key.
    ///
    /// # Errors
    /// [`Error::Kms`] if a master key refuses (nothing changes).
    pub fn rewrap(&self, to_key: Option<&str>) -> Result<()> {
        let kms = self.inner.kms.read().clone();
        self.rewrap_with(
            to_key,
            &|edk, context, dest| {
                Ok(RetryPolicy::default().run(|| kms.re_encrypt(edk, context, dest, context))?)
            },
            None,
        )
    }

    /// Moves the tablespace to master key `to_key` of the KMS `to`: every data key is
    /// unwrapped by the current KMS and wrapped by `to`, in memory; the header records
    /// `to_kms_uri` (default: `to`'s description) and the tablespace uses `to` from then
    /// on. No page changes. Durable with the next [`Tablespace::sync`].
    ///
    /// # Errors
    /// [`Error::Kms`] if either KMS refuses (nothing changes).
    pub fn migrate(&self, to: Arc<dyn Kms>, to_key: &str, to_kms_uri: Option<&str>) -> Result<()> {
        let from = self.inner.kms.read().clone();
        let uri = to_kms_uri.map_or_else(|| to.describe(), ToOwned::to_owned);
        self.rewrap_with(
            Some(to_key),
            &|edk, context, dest| {
                let plain = RetryPolicy::default().run(|| from.decrypt(edk, context))?;
                Ok(RetryPolicy::default().run(|| to.encrypt(dest, plain.expose(), context))?)
            },
            Some((to.clone(), uri)),
        )
    }

    /// Rewraps every version with `wrap(edk, context, master key)`; with `moved_to`, the
    /// tablespace switches to that KMS (and records its URI) in the same step.
    fn rewrap_with(
        &self,
        to_key: Option<&str>,
        wrap: &Wrap<'_>,
        moved_to: Option<(Arc<dyn Kms>, String)>,
    ) -> Result<()> {
        let inner = &*self.inner;
        inner.check_encrypted()?;
        let _one = inner.sync_lock.lock();
        let mut envelope = inner.durable.lock().header.meta.envelope.clone();
        let dest = to_key.unwrap_or(&envelope.cmk).to_owned();
        for v in &mut envelope.versions {
            let wrapped = wrap(v.edk.as_bytes(), &context(&inner.id, v.version), &dest)?;
            v.edk = WrappedKey::from_bytes(wrapped);
        }
        let target = moved_to
            .as_ref()
            .map_or_else(|| inner.kms.read().clone(), |(kms, _)| kms.clone());
        let key_id = target.describe_key(&dest).map(|d| d.key_id);
        for v in &mut envelope.versions {
            if let Ok(id) = &key_id {
                v.cmk_id.clone_from(id);
            }
        }
        envelope.cmk = dest;
        let mut durable = inner.durable.lock();
        durable.header.meta.envelope = envelope;
        if let Some((kms, uri)) = moved_to {
            durable.header.meta.kms = uri;
            *inner.kms.write() = kms;
        }
        durable.header_changed = true;
        Ok(())
    }

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

impl super::Inner {
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
