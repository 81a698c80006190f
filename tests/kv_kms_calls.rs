//! Keys are unwrapped only at open: one KMS call per table created, one decrypt per data
//! key at open (N tables plus the store-level key), and none at all during reads, writes,
//! iteration, flush and compaction. Opening many tables against a slow KMS is bounded by
//! parallelism, not by the number of tables.

mod common;

use std::time::Duration;

use common::TestStore;
use tde::kv::TableOptions;
use tde::testing::KmsOp;

#[test]
fn kms_is_called_only_at_create_and_open() {
    let t = TestStore::new();
    let store = t.create();
    const N: usize = 8;
    t.kms.reset_calls();
    for i in 0..N {
        store
            .create_table(&format!("table-{i}"), &TableOptions::default())
            .unwrap();
    }
    assert_eq!(
        t.kms.calls(KmsOp::GenerateDataKey),
        N as u64,
        "one generate per table"
    );
    assert_eq!(t.kms.total_calls(), N as u64);
    drop(store);

    t.kms.reset_calls();
    let store = t.open().unwrap();
    assert_eq!(
        t.kms.calls(KmsOp::Decrypt),
        N as u64 + 1,
        "one decrypt per table and one for the store key"
    );
    assert_eq!(t.kms.total_calls(), N as u64 + 1);

    t.kms.reset_calls();
    let tables: Vec<_> = (0..N)
        .map(|i| store.table(&format!("table-{i}")).unwrap())
        .collect();
    for i in 0..100_000u32 {
        let table = &tables[i as usize % N];
        let key = format!("key-{}", i % 5000);
        match i % 4 {
            0 | 1 => table.put(key.as_bytes(), i.to_le_bytes()).unwrap(),
            2 => {
                table.get(key.as_bytes()).unwrap();
            }
            _ => {
                let mut batch = store.batch();
                batch.put(table, key.as_bytes(), b"batched");
                batch.delete(&tables[(i as usize + 1) % N], key.as_bytes());
                store.write(batch).unwrap();
            }
        }
        if i % 25_000 == 0 {
            store.flush().unwrap();
        }
    }
    let total: usize = tables.iter().map(|t| t.iter().unwrap().count()).sum();
    assert!(total > 0);
    store.flush().unwrap();
    store.compact().unwrap();
    let snapshot = store.snapshot();
    snapshot.get(&tables[0], b"key-1").unwrap();
    drop(snapshot);
    assert_eq!(t.kms.total_calls(), 0, "no KMS call on the data path");
}

/// What the code controls: one unwrap per data key, at most `unwrap_parallelism` calls in
/// flight, and many of them at once. The wall time is measured by `benches/open.rs`.
#[test]
fn open_with_1000_tables_against_a_slow_kms_unwraps_in_bounded_parallel() {
    let t = TestStore::new();
    let store = t.create();
    for i in 0..1000 {
        store
            .create_table(&format!("t{i:04}"), &TableOptions::default())
            .unwrap();
    }
    store.table("t0999").unwrap().put(b"k", b"v").unwrap();
    drop(store);
    t.kms.set_latency(Duration::from_millis(20));
    t.kms.reset_calls();
    let store = tde::kv::Store::open(t.path(), t.options().unwrap_parallelism(16)).unwrap();
    assert_eq!(t.kms.calls(KmsOp::Decrypt), 1001);
    let in_flight = t.kms.max_in_flight();
    assert!(
        (2..=16).contains(&in_flight),
        "{in_flight} unwraps in flight at most"
    );
    assert_eq!(store.table("t0999").unwrap().get(b"k").unwrap().unwrap(), b"v");
    assert_eq!(store.tables().len(), 1000);
}

#[test]
fn throttling_at_open_is_retried_with_backoff() {
    let t = TestStore::new();
    let store = t.create();
    store
        .create_table("a", &TableOptions::default())
        .unwrap()
        .put(b"k", b"v")
        .unwrap();
    drop(store);
    t.kms.throttle_next(3);
    let store = t.open().unwrap();
    assert_eq!(store.table("a").unwrap().get(b"k").unwrap().unwrap(), b"v");
}
