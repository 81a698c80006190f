//! PROTOTYPE (branch only): SQLite databases on tde through the `tde` VFS. Today: page
//! sealing of the main file under a caller-given key. See `vfs.rs` for what is missing.

use std::path::Path;
use std::sync::Arc;

use crate::cipher::{AeadKey, Detached, Nonce, Suite, TAG_LEN};
use crate::error::{Error, Result};
use crate::ffi::sqlite_vfs as vfs;
use crate::secret::DataKey;

mod files;

/// Page layout (P = page size, R = reserve):
///
/// ```text
/// 0 .. P-R        ciphertext of the page's content
/// P-R ..          nonce (12 bytes for the GCM suites, 32 for AEGIS-256) | tag (16)
///                 | key version (4, LE) | zeros
/// AAD             "tde sqlite page\0" | database id (16) | page number (u32 LE)
/// ```
///
/// A rollback journal record (page number, page, checksum: 8 + P bytes) is sealed whole,
/// so that neither the page nor SQLite's checksum of its plaintext is readable: the
/// page number, the page's content and the checksum are one AEAD message, whose nonce,
/// tag and key version go into the journaled page's reserved bytes; its AAD is
/// "tde sqlite journal\0" | database id | the journal header's random salt | the
/// record's offset (u64 LE).
pub(crate) struct PageCipher {
    key: AeadKey,
    db_id: [u8; 16],
    page_size: usize,
}

impl PageCipher {
    fn reserve(&self) -> usize {
        self.key.suite().nonce_len() + TAG_LEN + 4
    }

    fn page_aad(&self, pgno: u32) -> Vec<u8> {
        [b"tde sqlite page\0".as_slice(), &self.db_id, &pgno.to_le_bytes()].concat()
    }

    fn record_aad(&self, salt: u32, at: u64) -> Vec<u8> {
        [
            b"tde sqlite journal\0".as_slice(),
            &self.db_id,
            &salt.to_le_bytes(),
            &at.to_le_bytes(),
        ]
        .concat()
    }

    /// Seals `msg` in place; writes nonce, tag and version into `tail` (the reserve).
    fn seal(&self, aad: &[u8], msg: &mut [u8], tail: &mut [u8]) -> bool {
        let Ok(d) = self.key.seal_detached(aad, msg) else {
            return false;
        };
        let n = d.nonce.as_slice().len();
        tail.fill(0);
        tail[..n].copy_from_slice(d.nonce.as_slice());
        tail[n..n + TAG_LEN].copy_from_slice(&d.tag);
        tail[n + TAG_LEN..n + TAG_LEN + 4].copy_from_slice(&self.key.version().to_le_bytes());
        true
    }

    /// Opens `msg` in place against the nonce and tag in `tail`, then zeroes `tail`.
    fn open(&self, aad: &[u8], msg: &mut [u8], tail: &mut [u8]) -> bool {
        let n = self.key.suite().nonce_len();
        let Ok(nonce) = Nonce::from_slice(&tail[..n]) else {
            return false;
        };
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&tail[n..n + TAG_LEN]);
        let ok = self.key.open_detached(aad, &Detached { nonce, tag }, msg).is_ok();
        tail.fill(0);
        ok
    }
}

impl vfs::Database for PageCipher {
    fn main(self: Arc<Self>) -> Box<dyn vfs::SealedFile> {
        Box::new(files::MainFile::new(self))
    }
    fn journal(self: Arc<Self>) -> Box<dyn vfs::SealedFile> {
        Box::new(files::Journal::new(self))
    }
}

