//! Failure behaviour: disabled, deleted or revoked master keys, a KMS that is down, a
//! different KMS, files moved between stores, and tampered files. Each gives a typed
//! error that says what is wrong, and nothing on disk changes.

mod common;

use std::sync::Arc;

use common::{TestStore, fingerprint};
use tde::Error;
use tde::kms::KmsErrorKind;
use tde::kms::local::{CreateKeyOptions, LocalKms};
use tde::kv::{Store, StoreOptions, TableOptions};

fn two_tables(t: &TestStore) -> String {
    let store = t.create();
    let cmk = t.local().create_key(&CreateKeyOptions::default()).unwrap().key_id;
    let a = store.create_table("accounts", &TableOptions::default()).unwrap();
    let b = store
        .create_table("secrets", &TableOptions::default().master_key(cmk.clone()))
        .unwrap();
    for i in 0..500u32 {
        a.put(format!("a{i}").as_bytes(), b"account").unwrap();
        b.put(format!("s{i}").as_bytes(), b"secret").unwrap();
    }
    store.flush().unwrap();
    cmk
}

fn unavailable(err: &Error) -> &[tde::keyring::KeyFailure] {
    match err {
        Error::KeysUnavailable { failures } => failures,
        other => panic!("expected KeysUnavailable, got {other:?}"),
    }
}

#[test]
fn disabled_or_deleted_key_fails_open_naming_table_and_key_and_changes_nothing() {
    let t = TestStore::new();
    let cmk = two_tables(&t);
    let before = fingerprint(&t.path());

    t.local().disable_key(&cmk).unwrap();
    let err = t.open().unwrap_err();
    let failures = unavailable(&err);
    assert_eq!(failures.len(), 1);
    assert_eq!(failures[0].table, "secrets");
    assert_eq!(failures[0].key, cmk);
    assert_eq!(failures[0].error.kind(), KmsErrorKind::Disabled);
    assert!(!err.is_retryable());
    let text = err.to_string();
    assert!(
        text.contains("secrets") && text.contains(&cmk) && text.contains("disabled"),
        "{text}"
    );
    assert_eq!(
        fingerprint(&t.path()),
        before,
        "a failed open must not touch the store"
    );

    t.local().enable_key(&cmk).unwrap();
    t.local().schedule_key_deletion(&cmk, Some(7)).unwrap();
    let err = t.open().unwrap_err();
    assert_eq!(unavailable(&err)[0].error.kind(), KmsErrorKind::PendingDeletion);

    t.local().cancel_key_deletion(&cmk).unwrap();
    t.local().enable_key(&cmk).unwrap();
    t.kms.deny_key(&cmk);
    let err = t.open().unwrap_err();
    assert_eq!(unavailable(&err)[0].error.kind(), KmsErrorKind::AccessDenied);
    assert_eq!(fingerprint(&t.path()), before);
}

#[test]
fn kms_outage_at_open_is_a_retryable_error_after_the_retry_budget() {
    let t = TestStore::new();
    two_tables(&t);
    let before = fingerprint(&t.path());
    t.kms.set_outage(true);
    let started = std::time::Instant::now();
    let err = t.open().unwrap_err();
    assert!(err.is_retryable(), "{err}");
    assert!(
        unavailable(&err)
            .iter()
            .all(|f| f.error.kind() == KmsErrorKind::Unavailable)
    );
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(300),
        "retries must back off"
    );
    assert_eq!(fingerprint(&t.path()), before);
    t.kms.set_outage(false);
    t.open().unwrap();
}

#[test]
fn another_kms_cannot_open_the_store() {
    let t = TestStore::new();
    two_tables(&t);
    let before = fingerprint(&t.path());
    let other = Arc::new(LocalKms::create(t.tmp.path().join("other-kms")).unwrap());
    let err = Store::open(t.path(), StoreOptions::new(other)).unwrap_err();
    let failures = unavailable(&err);
    assert_eq!(failures.len(), 3, "every key is foreign to the other KMS");
    assert!(failures.iter().all(|f| f.error.kind() == KmsErrorKind::NotFound));
    assert_eq!(fingerprint(&t.path()), before);
}

