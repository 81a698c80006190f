//! The audit trail of key use: one record for every KMS call a store, a tablespace or a
//! backup operation makes, appended to a hash-chained log: `TDE-AUDIT` inside a store
//! directory (and a backup destination, for `backup rewrap`), `FILE-audit` beside a
//! tablespace file.
//!
//! Invariant: record `n` carries the SHA-256 of record `n - 1` (the first, a hash of the
//! store id), and its own hash covers every field; records are appended and fsynced,
//! never rewritten. So an edited, removed, inserted or reordered record breaks the chain
//! at that point, and `verify` names it. The log holds no key material: only which master
//! key was asked to do what, for which table and why, and how it ended.
//! Not here: making the calls (`keyring`, `kv`).
//!
//! Keyed: once the store's keys are unwrapped, each record also carries an HMAC-SHA256
//! (`mac`) of its body, previous hash included, under a key derived from the store-level
//! data key (`key_version` names the version). Records written before any key is
//! available (a failed open) are chained but unkeyed. Since a record's MAC covers the
//! previous record's hash, one keyed record authenticates the whole chain before it. So
//! someone without the KMS cannot edit, remove, insert or reorder records before the last
//! keyed record without [`verify_keyed`] noticing. What remains undetectable without a
//! copy of the last hash kept elsewhere: cutting records off the end, and adding unkeyed
//! records after the last keyed one (which `verify_keyed` counts as unauthenticated).
//!
//! A torn last record (a crash or a full disk during an append) does not stop the store
//! from opening: [`AuditLog::open`] cuts it and records the cut as a record of its own
//! (`op` `cut-torn-record`). A damaged record that others follow is an error.
//!
//! Format: one JSON object per line (`TDE-AUDIT`), fields in this order:
//!
//! ```text
//! {"seq":1,"time":"2026-11-25T02:00:00Z","op":"decrypt","key":"alias/acs/tde",
//!  "table":"users","reason":"open","outcome":"ok","prev":"<hex>",
//!  "key_version":1,"mac":"<hex>","hash":"<hex>"}
//! ```
//!
//! `mac` = HMAC of the line's JSON without `mac` and `hash`; `hash` = SHA-256 of the
//! line's JSON without the `hash` field, as written. Lines are at most 64 KiB.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::cipher::kdf::MacKey;
use crate::clock::{Clock, SystemClock};
use crate::error::{Error, Result};
use crate::kms::Timestamp;

/// File name of the audit log inside a store directory (and a backup destination).
pub const AUDIT_FILE: &str = "TDE-AUDIT";

/// The audit log of the tablespace at `path`: `path` + `-audit`.
pub fn tablespace_audit_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push("-audit");
    PathBuf::from(name)
}
/// What the audit MAC key is derived for.
pub(crate) const AUDIT_MAC_LABEL: &[u8] = b"tde audit trail\0";
/// The longest line read back; longer ones are damage (or an attack), not records.
const MAX_LINE: usize = 64 * 1024;

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
    /// The store-level data key version whose derived key made `mac`; absent for a
    /// record written before any key was available.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_version: Option<u32>,
    /// HMAC-SHA256 (hex) of the record without `mac` and `hash`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
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

/// Where records go: a file, or memory (a tablespace on storage that is not a file
/// system, as in tests).
enum Sink {
    File(File),
    Memory(Vec<u8>),
}

impl Sink {
    fn append(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Sink::File(f) => f.write_all(bytes).and_then(|()| f.sync_data()),
            Sink::Memory(v) => {
                v.extend_from_slice(bytes);
                Ok(())
            }
        }
    }
}

