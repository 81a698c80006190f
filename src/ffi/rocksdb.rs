//! The Rust side of the RocksDB bridge (`rocksdb_shim.cc`): creating the encrypted Env,
//! attaching the SST listener, checking private layouts, and the callbacks the shim
//! makes into Rust.
//!
//! Invariant: no panic unwinds into C++ (every callback runs under `catch_unwind`), and a
//! context pointer handed to C++ is a leaked `Box<Arc<dyn FileCrypto>>` that C++ returns
//! exactly once through `tde_rs_context_release`.

use std::ffi::{c_char, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use librocksdb_sys::{rocksdb_env_t, rocksdb_options_t};
use rocksdb::AsRawPtr;

use crate::error::{Error, Result};

/// Status codes the callbacks return to C++.
pub(crate) const CORRUPTION: i32 = 1;
pub(crate) const IO_ERROR: i32 = 3;

/// What the shim asks of Rust: file prefixes, cipher streams, and which column family a
/// new SST belongs to.
pub(crate) trait FileCrypto: Send + Sync {
    /// Fills the prefix (header) of a new file.
    fn new_prefix(&self, fname: &str, prefix: &mut [u8]) -> std::result::Result<(), (i32, String)>;
    /// A cipher stream for a file with this prefix.
    fn open_stream(
        &self,
        fname: &str,
        prefix: &[u8],
    ) -> std::result::Result<crate::cipher::FileStream, (i32, String)>;
    /// RocksDB is about to create SST `path` for column family `cf`.
    fn table_file_started(&self, cf: &str, path: &str);
    /// The file system cut `bytes` of a torn last frame off log `fname` when it opened it.
    fn torn_tail(&self, fname: &str, bytes: u64);
    /// The chunk and frame sealing of a file with header `header` (format 2).
    fn open_chunked(
        &self,
        fname: &str,
        header: &[u8],
    ) -> std::result::Result<crate::kv::files::ChunkFile, (i32, String)>;
}

type Ctx = Arc<dyn FileCrypto>;

unsafe extern "C" {
    fn tde_shim_env_create(ctx: *mut c_void, format1: i32, crash: i32) -> *mut rocksdb_env_t;
    fn tde_shim_options_add_listener(opts: *mut rocksdb_options_t, ctx: *mut c_void) -> i32;
    fn tde_shim_options_max_open_files(opts: *const rocksdb_options_t) -> i32;
    fn tde_shim_options_env_is(opts: *const rocksdb_options_t, env: *const rocksdb_env_t) -> i32;
    fn tde_shim_env_is_default(env: *const rocksdb_env_t) -> i32;
    fn tde_shim_options_risky(
        opts: *const rocksdb_options_t,
        recycle_log_file_num: *mut u64,
        allow_mmap_reads: *mut i32,
        allow_mmap_writes: *mut i32,
    );
    fn tde_shim_prefix_length() -> usize;
}

fn leak(ctx: &Ctx) -> *mut c_void {
    Box::into_raw(Box::new(Arc::clone(ctx))).cast()
}

/// What the shim puts before the file name in a failed authentication's message
/// (`kAuthMarker` in the shim, followed by RocksDB's ": ").
pub(crate) const AUTH_MARKER: &str = "tde authentication: ";

/// Length of the prefix the shim reserves at the start of every file.
pub(crate) fn prefix_length() -> usize {
    // SAFETY: a pure function of the shim that returns a constant.
    unsafe { tde_shim_prefix_length() }
}

/// Whether new files are written in format 1, as the previous release wrote them: only
/// with the `testing` feature and `TDE_TESTING_WRITE_FORMAT1=1`, for tests that open
/// stores made before format 2.
pub(crate) fn write_format1() -> bool {
    cfg!(feature = "testing") && std::env::var_os("TDE_TESTING_WRITE_FORMAT1").is_some_and(|v| v == "1")
}

/// The crash simulation under RocksDB (feature `testing`; see `tde::testing::store_crash`).
#[cfg(feature = "testing")]
pub(crate) mod crash {
    use std::sync::atomic::{AtomicBool, Ordering};

    unsafe extern "C" {
        fn tde_shim_crash_arm(at: u64, seed: u64);
        fn tde_shim_crash_ops() -> u64;
        fn tde_shim_crash_crashed() -> i32;
        fn tde_shim_crash_settle() -> i64;
    }

    static ARMED: AtomicBool = AtomicBool::new(false);

    pub(crate) fn under_stores() -> bool {
        ARMED.load(Ordering::SeqCst)
    }
    pub(crate) fn arm(at: u64, seed: u64) {
        // SAFETY: resets the shim's crash state under its own lock.
        unsafe { tde_shim_crash_arm(at, seed) };
        ARMED.store(true, Ordering::SeqCst);
    }
    pub(crate) fn changes() -> u64 {
        // SAFETY: reads the shim's crash state under its own lock.
        unsafe { tde_shim_crash_ops() }
    }
    pub(crate) fn crashed() -> bool {
        // SAFETY: as above.
        unsafe { tde_shim_crash_crashed() != 0 }
    }
    pub(crate) fn settle() -> Option<u64> {
        ARMED.store(false, Ordering::SeqCst);
        // SAFETY: cuts the files the shim tracked, under its own lock.
        u64::try_from(unsafe { tde_shim_crash_settle() }).ok()
    }
}
#[cfg(not(feature = "testing"))]
mod crash {
    pub(crate) fn under_stores() -> bool {
        false
    }
}

/// An Env whose every file is encrypted through `crypto`, including the info LOG.
pub(crate) fn encrypted_env(crypto: &Ctx) -> Result<rocksdb::Env> {
    let ctx = leak(crypto);
    // SAFETY: `ctx` is a valid leaked Box<Ctx>; the shim takes ownership of it in every
    // case (released through `tde_rs_context_release` when the Env is destroyed, or at
    // once if creation fails), so it is never freed here.
    let raw =
        unsafe { tde_shim_env_create(ctx, i32::from(write_format1()), i32::from(crash::under_stores())) };
    if raw.is_null() {
        return Err(Error::InvalidArgument(
            "RocksDB refused the encrypted environment".into(),
        ));
    }
    // SAFETY: `raw` is a fresh `rocksdb_env_t` allocated by the shim with `new`, exactly as
    // RocksDB's C API allocates one, so `rocksdb_env_destroy` may free it. Ownership moves
    // to the returned Env.
    Ok(unsafe { rocksdb::Env::from_raw(raw) })
}

/// Adds the listener that routes new SST files to their column family's key.
pub(crate) fn add_sst_listener(options: &mut rocksdb::Options, crypto: &Ctx) -> Result<()> {
    let ctx = leak(crypto);
    // SAFETY: `as_raw_ptr` returns the live `rocksdb_options_t` owned by `options`; the
    // shim only appends to its listener vector. `ctx` ownership moves to the listener.
    // The shim takes ownership of `ctx` in every case, failure included.
    let rc = unsafe { tde_shim_options_add_listener(options.as_raw_ptr(), ctx) };
    if rc != 0 {
        return Err(Error::InvalidArgument("RocksDB refused the SST listener".into()));
    }
    Ok(())
}

/// The settings of `options` that tde refuses, by name.
pub(crate) fn risky_options(options: &rocksdb::Options) -> Vec<&'static str> {
    let (mut recycle, mut mmap_reads, mut mmap_writes) = (0u64, 0i32, 0i32);
    // SAFETY: reads three fields of the live options object owned by `options` through
    // the shim, whose layout `layout_check` verified, into locals.
    unsafe {
        tde_shim_options_risky(
            options.as_raw_ptr(),
            &raw mut recycle,
            &raw mut mmap_reads,
            &raw mut mmap_writes,
        );
    }
    let mut out = Vec::new();
    if recycle > 0 {
        out.push("recycle_log_file_num > 0");
    }
    if mmap_reads != 0 {
        out.push("allow_mmap_reads");
    }
    if mmap_writes != 0 {
        out.push("allow_mmap_writes");
    }
    out
}

