//! Test doubles (feature `testing`): a KMS wrapper that injects latency, throttling,
//! outages and counts calls, and a storage that simulates a crash after N operations.
//!
//! Not for production use: these exist so that tests of tde, and of applications that
//! embed it, can prove behaviour under failure.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::Mutex;

pub use crate::clock::ManualClock;
pub use crate::durable::Storage;
use crate::durable::{DirLock, FsStorage};
use crate::kms::{
    DataKeySpec, EncryptionContext, GeneratedDataKey, KeyMetadata, Kms, KmsError, KmsErrorKind, KmsResult,
};
use crate::secret::SecretBytes;

/// Wraps a KMS: counts calls per operation and injects faults.
pub struct FaultyKms<K> {
    inner: K,
    latency: Mutex<Duration>,
    outage: AtomicBool,
    throttle_next: AtomicUsize,
    denied_keys: Mutex<Vec<String>>,
    calls: [AtomicU64; 5],
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

/// Which operation a call count is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KmsOp {
    /// `generate_data_key`
    GenerateDataKey = 0,
    /// `encrypt`
    Encrypt = 1,
    /// `decrypt` (and `decrypt_data_key`)
    Decrypt = 2,
    /// `re_encrypt`
    ReEncrypt = 3,
    /// `describe_key`
    DescribeKey = 4,
}

impl<K: Kms> FaultyKms<K> {
    /// Wraps `inner` with no faults.
    pub fn new(inner: K) -> FaultyKms<K> {
        FaultyKms {
            inner,
            latency: Mutex::new(Duration::ZERO),
            outage: AtomicBool::new(false),
            throttle_next: AtomicUsize::new(0),
            denied_keys: Mutex::new(Vec::new()),
            calls: Default::default(),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
        }
    }

    /// The wrapped KMS.
    pub fn inner(&self) -> &K {
        &self.inner
    }

    /// Adds `latency` to every call.
    pub fn set_latency(&self, latency: Duration) {
        *self.latency.lock() = latency;
    }

    /// While on, every call fails with `Unavailable`.
    pub fn set_outage(&self, on: bool) {
        self.outage.store(on, Ordering::SeqCst);
    }

    /// The next `n` calls fail with `Throttled`.
    pub fn throttle_next(&self, n: usize) {
        self.throttle_next.store(n, Ordering::SeqCst);
    }

    /// Calls naming `key_id` (directly or through a blob) fail with `AccessDenied`, as if
    /// the caller's permission were revoked.
    pub fn deny_key(&self, key_id: &str) {
        self.denied_keys.lock().push(key_id.to_owned());
    }

    /// Calls of `op` so far (including failed ones).
    pub fn calls(&self, op: KmsOp) -> u64 {
        self.calls[op as usize].load(Ordering::SeqCst)
    }

    /// Calls of every operation so far.
    pub fn total_calls(&self) -> u64 {
        self.calls.iter().map(|c| c.load(Ordering::SeqCst)).sum()
    }

    /// Resets the call counts.
    pub fn reset_calls(&self) {
        for c in &self.calls {
            c.store(0, Ordering::SeqCst);
        }
        self.max_in_flight.store(0, Ordering::SeqCst);
    }

    /// The most calls that were in their (injected) latency at once since the last
    /// [`FaultyKms::reset_calls`].
    pub fn max_in_flight(&self) -> usize {
        self.max_in_flight.load(Ordering::SeqCst)
    }

    fn enter(&self, op: KmsOp, key: Option<&str>) -> KmsResult<()> {
        self.calls[op as usize].fetch_add(1, Ordering::SeqCst);
        let latency = *self.latency.lock();
        if !latency.is_zero() {
            let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            self.max_in_flight.fetch_max(now, Ordering::SeqCst);
            std::thread::sleep(latency);
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
        }
        if self.outage.load(Ordering::SeqCst) {
            return Err(KmsError::new(KmsErrorKind::Unavailable, "injected outage"));
        }
        let throttled = self
            .throttle_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if throttled {
            return Err(KmsError::new(KmsErrorKind::Throttled, "injected throttling"));
        }
        if let Some(key) = key
            && self.denied_keys.lock().iter().any(|k| k == key)
        {
            return Err(
                KmsError::new(KmsErrorKind::AccessDenied, "injected permission revocation").with_key(key),
            );
        }
        Ok(())
    }

