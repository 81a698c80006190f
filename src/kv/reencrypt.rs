//! Re-encryption: after a data key rotation, rewrite the data still under older versions
//! and then retire those versions (destroy their wrapped keys).
//!
//! A pass over one table:
//! 1. plan: the versions older than the current one are to be retired. The table's column
//!    family is flushed, and the highest live file number becomes the pass's boundary.
//!    Both are written to the keyring before any work, so a pass survives a crash or a
//!    restart and resumes where it stopped;
//! 2. rewrite: every live SST numbered up to the boundary is compacted, a key range at a
//!    time, at the requested rate. Compaction writes new files under the current version,
//!    and its filter opens each sealed value under its old version and seals it again
//!    under the current one;
//! 3. wait: until no snapshot or iterator opened before the rewrite finished is alive;
//! 4. retire: one keyring write moves the versions to `retired` (their wrapped keys are
//!    gone), then their keys are dropped from memory.
//!
//! Invariant: a version is retired only when no file can hold data under it. Every write
//! since its rotation seals under a newer version (writers hold the table's key guard until
//! RocksDB has the write, and rotation takes it), so data under it lies in files numbered
//! up to the boundary, which step 2 replaces. A value compaction could not open is
//! counted, keeps its version, and stops the retirement with an error.
//!
//! The store-level key (WAL, MANIFEST, OPTIONS, LOG, ...) is rotated by flushing every
//! table (which retires the WAL) and rewriting the files RocksDB reads only at open; the
//! MANIFEST, CURRENT and LOG are replaced when the store next opens, after which a pass
//! retires the old store-level version.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::files::file_key_of;
use super::rotate::envelope_mut;
use super::{STORE_LABEL, Store, StoreInner, cf_name, engine};
use crate::audit::{AuditEvent, Reason};
use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::keyring::{Envelope, ReencryptState};
use crate::keys::{
    EnvelopeId, Job, JobControl, PendingReencrypt, ReencryptJob, ReencryptOptions, ReencryptReport,
    RetiredKey, old_versions,
};

/// Bytes of old files compacted per step (the unit of progress and of rate limiting).
const STEP_BYTES: u64 = 64 << 20;

/// Lets RocksDB run `threads` compactions at once for the duration of a pass.
struct CompactionThreads<'a>(&'a StoreInner);

impl<'a> CompactionThreads<'a> {
    fn raise(inner: &'a StoreInner, threads: usize) -> Result<CompactionThreads<'a>> {
        // One flush slot plus `threads` compaction slots.
        let jobs = (threads + 1).max(super::BACKGROUND_JOBS as usize).to_string();
        crate::ffi::rocksdb::set_db_options(&inner.db, &[("max_background_jobs", &jobs)])?;
        Ok(CompactionThreads(inner))
    }
}

impl Drop for CompactionThreads<'_> {
    fn drop(&mut self) {
        let jobs = super::BACKGROUND_JOBS.to_string();
        let _ = crate::ffi::rocksdb::set_db_options(&self.0.db, &[("max_background_jobs", &jobs)]);
    }
}

fn file_number(name: &str) -> Option<u64> {
    name.trim_start_matches('/').strip_suffix(".sst")?.parse().ok()
}

/// A key range to compact: smallest and largest key (inclusive), `None` for open ends.
type KeyRange = (Option<Vec<u8>>, Option<Vec<u8>>);

/// Live SST files of column family `cf`: (number, size, smallest key, largest key).
type LiveSst = (u64, u64, Option<Vec<u8>>, Option<Vec<u8>>);

fn live_ssts(inner: &StoreInner, cf: Option<&str>) -> Result<Vec<LiveSst>> {
    Ok(inner
        .db
        .live_files()
        .map_err(engine)?
        .into_iter()
        .filter(|f| cf.is_none_or(|cf| f.column_family_name == cf))
        .filter_map(|f| Some((file_number(&f.name)?, f.size as u64, f.start_key, f.end_key)))
        .collect())
}

struct Pass<'a> {
    inner: &'a StoreInner,
    options: ReencryptOptions,
    control: &'a JobControl,
    started: Instant,
    report: ReencryptReport,
}

