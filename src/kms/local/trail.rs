//! The request audit trail of a local KMS (`DIR/kms-audit`): one record per request the
//! server answers (allowed, denied or failed) and per administrative command run on the
//! directory.
//!
//! Format: JSON lines. Each record carries its sequence number, the SHA-256 of the
//! previous record (`prev`) and its own (`hash`), and an HMAC-SHA256 (`mac`) under the
//! audit key: a random key kept in the KMS state, sealed under the root key. So the trail
//! cannot be rewritten consistently without the root key, and the chain and its MACs
//! continue across a root-key rotation unchanged (the rotation re-seals the state, audit
//! key included; it does not change the audit key). Nothing secret is recorded:
//! ciphertext blobs appear as keyed hashes (`blob`, HMAC under the audit key, 128 bits),
//! plaintexts and keys never.
//!
//! Durability without an fsync per request: the server's writer takes every record that
//! is waiting, appends them, syncs once and then answers all their requests (group
//! commit). Writers in several processes (the server, the operator's commands) append
//! under an exclusive lock on `DIR/kms-audit.lock` and pick up the chain where the file
//! ends. A torn last record (a crash mid-append) is cut when the trail is next opened,
//! and the cut is itself recorded.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::kms::Timestamp;

/// The trail's file name in the KMS directory.
pub const TRAIL_FILE: &str = "kms-audit";
const LOCK_FILE: &str = "kms-audit.lock";
/// The longest record read back.
const MAX_LINE: usize = 64 * 1024;

/// One record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrailRecord {
    /// Sequence number, from 1.
    pub seq: u64,
    /// When (seconds since the epoch).
    pub time: Timestamp,
    /// A random id for the request.
    pub request_id: String,
    /// The caller's account (empty for the operator).
    #[serde(default)]
    pub account: String,
    /// The caller: a principal's ARN, or `operator` for a command on the directory.
    pub principal: String,
    /// The access key id that signed the request.
    #[serde(default)]
    pub access_key_id: String,
    /// Where the request came from (`IP:PORT`, or `local`).
    pub source: String,
    /// The operation (`Decrypt`, `CreateKey`, `principal create`, ...).
    pub op: String,
    /// The key it named, if any.
    #[serde(default)]
    pub key: String,
    /// The encryption context it carried.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub context: std::collections::BTreeMap<String, String>,
    /// The grant that allowed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant: Option<String>,
    /// A keyed hash of the ciphertext blob it carried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blob: Option<String>,
    /// `ok`, or the error code.
    pub outcome: String,
    /// Hash of the previous record.
    pub prev: String,
    /// HMAC of the record without `mac` and `hash`.
    pub mac: String,
    /// Hash of the record without `hash`.
    pub hash: String,
}

/// What to record; the trail fills in the rest.
#[derive(Debug, Clone, Default)]
pub struct TrailEvent {
    /// Account of the caller.
    pub account: String,
    /// ARN of the caller, or `operator`.
    pub principal: String,
    /// Its access key id.
    pub access_key_id: String,
    /// `IP:PORT` or `local`.
    pub source: String,
    /// Operation.
    pub op: String,
    /// Key named.
    pub key: String,
    /// Encryption context.
    pub context: std::collections::BTreeMap<String, String>,
    /// Grant used.
    pub grant: Option<String>,
    /// The ciphertext blob carried (recorded as a keyed hash only).
    pub blob: Option<Vec<u8>>,
    /// `ok` or the error code.
    pub outcome: String,
}

fn genesis() -> String {
    crate::hex::encode(&Sha256::digest(b"tde kms audit\0"))
}

fn corrupt(path: &Path, detail: String) -> Error {
    Error::Corrupt {
        what: "KMS audit trail",
        path: path.to_path_buf(),
        detail,
    }
}

fn body(record: &TrailRecord, without: &[&str]) -> Result<String> {
    let mut value = serde_json::to_value(record).map_err(|e| Error::InvalidArgument(e.to_string()))?;
    if let Some(map) = value.as_object_mut() {
        for field in without {
            map.remove(*field);
        }
    }
    Ok(value.to_string())
}

