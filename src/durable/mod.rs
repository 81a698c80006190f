//! Durable metadata files: atomic replacement and redundant, checksummed copies.
//!
//! Invariant: a crash at any point of [`Replicated::write`] leaves at least one copy that
//! passes its checksum and holds either the previous or the new contents; reading picks
//! the valid copy with the highest sequence number.
//! Not here: what the payload means (the KMS state, the keyring) or its encryption.
//!
//! All file system access goes through [`Storage`] so tests can cut a sequence of writes
//! at any point (see `testing::CrashStorage`).
//!
//! Copy format (one file per copy, `<name>.a` and `<name>.b`):
//!
//! ```text
//! offset  size  field
//! 0       8     magic, chosen by the owner of the file
//! 8       8     sequence number, u64 little-endian
//! 16      8     payload length, u64 little-endian
//! 24      32    SHA-256 of bytes 0..24 followed by the payload
//! 56      n     payload
//! ```

mod storage;

use sha2::{Digest, Sha256};
#[cfg(any(test, feature = "testing"))]
pub use storage::DirLock;
pub use storage::{FsStorage, Storage};

use crate::error::{Error, Result};

const MAGIC_AT: usize = 0;
const SEQ_AT: usize = MAGIC_AT + 8;
const LEN_AT: usize = SEQ_AT + 8;
const SUM_AT: usize = LEN_AT + 8;
const PAYLOAD_AT: usize = SUM_AT + 32;

/// Replaces `name` with `bytes` atomically and durably: write a temporary file, fsync it,
/// rename it over `name`, fsync the directory.
///
/// # Errors
/// [`Error::Io`]; `name` then still holds its previous contents.
pub fn write_atomic(storage: &dyn Storage, name: &str, bytes: &[u8]) -> Result<()> {
    let tmp = format!("{name}.tmp");
    let at = |what: &str, e| Error::io(format!("{what} {}", storage.path(name).display()), e);
    storage.write_synced(&tmp, bytes).map_err(|e| at("writing", e))?;
    storage.rename(&tmp, name).map_err(|e| at("replacing", e))?;
    storage.sync_dir().map_err(|e| at("syncing the directory of", e))
}

/// A metadata file kept as two checksummed copies.
#[derive(Debug, Clone)]
pub struct Replicated {
    name: String,
    what: &'static str,
    magic: [u8; 8],
}

/// What [`Replicated::read`] found.
#[derive(Debug)]
pub struct Loaded {
    /// Sequence number of the copy used.
    pub seq: u64,
    /// Its payload.
    pub payload: Vec<u8>,
    /// Whether the other copy was missing, damaged or older (the next write repairs it).
    pub degraded: bool,
}

impl Replicated {
    /// A replicated file `name` (copies `name.a`, `name.b`) holding `what`, with `magic`.
    pub fn new(name: &str, what: &'static str, magic: [u8; 8]) -> Replicated {
        Replicated {
            name: name.to_owned(),
            what,
            magic,
        }
    }

    fn copies(&self) -> [String; 2] {
        [format!("{}.a", self.name), format!("{}.b", self.name)]
    }

