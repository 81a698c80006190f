//! The files of a SQLite database as tde seals them: the main file page by page, the
//! rollback journal record by record (see the layouts in `mod.rs`).

use std::ffi::c_int;
use std::sync::Arc;

use rusqlite::ffi::{SQLITE_IOERR_DATA, SQLITE_IOERR_SHORT_READ, SQLITE_IOERR_WRITE, SQLITE_OK};

use super::PageCipher;

thread_local! {
    /// The last page that failed authentication on this thread (SQLite calls the VFS on
    /// the thread that runs the statement), for [`super::explain`].
    static FAILED: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// Records a failed authentication and returns SQLite's code for it.
fn failed(location: String) -> c_int {
    FAILED.with(|f| *f.borrow_mut() = Some(location));
    SQLITE_IOERR_DATA
}

/// The failed authentication recorded on this thread, if any (taken).
pub(crate) fn take_failure() -> Option<String> {
    FAILED.with(|f| f.borrow_mut().take())
}
use crate::ffi::sqlite_vfs::{RealFile, SealedFile};

/// The main database file: whole pages, sealed.
pub(crate) struct MainFile {
    c: Arc<PageCipher>,
    page: Vec<u8>,
}

impl MainFile {
    pub(crate) fn new(c: Arc<PageCipher>) -> MainFile {
        let page = vec![0u8; c.page_size];
        MainFile { c, page }
    }
}

impl SealedFile for MainFile {
    fn read(&mut self, off: i64, out: &mut [u8], real: &mut dyn RealFile) -> c_int {
        let (p, body) = (self.c.page_size as i64, self.c.page_size - self.c.reserve());
        let end = off + out.len() as i64;
        let mut at = off;
        while at < end {
            let index = at / p;
            let rc = real.read(index * p, &mut self.page);
            if rc == SQLITE_IOERR_SHORT_READ {
                // Past the end of the file: SQLite expects zeros.
                out[(at - off) as usize..].fill(0);
                return rc;
            }
            if rc != SQLITE_OK {
                return rc;
            }
            let aad = self.c.page_aad((index + 1) as u32);
            let (msg, tail) = self.page.split_at_mut(body);
            if !self.c.open(&aad, msg, tail) {
                return failed(format!("{}: page {}", self.c.label, index + 1));
            }
            let from = (at - index * p) as usize;
            let take = ((end - at) as usize).min(self.c.page_size - from);
            let to = (at - off) as usize;
            out[to..to + take].copy_from_slice(&self.page[from..from + take]);
            at += take as i64;
        }
        SQLITE_OK
    }

    fn write(&mut self, off: i64, data: &[u8], real: &mut dyn RealFile) -> c_int {
        let (p, body) = (self.c.page_size, self.c.page_size - self.c.reserve());
        if off % p as i64 != 0 || !data.len().is_multiple_of(p) {
            return SQLITE_IOERR_WRITE;
        }
        for (k, chunk) in data.chunks(p).enumerate() {
            let index = off / p as i64 + k as i64;
            self.page.copy_from_slice(chunk);
            if index == 0 {
                // Page 1's header: the page size and reserve are fixed at creation.
                let size = usize::from(u16::from_be_bytes([chunk[16], chunk[17]]));
                let size = if size == 1 { 65536 } else { size };
                if size != p || usize::from(chunk[20]) != self.c.reserve() {
                    return SQLITE_IOERR_WRITE;
                }
            }
            let aad = self.c.page_aad((index + 1) as u32);
            let (msg, tail) = self.page.split_at_mut(body);
            if !self.c.seal(&aad, msg, tail) {
                return SQLITE_IOERR_WRITE;
            }
            let rc = real.write(index * p as i64, &self.page);
            if rc != SQLITE_OK {
                return rc;
            }
        }
        SQLITE_OK
    }
}

/// SQLite's journal magic: the first bytes of every journal header.
const MAGIC: [u8; 8] = [0xd9, 0xd5, 0x05, 0xf9, 0x20, 0xa1, 0x63, 0xd7];

/// A journal header: where it is, how long (a sector), its random checksum salt, and the
/// records it counts (0: not yet synced, up to the end of the file; all ones: unknown).
#[derive(Clone, Copy)]
struct Header {
    at: i64,
    len: i64,
    salt: u32,
    records: u32,
}

/// The rollback journal: headers as SQLite writes them (they hold no page content);
/// records (page number, page, checksum) buffered until whole, then sealed as one.
pub(crate) struct Journal {
    c: Arc<PageCipher>,
    headers: Vec<Header>,
    /// A record being written: its offset and the bytes so far.
    pending: Option<(i64, Vec<u8>)>,
    /// The record last opened for reading: its offset and plaintext.
    cached: Option<(i64, Vec<u8>)>,
}

impl Journal {
    pub(crate) fn new(c: Arc<PageCipher>) -> Journal {
        Journal {
            c,
            headers: Vec::new(),
            pending: None,
            cached: None,
        }
    }

    fn record_len(&self) -> i64 {
        self.c.page_size as i64 + 8
    }

    fn header_of(&self, off: i64) -> Option<Header> {
        self.headers.iter().rev().find(|h| h.at <= off).copied()
    }

    /// Records a header written or read at `at` (its magic and record count may still be
    /// zero: SQLite writes them when it syncs the journal).
    fn learn_header(&mut self, at: i64, bytes: &[u8]) {
        if bytes.len() < 28 {
            return;
        }
        let be = |i: usize| u32::from_be_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
        let sector = i64::from(be(20)).clamp(512, 65536);
        self.headers.retain(|h| h.at != at);
        self.headers.push(Header {
            at,
            len: sector,
            salt: be(12),
            records: be(8),
        });
        self.headers.sort_by_key(|h| h.at);
    }

    /// Seals (`seal`) or opens a whole record (8 + P bytes) for offset `at` in place: the
    /// page number, the page's content and the checksum are one AEAD message, its nonce
    /// and tag in the page's reserved bytes. False if it fails (to authenticate).
    fn apply_record(&self, seal: bool, salt: u32, at: i64, rec: &mut [u8]) -> bool {
        let (p, body) = (self.c.page_size, self.c.page_size - self.c.reserve());
        let mut msg = Vec::with_capacity(body + 8);
        msg.extend_from_slice(&rec[..4 + body]);
        msg.extend_from_slice(&rec[4 + p..]);
        let aad = self.c.record_aad(salt, at as u64);
        let tail = &mut rec[4 + body..4 + p];
        let done = if seal {
            self.c.seal(&aad, &mut msg, tail)
        } else {
            self.c.open(&aad, &mut msg, tail)
        };
        if done {
            rec[..4 + body].copy_from_slice(&msg[..4 + body]);
            rec[4 + p..].copy_from_slice(&msg[4 + body..]);
        }
        done
    }
}

impl SealedFile for Journal {
    fn write(&mut self, off: i64, data: &[u8], real: &mut dyn RealFile) -> c_int {
        self.cached = None;
        let h = self.header_of(off);
        if let Some(h) = h.filter(|h| off < h.at + h.len) {
            // A header field (magic and record count at sync) or a header being zeroed.
            if off == h.at && data.len() >= 12 {
                let records = u32::from_be_bytes([data[8], data[9], data[10], data[11]]);
                self.headers
                    .iter_mut()
                    .filter(|x| x.at == h.at)
                    .for_each(|x| x.records = records);
            }
            return real.write(off, data);
        }
        if self.pending.is_none() && data.len() >= 28 {
            // A new header (a sector, or a page if smaller): no page content in it.
            self.learn_header(off, data);
            return real.write(off, data);
        }
        let Some(h) = h else {
            return SQLITE_IOERR_WRITE;
        };
        let (p, n) = (self.c.page_size as i64, self.record_len());
        match self.pending.take() {
            None if data.len() == 4 && (off - h.at - h.len) % n == 0 => {
                self.pending = Some((off, data.to_vec()));
                SQLITE_OK
            }
            Some((at, mut rec))
                if off == at + rec.len() as i64 && (rec.len() == 4 || rec.len() == 4 + p as usize) =>
            {
                rec.extend_from_slice(data);
                if rec.len() as i64 == n {
                    if !self.apply_record(true, h.salt, at, &mut rec) {
                        return SQLITE_IOERR_WRITE;
                    }
                    return real.write(at, &rec);
                }
                if rec.len() != 4 + p as usize {
                    return SQLITE_IOERR_WRITE;
                }
                self.pending = Some((at, rec));
                SQLITE_OK
            }
            // Anything else (a super-journal name of a transaction over several
            // databases, among others) is not sealed: refused.
            _ => SQLITE_IOERR_WRITE,
        }
    }

    fn read(&mut self, off: i64, out: &mut [u8], real: &mut dyn RealFile) -> c_int {
        let header = self.header_of(off);
        let n = self.record_len();
        // Past a segment's counted records comes the next segment's header.
        let outside_records = header.is_none_or(|h| {
            off < h.at + h.len
                || (h.records != 0 && h.records != u32::MAX && off >= h.at + h.len + i64::from(h.records) * n)
        });
        if outside_records {
            let rc = real.read(off, out);
            if rc == SQLITE_OK && out.len() >= 8 && out[..8] == MAGIC {
                let mut head = [0u8; 28];
                if real.read(off, &mut head) == SQLITE_OK {
                    self.learn_header(off, &head);
                }
            }
            return rc;
        }
        let Some(h) = header else {
            return SQLITE_IOERR_DATA;
        };
        let at = h.at + h.len + (off - h.at - h.len) / n * n;
        if off + out.len() as i64 > at + n {
            return SQLITE_IOERR_DATA;
        }
        if self.cached.as_ref().is_none_or(|(c, _)| *c != at) {
            let mut rec = vec![0u8; n as usize];
            let rc = real.read(at, &mut rec);
            if rc != SQLITE_OK && rc != SQLITE_IOERR_SHORT_READ {
                return rc;
            }
            // A record that does not authenticate (torn by a crash, or damaged) reads as
            // zeros: page number 0 ends SQLite's playback there.
            if rc == SQLITE_IOERR_SHORT_READ || !self.apply_record(false, h.salt, at, &mut rec) {
                rec.fill(0);
            }
            self.cached = Some((at, rec));
        }
        let Some((_, rec)) = &self.cached else {
            return SQLITE_IOERR_DATA;
        };
        let from = (off - at) as usize;
        out.copy_from_slice(&rec[from..from + out.len()]);
        SQLITE_OK
    }

    fn truncated(&mut self, size: i64) {
        self.headers.retain(|h| h.at < size);
        self.pending = None;
        self.cached = None;
    }
}
