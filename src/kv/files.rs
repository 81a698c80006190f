//! Encryption of every file RocksDB writes: the 4096-byte file header, the routing of
//! files to keys (SSTs to their column family's key, everything else to the store key),
//! and the sealing of format 2's chunks and frames (the file system itself is in
//! `src/ffi/rocksdb_shim.cc`).
//!
//! ```text
//! file header (prefix), 4096 bytes; all integers little-endian
//! offset  size  field
//! 0       8     magic "TDEFILE\0"
//! 8       2     header format version: 2 (1: AES-CTR files of earlier releases, read only)
//! 10      1     suite id (1 = AES-256-GCM, 2 = SM4-GCM, 3 = AEGIS-256)
//! 11      1     kind (format 2): 1 = table file (SST, blob), 2 = log (everything else)
//! 12      16    store id
//! 28      4     table id (0 = store-level key)
//! 32      4     data key version
//! 36      16    IV, random from the OS CSPRNG
//! 52      8     key check value: HKDF(file key, "tde file kcv")[..8]
//! 60      8     SHA-256 of bytes 0..60, first 8 bytes
//! 68      ...   zero up to 4096 (checked: every byte counts)
//!
//! format 2, after the header
//! table file: chunk 0 | trailer 0 | chunk 1 | trailer 1 | ...   (4096-byte chunks, the
//!             last one shorter; logical offset L is at 4096 + (L / 4096) * 4148 + L % 4096)
//! log:        trailer | frame | trailer | frame | ...            (frames of 1..65536 bytes)
//! trailer, 52 bytes: word (4: length, bit 31 = "another frame of this flush follows")
//!             | nonce (32: 12 for the GCM suites, then zeros) | tag (16)
//! AEAD key:   HKDF(data key, salt = IV, "tde chunk key"): one key per file
//! AAD:        "tde file\0" | store id | table id | version | IV | kind
//!             | chunk index (table) or logical offset of the frame (log), u64 | word
//! ```
//!
//! Invariant: the prefix length never changes (RocksDB sees logical sizes and offsets). A
//! file whose header names another store, an unknown key version, or whose key check
//! value does not match, is refused with an error saying which, never decrypted into
//! garbage.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use sha2::{Digest, Sha256};

use crate::cipher::kdf::{derive_key, hkdf};
use crate::cipher::{FileStream, STREAM_IV_LEN, Suite};
use crate::error::os_random;
use crate::ffi::rocksdb::{CORRUPTION, FileCrypto, IO_ERROR};
use crate::secret::{DataKey, ct_eq};

/// Length of the header at the start of every file.
pub const PREFIX_LEN: usize = 4096;
const MAGIC: &[u8; 8] = b"TDEFILE\0";
const HEADER_FORMAT: u16 = 1;
/// Format 2: every byte authenticated, in chunks (table files) or frames (logs).
const HEADER_FORMAT_CHUNKED: u16 = 2;
/// Where format 2 records the kind of file.
const KIND_AT: usize = SUITE_AT + 1;
/// A table file (SST, blob): fixed chunks, read at random.
pub(crate) const KIND_TABLE: u8 = 1;
/// Any other file: a sequence of frames, read in order.
pub(crate) const KIND_LOG: u8 = 2;
/// Bytes after each chunk, or before each frame: length (u32), nonce (32; GCM uses the
/// first 12), tag (16).
pub(crate) const TRAILER: usize = 52;
/// Logical bytes per chunk of a table file.
const CHUNK: usize = 4096;
/// The largest frame of a log.
const MAX_FRAME: usize = 64 << 10;
/// What [`ChunkFile::read_each`] hands on.
pub(crate) enum Piece<'a> {
    /// Authenticated plaintext, in order.
    Data(&'a [u8]),
    /// What came before may be kept: a whole chunk, or the end of a log's flush.
    Whole,
}

/// Bit 31 of a trailer's word: a log frame that another frame of the same flush follows.
const MORE: u32 = 1 << 31;
/// Associated data every chunk carries: store id, table id, key version, file IV, kind.
const BOUND: usize = 41;