fn hmac(key: &[u8], label: &[u8], data: &[u8]) -> Vec<u8> {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    mac.update(label);
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

/// The chain's head as the file ends: (seq, hash, bytes of whole records, bytes of a
/// torn tail).
fn head_of(path: &Path) -> Result<(u64, String, u64, u64)> {
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((0, genesis(), 0, 0)),
        Err(e) => return Err(Error::io(format!("reading {}", path.display()), e)),
    };
    let len = file
        .metadata()
        .map_err(|e| Error::io(format!("reading {}", path.display()), e))?
        .len();
    let window = len.min(2 * MAX_LINE as u64);
    let mut tail = vec![0u8; usize::try_from(window).unwrap_or(0)];
    file.seek(SeekFrom::Start(len - window))
        .and_then(|_| file.read_exact(&mut tail))
        .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    // Whole records end with a newline; what follows the last one is torn.
    let end = tail.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    let good = len - window + end as u64;
    let cut = len - good;
    if end == 0 {
        return if good == 0 {
            Ok((0, genesis(), 0, cut))
        } else {
            Err(corrupt(path, "the last record is longer than 64 KiB".into()))
        };
    }
    let start = tail[..end - 1]
        .iter()
        .rposition(|b| *b == b'\n')
        .map_or(0, |i| i + 1);
    if start == 0 && good > window {
        return Err(corrupt(path, "the last record is longer than 64 KiB".into()));
    }
    let last: TrailRecord = serde_json::from_slice(&tail[start..end - 1])
        .map_err(|e| corrupt(path, format!("the last whole record does not parse: {e}")))?;
    Ok((last.seq, last.hash, good, cut))
}

/// An open trail: appends records, under the cross-process lock.
pub(crate) struct Trail {
    path: PathBuf,
    lock: PathBuf,
    key: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for Trail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trail")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Trail {
    /// Opens the trail in `dir` with the audit key `key`; returns it and the bytes of a
    /// torn last record it cut (recorded as a `trail-cut` record).
    pub(crate) fn open(dir: &Path, key: Zeroizing<Vec<u8>>) -> Result<(Trail, u64)> {
        let trail = Trail {
            path: dir.join(TRAIL_FILE),
            lock: dir.join(LOCK_FILE),
            key,
        };
        let cut = trail.with_lock(|t, _| {
            let (_, _, good, cut) = head_of(&t.path)?;
            if cut > 0 {
                let file = OpenOptions::new()
                    .write(true)
                    .open(&t.path)
                    .map_err(|e| Error::io(format!("opening {}", t.path.display()), e))?;
                file.set_len(good)
                    .and_then(|()| file.sync_all())
                    .map_err(|e| Error::io(format!("cutting {}", t.path.display()), e))?;
            }
            Ok(cut)
        })?;
        if cut > 0 {
            trail.append(&[TrailEvent {
                principal: "tde".into(),
                source: "local".into(),
                op: "trail-cut".into(),
                outcome: format!("cut a torn last record of {cut} bytes"),
                ..TrailEvent::default()
            }])?;
        }
        Ok((trail, cut))
    }

