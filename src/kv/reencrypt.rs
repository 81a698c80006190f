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

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::files::file_key_of;
use super::{Store, StoreInner, cf_name, engine};
use crate::audit::{AuditEvent, Reason};
use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::keyring::{Envelope, ReencryptState, RetiredVersion, STORE_TABLE_ID};

/// Bytes of old files compacted per step (the unit of progress and of rate limiting).
const STEP_BYTES: u64 = 64 << 20;

/// How to run a re-encryption pass.
#[derive(Debug, Clone, Copy)]
pub struct ReencryptOptions {
    rate: Option<u64>,
    threads: usize,
}

impl Default for ReencryptOptions {
    /// As fast as compaction goes, on up to 4 threads (the machine's cores).
    fn default() -> ReencryptOptions {
        ReencryptOptions {
            rate: None,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get().min(4)),
        }
    }
}

impl ReencryptOptions {
    /// Compactions a rewrite step runs at once. Re-sealing values costs
    /// CPU (an AEAD open and seal per value) that a plain compaction does not spend, so
    /// more than one thread keeps the pass near compaction speed. Default: the machine's
    /// cores, at most 4.
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

    /// Rewrites at most `bytes_per_sec` of old files per second (on average). Default:
    /// as fast as compaction goes.
    #[must_use]
    pub fn rate_limit(mut self, bytes_per_sec: u64) -> ReencryptOptions {
        self.rate = Some(bytes_per_sec.max(1));
        self
    }
}

/// A data key version retired by a pass.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RetiredKey {
    /// The table, or `(store)`.
    pub table: String,
    /// The retired version.
    pub version: u32,
}

/// Where a pass is.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ReencryptProgress {
    /// Bytes of files under old versions when the pass started.
    pub total_bytes: u64,
    /// Of those, bytes rewritten so far.
    pub done_bytes: u64,
    /// The table being worked on.
    pub table: Option<String>,
    /// Why the pass is waiting, if it is.
    pub waiting: Option<String>,
    /// Versions retired so far.
    pub retired: Vec<RetiredKey>,
    /// Whether the pass has ended (successfully or not).
    pub finished: bool,
}

/// What a pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ReencryptReport {
    /// Versions retired.
    pub retired: Vec<RetiredKey>,
    /// Bytes of old files rewritten.
    pub rewritten_bytes: u64,
    /// Values sealed again under a newer version.
    pub resealed_values: u64,
    /// Store-level files still under an old version; they are replaced when the store
    /// next opens, after which another pass retires that version.
    pub pending_reopen: Vec<String>,
}

/// What still awaits re-encryption.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PendingReencrypt {
    /// The table, or `(store)`.
    pub table: String,
    /// Versions older than the current one, not yet retired.
    pub versions: Vec<u32>,
    /// Whether a pass has started on them (and will resume).
    pub started: bool,
    /// Bytes of live files under those versions.
    pub bytes: u64,
}

/// A pass running in the background; cancelled (and joined) when dropped. A cancelled or
/// crashed pass resumes where it stopped at the next [`Store::reencrypt`].
pub struct ReencryptJob {
    progress: Arc<Mutex<ReencryptProgress>>,
    cancel: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<ReencryptReport>>>,
}

impl std::fmt::Debug for ReencryptJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReencryptJob")
            .field("progress", &*self.progress.lock())
            .finish_non_exhaustive()
    }
}

impl ReencryptJob {
    /// Where the pass is.
    pub fn progress(&self) -> ReencryptProgress {
        self.progress.lock().clone()
    }

    /// Whether the pass has ended.
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Waits for the pass to end.
    ///
    /// # Errors
    /// The pass's error; [`Error::Cancelled`] if it was cancelled.
    pub fn wait(mut self) -> Result<ReencryptReport> {
        self.join()
    }

    /// Stops the pass at its next step and waits for it; it resumes from there next time.
    ///
    /// # Errors
    /// As [`ReencryptJob::wait`].
    pub fn cancel(mut self) -> Result<ReencryptReport> {
        self.cancel.store(true, Ordering::SeqCst);
        self.join()
    }

    fn join(&mut self) -> Result<ReencryptReport> {
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(Error::InvalidArgument("the re-encryption thread panicked".into())),
            None => Err(Error::Cancelled),
        }
    }
}

impl Drop for ReencryptJob {
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

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
    progress: &'a Mutex<ReencryptProgress>,
    cancel: &'a AtomicBool,
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
        let envelopes = std::iter::once(("(store)", &data.store_key))
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
        let progress = Arc::new(Mutex::new(ReencryptProgress::default()));
        let cancel = Arc::new(AtomicBool::new(false));
        let inner = self.inner.clone();
        let thread = {
            let (progress, cancel) = (progress.clone(), cancel.clone());
            std::thread::Builder::new()
                .name("tde-reencrypt".into())
                .spawn(move || {
                    let result = run(&inner, options, &progress, &cancel);
                    progress.lock().finished = true;
                    result
                })
                .ok()
        };
        if thread.is_none() {
            progress.lock().finished = true;
        }
        ReencryptJob {
            progress,
            cancel,
            thread,
        }
    }
}

