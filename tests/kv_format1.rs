//! A store written by the previous release (format 1: RocksDB's encrypted file system,
//! AES-CTR after tde's header) still opens: its files are read until rewritten, and every
//! file written from then on is in format 2. Its own test binary: the switch that makes
//! tde write format 1 is a process environment variable.

mod common;

use common::TestStore;

fn format_of(path: &std::path::Path) -> u8 {
    std::fs::read(path).unwrap()[8]
}

fn files(dir: &std::path::Path, ext: &str) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == ext))
        .collect()
}

#[test]
fn a_format_1_store_opens_reads_and_writes_format_2() {
    let t = TestStore::new();
    // SAFETY (of the test): this binary has no other test, so no thread reads the
    // environment while it changes.
    unsafe { std::env::set_var("TDE_TESTING_WRITE_FORMAT1", "1") };
    {
        let store = t.create();
        let table = store
            .create_table("t", &tde::kv::TableOptions::default())
            .unwrap();
        for i in 0..500u32 {
            table.put(format!("k{i:04}"), format!("old {i}")).unwrap();
        }
        store.flush().unwrap();
        table.put("wal-only", "in the WAL").unwrap();
    }
    let old_ssts = files(&t.path(), "sst");
    assert!(!old_ssts.is_empty());
    assert!(old_ssts.iter().all(|p| format_of(p) == 1));
    unsafe { std::env::remove_var("TDE_TESTING_WRITE_FORMAT1") };

    let store = t.open().unwrap();
    let table = store.table("t").unwrap();
    for i in (0..500u32).step_by(37) {
        assert_eq!(
            table.get(format!("k{i:04}")).unwrap().unwrap(),
            format!("old {i}").as_bytes()
        );
    }
    assert_eq!(table.get("wal-only").unwrap().unwrap(), b"in the WAL");
    table.put("new", "format 2").unwrap();
    store.flush().unwrap();
    let new: Vec<_> = files(&t.path(), "sst")
        .into_iter()
        .filter(|p| !old_ssts.contains(p))
        .collect();
    assert!(!new.is_empty());
    assert!(new.iter().all(|p| format_of(p) == 2));
    for log in files(&t.path(), "log") {
        assert_eq!(format_of(&log), 2, "{}", log.display());
    }
    drop(table);
    drop(store);
    let store = t.open().unwrap();
    assert_eq!(
        store.table("t").unwrap().get("new").unwrap().unwrap(),
        b"format 2"
    );

    // `verify` names the files not yet authenticated; `upgrade` rewrites them, online.
    let report = store.verify().unwrap();
    let unauthenticated: Vec<_> = report.files.iter().filter(|f| f.error.is_some()).collect();
    assert!(
        unauthenticated
            .iter()
            .all(|f| f.error.as_deref().unwrap().contains("format 1")),
        "{unauthenticated:?}"
    );
    let old_names: Vec<String> = old_ssts
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert!(
        old_names
            .iter()
            .all(|n| unauthenticated.iter().any(|f| &f.name == n))
    );
    assert!(unauthenticated.iter().any(|f| f.name == "IDENTITY"));
    let (store, upgraded) = store.upgrade().unwrap();
    assert!(upgraded.before.contains(&"IDENTITY".to_owned()), "{upgraded:?}");
    assert!(upgraded.after.is_empty(), "{upgraded:?}");
    assert!(store.format1_files().unwrap().is_empty());
    let report = store.verify().unwrap();
    assert_eq!(report.failures(), 0, "{report:?}");
    let table = store.table("t").unwrap();
    for i in 0..500u32 {
        assert_eq!(
            table.get(format!("k{i:04}")).unwrap().unwrap(),
            format!("old {i}").as_bytes()
        );
    }
    assert_eq!(table.get("wal-only").unwrap().unwrap(), b"in the WAL");
    // A second upgrade finds nothing to do.
    let (_store, again) = store.upgrade().unwrap();
    assert!(again.before.is_empty());
}