/// The sealing of one format-2 file: a key of its own (from the table's file key and the
/// file's IV) and what every chunk is bound to.
pub(crate) struct ChunkFile {
    key: crate::cipher::AeadKey,
    bound: [u8; BOUND],
}

impl ChunkFile {
    fn aad(&self, index: u64, word: u32) -> [u8; BOUND + 21] {
        let mut aad = [0u8; BOUND + 21];
        aad[..9].copy_from_slice(b"tde file\0");
        aad[9..9 + BOUND].copy_from_slice(&self.bound);
        aad[9 + BOUND..17 + BOUND].copy_from_slice(&index.to_le_bytes());
        aad[17 + BOUND..].copy_from_slice(&word.to_le_bytes());
        aad
    }

    /// Seals `data` (chunk or frame `index`) in place; fills `trailer`. `more`: a log's
    /// frame that another frame of the same flush follows.
    pub(crate) fn seal(
        &self,
        index: u64,
        data: &mut [u8],
        trailer: &mut [u8; TRAILER],
        more: bool,
    ) -> crate::error::Result<()> {
        let word = u32::try_from(data.len())
            .ok()
            .filter(|&len| len & MORE == 0)
            .ok_or_else(|| crate::error::Error::InvalidArgument("a chunk or frame is too long".into()))?
            | if more { MORE } else { 0 };
        let d = self.key.seal_detached(&self.aad(index, word), data)?;
        trailer.fill(0);
        trailer[..4].copy_from_slice(&word.to_le_bytes());
        let n = d.nonce.as_slice();
        trailer[4..4 + n.len()].copy_from_slice(n);
        trailer[36..].copy_from_slice(&d.tag);
        Ok(())
    }