/// The audit log of one store (or tablespace, or backup destination), open for
/// appending.
pub struct AuditLog {
    path: PathBuf,
    head: Mutex<(Sink, Head)>,
    key: Mutex<Option<(u32, MacKey)>>,
    /// Bytes of a torn last record cut at open.
    cut: u64,
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

/// The record's JSON without the fields named in `without`.
fn body(record: &AuditRecord, without: &[&str]) -> Result<String> {
    let mut value = serde_json::to_value(record).map_err(|e| Error::InvalidArgument(e.to_string()))?;
    if let Some(map) = value.as_object_mut() {
        for field in without {
            map.remove(*field);
        }
    }
    Ok(value.to_string())
}

/// The record's line without its hash, and that hash.
fn seal_line(record: &AuditRecord) -> Result<(String, String)> {
    let body = body(record, &["hash"])?;
    let hash = crate::hex::encode(&Sha256::digest(body.as_bytes()));
    Ok((body, hash))
}

/// The MAC of a record (its body without `mac` and `hash`).
fn mac_of(record: &AuditRecord, key: &MacKey) -> Result<String> {
    let body = body(record, &["mac", "hash"])?;
    Ok(crate::hex::encode(&key.tag(&[AUDIT_MAC_LABEL, body.as_bytes()])))
}

impl AuditLog {
    /// Opens (creating if needed) the audit log in `dir` of the store `store_id`, ready to
    /// continue its chain.
    ///
    /// # Errors
    /// [`Error::Io`]; [`Error::Corrupt`] if the last record does not parse.
    pub fn open(dir: &Path, store_id: &str) -> Result<AuditLog> {
        AuditLog::open_at(dir.join(AUDIT_FILE), store_id)
    }

    /// An audit log kept in memory, for a tablespace whose storage is not a file system.
    pub(crate) fn in_memory(chain: &str) -> AuditLog {
        AuditLog {
            path: PathBuf::from("(memory)"),
            head: Mutex::new((
                Sink::Memory(Vec::new()),
                Head {
                    seq: 0,
                    hash: genesis(chain),
                },
            )),
            key: Mutex::new(None),
            cut: 0,
        }
    }

    /// Records kept in memory (see [`AuditLog::in_memory`]); empty for a file.
    pub(crate) fn memory_records(&self) -> Vec<AuditRecord> {
        match &self.head.lock().0 {
            Sink::Memory(bytes) => bytes
                .split(|b| *b == b'\n')
                .filter_map(|line| serde_json::from_slice(line).ok())
                .collect(),
            Sink::File(_) => Vec::new(),
        }
    }

    /// Writes a copy of the log, as it is between two appends, to the new file `to`
    /// (backups carry the trail).
    ///
    /// # Errors
    /// [`Error::Io`].
    pub(crate) fn copy_to(&self, to: &Path) -> Result<()> {
        let guard = self.head.lock();
        let bytes = match &guard.0 {
            Sink::File(_) => std::fs::read(&self.path)
                .map_err(|e| Error::io(format!("reading {}", self.path.display()), e))?,
            Sink::Memory(bytes) => bytes.clone(),
        };
        drop(guard);
        std::fs::write(to, bytes).map_err(|e| Error::io(format!("writing {}", to.display()), e))
    }

    /// The file, for a log kept in one.
    pub fn path(&self) -> Option<&Path> {
        match self.head.lock().0 {
            Sink::File(_) => Some(&self.path),
            Sink::Memory(_) => None,
        }
    }

    /// Opens (creating if needed) the audit log at `path` of the chain `chain` (a store,
    /// tablespace or destination id), ready to continue it.
    ///
    /// # Errors
    /// As [`AuditLog::open`].
    pub fn open_at(path: PathBuf, chain: &str) -> Result<AuditLog> {
        let store_id = chain;
        let (records, good_len, cut) = read_tail_tolerant(&path)?;
        if cut > 0 {
            let file = OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
            file.set_len(good_len)
                .and_then(|()| file.sync_all())
                .map_err(|e| Error::io(format!("cutting a torn record off {}", path.display()), e))?;
        }
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
            // A log planted as a symbolic link is refused, not followed.
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
        let log = AuditLog {
            path,
            head: Mutex::new((Sink::File(file), head)),
            key: Mutex::new(None),
            cut,
        };
        if cut > 0 {
            log.append(&AuditEvent {
                op: "cut-torn-record",
                key: "",
                table: "",
                reason: Reason::Open,
                error: Some(format!(
                    "a torn last record of {cut} bytes was cut (a crash or a full disk during an append)"
                )),
            })?;
        }
        Ok(log)
    }

    /// Bytes of a torn last record that [`AuditLog::open`] cut (0 if none).
    pub fn cut_bytes(&self) -> u64 {
        self.cut
    }

    /// Keys every later record with `key`, derived from store-level data key version
    /// `version`.
    pub(crate) fn set_key(&self, version: u32, key: MacKey) {
        *self.key.lock() = Some((version, key));
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
                key_version: None,
                mac: None,
                hash: String::new(),
            };
            if let Some((version, key)) = &*self.key.lock() {
                record.key_version = Some(*version);
                record.mac = Some(mac_of(&record, key)?);
            }
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
        file.append(lines.as_bytes())
            .map_err(|e| Error::io(format!("appending to {}", self.path.display()), e))?;
        head.seq = seq;
        head.hash = prev;
        Ok(())
    }
}

