//! The page store end to end: round trips at every page size, zero pages, the pool, no
//! plaintext on disk, tampering, KMS use and failures.

mod common;

use std::sync::Arc;

use common::{TestPages, contains};
use tde::Error;
use tde::page::{BufferPool, PageFile, PageSize, Tablespace, journal_path};
use tde::testing::KmsOp;

const MARKER: &[u8] = b"PAGE-MARKER-4f1c9b";

fn fill(page: &mut [u8], n: u64) {
    page.fill(0);
    page[..8].copy_from_slice(&n.to_le_bytes());
    page[8..8 + MARKER.len()].copy_from_slice(MARKER);
    let last = page.len() - 1;
    page[last] = n as u8;
}

fn check(page: &[u8], n: u64) {
    assert_eq!(page[..8], n.to_le_bytes(), "page {n}");
    assert_eq!(&page[8..8 + MARKER.len()], MARKER, "page {n}");
    assert_eq!(page[page.len() - 1], n as u8, "page {n}");
}

#[test]
fn pages_round_trip_at_every_size_and_unwritten_pages_read_as_zeros() {
    let t = TestPages::new();
    let pool = BufferPool::new(1 << 20);
    for size in PageSize::ALL {
        let path = t.path(&format!("ts-{}", size.bytes()));
        let options = t.options().page_size(size);
        let ts = Tablespace::create(&path, &options, &pool).unwrap();
        assert_eq!(ts.page_size(), size.bytes() - tde::page::RESERVE);
        for n in [0u64, 1, 2, 7] {
            fill(&mut ts.write(n).unwrap(), n);
        }
        assert_eq!(ts.page_count(), 8);
        ts.sync().unwrap();
        ts.close().unwrap();

        let ts = Tablespace::open(&path, &options, &pool).unwrap();
        assert_eq!(ts.page_count(), 8);
        for n in [0u64, 1, 2, 7] {
            check(&ts.read(n).unwrap(), n);
        }
        for n in [3u64, 4, 5, 6, 8, 1000] {
            assert!(
                ts.read(n).unwrap().iter().all(|&b| b == 0),
                "page {n} of {size:?}"
            );
        }
        assert_eq!(ts.verify().unwrap(), 8);
        let len = std::fs::metadata(&path).unwrap().len();
        assert_eq!(len, 9 * size.bytes() as u64, "header + 8 pages");
    }
}

#[test]
fn the_file_and_the_kms_are_enough_to_open_a_tablespace_in_either_suite() {
    let t = TestPages::new();
    let pool = BufferPool::new(1 << 20);
    for suite in tde::cipher::Suite::ALL {
        let path = t.path(suite.name());
        let options = t.options().suite(suite).page_size(PageSize::K8);
        let ts = Tablespace::create(&path, &options, &pool).unwrap();
        for n in 0..20 {
            fill(&mut ts.write(n).unwrap(), n);
        }
        ts.close().unwrap();
        // Only the file is carried elsewhere: no journal, no other metadata.
        let moved = t.path(&format!("moved-{}", suite.name()));
        std::fs::copy(&path, &moved).unwrap();
        let ts = Tablespace::open(&moved, &t.options(), &pool).unwrap();
        let info = ts.info();
        assert_eq!(
            (info.suite, info.physical_page_size, info.page_count),
            (suite, 8192, 20)
        );
        assert_eq!(ts.page_size(), 8192 - tde::page::reserve(suite));
        assert_eq!(Tablespace::inspect(&path).unwrap().suite, suite);
        for n in 0..20 {
            check(&ts.read(n).unwrap(), n);
        }
        assert!(!contains(&std::fs::read(&moved).unwrap(), MARKER));
    }
}

