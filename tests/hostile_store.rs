//! A store directory is hostile input: an edited keyring cannot downgrade protection or
//! rewind key state, and damaged files are reported by kind.

mod common;

use common::TestStore;
use tde::kv::TableOptions;
use tde::{EngineErrorKind, Error};

/// Rewrites both keyring copies as someone without the keys can: any field, with the
/// copies' (unkeyed) checksums fixed up.
fn edit_keyring(t: &TestStore, change: impl Fn(&mut serde_json::Value)) {
    for copy in ["TDE-KEYRING.a", "TDE-KEYRING.b"] {
        let path = t.path().join(copy);
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, common::rewrite_replicated(&bytes, &change)).unwrap();
    }
}

#[test]
fn an_edited_keyring_cannot_downgrade_sealing_reset_counts_or_rewind_versions() {
    let t = TestStore::new();
    let store = t.create();
    store
        .create_table("users", &TableOptions::default().seal_values(true))
        .unwrap();
    store.table("users").unwrap().put(b"alice", b"v").unwrap();
    store.rotate_data_key(Some("users")).unwrap();
    drop(store);
    let original: Vec<Vec<u8>> = ["TDE-KEYRING.a", "TDE-KEYRING.b"]
        .iter()
        .map(|c| std::fs::read(t.path().join(c)).unwrap())
        .collect();
    type Edit<'a> = &'a dyn Fn(&mut serde_json::Value);
    let attacks: [(&str, Edit<'_>); 4] = [
        ("value sealing off", &|k| {
            k["tables"][0]["value_seal"] = false.into()
        }),
        ("seal count reset", &|k| {
            k["tables"][0]["envelope"]["versions"][0]["seals"] = 0.into();
            k["tables"][0]["envelope"]["versions"][1]["seals"] = 0.into();
        }),
        ("current version rewound", &|k| {
            k["tables"][0]["envelope"]["current"] = 1.into()
        }),
        ("suite switched", &|k| {
            k["tables"][0]["envelope"]["suite"] = "sm4-gcm".into()
        }),
    ];
    for (what, attack) in attacks {
        edit_keyring(&t, attack);
        let err = t.open().unwrap_err();
        // A switched suite already fails the unwrap (an SM4 key is 16 bytes long).
        assert!(
            matches!(err, Error::Authentication { .. } | Error::KeysUnavailable { .. }),
            "{what}: {err:?}"
        );
        for (copy, bytes) in ["TDE-KEYRING.a", "TDE-KEYRING.b"].iter().zip(&original) {
            std::fs::write(t.path().join(copy), bytes).unwrap();
        }
    }
    let store = t.open().unwrap();
    assert_eq!(
        store.table("users").unwrap().get(b"alice").unwrap().unwrap(),
        b"v"
    );
}

#[test]
fn a_damaged_sst_block_is_reported_as_corruption() {
    let t = TestStore::new();
    let store = t.create();
    store.create_table("t", &TableOptions::default()).unwrap();
    let table = store.table("t").unwrap();
    for i in 0..2000u32 {
        table.put(format!("key{i:05}").as_bytes(), [7u8; 100]).unwrap();
    }
    store.flush().unwrap();
    drop(table);
    drop(store);
    let sst = std::fs::read_dir(t.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "sst"))
        .unwrap();
    let mut bytes = std::fs::read(&sst).unwrap();
    // A byte inside the first data block, past the 4096-byte file header.
    bytes[4096 + 200] ^= 0x10;
    std::fs::write(&sst, &bytes).unwrap();
    let store = t.open().unwrap();
    let table = store.table("t").unwrap();
    let err = (0..2000u32)
        .find_map(|i| table.get(format!("key{i:05}").as_bytes()).err())
        .expect("a damaged block went unnoticed");
    assert!(
        matches!(
            err,
            Error::Engine {
                kind: EngineErrorKind::Corruption,
                ..
            } | Error::Authentication { .. }
        ),
        "{err:?}"
    );
}

/// RocksDB's log reader loops forever on a record header of a recycled-log type after
/// the first record; flipping one bit of a MANIFEST (or WAL) record's type byte used to
/// hang every open. Every position is tried; each open must answer.
#[test]
fn a_flipped_record_type_in_a_log_is_an_error_not_a_hang() {
    let t = TestStore::new();
    let store = t.create();
    for name in ["a", "b", "c"] {
        store.create_table(name, &TableOptions::default()).unwrap();
        store.table(name).unwrap().put(b"k", b"v").unwrap();
    }
    drop(store);
    let manifest = std::fs::read_dir(t.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with("MANIFEST-"))
        .unwrap();
    let original = std::fs::read(&manifest).unwrap();
    // An open that succeeds writes a new MANIFEST: each case starts from the same files.
    let pristine: Vec<(std::path::PathBuf, Vec<u8>)> = std::fs::read_dir(t.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect();
    let t = std::sync::Arc::new(t);
    let mut refused = 0;
    for at in 4096..original.len() {
        for entry in std::fs::read_dir(t.path()).unwrap() {
            let p = entry.unwrap().path();
            if p.is_file() && !pristine.iter().any(|(q, _)| *q == p) {
                std::fs::remove_file(&p).unwrap();
            }
        }
        for (p, bytes) in &pristine {
            std::fs::write(p, bytes).unwrap();
        }
        let mut bytes = original.clone();
        // Under CTR a flipped ciphertext bit flips the same plaintext bit: type 1 (a full
        // record) becomes 5 (a recycled-log full record).
        bytes[at] ^= 0x04;
        std::fs::write(&manifest, &bytes).unwrap();
        let (done, answered) = std::sync::mpsc::channel();
        let store = t.clone();
        std::thread::spawn(move || {
            let _ = done.send(store.open().map(|s| s.torn_tails().len()));
        });
        // Every byte of the MANIFEST is authenticated: a flip is an error, or, in its last
        // frame, a torn tail that is cut and reported. Never a hang, never silence.
        match answered.recv_timeout(std::time::Duration::from_secs(60)) {
            Ok(Err(_)) => refused += 1,
            Ok(Ok(cut)) => assert!(cut > 0, "byte {at} of the MANIFEST flipped went unnoticed"),
            Err(_) => panic!("opening with byte {at} of the MANIFEST flipped did not return"),
        }
    }
    assert!(refused > 0, "no flip was refused");
    for (p, bytes) in &pristine {
        std::fs::write(p, bytes).unwrap();
    }
    t.open().unwrap();
}