    fn blob_key(&self, ciphertext: &[u8]) -> Option<String> {
        // Blobs of the local KMS name their key; other KMSs' blobs are opaque here.
        let denied = self.denied_keys.lock();
        denied
            .iter()
            .find(|k| ciphertext.windows(k.len()).any(|w| w == k.as_bytes()))
            .cloned()
    }
}

impl<K: Kms> Kms for FaultyKms<K> {
    fn describe(&self) -> String {
        format!("faulty({})", self.inner.describe())
    }

    fn generate_data_key(
        &self,
        key: &str,
        spec: DataKeySpec,
        context: &EncryptionContext,
    ) -> KmsResult<GeneratedDataKey> {
        self.enter(KmsOp::GenerateDataKey, Some(key))?;
        self.inner.generate_data_key(key, spec, context)
    }

    fn encrypt(&self, key: &str, plaintext: &[u8], context: &EncryptionContext) -> KmsResult<Vec<u8>> {
        self.enter(KmsOp::Encrypt, Some(key))?;
        self.inner.encrypt(key, plaintext, context)
    }

    fn decrypt(&self, ciphertext: &[u8], context: &EncryptionContext) -> KmsResult<SecretBytes> {
        self.enter(KmsOp::Decrypt, self.blob_key(ciphertext).as_deref())?;
        self.inner.decrypt(ciphertext, context)
    }

    fn re_encrypt(
        &self,
        ciphertext: &[u8],
        source_context: &EncryptionContext,
        destination_key: &str,
        destination_context: &EncryptionContext,
    ) -> KmsResult<Vec<u8>> {
        self.enter(KmsOp::ReEncrypt, self.blob_key(ciphertext).as_deref())?;
        self.enter_key(destination_key)?;
        self.inner
            .re_encrypt(ciphertext, source_context, destination_key, destination_context)
    }

    fn describe_key(&self, key: &str) -> KmsResult<KeyMetadata> {
        self.enter(KmsOp::DescribeKey, Some(key))?;
        self.inner.describe_key(key)
    }
}

impl<K: Kms> FaultyKms<K> {
    fn enter_key(&self, key: &str) -> KmsResult<()> {
        if self.denied_keys.lock().iter().any(|k| k == key) {
            return Err(
                KmsError::new(KmsErrorKind::AccessDenied, "injected permission revocation").with_key(key),
            );
        }
        Ok(())
    }
}

/// A directory whose mutating operations stop at a chosen point, as if the process had
/// crashed there: the operation at the cut point is not done (a file write is torn:
/// half its bytes reach the file), and every later operation fails.
#[derive(Debug)]
pub struct CrashStorage {
    fs: FsStorage,
    remaining: AtomicUsize,
    crashed: AtomicBool,
    torn: bool,
}

impl CrashStorage {
    /// Crashes at the `ops`-th mutating operation (0 = the first). With `torn`, a write at
    /// the cut point leaves half of its bytes behind.
    pub fn new(dir: impl Into<PathBuf>, ops: usize, torn: bool) -> Arc<CrashStorage> {
        Arc::new(CrashStorage {
            fs: FsStorage::new(dir),
            remaining: AtomicUsize::new(ops),
            crashed: AtomicBool::new(false),
            torn,
        })
    }

    /// Whether the simulated crash has happened.
    pub fn crashed(&self) -> bool {
        self.crashed.load(Ordering::SeqCst)
    }

    fn crash_error() -> io::Error {
        io::Error::other("simulated crash")
    }

    /// `Ok(true)`: do the operation; `Ok(false)`: this is the cut point.
    fn step(&self) -> io::Result<bool> {
        if self.crashed() {
            return Err(Self::crash_error());
        }
        let before = self
            .remaining
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        if before.is_err() {
            self.crashed.store(true, Ordering::SeqCst);
            return Ok(false);
        }
        Ok(true)
    }

    fn alive(&self) -> io::Result<()> {
        if self.crashed() {
            Err(Self::crash_error())
        } else {
            Ok(())
        }
    }
}