    fn with_lock<T>(&self, f: impl FnOnce(&Trail, &File) -> Result<T>) -> Result<T> {
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&self.lock)
            .map_err(|e| Error::io(format!("opening {}", self.lock.display()), e))?;
        lock.lock()
            .map_err(|e| Error::io(format!("locking {}", self.lock.display()), e))?;
        f(self, &lock)
    }

    /// The keyed hash of a blob, as records show it.
    pub(crate) fn blob_hash(&self, blob: &[u8]) -> String {
        crate::hex::encode(&hmac(&self.key, b"tde kms audit blob\0", blob)[..16])
    }

    /// Appends `events` in order and syncs once.
    pub(crate) fn append(&self, events: &[TrailEvent]) -> Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        self.with_lock(|t, _| {
            let (mut seq, mut prev, good, cut) = head_of(&t.path)?;
            if cut > 0 {
                return Err(corrupt(
                    &t.path,
                    format!("{cut} bytes of a torn record at its end"),
                ));
            }
            let now = Timestamp(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs()),
            );
            let mut out = Vec::new();
            for e in events {
                seq += 1;
                let mut id = [0u8; 8];
                crate::error::os_random(&mut id)?;
                let mut record = TrailRecord {
                    seq,
                    time: now,
                    request_id: crate::hex::encode(&id),
                    account: e.account.clone(),
                    principal: e.principal.clone(),
                    access_key_id: e.access_key_id.clone(),
                    source: e.source.clone(),
                    op: e.op.clone(),
                    key: e.key.clone(),
                    context: e.context.clone(),
                    grant: e.grant.clone(),
                    blob: e.blob.as_deref().map(|b| t.blob_hash(b)),
                    outcome: e.outcome.clone(),
                    prev: prev.clone(),
                    mac: String::new(),
                    hash: String::new(),
                };
                record.mac = crate::hex::encode(&hmac(
                    &t.key,
                    b"tde kms audit\0",
                    body(&record, &["mac", "hash"])?.as_bytes(),
                ));
                let line = body(&record, &["hash"])?;
                record.hash = crate::hex::encode(&Sha256::digest(line.as_bytes()));
                prev = record.hash.clone();
                serde_json::to_writer(&mut out, &record)
                    .map_err(|e| Error::InvalidArgument(e.to_string()))?;
                out.push(b'\n');
            }
            let mut file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&t.path)
                .map_err(|e| Error::io(format!("opening {}", t.path.display()), e))?;
            let written = file.write_all(&out).and_then(|()| file.sync_data());
            if let Err(e) = written {
                // Leave no partial batch behind: the next writer would cut it anyway.
                let _ = file.set_len(good);
                return Err(Error::io(format!("appending to {}", t.path.display()), e));
            }
            Ok(())
        })
    }

    /// Reads and checks every record: the chain, the hashes and the MACs. Returns them.
    pub(crate) fn verify(&self) -> Result<Vec<TrailRecord>> {
        let mut records = Vec::new();
        self.verify_each(|r| {
            records.push(r);
            Ok(())
        })?;
        Ok(records)
    }

    /// Reads the records one at a time, in order, and hands each to `each` once it is
    /// checked (the chain up to it, its hash and its MAC); memory stays bounded however
    /// long the trail is. Returns the number of records.
    pub(crate) fn verify_each(&self, mut each: impl FnMut(TrailRecord) -> Result<()>) -> Result<u64> {
        use std::io::BufRead;
        let file = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(Error::io(format!("reading {}", self.path.display()), e)),
        };
        let mut reader = std::io::BufReader::new(file);
        let mut prev = genesis();
        let mut seq = 0u64;
        let mut line = Vec::new();
        for n in 1.. {
            line.clear();
            // One record is a few hundred bytes; a line longer than any record could be is
            // not read whole.
            let read = (&mut reader)
                .take(MAX_LINE as u64 + 1)
                .read_until(b'\n', &mut line)
                .map_err(|e| Error::io(format!("reading {}", self.path.display()), e))?;
            if read == 0 {
                break;
            }
            if line.len() > MAX_LINE {
                return Err(corrupt(&self.path, format!("record {n} is too long")));
            }
            if line.last() == Some(&b'\n') {
                line.pop();
            }
            if line.is_empty() {
                continue;
            }
            let record: TrailRecord = serde_json::from_slice(&line)
                .map_err(|e| corrupt(&self.path, format!("record {n} does not parse: {e}")))?;
            let hash = crate::hex::encode(&Sha256::digest(body(&record, &["hash"])?.as_bytes()));
            if record.prev != prev || record.hash != hash || record.seq != seq + 1 {
                return Err(corrupt(
                    &self.path,
                    format!("record {n} breaks the chain (edited, removed, inserted or reordered)"),
                ));
            }
            let given = crate::hex::decode(&record.mac).unwrap_or_default();
            let mut mac =
                <Hmac<Sha256> as KeyInit>::new_from_slice(&self.key).unwrap_or_else(|_| unreachable!());
            mac.update(b"tde kms audit\0");
            mac.update(body(&record, &["mac", "hash"])?.as_bytes());
            if mac.verify_slice(&given).is_err() {
                return Err(Error::Authentication {
                    location: format!(
                        "record {n} of {} (its MAC does not check out)",
                        self.path.display()
                    ),
                });
            }
            prev = record.hash.clone();
            seq = record.seq;
            each(record)?;
        }
        Ok(seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(op: &str, outcome: &str) -> TrailEvent {
        TrailEvent {
            principal: "arn:aws:iam::111111111111:user/a".into(),
            source: "127.0.0.1:1".into(),
            op: op.into(),
            key: "k1".into(),
            blob: Some(b"ciphertext bytes".to_vec()),
            outcome: outcome.into(),
            ..TrailEvent::default()
        }
    }

    fn key() -> Zeroizing<Vec<u8>> {
        Zeroizing::new(vec![7u8; 32])
    }

    #[test]
    fn records_chain_across_writers_and_hide_blobs() {
        let dir = tempfile::tempdir().unwrap();
        let (a, cut) = Trail::open(dir.path(), key()).unwrap();
        assert_eq!(cut, 0);
        a.append(&[event("Decrypt", "ok"), event("Decrypt", "AccessDeniedException")])
            .unwrap();
        // A second writer (another process) continues the chain.
        let (b, _) = Trail::open(dir.path(), key()).unwrap();
        b.append(&[event("CreateKey", "ok")]).unwrap();
        a.append(&[event("Encrypt", "ok")]).unwrap();
        let records = a.verify().unwrap();
        assert_eq!(records.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 2, 3, 4]);
        assert_eq!(records[1].outcome, "AccessDeniedException");
        let text = std::fs::read_to_string(dir.path().join(TRAIL_FILE)).unwrap();
        assert!(!text.contains("ciphertext bytes"));
        assert_eq!(records[0].blob.as_deref().map(str::len), Some(32));
        // Another audit key: the MACs do not check out.
        let (other, _) = Trail::open(dir.path(), Zeroizing::new(vec![8u8; 32])).unwrap();
        assert!(matches!(other.verify(), Err(Error::Authentication { .. })));
    }

    #[test]
    fn edits_are_found_and_a_torn_tail_is_cut_and_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(TRAIL_FILE);
        let (t, _) = Trail::open(dir.path(), key()).unwrap();
        t.append(&[event("Decrypt", "AccessDeniedException"), event("Decrypt", "ok")])
            .unwrap();
        let good = std::fs::read_to_string(&path).unwrap();
        // An edited outcome breaks the chain; one with its hash recomputed fails its MAC.
        std::fs::write(&path, good.replacen("AccessDeniedException", "ok", 1)).unwrap();
        assert!(matches!(t.verify(), Err(Error::Corrupt { .. })));
        let mut records: Vec<TrailRecord> = good.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        records[1].outcome = "ThrottlingException".into();
        records[1].hash =
            crate::hex::encode(&Sha256::digest(body(&records[1], &["hash"]).unwrap().as_bytes()));
        let forged: String = records
            .iter()
            .map(|r| serde_json::to_string(r).unwrap() + "\n")
            .collect();
        std::fs::write(&path, forged).unwrap();
        assert!(matches!(t.verify(), Err(Error::Authentication { .. })));
        // A removed record breaks the chain.
        let second = good.lines().nth(1).unwrap().to_owned() + "\n";
        std::fs::write(&path, &second).unwrap();
        assert!(matches!(t.verify(), Err(Error::Corrupt { .. })));
        // A torn last record: cut at the next open, and the cut recorded.
        let tail = "{\"seq\":3,\"time\":";
        std::fs::write(&path, good.clone() + tail).unwrap();
        let (t, cut) = Trail::open(dir.path(), key()).unwrap();
        assert_eq!(cut, tail.len() as u64);
        let records = t.verify().unwrap();
        assert_eq!(records.len(), 3);
        assert_eq!(records[2].op, "trail-cut");
    }
}
