//! The journal: every page reaches the tablespace file through it, so a crash, even in
//! the middle of a page write, leaves each page at its old or its new content.
//!
//! Invariant: a page is written in place only after a commit record covering its frame is
//! durable in the journal, and the journal is emptied only after those in-place writes are
//! durable. Recovery replays the committed frames (idempotently) and drops the rest.
//! The journal holds exactly the bytes the file would: sealed pages and the header page,
//! so it is ciphertext like the file.
//!
//! File layout: a 64-byte journal header, then records. Integers little-endian.
//!
//! ```text
//! header  0  8  magic "TDEJRNL\0"
//!         8  16 tablespace id
//!         24 4  physical page size
//!         28 4  zero
//!         32 32 SHA-256 of bytes 0..32
//! frame   0  8  physical page number (< u64::MAX)
//!         8  P  the page as it goes to disk (sealed data page, or header page)
//! commit  0  8  u64::MAX
//!         8  8  number of frames since the previous commit
//!         16 32 chain: SHA-256(previous chain || every frame record since the previous
//!               commit); the first chain value is SHA-256("tde journal\0" || tablespace id)
//! ```
//!
//! The header never changes after creation, so a tablespace whose own header page was
//! torn by a crash can still be identified and recovered from its journal.
//!
//! The chain makes a torn or partly written batch detectable without any key; whether a
//! committed frame is authentic is checked with the data key before it is replayed.

use std::collections::HashMap;
use std::io;

use sha2::{Digest, Sha256};

use super::io::{PageFile, PageIo};

const PAGE_NO_LEN: usize = 8;
const COMMIT_MARK: u64 = u64::MAX;
const COUNT_LEN: usize = 8;
const CHAIN_LEN: usize = 32;
const COMMIT_LEN: usize = PAGE_NO_LEN + COUNT_LEN + CHAIN_LEN;
const MAGIC: [u8; 8] = *b"TDEJRNL\0";
/// Bytes of the journal header; records start here.
pub(crate) const HEADER_LEN: u64 = 64;

fn encode_header(tablespace: &[u8; 16], page_size: usize) -> [u8; HEADER_LEN as usize] {
    let mut h = [0u8; HEADER_LEN as usize];
    h[..8].copy_from_slice(&MAGIC);
    h[8..24].copy_from_slice(tablespace);
    h[24..28].copy_from_slice(&(page_size as u32).to_le_bytes());
    let sum = Sha256::digest(&h[..32]);
    h[32..].copy_from_slice(&sum);
    h
}

/// Reads the journal header: `None` if the journal is empty, else the tablespace id and
/// page size it belongs to.
///
/// # Errors
/// `InvalidData` if the header is damaged; other I/O errors.
pub(crate) fn read_header(io: &dyn PageIo) -> io::Result<Option<([u8; 16], usize)>> {
    let len = io.len(PageFile::Journal)?;
    if len == 0 {
        return Ok(None);
    }
    let mut h = [0u8; HEADER_LEN as usize];
    if len < HEADER_LEN {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "journal header is truncated",
        ));
    }
    io.read_exact_at(PageFile::Journal, 0, &mut h)?;
    if h[..8] != MAGIC || Sha256::digest(&h[..32])[..] != h[32..] {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "journal header is damaged",
        ));
    }
    let mut id = [0u8; 16];
    id.copy_from_slice(&h[8..24]);
    let mut size = [0u8; 4];
    size.copy_from_slice(&h[24..28]);
    Ok(Some((id, u32::from_le_bytes(size) as usize)))
}

/// The in-memory state of a tablespace's journal.
#[derive(Debug)]
pub(crate) struct Journal {
    page_size: usize,
    seed: [u8; 32],
    /// Bytes in the journal file.
    len: u64,
    /// Physical page number → offset of its newest frame's page bytes.
    index: HashMap<u64, u64>,
    /// Chain value at the last commit.
    chain: [u8; 32],
    batch: Sha256,
    batch_frames: u64,
    /// Write buffer for one record.
    record: Vec<u8>,
}