impl Storage for CrashStorage {
    fn path(&self, name: &str) -> PathBuf {
        self.fs.path(name)
    }
    fn exists(&self, name: &str) -> io::Result<bool> {
        self.alive()?;
        self.fs.exists(name)
    }
    fn read(&self, name: &str) -> io::Result<Option<Vec<u8>>> {
        self.alive()?;
        self.fs.read(name)
    }
    fn read_prefix(&self, name: &str, len: usize) -> io::Result<Option<Vec<u8>>> {
        self.alive()?;
        self.fs.read_prefix(name, len)
    }
    fn write_synced(&self, name: &str, bytes: &[u8]) -> io::Result<()> {
        if self.step()? {
            return self.fs.write_synced(name, bytes);
        }
        if self.torn {
            std::fs::write(self.fs.path(name), &bytes[..bytes.len() / 2])?;
        }
        Err(Self::crash_error())
    }
    fn create_private(&self, name: &str, bytes: &[u8]) -> io::Result<()> {
        if self.step()? {
            return self.fs.create_private(name, bytes);
        }
        Err(Self::crash_error())
    }
    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        if self.step()? {
            return self.fs.rename(from, to);
        }
        Err(Self::crash_error())
    }
    fn sync_dir(&self) -> io::Result<()> {
        if self.step()? {
            return self.fs.sync_dir();
        }
        Err(Self::crash_error())
    }
    fn lock(&self) -> io::Result<DirLock> {
        self.alive()?;
        self.fs.lock()
    }
}

/// In-memory storage for a tablespace (its data file and journal) that can crash or fail
/// at a chosen mutating operation (write, truncate, fsync).
///
/// Each file keeps what a crash would leave: `current` (every write reached the disk, in
/// order) and `durable` (only what the last fsync of that file covered). After a crash,
/// [`CrashIo::after_crash`] gives a new storage with either image, to reopen.
#[derive(Debug)]
pub struct CrashIo {
    state: Mutex<CrashIoState>,
}

#[derive(Debug, Clone, Default)]
struct MemFile {
    current: Vec<u8>,
    durable: Vec<u8>,
}

#[derive(Debug)]
struct CrashIoState {
    files: [MemFile; 2],
    ops: u64,
    fault: IoFault,
    crashed: bool,
}

/// What [`CrashIo`] does at its fault point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoFault {
    /// Nothing: every operation succeeds.
    None,
    /// The process "crashes" at mutating operation `op` (counted from creation, 0 = the
    /// first): that operation does not happen (with `torn`, a write leaves its first half
    /// behind) and every later operation, reads included, fails.
    CrashAt {
        /// Operation number.
        op: u64,
        /// Whether a write at the cut point is torn.
        torn: bool,
    },
    /// Mutating operations from number `op` on fail with an I/O error (as a full disk or a
    /// failing fsync would); reads keep working.
    FailFrom {
        /// Operation number.
        op: u64,
    },
}

fn file_index(file: crate::page::PageFile) -> usize {
    match file {
        crate::page::PageFile::Data => 0,
        crate::page::PageFile::Journal => 1,
    }
}

impl CrashIo {
    /// Empty files, no fault.
    pub fn new() -> Arc<CrashIo> {
        CrashIo::from_files([MemFile::default(), MemFile::default()])
    }

    fn from_files(files: [MemFile; 2]) -> Arc<CrashIo> {
        Arc::new(CrashIo {
            state: Mutex::new(CrashIoState {
                files,
                ops: 0,
                fault: IoFault::None,
                crashed: false,
            }),
        })
    }

    /// Sets the fault.
    pub fn set_fault(&self, fault: IoFault) {
        self.state.lock().fault = fault;
    }

    /// Mutating operations so far (including failed ones).
    pub fn ops(&self) -> u64 {
        self.state.lock().ops
    }

    /// Whether the simulated crash has happened.
    pub fn crashed(&self) -> bool {
        self.state.lock().crashed
    }

    /// A new storage holding what survives a crash now: every write (`lose_unsynced` =
    /// false) or only what was fsynced (`true`). Its operation count starts at 0.
    pub fn after_crash(&self, lose_unsynced: bool) -> Arc<CrashIo> {
        let st = self.state.lock();
        let files = st.files.clone().map(|f| {
            let bytes = if lose_unsynced { f.durable } else { f.current };
            MemFile {
                current: bytes.clone(),
                durable: bytes,
            }
        });
        CrashIo::from_files(files)
    }

    /// The current bytes of `file`.
    pub fn bytes(&self, file: crate::page::PageFile) -> Vec<u8> {
        self.state.lock().files[file_index(file)].current.clone()
    }

    /// Replaces the bytes of `file` (as if they were changed behind the tablespace's back).
    pub fn set_bytes(&self, file: crate::page::PageFile, bytes: Vec<u8>) {
        let mut st = self.state.lock();
        let f = &mut st.files[file_index(file)];
        f.current = bytes.clone();
        f.durable = bytes;
    }

    fn crash_error() -> io::Error {
        io::Error::other("simulated crash")
    }

