//! One lifecycle test body, run against a RocksDB store and against a page-store
//! tablespace through `KeyLifecycle`: data key rotation, rewrap, migration to another
//! KMS, re-encryption with cancel and resume, retirement, and automatic rotation at a
//! lowered seal limit. Plus the seal counts of a tablespace across opens, and an audit
//! record for every KMS call any engine or backup operation makes.

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tde::Error;
use tde::keys::{KeyLifecycle, ReencryptOptions, RotationPolicy, VersionState};
use tde::kms::Kms;
use tde::kms::local::{CreateKeyOptions, LocalKms};
use tde::kv::{Store, StoreOptions, TableOptions};
use tde::page::{BufferPool, Tablespace, TablespaceOptions};
use tde::testing::FaultyKms;

type Counting = Arc<FaultyKms<Arc<LocalKms>>>;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Store,
    Tablespace,
}

/// What the test body drives: the engine through the trait, and its data through the
/// engine's own API.
enum Subject {
    Store(Store),
    Tablespace(Tablespace),
}

impl Subject {
    fn lifecycle(&self) -> &dyn KeyLifecycle {
        match self {
            Subject::Store(s) => s,
            Subject::Tablespace(t) => t,
        }
    }

    fn into_lifecycle(self) -> Box<dyn KeyLifecycle> {
        match self {
            Subject::Store(s) => Box::new(s),
            Subject::Tablespace(t) => Box::new(t),
        }
    }

    /// Writes item `n` = `value` and makes it durable.
    fn write(&self, items: std::ops::Range<u64>, value: u64) -> tde::Result<()> {
        match self {
            Subject::Store(s) => {
                let t = s.table("t")?;
                for n in items {
                    t.put(format!("k{n:04}").as_bytes(), value.to_le_bytes())?;
                }
                s.flush()
            }
            Subject::Tablespace(ts) => {
                for n in items {
                    ts.write(n)?[..8].copy_from_slice(&value.to_le_bytes());
                }
                ts.sync()
            }
        }
    }

    fn read(&self, n: u64) -> u64 {
        let bytes = match self {
            Subject::Store(s) => s
                .table("t")
                .unwrap()
                .get(format!("k{n:04}").as_bytes())
                .unwrap()
                .unwrap(),
            Subject::Tablespace(ts) => ts.read(n).unwrap()[..8].to_vec(),
        };
        u64::from_le_bytes(bytes[..8].try_into().unwrap())
    }

    /// Seals of the current version of the data's envelope, as the engine describes it.
    fn current_seals(&self) -> u64 {
        let d = self.lifecycle().describe();
        let e = d.envelopes.last().unwrap();
        e.versions.iter().find(|v| v.version == e.current).unwrap().seals
    }
}

struct Harness {
    kind: Kind,
    tmp: tempfile::TempDir,
    kms: Counting,
    other: Counting,
    pool: BufferPool,
}

impl Harness {
    fn new(kind: Kind) -> Harness {
        let tmp = tempfile::tempdir().unwrap();
        let kms = Arc::new(FaultyKms::new(Arc::new(
            LocalKms::create(tmp.path().join("kms")).unwrap(),
        )));
        let other = Arc::new(FaultyKms::new(Arc::new(
            LocalKms::create(tmp.path().join("kms-2")).unwrap(),
        )));
        // The master key the engines start under (the service key cannot be disabled).
        kms.inner()
            .create_key(&CreateKeyOptions {
                alias: Some("alias/k1".into()),
                ..CreateKeyOptions::default()
            })
            .unwrap();
        Harness {
            kind,
            tmp,
            kms,
            other,
            pool: BufferPool::new(4 << 20),
        }
    }

    fn path(&self) -> PathBuf {
        self.tmp.path().join(match self.kind {
            Kind::Store => "store",
            Kind::Tablespace => "data.tbs",
        })
    }

    fn open_with(&self, kms: Arc<dyn Kms>, create: bool, seal_limit: Option<u64>) -> tde::Result<Subject> {
        match self.kind {
            Kind::Store => {
                let mut options = StoreOptions::new(kms).default_key("alias/k1");
                if let Some(limit) = seal_limit {
                    options = options.seal_limit(limit);
                }
                if create {
                    let s = Store::create(self.path(), options)?;
                    s.create_table("t", &TableOptions::default().seal_values(true))?;
                    Ok(Subject::Store(s))
                } else {
                    Ok(Subject::Store(Store::open(self.path(), options)?))
                }
            }
            Kind::Tablespace => {
                let mut options = TablespaceOptions::new(kms).master_key("alias/k1");
                if let Some(limit) = seal_limit {
                    options = options.seal_limit(limit);
                }
                let ts = if create {
                    Tablespace::create(self.path(), &options, &self.pool)?
                } else {
                    Tablespace::open(self.path(), &options, &self.pool)?
                };
                Ok(Subject::Tablespace(ts))
            }
        }
    }

