//! PROTOTYPE (branch only): a VFS named `tde` layered on the operating system's VFS,
//! which keeps locking and everything else; the pages of a main database file go through
//! the [`PageCrypto`] registered for its path (sealed in SQLite's reserved bytes, see
//! `crate::sqlite`). Not yet: the rollback journal, the WAL, temporary files.

use std::collections::HashMap;
use std::ffi::{CStr, c_char, c_int, c_void};
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;
use rusqlite::ffi;

/// What the VFS asks of a database's keys.
pub(crate) trait PageCrypto: Send + Sync {
    /// The page size, fixed at creation.
    fn page_size(&self) -> usize;
    /// Bytes SQLite must reserve at the end of each page.
    fn reserve(&self) -> usize;
    /// Seals page `pgno` (from 1) in place; false on failure.
    fn seal(&self, pgno: u32, page: &mut [u8]) -> bool;
    /// Opens page `pgno` in place; false if it does not authenticate.
    fn open(&self, pgno: u32, page: &mut [u8]) -> bool;
}

type PageCipher = dyn PageCrypto;

fn keys() -> &'static Mutex<HashMap<String, Arc<PageCipher>>> {
    #[allow(clippy::type_complexity)]
    static KEYS: OnceLock<Mutex<HashMap<String, Arc<PageCipher>>>> = OnceLock::new();
    KEYS.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Makes `cipher` the keys of the database whose main file SQLite names `path`.
pub(crate) fn register(path: String, cipher: Arc<PageCipher>) {
    keys().lock().insert(path, cipher);
}

#[repr(C)]
struct TdeFile {
    base: ffi::sqlite3_file,
    real: *mut ffi::sqlite3_file,
    cipher: *const Arc<PageCipher>,
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
    // SAFETY: `file` has room for a TdeFile (szOsFile); the real file is allocated with
    // the root VFS's size and opened by it.
    unsafe {
        let f = file.cast::<TdeFile>();
        (*f).base.pMethods = std::ptr::null();
        (*f).cipher = std::ptr::null();
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
        if flags & ffi::SQLITE_OPEN_MAIN_DB != 0 && !name.is_null() {
            let path = CStr::from_ptr(name).to_string_lossy().into_owned();
            match keys().lock().get(&path) {
                Some(cipher) => (*f).cipher = Box::into_raw(Box::new(Arc::clone(cipher))),
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

/// The real file and the cipher of a TdeFile.
unsafe fn parts<'a>(file: *mut ffi::sqlite3_file) -> (*mut ffi::sqlite3_file, Option<&'a PageCipher>) {
    // SAFETY: `file` is a TdeFile opened by x_open.
    unsafe {
        let f = file.cast::<TdeFile>();
        ((*f).real, (*f).cipher.as_ref().map(|c| &**c))
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

unsafe extern "C" fn x_close(file: *mut ffi::sqlite3_file) -> c_int {
    // SAFETY: closes and frees the real file, and releases the cipher, once.
    unsafe {
        let f = file.cast::<TdeFile>();
        let real = (*f).real;
        let rc = real_call!(real, xClose);
        ffi::sqlite3_free(real.cast());
        if !(*f).cipher.is_null() {
            drop(Box::from_raw((*f).cipher.cast_mut()));
            (*f).cipher = std::ptr::null();
        }
        rc
    }
}

unsafe extern "C" fn x_read(file: *mut ffi::sqlite3_file, buf: *mut c_void, amt: c_int, off: i64) -> c_int {
    // SAFETY: `buf` has `amt` bytes (SQLite's contract).
    unsafe {
        let (real, cipher) = parts(file);
        let Some(c) = cipher else {
            return real_call!(real, xRead, buf, amt, off);
        };
        let out = std::slice::from_raw_parts_mut(buf.cast::<u8>(), amt as usize);
        let p = c.page_size() as i64;
        let mut page = vec![0u8; c.page_size()];
        let mut at = off;
        let end = off + i64::from(amt);
        while at < end {
            let pgno = at / p;
            let rc = real_call!(real, xRead, page.as_mut_ptr().cast(), p as c_int, pgno * p);
            if rc == ffi::SQLITE_IOERR_SHORT_READ {
                // Past the end: SQLite expects zeros.
                out[(at - off) as usize..].fill(0);
                return rc;
            }
            if rc != ffi::SQLITE_OK {
                return rc;
            }
            if !c.open((pgno + 1) as u32, &mut page) {
                return ffi::SQLITE_IOERR_DATA;
            }
            let from = (at - pgno * p) as usize;
            let take = ((end - at) as usize).min(c.page_size() - from);
            out[(at - off) as usize..(at - off) as usize + take].copy_from_slice(&page[from..from + take]);
            at += take as i64;
        }
        ffi::SQLITE_OK
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
        let (real, cipher) = parts(file);
        let Some(c) = cipher else {
            return real_call!(real, xWrite, buf, amt, off);
        };
        let p = c.page_size() as i64;
        if off % p != 0 || i64::from(amt) % p != 0 {
            return ffi::SQLITE_IOERR_WRITE;
        }
        let data = std::slice::from_raw_parts(buf.cast::<u8>(), amt as usize);
        let mut page = vec![0u8; c.page_size()];
        for (k, chunk) in data.chunks(c.page_size()).enumerate() {
            let pgno = off / p + k as i64;
            page.copy_from_slice(chunk);
            if pgno == 0 {
                // Page 1's header: the page size and reserve are fixed at creation.
                let size = u32::from(u16::from_be_bytes([page[16], page[17]]));
                let size = if size == 1 { 65536 } else { size as usize };
                if size != c.page_size() || usize::from(page[20]) != c.reserve() {
                    return ffi::SQLITE_IOERR_WRITE;
                }
            }
            if !c.seal((pgno + 1) as u32, &mut page) {
                return ffi::SQLITE_IOERR_WRITE;
            }
            let rc = real_call!(real, xWrite, page.as_ptr().cast(), p as c_int, pgno * p);
            if rc != ffi::SQLITE_OK {
                return rc;
            }
        }
        ffi::SQLITE_OK
    }
}

unsafe extern "C" fn x_truncate(file: *mut ffi::sqlite3_file, size: i64) -> c_int {
    // SAFETY: delegates.
    unsafe { real_call!(parts(file).0, xTruncate, size) }
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
