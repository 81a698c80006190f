//! Ciphertext backups: consistent, incremental, verifiable without keys, restorable with
//! the KMS, and never holding plaintext or a plaintext key.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};

use common::{TestStore, contains, files_below};
use tde::Error;
use tde::kms::local::CreateKeyOptions;
use tde::kv::TableOptions;

const MARKER: &[u8] = b"BACKUP-PLAINTEXT-MARKER";

fn fill(store: &tde::kv::Store, table: &str, from: u32, to: u32) {
    let t = store.table(table).unwrap();
    for i in from..to {
        let mut value = MARKER.to_vec();
        value.extend_from_slice(i.to_string().as_bytes());
        t.put(format!("k{i:06}").as_bytes(), &value).unwrap();
    }
}

fn count(store: &tde::kv::Store, table: &str) -> usize {
    let mut n = 0;
    for item in store.table(table).unwrap().iter().unwrap() {
        item.unwrap();
        n += 1;
    }
    n
}

/// The plaintext data keys of every table, straight from the KMS.
fn plaintext_keys(t: &TestStore) -> Vec<Vec<u8>> {
    use tde::kms::Kms;
    let keyring = tde::keyring::Keyring::open(&t.path()).unwrap();
    let data = keyring.data();
    let mut keys = Vec::new();
    for envelope in std::iter::once(&data.store_key).chain(data.tables.iter().map(|t| &t.envelope)) {
        for v in &envelope.versions {
            let context = tde::keyring::context(&data.store_id, envelope.table_id, v.version);
            let dk = t.local().decrypt(v.edk.as_bytes(), &context).unwrap();
            keys.push(dk.expose().to_vec());
        }
    }
    keys
}

fn scan_clean(dir: &Path, keys: &[Vec<u8>]) {
    let files = files_below(dir);
    assert!(!files.is_empty());
    for (path, bytes) in files {
        assert!(!contains(&bytes, MARKER), "{} holds plaintext", path.display());
        for key in keys {
            assert!(!contains(&bytes, key), "{} holds a plaintext key", path.display());
        }
    }
}

#[test]
fn backups_are_incremental_ciphertext_and_each_restores_on_its_own() {
    let t = TestStore::new();
    let store = t.create();
    store.create_table("users", &TableOptions::default()).unwrap();
    store
        .create_table("logs", &tde::kv::TableOptions::default())
        .unwrap();
    fill(&store, "users", 0, 2000);
    fill(&store, "logs", 0, 2000);
    let dest = t.tmp.path().join("backups");
    let first = tde::backup::create(&store, &dest).unwrap();
    // Only the two identical keyring copies share an object in the first backup.
    assert!(
        first.copied_bytes > first.bytes / 2 && first.copied_bytes <= first.bytes,
        "{first:?}"
    );
    fill(&store, "users", 2000, 2100);
    let second = tde::backup::create(&store, &dest).unwrap();
    assert!(
        second.copied_bytes < second.bytes / 2,
        "{second:?}: SST files are shared"
    );
    assert_eq!(tde::backup::list(&dest).unwrap().len(), 2);
    scan_clean(&dest, &plaintext_keys(&t));

    let report = tde::backup::verify(&dest, None).unwrap();
    assert_eq!(report.backups, 2);
    let deep = tde::backup::verify_deep(&dest, None, t.options()).unwrap();
    assert_eq!(deep.records, Some(4100));

    // Each backup restores on its own, to its own point in time.
    let old = tde::backup::restore(&dest, Some(&first.id), &t.tmp.path().join("r1"), t.options()).unwrap();
    assert_eq!(count(&old, "users"), 2000);
    let latest = tde::backup::restore(&dest, None, &t.tmp.path().join("r2"), t.options()).unwrap();
    assert_eq!((count(&latest, "users"), count(&latest, "logs")), (2100, 2000));
    assert_eq!(latest.store_id(), store.store_id());

    // Restore, then write: new values read back beside the old ones (fresh random nonces).
    fill(&latest, "users", 5000, 5100);
    latest.flush().unwrap();
    drop(latest);
    let reopened = tde::kv::Store::open(t.tmp.path().join("r2"), t.options()).unwrap();
    assert_eq!(count(&reopened, "users"), 2200);
    assert_eq!(count(&store, "users"), 2100, "the original is untouched");

    // Restoring over something is refused.
    let err = tde::backup::restore(&dest, None, &t.tmp.path().join("r2"), t.options()).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
}

