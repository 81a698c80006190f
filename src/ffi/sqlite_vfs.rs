//! The `tde` VFS for SQLite (feature `sqlite`): layered on the operating system's VFS,
//! which keeps locking, syncing and everything else; reads and writes of a main database
//! file and of its rollback journal go through the [`SealedFile`]s of the [`Database`]
//! registered for its path (`crate::sqlite` seals them). Files it does not seal yet
//! (temporary files, statement and super-journals, the WAL) are refused, and memory-mapped
//! I/O is declined.

use std::collections::HashMap;
use std::ffi::{CStr, c_char, c_int, c_void};
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;
use rusqlite::ffi;

/// The file as the root VFS has it: what a [`SealedFile`] reads and writes through.
pub(crate) trait RealFile {
    /// Reads `buf.len()` bytes at `off`; SQLite's result code (a short read zero-fills).
    fn read(&mut self, off: i64, buf: &mut [u8]) -> c_int;
    /// Writes `data` at `off`; SQLite's result code.
    fn write(&mut self, off: i64, data: &[u8]) -> c_int;
}

/// A file whose bytes tde seals: SQLite's reads and writes, mapped onto the real file.
pub(crate) trait SealedFile: Send {
    /// SQLite reads `out.len()` bytes at `off`.
    fn read(&mut self, off: i64, out: &mut [u8], real: &mut dyn RealFile) -> c_int;
    /// SQLite writes `data` at `off`.
    fn write(&mut self, off: i64, data: &[u8], real: &mut dyn RealFile) -> c_int;
    /// SQLite truncated the file to `size` bytes.
    fn truncated(&mut self, _size: i64) {}
}

/// A database's keys, as the VFS asks for them: the files it opens.
pub(crate) trait Database: Send + Sync {
    /// The main database file.
    fn main(self: Arc<Self>) -> Box<dyn SealedFile>;
    /// Its rollback journal.
    fn journal(self: Arc<Self>) -> Box<dyn SealedFile>;
}

type PageCipher = dyn Database;

fn keys() -> &'static Mutex<HashMap<String, Arc<PageCipher>>> {
    #[allow(clippy::type_complexity)]
    static KEYS: OnceLock<Mutex<HashMap<String, Arc<PageCipher>>>> = OnceLock::new();
    KEYS.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Makes `cipher` the keys of the database whose main file SQLite names `path`.
pub(crate) fn register(path: String, cipher: Arc<PageCipher>) {
    keys().lock().insert(path, cipher);
}

/// Forgets the keys registered for `path` if they are `cipher` (the files SQLite has open
/// keep theirs).
pub(crate) fn unregister(path: &str, cipher: &Arc<PageCipher>) {
    let mut keys = keys().lock();
    if keys.get(path).is_some_and(|c| Arc::ptr_eq(c, cipher)) {
        keys.remove(path);
    }
}

macro_rules! real_call {
    ($real:expr, $method:ident $(, $arg:expr)*) => {
        match (*(*$real).pMethods).$method {
            Some(m) => m($real $(, $arg)*),
            None => ffi::SQLITE_OK,
        }
    };
}

#[repr(C)]
struct TdeFile {
    base: ffi::sqlite3_file,
    real: *mut ffi::sqlite3_file,
    sealed: *mut Box<dyn SealedFile>,
}

/// The root VFS's file, for a [`SealedFile`].
struct Real(*mut ffi::sqlite3_file);

impl RealFile for Real {
    fn read(&mut self, off: i64, buf: &mut [u8]) -> c_int {
        // SAFETY: `self.0` is an open file of the root VFS; `buf` is ours.
        unsafe { real_call!(self.0, xRead, buf.as_mut_ptr().cast(), buf.len() as c_int, off) }
    }
    fn write(&mut self, off: i64, data: &[u8]) -> c_int {
        // SAFETY: as above.
        unsafe { real_call!(self.0, xWrite, data.as_ptr().cast(), data.len() as c_int, off) }
    }
}

fn root() -> *mut ffi::sqlite3_vfs {
    // SAFETY: returns SQLite's default VFS, registered at initialisation.
    unsafe { ffi::sqlite3_vfs_find(std::ptr::null()) }
}

/// Registers the `tde` VFS (once).
pub(crate) fn install() -> bool {
    static DONE: OnceLock<bool> = OnceLock::new();
    *DONE.get_or_init(|| {
        let root = root();
        if root.is_null() {
            return false;
        }
        // SAFETY: `root` is SQLite's default VFS, alive for the process.
        let r = unsafe { &*root };
        let vfs = Box::new(ffi::sqlite3_vfs {
            iVersion: 1,
            szOsFile: std::mem::size_of::<TdeFile>() as c_int,
            mxPathname: r.mxPathname,
            pNext: std::ptr::null_mut(),
            zName: c"tde".as_ptr(),
            pAppData: root.cast(),
            xOpen: Some(x_open),
            xDelete: r.xDelete.map(|_| x_delete as _),
            xAccess: r.xAccess.map(|_| x_access as _),
            xFullPathname: r.xFullPathname.map(|_| x_full_pathname as _),
            xDlOpen: None,
            xDlError: None,
            xDlSym: None,
            xDlClose: None,
            xRandomness: r.xRandomness,
            xSleep: r.xSleep,
            xCurrentTime: r.xCurrentTime,
            xGetLastError: r.xGetLastError,
            xCurrentTimeInt64: None,
            xSetSystemCall: None,
            xGetSystemCall: None,
            xNextSystemCall: None,
        });
        // SAFETY: the VFS is leaked: SQLite keeps the pointer for the process.
        unsafe { ffi::sqlite3_vfs_register(Box::into_raw(vfs), 0) == ffi::SQLITE_OK }
    })
}