    /// Reads the `len` bytes after a file's header from `body`, authenticating them as it
    /// goes, and hands on the plaintext: a table file's chunks, or a log's frames, each
    /// followed by [`Piece::Whole`] where what came before can be kept (after every chunk;
    /// at the end of every flush of a log). With `may_tear`, a torn tail (a last frame cut
    /// short or not authenticating, zeros, and an unfinished flush before them) ends the
    /// file, as the file system cuts it; without, it is an error. Memory stays bounded by
    /// one frame, whatever `len` is.
    pub(crate) fn read_each(
        &self,
        body: &mut dyn std::io::Read,
        len: u64,
        may_tear: bool,
        sink: &mut dyn FnMut(Piece<'_>),
    ) -> crate::error::Result<()> {
        let bad = |what: String| crate::error::Error::Authentication { location: what };
        let read = |body: &mut dyn std::io::Read, buf: &mut [u8]| {
            body.read_exact(buf)
                .map_err(|e| crate::error::Error::io("reading a store file", e))
        };
        let mut at = 0u64;
        if self.bound[40] == KIND_TABLE {
            let mut buf = [0u8; CHUNK + TRAILER];
            let mut index = 0u64;
            while at < len {
                let slot = (len - at).min((CHUNK + TRAILER) as u64) as usize;
                if slot <= TRAILER {
                    return Err(bad(format!("chunk {index} is truncated")));
                }
                read(body, &mut buf[..slot])?;
                let (data, trailer) = buf[..slot].split_at_mut(slot - TRAILER);
                let trailer: &[u8; TRAILER] = (&*trailer).try_into().unwrap_or(&[0; TRAILER]);
                self.open(index, data, trailer)?;
                sink(Piece::Data(data));
                sink(Piece::Whole);
                at += slot as u64;
                index += 1;
            }
            return Ok(());
        }
        let mut buf = vec![0u8; TRAILER + MAX_FRAME];
        let (mut logical, mut more, mut head_read) = (0u64, false, false);
        while len - at >= TRAILER as u64 {
            let rest = len - at;
            read(body, &mut buf[..TRAILER])?;
            let word = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]);
            let flen = (word & !MORE) as usize;
            if flen == 0 || flen > MAX_FRAME || (TRAILER + flen) as u64 > rest {
                head_read = true;
                break;
            }
            read(body, &mut buf[TRAILER..TRAILER + flen])?;
            let (trailer, data) = buf.split_at_mut(TRAILER);
            let trailer: &[u8; TRAILER] = (&*trailer).try_into().unwrap_or(&[0; TRAILER]);
            match self.open(logical, &mut data[..flen], trailer) {
                Ok(()) => {}
                // A torn last frame.
                Err(_) if (TRAILER + flen) as u64 == rest => break,
                Err(e) => return Err(e),
            }
            sink(Piece::Data(&data[..flen]));
            more = word & MORE != 0;
            if !more {
                sink(Piece::Whole);
            }
            at += (TRAILER + flen) as u64;
            logical += flen as u64;
        }
        // After the frames, only what a crash leaves: less than a trailer, one frame cut
        // short (or not authenticating), or zeros.
        let rest = len - at;
        let cut_short = rest < TRAILER as u64 || !head_read || {
            let flen = (u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) & !MORE) as u64;
            (1..=MAX_FRAME as u64).contains(&flen) && TRAILER as u64 + flen >= rest
        };
        if !cut_short {
            let mut zeros = buf[..TRAILER].iter().all(|&b| b == 0);
            let mut left = rest - TRAILER as u64;
            while zeros && left > 0 {
                let n = left.min(buf.len() as u64) as usize;
                read(body, &mut buf[..n])?;
                zeros = buf[..n].iter().all(|&b| b == 0);
                left -= n as u64;
            }
            if !zeros {
                return Err(bad(format!(
                    "the bytes at offset {} are neither a frame nor a torn tail",
                    PREFIX_LEN as u64 + at
                )));
            }
        }
        if !may_tear && (at != len || more) {
            return Err(bad("its last frame does not authenticate (a torn tail)".into()));
        }
        Ok(())
    }

    /// Appends `plain`, sealed, to `out` (which holds the file's header): a log's frames or
    /// a table file's chunks.
    pub(crate) fn write_all(&self, plain: &[u8], out: &mut Vec<u8>) -> crate::error::Result<()> {
        let table = self.bound[40] == KIND_TABLE;
        let step = if table { CHUNK } else { MAX_FRAME };
        let pieces = plain.len().div_ceil(step);
        for (i, piece) in plain.chunks(step).enumerate() {
            let index = if table { i as u64 } else { (i * step) as u64 };
            let mut trailer = [0u8; TRAILER];
            let mut sealed = piece.to_vec();
            // A log is rewritten as one flush.
            self.seal(index, &mut sealed, &mut trailer, !table && i + 1 < pieces)?;
            if table {
                out.extend_from_slice(&sealed);
                out.extend_from_slice(&trailer);
            } else {
                out.extend_from_slice(&trailer);
                out.extend_from_slice(&sealed);
            }
        }
        Ok(())
    }

    /// Opens `data` (chunk or frame `index`) in place against `trailer`.
    pub(crate) fn open(
        &self,
        index: u64,
        data: &mut [u8],
        trailer: &[u8; TRAILER],
    ) -> crate::error::Result<()> {
        let word = u32::from_le_bytes([trailer[0], trailer[1], trailer[2], trailer[3]]);
        let len = (word & !MORE) as usize;
        if len != data.len() {
            return Err(crate::error::Error::Authentication {
                location: format!("chunk {index} (its length does not match)"),
            });
        }
        let nonce_len = self.key.suite().nonce_len();
        // The nonce field's unused bytes (GCM suites) must be zero: every byte counts.
        if trailer[4 + nonce_len..36].iter().any(|&b| b != 0) {
            return Err(crate::error::Error::Authentication {
                location: format!("chunk {index} (its trailer is not in the canonical form)"),
            });
        }
        let mut tag = [0u8; crate::cipher::TAG_LEN];
        tag.copy_from_slice(&trailer[36..]);
        let d = crate::cipher::Detached {
            nonce: crate::cipher::Nonce::from_slice(&trailer[4..4 + nonce_len])?,
            tag,
        };
        self.key.open_detached(&self.aad(index, word), &d, data)
    }
}
const FORMAT_AT: usize = 8;
const SUITE_AT: usize = FORMAT_AT + 2;
const STORE_AT: usize = SUITE_AT + 2;
const TABLE_AT: usize = STORE_AT + 16;
const VERSION_AT: usize = TABLE_AT + 4;
const IV_AT: usize = VERSION_AT + 4;
const KCV_AT: usize = IV_AT + STREAM_IV_LEN;
const SUM_AT: usize = KCV_AT + 8;
const HEADER_END: usize = SUM_AT + 8;