/// Verifies that the private layouts the shim re-declares match this RocksDB build: a
/// mismatch would corrupt memory, so it is checked before any store opens.
pub(crate) fn layout_check() -> Result<()> {
    let mismatch = |what: &str| {
        Err(Error::InvalidArgument(format!(
            "the RocksDB build does not match the layouts tde's shim was written for ({what}); \
             rebuild with the pinned rocksdb version"
        )))
    };
    let mut options = rocksdb::Options::default();
    for value in [12_345, -1, 777] {
        options.set_max_open_files(value);
        // SAFETY: reads one field of the live options object through the shim.
        if unsafe { tde_shim_options_max_open_files(options.as_raw_ptr()) } != value {
            return mismatch("rocksdb_options_t");
        }
    }
    let env = rocksdb::Env::new().map_err(|e| Error::InvalidArgument(e.to_string()))?;
    options.set_env(&env);
    // SAFETY: both pointers are live (owned by `options` and `env`); the shim compares the
    // Env pointer stored in the options with the one inside the env object.
    let same = unsafe { tde_shim_options_env_is(options.as_raw_ptr(), env.as_raw_ptr()) };
    // SAFETY: reads the `is_default` flag of a live env created by the C API.
    let is_default = unsafe { tde_shim_env_is_default(env.as_raw_ptr()) };
    if same != 1 || is_default != 1 {
        return mismatch("rocksdb_env_t");
    }
    Ok(())
}

