//! Data key rotation and re-encryption: new writes under the new version, old data
//! rewritten in the background while the store serves, old versions retired, and a pass
//! that resumes after it is stopped.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use common::TestStore;
use tde::kv::{ReencryptOptions, Store, TableOptions};

fn row(i: u64) -> (Vec<u8>, Vec<u8>) {
    (
        format!("key{i:08}").into_bytes(),
        format!("value {i} {}", "x".repeat(80)).into_bytes(),
    )
}

fn fill(store: &Store, table: &str, range: std::ops::Range<u64>) {
    let t = store.table(table).unwrap();
    let mut batch = store.batch();
    for i in range {
        let (k, v) = row(i);
        batch.put(&t, &k, &v);
        if batch.len() >= 1000 {
            store.write(std::mem::replace(&mut batch, store.batch())).unwrap();
        }
    }
    store.write(batch).unwrap();
}

fn check(store: &Store, table: &str, n: u64) {
    let t = store.table(table).unwrap();
    let mut count = 0;
    for item in t.iter().unwrap() {
        let (k, v) = item.unwrap();
        let i: u64 = std::str::from_utf8(&k[3..]).unwrap().parse().unwrap();
        assert_eq!((k, v), row(i));
        count += 1;
    }
    assert_eq!(count, n, "rows of {table}");
}

/// (table id, version) of every tde file directly in `dir`, by file name.
fn file_versions(dir: &Path) -> Vec<(String, u32, u32)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let Ok(bytes) = std::fs::read(&path) else { continue };
        if bytes.len() < 36 || &bytes[..8] != b"TDEFILE\0" {
            continue;
        }
        let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
        out.push((
            path.file_name().unwrap().to_string_lossy().into_owned(),
            u32_at(28),
            u32_at(32),
        ));
    }
    out
}

fn two_tables(ts: &TestStore) -> Store {
    let store = ts.create();
    store
        .create_table("sealed", &TableOptions::default().seal_values(true))
        .unwrap();
    store
        .create_table("plain", &tde::kv::TableOptions::default())
        .unwrap();
    fill(&store, "sealed", 0..20_000);
    fill(&store, "plain", 0..20_000);
    store.flush().unwrap();
    store
}

#[test]
fn rotation_makes_new_writes_use_the_new_version_and_a_pass_retires_the_old_one() {
    let ts = TestStore::new();
    let store = two_tables(&ts);
    let rotated = store.rotate_data_key(None).unwrap();
    assert_eq!(rotated.len(), 3, "the store-level key and both tables");
    assert!(rotated.iter().all(|r| r.version == 2), "{rotated:?}");
    assert!(store.tables().iter().all(|t| t.data_key_version == 2));

    // Old data reads; new data goes under version 2.
    fill(&store, "sealed", 20_000..30_000);
    fill(&store, "plain", 20_000..30_000);
    store.flush().unwrap();
    check(&store, "sealed", 30_000);
    let ssts: Vec<_> = file_versions(&ts.path())
        .into_iter()
        .filter(|f| f.0.ends_with(".sst"))
        .collect();
    assert!(
        ssts.iter().any(|f| f.2 == 1) && ssts.iter().any(|f| f.2 == 2),
        "{ssts:?}"
    );

    let pending = store.reencrypt_status().unwrap();
    assert_eq!(pending.len(), 3, "{pending:?}");
    assert!(pending.iter().all(|p| p.versions == vec![1] && !p.started));

    let report = store.reencrypt(ReencryptOptions::default()).wait().unwrap();
    let retired: Vec<_> = report
        .retired
        .iter()
        .map(|r| (r.table.as_str(), r.version))
        .collect();
    assert!(
        retired.contains(&("sealed", 1)) && retired.contains(&("plain", 1)),
        "{report:?}"
    );
    assert!(report.resealed_values >= 20_000, "{report:?}");
    assert!(report.rewritten_bytes > 0);
    check(&store, "sealed", 30_000);
    check(&store, "plain", 30_000);
    for f in file_versions(&ts.path()).iter().filter(|f| f.0.ends_with(".sst")) {
        assert_eq!(f.2, 2, "{f:?} is still under version 1");
    }
    // The MANIFEST and friends are replaced at the next open.
    assert!(!report.pending_reopen.is_empty(), "{report:?}");

    drop(store);
    ts.kms.reset_calls();
    let store = ts.open().unwrap();
    assert_eq!(
        ts.kms.calls(tde::testing::KmsOp::Decrypt),
        4,
        "the store key has two versions, each table one"
    );
    let report = store.reencrypt(ReencryptOptions::default()).wait().unwrap();
    assert_eq!(
        report.retired,
        vec![tde::kv::RetiredKey {
            table: "(store)".into(),
            version: 1
        }]
    );
    assert!(store.reencrypt_status().unwrap().is_empty());
    for f in file_versions(&ts.path()) {
        assert_eq!(f.2, 2, "{f:?} is still under version 1");
    }
    drop(store);
    ts.kms.reset_calls();
    let store = ts.open().unwrap();
    assert_eq!(ts.kms.calls(tde::testing::KmsOp::Decrypt), 3, "one version each");
    check(&store, "sealed", 30_000);
    check(&store, "plain", 30_000);
    let audit = tde::audit::read(&ts.path()).unwrap();
    assert_eq!(audit.iter().filter(|r| r.op == "retire-data-key").count(), 3);
}