/// Opens (creating it if needed) the database at `path` with pages sealed under `key`.
///
/// # Errors
/// [`Error::InvalidArgument`] if the VFS cannot be installed or SQLite refuses the file.
pub fn open_with_key(path: &Path, key: &DataKey, db_id: [u8; 16]) -> Result<rusqlite::Connection> {
    if !vfs::install() {
        return Err(Error::InvalidArgument("SQLite refused the tde VFS".into()));
    }
    let sql = |e: rusqlite::Error| Error::InvalidArgument(format!("SQLite: {e}"));
    let page_size = 4096;
    let cipher = Arc::new(PageCipher {
        key: AeadKey::new(Suite::Aes256Gcm, 1, key)?,
        db_id,
        page_size,
    });
    let reserve = cipher.reserve();
    let full =
        std::path::absolute(path).map_err(|e| Error::io(format!("resolving {}", path.display()), e))?;
    vfs::register(full.to_string_lossy().into_owned(), cipher);
    let conn = rusqlite::Connection::open_with_flags_and_vfs(
        &full,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE
            | rusqlite::OpenFlags::SQLITE_OPEN_CREATE
            | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        c"tde",
    )
    .map_err(sql)?;
    conn.execute_batch(&format!(
        "PRAGMA page_size = {page_size}; PRAGMA temp_store = MEMORY;"
    ))
    .map_err(sql)?;
    let rc = vfs::set_reserve(&conn, reserve);
    if rc != rusqlite::ffi::SQLITE_OK {
        return Err(Error::InvalidArgument(format!(
            "SQLite refused {reserve} reserved bytes ({rc})"
        )));
    }
    Ok(conn)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> DataKey {
        DataKey::from_slice(&[7u8; 32])
    }

    #[test]
    fn pages_are_sealed_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        {
            let conn = open_with_key(&path, &key(), [1; 16]).unwrap();
            conn.execute_batch("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT);")
                .unwrap();
            let tx = conn.unchecked_transaction().unwrap();
            for i in 0..2000 {
                tx.execute("INSERT INTO t VALUES (?1, ?2)", (i, format!("SECRET-MARKER-{i}")))
                    .unwrap();
            }
            tx.commit().unwrap();
        }
        let raw = std::fs::read(&path).unwrap();
        assert!(!raw.windows(13).any(|w| w == b"SECRET-MARKER"));
        assert!(!raw.starts_with(b"SQLite format 3"));
        let conn = open_with_key(&path, &key(), [1; 16]).unwrap();
        let n: i64 = conn
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 2000);
        let v: String = conn
            .query_row("SELECT v FROM t WHERE k = 1234", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, "SECRET-MARKER-1234");
        let ok: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(ok, "ok");
        drop(conn);

        // A flipped bit in page 3 is an error, never rows.
        let mut raw = raw;
        raw[2 * 4096 + 100] ^= 1;
        std::fs::write(&path, &raw).unwrap();
        let conn = open_with_key(&path, &key(), [1; 16]).unwrap();
        assert!(
            conn.query_row("SELECT count(*) FROM t", [], |r| r.get::<_, i64>(0))
                .is_err()
        );
    }

    fn count(conn: &rusqlite::Connection, sql: &str) -> i64 {
        conn.query_row(sql, [], |r| r.get(0)).unwrap()
    }

    #[test]
    fn the_rollback_journal_is_sealed_and_rolls_back_in_process_and_after_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        let journal = dir.path().join("db.sqlite-journal");
        let conn = open_with_key(&path, &key(), [2; 16]).unwrap();
        conn.execute_batch(
            "PRAGMA journal_mode = PERSIST; PRAGMA cache_size = 10;
             CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT);",
        )
        .unwrap();
        let tx = conn.unchecked_transaction().unwrap();
        for i in 0..3000 {
            tx.execute(
                "INSERT INTO t VALUES (?1, ?2)",
                (i, format!("ORIGINAL-MARKER-{i}")),
            )
            .unwrap();
        }
        tx.commit().unwrap();

        // ROLLBACK plays the journal back.
        conn.execute_batch("BEGIN; UPDATE t SET v = 'CHANGED-MARKER'; ")
            .unwrap();
        let raw = std::fs::read(&journal).unwrap();
        assert!(raw.len() > 4096 * 10, "the transaction spilled into the journal");
        assert!(!raw.windows(15).any(|w| w == b"ORIGINAL-MARKER"));

        // A crash now: the database file and its hot journal as they are.
        let crashed = dir.path().join("crashed.sqlite");
        std::fs::copy(&path, &crashed).unwrap();
        std::fs::copy(&journal, dir.path().join("crashed.sqlite-journal")).unwrap();

        conn.execute_batch("ROLLBACK").unwrap();
        assert_eq!(
            count(&conn, "SELECT count(*) FROM t WHERE v LIKE 'ORIGINAL-MARKER-%'"),
            3000
        );
        drop(conn);

        let conn = open_with_key(&crashed, &key(), [2; 16]).unwrap();
        assert_eq!(
            count(&conn, "SELECT count(*) FROM t WHERE v LIKE 'ORIGINAL-MARKER-%'"),
            3000
        );
        let ok: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(ok, "ok");
    }
}
