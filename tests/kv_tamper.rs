//! Tampered files: a flipped byte in an SST file or in the WAL, at several positions,
//! produces an error (integrity or corruption), never altered data.

mod common;

use std::path::{Path, PathBuf};

use common::TestStore;
use tde::kv::TableOptions;

fn expected(i: u32) -> Vec<u8> {
    format!("value-{i:06}-{}", "x".repeat(40)).into_bytes()
}

/// Opens the store and reads everything; returns Err if anything failed. Panics if any
/// value read differs from what was written.
fn read_all(t: &TestStore, n: u32) -> Result<(), String> {
    let store = t.open().map_err(|e| e.to_string())?;
    // A damaged last frame of a log reads as a torn tail: cut, and reported.
    let torn = store.torn_tails();
    if !torn.is_empty() {
        return Err(format!("torn tails cut and reported: {torn:?}"));
    }
    let table = store.table("data").map_err(|e| e.to_string())?;
    let mut seen = 0u32;
    for item in table.iter().map_err(|e| e.to_string())? {
        let (k, v) = item.map_err(|e| e.to_string())?;
        let i: u32 = String::from_utf8(k[4..].to_vec()).unwrap().parse().unwrap();
        assert_eq!(v, expected(i), "altered data returned for key {i}");
        seen += 1;
    }
    for i in (0..n).step_by(97) {
        let got = table
            .get(format!("key-{i:06}").as_bytes())
            .map_err(|e| e.to_string())?;
        if let Some(v) = got {
            assert_eq!(v, expected(i), "altered data returned for key {i}");
        }
    }
    if seen != n {
        return Err(format!("{seen} of {n} records visible"));
    }
    Ok(())
}

fn largest(dir: &Path, ext: &str) -> PathBuf {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == ext))
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap_or_else(|| panic!("no .{ext} file in {}", dir.display()))
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let p = entry.unwrap().path();
        std::fs::copy(&p, to.join(p.file_name().unwrap())).unwrap();
    }
}

fn tamper_each(t: &TestStore, n: u32, ext: &str) {
    let pristine = t.tmp.path().join("pristine");
    copy_dir(&t.path(), &pristine);
    let len = std::fs::metadata(largest(&pristine, ext)).unwrap().len() as usize;
    let positions = [10, 60, 5000, len / 4, len / 2, 3 * len / 4, len - 100];
    for pos in positions {
        std::fs::remove_dir_all(t.path()).unwrap();
        copy_dir(&pristine, &t.path());
        let target = largest(&t.path(), ext);
        let mut bytes = std::fs::read(&target).unwrap();
        bytes[pos] ^= 0x04;
        std::fs::write(&target, &bytes).unwrap();
        assert!(
            read_all(t, n).is_err(),
            "a flipped byte at {pos} of the .{ext} file went unnoticed"
        );
    }
    std::fs::remove_dir_all(t.path()).unwrap();
    copy_dir(&pristine, &t.path());
    read_all(t, n).unwrap();
}

fn fill(t: &TestStore, n: u32, value_seal: bool, flush: bool) {
    let store = t.create();
    let table = store
        .create_table("data", &TableOptions::default().seal_values(value_seal))
        .unwrap();
    for i in 0..n {
        table.put(format!("key-{i:06}").as_bytes(), expected(i)).unwrap();
    }
    if flush {
        store.flush().unwrap();
        store.compact().unwrap();
    }
}

#[test]
fn flipped_bytes_in_sst_files_are_detected() {
    for value_seal in [true, false] {
        let t = TestStore::new();
        fill(&t, 20_000, value_seal, true);
        read_all(&t, 20_000).unwrap();
        tamper_each(&t, 20_000, "sst");
    }
}

#[test]
fn flipped_bytes_in_the_wal_are_detected() {
    let t = TestStore::new();
    fill(&t, 5_000, true, false);
    tamper_each(&t, 5_000, "log");
}