    fn open(&self, seal_limit: Option<u64>) -> Subject {
        self.open_with(self.kms.clone(), false, seal_limit).unwrap()
    }
}

fn check(subject: &Subject, expect: &[(std::ops::Range<u64>, u64)]) {
    for (items, value) in expect {
        for n in items.clone() {
            assert_eq!(subject.read(n), *value, "item {n}");
        }
    }
}

/// The one body: every step goes through `KeyLifecycle`.
fn lifecycle(kind: Kind) {
    let h = Harness::new(kind);
    let s = h.open_with(h.kms.clone(), true, None).unwrap();
    s.write(0..50, 1).unwrap();

    // Rotation: a new current version; the old one stays readable.
    let rotated = s.lifecycle().rotate_data_key(None).unwrap();
    assert!(rotated.iter().all(|r| r.version == 2), "{rotated:?}");
    s.write(40..60, 2).unwrap();
    let expect = [(0..40, 1), (40..60, 2)];
    check(&s, &expect);
    let d = s.lifecycle().describe();
    for e in &d.envelopes {
        assert_eq!(e.current, 2, "{e:?}");
        let states: Vec<_> = e.versions.iter().map(|v| v.state).collect();
        assert_eq!(states, [VersionState::Readable, VersionState::Current]);
    }
    assert!(s.current_seals() >= 20, "seals are counted: {d:?}");

    // Rewrap, within the KMS, under another master key.
    let k2 = h
        .kms
        .inner()
        .create_key(&CreateKeyOptions::default())
        .unwrap()
        .key_id;
    let report = s.lifecycle().rewrap(None, Some(&k2)).unwrap();
    assert_eq!(report.wrapped_keys, 2 * report.envelopes);
    assert!(
        s.lifecycle()
            .describe()
            .envelopes
            .iter()
            .all(|e| e.master_key == k2)
    );
    h.kms.inner().disable_key("alias/k1").unwrap();
    drop(s);
    let s = h.open(None);
    check(&s, &expect);

    // Migration to another KMS: afterwards the first one is not asked at all.
    let k3 = h
        .other
        .inner()
        .create_key(&CreateKeyOptions::default())
        .unwrap()
        .key_id;
    s.lifecycle().migrate(h.other.clone(), &k3, None).unwrap();
    drop(s);
    h.kms.reset_calls();
    let s = h.open_with(h.other.clone(), false, None).unwrap();
    assert_eq!(h.kms.total_calls(), 0);
    check(&s, &expect);

    // Re-encryption, cancelled halfway (it waits at its rate limit), then resumed.
    let slow = ReencryptOptions::default().rate_limit(1);
    let job = s.lifecycle().reencrypt(slow);
    std::thread::sleep(Duration::from_millis(100));
    match job.cancel() {
        Err(Error::Cancelled) => {}
        other => panic!("the pass was not cancelled: {other:?}"),
    }
    assert!(!s.lifecycle().reencrypt_status().unwrap().is_empty());
    let (engine, report) =
        tde::keys::reencrypt_all(s.into_lifecycle(), ReencryptOptions::default(), &mut |_| {}).unwrap();
    assert!(report.retired.iter().all(|r| r.version == 1), "{report:?}");
    assert!(!report.retired.is_empty());
    assert!(engine.reencrypt_status().unwrap().is_empty());
    for e in engine.describe().envelopes {
        let retired: Vec<_> = e
            .versions
            .iter()
            .filter(|v| v.state == VersionState::Retired)
            .map(|v| v.version)
            .collect();
        assert_eq!(retired, [1], "{e:?}");
    }
    engine.close().unwrap();

    // Retired: the next open unwraps only the live version of each envelope.
    h.other.reset_calls();
    let s = h.open_with(h.other.clone(), false, None).unwrap();
    let envelopes = s.lifecycle().describe().envelopes.len() as u64;
    assert_eq!(h.other.calls(tde::testing::KmsOp::Decrypt), envelopes);
    check(&s, &expect);
    drop(s);

    // Automatic rotation at a lowered seal limit, and never a seal past it.
    let limit = 64;
    let s = h.open_with(h.other.clone(), false, Some(limit)).unwrap();
    let before = s.lifecycle().describe();
    let auto = s
        .lifecycle()
        .auto_rotate(RotationPolicy::default().check_every(Duration::from_millis(20)));
    // Writes fail with KeyExhausted at the limit until the background job rotates.
    let mut written = None;
    for value in 10..200 {
        let rotated = !auto.rotated().is_empty();
        match s.write(0..30, value) {
            Ok(()) if rotated => {
                written = Some(value);
                break;
            }
            Ok(()) => written = Some(value),
            Err(Error::KeyExhausted { limit: l, .. }) => assert_eq!(l, limit),
            Err(e) => panic!("{e}"),
        }
        std::thread::sleep(Duration::from_millis(30));
    }
    assert!(!auto.rotated().is_empty(), "no automatic rotation");
    let value = written.expect("a write succeeded after the rotation");
    drop(auto);
    let after = s.lifecycle().describe();
    let data = after.envelopes.last().unwrap();
    assert!(data.current > before.envelopes.last().unwrap().current);
    for v in &data.versions {
        assert!(v.seals <= limit, "version {} sealed {} times", v.version, v.seals);
    }
    check(&s, &[(0..30, value), (30..40, 1), (40..60, 2)]);
}