impl Journal {
    /// Starts a new, empty journal file: writes its header and makes it durable.
    ///
    /// # Errors
    /// The I/O error.
    pub(crate) fn create(io: &dyn PageIo, tablespace: &[u8; 16], page_size: usize) -> io::Result<Journal> {
        Journal::write_header(io, tablespace, page_size)?;
        Ok(Journal::new(tablespace, page_size))
    }

    /// An empty journal whose file is not written yet (see [`Journal::write_header`]).
    pub(crate) fn empty(tablespace: &[u8; 16], page_size: usize) -> Journal {
        Journal::new(tablespace, page_size)
    }

    /// Empties the journal file and writes its header, durably.
    ///
    /// # Errors
    /// The I/O error.
    pub(crate) fn write_header(io: &dyn PageIo, tablespace: &[u8; 16], page_size: usize) -> io::Result<()> {
        io.set_len(PageFile::Journal, 0)?;
        io.write_all_at(PageFile::Journal, 0, &encode_header(tablespace, page_size))?;
        io.sync(PageFile::Journal)
    }

    fn new(tablespace: &[u8; 16], page_size: usize) -> Journal {
        let mut seed = Sha256::new();
        seed.update(b"tde journal\0");
        seed.update(tablespace);
        let seed: [u8; 32] = seed.finalize().into();
        Journal {
            page_size,
            seed,
            len: HEADER_LEN,
            index: HashMap::new(),
            chain: seed,
            batch: chain_hasher(&seed),
            batch_frames: 0,
            record: Vec::with_capacity(PAGE_NO_LEN + page_size),
        }
    }