/// A file key: derived from a data key, used only for file streams.
pub(crate) struct FileKey {
    suite: Suite,
    key: DataKey,
    kcv: [u8; 8],
}

impl FileKey {
    pub(crate) fn derive(
        suite: Suite,
        dk: &DataKey,
        store_id: &[u8; 16],
        table_id: u32,
        version: u32,
    ) -> FileKey {
        let mut info = b"tde kv file key\0".to_vec();
        info.extend_from_slice(&table_id.to_le_bytes());
        info.extend_from_slice(&version.to_le_bytes());
        let key = derive_key(dk, store_id, &info, suite.key_len());
        let kcv_bytes = hkdf(key.expose(), b"", b"tde file kcv", 8);
        let mut kcv = [0u8; 8];
        kcv.copy_from_slice(&kcv_bytes);
        FileKey { suite, key, kcv }
    }
}

/// Which key new files of each column family get, and every key files may name.
pub(crate) struct StoreFiles {
    store_id: [u8; 16],
    keys: RwLock<HashMap<(u32, u32), Arc<FileKey>>>,
    /// Column family name → (table id, version) for new SSTs.
    current: RwLock<HashMap<String, (u32, u32)>>,
    /// The store-level (table 0) version for every other file.
    store_version: RwLock<u32>,
    /// SST file name → its route, announced by the listener.
    pending: Mutex<HashMap<String, Route>>,
    /// Logs whose torn last frame the file system cut: file name → bytes cut.
    torn: Mutex<std::collections::BTreeMap<String, u64>>,
}

/// Where a new SST file's key comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    /// A table's current (table id, version).
    Table(u32, u32),
    /// The store-level key (the `default` column family, which holds no table).
    Store,
    /// A column family whose table was dropped or revoked: nothing may be written for it.
    Refused,
}

fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

impl StoreFiles {
    pub(crate) fn new(store_id: [u8; 16], store_version: u32) -> StoreFiles {
        StoreFiles {
            store_id,
            keys: RwLock::new(HashMap::new()),
            current: RwLock::new(HashMap::new()),
            store_version: RwLock::new(store_version),
            pending: Mutex::new(HashMap::new()),
            torn: Mutex::new(std::collections::BTreeMap::new()),
        }
    }

    /// The logs whose torn tails were cut since the last call: (file name, bytes cut).
    pub(crate) fn take_torn(&self) -> Vec<(String, u64)> {
        std::mem::take(&mut *self.torn.lock()).into_iter().collect()
    }

    pub(crate) fn add_key(&self, table_id: u32, version: u32, key: FileKey) {
        self.keys.write().insert((table_id, version), Arc::new(key));
    }

    pub(crate) fn set_current(&self, cf: &str, table_id: u32, version: u32) {
        self.current.write().insert(cf.to_owned(), (table_id, version));
    }

    pub(crate) fn remove_table(&self, cf: &str, table_id: u32) {
        self.current.write().remove(cf);
        self.keys.write().retain(|(t, _), _| *t != table_id);
    }

    pub(crate) fn remove_key(&self, table_id: u32, version: u32) {
        self.keys.write().remove(&(table_id, version));
    }

    pub(crate) fn set_store_version(&self, version: u32) {
        *self.store_version.write() = version;
    }