/// Copies `msg` into the C buffer `err` of capacity `cap`, NUL-terminated.
///
/// # Safety
/// `err` must be valid for `cap` bytes.
unsafe fn write_err(err: *mut c_char, cap: usize, msg: &str) {
    if err.is_null() || cap == 0 {
        return;
    }
    let n = msg.len().min(cap - 1);
    // SAFETY: the caller guarantees `err` has `cap` bytes; we write `n + 1 <= cap`.
    unsafe {
        std::ptr::copy_nonoverlapping(msg.as_ptr(), err.cast::<u8>(), n);
        *err.add(n) = 0;
    }
}

/// 0 for success, else the error's status code with its message copied into `err`.
///
/// # Safety
/// `err` must be valid for `cap` bytes.
unsafe fn report(result: std::result::Result<(), (i32, String)>, err: *mut c_char, cap: usize) -> i32 {
    match result {
        Ok(()) => 0,
        Err((code, msg)) => {
            // SAFETY: guaranteed by the caller.
            unsafe { write_err(err, cap, &msg) };
            code
        }
    }
}

/// # Safety
/// `ptr` must be valid for `len` bytes (or `len` must be 0).
unsafe fn str_from<'a>(ptr: *const c_char, len: usize) -> &'a str {
    if len == 0 {
        return "";
    }
    // SAFETY: guaranteed by the caller; file and column family names are UTF-8 here (tde
    // names them), anything else maps to "" and is treated as unknown.
    std::str::from_utf8(unsafe { std::slice::from_raw_parts(ptr.cast::<u8>(), len) }).unwrap_or("")
}

#[unsafe(no_mangle)]
extern "C" fn tde_rs_new_prefix(
    ctx: *mut c_void,
    fname: *const c_char,
    fname_len: usize,
    prefix: *mut c_char,
    prefix_len: usize,
    err: *mut c_char,
    err_cap: usize,
) -> i32 {
    catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: `ctx` is a leaked Box<Ctx> kept alive by the shim; the buffers come from
        // RocksDB with the lengths given.
        let (crypto, name, buf) = unsafe {
            (
                &*ctx.cast::<Ctx>(),
                str_from(fname, fname_len),
                std::slice::from_raw_parts_mut(prefix.cast::<u8>(), prefix_len),
            )
        };
        // SAFETY: `err` has `err_cap` bytes (shim contract).
        unsafe { report(crypto.new_prefix(name, buf), err, err_cap) }
    }))
    .unwrap_or(IO_ERROR)
}