/// Reads the records; a last line that is incomplete or does not parse is a torn
/// record: returns (records, length of the good prefix, bytes cut). A bad line that
/// others follow is [`Error::Corrupt`].
fn read_tail_tolerant(path: &Path) -> Result<(Vec<AuditRecord>, u64, u64)> {
    use std::io::Read;
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0, 0)),
        Err(e) => return Err(Error::io(format!("reading {}", path.display()), e)),
    };
    let total = file
        .metadata()
        .map_err(|e| Error::io(format!("reading {}", path.display()), e))?
        .len();
    let mut reader = BufReader::new(file);
    let mut records = Vec::new();
    let mut good = 0u64;
    let mut line = Vec::new();
    let mut n = 0usize;
    loop {
        line.clear();
        let read = (&mut reader)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut line)
            .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        if read == 0 {
            break;
        }
        n += 1;
        let complete = line.last() == Some(&b'\n');
        let parsed = if complete {
            serde_json::from_slice::<AuditRecord>(&line[..line.len() - 1]).ok()
        } else {
            None
        };
        match parsed {
            Some(record) => {
                records.push(record);
                good += read as u64;
            }
            None if good + read as u64 >= total => return Ok((records, good, total - good)),
            None => {
                let why = if complete {
                    "does not parse"
                } else {
                    "is longer than 64 KiB"
                };
                return Err(corrupt(path, format!("line {n} {why}, and records follow it")));
            }
        }
    }
    Ok((records, good, 0))
}

fn read_records(path: &Path) -> Result<Vec<AuditRecord>> {
    Ok(read_tail_tolerant(path)?.0)
}

/// Every record of the audit log in `dir`, oldest first (not verified).
///
/// # Errors
/// [`Error::Io`]; [`Error::Corrupt`] if a line does not parse.
pub fn read(dir: &Path) -> Result<Vec<AuditRecord>> {
    read_records(&dir.join(AUDIT_FILE))
}

/// Every record of the audit log file `path`, oldest first (not verified).
///
/// # Errors
/// As [`read`].
pub fn read_at(path: &Path) -> Result<Vec<AuditRecord>> {
    read_records(path)
}

/// Checks the chain of the audit log in `dir` of store `store_id`, without keys: finds
/// damage and careless edits, not a consistent rewrite (see [`verify_keyed`]); returns
/// the number of records and the hash of the last one. A torn last record is left out.
///
/// # Errors
/// [`Error::Corrupt`] naming the first record that was edited, removed, inserted or
/// moved; [`Error::Io`].
pub fn verify(dir: &Path, store_id: &str) -> Result<(u64, String)> {
    verify_chain(&dir.join(AUDIT_FILE), store_id, None)
}

/// As [`verify`], for the audit log file `path` of the chain `chain`.
///
/// # Errors
/// As [`verify`].
pub fn verify_at(path: &Path, chain: &str) -> Result<(u64, String)> {
    verify_chain(path, chain, None)
}

/// What [`verify_keyed`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditReport {
    /// Records in the chain.
    pub records: u64,
    /// Records up to and including the last one whose MAC checked: each keyed record's
    /// MAC covers the hash of the one before, so it authenticates the whole chain up to
    /// itself (records keyed under versions since retired included).
    pub authenticated: u64,
    /// Hash of the last record.
    pub head: String,
}

/// As [`verify`], and checks every keyed record's MAC for which `keys` (store-level data
/// key version → the audit key) has a key. Records after the last keyed one are not
/// authenticated (`records - authenticated` of them).
///
/// # Errors
/// [`Error::Authentication`] for a record whose MAC does not check, or a keyed record
/// after which no key is available; as [`verify`].
pub(crate) fn verify_keyed(
    path: &Path,
    store_id: &str,
    keys: &dyn Fn(u32) -> Option<MacKey>,
) -> Result<AuditReport> {
    let records = read_records(path)?;
    let (n, head) = verify_chain(path, store_id, Some(&records))?;
    let mut authenticated = 0;
    let mut last_keyed = 0;
    for r in &records {
        let forged = || Error::Authentication {
            location: format!("audit record {} of {}", r.seq, path.display()),
        };
        match (r.key_version, &r.mac) {
            (Some(version), Some(mac)) => {
                last_keyed = r.seq;
                if let Some(key) = keys(version) {
                    let tag = crate::hex::decode(mac).map_err(|_| forged())?;
                    let body = body(r, &["mac", "hash"])?;
                    if !key.verify(&[AUDIT_MAC_LABEL, body.as_bytes()], &tag) {
                        return Err(forged());
                    }
                    authenticated = r.seq;
                }
            }
            (None, None) => {}
            _ => return Err(forged()),
        }
    }
    if last_keyed > authenticated {
        return Err(Error::Authentication {
            location: format!(
                "audit record {last_keyed} of {}: keyed under a version the store does not hold",
                path.display()
            ),
        });
    }
    Ok(AuditReport {
        records: n,
        authenticated,
        head,
    })
}

