//! The audit trail of key use: one record for every KMS call a store makes, appended to a
//! hash-chained log inside the store directory.
//!
//! Invariant: record `n` carries the SHA-256 of record `n - 1` (the first, a hash of the
//! store id), and its own hash covers every field; records are appended and fsynced,
//! never rewritten. So an edited, removed, inserted or reordered record breaks the chain
//! at that point, and `verify` names it. The log holds no key material: only which master
//! key was asked to do what, for which table and why, and how it ended.
//! Not here: making the calls (`keyring`, `kv`).
//!
//! Limits: the chain is not keyed, so someone who can write the directory can cut records
//! off the end or rewrite the whole log consistently; keep a copy of the last hash
//! elsewhere (for example in a monitoring system) to detect that.
//!
//! Format: one JSON object per line (`TDE-AUDIT`), fields in this order:
//!
//! ```text
//! {"seq":1,"time":"2026-11-25T02:00:00Z","op":"decrypt","key":"alias/acs/tde",
//!  "table":"users","reason":"open","outcome":"ok","prev":"<hex>","hash":"<hex>"}
//! ```
//!
//! `hash` = SHA-256 of the line's JSON without the `hash` field, as written.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::clock::{Clock, SystemClock};
use crate::error::{Error, Result};
use crate::kms::Timestamp;

/// File name of the audit log inside a store directory.
pub const AUDIT_FILE: &str = "TDE-AUDIT";

/// Why a KMS call was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Reason {
    /// Creating the store (its store-level key).
    Create,
    /// Creating a table.
    CreateTable,
    /// Opening the store.
    Open,
    /// Rotating a master key or a data key.
    Rotate,
    /// Moving the store to another master key or KMS.
    Migrate,
    /// Checking key state while the store is open.
    Watch,
    /// Restoring or rewrapping a backup.
    Backup,
}

/// One record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Sequence number, from 1.
    pub seq: u64,
    /// When.
    pub time: Timestamp,
    /// The KMS operation: `generate-data-key`, `decrypt`, `re-encrypt`, `describe-key`.
    pub op: String,
    /// The master key named in the call.
    pub key: String,
    /// The table (or `(store)`).
    pub table: String,
    /// Why.
    pub reason: Reason,
    /// `ok`, or the error.
    pub outcome: String,
    /// Hash of the previous record (hex).
    pub prev: String,
    /// Hash of this record (hex).
    pub hash: String,
}

/// What to record about one KMS call.
#[derive(Debug, Clone)]
pub struct AuditEvent<'a> {
    /// The KMS operation.
    pub op: &'a str,
    /// The master key.
    pub key: &'a str,
    /// The table.
    pub table: &'a str,
    /// Why.
    pub reason: Reason,
    /// `None` for success, else the error text.
    pub error: Option<String>,
}

struct Head {
    seq: u64,
    hash: String,
}

/// The audit log of one store, open for appending.
pub struct AuditLog {
    path: PathBuf,
    head: Mutex<(File, Head)>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

fn genesis(store_id: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"tde audit\0");
    h.update(store_id.as_bytes());
    crate::hex::encode(&h.finalize())
}

fn corrupt(path: &Path, detail: String) -> Error {
    Error::Corrupt {
        what: "audit log",
        path: path.to_path_buf(),
        detail,
    }
}

/// The record's line without its hash, and that hash.
fn seal_line(record: &AuditRecord) -> Result<(String, String)> {
    let mut unsigned = record.clone();
    unsigned.hash = String::new();
    let mut value = serde_json::to_value(&unsigned).map_err(|e| Error::InvalidArgument(e.to_string()))?;
    if let Some(map) = value.as_object_mut() {
        map.remove("hash");
    }
    let body = value.to_string();
    let hash = crate::hex::encode(&Sha256::digest(body.as_bytes()));
    Ok((body, hash))
}

impl AuditLog {
    /// Opens (creating if needed) the audit log in `dir` of the store `store_id`, ready to
    /// continue its chain.
    ///
    /// # Errors
    /// [`Error::Io`]; [`Error::Corrupt`] if the last record does not parse.
    pub fn open(dir: &Path, store_id: &str) -> Result<AuditLog> {
        let path = dir.join(AUDIT_FILE);
        let records = read_records(&path)?;
        let head = match records.last() {
            Some(r) => Head {
                seq: r.seq,
                hash: r.hash.clone(),
            },
            None => Head {
                seq: 0,
                hash: genesis(store_id),
            },
        };
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
        Ok(AuditLog {
            path,
            head: Mutex::new((file, head)),
        })
    }

    /// Appends one record and makes it durable.
    ///
    /// # Errors
    /// [`Error::Io`].
    pub fn append(&self, event: &AuditEvent<'_>) -> Result<()> {
        self.append_all([event.clone()])
    }