/// Opens what a file's header describes with `open`, boxes it into `*out` (C++ frees it
/// through the matching `tde_rs_*_free` exactly once) and reports failure in `err`.
///
/// # Safety
/// `ctx` is a live context, `fname` and `header` point to `fname_len` and `header_len`
/// readable bytes, `out` is a valid out-pointer and `err` has `err_cap` bytes (the shim's
/// contract for every caller).
#[allow(clippy::too_many_arguments)]
unsafe fn open_boxed<T>(
    ctx: *mut c_void,
    fname: *const c_char,
    fname_len: usize,
    header: *const c_char,
    header_len: usize,
    out: *mut *mut c_void,
    err: *mut c_char,
    err_cap: usize,
    open: impl Fn(&Ctx, &str, &[u8]) -> std::result::Result<T, (i32, String)>,
) -> i32 {
    catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: the caller's contract; `header` is read-only here.
        let (crypto, name, bytes) = unsafe {
            (
                &*ctx.cast::<Ctx>(),
                str_from(fname, fname_len),
                std::slice::from_raw_parts(header.cast::<u8>(), header_len),
            )
        };
        let opened = open(crypto, name, bytes).map(|v| {
            // SAFETY: `out` is a valid out-pointer (the caller's contract).
            unsafe { *out = Box::into_raw(Box::new(v)).cast() };
        });
        // SAFETY: `err` has `err_cap` bytes (the caller's contract).
        unsafe { report(opened, err, err_cap) }
    }))
    .unwrap_or(IO_ERROR)
}

#[unsafe(no_mangle)]
extern "C" fn tde_rs_open_stream(
    ctx: *mut c_void,
    fname: *const c_char,
    fname_len: usize,
    prefix: *const c_char,
    prefix_len: usize,
    stream: *mut *mut c_void,
    err: *mut c_char,
    err_cap: usize,
) -> i32 {
    // SAFETY: the shim passes a live context, RocksDB's file name, the file's prefix, an
    // out-pointer and an error buffer of `err_cap` bytes; C++ frees the stream through
    // `tde_rs_stream_free`.
    unsafe {
        open_boxed(
            ctx,
            fname,
            fname_len,
            prefix,
            prefix_len,
            stream,
            err,
            err_cap,
            |c, n, b| c.open_stream(n, b),
        )
    }
}

#[unsafe(no_mangle)]
extern "C" fn tde_rs_stream_apply(stream: *mut c_void, offset: u64, data: *mut c_char, len: usize) -> i32 {
    catch_unwind(AssertUnwindSafe(|| {
        if len == 0 {
            return 0;
        }
        // SAFETY: `stream` was produced by `tde_rs_open_stream` and is not yet freed;
        // `FileStream::apply` takes `&self`, so concurrent calls are sound. `data` is a
        // RocksDB buffer of `len` bytes.
        let (s, buf) = unsafe {
            (
                &*stream.cast::<crate::cipher::FileStream>(),
                std::slice::from_raw_parts_mut(data.cast::<u8>(), len),
            )
        };
        match s.apply(offset, buf) {
            Ok(()) => 0,
            Err(_) => IO_ERROR,
        }
    }))
    .unwrap_or(IO_ERROR)
}

#[unsafe(no_mangle)]
extern "C" fn tde_rs_open_chunked(
    ctx: *mut c_void,
    fname: *const c_char,
    fname_len: usize,
    header: *const c_char,
    header_len: usize,
    file: *mut *mut c_void,
    err: *mut c_char,
    err_cap: usize,
) -> i32 {
    // SAFETY: as in `tde_rs_open_stream`; C++ frees the file through
    // `tde_rs_chunked_free`.
    unsafe {
        open_boxed(
            ctx,
            fname,
            fname_len,
            header,
            header_len,
            file,
            err,
            err_cap,
            |c, n, b| c.open_chunked(n, b),
        )
    }
}

/// Seals (`seal` true) or opens chunk or frame `index` of `file` in place: `data` holds
/// `len` bytes, `trailer` TRAILER bytes (written when sealing, read when opening).
#[unsafe(no_mangle)]
extern "C" fn tde_rs_chunk_apply(
    file: *mut c_void,
    seal: i32,
    index: u64,
    data: *mut c_char,
    len: usize,
    trailer: *mut c_char,
) -> i32 {
    catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: `file` came from `tde_rs_open_chunked` and is not freed; `ChunkFile`
        // methods take `&self`. The buffers come from the shim with the lengths given.
        let (f, data, trailer) = unsafe {
            (
                &*file.cast::<crate::kv::files::ChunkFile>(),
                if len == 0 {
                    &mut [][..]
                } else {
                    std::slice::from_raw_parts_mut(data.cast::<u8>(), len)
                },
                &mut *trailer.cast::<[u8; crate::kv::files::TRAILER]>(),
            )
        };
        // 0: open; 1: seal; 2: seal a log frame marked "more".
        let done = if seal != 0 {
            f.seal(index, data, trailer, seal == 2)
        } else {
            f.open(index, data, trailer)
        };
        match done {
            Ok(()) => 0,
            Err(_) => CORRUPTION,
        }
    }))
    .unwrap_or(IO_ERROR)
}