#[test]
fn no_plaintext_reaches_the_file_or_the_journal() {
    let t = TestPages::new();
    let pool = BufferPool::new(64 * 16384);
    let path = t.path("secret");
    // A large checkpoint threshold keeps synced pages in the journal.
    let options = t.options().checkpoint_bytes(1 << 30);
    let ts = Tablespace::create(&path, &options, &pool).unwrap();
    for n in 0..200 {
        fill(&mut ts.write(n).unwrap(), n);
    }
    ts.sync().unwrap();
    let journal = std::fs::read(journal_path(&path)).unwrap();
    assert!(journal.len() > 200 * 16384, "the journal holds the synced pages");
    assert!(!contains(&journal, MARKER));
    assert!(!contains(&std::fs::read(&path).unwrap(), MARKER));
    ts.close().unwrap();
    let file = std::fs::read(&path).unwrap();
    assert!(file.len() > 200 * 16384);
    assert!(!contains(&file, MARKER));
    assert!(!contains(&std::fs::read(journal_path(&path)).unwrap(), MARKER));
}

#[test]
fn a_pool_hit_does_no_cryptography_and_opening_calls_the_kms_once() {
    let t = TestPages::new();
    let pool = BufferPool::new(1 << 20);
    let path = t.path("hits");
    let ts = Tablespace::create(&path, &t.options(), &pool).unwrap();
    assert_eq!(t.kms.calls(KmsOp::GenerateDataKey), 1);
    fill(&mut ts.write(0).unwrap(), 0);
    ts.close().unwrap();

    t.kms.reset_calls();
    let ts = Tablespace::open(&path, &t.options(), &pool).unwrap();
    assert_eq!(t.kms.total_calls(), 1);
    assert_eq!(t.kms.calls(KmsOp::Decrypt), 1);
    check(&ts.read(0).unwrap(), 0);
    let after_miss = ts.stats();
    assert_eq!(after_miss.pages_opened, 1);
    for _ in 0..1000 {
        check(&ts.read(0).unwrap(), 0);
    }
    for n in 1..50 {
        fill(&mut ts.write(n).unwrap(), n);
    }
    ts.sync().unwrap();
    ts.checkpoint().unwrap();
    let stats = ts.stats();
    assert_eq!(stats.pages_opened, 1, "hits opened nothing");
    assert!(pool.stats().hits >= 1000);
    assert_eq!(t.kms.total_calls(), 1, "no KMS call after open");
}

#[test]
fn tampered_moved_zeroed_or_foreign_pages_fail_authentication_naming_the_page() {
    for suite in [tde::cipher::Suite::Aes256Gcm, tde::cipher::Suite::Aegis256] {
        tampering(suite);
    }
}

fn tampering(suite: tde::cipher::Suite) {
    let t = TestPages::new();
    let pool = BufferPool::new(1 << 20);
    let size = 4096usize;
    let reserve = tde::page::reserve(suite);
    let options = t.options().page_size(PageSize::K4).suite(suite);
    let (a, b) = (t.path("a"), t.path("b"));
    for path in [&a, &b] {
        let ts = Tablespace::create(path, &options, &pool).unwrap();
        for n in 0..6 {
            fill(&mut ts.write(n).unwrap(), n);
        }
        ts.close().unwrap();
    }
    let original = std::fs::read(&a).unwrap();
    let page_at = |n: usize| (n + 1) * size;
    let foreign = std::fs::read(&b).unwrap();

    let mut cases: Vec<(&str, Vec<u8>, u64)> = Vec::new();
    for at in [
        0,
        1000,
        size - reserve - 1,
        size - reserve,
        size - reserve + 4,
        size - 20,
        size - 1,
    ] {
        let mut bytes = original.clone();
        bytes[page_at(2) + at] ^= 0x01;
        cases.push(("flipped", bytes, 2));
    }
    let mut swapped = original.clone();
    swapped[page_at(1)..page_at(2)].copy_from_slice(&original[page_at(3)..page_at(4)]);
    cases.push(("moved", swapped, 1));
    let mut zeroed = original.clone();
    zeroed[page_at(4)..page_at(5)].fill(0);
    cases.push(("zeroed", zeroed, 4));
    let mut other = original.clone();
    other[page_at(3)..page_at(4)].copy_from_slice(&foreign[page_at(3)..page_at(4)]);
    cases.push(("foreign", other, 3));

    for (what, bytes, bad) in cases {
        std::fs::write(&a, &bytes).unwrap();
        let ts = Tablespace::open(&a, &options, &pool).unwrap();
        let err = ts.read(bad).unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(err, Error::Authentication { .. }),
            "{suite} {what}: {err:?}"
        );
        assert!(
            text.contains("\"a\"") && text.contains(&format!("page {bad}")),
            "{what}: {text}"
        );
        for n in (0..6).filter(|n| *n != bad) {
            check(&ts.read(n).unwrap(), n);
        }
        assert!(ts.verify().is_err(), "{what}");
        drop(ts);
        assert_eq!(
            std::fs::read(&a).unwrap(),
            bytes,
            "{what}: a failed read changed nothing"
        );
    }

    // A truncated file and an edited header are refused at open.
    std::fs::write(&a, &original[..page_at(4)]).unwrap();
    let err = Tablespace::open(&a, &options, &pool).unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err:?}");
    let mut header = original.clone();
    header[100] ^= 1;
    std::fs::write(&a, &header).unwrap();
    assert!(Tablespace::open(&a, &options, &pool).is_err());
    std::fs::write(&a, &original).unwrap();
    Tablespace::open(&a, &options, &pool).unwrap();
}

