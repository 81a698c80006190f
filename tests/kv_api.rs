//! The store's Rust API: tables with their own keys and suites, reads and writes, atomic
//! batches across tables, prefix and range iteration, snapshots, drop, reopen.

mod common;

use common::TestStore;
use tde::Error;
use tde::cipher::Suite;
use tde::kms::local::CreateKeyOptions;
use tde::kv::{ScanOptions, TableOptions};

#[test]
fn tables_have_their_own_keys_and_suites() {
    let t = TestStore::new();
    let store = t.create();
    let cmk = t.local().create_key(&CreateKeyOptions::default()).unwrap().key_id;
    store
        .create_table("default-key", &TableOptions::default())
        .unwrap();
    store
        .create_table(
            "own-key",
            &TableOptions::default()
                .master_key(cmk.clone())
                .suite(Suite::Sm4Gcm),
        )
        .unwrap();
    let tables = store.tables();
    assert_eq!(tables.len(), 2);
    assert_eq!(tables[0].name, "default-key");
    assert_eq!(tables[0].master_key, "alias/acs/tde");
    assert_eq!(tables[0].suite, Suite::Aes256Gcm);
    assert_eq!(tables[1].master_key, cmk);
    assert_eq!(tables[1].suite, Suite::Sm4Gcm);
    let sm4 = store.table("own-key").unwrap();
    sm4.put(b"k", b"sm4 value").unwrap();
    assert_eq!(sm4.get(b"k").unwrap().unwrap(), b"sm4 value");
    let aegis = store
        .create_table("aegis", &TableOptions::default().suite(Suite::Aegis256))
        .unwrap();
    aegis.put(b"k", b"aegis value").unwrap();
    assert_eq!(aegis.get(b"k").unwrap().unwrap(), b"aegis value");
    assert_eq!(aegis.suite(), Suite::Aegis256);
    drop(aegis);
    assert!(matches!(
        store.create_table("own-key", &TableOptions::default()),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(store.table("missing"), Err(Error::NoSuchTable(_))));
    drop(sm4);
    drop(store);
    let store = t.open().unwrap();
    assert_eq!(
        store.table("own-key").unwrap().get(b"k").unwrap().unwrap(),
        b"sm4 value"
    );
    assert_eq!(
        store.table("aegis").unwrap().get(b"k").unwrap().unwrap(),
        b"aegis value"
    );
}

#[test]
fn put_get_delete_and_iteration() {
    let t = TestStore::new();
    let store = t.create();
    let users = store.create_table("users", &TableOptions::default()).unwrap();
    for (k, v) in [
        ("user/1", "ann"),
        ("user/2", "bob"),
        ("user/3", "cy"),
        ("group/1", "admins"),
    ] {
        users.put(k.as_bytes(), v.as_bytes()).unwrap();
    }
    assert_eq!(users.get(b"user/2").unwrap().unwrap(), b"bob");
    assert!(users.get(b"user/9").unwrap().is_none());
    users.delete(b"user/2").unwrap();
    assert!(users.get(b"user/2").unwrap().is_none());

    let all: Vec<_> = users.iter().unwrap().map(|r| r.unwrap().0).collect();
    assert_eq!(
        all,
        vec![b"group/1".to_vec(), b"user/1".to_vec(), b"user/3".to_vec()]
    );
    let prefixed: Vec<_> = users
        .scan(&ScanOptions::prefix("user/"))
        .unwrap()
        .map(|r| String::from_utf8(r.unwrap().1).unwrap())
        .collect();
    assert_eq!(prefixed, vec!["ann", "cy"]);
    let ranged: Vec<_> = users
        .scan(&ScanOptions::range("group/", "user/2"))
        .unwrap()
        .map(|r| r.unwrap().0)
        .collect();
    assert_eq!(ranged, vec![b"group/1".to_vec(), b"user/1".to_vec()]);
    // Empty values and binary keys round-trip.
    users.put([0, 255, 0], b"").unwrap();
    assert_eq!(users.get([0, 255, 0]).unwrap().unwrap(), b"");
    let big = vec![7u8; 1 << 20];
    users.put(b"big", &big).unwrap();
    assert_eq!(users.get(b"big").unwrap().unwrap(), big);
}

#[test]
fn batches_are_atomic_across_tables() {
    let t = TestStore::new();
    let store = t.create();
    let a = store.create_table("a", &TableOptions::default()).unwrap();
    let b = store.create_table("b", &TableOptions::default()).unwrap();
    a.put(b"old", b"1").unwrap();
    let mut batch = store.batch();
    batch.put(&a, b"x", b"from batch");
    batch.put(&b, b"y", b"from batch too");
    batch.delete(&a, b"old");
    assert_eq!(batch.len(), 3);
    store.write(batch).unwrap();
    assert_eq!(a.get(b"x").unwrap().unwrap(), b"from batch");
    assert_eq!(b.get(b"y").unwrap().unwrap(), b"from batch too");
    assert!(a.get(b"old").unwrap().is_none());

    // A batch naming a dropped table fails as a whole.
    let c = store.create_table("c", &TableOptions::default()).unwrap();
    store.drop_table("c").unwrap();
    let mut batch = store.batch();
    batch.put(&a, b"never", b"written");
    batch.put(&c, b"k", b"v");
    assert!(matches!(store.write(batch), Err(Error::NoSuchTable(_))));
    assert!(a.get(b"never").unwrap().is_none());
}

#[test]
fn snapshots_see_a_fixed_point_in_time() {
    let t = TestStore::new();
    let store = t.create();
    let a = store.create_table("a", &TableOptions::default()).unwrap();
    a.put(b"k1", b"before").unwrap();
    let snap = store.snapshot();
    a.put(b"k1", b"after").unwrap();
    a.put(b"k2", b"new").unwrap();
    assert_eq!(snap.get(&a, b"k1").unwrap().unwrap(), b"before");
    assert!(snap.get(&a, b"k2").unwrap().is_none());
    assert_eq!(snap.scan(&a, &ScanOptions::default()).unwrap().count(), 1);
    assert_eq!(a.get(b"k1").unwrap().unwrap(), b"after");
}

#[test]
fn dropped_tables_lose_their_keys_and_names_can_be_reused() {
    let t = TestStore::new();
    let store = t.create();
    let a = store.create_table("a", &TableOptions::default()).unwrap();
    a.put(b"k", b"v").unwrap();
    store.flush().unwrap();
    store.drop_table("a").unwrap();
    assert!(matches!(a.get(b"k"), Err(Error::NoSuchTable(_))));
    assert!(store.tables().is_empty());
    let keyring = std::fs::read(t.path().join("TDE-KEYRING.a")).unwrap();
    assert!(
        !common::contains(&keyring, b"\"name\":\"a\""),
        "the dropped table's envelope is gone"
    );
    let again = store.create_table("a", &TableOptions::default()).unwrap();
    assert!(again.get(b"k").unwrap().is_none());
    drop((a, again));
    drop(store);
    let store = t.open().unwrap();
    assert_eq!(store.tables().len(), 1);
}

#[test]
fn keyring_survives_one_damaged_copy_and_refuses_two() {
    let t = TestStore::new();
    let store = t.create();
    store
        .create_table("a", &TableOptions::default())
        .unwrap()
        .put(b"k", b"v")
        .unwrap();
    drop(store);
    let a = t.path().join("TDE-KEYRING.a");
    let mut bytes = std::fs::read(&a).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    std::fs::write(&a, &bytes).unwrap();
    let store = t.open().unwrap();
    assert_eq!(store.table("a").unwrap().get(b"k").unwrap().unwrap(), b"v");
    drop(store);
    std::fs::write(&a, b"garbage").unwrap();
    std::fs::write(t.path().join("TDE-KEYRING.b"), b"garbage").unwrap();
    let before = common::fingerprint(&t.path());
    assert!(matches!(t.open(), Err(Error::Corrupt { .. })));
    assert_eq!(common::fingerprint(&t.path()), before);
}

#[test]
fn concurrent_readers_and_writers() {
    let t = TestStore::new();
    let store = t.create();
    let a = store.create_table("a", &TableOptions::default()).unwrap();
    std::thread::scope(|s| {
        for w in 0..4u32 {
            let a = a.clone();
            s.spawn(move || {
                for i in 0..2000u32 {
                    let key = format!("{w}-{i}");
                    a.put(key.as_bytes(), key.as_bytes()).unwrap();
                    assert_eq!(a.get(key.as_bytes()).unwrap().unwrap(), key.as_bytes());
                }
            });
        }
    });
    assert_eq!(a.iter().unwrap().count(), 8000);
}

#[test]
fn rocksdb_options_that_would_defeat_the_file_layer_are_refused() {
    let t = common::TestStore::new();
    t.create();
    type Change = fn(&mut rocksdb::Options);
    let refused: [(&str, Change); 3] = [
        ("recycle_log_file_num", |o| o.set_recycle_log_file_num(2)),
        ("allow_mmap_reads", |o| o.set_allow_mmap_reads(true)),
        ("allow_mmap_writes", |o| o.set_allow_mmap_writes(true)),
    ];
    for (name, change) in refused {
        let options = t.options().dangerous().rocksdb_options(change);
        let err = tde::kv::Store::open(t.path(), options).unwrap_err();
        assert!(
            matches!(&err, tde::Error::InvalidArgument(m) if m.contains(name)),
            "{name}: {err}"
        );
    }
    // Harmless options pass, and the store still opens and works.
    let options = t
        .options()
        .dangerous()
        .rocksdb_options(|o| o.set_max_write_buffer_number(3));
    let store = tde::kv::Store::open(t.path(), options).unwrap();
    let table = store
        .create_table("t", &tde::kv::TableOptions::default())
        .unwrap();
    table.put("k", "v").unwrap();
    assert_eq!(table.get("k").unwrap().unwrap(), b"v");
}