    /// Reads the journal file (whose header the caller has checked): the committed frames are indexed; a torn or uncommitted
    /// tail is ignored (the next checkpoint truncates it).
    ///
    /// # Errors
    /// The I/O error.
    pub(crate) fn recover(io: &dyn PageIo, tablespace: &[u8; 16], page_size: usize) -> io::Result<Journal> {
        let mut journal = Journal::new(tablespace, page_size);
        let end = io.len(PageFile::Journal)?;
        let mut at = HEADER_LEN;
        let mut pending: Vec<(u64, u64)> = Vec::new();
        let mut page = vec![0u8; page_size];
        let mut word = [0u8; 8];
        while at + PAGE_NO_LEN as u64 <= end {
            io.read_exact_at(PageFile::Journal, at, &mut word)?;
            let page_no = u64::from_le_bytes(word);
            if page_no == COMMIT_MARK {
                if at + COMMIT_LEN as u64 > end {
                    break;
                }
                let mut rest = [0u8; COUNT_LEN + CHAIN_LEN];
                io.read_exact_at(PageFile::Journal, at + PAGE_NO_LEN as u64, &mut rest)?;
                let count = u64::from_le_bytes(rest[..COUNT_LEN].try_into().unwrap_or_default());
                let expected: [u8; 32] = std::mem::replace(&mut journal.batch, Sha256::new())
                    .finalize()
                    .into();
                if count != pending.len() as u64 || rest[COUNT_LEN..] != expected {
                    if at + (COMMIT_LEN as u64) < end {
                        // Records follow this commit, and they are only ever appended
                        // after it was durable: it was damaged after the fact.
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("the batch committed at offset {at} fails its checksum"),
                        ));
                    }
                    // The last batch: a crash before its fsync completed. It was never
                    // acknowledged; drop it.
                    break;
                }
                for (page_no, offset) in pending.drain(..) {
                    journal.index.insert(page_no, offset);
                }
                journal.chain = expected;
                journal.batch = chain_hasher(&expected);
                at += COMMIT_LEN as u64;
                journal.len = at;
            } else {
                let record_len = (PAGE_NO_LEN + page_size) as u64;
                if at + record_len > end {
                    break;
                }
                io.read_exact_at(PageFile::Journal, at + PAGE_NO_LEN as u64, &mut page)?;
                journal.batch.update(word);
                journal.batch.update(&page);
                pending.push((page_no, at + PAGE_NO_LEN as u64));
                at += record_len;
            }
        }
        journal.batch = chain_hasher(&journal.chain);
        Ok(journal)
    }

    /// Whether the journal holds no frames.
    pub(crate) fn is_empty(&self) -> bool {
        self.index.is_empty() && self.batch_frames == 0
    }

    /// Bytes in the journal file.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// Where the newest frame of `page` starts, if the journal has one.
    pub(crate) fn find(&self, page: u64) -> Option<u64> {
        self.index.get(&page).copied()
    }

    /// Committed and uncommitted pages in the journal, by page number.
    pub(crate) fn pages(&self) -> Vec<(u64, u64)> {
        let mut pages: Vec<_> = self.index.iter().map(|(p, o)| (*p, *o)).collect();
        pages.sort_unstable();
        pages
    }

    /// Appends a frame for `page` (not yet committed).
    ///
    /// # Errors
    /// The I/O error; the journal's state is then unknown and the caller must stop writing.
    pub(crate) fn append(&mut self, io: &dyn PageIo, page: u64, bytes: &[u8]) -> io::Result<()> {
        debug_assert_eq!(bytes.len(), self.page_size);
        self.record.clear();
        self.record.extend_from_slice(&page.to_le_bytes());
        self.record.extend_from_slice(bytes);
        io.write_all_at(PageFile::Journal, self.len, &self.record)?;
        self.batch.update(&self.record);
        self.batch_frames += 1;
        self.index.insert(page, self.len + PAGE_NO_LEN as u64);
        self.len += self.record.len() as u64;
        Ok(())
    }

    /// Makes every frame appended so far durable and committed. A no-op if there are none.
    ///
    /// # Errors
    /// The I/O error (including a failed fsync); the caller must stop writing.
    pub(crate) fn commit(&mut self, io: &dyn PageIo) -> io::Result<()> {
        if self.batch_frames == 0 {
            return Ok(());
        }
        let chain: [u8; 32] = std::mem::replace(&mut self.batch, Sha256::new())
            .finalize()
            .into();
        let mut record = [0u8; COMMIT_LEN];
        record[..PAGE_NO_LEN].copy_from_slice(&COMMIT_MARK.to_le_bytes());
        record[PAGE_NO_LEN..PAGE_NO_LEN + COUNT_LEN].copy_from_slice(&self.batch_frames.to_le_bytes());
        record[PAGE_NO_LEN + COUNT_LEN..].copy_from_slice(&chain);
        io.write_all_at(PageFile::Journal, self.len, &record)?;
        io.sync(PageFile::Journal)?;
        self.len += COMMIT_LEN as u64;
        self.chain = chain;
        self.batch = chain_hasher(&chain);
        self.batch_frames = 0;
        Ok(())
    }

    /// Reads the page bytes of the frame at `offset` into `buf`.
    ///
    /// # Errors
    /// The I/O error.
    pub(crate) fn read(&self, io: &dyn PageIo, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        io.read_exact_at(PageFile::Journal, offset, buf)
    }

    /// Writes every committed page in place, makes the file durable, and empties the
    /// journal. Must follow a [`Journal::commit`] (there are no uncommitted frames).
    ///
    /// The truncation is synced too, so that the journal only ever holds batches
    /// appended after a durable truncation (recovery relies on it to tell damage from a
    /// crash).
    ///
    /// # Errors
    /// The I/O error; the caller must stop writing.
    pub(crate) fn checkpoint(&mut self, io: &dyn PageIo) -> io::Result<()> {
        debug_assert_eq!(self.batch_frames, 0, "checkpoint of uncommitted frames");
        if self.index.is_empty() && self.len == HEADER_LEN {
            return Ok(());
        }
        let mut page = vec![0u8; self.page_size];
        for (page_no, offset) in self.pages() {
            io.read_exact_at(PageFile::Journal, offset, &mut page)?;
            io.write_all_at(PageFile::Data, page_no * self.page_size as u64, &page)?;
        }
        io.sync(PageFile::Data)?;
        io.set_len(PageFile::Journal, HEADER_LEN)?;
        io.sync(PageFile::Journal)?;
        self.len = HEADER_LEN;
        self.index.clear();
        self.chain = self.seed;
        self.batch = chain_hasher(&self.seed);
        Ok(())
    }
}

fn chain_hasher(previous: &[u8; 32]) -> Sha256 {
    let mut h = Sha256::new();
    h.update(previous);
    h
}
