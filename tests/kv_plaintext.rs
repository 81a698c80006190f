//! Every file the store writes is ciphertext: a distinctive marker written to two tables
//! appears in no file under the store directory, while open and after close, after
//! flushes, compaction and with a live WAL.

mod common;

use common::{TestStore, contains, files_below};
use tde::kv::TableOptions;

const MARKER: &[u8] = b"ZEBRA-MARKER-7f3a9c";

fn assert_no_marker(dir: &std::path::Path, when: &str) {
    let files = files_below(dir);
    assert!(
        files.len() > 5,
        "{when}: expected a populated store, found {} files",
        files.len()
    );
    let mut kinds = std::collections::BTreeSet::new();
    for (path, bytes) in &files {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        kinds.insert(
            name.split(['-', '.'])
                .next()
                .unwrap_or("")
                .trim_end_matches(char::is_numeric)
                .to_owned(),
        );
        assert!(
            !contains(bytes, MARKER),
            "{when}: {} contains the plaintext marker",
            path.display()
        );
        for table in [b"customers".as_slice(), b"orders".as_slice()] {
            // Table names are public metadata of the keyring and the audit trail only.
            if !["TDE-KEYRING.a", "TDE-KEYRING.b", tde::audit::AUDIT_FILE].contains(&name.as_str()) {
                assert!(
                    !contains(bytes, table),
                    "{when}: {} names table {:?}",
                    path.display(),
                    String::from_utf8_lossy(table)
                );
            }
        }
    }
}

#[test]
fn no_plaintext_in_any_file() {
    let t = TestStore::new();
    let store = t.create();
    let sealed = store
        .create_table("customers", &TableOptions::default().seal_values(true))
        .unwrap();
    let unsealed = store.create_table("orders", &TableOptions::default()).unwrap();
    let value = |i: u32| [MARKER, format!("-{i}-").as_bytes(), MARKER].concat();
    for i in 0..2000u32 {
        sealed
            .put(
                format!("{}-key-{i}", String::from_utf8_lossy(MARKER)).as_bytes(),
                value(i),
            )
            .unwrap();
        unsealed.put(format!("order-{i}").as_bytes(), value(i)).unwrap();
    }
    store.flush().unwrap();
    for i in 2000..4000u32 {
        sealed.put(format!("k{i}").as_bytes(), value(i)).unwrap();
        unsealed.put(format!("order-{i}").as_bytes(), value(i)).unwrap();
    }
    store.flush().unwrap();
    store.compact().unwrap();
    // More writes, not flushed: they live in the WAL.
    for i in 4000..4500u32 {
        sealed.put(format!("wal-{i}").as_bytes(), value(i)).unwrap();
        unsealed
            .put(format!("wal-order-{i}").as_bytes(), value(i))
            .unwrap();
    }
    assert_no_marker(&t.path(), "while open");
    assert_eq!(sealed.get(b"wal-4001").unwrap().unwrap(), value(4001));
    assert_eq!(unsealed.get(b"order-17").unwrap().unwrap(), value(17));
    drop((sealed, unsealed));
    drop(store);
    assert_no_marker(&t.path(), "after close");
    let store = t.open().unwrap();
    assert_eq!(
        store
            .table("customers")
            .unwrap()
            .get(b"wal-4499")
            .unwrap()
            .unwrap(),
        value(4499)
    );
    assert_eq!(store.table("orders").unwrap().iter().unwrap().count(), 4500);
    // The info LOG exists and is encrypted too.
    assert!(
        files_below(&t.path())
            .iter()
            .any(|(p, _)| p.file_name().unwrap() == "LOG")
    );
}