#[test]
fn the_pool_never_evicts_a_pinned_page_and_a_full_pool_is_an_error() {
    let t = TestPages::new();
    let options = t.options().page_size(PageSize::K4);
    let pool = BufferPool::new(4 * 4096);
    let ts = Tablespace::create(t.path("small"), &options, &pool).unwrap();
    for n in 0..40 {
        fill(&mut ts.write(n).unwrap(), n);
    }
    assert!(pool.stats().dirty_evictions >= 36, "{:?}", pool.stats());
    let pinned = ts.read(5).unwrap();
    let pinned_mut = ts.write(6).unwrap();
    for n in 0..40 {
        if n != 5 && n != 6 {
            check(&ts.read(n).unwrap(), n);
        }
    }
    check(&pinned, 5);
    check(&pinned_mut, 6);

    let more = (ts.read(7).unwrap(), ts.read(8).unwrap());
    let err = ts.read(9).unwrap_err();
    assert!(matches!(err, Error::BufferPoolFull { .. }), "{err:?}");
    drop(more);
    check(&ts.read(9).unwrap(), 9);
    drop((pinned, pinned_mut));
    ts.sync().unwrap();
    assert!(pool.stats().used_bytes <= 4 * 4096);
}

#[test]
fn tablespaces_share_one_pool_and_threads_work_on_different_pages() {
    let t = TestPages::new();
    let options = t.options().page_size(PageSize::K4);
    let pool = BufferPool::new(32 * 4096);
    let spaces: Vec<Arc<Tablespace>> = (0..2)
        .map(|i| Arc::new(Tablespace::create(t.path(&format!("s{i}")), &options, &pool).unwrap()))
        .collect();
    std::thread::scope(|s| {
        for thread in 0..4u64 {
            let spaces = &spaces;
            s.spawn(move || {
                for round in 0..5u64 {
                    for i in 0..50u64 {
                        let n = thread * 1000 + i;
                        let ts = &spaces[(i % 2) as usize];
                        fill(&mut ts.write(n).unwrap(), n + round);
                        if i % 7 == 0 {
                            let m = thread * 1000 + i / 2;
                            let page = spaces[((i / 2) % 2) as usize].read(m).unwrap();
                            let v = u64::from_le_bytes(page[..8].try_into().unwrap());
                            assert!(v == 0 || (v >= m && v <= m + round), "page {m}: {v}");
                        }
                    }
                    spaces[(round % 2) as usize].sync().unwrap();
                }
            });
        }
    });
    let paths: Vec<_> = (0..2).map(|i| t.path(&format!("s{i}"))).collect();
    for ts in spaces {
        Arc::into_inner(ts).unwrap().close().unwrap();
    }
    assert_eq!(pool.stats().used_bytes, 0, "closing drops the frames");
    for (i, path) in paths.iter().enumerate() {
        let ts = Tablespace::open(path, &options, &pool).unwrap();
        for thread in 0..4u64 {
            for j in (0..50u64).filter(|j| j % 2 == i as u64) {
                let n = thread * 1000 + j;
                check(&ts.read(n).unwrap(), n + 4);
            }
        }
    }
}