#[unsafe(no_mangle)]
extern "C" fn tde_rs_torn_tail(ctx: *mut c_void, fname: *const c_char, fname_len: usize, bytes: u64) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: `ctx` is alive (held by the file system); the name comes from RocksDB.
        let (crypto, name) = unsafe { (&*ctx.cast::<Ctx>(), str_from(fname, fname_len)) };
        crypto.torn_tail(name, bytes);
    }));
}

#[unsafe(no_mangle)]
extern "C" fn tde_rs_chunked_free(file: *mut c_void) {
    if file.is_null() {
        return;
    }
    // SAFETY: called once per file by the C++ destructor.
    let _ = catch_unwind(AssertUnwindSafe(|| {
        drop(unsafe { Box::from_raw(file.cast::<crate::kv::files::ChunkFile>()) })
    }));
}

#[unsafe(no_mangle)]
extern "C" fn tde_rs_stream_free(stream: *mut c_void) {
    if stream.is_null() {
        return;
    }
    // SAFETY: called once per stream by the C++ destructor.
    let _ = catch_unwind(AssertUnwindSafe(|| {
        drop(unsafe { Box::from_raw(stream.cast::<crate::cipher::FileStream>()) })
    }));
}

#[unsafe(no_mangle)]
extern "C" fn tde_rs_table_file_started(
    ctx: *mut c_void,
    cf: *const c_char,
    cf_len: usize,
    path: *const c_char,
    path_len: usize,
) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: `ctx` is alive (held by the listener); the strings come from RocksDB.
        let (crypto, cf, path) = unsafe {
            (
                &*ctx.cast::<Ctx>(),
                str_from(cf, cf_len),
                str_from(path, path_len),
            )
        };
        crypto.table_file_started(cf, path);
    }));
}

#[unsafe(no_mangle)]
extern "C" fn tde_rs_context_release(ctx: *mut c_void) {
    if ctx.is_null() {
        return;
    }
    // SAFETY: each leaked context is released exactly once by the C++ owner.
    let _ = catch_unwind(AssertUnwindSafe(|| {
        drop(unsafe { Box::from_raw(ctx.cast::<Ctx>()) })
    }));
}

/// Rewrites values during compaction: `rewrite(key, value, out)` returns true after
/// writing the replacement value into `out`, false to keep the value as it is.
pub(crate) type Rewrite = Arc<dyn Fn(&[u8], &[u8], &mut Vec<u8>) -> bool + Send + Sync>;

struct RewriteFactory {
    name: std::ffi::CString,
    rewrite: Rewrite,
}

struct RewriteFilter {
    name: std::ffi::CString,
    rewrite: Rewrite,
    out: Vec<u8>,
}

impl rocksdb::compaction_filter::CompactionFilter for RewriteFilter {
    fn filter(&mut self, _level: u32, key: &[u8], value: &[u8]) -> rocksdb::CompactionDecision {
        self.out.clear();
        if !(self.rewrite)(key, value, &mut self.out) {
            return rocksdb::CompactionDecision::Keep;
        }
        // SAFETY: the crate's callback hands this slice to RocksDB's C API, which copies
        // it into its own string (`new_value->assign`) before the callback returns, and
        // `out` is not touched again until the next call on this same filter (a filter
        // belongs to one compaction, which calls it from one thread). The 'static
        // lifetime is never relied on beyond that copy.
        let out: &'static [u8] = unsafe { std::mem::transmute::<&[u8], &'static [u8]>(self.out.as_slice()) };
        rocksdb::CompactionDecision::Change(out)
    }

    fn name(&self) -> &std::ffi::CStr {
        &self.name
    }
}

impl rocksdb::compaction_filter_factory::CompactionFilterFactory for RewriteFactory {
    type Filter = RewriteFilter;

