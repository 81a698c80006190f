//! Crypto-shredding a table: its data is dropped and no copy of its wrapped data key is
//! left anywhere in the store; a plain drop leaves one in the older keyring copy.

mod common;

use std::process::Command;

use common::{TestStore, contains, files_below};
use tde::kv::TableOptions;

fn edk_text(t: &TestStore, table: &str) -> String {
    let keyring = tde::keyring::Keyring::open(&t.path()).unwrap();
    let entry = keyring.data().tables.iter().find(|e| e.name == table).unwrap();
    let text = serde_json::to_string(&entry.envelope.versions[0].edk).unwrap();
    text.trim_matches('"').to_owned()
}

fn holders(t: &TestStore, needle: &str) -> Vec<String> {
    files_below(&t.path())
        .into_iter()
        .filter(|(_, bytes)| contains(bytes, needle.as_bytes()))
        .map(|(p, _)| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect()
}

fn populate(t: &TestStore) -> tde::kv::Store {
    let store = t.create();
    for (name, value_seal) in [("gone", false), ("kept", true)] {
        let options = TableOptions::default().seal_values(value_seal);
        let table = store.create_table(name, &options).unwrap();
        for i in 0..500u32 {
            table
                .put(format!("{name}{i}").as_bytes(), b"SHRED-MARKER")
                .unwrap();
        }
    }
    store.flush().unwrap();
    store.table("gone").unwrap().put(b"late", b"in the WAL").unwrap();
    store
}

fn wal_files(t: &TestStore) -> Vec<String> {
    let mut logs: Vec<String> = std::fs::read_dir(t.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".log"))
        .collect();
    logs.sort();
    logs
}

#[test]
fn shredding_leaves_no_wrapped_key_and_retires_the_log_that_held_the_table() {
    // A plain drop removes the wrapped key too, but the live log still holds the records.
    let t = TestStore::new();
    let store = populate(&t);
    let edk = edk_text(&t, "gone");
    assert_eq!(holders(&t, &edk).len(), 2, "both keyring copies hold it");
    let logs = wal_files(&t);
    store.drop_table("gone").unwrap();
    assert!(holders(&t, &edk).is_empty());
    assert_eq!(
        wal_files(&t),
        logs,
        "the log holding the table's records is still live"
    );
    drop(store);

    let t = TestStore::new();
    let store = populate(&t);
    let edk = edk_text(&t, "gone");
    let logs = wal_files(&t);
    assert!(!logs.is_empty());
    store.shred_table("gone").unwrap();
    assert!(holders(&t, &edk).is_empty(), "{:?}", holders(&t, &edk));
    let live = wal_files(&t);
    assert!(
        logs.iter().all(|l| !live.contains(l)),
        "before {logs:?}, after {live:?}"
    );
    assert!(matches!(store.table("gone"), Err(tde::Error::NoSuchTable(_))));
    assert_eq!(
        store.table("kept").unwrap().get(b"kept7").unwrap().as_deref(),
        Some(&b"SHRED-MARKER"[..])
    );
    drop(store);
    let store = t.open().unwrap();
    assert_eq!(store.tables().len(), 1);
    assert!(holders(&t, &edk).is_empty());
    assert!(holders(&t, "SHRED-MARKER").is_empty());
}

#[test]
fn the_cli_shreds() {
    let t = TestStore::new();
    drop(populate(&t));
    let edk = edk_text(&t, "gone");
    let kms = format!("local:{}", t.tmp.path().join("kms").display());
    let out = Command::new(env!("CARGO_BIN_EXE_tde"))
        .args([
            "--kms",
            &kms,
            "table",
            "drop",
            &t.path().to_string_lossy(),
            "gone",
            "--shred",
        ])
        .env("HOME", t.tmp.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("shredded"));
    assert!(holders(&t, &edk).is_empty());
}

#[test]
fn a_backup_keeps_a_shredded_table_until_its_master_key_is_destroyed() {
    use tde::kms::local::CreateKeyOptions;

    let (tmp, clock, kms) = common::TestKms::new().shared();
    let key = kms.create_key(&CreateKeyOptions::default()).unwrap().key_id;
    let options = || tde::kv::StoreOptions::new(kms.clone());
    let path = tmp.path().join("store");
    let store = tde::kv::Store::create(&path, options()).unwrap();
    let table = store.create_table("patients", &common::keyed(&key)).unwrap();
    table.put(b"p1", b"record").unwrap();
    drop(table);
    let dest = tmp.path().join("backups");
    tde::backup::create(&store, &dest).unwrap();
    store.shred_table("patients").unwrap();
    drop(store);

    // The backup still holds the wrapped key: it restores the table.
    let restored = tde::backup::restore(&dest, None, &tmp.path().join("r1"), options()).unwrap();
    assert_eq!(
        restored.table("patients").unwrap().get(b"p1").unwrap().as_deref(),
        Some(&b"record"[..])
    );
    drop(restored);

    // Destroying the master key shreds it there too.
    kms.schedule_key_deletion(&key, Some(7)).unwrap();
    clock.advance(std::time::Duration::from_secs(8 * 24 * 3600));
    let err = tde::backup::restore(&dest, None, &tmp.path().join("r2"), options()).unwrap_err();
    assert!(matches!(err, tde::Error::KeysUnavailable { .. }), "{err:?}");
    assert!(err.to_string().contains("patients"), "{err}");
    // The store itself, without the table, is unaffected.
    let store = tde::kv::Store::open(&path, options()).unwrap();
    assert!(store.tables().is_empty());
}
