//! Every byte of every RocksDB file is authenticated (format 2). One flipped bit in each
//! chunk of a table file (so in its data, filter, index, properties and footer blocks), in
//! its header and trailers, and in the header and frames of the WAL, the MANIFEST, the
//! OPTIONS file, CURRENT and IDENTITY is an authentication error naming the file, with
//! value sealing off and on: where RocksDB reads the file, and in `Store::verify`, which
//! authenticates every byte. The one exception is the last frame of a log RocksDB appends
//! to (WAL, MANIFEST): damage there reads as a torn tail, which is cut and reported.

mod common;

use std::path::{Path, PathBuf};

use common::TestStore;
use tde::Error;
use tde::kv::TableOptions;

const RECORDS: u32 = 3000;
const UNFLUSHED: u32 = 40;
const HEADER: usize = 4096;
const CHUNK: usize = 4096;
const TRAILER: usize = 52;

fn value(i: u32) -> Vec<u8> {
    format!("value {i:06} {}", "abcdefgh".repeat(1 + (i % 9) as usize)).into_bytes()
}

fn key(i: u32) -> String {
    format!("key-{i:06}")
}

fn fill(t: &TestStore, seal: bool) {
    let store = tde::kv::Store::open(t.path(), t.options().sync_writes(true)).unwrap();
    let table = store
        .create_table("data", &TableOptions::default().seal_values(seal))
        .unwrap();
    for i in 0..RECORDS {
        table.put(key(i), value(i)).unwrap();
    }
    store.flush().unwrap();
    store.compact().unwrap();
    // Some records only in the WAL.
    for i in RECORDS..RECORDS + UNFLUSHED {
        table.put(key(i), value(i)).unwrap();
    }
}

/// What opening and reading a tampered store led to.
#[derive(Debug)]
enum Outcome {
    /// A failed authentication (its location), where RocksDB read the file.
    Failed(String),
    /// Another error (RocksDB's, after a torn tail was cut).
    Other(Error),
    /// Opened and read; the first file `Store::verify` failed with its message, and the
    /// log tails the open cut.
    Read {
        verify: Option<String>,
        torn: Vec<String>,
    },
}

fn attempt(t: &TestStore) -> Outcome {
    let failed = |e: Error| match e {
        Error::Authentication { location } => Outcome::Failed(location),
        e => Outcome::Other(e),
    };
    let store = match t.open() {
        Ok(store) => store,
        Err(e) => return failed(e),
    };
    let torn: Vec<String> = store.torn_tails().into_iter().map(|(name, _)| name).collect();
    let table = store.table("data").unwrap();
    let iter = match table.iter() {
        Ok(iter) => iter,
        Err(e) => return failed(e),
    };
    let mut seen = 0;
    for item in iter {
        match item {
            Ok((k, v)) => {
                let i: u32 = std::str::from_utf8(&k[4..]).unwrap().parse().unwrap();
                assert_eq!(v, value(i), "altered data returned for {i}");
                seen += 1;
            }
            Err(e) => return failed(e),
        }
    }
    for i in (0..RECORDS + UNFLUSHED).step_by(7) {
        match table.get(key(i)) {
            Ok(Some(v)) => assert_eq!(v, value(i), "altered data returned for {i}"),
            Ok(None) => {}
            Err(e) => return failed(e),
        }
    }
    // A cut tail may lose only the records of the WAL's last flush.
    assert!(
        seen + u32::from(!torn.is_empty()) >= RECORDS + UNFLUSHED,
        "{seen} records"
    );
    let report = store.verify().unwrap();
    let verify = report
        .parts
        .iter()
        .chain(&report.files)
        .find_map(|p| p.error.as_ref().map(|e| format!("{}: {e}", p.name)));
    Outcome::Read { verify, torn }
}

fn copy_dir(from: &Path, to: &Path) {
    let _ = std::fs::remove_dir_all(to);
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let p = entry.unwrap().path();
        std::fs::copy(&p, to.join(p.file_name().unwrap())).unwrap();
    }
}

fn named(dir: &Path, test: impl Fn(&str) -> bool) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| test(p.file_name().unwrap().to_str().unwrap()))
        .collect();
    found.sort();
    found
}

/// Positions to flip in a table file: a byte of every chunk, the header, and the length,
/// nonce and tag of the first and last trailers.
fn table_positions(len: usize) -> Vec<usize> {
    let mut at = vec![0, 9, 12, 30, 60, 100, 4000];
    let chunks = (len - HEADER).div_ceil(CHUNK + TRAILER);
    for i in 0..chunks {
        let start = HEADER + i * (CHUNK + TRAILER);
        let data = (len - start).min(CHUNK + TRAILER) - TRAILER;
        at.push(start + (i * 997) % data);
        if i == 0 || i + 1 == chunks {
            at.extend([
                start + data,
                start + data + 2,
                start + data + 10,
                start + data + 40,
            ]);
        }
    }
    at
}

