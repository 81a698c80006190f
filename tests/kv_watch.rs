//! The key-state watch: a revoked master key fails its tables closed within one
//! interval while other tables keep working; an unreachable KMS is reported, not fatal;
//! re-enabling the key and reopening restores service.

mod common;

use std::time::{Duration, Instant};

use common::TestStore;
use tde::Error;
use tde::audit::Reason;
use tde::kms::local::CreateKeyOptions;

fn setup(t: &TestStore) -> (tde::kv::Store, String) {
    let key = t.local().create_key(&CreateKeyOptions::default()).unwrap().key_id;
    let store = t.create();
    let pii = store.create_table("pii", &common::keyed(&key)).unwrap();
    let logs = store
        .create_table("logs", &tde::kv::TableOptions::default())
        .unwrap();
    for i in 0..200u32 {
        pii.put(format!("p{i}").as_bytes(), b"secret").unwrap();
        logs.put(format!("l{i}").as_bytes(), b"line").unwrap();
    }
    (store, key)
}

fn revoked(result: tde::Result<impl std::fmt::Debug>) -> bool {
    matches!(result, Err(Error::KeyRevoked { .. }))
}

#[test]
fn a_disabled_key_fails_its_tables_closed_and_others_keep_working() {
    let t = TestStore::new();
    let (store, key) = setup(&t);
    let pii = store.table("pii").unwrap();
    let logs = store.table("logs").unwrap();
    assert!(store.check_keys().unwrap().revoked.is_empty());

    t.local().disable_key(&key).unwrap();
    let report = store.check_keys().unwrap();
    assert_eq!(report.revoked.len(), 1, "{report:?}");
    assert_eq!(report.revoked[0].0, "pii");

    let err = pii.get(b"p1").unwrap_err();
    assert!(
        matches!(&err, Error::KeyRevoked { table, key: k, .. } if table == "pii" && *k == key),
        "{err:?}"
    );
    assert!(err.to_string().contains("Disabled"), "{err}");
    assert!(revoked(pii.put(b"p1", b"x")));
    assert!(revoked(pii.delete(b"p1")));
    assert!(revoked(pii.iter().map(|_| ())));
    let mut batch = store.batch();
    batch.put(&pii, b"p2", b"x");
    assert!(revoked(store.write(batch)));
    let other = store.table("pii").unwrap();
    assert!(revoked(other.get(b"p3")), "a fresh handle too");

    // The other table, flushes and compactions keep working.
    logs.put(b"after", b"revocation").unwrap();
    assert_eq!(logs.get(b"l7").unwrap().as_deref(), Some(&b"line"[..]));
    store.flush().unwrap();
    store.compact().unwrap();
    assert_eq!(logs.iter().unwrap().count(), 201);
    assert!(store.check_keys().unwrap().revoked.is_empty(), "already revoked");
    drop((pii, logs, other, store));

    // Re-enabled and reopened, everything is back.
    assert!(t.open().is_err(), "still disabled");
    t.local().enable_key(&key).unwrap();
    let store = t.open().unwrap();
    assert_eq!(
        store.table("pii").unwrap().get(b"p199").unwrap().as_deref(),
        Some(&b"secret"[..])
    );
    assert_eq!(
        store.table("logs").unwrap().get(b"after").unwrap().as_deref(),
        Some(&b"revocation"[..])
    );
    let watch_records = tde::audit::read(&t.path())
        .unwrap()
        .into_iter()
        .filter(|r| r.reason == Reason::Watch)
        .count();
    assert_eq!(watch_records, 6, "two keys, three rounds");
}

#[test]
fn an_unreachable_kms_is_reported_and_a_denied_key_revokes() {
    let t = TestStore::new();
    let (store, key) = setup(&t);
    t.kms.set_outage(true);
    let report = store.check_keys().unwrap();
    assert!(report.revoked.is_empty());
    assert_eq!(report.unreachable.len(), 2, "{report:?}");
    assert_eq!(
        store.table("pii").unwrap().get(b"p1").unwrap().as_deref(),
        Some(&b"secret"[..])
    );
    t.kms.set_outage(false);

    t.kms.deny_key(&key);
    let report = store.check_keys().unwrap();
    assert_eq!(report.revoked.len(), 1, "{report:?}");
    assert!(revoked(store.table("pii").unwrap().get(b"p1")));
    assert!(store.table("logs").unwrap().get(b"l1").unwrap().is_some());
}

#[test]
fn the_background_watch_acts_within_one_interval() {
    let t = TestStore::new();
    let (store, key) = setup(&t);
    let interval = Duration::from_millis(100);
    let watch = store.watch_keys(interval);
    let pii = store.table("pii").unwrap();
    std::thread::sleep(interval * 2);
    assert!(pii.get(b"p1").is_ok());
    t.local().schedule_key_deletion(&key, Some(7)).unwrap();
    let start = Instant::now();
    while !revoked(pii.get(b"p1")) {
        assert!(
            start.elapsed() < interval * 10,
            "not revoked after {:?}",
            start.elapsed()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // One interval, plus slack for a loaded machine.
    assert!(
        start.elapsed() <= interval + Duration::from_secs(1),
        "took {:?}",
        start.elapsed()
    );
    assert!(matches!(watch.last(), Some(Ok(_))));
    drop(watch);
    assert!(store.table("logs").unwrap().get(b"l1").unwrap().is_some());
}

#[test]
fn tde_watch_once_checks_every_master_key() {
    let t = TestStore::new();
    let (store, key) = setup(&t);
    drop(store);
    let kms = format!("local:{}", t.tmp.path().join("kms").display());
    let path = t.path().to_string_lossy().into_owned();
    let run = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_tde"))
            .args(["--kms", &kms, "watch", &path, "--once"])
            .env("HOME", t.tmp.path())
            .output()
            .unwrap()
    };
    let out = run();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("checked 2 master key(s)"));
    // With the KMS down, the check reports and does not fail the store.
    let _ = key;
    std::fs::rename(t.tmp.path().join("kms"), t.tmp.path().join("kms-away")).unwrap();
    let out = run();
    assert!(
        !out.status.success(),
        "the store cannot even open without its KMS"
    );
    std::fs::rename(t.tmp.path().join("kms-away"), t.tmp.path().join("kms")).unwrap();
    assert!(run().status.success());
}
