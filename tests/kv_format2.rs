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

/// A store with 200 records, all in its WAL, and that WAL.
fn filled() -> (TestStore, std::path::PathBuf) {
    let t = TestStore::new();
    drop(t.create());
    fill(&t);
    let log = wal(&t.path());
    (t, log)
}

#[test]
fn a_torn_last_frame_is_cut_and_reported_and_synced_writes_survive() {
    let (t, log) = filled();
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
    let (t, log) = filled();
    let mut bytes = std::fs::read(&log).unwrap();
    let at = 4096 + 52 + 10;
    bytes[at] ^= 0x01;
    std::fs::write(&log, &bytes).unwrap();
    let err = t.open().unwrap_err();
    assert!(err.to_string().contains("authenticate"), "{err}");
}

/// Compress, then seal: compressible values take as little room as in plain RocksDB
/// (with the same options), plus the file headers and 52 bytes per 4 KiB chunk.
#[test]
fn compressible_values_compress_as_in_plain_rocksdb() {
    let t = TestStore::new();
    let value = |i: u32| format!("{i:08} {}", "the quick brown fox ".repeat(10));
    let store = t.create();
    let table = store
        .create_table("t", &tde::kv::TableOptions::default())
        .unwrap();
    for i in 0..20_000u32 {
        table.put(format!("k{i:08}"), value(i)).unwrap();
    }
    store.flush().unwrap();
    store.compact().unwrap();
    drop(table);
    drop(store);
    let plain_dir = t.tmp.path().join("plain");
    {
        let mut opts = tde::kv::StoreOptions::rocksdb_options(None, true);
        opts.create_if_missing(true);
        let db = tde::kv::rocksdb::DB::open(&opts, &plain_dir).unwrap();
        for i in 0..20_000u32 {
            db.put(format!("k{i:08}"), value(i)).unwrap();
        }
        db.flush().unwrap();
        db.compact_range(None::<&[u8]>, None::<&[u8]>);
    }
    let sst_bytes = |dir: &std::path::Path| -> u64 {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "sst"))
            .map(|p| std::fs::metadata(p).unwrap().len())
            .sum()
    };
    let (tde, plain) = (sst_bytes(&t.path()), sst_bytes(&plain_dir));
    let raw = 20_000 * (9 + value(0).len() as u64);
    eprintln!("{raw} bytes of records: plain RocksDB's table files {plain} bytes, tde's {tde}");
    assert!(
        plain * 4 < raw,
        "plain RocksDB compresses: {plain} of {raw} bytes"
    );
    assert!(
        (tde as f64) < plain as f64 * 1.03 + 8192.0,
        "tde's table files take {tde} bytes, plain RocksDB's {plain}"
    );
}

/// RocksDB's direct I/O options keep working (tde's file system serves them through the
/// page cache; mmap reads stay refused).
#[test]
fn direct_io_options_work_and_mmap_reads_are_refused() {
    let t = TestStore::new();
    drop(t.create());
    let direct = || {
        t.options().dangerous().rocksdb_options(|o| {
            o.set_use_direct_reads(true);
            o.set_use_direct_io_for_flush_and_compaction(true);
        })
    };
    {
        let store = tde::kv::Store::open(t.path(), direct()).unwrap();
        let table = store
            .create_table("t", &tde::kv::TableOptions::default())
            .unwrap();
        for i in 0..5_000u32 {
            table.put(format!("k{i:05}"), format!("value {i}")).unwrap();
        }
        store.flush().unwrap();
        store.compact().unwrap();
        assert_eq!(table.get("k01234").unwrap().unwrap(), b"value 1234");
    }
    let store = tde::kv::Store::open(t.path(), direct()).unwrap();
    assert_eq!(store.table("t").unwrap().iter().unwrap().count(), 5_000);
    assert_eq!(store.verify().unwrap().failures(), 0);
    drop(store);
    let mmap = t
        .options()
        .dangerous()
        .rocksdb_options(|o| o.set_allow_mmap_reads(true));
    assert!(tde::kv::Store::open(t.path(), mmap).is_err());
}

/// After a log's last complete frame, zeros (space a crash left unwritten) are a torn
/// tail; anything else that is not one frame cut short is damage, an error.
#[test]
fn after_the_last_frame_zeros_are_a_torn_tail_and_anything_else_is_an_error() {
    let (t, log) = filled();
    let mut zeros = std::fs::read(&log).unwrap();
    zeros.extend_from_slice(&vec![0u8; 3 << 20]);
    std::fs::write(&log, &zeros).unwrap();
    let store = t.open().unwrap();
    assert_eq!(store.torn_tails(), vec![(file_name(&log), 3 << 20)]);
    assert_eq!(store.table("t").unwrap().iter().unwrap().count(), 200);
    drop(store);

    // A frame header that claims less than what follows, then non-zero bytes (in a
    // store of its own: the open above retired that WAL).
    let (t, log) = filled();
    let mut garbage = std::fs::read(&log).unwrap();
    let mut header = vec![0u8; 52];
    header[..4].copy_from_slice(&10u32.to_le_bytes());
    garbage.extend_from_slice(&header);
    garbage.extend_from_slice(&[0x5a; 10]);
    garbage.extend_from_slice(&[0x01; 400]);
    std::fs::write(&log, &garbage).unwrap();
    let err = t.open().unwrap_err();
    assert!(
        matches!(&err, tde::Error::Authentication { location } if location.contains("neither a frame nor a torn tail")),
        "{err:?}"
    );
}

fn file_name(path: &std::path::Path) -> String {
    path.file_name().unwrap().to_string_lossy().into_owned()
}