#[test]
fn the_lifecycle_of_a_store() {
    lifecycle(Kind::Store);
}

#[test]
fn the_lifecycle_of_a_tablespace() {
    lifecycle(Kind::Tablespace);
}

#[test]
fn a_tablespace_keeps_counting_seals_across_opens_and_rotates_before_its_limit() {
    let h = Harness::new(Kind::Tablespace);
    drop(h.open_with(h.kms.clone(), true, None).unwrap());
    for round in 1..=4u64 {
        let s = h.open(None);
        s.write(0..10, round).unwrap();
        assert_eq!(s.current_seals(), 10 * round, "counted live");
        drop(s);
        // As recorded in the header (read without a key).
        let info = Tablespace::inspect(h.path()).unwrap();
        let current = info
            .versions
            .iter()
            .find(|v| v.version == info.data_key_version)
            .unwrap();
        assert_eq!(current.seals, 10 * round, "recorded at close");
    }
    // A lowered limit: maintenance rotates at 3/4 of it, and no version seals past it.
    let limit = 60;
    for round in 0..10u64 {
        let s = h.open(Some(limit));
        s.lifecycle().maintain_keys(&RotationPolicy::default()).unwrap();
        s.write(0..10, 100 + round).unwrap();
        drop(s);
    }
    let info = Tablespace::inspect(h.path()).unwrap();
    assert!(info.data_key_version >= 3, "{info:?}");
    for v in &info.versions {
        assert!(v.seals <= limit, "version {} sealed {} times", v.version, v.seals);
    }
}

#[test]
fn after_a_crash_a_tablespace_counts_from_at_least_the_seals_it_committed() {
    let t = common::TestPages::new();
    let io = tde::testing::CrashIo::new();
    let pool = BufferPool::new(1 << 20);
    let ts = Tablespace::create_with(io.clone(), "t", &t.options(), &pool).unwrap();
    for n in 0..25 {
        ts.write(n).unwrap()[0] = 1;
    }
    ts.sync().unwrap();
    // The process dies: no close records the exact count.
    let crashed = io.after_crash(false);
    drop(ts);
    let ts = Tablespace::open_with(crashed, &t.options(), &pool).unwrap();
    let d = ts.describe();
    let e = &d.envelopes[0];
    let seals = e.versions.iter().find(|v| v.version == e.current).unwrap().seals;
    assert!(seals >= 25, "counts from {seals}, below the 25 seals committed");
}