#[test]
fn writes_and_batches_during_a_pass_all_read_back() {
    let ts = TestStore::new();
    let store = two_tables(&ts);
    // A batch built before the rotation is sealed when it is written.
    let sealed = store.table("sealed").unwrap();
    let mut early = store.batch();
    for i in 50_000..50_100 {
        let (k, v) = row(i);
        early.put(&sealed, &k, &v);
    }
    store.rotate_data_key(Some("sealed")).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let writer = {
        let (store, stop, written) = (store.clone(), stop.clone(), written.clone());
        std::thread::spawn(move || {
            let t = store.table("sealed").unwrap();
            let mut i = 100_000;
            while !stop.load(Ordering::SeqCst) {
                let (k, v) = row(i);
                t.put(&k, &v).unwrap();
                i += 1;
                written.store(i - 100_000, Ordering::SeqCst);
            }
        })
    };
    let job = store.reencrypt(ReencryptOptions::default().rate_limit(4 << 20));
    let mut reads = 0;
    while !job.is_finished() {
        let (k, v) = row(reads % 20_000);
        assert_eq!(sealed.get(&k).unwrap(), Some(v));
        reads += 1;
    }
    let report = job.wait().unwrap();
    store.write(early).unwrap();
    stop.store(true, Ordering::SeqCst);
    writer.join().unwrap();
    assert!(
        report
            .retired
            .iter()
            .any(|r| r.table == "sealed" && r.version == 1)
    );
    let n = written.load(Ordering::SeqCst);
    assert!(n > 0 && reads > 0);
    drop(sealed);
    drop(store);
    let store = ts.open().unwrap();
    check(&store, "sealed", 20_000 + 100 + n);
}

