//! The audit trail: one chained record per KMS call a store makes, failures included;
//! `tde audit verify` detects edited, removed and reordered records.

mod common;

use common::TestStore;
use tde::audit::{self, AUDIT_FILE, Reason};
use tde::kms::local::CreateKeyOptions;
use tde::kv::{Store, TableOptions};

#[test]
fn every_kms_call_is_recorded_with_its_reason_and_outcome() {
    let t = TestStore::new();
    let store = t.create();
    let key = t.local().create_key(&CreateKeyOptions::default()).unwrap().key_id;
    store.create_table("pii", &common::keyed(&key)).unwrap();
    store.create_table("logs", &TableOptions::default()).unwrap();
    drop(store);
    t.local().disable_key(&key).unwrap();
    assert!(t.open().is_err());
    t.local().enable_key(&key).unwrap();
    let store = t.open().unwrap();

    let records = audit::read(&t.path()).unwrap();
    assert_eq!(
        records.len() as u64,
        t.kms.total_calls(),
        "one record per KMS call"
    );
    let failed: Vec<_> = records.iter().filter(|r| r.outcome != "ok").collect();
    assert_eq!(failed.len(), 1, "{records:#?}");
    assert_eq!(
        (failed[0].table.as_str(), failed[0].key.as_str()),
        ("pii", key.as_str())
    );
    assert!(failed[0].outcome.contains("disabled"), "{}", failed[0].outcome);
    assert_eq!(failed[0].reason, Reason::Open);
    assert!(
        records
            .iter()
            .any(|r| r.reason == Reason::CreateTable && r.table == "logs")
    );
    assert_eq!(records[0].reason, Reason::Create);
    let (count, _) = audit::verify(&t.path(), &store.store_id()).unwrap();
    assert_eq!(count, records.len() as u64);
    let text = std::fs::read_to_string(t.path().join(AUDIT_FILE)).unwrap();
    assert!(!text.contains("\"plaintext\""));
    drop(store);
    let _ = Store::open(t.path(), t.options()).unwrap();
}

#[test]
fn the_cli_shows_the_trail_and_detects_tampering() {
    let t = TestStore::new();
    let store = t.create();
    store.create_table("users", &TableOptions::default()).unwrap();
    drop(store);
    drop(t.open().unwrap());
    let path = t.path();
    let run = |args: &[&str]| common::tde_at_home(t.tmp.path(), args);
    let p = path.to_string_lossy().into_owned();
    let shown = run(&["audit", "show", &p]);
    assert!(shown.status.success());
    let shown = String::from_utf8(shown.stdout).unwrap();
    assert!(
        shown.contains("create-table") && shown.contains("users"),
        "{shown}"
    );
    let ok = run(&["audit", "verify", &p]);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let kms = format!("local:{}", t.tmp.path().join("kms").display());
    let deep = run(&["--kms", &kms, "audit", "verify", &p, "--deep"]);
    assert!(deep.status.success(), "{}", String::from_utf8_lossy(&deep.stderr));
    assert!(
        String::from_utf8_lossy(&deep.stdout).contains("authenticated with the store's keys"),
        "{}",
        String::from_utf8_lossy(&deep.stdout)
    );

    let file = path.join(AUDIT_FILE);
    let original = std::fs::read_to_string(&file).unwrap();
    let lines: Vec<&str> = original.lines().collect();
    assert!(lines.len() >= 5);
    let mut removed = lines.clone();
    removed.remove(2);
    let mut swapped = lines.clone();
    swapped.swap(1, 3);
    let edited = original.replacen("\"users\"", "\"admins\"", 1);
    for (what, text) in [
        ("removed", removed.join("\n") + "\n"),
        ("reordered", swapped.join("\n") + "\n"),
        ("edited", edited),
    ] {
        std::fs::write(&file, text).unwrap();
        let out = run(&["audit", "verify", &p]);
        assert!(!out.status.success(), "{what} was not detected");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("audit log"),
            "{what}"
        );
    }
}