unsafe extern "C" fn x_delete(_: *mut ffi::sqlite3_vfs, name: *const c_char, sync: c_int) -> c_int {
    // SAFETY: delegates to the root VFS with SQLite's own arguments.
    unsafe { ((*root()).xDelete.unwrap_unchecked())(root(), name, sync) }
}

unsafe extern "C" fn x_access(
    _: *mut ffi::sqlite3_vfs,
    name: *const c_char,
    flags: c_int,
    out: *mut c_int,
) -> c_int {
    // SAFETY: as above.
    unsafe { ((*root()).xAccess.unwrap_unchecked())(root(), name, flags, out) }
}

unsafe extern "C" fn x_full_pathname(
    _: *mut ffi::sqlite3_vfs,
    name: *const c_char,
    n: c_int,
    out: *mut c_char,
) -> c_int {
    // SAFETY: as above.
    unsafe { ((*root()).xFullPathname.unwrap_unchecked())(root(), name, n, out) }
}

static IO: ffi::sqlite3_io_methods = ffi::sqlite3_io_methods {
    iVersion: 1,
    xClose: Some(x_close),
    xRead: Some(x_read),
    xWrite: Some(x_write),
    xTruncate: Some(x_truncate),
    xSync: Some(x_sync),
    xFileSize: Some(x_file_size),
    xLock: Some(x_lock),
    xUnlock: Some(x_unlock),
    xCheckReservedLock: Some(x_check_reserved_lock),
    xFileControl: Some(x_file_control),
    xSectorSize: Some(x_sector_size),
    xDeviceCharacteristics: Some(x_device_characteristics),
    xShmMap: None,
    xShmLock: None,
    xShmBarrier: None,
    xShmUnmap: None,
    xFetch: None,
    xUnfetch: None,
};

unsafe extern "C" fn x_open(
    _: *mut ffi::sqlite3_vfs,
    name: *const c_char,
    file: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    // Files tde does not seal yet would hold plaintext: temporary databases and journals,
    // statement journals, super-journals and the WAL are refused (`temp_store = MEMORY`
    // keeps SQLite's temporary data in memory).
    let unsealed = ffi::SQLITE_OPEN_TEMP_DB
        | ffi::SQLITE_OPEN_TEMP_JOURNAL
        | ffi::SQLITE_OPEN_SUBJOURNAL
        | ffi::SQLITE_OPEN_TRANSIENT_DB
        | ffi::SQLITE_OPEN_SUPER_JOURNAL
        | ffi::SQLITE_OPEN_WAL;
    // SAFETY: `file` has room for a TdeFile (szOsFile); the real file is allocated with
    // the root VFS's size and opened by it.
    unsafe {
        let f = file.cast::<TdeFile>();
        (*f).base.pMethods = std::ptr::null();
        if flags & unsealed != 0 {
            return ffi::SQLITE_CANTOPEN;
        }
        (*f).sealed = std::ptr::null_mut();
        let size = (*root()).szOsFile;
        let real = ffi::sqlite3_malloc(size).cast::<ffi::sqlite3_file>();
        if real.is_null() {
            return ffi::SQLITE_NOMEM;
        }
        std::ptr::write_bytes(real.cast::<u8>(), 0, size as usize);
        let rc = ((*root()).xOpen.unwrap_unchecked())(root(), name, real, flags, out_flags);
        if rc != ffi::SQLITE_OK {
            ffi::sqlite3_free(real.cast());
            return rc;
        }
        (*f).real = real;
        let main = flags & ffi::SQLITE_OPEN_MAIN_DB != 0;
        let journal = flags & ffi::SQLITE_OPEN_MAIN_JOURNAL != 0;
        if (main || journal) && !name.is_null() {
            let mut path = CStr::from_ptr(name).to_string_lossy().into_owned();
            if journal {
                path.truncate(path.len().saturating_sub("-journal".len()));
            }
            let db = keys().lock().get(&path).cloned();
            match db {
                Some(db) => {
                    let sealed = if main { db.main() } else { db.journal() };
                    (*f).sealed = Box::into_raw(Box::new(sealed));
                }
                None => {
                    if let Some(close) = (*(*real).pMethods).xClose {
                        close(real);
                    }
                    ffi::sqlite3_free(real.cast());
                    return ffi::SQLITE_AUTH;
                }
            }
        }
        (*f).base.pMethods = &IO;
        ffi::SQLITE_OK
    }
}

