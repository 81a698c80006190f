//! Master-key rotation and change of master key: EDKs are rewrapped online, while the
//! store serves reads and writes; no data file is rewritten.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};

use common::{TestStore, fingerprint};
use tde::kms::local::CreateKeyOptions;
use tde::kv::TableOptions;
use tde::testing::KmsOp;

fn new_key(t: &TestStore) -> String {
    t.local().create_key(&CreateKeyOptions::default()).unwrap().key_id
}

fn edks(t: &TestStore, table: &str) -> Vec<Vec<u8>> {
    let keyring = tde::keyring::Keyring::open(&t.path()).unwrap();
    let entry = keyring.data().tables.iter().find(|e| e.name == table).unwrap();
    entry
        .envelope
        .versions
        .iter()
        .map(|v| v.edk.as_bytes().to_vec())
        .collect()
}

#[test]
fn changing_a_tables_master_key_rewrites_only_the_keyring() {
    let t = TestStore::new();
    let (k1, k2) = (new_key(&t), new_key(&t));
    let store = t.create();
    let pii = store.create_table("pii", &common::keyed(&k1)).unwrap();
    for i in 0..1000u32 {
        pii.put(format!("k{i}").as_bytes(), format!("v{i}").as_bytes())
            .unwrap();
    }
    store.flush().unwrap();
    let mut before = fingerprint(&t.path());
    before.retain(|(p, _)| !p.to_string_lossy().contains("TDE-KEYRING") && !p.ends_with("LOG"));
    let old_edks = edks(&t, "pii");

    t.kms.reset_calls();
    let report = store.rewrap(Some("pii"), Some(&k2)).unwrap();
    assert_eq!((report.envelopes, report.wrapped_keys), (1, 1));
    assert_eq!(t.kms.calls(KmsOp::ReEncrypt), 1);
    assert_eq!(
        t.kms.calls(KmsOp::Decrypt) + t.kms.calls(KmsOp::GenerateDataKey),
        0
    );
    let mut after = fingerprint(&t.path());
    after.retain(|(p, _)| !p.to_string_lossy().contains("TDE-KEYRING") && !p.ends_with("LOG"));
    assert!(before == after, "no data file changed");
    assert_ne!(edks(&t, "pii"), old_edks);
    let info = store.tables().into_iter().find(|i| i.name == "pii").unwrap();
    assert_eq!(info.master_key, k2);
    assert_eq!(pii.get(b"k7").unwrap().as_deref(), Some(&b"v7"[..]));
    drop((pii, store));

    // The old master key is no longer needed.
    t.local().disable_key(&k1).unwrap();
    let store = t.open().unwrap();
    assert_eq!(
        store.table("pii").unwrap().get(b"k999").unwrap().as_deref(),
        Some(&b"v999"[..])
    );
    let audit = tde::audit::read(&t.path()).unwrap();
    assert!(
        audit
            .iter()
            .any(|r| r.op == "re-encrypt" && r.key == k2 && r.table == "pii")
    );
}

#[test]
fn rewrap_after_kms_rotation_runs_while_the_store_serves() {
    let t = TestStore::new();
    let store = t.create();
    let users = store.create_table("users", &TableOptions::default()).unwrap();
    let logs = store.create_table("logs", &TableOptions::default()).unwrap();
    let old_edks = edks(&t, "users");
    t.local().rotate_key(tde::kv::DEFAULT_MASTER_KEY).unwrap();

    let stop = AtomicBool::new(false);
    let written = std::thread::scope(|s| {
        let writer = s.spawn(|| {
            let mut n = 0u32;
            while !stop.load(Ordering::Relaxed) || n < 100 {
                users
                    .put(format!("u{n}").as_bytes(), format!("value {n}").as_bytes())
                    .unwrap();
                assert!(logs.get(format!("u{n}").as_bytes()).unwrap().is_none());
                n += 1;
            }
            n
        });
        for _ in 0..3 {
            let report = store.rewrap(None, None).unwrap();
            assert_eq!((report.envelopes, report.wrapped_keys), (3, 3));
        }
        stop.store(true, Ordering::Relaxed);
        writer.join().unwrap()
    });
    assert_ne!(edks(&t, "users"), old_edks);
    drop((users, logs, store));
    let store = t.open().unwrap();
    let users = store.table("users").unwrap();
    for n in (0..written).step_by(17) {
        assert_eq!(
            users.get(format!("u{n}").as_bytes()).unwrap().unwrap(),
            format!("value {n}").into_bytes()
        );
    }
}

#[test]
fn the_cli_rewraps_and_refuses_a_disabled_target() {
    let t = TestStore::new();
    let k2 = new_key(&t);
    drop(t.create());
    let kms = format!("local:{}", t.tmp.path().join("kms").display());
    let path = t.path().to_string_lossy().into_owned();
    let run = |args: &[&str]| common::tde_at_home(t.tmp.path(), args);
    let out = run(&["--kms", &kms, "rotate", &path, "--master", "--to-key", &k2]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("no data file was rewritten"));
    let keyring = tde::keyring::Keyring::open(&t.path()).unwrap();
    assert_eq!(keyring.data().default_key, k2);
    assert_eq!(keyring.data().store_key.cmk, k2);

    let k3 = new_key(&t);
    t.local().disable_key(&k3).unwrap();
    let before = std::fs::read(t.path().join("TDE-KEYRING.a")).unwrap();
    let out = run(&["--kms", &kms, "rotate", &path, "--master", "--to-key", &k3]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("disabled"));
    assert_eq!(
        std::fs::read(t.path().join("TDE-KEYRING.a")).unwrap(),
        before,
        "nothing changed"
    );
}
