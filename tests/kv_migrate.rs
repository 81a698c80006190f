//! Migration of a whole store to another master key and KMS, online.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use common::TestStore;
use tde::audit::Reason;
use tde::kms::local::{CreateKeyOptions, LocalKms};
use tde::kv::{StoreOptions, TableOptions};

#[test]
fn a_store_moves_to_another_kms_while_it_serves() {
    let t = TestStore::new();
    let store = t.create();
    for name in ["users", "orders"] {
        store.create_table(name, &TableOptions::default()).unwrap();
    }
    let other = Arc::new(LocalKms::create(t.tmp.path().join("kms-2")).unwrap());
    let key = other.create_key(&CreateKeyOptions::default()).unwrap().key_id;

    let stop = AtomicBool::new(false);
    let written = std::thread::scope(|s| {
        let writer = s.spawn(|| {
            let users = store.table("users").unwrap();
            let mut n = 0u32;
            while !stop.load(Ordering::Relaxed) || n < 200 {
                users.put(format!("u{n}").as_bytes(), b"v").unwrap();
                n += 1;
            }
            n
        });
        let report = store.migrate(other.clone(), &key, Some("local:second")).unwrap();
        assert_eq!((report.envelopes, report.wrapped_keys), (3, 3));
        stop.store(true, Ordering::Relaxed);
        writer.join().unwrap()
    });
    // New tables use the new KMS.
    t.kms.reset_calls();
    store.create_table("after", &TableOptions::default()).unwrap();
    assert_eq!(t.kms.total_calls(), 0, "the old KMS is no longer used");
    assert_eq!(store.recorded_kms(), "local:second");
    drop(store);

    // The old KMS can go entirely.
    std::fs::rename(t.tmp.path().join("kms"), t.tmp.path().join("kms-gone")).unwrap();
    let store = tde::kv::Store::open(t.path(), StoreOptions::new(other.clone())).unwrap();
    assert_eq!(store.tables().len(), 3);
    assert!(store.tables().iter().all(|i| i.master_key == key));
    let users = store.table("users").unwrap();
    for n in (0..written).step_by(13) {
        assert!(users.get(format!("u{n}").as_bytes()).unwrap().is_some(), "u{n}");
    }
    let migrate = tde::audit::read(&t.path())
        .unwrap()
        .into_iter()
        .filter(|r| r.reason == Reason::Migrate)
        .count();
    assert_eq!(
        migrate,
        1 + 3 * 2,
        "describe, then a decrypt and an encrypt per key"
    );
}

#[test]
fn a_refusing_target_changes_nothing_and_the_cli_migrates() {
    let t = TestStore::new();
    drop(t.create());
    let other_dir = t.tmp.path().join("kms-2");
    let other = Arc::new(LocalKms::create(&other_dir).unwrap());
    let key = other.create_key(&CreateKeyOptions::default()).unwrap().key_id;
    other.disable_key(&key).unwrap();
    let keyring = std::fs::read(t.path().join("TDE-KEYRING.a")).unwrap();
    let store = t.open().unwrap();
    assert!(store.migrate(other.clone(), &key, None).is_err());
    assert_eq!(std::fs::read(t.path().join("TDE-KEYRING.a")).unwrap(), keyring);
    drop(store);
    other.enable_key(&key).unwrap();
    drop(other);

    let kms = format!("local:{}", t.tmp.path().join("kms").display());
    let to = format!("local:{}", other_dir.display());
    let path = t.path().to_string_lossy().into_owned();
    let run = |args: &[&str]| common::tde_at_home(t.tmp.path(), args);
    let out = run(&["--kms", &kms, "migrate", &path, "--to-key", &key, "--to-kms", &to]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Later commands use the recorded (new) KMS.
    let out = run(&["table", "create", &path, "fresh"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}