    /// Opens a store file and checks its header.
    fn open_file(&self, path: &std::path::Path) -> crate::error::Result<StoreFile> {
        use std::io::Read;
        let name = path.display().to_string();
        let io = |e| crate::error::Error::io(format!("reading {}", path.display()), e);
        let mut file = std::io::BufReader::with_capacity(1 << 16, std::fs::File::open(path).map_err(io)?);
        let len = file.get_ref().metadata().map_err(io)?.len();
        // Logs that RocksDB appends to may end in a torn tail (a crash), even one that cuts
        // their header; the files it syncs before renaming them into place may not.
        let base = file_name(&name);
        let may_tear = base.ends_with(".log") || base.starts_with("MANIFEST-") || base.starts_with("LOG");
        if len < PREFIX_LEN as u64 {
            if may_tear {
                return Ok(StoreFile::Empty);
            }
            return Err(crate::error::Error::Authentication {
                location: format!("{name}: shorter than its header"),
            });
        }
        let mut prefix = vec![0u8; PREFIX_LEN];
        file.read_exact(&mut prefix).map_err(io)?;
        let len = len - PREFIX_LEN as u64;
        // A header that fails its checks: the message names the file.
        let authentication = |(_, location): (i32, String)| crate::error::Error::Authentication { location };
        if prefix[FORMAT_AT..SUITE_AT] == HEADER_FORMAT.to_le_bytes() {
            let stream = self.open_stream(&name, &prefix).map_err(authentication)?;
            return Ok(StoreFile::Format1 { stream, file });
        }
        let chunks = self.open_chunked(&name, &prefix).map_err(authentication)?;
        Ok(StoreFile::Format2 {
            chunks,
            file,
            len,
            may_tear,
        })
    }