/// A log's frames: (offset of the trailer, length).
fn frames(bytes: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut at = HEADER;
    while at + TRAILER <= bytes.len() {
        let word = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
        let len = (word & 0x7fff_ffff) as usize;
        out.push((at, len));
        at += TRAILER + len;
    }
    assert_eq!(at, bytes.len(), "frames do not end the file");
    out
}

/// Positions to flip in a log: the header, and the trailer and data of each frame (at most
/// 12 frames, the first and the last among them). Returns the positions in the last frame
/// apart.
fn log_positions(bytes: &[u8]) -> (Vec<usize>, Vec<usize>) {
    let frames = frames(bytes);
    let step = frames.len().div_ceil(12).max(1);
    let mut at = vec![0, 12, 40, 100];
    let mut last = Vec::new();
    for (k, &(start, len)) in frames.iter().enumerate() {
        let here = [
            start,
            start + 3,
            start + 20,
            start + 45,
            start + TRAILER + len / 2,
        ];
        if k + 1 == frames.len() {
            last.extend(here);
        } else if k % step == 0 {
            at.extend(here);
        }
    }
    (at, last)
}

fn flip(path: &Path, at: usize, bit: u8) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[at] ^= 1 << bit;
    std::fs::write(path, &bytes).unwrap();
}

/// Flips one bit at each position of the file `name` in turn (from a pristine copy) and
/// checks the outcome.
fn tamper(t: &TestStore, pristine: &Path, name: &str, positions: &[usize], may_tear: bool) {
    for (n, &at) in positions.iter().enumerate() {
        copy_dir(pristine, &t.path());
        flip(&t.path().join(name), at, (n % 8) as u8);
        match attempt(t) {
            Outcome::Failed(location) => {
                assert!(
                    location.contains(name),
                    "{name} at {at}: the error does not name it: {location}"
                )
            }
            Outcome::Read { verify: Some(e), .. } => {
                assert!(e.contains(name), "{name} at {at}: verify names another file: {e}")
            }
            // A cut MANIFEST tail can leave RocksDB without a file it needs.
            Outcome::Other(e) => assert!(
                may_tear && e.to_string().contains(name),
                "{name} at {at}: not an authentication error naming it: {e:?}"
            ),
            Outcome::Read { verify: None, torn } => assert!(
                may_tear && torn.iter().any(|t| t == name),
                "a flipped bit at {at} of {name} went unnoticed (torn tails cut: {torn:?})"
            ),
        }
    }
}

fn file_name(p: &Path) -> String {
    p.file_name().unwrap().to_string_lossy().into_owned()
}

#[test]
fn a_flipped_bit_anywhere_in_any_file_is_an_authentication_error_naming_it() {
    for seal in [false, true] {
        let t = TestStore::new();
        drop(t.create());
        fill(&t, seal);
        let pristine = t.tmp.path().join("pristine");
        copy_dir(&t.path(), &pristine);
        match attempt(&t) {
            Outcome::Read { verify: None, torn } if torn.is_empty() => {}
            other => panic!("the pristine store does not verify: {other:?}"),
        }

        let ssts = named(&pristine, |n| n.ends_with(".sst"));
        assert!(!ssts.is_empty());
        for sst in &ssts {
            let len = std::fs::metadata(sst).unwrap().len() as usize;
            tamper(&t, &pristine, &file_name(sst), &table_positions(len), false);
        }
        let logs = |test: &dyn Fn(&str) -> bool| named(&pristine, test);
        for (files, may_tear) in [
            (logs(&|n| n.ends_with(".log")), true),
            (logs(&|n| n.starts_with("MANIFEST-")), true),
            // The newest OPTIONS file: an open deletes all but the two newest, unread.
            (
                logs(&|n| n.starts_with("OPTIONS-"))
                    .into_iter()
                    .last()
                    .into_iter()
                    .collect(),
                false,
            ),
            (logs(&|n| n == "CURRENT" || n == "IDENTITY"), false),
        ] {
            assert!(!files.is_empty());
            for file in files {
                let bytes = std::fs::read(&file).unwrap();
                if bytes.len() == HEADER {
                    continue; // an empty log: its header only
                }
                let (at, last) = log_positions(&bytes);
                let name = file_name(&file);
                tamper(&t, &pristine, &name, &at, false);
                tamper(&t, &pristine, &name, &last, may_tear);
            }
        }
    }
}
