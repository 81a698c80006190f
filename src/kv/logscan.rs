//! A check of RocksDB's log files (MANIFEST and WAL) before RocksDB reads them.
//!
//! RocksDB's log reader (this pinned release) never returns when a record header after
//! the first record carries one of the "recyclable" record types in a log that was not
//! recycled: it reports the record as bad without consuming it and reads the same header
//! again, forever. One flipped byte in a MANIFEST or WAL (damage, or an attacker who can
//! write the directory) is enough to hang every open. tde never recycles logs, so such a
//! header is always damage: this scan walks each log exactly as RocksDB's reader does
//! (32 KiB blocks; a record whose length overruns its block or whose CRC fails drops the
//! rest of the block) and refuses the file with [`Error::Engine`] of kind corruption
//! before RocksDB sees it.
//!
//! Log format (RocksDB `db/log_format.h`), after tde's 4096-byte file header:
//!
//! ```text
//! record  0  4  masked CRC32C of the type byte and the payload
//!         4  2  payload length, little-endian
//!         6  1  type (1 full, 2 first, 3 middle, 4 last; 5-8, 11, 131 recyclable)
//!         7  n  payload
//! ```

use std::io::Read;
use std::path::Path;

use super::files::{PREFIX_LEN, StoreFiles};
use crate::error::{EngineErrorKind, Error, Result};
use crate::ffi::rocksdb::FileCrypto;

const BLOCK: usize = 32 * 1024;
const HEADER: usize = 7;
/// Record types only a recycled log may hold.
const RECYCLABLE: [u8; 6] = [5, 6, 7, 8, 11, 131];
const MASK_DELTA: u32 = 0xa282_ead8;

fn unmask(masked: u32) -> u32 {
    let rot = masked.wrapping_sub(MASK_DELTA);
    rot.rotate_left(15)
}

/// Checks every MANIFEST and WAL file in `dir`.
pub(crate) fn check_logs(files: &StoreFiles, dir: &Path) -> Result<()> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(format!("reading {}", dir.display()), e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(format!("reading {}", dir.display()), e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if (name.starts_with("MANIFEST-") || name.ends_with(".log"))
            && entry.file_type().is_ok_and(|t| t.is_file())
        {
            check_log(files, &entry.path())?;
        }
    }
    Ok(())
}

/// Walks one log file as RocksDB's reader would; a file tde cannot decrypt is left for
/// RocksDB to refuse.
fn check_log(files: &StoreFiles, path: &Path) -> Result<()> {
    let io = |e| Error::io(format!("reading {}", path.display()), e);
    let mut file = std::fs::File::open(path).map_err(io)?;
    let mut prefix = vec![0u8; PREFIX_LEN];
    if file.read_exact(&mut prefix).is_err() {
        return Ok(());
    }
    let name = path.display().to_string();
    let Ok(stream) = files.open_stream(&name, &prefix) else {
        return Ok(());
    };
    let mut block = vec![0u8; BLOCK];
    let mut offset = 0u64;
    loop {
        let n = read_full(&mut file, &mut block).map_err(io)?;
        if n == 0 {
            return Ok(());
        }
        stream.apply(PREFIX_LEN as u64 + offset, &mut block[..n])?;
        if let Some(at) = scan_block(&block[..n]) {
            return Err(Error::engine(
                EngineErrorKind::Corruption,
                format!(
                    "{}: a record at offset {} has a type only recycled logs use; the file is damaged (RocksDB would not return from reading it)",
                    path.display(),
                    offset + at as u64
                ),
            ));
        }
        if n < BLOCK {
            return Ok(());
        }
        offset += BLOCK as u64;
    }
}

/// The offset of a header RocksDB would loop on, if any, in one block.
fn scan_block(block: &[u8]) -> Option<usize> {
    let mut at = 0;
    while at + HEADER <= block.len() {
        let header = &block[at..at + HEADER];
        let length = usize::from(u16::from_le_bytes([header[4], header[5]]));
        let kind = header[6];
        if RECYCLABLE.contains(&kind) {
            return Some(at);
        }
        if kind == 0 && length == 0 {
            // Padding: RocksDB drops the rest of the block.
            return None;
        }
        let end = at + HEADER + length;
        if end > block.len() {
            return None;
        }
        let expected = unmask(u32::from_le_bytes([header[0], header[1], header[2], header[3]]));
        if crc32c::crc32c(&block[at + 6..end]) != expected {
            return None;
        }
        at = end;
    }
    None
}

fn read_full(file: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(kind: u8, payload: &[u8]) -> Vec<u8> {
        let mut body = vec![kind];
        body.extend_from_slice(payload);
        let crc = crc32c::crc32c(&body);
        let masked = crc.rotate_right(15).wrapping_add(MASK_DELTA);
        let mut out = masked.to_le_bytes().to_vec();
        out.extend_from_slice(&(payload.len() as u16).to_le_bytes());
        out.extend_from_slice(&body);
        out
    }

    #[test]
    fn a_recyclable_header_after_good_records_is_found_and_garbage_after_a_bad_crc_is_not() {
        let mut block = record(1, b"first");
        block.extend(record(1, b"second"));
        assert_eq!(scan_block(&block), None);
        let at = block.len();
        block.extend(record(5, b"recycled"));
        assert_eq!(scan_block(&block), Some(at));
        // A record with a bad CRC drops the rest of the block, as RocksDB does.
        let mut bad = record(1, b"first");
        bad[0] ^= 1;
        bad.extend(record(5, b"never read"));
        assert_eq!(scan_block(&bad), None);
        // The type byte of a later record flipped to a recyclable type.
        let mut flipped = record(1, b"first");
        let at = flipped.len();
        flipped.extend(record(1, b"second"));
        flipped[at + 6] = 7;
        assert_eq!(scan_block(&flipped), Some(at));
    }
}