impl Store {
    /// What awaits re-encryption: for each table (and the store-level key) with versions
    /// older than the current one, those versions and the bytes of files under them.
    ///
    /// # Errors
    /// [`Error::Engine`].
    pub fn reencrypt_status(&self) -> Result<Vec<PendingReencrypt>> {
        let inner = &self.inner;
        let data = inner.keyring.lock().data().clone();
        let files = std::fs::read_dir(&inner.path)
            .map_err(|e| Error::io(format!("reading {}", inner.path.display()), e))?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let size = e.metadata().ok()?.len();
                Some((file_key_of(&e.path())?, size))
            })
            .collect::<Vec<_>>();
        let envelopes = std::iter::once((STORE_LABEL, &data.store_key))
            .chain(data.tables.iter().map(|t| (t.name.as_str(), &t.envelope)));
        Ok(envelopes
            .filter_map(|(name, envelope)| {
                let versions = old_versions(envelope);
                if versions.is_empty() {
                    return None;
                }
                let bytes = files
                    .iter()
                    .filter(|((t, v), _)| *t == envelope.table_id && versions.contains(v))
                    .map(|(_, size)| size)
                    .sum();
                Some(PendingReencrypt {
                    table: name.to_owned(),
                    versions,
                    started: envelope.reencrypt.is_some(),
                    bytes,
                })
            })
            .collect())
    }

    /// Starts a re-encryption pass in the background: every table's data under an older
    /// data key version is rewritten under the current one, and the old versions are
    /// retired. Reads and writes continue meanwhile. Resumes a pass that a crash, a
    /// restart or [`ReencryptJob::cancel`] interrupted.
    pub fn reencrypt(&self, options: ReencryptOptions) -> ReencryptJob {
        let inner = self.inner.clone();
        Job::spawn("tde-reencrypt", move |control| run(&inner, options, control))
    }
}

fn run(inner: &StoreInner, options: ReencryptOptions, control: &JobControl) -> Result<ReencryptReport> {
    let Some(_one) = inner.reencrypting.try_lock() else {
        return Err(Error::InvalidArgument(
            "a re-encryption pass is already running on this store".into(),
        ));
    };
    let mut pass = Pass {
        inner,
        options,
        control,
        started: Instant::now(),
        report: ReencryptReport::default(),
    };
    let data = inner.keyring.lock().data().clone();
    let mut total = 0;
    for t in &data.tables {
        let boundary = t.envelope.reencrypt.as_ref().map_or(u64::MAX, |r| r.boundary);
        if !old_versions(&t.envelope).is_empty() {
            total += live_ssts(inner, Some(&cf_name(t.envelope.table_id)))?
                .iter()
                .filter(|f| f.0 <= boundary)
                .map(|f| f.1)
                .sum::<u64>();
        }
    }
    control.update(|p| p.total_bytes = total);
    for t in &data.tables {
        if !old_versions(&t.envelope).is_empty() {
            pass.table(&t.name, t.envelope.table_id)?;
        }
    }
    if !old_versions(&data.store_key).is_empty() {
        pass.store_key()?;
    }
    Ok(pass.report)
}