    /// Counts a mutating operation: `Ok(None)` to do it, `Ok(Some(torn))` at the crash
    /// point, `Err` if it fails.
    fn step(st: &mut CrashIoState) -> io::Result<Option<bool>> {
        if st.crashed {
            return Err(CrashIo::crash_error());
        }
        let op = st.ops;
        st.ops += 1;
        match st.fault {
            IoFault::CrashAt { op: at, torn } if op == at => {
                st.crashed = true;
                Ok(Some(torn))
            }
            IoFault::FailFrom { op: from } if op >= from => Err(io::Error::other("injected I/O failure")),
            _ => Ok(None),
        }
    }
}

fn write_at(buf: &mut Vec<u8>, offset: u64, data: &[u8]) {
    let offset = offset as usize;
    if buf.len() < offset + data.len() {
        buf.resize(offset + data.len(), 0);
    }
    buf[offset..offset + data.len()].copy_from_slice(data);
}

impl crate::page::PageIo for CrashIo {
    fn describe(&self, file: crate::page::PageFile) -> String {
        format!("memory:{file:?}").to_lowercase()
    }

    fn len(&self, file: crate::page::PageFile) -> io::Result<u64> {
        let st = self.state.lock();
        if st.crashed {
            return Err(CrashIo::crash_error());
        }
        Ok(st.files[file_index(file)].current.len() as u64)
    }

    fn read_exact_at(&self, file: crate::page::PageFile, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let st = self.state.lock();
        if st.crashed {
            return Err(CrashIo::crash_error());
        }
        let bytes = &st.files[file_index(file)].current;
        let start = offset as usize;
        let Some(src) = bytes.get(start..start + buf.len()) else {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
        };
        buf.copy_from_slice(src);
        Ok(())
    }

    fn write_all_at(&self, file: crate::page::PageFile, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut st = self.state.lock();
        let step = CrashIo::step(&mut st)?;
        let f = &mut st.files[file_index(file)];
        match step {
            None => {
                write_at(&mut f.current, offset, data);
                Ok(())
            }
            Some(torn) => {
                if torn {
                    write_at(&mut f.current, offset, &data[..data.len() / 2]);
                }
                Err(CrashIo::crash_error())
            }
        }
    }

    fn set_len(&self, file: crate::page::PageFile, len: u64) -> io::Result<()> {
        let mut st = self.state.lock();
        match CrashIo::step(&mut st)? {
            None => {
                st.files[file_index(file)].current.resize(len as usize, 0);
                Ok(())
            }
            Some(_) => Err(CrashIo::crash_error()),
        }
    }

    fn sync(&self, file: crate::page::PageFile) -> io::Result<()> {
        let mut st = self.state.lock();
        match CrashIo::step(&mut st)? {
            None => {
                let f = &mut st.files[file_index(file)];
                f.durable = f.current.clone();
                Ok(())
            }
            Some(_) => Err(CrashIo::crash_error()),
        }
    }
}

/// A simulated crash under RocksDB, for stores.
///
/// While armed, every store opened sits on a file system that counts the calls that change
/// the disk (file creations, writes, syncs, renames, deletions). At the armed count the
/// "process dies": the write there is torn (a seeded prefix of it reaches the disk), and
/// that call and every later change fail with an I/O error. [`store_crash::settle`] then
/// plays the power cut: each file keeps what was synced plus a seeded prefix of what was
/// written after it. Directory entries count as durable at once.
///
/// The state is global to the process: use it from one test at a time.
pub mod store_crash {
    /// Arms the crash at change `at` (counted from 1 since arming; 0: never, only count),
    /// with `seed` for the torn lengths. Stores opened from now on sit on the simulation.
    pub fn arm(at: u64, seed: u64) {
        crate::ffi::rocksdb::crash::arm(at, seed);
    }

    /// Changes counted since arming.
    pub fn changes() -> u64 {
        crate::ffi::rocksdb::crash::changes()
    }

    /// Whether the process has "died".
    pub fn crashed() -> bool {
        crate::ffi::rocksdb::crash::crashed()
    }

    /// The power cut: cuts every file to its synced length plus a seeded part of what was
    /// written after, and disarms (stores opened from now on use the real disk only).
    /// Returns how many files were cut.
    ///
    /// # Errors
    /// If a file cannot be cut.
    pub fn settle() -> std::io::Result<u64> {
        crate::ffi::rocksdb::crash::settle()
            .ok_or_else(|| std::io::Error::other("cutting a file after the simulated crash failed"))
    }
}