#[test]
fn a_snapshot_from_before_the_pass_holds_retirement_back_and_still_reads() {
    let ts = TestStore::new();
    let store = two_tables(&ts);
    let sealed = store.table("sealed").unwrap();
    let snapshot = store.snapshot();
    store.rotate_data_key(Some("sealed")).unwrap();
    sealed.put(b"key00000000", b"changed").unwrap();
    let job = store.reencrypt(ReencryptOptions::default());
    let waiting = loop {
        let p = job.progress();
        if let Some(w) = p.waiting {
            break w;
        }
        assert!(
            !p.finished,
            "the pass retired a version a snapshot may still read"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    assert!(waiting.contains("1 snapshots or iterators"), "{waiting}");
    let (k, v) = row(1);
    assert_eq!(snapshot.get(&sealed, &k).unwrap(), Some(v));
    assert_eq!(snapshot.get(&sealed, b"key00000000").unwrap(), Some(row(0).1));
    drop(snapshot);
    let report = job.wait().unwrap();
    assert_eq!(report.retired.len(), 1);
    assert_eq!(
        sealed.get(b"key00000000").unwrap().as_deref(),
        Some(&b"changed"[..])
    );
}

#[test]
fn a_cancelled_pass_resumes_where_it_stopped() {
    let ts = TestStore::new();
    let store = ts.create();
    store
        .create_table("sealed", &TableOptions::default().seal_values(true))
        .unwrap();
    // Several files, so the pass takes several steps.
    for part in 0..6 {
        fill(&store, "sealed", part * 20_000..(part + 1) * 20_000);
        store.flush().unwrap();
    }
    store.rotate_data_key(Some("sealed")).unwrap();
    let before = store.reencrypt_status().unwrap();
    assert_eq!(before.len(), 1);
    let total = before[0].bytes;
    let job = store.reencrypt(ReencryptOptions::default().rate_limit(1 << 20));
    while job.progress().done_bytes == 0 {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(matches!(job.cancel(), Err(tde::Error::Cancelled)));
    let status = store.reencrypt_status().unwrap();
    assert!(status[0].started, "the plan is in the keyring");
    assert!(
        status[0].bytes < total,
        "{} of {total} bytes left",
        status[0].bytes
    );

    // A restart in between: the pass resumes from the keyring.
    drop(store);
    let store = ts.open().unwrap();
    let job = store.reencrypt(ReencryptOptions::default());
    let report = job.wait().unwrap();
    assert!(
        report.rewritten_bytes < total,
        "{} of {total} rewritten again",
        report.rewritten_bytes
    );
    assert_eq!(report.retired.len(), 1);
    check(&store, "sealed", 120_000);
}

#[test]
fn a_store_without_old_versions_has_nothing_to_do() {
    let ts = TestStore::new();
    let store = two_tables(&ts);
    assert!(store.reencrypt_status().unwrap().is_empty());
    let report = store.reencrypt(ReencryptOptions::default()).wait().unwrap();
    assert_eq!(report, tde::kv::ReencryptReport::default());
    assert!(matches!(
        store.rotate_data_key(Some("nope")),
        Err(tde::Error::NoSuchTable(_))
    ));
}

#[test]
fn seal_counts_survive_a_restart_and_keys_rotate_before_their_limit() {
    let ts = TestStore::new();
    let options = || ts.options().seal_limit(1000);
    let store = Store::create(ts.path(), options()).unwrap();
    let t = store
        .create_table("t", &TableOptions::default().seal_values(true))
        .unwrap();
    for i in 0..700 {
        t.put(&row(i).0, &row(i).1).unwrap();
    }
    let policy = tde::kv::RotationPolicy::default();
    assert!(
        store.maintain_keys(&policy).unwrap().is_empty(),
        "700 of 1000 is below 3/4"
    );
    drop(t);
    drop(store);

    // The count carries over the restart: 700 + 100 passes 750.
    let store = Store::open(ts.path(), options()).unwrap();
    let t = store.table("t").unwrap();
    for i in 700..800 {
        t.put(&row(i).0, &row(i).1).unwrap();
    }
    let rotated = store.maintain_keys(&policy).unwrap();
    assert_eq!(
        rotated,
        vec![tde::kv::RotatedKey {
            table: "t".into(),
            version: 2
        }]
    );
    for i in 800..1800 {
        t.put(&row(i).0, &row(i).1).unwrap();
    }
    // Without maintenance, a version refuses to seal past its limit, and nothing is lost.
    let err = t.put(b"one too many", b"v").unwrap_err();
    assert!(
        matches!(
            err,
            tde::Error::KeyExhausted {
                version: 2,
                limit: 1000
            }
        ),
        "{err}"
    );
    assert_eq!(t.get(b"one too many").unwrap(), None);
    store.rotate_data_key(Some("t")).unwrap();
    t.put(b"one too many", b"v").unwrap();
    t.delete(b"one too many").unwrap();
    check(&store, "t", 1800);
}

#[test]
fn automatic_rotation_on_a_schedule() {
    let ts = TestStore::new();
    let store = two_tables(&ts);
    let auto = store.auto_rotate(
        tde::kv::RotationPolicy::default()
            .max_age(std::time::Duration::ZERO)
            .check_every(std::time::Duration::from_millis(20)),
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while auto.rotated().len() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "no rotation: {:?}",
            auto.last_error()
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    drop(auto);
    assert!(store.tables().iter().all(|t| t.data_key_version >= 2));
    check(&store, "sealed", 20_000);
}