    /// Reads a format-2 file through `sink`; an authentication failure names the file.
    fn read_format2(
        path: &std::path::Path,
        file: StoreFile,
        sink: &mut dyn FnMut(Piece<'_>),
    ) -> crate::error::Result<()> {
        let StoreFile::Format2 {
            chunks,
            mut file,
            len,
            may_tear,
        } = file
        else {
            return Ok(());
        };
        chunks
            .read_each(&mut file, len, may_tear, sink)
            .map_err(|e| match e {
                crate::error::Error::Authentication { location } => crate::error::Error::Authentication {
                    location: format!("{}: {location}", path.display()),
                },
                crate::error::Error::Io { source, .. } => {
                    crate::error::Error::io(format!("reading {}", path.display()), source)
                }
                e => e,
            })
    }

    /// Reads and authenticates a whole store file, in pieces of at most one frame;
    /// returns its plaintext length.
    pub(crate) fn verify_file(&self, path: &std::path::Path) -> crate::error::Result<u64> {
        let file = self.open_file(path)?;
        if let StoreFile::Format1 { .. } = file {
            return Err(crate::error::Error::Corrupt {
                what: "store file",
                path: path.to_path_buf(),
                detail: "format 1 (written by an earlier release: encrypted, not authenticated); \
                         `tde upgrade` rewrites it"
                    .into(),
            });
        }
        let (mut read, mut whole) = (0u64, 0u64);
        StoreFiles::read_format2(path, file, &mut |piece| match piece {
            Piece::Data(data) => read += data.len() as u64,
            Piece::Whole => whole = read,
        })?;
        Ok(whole)
    }

    /// Re-encrypts a file RocksDB no longer writes (and reads only at open) under the
    /// current store-level version, in format 2: a new file with a fresh IV replaces it
    /// atomically.
    pub(crate) fn rewrite_store_file(&self, path: &std::path::Path) -> crate::error::Result<()> {
        use std::io::Write;
        let io =
            |what: &str, e: std::io::Error| crate::error::Error::io(format!("{what} {}", path.display()), e);
        use std::io::Read;
        let name = path.display().to_string();
        // Files RocksDB reads only at open: small (IDENTITY, OPTIONS, old info logs).
        let mut plain = zeroize::Zeroizing::new(Vec::new());
        match self.open_file(path)? {
            StoreFile::Empty => {}
            StoreFile::Format1 { stream, mut file } => {
                file.read_to_end(&mut plain).map_err(|e| io("reading", e))?;
                stream.apply(PREFIX_LEN as u64, &mut plain)?;
            }
            file => {
                let mut whole = 0;
                StoreFiles::read_format2(path, file, &mut |piece| match piece {
                    Piece::Data(data) => plain.extend_from_slice(data),
                    Piece::Whole => whole = plain.len(),
                })?;
                plain.truncate(whole);
            }
        }
        let corrupt = |(_, detail): (i32, String)| crate::error::Error::Corrupt {
            what: "store file",
            path: path.to_path_buf(),
            detail,
        };
        let mut out = vec![0u8; PREFIX_LEN];
        self.new_prefix(&name, &mut out).map_err(corrupt)?;
        let new = self.open_chunked(&name, &out).map_err(corrupt)?;
        new.write_all(&plain, &mut out)?;
        let tmp = path.with_extension("tde-rewrite");
        let mut file = std::fs::File::create(&tmp).map_err(|e| io("creating", e))?;
        file.write_all(&out).map_err(|e| io("writing", e))?;
        file.sync_all().map_err(|e| io("syncing", e))?;
        std::fs::rename(&tmp, path).map_err(|e| io("replacing", e))?;
        Ok(())
    }

    /// Checks a file header of `format` and returns the table, version and key it names.
    fn check_header(&self, fname: &str, prefix: &[u8], format: u16) -> CbResult<(u32, u32, Arc<FileKey>)> {
        let corrupt = |why: String| (CORRUPTION, format!("{fname}: {why}"));
        if prefix.len() < HEADER_END || &prefix[..FORMAT_AT] != MAGIC {
            return Err(corrupt("not an encrypted tde file (bad header magic)".into()));
        }
        let sum = Sha256::digest(&prefix[..SUM_AT]);
        if !ct_eq(&sum[..8], &prefix[SUM_AT..HEADER_END]) {
            return Err(corrupt("the file header is damaged (checksum mismatch)".into()));
        }
        // The rest of the header is zero: every byte of a file counts.
        if prefix[HEADER_END..].iter().any(|&b| b != 0) {
            return Err(corrupt(
                "the file header is damaged (its padding is not zero)".into(),
            ));
        }
        let u32_at =
            |at: usize| u32::from_le_bytes([prefix[at], prefix[at + 1], prefix[at + 2], prefix[at + 3]]);
        let found = u16::from_le_bytes([prefix[FORMAT_AT], prefix[FORMAT_AT + 1]]);
        if found != format {
            return Err(corrupt(format!("unsupported file header format {found}")));
        }
        if prefix[STORE_AT..TABLE_AT] != self.store_id {
            return Err(corrupt(format!(
                "the file belongs to another store ({}), not this one ({})",
                crate::hex::encode(&prefix[STORE_AT..TABLE_AT]),
                crate::hex::encode(&self.store_id)
            )));
        }
        let (table_id, version) = (u32_at(TABLE_AT), u32_at(VERSION_AT));
        let key = self.key(table_id, version).ok_or_else(|| {
            corrupt(format!(
                "no data key for table id {table_id} version {version} in the keyring"
            ))
        })?;
        if !ct_eq(&key.kcv, &prefix[KCV_AT..SUM_AT]) || key.suite.id() != prefix[SUITE_AT] {
            return Err(corrupt(format!(
                "the key check value does not match table id {table_id} version {version}: wrong key"
            )));
        }
        Ok((table_id, version, key))
    }

    fn key(&self, table_id: u32, version: u32) -> Option<Arc<FileKey>> {
        self.keys.read().get(&(table_id, version)).cloned()
    }

    fn header(
        &self,
        table_id: u32,
        version: u32,
        key: &FileKey,
        iv: &[u8; STREAM_IV_LEN],
        kind: u8,
        out: &mut [u8],
    ) {
        out.fill(0);
        out[..FORMAT_AT].copy_from_slice(MAGIC);
        if crate::ffi::rocksdb::write_format1() {
            out[FORMAT_AT..SUITE_AT].copy_from_slice(&HEADER_FORMAT.to_le_bytes());
            out[SUITE_AT] = key.suite.id();
        } else {
            out[FORMAT_AT..SUITE_AT].copy_from_slice(&HEADER_FORMAT_CHUNKED.to_le_bytes());
            out[SUITE_AT] = key.suite.id();
            out[KIND_AT] = kind;
        }
        out[STORE_AT..TABLE_AT].copy_from_slice(&self.store_id);
        out[TABLE_AT..VERSION_AT].copy_from_slice(&table_id.to_le_bytes());
        out[VERSION_AT..IV_AT].copy_from_slice(&version.to_le_bytes());
        out[IV_AT..KCV_AT].copy_from_slice(iv);
        out[KCV_AT..SUM_AT].copy_from_slice(&key.kcv);
        let sum = Sha256::digest(&out[..SUM_AT]);
        out[SUM_AT..HEADER_END].copy_from_slice(&sum[..8]);
    }
}

/// A store file opened for reading, its header checked.
enum StoreFile {
    /// A log cut before its header was whole (a crash): no bytes.
    Empty,
    /// Format 1 (AES-CTR, written by an earlier release): decrypted, not authenticated.
    Format1 {
        stream: FileStream,
        file: std::io::BufReader<std::fs::File>,
    },
    /// Format 2: every byte authenticated.
    Format2 {
        chunks: ChunkFile,
        file: std::io::BufReader<std::fs::File>,
        len: u64,
        may_tear: bool,
    },
}

/// Whether `name` is one of RocksDB's files other than table files: write-ahead logs,
/// MANIFEST, OPTIONS, CURRENT, IDENTITY and info logs.
pub(crate) fn rocksdb_log_name(name: &str) -> bool {
    let numbered = |rest: &str| !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit());
    matches!(name, "CURRENT" | "IDENTITY" | "LOG")
        || name.strip_suffix(".log").is_some_and(numbered)
        || name.strip_prefix("MANIFEST-").is_some_and(numbered)
        || name.strip_prefix("OPTIONS-").is_some_and(numbered)
        || name.strip_prefix("LOG.old.").is_some_and(numbered)
}