#[test]
fn a_disabled_key_or_a_kms_outage_fails_open_and_changes_nothing() {
    let t = TestPages::new();
    let pool = BufferPool::new(1 << 20);
    let key = t
        .local()
        .create_key(&tde::kms::local::CreateKeyOptions::default())
        .unwrap()
        .key_id;
    let path = t.path("orders");
    let options = t.options().master_key(&key);
    let ts = Tablespace::create(&path, &options, &pool).unwrap();
    fill(&mut ts.write(0).unwrap(), 0);
    ts.close().unwrap();
    let before = (
        std::fs::read(&path).unwrap(),
        std::fs::read(journal_path(&path)).unwrap(),
    );

    t.local().disable_key(&key).unwrap();
    let err = Tablespace::open(&path, &options, &pool).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, Error::KeysUnavailable { .. }), "{err:?}");
    assert!(
        text.contains("orders") && text.contains(&key) && text.contains("disabled"),
        "{text}"
    );
    t.local().enable_key(&key).unwrap();

    t.kms.set_outage(true);
    let options_fast = options.clone().retry(tde::keyring::RetryPolicy {
        attempts: 2,
        initial_backoff: std::time::Duration::from_millis(1),
        max_backoff: std::time::Duration::from_millis(1),
    });
    let err = Tablespace::open(&path, &options_fast, &pool).unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
    t.kms.set_outage(false);
    let after = (
        std::fs::read(&path).unwrap(),
        std::fs::read(journal_path(&path)).unwrap(),
    );
    assert!(before == after, "failed opens changed nothing");
    check(
        &Tablespace::open(&path, &options, &pool).unwrap().read(0).unwrap(),
        0,
    );

    // An unencrypted tablespace and an encrypted one are never confused.
    assert!(matches!(
        Tablespace::open(&path, &options.clone().dangerous().unencrypted(), &pool),
        Err(Error::InvalidArgument(_))
    ));
}

#[test]
fn a_second_handle_on_the_same_file_is_refused() {
    let t = TestPages::new();
    let pool = BufferPool::new(1 << 20);
    let path = t.path("locked");
    let _ts = Tablespace::create(&path, &t.options(), &pool).unwrap();
    let err = Tablespace::open(&path, &t.options(), &pool).unwrap_err();
    assert!(err.to_string().contains("open elsewhere"), "{err}");
    let _ = PageFile::Data;
}

#[test]
fn a_data_key_rotation_seals_new_pages_under_the_new_version_and_reencryption_retires_the_old() {
    let t = TestPages::new();
    let path = t.path("rotating.tbs");
    let pool = BufferPool::new(1 << 20);
    let ts = Tablespace::create(&path, &t.options(), &pool).unwrap();
    for n in 0..300 {
        fill(&mut ts.write(n).unwrap(), n);
    }
    ts.sync().unwrap();
    assert_eq!(ts.rotate_data_key().unwrap(), 2);
    for n in 0..10 {
        fill(&mut ts.write(n).unwrap(), n + 1000);
    }
    ts.close().unwrap();

    // Both versions are in the header now; the file alone and the KMS open it.
    t.kms.reset_calls();
    let ts = Tablespace::open(&path, &t.options(), &pool).unwrap();
    assert_eq!(t.kms.calls(tde::testing::KmsOp::Decrypt), 2);
    assert_eq!(ts.info().data_key_version, 2);
    let job = ts.reencrypt(tde::keys::ReencryptOptions::default().rate_limit(64 << 20));
    let report = job.wait().unwrap();
    assert_eq!(
        report.resealed_values, 290,
        "pages 0..10 were already under version 2"
    );
    let page = (ts.page_size() + tde::page::RESERVE) as u64;
    assert_eq!(report.rewritten_bytes, 290 * page);
    assert_eq!(
        report.retired.iter().map(|r| r.version).collect::<Vec<_>>(),
        vec![1]
    );
    for n in 0..300 {
        check(&ts.read(n).unwrap(), if n < 10 { n + 1000 } else { n });
    }
    assert_eq!(
        ts.reencrypt(tde::keys::ReencryptOptions::default())
            .wait()
            .unwrap(),
        tde::keys::ReencryptReport::default()
    );
    ts.close().unwrap();

    t.kms.reset_calls();
    let ts = Tablespace::open(&path, &t.options(), &pool).unwrap();
    assert_eq!(
        t.kms.calls(tde::testing::KmsOp::Decrypt),
        1,
        "version 1 is retired"
    );
    assert_eq!(ts.verify().unwrap(), 300);
    let unencrypted =
        Tablespace::create(t.path("plain.tbs"), &t.options().dangerous().unencrypted(), &pool).unwrap();
    assert!(matches!(
        unencrypted.rotate_data_key(),
        Err(tde::Error::InvalidArgument(_))
    ));
}