/// The real file and the sealing of a TdeFile.
unsafe fn parts<'a>(
    file: *mut ffi::sqlite3_file,
) -> (*mut ffi::sqlite3_file, Option<&'a mut Box<dyn SealedFile>>) {
    // SAFETY: `file` is a TdeFile opened by x_open; SQLite calls one method of a file at
    // a time.
    unsafe {
        let f = file.cast::<TdeFile>();
        ((*f).real, (*f).sealed.as_mut())
    }
}

unsafe extern "C" fn x_close(file: *mut ffi::sqlite3_file) -> c_int {
    // SAFETY: closes and frees the real file, and drops its sealing, once.
    unsafe {
        let f = file.cast::<TdeFile>();
        let real = (*f).real;
        let rc = real_call!(real, xClose);
        ffi::sqlite3_free(real.cast());
        if !(*f).sealed.is_null() {
            drop(Box::from_raw((*f).sealed));
            (*f).sealed = std::ptr::null_mut();
        }
        rc
    }
}

unsafe extern "C" fn x_read(file: *mut ffi::sqlite3_file, buf: *mut c_void, amt: c_int, off: i64) -> c_int {
    // SAFETY: `buf` has `amt` bytes (SQLite's contract).
    unsafe {
        let (real, sealed) = parts(file);
        match sealed {
            None => real_call!(real, xRead, buf, amt, off),
            Some(s) => s.read(
                off,
                std::slice::from_raw_parts_mut(buf.cast::<u8>(), amt as usize),
                &mut Real(real),
            ),
        }
    }
}

unsafe extern "C" fn x_write(
    file: *mut ffi::sqlite3_file,
    buf: *const c_void,
    amt: c_int,
    off: i64,
) -> c_int {
    // SAFETY: `buf` has `amt` bytes (SQLite's contract).
    unsafe {
        let (real, sealed) = parts(file);
        match sealed {
            None => real_call!(real, xWrite, buf, amt, off),
            Some(s) => s.write(
                off,
                std::slice::from_raw_parts(buf.cast::<u8>(), amt as usize),
                &mut Real(real),
            ),
        }
    }
}

unsafe extern "C" fn x_truncate(file: *mut ffi::sqlite3_file, size: i64) -> c_int {
    // SAFETY: delegates.
    unsafe {
        let (real, sealed) = parts(file);
        if let Some(s) = sealed {
            s.truncated(size);
        }
        real_call!(real, xTruncate, size)
    }
}
unsafe extern "C" fn x_sync(file: *mut ffi::sqlite3_file, flags: c_int) -> c_int {
    // SAFETY: delegates.
    unsafe { real_call!(parts(file).0, xSync, flags) }
}
unsafe extern "C" fn x_file_size(file: *mut ffi::sqlite3_file, size: *mut i64) -> c_int {
    // SAFETY: delegates.
    unsafe { real_call!(parts(file).0, xFileSize, size) }
}
unsafe extern "C" fn x_lock(file: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    // SAFETY: delegates.
    unsafe { real_call!(parts(file).0, xLock, level) }
}
unsafe extern "C" fn x_unlock(file: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    // SAFETY: delegates.
    unsafe { real_call!(parts(file).0, xUnlock, level) }
}
unsafe extern "C" fn x_check_reserved_lock(file: *mut ffi::sqlite3_file, out: *mut c_int) -> c_int {
    // SAFETY: delegates.
    unsafe { real_call!(parts(file).0, xCheckReservedLock, out) }
}
unsafe extern "C" fn x_file_control(file: *mut ffi::sqlite3_file, op: c_int, arg: *mut c_void) -> c_int {
    // Memory-mapped I/O would bypass the cipher.
    if op == ffi::SQLITE_FCNTL_MMAP_SIZE {
        return ffi::SQLITE_NOTFOUND;
    }
    // SAFETY: delegates.
    unsafe {
        let real = parts(file).0;
        match (*(*real).pMethods).xFileControl {
            Some(m) => m(real, op, arg),
            None => ffi::SQLITE_NOTFOUND,
        }
    }
}
unsafe extern "C" fn x_sector_size(file: *mut ffi::sqlite3_file) -> c_int {
    // SAFETY: delegates.
    unsafe {
        let real = parts(file).0;
        (*(*real).pMethods).xSectorSize.map_or(4096, |m| m(real))
    }
}
unsafe extern "C" fn x_device_characteristics(file: *mut ffi::sqlite3_file) -> c_int {
    // SAFETY: delegates.
    unsafe {
        let real = parts(file).0;
        (*(*real).pMethods).xDeviceCharacteristics.map_or(0, |m| m(real))
    }
}

/// Asks SQLite to reserve `n` bytes per page of `conn`'s main database (before its first
/// write). Returns SQLite's result code.
pub(crate) fn set_reserve(conn: &rusqlite::Connection, n: usize) -> c_int {
    let mut n = n as c_int;
    // SAFETY: a live connection handle; the file control reads and writes `n`.
    unsafe {
        ffi::sqlite3_file_control(
            conn.handle(),
            c"main".as_ptr(),
            ffi::SQLITE_FCNTL_RESERVE_BYTES,
            (&raw mut n).cast(),
        )
    }
}