    /// Appends several records with one write and one fsync (opening a store with many
    /// tables records one unwrap per table).
    ///
    /// # Errors
    /// [`Error::Io`]; then none of the records is counted as written.
    pub fn append_all<'a>(&self, events: impl IntoIterator<Item = AuditEvent<'a>>) -> Result<()> {
        let mut guard = self.head.lock();
        let (file, head) = &mut *guard;
        let (mut seq, mut prev) = (head.seq, head.hash.clone());
        let mut lines = String::new();
        let now = SystemClock.now();
        for event in events {
            let mut record = AuditRecord {
                seq: seq + 1,
                time: now,
                op: event.op.to_owned(),
                key: event.key.to_owned(),
                table: event.table.to_owned(),
                reason: event.reason,
                outcome: event.error.clone().unwrap_or_else(|| "ok".to_owned()),
                prev,
                hash: String::new(),
            };
            let (_, hash) = seal_line(&record)?;
            record.hash = hash;
            lines.push_str(
                &serde_json::to_string(&record).map_err(|e| Error::InvalidArgument(e.to_string()))?,
            );
            lines.push('\n');
            seq = record.seq;
            prev = record.hash;
        }
        if lines.is_empty() {
            return Ok(());
        }
        file.write_all(lines.as_bytes())
            .and_then(|()| file.sync_data())
            .map_err(|e| Error::io(format!("appending to {}", self.path.display()), e))?;
        head.seq = seq;
        head.hash = prev;
        Ok(())
    }
}

fn read_records(path: &Path) -> Result<Vec<AuditRecord>> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(format!("reading {}", path.display()), e)),
    };
    let mut records = Vec::new();
    for (n, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        let record: AuditRecord =
            serde_json::from_str(&line).map_err(|e| corrupt(path, format!("line {}: {e}", n + 1)))?;
        records.push(record);
    }
    Ok(records)
}

/// Every record of the audit log in `dir`, oldest first (not verified).
///
/// # Errors
/// [`Error::Io`]; [`Error::Corrupt`] if a line does not parse.
pub fn read(dir: &Path) -> Result<Vec<AuditRecord>> {
    read_records(&dir.join(AUDIT_FILE))
}

/// Checks the chain of the audit log in `dir` of store `store_id`; returns the number of
/// records and the hash of the last one.
///
/// # Errors
/// [`Error::Corrupt`] naming the first record that was edited, removed, inserted or
/// moved; [`Error::Io`].
pub fn verify(dir: &Path, store_id: &str) -> Result<(u64, String)> {
    let path = dir.join(AUDIT_FILE);
    let records = read_records(&path)?;
    let mut prev = genesis(store_id);
    for (i, record) in records.iter().enumerate() {
        let line = i + 1;
        if record.seq != line as u64 {
            return Err(corrupt(
                &path,
                format!(
                    "line {line} has sequence number {} (records removed, inserted or reordered)",
                    record.seq
                ),
            ));
        }
        if record.prev != prev {
            return Err(corrupt(
                &path,
                format!(
                    "record {line} does not follow record {} (removed, inserted or reordered)",
                    line - 1
                ),
            ));
        }
        let (_, hash) = seal_line(record)?;
        if hash != record.hash {
            return Err(corrupt(&path, format!("record {line} was edited")));
        }
        prev = record.hash.clone();
    }
    Ok((records.len() as u64, prev))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log_with(n: usize) -> (tempfile::TempDir, Vec<String>) {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(dir.path(), "s1").unwrap();
        for i in 0..n {
            let table = format!("t{i}");
            log.append(&AuditEvent {
                op: "decrypt",
                key: "alias/acs/tde",
                table: &table,
                reason: Reason::Open,
                error: (i == 2).then(|| "key disabled".to_owned()),
            })
            .unwrap();
        }
        let lines = std::fs::read_to_string(dir.path().join(AUDIT_FILE))
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect();
        (dir, lines)
    }

    fn write(dir: &Path, lines: &[String]) {
        std::fs::write(dir.join(AUDIT_FILE), lines.join("\n") + "\n").unwrap();
    }

    #[test]
    fn the_chain_detects_edits_removals_and_reordering() {
        let (dir, lines) = log_with(5);
        assert_eq!(verify(dir.path(), "s1").unwrap().0, 5);
        assert!(verify(dir.path(), "s2").is_err(), "another store's log");
        assert_eq!(read(dir.path()).unwrap()[2].outcome, "key disabled");

        // Reopening continues the chain.
        AuditLog::open(dir.path(), "s1")
            .unwrap()
            .append(&AuditEvent {
                op: "generate-data-key",
                key: "k",
                table: "t9",
                reason: Reason::CreateTable,
                error: None,
            })
            .unwrap();
        assert_eq!(verify(dir.path(), "s1").unwrap().0, 6);

        let edited: Vec<String> = lines
            .iter()
            .enumerate()
            .map(|(i, l)| {
                if i == 1 {
                    l.replace("\"t1\"", "\"tX\"")
                } else {
                    l.clone()
                }
            })
            .collect();
        let mut removed = lines.clone();
        removed.remove(1);
        let mut reordered = lines.clone();
        reordered.swap(1, 2);
        let mut renumbered = removed.clone();
        for (i, l) in renumbered.iter_mut().enumerate() {
            *l = l.replacen(
                &format!("\"seq\":{}", if i >= 1 { i + 2 } else { i + 1 }),
                &format!("\"seq\":{}", i + 1),
                1,
            );
        }
        for (what, bad) in [
            ("edited", edited),
            ("removed", removed),
            ("reordered", reordered),
            ("renumbered", renumbered),
        ] {
            write(dir.path(), &bad);
            let err = verify(dir.path(), "s1").unwrap_err();
            assert!(matches!(err, Error::Corrupt { .. }), "{what}: {err:?}");
        }
        write(dir.path(), &lines);
        verify(dir.path(), "s1").unwrap();
    }
}