    /// Whether any copy exists.
    ///
    /// # Errors
    /// [`Error::Io`] if the directory cannot be read.
    pub fn exists(&self, storage: &dyn Storage) -> Result<bool> {
        for copy in self.copies() {
            if storage
                .exists(&copy)
                .map_err(|e| Error::io(format!("checking {}", storage.path(&copy).display()), e))?
            {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Reads the newest valid copy. `Ok(None)` if neither copy exists.
    ///
    /// # Errors
    /// [`Error::Corrupt`] if copies exist but none is valid; [`Error::Io`].
    pub fn read(&self, storage: &dyn Storage) -> Result<Option<Loaded>> {
        let mut found = Vec::new();
        let mut problems = Vec::new();
        for copy in self.copies() {
            let bytes = storage
                .read(&copy)
                .map_err(|e| Error::io(format!("reading {}", storage.path(&copy).display()), e))?;
            match bytes {
                None => problems.push(format!("{copy} is missing")),
                Some(bytes) => match self.decode(&bytes) {
                    Ok((seq, payload)) => found.push((seq, payload)),
                    Err(why) => problems.push(format!("{copy}: {why}")),
                },
            }
        }
        if found.is_empty() {
            if problems.iter().all(|p| p.ends_with("is missing")) {
                return Ok(None);
            }
            return Err(Error::Corrupt {
                what: self.what,
                path: storage.path(&self.name),
                detail: format!("no valid copy ({})", problems.join("; ")),
            });
        }
        found.sort_by_key(|(seq, _)| *seq);
        let degraded = found.len() < 2 || found[0].0 != found[1].0;
        let (seq, payload) = found.pop().ok_or_else(|| Error::Corrupt {
            what: self.what,
            path: storage.path(&self.name),
            detail: "no valid copy".into(),
        })?;
        Ok(Some(Loaded {
            seq,
            payload,
            degraded,
        }))
    }

    /// The highest sequence number in the copies' headers, read without verifying the
    /// payload: a cheap "has anyone written since?" check.
    ///
    /// # Errors
    /// [`Error::Io`].
    pub fn peek_seq(&self, storage: &dyn Storage) -> Result<Option<u64>> {
        let mut best = None;
        for copy in self.copies() {
            let head = storage
                .read_prefix(&copy, PAYLOAD_AT)
                .map_err(|e| Error::io(format!("reading {}", storage.path(&copy).display()), e))?;
            if let Some(head) = head
                && head.len() >= LEN_AT
                && head[MAGIC_AT..SEQ_AT] == self.magic
            {
                let seq = u64::from_le_bytes(head[SEQ_AT..LEN_AT].try_into().unwrap_or_default());
                best = best.max(Some(seq));
            }
        }
        Ok(best)
    }

    /// Writes `payload` with sequence number `seq` to both copies, one after the other,
    /// each atomically.
    ///
    /// # Errors
    /// [`Error::Io`]; at least one copy then still holds the previous or the new state.
    pub fn write(&self, storage: &dyn Storage, seq: u64, payload: &[u8]) -> Result<()> {
        let bytes = self.encode(seq, payload);
        for copy in self.copies() {
            write_atomic(storage, &copy, &bytes)?;
        }
        Ok(())
    }

    fn encode(&self, seq: u64, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(PAYLOAD_AT + payload.len());
        out.extend_from_slice(&self.magic);
        out.extend_from_slice(&seq.to_le_bytes());
        out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
        let sum = checksum(&out, payload);
        out.extend_from_slice(&sum);
        out.extend_from_slice(payload);
        out
    }

    fn decode(&self, bytes: &[u8]) -> std::result::Result<(u64, Vec<u8>), String> {
        if bytes.len() < PAYLOAD_AT {
            return Err(format!("truncated ({} bytes)", bytes.len()));
        }
        if bytes[MAGIC_AT..SEQ_AT] != self.magic {
            return Err("wrong magic number".into());
        }
        let field = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap_or_default());
        let seq = field(SEQ_AT);
        let len = field(LEN_AT);
        let payload = &bytes[PAYLOAD_AT..];
        if payload.len() as u64 != len {
            return Err(format!("length {len} recorded, {} present", payload.len()));
        }
        if checksum(&bytes[..SUM_AT], payload)[..] != bytes[SUM_AT..PAYLOAD_AT] {
            return Err("checksum mismatch".into());
        }
        Ok((seq, payload.to_vec()))
    }
}

fn checksum(head: &[u8], payload: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(head);
    h.update(payload);
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (tempfile::TempDir, FsStorage, Replicated) {
        let dir = tempfile::tempdir().unwrap();
        let storage = FsStorage::new(dir.path());
        (dir, storage, Replicated::new("meta", "test file", *b"TESTMAGC"))
    }

    #[test]
    fn newest_copy_wins_and_missing_is_none() {
        let (_d, s, r) = setup();
        assert!(r.read(&s).unwrap().is_none());
        r.write(&s, 1, b"one").unwrap();
        r.write(&s, 2, b"two").unwrap();
        let got = r.read(&s).unwrap().unwrap();
        assert_eq!(
            (got.seq, got.payload.as_slice(), got.degraded),
            (2, &b"two"[..], false)
        );
        assert_eq!(r.peek_seq(&s).unwrap(), Some(2));
    }

    #[test]
    fn one_damaged_copy_still_reads_both_damaged_is_corrupt() {
        let (d, s, r) = setup();
        r.write(&s, 7, b"payload").unwrap();
        let a = d.path().join("meta.a");
        let mut bytes = std::fs::read(&a).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&a, &bytes).unwrap();
        let got = r.read(&s).unwrap().unwrap();
        assert_eq!(got.payload, b"payload");
        assert!(got.degraded);
        std::fs::write(d.path().join("meta.b"), b"garbage").unwrap();
        assert!(matches!(r.read(&s), Err(Error::Corrupt { .. })));
    }

    #[test]
    fn truncated_copies_are_detected() {
        let (d, s, r) = setup();
        r.write(&s, 1, b"payload").unwrap();
        for copy in ["meta.a", "meta.b"] {
            let p = d.path().join(copy);
            let bytes = std::fs::read(&p).unwrap();
            std::fs::write(&p, &bytes[..bytes.len() - 3]).unwrap();
        }
        assert!(matches!(r.read(&s), Err(Error::Corrupt { .. })));
    }
}