impl Pass<'_> {
    fn check_cancel(&self) -> Result<()> {
        self.control.check()
    }

    fn sleep(&self, d: Duration) -> Result<()> {
        self.control.sleep(d)
    }

    /// Step 1: the persisted plan for envelope `id`, made now if there is none.
    fn plan(&self, id: EnvelopeId, flush: impl FnOnce() -> Result<()>) -> Result<Option<ReencryptState>> {
        let envelope: Option<Envelope> = {
            let mut data = self.inner.keyring.lock().data().clone();
            envelope_mut(&mut data, id).map(|e| e.clone())
        };
        let Some(envelope) = envelope else {
            return Ok(None);
        };
        if let Some(state) = envelope.reencrypt {
            return Ok(Some(state));
        }
        let retire = old_versions(&envelope);
        if retire.is_empty() {
            return Ok(None);
        }
        // Data under `retire` was written before their rotation, so it is in files once
        // this flush returns; every later file holds newer versions only.
        flush()?;
        let boundary = live_ssts(self.inner, None)?
            .iter()
            .map(|f| f.0)
            .max()
            .unwrap_or(0);
        let state = ReencryptState { retire, boundary };
        self.inner.keyring.lock().update(|data| {
            if let Some(envelope) = envelope_mut(data, id) {
                envelope.reencrypt = Some(state.clone());
            }
            Ok(())
        })?;
        Ok(Some(state))
    }

    fn table(&mut self, name: &str, id: u32) -> Result<()> {
        self.check_cancel()?;
        self.control.update(|p| p.table = Some(name.to_owned()));
        let inner = self.inner;
        let cf = cf_name(id);
        let flush = || {
            let handle = inner
                .db
                .cf_handle(&cf)
                .ok_or_else(|| Error::NoSuchTable(name.to_owned()))?;
            inner.db.flush_cf(&handle).map_err(engine)
        };
        let Some(plan) = self.plan(EnvelopeId::Table(id), flush)? else {
            return Ok(());
        };
        let Some(state) = inner.tables.read().get(name).cloned() else {
            return Ok(());
        };
        let failures_before = state.reseal_failures.load(Ordering::SeqCst);
        let resealed_before = state.resealed.load(Ordering::SeqCst);

        // Step 2: compact the old files away, one key range at a time.
        let _threads = CompactionThreads::raise(inner, self.options.threads)?;
        let mut compact = rocksdb::CompactOptions::default();
        compact.set_exclusive_manual_compaction(false);
        compact.set_bottommost_level_compaction(rocksdb::BottommostLevelCompaction::Force);
        let mut stalled = 0;
        loop {
            self.check_cancel()?;
            let mut stale: Vec<LiveSst> = live_ssts(inner, Some(&cf))?
                .into_iter()
                .filter(|f| f.0 <= plan.boundary)
                .collect();
            if stale.is_empty() {
                break;
            }
            stale.sort_by(|a, b| a.2.cmp(&b.2));
            // Up to `threads` groups of consecutive files, compacted at once: the ranges
            // of a level's files are disjoint, so their compactions do not conflict.
            let step_bytes = self
                .options
                .rate
                .map_or(STEP_BYTES, |r| r.clamp(1 << 20, STEP_BYTES));
            let per_group = (step_bytes / self.options.threads as u64).max(1);
            let mut groups: Vec<KeyRange> = Vec::new();
            let mut files = stale.iter().peekable();
            while groups.len() < self.options.threads && files.peek().is_some() {
                let (mut start, mut end, mut bytes) = (None::<Vec<u8>>, None::<Vec<u8>>, 0);
                while let Some(f) = files.next_if(|_| bytes < per_group) {
                    bytes += f.1;
                    start = start.into_iter().chain(f.2.clone()).min();
                    end = end.into_iter().chain(f.3.clone()).max();
                }
                groups.push((start, end));
            }
            let handle = inner
                .db
                .cf_handle(&cf)
                .ok_or_else(|| Error::NoSuchTable(name.to_owned()))?;
            std::thread::scope(|scope| {
                for (start, end) in &groups {
                    let (handle, compact) = (&handle, &compact);
                    scope.spawn(move || {
                        inner
                            .db
                            .compact_range_cf_opt(handle, start.as_deref(), end.as_deref(), compact);
                    });
                }
            });
            drop(handle);
            let live: Vec<u64> = live_ssts(inner, Some(&cf))?.iter().map(|f| f.0).collect();
            let gone: u64 = stale.iter().filter(|f| !live.contains(&f.0)).map(|f| f.1).sum();
            if gone == 0 {
                stalled += 1;
                if stalled >= 3 {
                    return Err(Error::engine(
                        crate::EngineErrorKind::Other,
                        format!(
                            "re-encryption of table {name:?} makes no progress: compaction leaves its old files in place"
                        ),
                    ));
                }
            } else {
                stalled = 0;
            }
            self.report.rewritten_bytes += gone;
            let mut done = 0;
            self.control.update(|p| {
                p.done_bytes += gone;
                done = p.done_bytes;
            });
            if let Some(rate) = self.options.rate {
                let due = Duration::from_secs_f64(done as f64 / rate as f64);
                self.sleep(due.saturating_sub(self.started.elapsed()))?;
            }
        }
        self.report.resealed_values += state.resealed.load(Ordering::SeqCst) - resealed_before;
        let failures = state.reseal_failures.load(Ordering::SeqCst) - failures_before;
        if failures > 0 {
            return Err(Error::Corrupt {
                what: "table",
                path: inner.path.clone(),
                detail: format!(
                    "values of table {name:?} could not be opened while re-encrypting \
                     ({failures} failed attempts); its old data key versions are kept (run verify)"
                ),
            });
        }

        // Step 3: readers that might still need the old versions.
        self.wait_for_views()?;

        // Step 4: retire.
        self.retire(name, EnvelopeId::Table(id), &plan.retire)?;
        for version in &plan.retire {
            state.forget(*version);
            inner.files.remove_key(id, *version);
        }
        Ok(())
    }

    fn wait_for_views(&self) -> Result<()> {
        let before = self.inner.views.next_serial();
        loop {
            let n = self.inner.views.older_than(before);
            if n == 0 {
                self.control.update(|p| p.waiting = None);
                return Ok(());
            }
            self.control.update(|p| {
                p.waiting = Some(format!(
                    "{n} snapshots or iterators opened before the rewrite are still open"
                ));
            });
            self.sleep(Duration::from_millis(50))?;
        }
    }

    fn retire(&mut self, name: &str, id: EnvelopeId, versions: &[u32]) -> Result<()> {
        let now = self.inner.clock.now();
        let mut keyring = self.inner.keyring.lock();
        let retired = keyring.update(|data| {
            Ok(envelope_mut(data, id)
                .map(|envelope| (envelope.cmk.clone(), crate::keys::retire(envelope, versions, now))))
        })?;
        drop(keyring);
        let Some((cmk, retired)) = retired else {
            return Ok(());
        };
        for version in retired {
            self.inner.keys.audit().append(&AuditEvent {
                op: "retire-data-key",
                key: &cmk,
                table: name,
                reason: Reason::Rotate,
                error: None,
            })?;
            let retired = RetiredKey {
                table: name.to_owned(),
                version,
            };
            self.control.update(|p| p.retired.push(retired.clone()));
            self.report.retired.push(retired);
        }
        Ok(())
    }

    /// The store-level key: flush every table (the WAL rolls over), rewrite the files
    /// RocksDB reads only at open, and retire once no file names an old version.
    fn store_key(&mut self) -> Result<()> {
        self.check_cancel()?;
        self.control.update(|p| p.table = Some(STORE_LABEL.to_owned()));
        let inner = self.inner;
        // The store-level key needs no file boundary: every file's header names its version.
        let Some(plan) = self.plan(EnvelopeId::Store, || Ok(()))? else {
            return Ok(());
        };
        // Every table's memtable to SST files, so the WAL under the old version retires.
        inner.flush_all()?;
        let mut remaining = Vec::new();
        let entries = std::fs::read_dir(&inner.path)
            .map_err(|e| Error::io(format!("reading {}", inner.path.display()), e))?;
        for entry in entries {
            let entry = entry.map_err(|e| Error::io(format!("reading {}", inner.path.display()), e))?;
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some((table, version)) = file_key_of(&path) else {
                continue;
            };
            if EnvelopeId::of(table) != EnvelopeId::Store || !plan.retire.contains(&version) {
                continue;
            }
            let read_only_at_open =
                name == "IDENTITY" || name.starts_with("OPTIONS-") || name.starts_with("LOG.old.");
            if read_only_at_open {
                inner.files.rewrite_store_file(&path)?;
            } else if path.exists() {
                remaining.push(name);
            }
        }
        if !remaining.is_empty() {
            remaining.sort();
            self.report.pending_reopen = remaining;
            return Ok(());
        }
        self.wait_for_views()?;
        self.retire(STORE_LABEL, EnvelopeId::Store, &plan.retire)?;
        for version in &plan.retire {
            inner.files.remove_key(EnvelopeId::Store.table_id(), *version);
        }
        Ok(())
    }
}