/// Whether the file at `path` is a tde file in format 1 (AES-CTR, written by an earlier
/// release).
pub(crate) fn is_format1(path: &std::path::Path) -> bool {
    use std::io::Read;
    let mut header = [0u8; SUITE_AT];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut header))
        .is_ok()
        && &header[..FORMAT_AT] == MAGIC
        && header[FORMAT_AT..SUITE_AT] == HEADER_FORMAT.to_le_bytes()
}

/// The (table id, data key version) a file's header names, or `None` if it is not a tde
/// file (or cannot be read).
pub(crate) fn file_key_of(path: &std::path::Path) -> Option<(u32, u32)> {
    use std::io::Read;
    let mut header = [0u8; HEADER_END];
    std::fs::File::open(path).ok()?.read_exact(&mut header).ok()?;
    if &header[..FORMAT_AT] != MAGIC {
        return None;
    }
    let u32_at = |at: usize| u32::from_le_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]]);
    Some((u32_at(TABLE_AT), u32_at(VERSION_AT)))
}

type CbResult<T> = std::result::Result<T, (i32, String)>;

impl FileCrypto for StoreFiles {
    fn new_prefix(&self, fname: &str, prefix: &mut [u8]) -> CbResult<()> {
        if prefix.len() < HEADER_END {
            return Err((
                IO_ERROR,
                format!("file prefix of {} bytes is too short", prefix.len()),
            ));
        }
        let name = file_name(fname);
        let store = (0, *self.store_version.read());
        // An SST goes under its table's key or, for the default column family, the
        // store's; one that was not announced, or belongs to a dropped or revoked table
        // (a compaction that was already running), is refused, never quietly written
        // under another key.
        let (table_id, version) = if name.ends_with(".sst") {
            match self.pending.lock().remove(name) {
                Some(Route::Table(table, version)) => (table, version),
                Some(Route::Store) => store,
                Some(Route::Refused) => {
                    return Err((
                        IO_ERROR,
                        format!("{name}: its table was dropped or revoked; refusing to write it"),
                    ));
                }
                None => {
                    return Err((
                        IO_ERROR,
                        format!(
                            "{name}: no table announced this file; refusing to encrypt it under another key"
                        ),
                    ));
                }
            }
        } else {
            store
        };
        let key = self
            .key(table_id, version)
            .ok_or_else(|| (IO_ERROR, format!("no key for table {table_id} version {version}")))?;
        let mut iv = [0u8; STREAM_IV_LEN];
        os_random(&mut iv).map_err(|e| (IO_ERROR, e.to_string()))?;
        let kind = if name.ends_with(".sst") || name.ends_with(".blob") {
            KIND_TABLE
        } else {
            KIND_LOG
        };
        self.header(table_id, version, &key, &iv, kind, prefix);
        Ok(())
    }