#[test]
fn a_backup_taken_during_writes_is_a_consistent_prefix() {
    let t = TestStore::new();
    let store = t.create();
    store.create_table("seq", &TableOptions::default()).unwrap();
    let dest = t.tmp.path().join("backups");
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            let table = store.table("seq").unwrap();
            let mut i = 0u32;
            while !done.load(Ordering::Relaxed) || i < 3000 {
                table.put(format!("k{i:08}").as_bytes(), b"v").unwrap();
                i += 1;
            }
        });
        std::thread::sleep(std::time::Duration::from_millis(20));
        tde::backup::create(&store, &dest).unwrap();
        done.store(true, Ordering::Relaxed);
    });
    let restored = tde::backup::restore(&dest, None, &t.tmp.path().join("r"), t.options()).unwrap();
    let keys: Vec<Vec<u8>> = restored
        .table("seq")
        .unwrap()
        .iter()
        .unwrap()
        .map(|r| r.unwrap().0)
        .collect();
    assert!(!keys.is_empty());
    for (i, key) in keys.iter().enumerate() {
        assert_eq!(
            key,
            format!("k{i:08}").as_bytes(),
            "a gap: not a consistent prefix"
        );
    }
}

#[test]
fn damage_is_found_without_keys_and_a_disabled_key_refuses_restore() {
    let t = TestStore::new();
    let key = t.local().create_key(&CreateKeyOptions::default()).unwrap().key_id;
    let store = t.create();
    store.create_table("pii", &common::keyed(&key)).unwrap();
    fill(&store, "pii", 0, 500);
    let dest = t.tmp.path().join("backups");
    let backup = tde::backup::create(&store, &dest).unwrap();
    drop(store);

    let objects: Vec<_> = std::fs::read_dir(dest.join("objects"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let victim = objects
        .iter()
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    let original = std::fs::read(victim).unwrap();
    let mut flipped = original.clone();
    flipped[original.len() / 2] ^= 1;
    std::fs::write(victim, &flipped).unwrap();
    let err = tde::backup::verify(&dest, None).unwrap_err();
    assert!(
        matches!(err, Error::Corrupt { .. }) && err.to_string().contains(&backup.id),
        "{err}"
    );
    assert!(tde::backup::restore(&dest, None, &t.tmp.path().join("r0"), t.options()).is_err());
    assert!(
        !t.tmp.path().join("r0").exists(),
        "a failed restore leaves nothing"
    );
    std::fs::remove_file(victim).unwrap();
    assert!(tde::backup::verify(&dest, None).is_err(), "a missing file");
    std::fs::write(victim, &original).unwrap();
    tde::backup::verify(&dest, None).unwrap();

    let manifest = dest.join("backups").join(format!("{}.json", backup.id));
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(&manifest, text.replacen("\"size\": ", "\"size\": 1", 1)).unwrap();
    assert!(matches!(
        tde::backup::verify(&dest, None),
        Err(Error::Corrupt { .. })
    ));
    std::fs::write(&manifest, text).unwrap();

    t.local().disable_key(&key).unwrap();
    let target = t.tmp.path().join("r1");
    let err = tde::backup::restore(&dest, None, &target, t.options()).unwrap_err();
    assert!(matches!(err, Error::KeysUnavailable { .. }), "{err:?}");
    assert!(!target.exists(), "a failed restore leaves nothing");
    t.local().enable_key(&key).unwrap();
    let restored = tde::backup::restore(&dest, None, &target, t.options()).unwrap();
    assert_eq!(count(&restored, "pii"), 500);
}

#[test]
fn an_interrupted_backup_leaves_earlier_ones_intact_and_can_be_retried() {
    let t = TestStore::new();
    let store = t.create();
    store.create_table("users", &TableOptions::default()).unwrap();
    fill(&store, "users", 0, 300);
    let dest = t.tmp.path().join("backups");
    let first = tde::backup::create(&store, &dest).unwrap();
    fill(&store, "users", 300, 600);

    // The manifest cannot be written: the backup fails after copying its files.
    let backups = dest.join("backups");
    std::fs::rename(&backups, dest.join("aside")).unwrap();
    std::fs::write(&backups, b"not a directory").unwrap();
    assert!(tde::backup::create(&store, &dest).is_err());
    std::fs::remove_file(&backups).unwrap();
    std::fs::rename(dest.join("aside"), &backups).unwrap();
    assert_eq!(tde::backup::list(&dest).unwrap().len(), 1);
    tde::backup::verify(&dest, None).unwrap();

    // A checkpoint left behind by a crash does not disturb the store or the next backup.
    std::fs::create_dir(t.path().join(".tde-checkpoint-dead")).unwrap();
    fill(&store, "users", 600, 700);
    let retried = tde::backup::create(&store, &dest).unwrap();
    assert!(!t.path().join(".tde-checkpoint-dead").exists());
    drop(store);
    let store = t.open().unwrap();
    assert_eq!(count(&store, "users"), 700, "every acknowledged write");
    let old = tde::backup::restore(&dest, Some(&first.id), &t.tmp.path().join("a"), t.options()).unwrap();
    assert_eq!(count(&old, "users"), 300);
    let new = tde::backup::restore(&dest, Some(&retried.id), &t.tmp.path().join("b"), t.options()).unwrap();
    assert_eq!(count(&new, "users"), 700);
}

#[test]
fn the_cli_backs_up_lists_verifies_and_restores() {
    let t = TestStore::new();
    let store = t.create();
    store.create_table("users", &TableOptions::default()).unwrap();
    fill(&store, "users", 0, 100);
    drop(store);
    let kms = format!("local:{}", t.tmp.path().join("kms").display());
    let dest = t.tmp.path().join("bk").to_string_lossy().into_owned();
    let path = t.path().to_string_lossy().into_owned();
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_tde"))
            .args(args)
            .env("HOME", t.tmp.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let id = run(&["--kms", &kms, "backup", "create", &path, &dest]);
    assert!(run(&["backup", "list", &dest]).contains(id.trim()));
    assert!(run(&["backup", "verify", &dest]).contains("checksums match"));
    // The store was created through a wrapped KMS, so name the KMS explicitly.
    assert!(run(&["--kms", &kms, "backup", "verify", &dest, "--deep"]).contains("100 records authenticated"));
    let target = t.tmp.path().join("restored").to_string_lossy().into_owned();
    assert!(run(&["--kms", &kms, "backup", "restore", &dest, &target]).contains("1 tables"));
    assert!(
        run(&["--kms", &kms, "get", &target, "users", "k000042"]).starts_with("BACKUP-PLAINTEXT-MARKER42")
    );

    // Carry it to another KMS.
    let other = t.tmp.path().join("kms-2");
    let other_uri = format!("local:{}", other.display());
    run(&["kms", "init", &other.to_string_lossy()]);
    let key = run(&["--kms", &other_uri, "kms", "create-key"]);
    let key = key.lines().next().unwrap().trim().to_owned();
    let out = run(&[
        "--kms", &kms, "backup", "rewrap", &dest, "--to-key", &key, "--to-kms", &other_uri,
    ]);
    assert!(out.contains("no data file changed"), "{out}");
    let moved = t.tmp.path().join("moved").to_string_lossy().into_owned();
    assert!(
        run(&["backup", "restore", &dest, &moved]).contains("1 tables"),
        "the manifest names the new KMS"
    );
}

#[test]
fn rewrap_carries_a_backup_to_another_kms_without_touching_its_data() {
    use std::sync::Arc;
    let t = TestStore::new();
    let store = t.create();
    store.create_table("users", &TableOptions::default()).unwrap();
    fill(&store, "users", 0, 200);
    let dest = t.tmp.path().join("backups");
    let backup = tde::backup::create(&store, &dest).unwrap();
    drop(store);
    let data_objects = |m: &tde::backup::Manifest| -> Vec<String> {
        m.files
            .iter()
            .filter(|f| !f.name.starts_with("TDE-KEYRING"))
            .map(|f| format!("{}={}", f.name, f.sha256))
            .collect()
    };
    let before = tde::backup::find(&dest, None).unwrap();

    // Another KMS, e.g. in another region.
    let other = Arc::new(tde::kms::local::LocalKms::create(t.tmp.path().join("kms-2")).unwrap());
    let key = other.create_key(&CreateKeyOptions::default()).unwrap().key_id;
    let after = tde::backup::rewrap(
        &dest,
        None,
        t.kms.clone(),
        Some(other.clone() as Arc<dyn tde::kms::Kms>),
        &key,
        Some("local:elsewhere"),
    )
    .unwrap();
    assert_eq!(after.id, backup.id);
    assert_eq!(
        data_objects(&after),
        data_objects(&before),
        "no data file changed"
    );
    assert_ne!(after.files, before.files, "the keyring did");
    assert_eq!(after.kms, "local:elsewhere");
    tde::backup::verify(&dest, None).unwrap();
    scan_clean(&dest, &plaintext_keys(&t));

    // Only the new KMS can restore it now.
    let err = tde::backup::restore(&dest, None, &t.tmp.path().join("r1"), t.options()).unwrap_err();
    assert!(matches!(err, Error::KeysUnavailable { .. }), "{err:?}");
    let restored = tde::backup::restore(
        &dest,
        None,
        &t.tmp.path().join("r2"),
        tde::kv::StoreOptions::new(other.clone()),
    )
    .unwrap();
    assert_eq!(count(&restored, "users"), 200);
    drop(restored);

    // Within one KMS, to another key: the old key is then not needed.
    let k3 = other.create_key(&CreateKeyOptions::default()).unwrap().key_id;
    tde::backup::rewrap(&dest, None, other.clone(), None, &k3, None).unwrap();
    other.disable_key(&key).unwrap();
    let restored = tde::backup::restore(
        &dest,
        None,
        &t.tmp.path().join("r3"),
        tde::kv::StoreOptions::new(other.clone()),
    )
    .unwrap();
    assert_eq!(count(&restored, "users"), 200);
}

#[test]
fn a_tablespace_backs_up_verifies_restores_and_moves_to_another_kms() {
    use std::sync::Arc;
    use tde::page::{BufferPool, Tablespace};
    let t = common::TestPages::new();
    let pool = BufferPool::new(1 << 20);
    let ts = Tablespace::create(t.path("orders.tbs"), &t.options(), &pool).unwrap();
    let stamp = |ts: &Tablespace, n: u64, v: u8| {
        let mut g = ts.write(n).unwrap();
        g.fill(v);
        g[..MARKER.len()].copy_from_slice(MARKER);
    };
    for n in 0..50 {
        stamp(&ts, n, 1);
    }
    ts.sync().unwrap();
    let dest = t.path("backups");
    let first = tde::backup::create_tablespace(&ts, &dest).unwrap();
    // A backup syncs first: every write so far is in it.
    for n in 0..10 {
        stamp(&ts, n, 2);
    }
    let second = tde::backup::create_tablespace(&ts, &dest).unwrap();
    assert_ne!(first.id, second.id);
    let manifests = tde::backup::list(&dest).unwrap();
    assert!(
        manifests
            .iter()
            .all(|m| m.kind == tde::backup::BackupKind::Tablespace)
    );
    for (path, bytes) in files_below(&dest) {
        assert!(!contains(&bytes, MARKER), "plaintext in {}", path.display());
    }
    assert_eq!(tde::backup::verify(&dest, None).unwrap().backups, 2);
    let deep = tde::backup::verify_deep_tablespace(&dest, None, &t.options()).unwrap();
    assert_eq!(deep.records, Some(50));

    let restored =
        tde::backup::restore_tablespace(&dest, Some(&first.id), &t.path("old.tbs"), &t.options(), &pool)
            .unwrap();
    assert_eq!(restored.read(3).unwrap()[MARKER.len()], 1);
    let restored =
        tde::backup::restore_tablespace(&dest, None, &t.path("new.tbs"), &t.options(), &pool).unwrap();
    assert_eq!(restored.read(3).unwrap()[MARKER.len()], 2);
    assert!(matches!(
        tde::backup::restore_tablespace(&dest, None, &t.path("new.tbs"), &t.options(), &pool),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        tde::backup::restore(&dest, None, &t.path("as-store"), TestStore::new().options()),
        Err(Error::InvalidArgument(_))
    ));

    // Carried to another KMS: only that one opens it.
    let other = Arc::new(tde::kms::local::LocalKms::create(t.path("kms-2")).unwrap());
    let key = other.create_key(&CreateKeyOptions::default()).unwrap().key_id;
    let moved = tde::backup::rewrap_tablespace(
        &dest,
        None,
        &t.options(),
        Some((other.clone(), Some("local:elsewhere"))),
        &key,
    )
    .unwrap();
    assert_eq!(moved.kms, "local:elsewhere");
    let options = tde::page::TablespaceOptions::new(other);
    let copy = tde::backup::restore_tablespace(&dest, None, &t.path("moved.tbs"), &options, &pool).unwrap();
    assert_eq!(copy.verify().unwrap(), 50);
    let err =
        tde::backup::restore_tablespace(&dest, None, &t.path("nope.tbs"), &t.options(), &pool).unwrap_err();
    assert!(matches!(err, Error::KeysUnavailable { .. }), "{err}");
    assert!(!t.path("nope.tbs").exists(), "a failed restore leaves nothing");

    // Damage is found without keys.
    let object = dest.join("objects").join(&moved.files[0].sha256);
    let mut bytes = std::fs::read(&object).unwrap();
    bytes[9000] ^= 1;
    std::fs::write(&object, bytes).unwrap();
    assert!(matches!(
        tde::backup::verify(&dest, None),
        Err(Error::Corrupt { .. })
    ));
}