fn verify_chain(path: &Path, store_id: &str, records: Option<&[AuditRecord]>) -> Result<(u64, String)> {
    let owned;
    let records = match records {
        Some(r) => r,
        None => {
            owned = read_records(path)?;
            &owned
        }
    };
    let mut prev = genesis(store_id);
    for (i, record) in records.iter().enumerate() {
        let line = i + 1;
        if record.seq != line as u64 {
            return Err(corrupt(
                path,
                format!(
                    "line {line} has sequence number {} (records removed, inserted or reordered)",
                    record.seq
                ),
            ));
        }
        if record.prev != prev {
            return Err(corrupt(
                path,
                format!(
                    "record {line} does not follow record {} (removed, inserted or reordered)",
                    line - 1
                ),
            ));
        }
        let (_, hash) = seal_line(record)?;
        if hash != record.hash {
            return Err(corrupt(path, format!("record {line} was edited")));
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

    #[test]
    fn a_torn_last_record_is_cut_and_reported_and_a_damaged_middle_one_is_an_error() {
        let (dir, lines) = log_with(3);
        let path = dir.path().join(AUDIT_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.extend_from_slice(b"{\"seq\":4,\"time\":");
        std::fs::write(&path, &bytes).unwrap();
        let log = AuditLog::open(dir.path(), "s1").unwrap();
        assert_eq!(log.cut_bytes(), 16);
        let records = read(dir.path()).unwrap();
        assert_eq!(records.len(), 4);
        assert_eq!(records[3].op, "cut-torn-record");
        assert_eq!(verify(dir.path(), "s1").unwrap().0, 4);

        let mut damaged = lines.clone();
        damaged[1] = "{not json".into();
        write(dir.path(), &damaged);
        assert!(matches!(
            AuditLog::open(dir.path(), "s1"),
            Err(Error::Corrupt { .. })
        ));
    }

    #[test]
    fn a_consistent_rewrite_passes_the_chain_but_not_the_keyed_check() {
        let dir = tempfile::tempdir().unwrap();
        let dk = crate::secret::DataKey::from_slice(&[5u8; 32]);
        let key = || MacKey::derive(&dk, b"s1", AUDIT_MAC_LABEL);
        let log = AuditLog::open(dir.path(), "s1").unwrap();
        log.append(&AuditEvent {
            op: "decrypt",
            key: "k",
            table: "t0",
            reason: Reason::Open,
            error: Some("failed before keys".into()),
        })
        .unwrap();
        log.set_key(1, key());
        for i in 1..4 {
            let table = format!("t{i}");
            log.append(&AuditEvent {
                op: "decrypt",
                key: "k",
                table: &table,
                reason: Reason::Open,
                error: None,
            })
            .unwrap();
        }
        let keys = |v: u32| (v == 1).then(key);
        let report = verify_keyed(&dir.path().join(AUDIT_FILE), "s1", &keys).unwrap();
        assert_eq!((report.records, report.authenticated), (4, 4));

        // The attacker rewrites record 2 and re-chains everything after it.
        let mut records = read(dir.path()).unwrap();
        records[1].table = "forged".into();
        let mut prev = genesis("s1");
        let mut lines = Vec::new();
        for r in &mut records {
            r.prev = prev.clone();
            r.hash = seal_line(r).unwrap().1;
            prev = r.hash.clone();
            lines.push(serde_json::to_string(r).unwrap());
        }
        write(dir.path(), &lines);
        verify(dir.path(), "s1").unwrap();
        let err = verify_keyed(&dir.path().join(AUDIT_FILE), "s1", &keys).unwrap_err();
        assert!(matches!(err, Error::Authentication { .. }), "{err:?}");
    }
}