#[test]
fn files_moved_from_another_store_are_refused() {
    let t = TestStore::new();
    two_tables(&t);
    let other = TestStore::new();
    {
        let store = other.create();
        let table = store.create_table("accounts", &TableOptions::default()).unwrap();
        table.put(b"x", b"y").unwrap();
        store.flush().unwrap();
    }
    // Replace this store's files (not its keyring) with the other store's.
    for entry in std::fs::read_dir(t.path()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if !name.starts_with("TDE-KEYRING") && name != "LOCK" {
            std::fs::remove_file(&path).unwrap();
        }
    }
    for entry in std::fs::read_dir(other.path()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if !name.starts_with("TDE-KEYRING") && name != "LOCK" {
            std::fs::copy(&path, t.path().join(&name)).unwrap();
        }
    }
    let err = t.open().unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, Error::Authentication { .. }), "{err:?}");
    assert!(text.contains("another store"), "{text}");
}

#[test]
fn not_a_store() {
    let t = TestStore::new();
    std::fs::create_dir_all(t.path()).unwrap();
    assert!(matches!(t.open(), Err(Error::InvalidArgument(m)) if m.contains("not a tde store")));
    let store = t.create();
    drop(store);
    assert!(matches!(
        Store::create(t.path(), t.options()),
        Err(Error::InvalidArgument(_))
    ));
}

#[test]
fn a_destroyed_master_key_fails_open_naming_the_table() {
    let (tmp, clock, kms) = common::TestKms::new().shared();
    let cmk = kms.create_key(&CreateKeyOptions::default()).unwrap().key_id;
    let path = tmp.path().join("store");
    {
        let store = Store::create(&path, StoreOptions::new(kms.clone())).unwrap();
        let t = store
            .create_table("doomed", &TableOptions::default().master_key(cmk.clone()))
            .unwrap();
        t.put(b"k", b"v").unwrap();
        store.flush().unwrap();
    }
    kms.schedule_key_deletion(&cmk, Some(7)).unwrap();
    clock.advance_days(7);
    let before = fingerprint(&path);
    let err = Store::open(&path, StoreOptions::new(kms.clone())).unwrap_err();
    let failures = unavailable(&err);
    assert_eq!(failures.len(), 1);
    assert_eq!(failures[0].table, "doomed");
    assert_eq!(failures[0].error.kind(), KmsErrorKind::NotFound);
    assert!(err.to_string().contains("destroyed"), "{err}");
    assert_eq!(fingerprint(&path), before);
}

/// A store the KMS refuses to create (its default master key is disabled) leaves the
/// directory as it found it: gone if it made it, empty if it was given an empty one, so
/// that creating it again once the key is usable works.
#[test]
fn a_create_the_kms_refuses_leaves_nothing_behind() {
    let t = TestStore::new();
    let cmk = t.local().create_key(&CreateKeyOptions::default()).unwrap().key_id;
    t.local().disable_key(&cmk).unwrap();
    let options = || t.options().default_key(cmk.clone());
    let err = Store::create(t.path(), options()).unwrap_err();
    assert!(
        matches!(err, Error::Kms(ref e) if e.kind() == KmsErrorKind::Disabled),
        "{err:?}"
    );
    assert!(!t.path().exists(), "the directory it made is removed");
    std::fs::create_dir(t.path()).unwrap();
    Store::create(t.path(), options()).unwrap_err();
    assert_eq!(
        std::fs::read_dir(t.path()).unwrap().count(),
        0,
        "an empty directory stays empty"
    );
    t.local().enable_key(&cmk).unwrap();
    Store::create(t.path(), options()).unwrap();
}