#[test]
fn a_tablespace_moves_to_another_master_key_or_kms_without_rewriting_pages() {
    use tde::kms::local::{CreateKeyOptions, LocalKms};
    let t = TestPages::new();
    let path = t.path("moving.tbs");
    let pool = BufferPool::new(1 << 20);
    let first_key = t.local().create_key(&CreateKeyOptions::default()).unwrap().key_id;
    let ts = Tablespace::create(&path, &t.options().master_key(first_key), &pool).unwrap();
    for n in 0..20 {
        fill(&mut ts.write(n).unwrap(), n);
    }
    ts.sync().unwrap();
    let old_key = ts.info().master_key;
    let new_key = t.local().create_key(&CreateKeyOptions::default()).unwrap().key_id;
    ts.rewrap(Some(&new_key)).unwrap();
    ts.close().unwrap();
    t.local().disable_key(&old_key).unwrap();
    let ts = Tablespace::open(&path, &t.options(), &pool).unwrap();
    assert_eq!(ts.info().master_key, new_key);
    assert_eq!(ts.verify().unwrap(), 20);

    let other = Arc::new(LocalKms::create(t.path("kms-2")).unwrap());
    let moved_key = other.create_key(&CreateKeyOptions::default()).unwrap().key_id;
    ts.migrate(other.clone(), &moved_key, Some("local:elsewhere"))
        .unwrap();
    ts.close().unwrap();
    assert_eq!(Tablespace::inspect(&path).unwrap().kms, "local:elsewhere");
    assert!(
        Tablespace::open(&path, &t.options(), &pool).is_err(),
        "the old KMS no longer opens it"
    );
    let ts = Tablespace::open(&path, &tde::page::TablespaceOptions::new(other), &pool).unwrap();
    for n in 0..20 {
        check(&ts.read(n).unwrap(), n);
    }
}

#[test]
fn a_tablespace_is_not_created_over_an_earlier_ones_trail_until_it_is_removed() {
    let t = TestPages::new();
    let path = t.path("reused.tbs");
    let pool = BufferPool::new(1 << 20);
    Tablespace::create(&path, &t.options(), &pool)
        .unwrap()
        .close()
        .unwrap();
    std::fs::remove_file(&path).unwrap();
    // The old trail is still there: a new tablespace would append to another's chain.
    let err = Tablespace::create(&path, &t.options(), &pool).unwrap_err();
    assert!(
        matches!(&err, Error::InvalidArgument(m) if m.contains("-audit")),
        "{err}"
    );
    Tablespace::remove(&path).unwrap();
    assert!(!tde::audit::tablespace_audit_path(&path).exists());
    assert!(!tde::page::journal_path(&path).exists());
    Tablespace::create(&path, &t.options(), &pool)
        .unwrap()
        .close()
        .unwrap();
}