#[test]
fn every_kms_call_of_every_engine_and_backup_is_in_an_audit_trail() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let kms: Counting = Arc::new(FaultyKms::new(Arc::new(
        LocalKms::create(root.join("kms")).unwrap(),
    )));
    let dest = root.join("backups");
    let key = kms
        .inner()
        .create_key(&CreateKeyOptions::default())
        .unwrap()
        .key_id;
    let policy = RotationPolicy::default().max_age(Duration::ZERO);

    let store = Store::create(root.join("store"), StoreOptions::new(kms.clone())).unwrap();
    store.create_table("a", &TableOptions::default()).unwrap();
    store
        .create_table("b", &TableOptions::default().master_key(&key))
        .unwrap();
    store.table("a").unwrap().put(b"k", b"v").unwrap();
    store.rotate_data_key(None).unwrap();
    store.rewrap(None, None).unwrap();
    store.check_keys().unwrap();
    store.maintain_keys(&policy).unwrap();
    let store_backup = tde::backup::create(&store, &dest).unwrap().id;
    let trail_len = |path: &std::path::Path| tde::audit::read_at(path).unwrap().len();
    let store_trail = root.join("store").join(tde::audit::AUDIT_FILE);
    let carried_by_store_backup = trail_len(&store_trail);
    drop(store);
    drop(Store::open(root.join("store"), StoreOptions::new(kms.clone())).unwrap());

    let pool = BufferPool::new(1 << 20);
    let ts_path = root.join("t.tbs");
    let options = TablespaceOptions::new(kms.clone());
    let ts = Tablespace::create(&ts_path, &options, &pool).unwrap();
    ts.write(0).unwrap()[0] = 7;
    ts.sync().unwrap();
    ts.rotate_data_key().unwrap();
    ts.rewrap(Some(&key)).unwrap();
    ts.check_keys().unwrap();
    ts.maintain_keys(&policy).unwrap();
    let ts_backup = tde::backup::create_tablespace(&ts, &dest).unwrap().id;
    let carried_by_ts_backup = trail_len(&tde::audit::tablespace_audit_path(&ts_path));
    ts.close().unwrap();
    Tablespace::open(&ts_path, &options, &pool)
        .unwrap()
        .close()
        .unwrap();

    tde::backup::verify_deep(&dest, Some(&store_backup), StoreOptions::new(kms.clone())).unwrap();
    tde::backup::verify_deep_tablespace(&dest, Some(&ts_backup), &options).unwrap();
    drop(
        tde::backup::restore(
            &dest,
            Some(&store_backup),
            &root.join("r1"),
            StoreOptions::new(kms.clone()),
        )
        .unwrap(),
    );
    let r2 = root.join("r2.tbs");
    tde::backup::restore_tablespace(&dest, Some(&ts_backup), &r2, &options, &pool)
        .unwrap()
        .close()
        .unwrap();
    tde::backup::rewrap(&dest, Some(&store_backup), kms.clone(), None, &key, None).unwrap();
    tde::backup::rewrap_tablespace(&dest, Some(&ts_backup), &options, None, &key).unwrap();

    // Every record of a KMS call, once: a restored trail begins with the records its
    // backup carried, which are counted in the original's.
    let kms_ops = [
        "generate-data-key",
        "decrypt",
        "encrypt",
        "re-encrypt",
        "describe-key",
    ];
    let trails = [
        (store_trail, 0),
        (tde::audit::tablespace_audit_path(&ts_path), 0),
        (dest.join(tde::audit::AUDIT_FILE), 0),
        (
            root.join("r1").join(tde::audit::AUDIT_FILE),
            carried_by_store_backup,
        ),
        (tde::audit::tablespace_audit_path(&r2), carried_by_ts_backup),
    ];
    let mut recorded = 0u64;
    for (trail, carried) in &trails {
        let records = tde::audit::read_at(trail).unwrap();
        assert!(records.len() > *carried, "{}", trail.display());
        recorded += records[*carried..]
            .iter()
            .filter(|r| kms_ops.contains(&r.op.as_str()))
            .count() as u64;
    }
    assert_eq!(recorded, kms.total_calls(), "KMS calls without an audit record");
    assert!(recorded > 20);
}

#[test]
fn the_key_watch_fails_a_tablespace_closed_when_its_key_is_revoked() {
    let h = Harness::new(Kind::Tablespace);
    let s = h.open_with(h.kms.clone(), true, None).unwrap();
    s.write(0..5, 3).unwrap();
    // A KMS that cannot be reached stops nothing.
    h.kms.set_outage(true);
    let report = s.lifecycle().check_keys().unwrap();
    h.kms.set_outage(false);
    assert_eq!((report.unreachable.len(), report.revoked.len()), (1, 0));
    assert_eq!(s.read(4), 3);
    // A disabled key does: reads (pool hits included) and writes fail closed.
    h.kms.inner().disable_key("alias/k1").unwrap();
    let report = s.lifecycle().check_keys().unwrap();
    assert_eq!(report.revoked.len(), 1, "{report:?}");
    let Subject::Tablespace(ts) = &s else {
        unreachable!()
    };
    assert!(matches!(ts.read(4), Err(Error::KeyRevoked { .. })));
    assert!(matches!(ts.write(5), Err(Error::KeyRevoked { .. })));
}