fn old_versions(envelope: &Envelope) -> Vec<u32> {
    envelope
        .versions
        .iter()
        .map(|v| v.version)
        .filter(|v| *v != envelope.current)
        .collect()
}

fn run(
    inner: &StoreInner,
    options: ReencryptOptions,
    progress: &Mutex<ReencryptProgress>,
    cancel: &AtomicBool,
) -> Result<ReencryptReport> {
    let Some(_one) = inner.reencrypting.try_lock() else {
        return Err(Error::InvalidArgument(
            "a re-encryption pass is already running on this store".into(),
        ));
    };
    let mut pass = Pass {
        inner,
        options,
        progress,
        cancel,
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
    progress.lock().total_bytes = total;
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
        if self.cancel.load(Ordering::SeqCst) {
            Err(Error::Cancelled)
        } else {
            Ok(())
        }
    }

    fn sleep(&self, d: Duration) -> Result<()> {
        let end = Instant::now() + d;
        while Instant::now() < end {
            self.check_cancel()?;
            std::thread::sleep((end - Instant::now()).min(Duration::from_millis(20)));
        }
        Ok(())
    }

    /// Step 1: the persisted plan for envelope `id`, made now if there is none.
    fn plan(&self, id: u32, flush: impl FnOnce() -> Result<()>) -> Result<Option<ReencryptState>> {
        let find = |data: &crate::keyring::KeyringData| -> Option<Envelope> {
            if id == STORE_TABLE_ID {
                Some(data.store_key.clone())
            } else {
                data.tables
                    .iter()
                    .find(|t| t.envelope.table_id == id)
                    .map(|t| t.envelope.clone())
            }
        };
        let Some(envelope) = find(self.inner.keyring.lock().data()) else {
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
            if id == STORE_TABLE_ID {
                data.store_key.reencrypt = Some(state.clone());
            } else if let Some(t) = data.tables.iter_mut().find(|t| t.envelope.table_id == id) {
                t.envelope.reencrypt = Some(state.clone());
            }
            Ok(())
        })?;
        Ok(Some(state))
    }

    fn table(&mut self, name: &str, id: u32) -> Result<()> {
        self.check_cancel()?;
        self.progress.lock().table = Some(name.to_owned());
        let inner = self.inner;
        let cf = cf_name(id);
        let flush = || {
            let handle = inner
                .db
                .cf_handle(&cf)
                .ok_or_else(|| Error::NoSuchTable(name.to_owned()))?;
            inner.db.flush_cf(&handle).map_err(engine)
        };
        let Some(plan) = self.plan(id, flush)? else {
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
            let done = {
                let mut p = self.progress.lock();
                p.done_bytes += gone;
                p.done_bytes
            };
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
        self.retire(name, id, &plan.retire)?;
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
                self.progress.lock().waiting = None;
                return Ok(());
            }
            self.progress.lock().waiting = Some(format!(
                "{n} snapshots or iterators opened before the rewrite are still open"
            ));
            self.sleep(Duration::from_millis(50))?;
        }
    }

    fn retire(&mut self, name: &str, id: u32, versions: &[u32]) -> Result<()> {
        let now = self.inner.clock.now();
        let mut keyring = self.inner.keyring.lock();
        let cmk = keyring.update(|data| {
            let envelope = if id == STORE_TABLE_ID {
                &mut data.store_key
            } else {
                match data.tables.iter_mut().find(|t| t.envelope.table_id == id) {
                    Some(t) => &mut t.envelope,
                    None => return Ok(None),
                }
            };
            let (gone, kept): (Vec<_>, Vec<_>) = envelope
                .versions
                .drain(..)
                .partition(|v| versions.contains(&v.version) && v.version != envelope.current);
            envelope.versions = kept;
            envelope.retired.extend(gone.into_iter().map(|v| RetiredVersion {
                version: v.version,
                cmk_id: v.cmk_id,
                created_at: v.created_at,
                retired_at: now,
            }));
            envelope.reencrypt = None;
            Ok(Some(envelope.cmk.clone()))
        })?;
        drop(keyring);
        let Some(cmk) = cmk else {
            return Ok(());
        };
        for version in versions {
            self.inner.audit.append(&AuditEvent {
                op: "retire-data-key",
                key: &cmk,
                table: name,
                reason: Reason::Rotate,
                error: None,
            })?;
            let retired = RetiredKey {
                table: name.to_owned(),
                version: *version,
            };
            self.progress.lock().retired.push(retired.clone());
            self.report.retired.push(retired);
        }
        Ok(())
    }

    /// The store-level key: flush every table (the WAL rolls over), rewrite the files
    /// RocksDB reads only at open, and retire once no file names an old version.
    fn store_key(&mut self) -> Result<()> {
        self.check_cancel()?;
        self.progress.lock().table = Some("(store)".to_owned());
        let inner = self.inner;
        // The store-level key needs no file boundary: every file's header names its version.
        let Some(plan) = self.plan(STORE_TABLE_ID, || Ok(()))? else {
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
            if table != STORE_TABLE_ID || !plan.retire.contains(&version) {
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
        self.retire("(store)", STORE_TABLE_ID, &plan.retire)?;
        for version in &plan.retire {
            inner.files.remove_key(STORE_TABLE_ID, *version);
        }
        Ok(())
    }
}