    fn open_stream(&self, fname: &str, prefix: &[u8]) -> CbResult<FileStream> {
        let (_, _, key) = self.check_header(fname, prefix, HEADER_FORMAT)?;
        let mut iv = [0u8; STREAM_IV_LEN];
        iv.copy_from_slice(&prefix[IV_AT..KCV_AT]);
        FileStream::new(key.suite, &key.key, iv).map_err(|e| (IO_ERROR, e.to_string()))
    }

    fn torn_tail(&self, fname: &str, bytes: u64) {
        self.torn.lock().insert(file_name(fname).to_owned(), bytes);
    }

    fn open_chunked(&self, fname: &str, header: &[u8]) -> CbResult<ChunkFile> {
        let corrupt = |why: String| (CORRUPTION, format!("{fname}: {why}"));
        let (table_id, version, key) = self.check_header(fname, header, HEADER_FORMAT_CHUNKED)?;
        let kind = header[KIND_AT];
        if kind != KIND_TABLE && kind != KIND_LOG {
            return Err(corrupt(format!("unknown file kind {kind}")));
        }
        let chunk_key = DataKey::from_slice(&hkdf(
            key.key.expose(),
            &header[IV_AT..KCV_AT],
            b"tde chunk key",
            key.suite.key_len(),
        ));
        let aead = crate::cipher::AeadKey::new(key.suite, version, &chunk_key)
            .map_err(|e| (IO_ERROR, e.to_string()))?;
        let mut bound = [0u8; BOUND];
        bound[..16].copy_from_slice(&self.store_id);
        bound[16..20].copy_from_slice(&table_id.to_le_bytes());
        bound[20..24].copy_from_slice(&version.to_le_bytes());
        bound[24..40].copy_from_slice(&header[IV_AT..KCV_AT]);
        bound[40] = kind;
        Ok(ChunkFile { key: aead, bound })
    }

    fn table_file_started(&self, cf: &str, path: &str) {
        let target = match self.current.read().get(cf).copied() {
            Some((table, version)) => Route::Table(table, version),
            None if cf == "default" => Route::Store,
            None => Route::Refused,
        };
        let mut pending = self.pending.lock();
        if pending.len() > 10_000 {
            // Announced files that were never created (aborted jobs); start over.
            pending.clear();
        }
        pending.insert(file_name(path).to_owned(), target);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files() -> StoreFiles {
        let files = StoreFiles::new([1; 16], 1);
        let dk = DataKey::from_slice(&[3; 32]);
        files.add_key(0, 1, FileKey::derive(Suite::Aes256Gcm, &dk, &[1; 16], 0, 1));
        files.add_key(5, 1, FileKey::derive(Suite::Aes256Gcm, &dk, &[1; 16], 5, 1));
        files.set_current("t5", 5, 1);
        files
    }

    fn route_of(files: &StoreFiles, prefix: &[u8]) -> (u32, u32) {
        let u32_at = |at: usize| u32::from_le_bytes(prefix[at..at + 4].try_into().unwrap());
        assert!(files.open_chunked("x", prefix).is_ok());
        (u32_at(TABLE_AT), u32_at(VERSION_AT))
    }

    #[test]
    fn ssts_go_under_their_tables_key_and_unrouted_ones_are_refused() {
        let files = files();
        let mut prefix = vec![0u8; PREFIX_LEN];
        files.table_file_started("t5", "/db/000010.sst");
        files.new_prefix("/db/000010.sst", &mut prefix).unwrap();
        assert_eq!(route_of(&files, &prefix), (5, 1));
        files.table_file_started("default", "/db/000011.sst");
        files.new_prefix("/db/000011.sst", &mut prefix).unwrap();
        assert_eq!(route_of(&files, &prefix), (0, 1));
        files.new_prefix("/db/000012.log", &mut prefix).unwrap();
        assert_eq!(route_of(&files, &prefix), (0, 1));
        // Never announced: not quietly put under the store key.
        assert!(files.new_prefix("/db/000013.sst", &mut prefix).is_err());
        // A compaction of a table revoked (or dropped) while it ran.
        files.table_file_started("t5", "/db/000014.sst");
        files.remove_table("t5", 5);
        files.table_file_started("t5", "/db/000015.sst");
        assert!(files.new_prefix("/db/000014.sst", &mut prefix).is_err());
        assert!(files.new_prefix("/db/000015.sst", &mut prefix).is_err());
    }
}
