//! Format 2 (every byte of every RocksDB file authenticated): a torn last frame of a log
//! is cut and reported, never silent; a damaged frame anywhere else is an error.

mod common;

use common::TestStore;

fn wal(dir: &std::path::Path) -> std::path::PathBuf {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .expect("a WAL")
}

fn fill(t: &TestStore) {
    let store = tde::kv::Store::open(t.path(), t.options().sync_writes(true)).unwrap();
    let table = store
        .create_table("t", &tde::kv::TableOptions::default())
        .unwrap();
    for i in 0..200u32 {
        table.put(format!("k{i:04}"), format!("value {i}")).unwrap();
    }
    drop(table);
    drop(store);
}

#[test]
fn a_torn_last_frame_is_cut_and_reported_and_synced_writes_survive() {
    let t = TestStore::new();
    drop(t.create());
    fill(&t);
    let log = wal(&t.path());
    // A crash mid-append: a frame header whose data never reached the disk.
    let mut bytes = std::fs::read(&log).unwrap();
    let mut torn = vec![0u8; 52];
    torn[..4].copy_from_slice(&1000u32.to_le_bytes());
    bytes.extend_from_slice(&torn);
    bytes.extend_from_slice(&[0x5a; 300]);
    std::fs::write(&log, &bytes).unwrap();

    let store = t.open().unwrap();
    let cut = store.torn_tails();
    assert_eq!(cut.len(), 1, "{cut:?}");
    assert_eq!(cut[0].1, 352, "{cut:?}");
    let table = store.table("t").unwrap();
    for i in 0..200u32 {
        assert_eq!(
            table.get(format!("k{i:04}")).unwrap().unwrap(),
            format!("value {i}").as_bytes()
        );
    }
    let trail = std::fs::read_to_string(t.path().join(tde::audit::AUDIT_FILE)).unwrap();
    assert!(trail.contains("torn-tail-cut"), "{trail}");
    store.verify_audit().unwrap();
}

#[test]
fn a_damaged_frame_before_the_last_is_an_error() {
    let t = TestStore::new();
    drop(t.create());
    fill(&t);
    let log = wal(&t.path());
    let mut bytes = std::fs::read(&log).unwrap();
    let at = 4096 + 52 + 10;
    bytes[at] ^= 0x01;
    std::fs::write(&log, &bytes).unwrap();
    let err = t.open().unwrap_err();
    assert!(err.to_string().contains("authenticate"), "{err}");
}