    fn create(
        &mut self,
        _context: rocksdb::compaction_filter_factory::CompactionFilterContext,
    ) -> RewriteFilter {
        RewriteFilter {
            name: self.name.clone(),
            rewrite: Arc::clone(&self.rewrite),
            out: Vec::new(),
        }
    }

    fn name(&self) -> &std::ffi::CStr {
        &self.name
    }
}

/// Installs `rewrite` as the compaction filter of the column families opened with
/// `options` (one filter per compaction).
pub(crate) fn set_value_rewrite(options: &mut rocksdb::Options, name: &str, rewrite: Rewrite) {
    let name = std::ffi::CString::new(name).unwrap_or_default();
    options.set_compaction_filter_factory(RewriteFactory { name, rewrite });
}

/// Changes mutable DB-wide options of an open store (`SetDBOptions`), which the
/// `rocksdb` crate does not expose.
pub(crate) fn set_db_options(db: &rocksdb::DB, options: &[(&str, &str)]) -> Result<()> {
    let owned: Vec<(std::ffi::CString, std::ffi::CString)> = options
        .iter()
        .map(|(k, v)| Ok((std::ffi::CString::new(*k)?, std::ffi::CString::new(*v)?)))
        .collect::<std::result::Result<_, std::ffi::NulError>>()
        .map_err(|e| Error::InvalidArgument(e.to_string()))?;
    let keys: Vec<*const c_char> = owned.iter().map(|(k, _)| k.as_ptr()).collect();
    let values: Vec<*const c_char> = owned.iter().map(|(_, v)| v.as_ptr()).collect();
    let mut err: *mut c_char = std::ptr::null_mut();
    // SAFETY: `as_raw_ptr` is the live `rocksdb_t` of `db`, which outlives the call; the
    // key and value arrays hold `keys.len()` NUL-terminated strings kept alive by
    // `owned`; RocksDB copies them into its own map and only writes `err`.
    unsafe {
        librocksdb_sys::rocksdb_set_db_options(
            db.as_raw_ptr(),
            i32::try_from(keys.len()).unwrap_or(i32::MAX),
            keys.as_ptr(),
            values.as_ptr(),
            &raw mut err,
        );
    }
    if err.is_null() {
        return Ok(());
    }
    // SAFETY: a non-null `err` is a malloc'ed NUL-terminated message that we own.
    let message = unsafe { std::ffi::CStr::from_ptr(err) }
        .to_string_lossy()
        .into_owned();
    // SAFETY: freed exactly once, with the allocator RocksDB used.
    unsafe { librocksdb_sys::rocksdb_free(err.cast()) };
    Err(Error::engine(crate::EngineErrorKind::Other, message))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Nothing;

    impl FileCrypto for Nothing {
        fn new_prefix(&self, _: &str, _: &mut [u8]) -> std::result::Result<(), (i32, String)> {
            Err((IO_ERROR, "unused".into()))
        }
        fn open_stream(
            &self,
            _: &str,
            _: &[u8],
        ) -> std::result::Result<crate::cipher::FileStream, (i32, String)> {
            Err((IO_ERROR, "unused".into()))
        }
        fn table_file_started(&self, _: &str, _: &str) {}
        fn torn_tail(&self, _: &str, _: u64) {}
        fn open_chunked(
            &self,
            _: &str,
            _: &[u8],
        ) -> std::result::Result<crate::kv::files::ChunkFile, (i32, String)> {
            Err((IO_ERROR, "no".into()))
        }
    }

    #[test]
    fn the_shim_releases_its_context_exactly_once_when_it_fails() {
        let ctx: Ctx = Arc::new(Nothing);
        let raw = leak(&ctx);
        assert_eq!(Arc::strong_count(&ctx), 2);
        // SAFETY: a null options pointer makes the shim fail after it took ownership of
        // `raw`; it must release it (once) and Rust must not.
        let rc = unsafe { tde_shim_options_add_listener(std::ptr::null_mut(), raw) };
        assert_ne!(rc, 0);
        assert_eq!(Arc::strong_count(&ctx), 1, "released exactly once");
    }

    #[test]
    fn private_layouts_match_this_rocksdb_build() {
        super::layout_check().expect("the shim's view of rocksdb_options_t / rocksdb_env_t is wrong");
        assert_eq!(super::prefix_length(), crate::kv::PREFIX_LEN);
    }
}
