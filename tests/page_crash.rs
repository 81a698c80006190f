//! Crash safety of the page store: a crash at every point of a multi-page transaction
//! (torn writes included, with and without the unsynced writes surviving) leaves every
//! page authentic and the whole transaction either absent or complete; a failing disk
//! poisons the tablespace.

mod common;

use std::sync::Arc;
use tde::keys::ReencryptOptions;

use common::TestPages;
use tde::Error;
use tde::page::{BufferPool, PageFile, PageSize, Tablespace, TablespaceOptions};
use tde::testing::{CrashIo, IoFault};

const PAGES: u64 = 30;
const WRITES: u64 = 60;

fn content(page: u64, version: u64) -> u64 {
    (version << 32) | page
}

/// The state after the transaction: page → version stamp (0 = zero page).
fn model(after: bool) -> Vec<u64> {
    let mut pages: Vec<u64> = (0..PAGES)
        .map(|p| if p < 20 { content(p, 1) } else { 0 })
        .collect();
    if after {
        for i in 0..WRITES {
            let p = (i * 7) % PAGES;
            pages[p as usize] = content(p, 100 + i);
        }
    }
    pages
}

fn stamp(ts: &Tablespace, page: u64, value: u64) -> tde::Result<()> {
    let mut g = ts.write(page)?;
    g.fill((value % 251) as u8);
    g[..8].copy_from_slice(&value.to_le_bytes());
    Ok(())
}

fn read_stamp(ts: &Tablespace, page: u64) -> u64 {
    let g = ts
        .read(page)
        .unwrap_or_else(|e| panic!("page {page} does not authenticate after the crash: {e}"));
    let value = u64::from_le_bytes(g[..8].try_into().unwrap());
    let fill = (value % 251) as u8;
    assert!(g[8..].iter().all(|&b| b == fill), "page {page} is torn or mixed");
    value
}

/// With `checkpoint`, every sync also checkpoints, so the cut points cover in-place
/// writes; without, synced pages stay in the journal (and reads find them there).
fn options(t: &TestPages, checkpoint: bool) -> TablespaceOptions {
    let bytes = if checkpoint { 0 } else { 1 << 30 };
    t.options().page_size(PageSize::K4).checkpoint_bytes(bytes)
}

/// A tablespace holding pages 0..20 at version 1, synced and checkpointed.
fn base(t: &TestPages, checkpoint: bool) -> Arc<CrashIo> {
    let io = CrashIo::new();
    let pool = BufferPool::new(1 << 20);
    let ts = Tablespace::create_with(io.clone(), "crash", &options(t, checkpoint), &pool).unwrap();
    for p in 0..20 {
        stamp(&ts, p, content(p, 1)).unwrap();
    }
    ts.close().unwrap();
    io
}

/// Runs the transaction on `io` (a pool of 8 pages, so pages are evicted and journaled
/// mid-transaction), then drops it (which checkpoints). Returns whether its sync
/// succeeded.
fn transaction(t: &TestPages, checkpoint: bool, io: Arc<CrashIo>) -> bool {
    transaction_ops(t, checkpoint, io).is_some()
}

/// As [`transaction`]; `Some(operations done when the sync returned)` if it succeeded.
fn transaction_ops(t: &TestPages, checkpoint: bool, io: Arc<CrashIo>) -> Option<u64> {
    let pool = BufferPool::new(8 * 4096);
    let ts = Tablespace::open_with(io.clone(), &options(t, checkpoint), &pool).ok()?;
    for i in 0..WRITES {
        let p = (i * 7) % PAGES;
        stamp(&ts, p, content(p, 100 + i)).ok()?;
    }
    ts.sync().ok()?;
    Some(io.ops())
}

fn reopen_and_check(t: &TestPages, checkpoint: bool, io: Arc<CrashIo>, synced: bool, label: &str) {
    let pool = BufferPool::new(1 << 20);
    let ts = Tablespace::open_with(io, &options(t, checkpoint), &pool)
        .unwrap_or_else(|e| panic!("{label}: the tablespace does not open after the crash: {e}"));
    let pages: Vec<u64> = (0..PAGES).map(|p| read_stamp(&ts, p)).collect();
    let (old, new) = (model(false), model(true));
    if synced {
        assert_eq!(pages, new, "{label}: a synced transaction was lost");
    } else {
        assert!(
            pages == old || pages == new,
            "{label}: a partial transaction: {pages:x?}"
        );
    }
    assert_eq!(ts.verify().unwrap(), ts.page_count());
}

#[test]
fn a_crash_at_every_point_of_a_transaction_leaves_it_absent_or_complete() {
    for checkpoint in [true, false] {
        let t = TestPages::new();
        let base = base(&t, checkpoint);

        // A clean run counts the transaction's mutating operations.
        let clean = base.after_crash(false);
        assert!(transaction(&t, checkpoint, clean.clone()));
        let ops = clean.ops();
        assert!(
            ops > WRITES,
            "the transaction made {ops} writes, truncations and fsyncs"
        );
        reopen_and_check(&t, checkpoint, clean.after_crash(false), true, "clean run");

        let mut outcomes = [0usize; 2];
        for cut in 0..=ops {
            for torn in [false, true] {
                let io = base.after_crash(false);
                io.set_fault(IoFault::CrashAt { op: cut, torn });
                let synced = transaction(&t, checkpoint, io.clone());
                assert!(io.crashed() || cut == ops, "cut {cut} never reached");
                outcomes[usize::from(synced)] += 1;
                for lose_unsynced in [false, true] {
                    let label = format!("cut {cut}/{ops}, torn {torn}, unsynced writes lost {lose_unsynced}");
                    reopen_and_check(&t, checkpoint, io.after_crash(lose_unsynced), synced, &label);
                }
            }
        }
        assert!(outcomes[0] > 0 && outcomes[1] > 0, "{outcomes:?}");
    }
}

#[test]
fn a_failing_disk_poisons_the_tablespace_and_loses_nothing_synced() {
    for checkpoint in [true, false] {
        let t = TestPages::new();
        let base = base(&t, checkpoint);
        let ops = transaction_ops(&t, checkpoint, base.after_crash(false)).unwrap();

        for fail_from in (0..ops).step_by(7) {
            let io = base.after_crash(false);
            io.set_fault(IoFault::FailFrom { op: fail_from });
            let pool = BufferPool::new(8 * 4096);
            let ts = Tablespace::open_with(io.clone(), &options(&t, checkpoint), &pool).unwrap();
            let mut first_error = None;
            for i in 0..WRITES {
                let p = (i * 7) % PAGES;
                if let Err(e) = stamp(&ts, p, content(p, 100 + i)) {
                    first_error = Some(e);
                    break;
                }
            }
            let first_error = match first_error {
                Some(e) => e,
                None => ts.sync().expect_err("the sync must see the failure"),
            };
            assert!(
                matches!(first_error, Error::Io { .. }),
                "fail from {fail_from}: {first_error:?}"
            );

            // The disk recovers, but the tablespace does not pretend it did.
            io.set_fault(IoFault::None);
            for err in [ts.write(0).map(drop).unwrap_err(), ts.sync().unwrap_err()] {
                assert!(
                    matches!(err, Error::Poisoned { .. }),
                    "fail from {fail_from}: {err:?}"
                );
            }
            drop(ts);
            reopen_and_check(
                &t,
                checkpoint,
                io.after_crash(false),
                false,
                &format!("fail from {fail_from}"),
            );
            reopen_and_check(
                &t,
                checkpoint,
                io.after_crash(true),
                false,
                &format!("fail from {fail_from}, unsynced lost"),
            );
        }
    }
}

#[test]
fn a_damaged_header_page_is_recovered_from_the_journal_when_a_commit_holds_it() {
    for checkpoint in [true, false] {
        let t = TestPages::new();
        let base = base(&t, checkpoint);
        let clean = base.after_crash(false);
        // Cut points up to the end of the transaction's sync (its close commits again, to
        // record exact seal counts, once the transaction's header is in place).
        let synced = transaction_ops(&t, checkpoint, clean.clone()).expect("the transaction syncs");
        let mut recovered = 0;
        for cut in 0..synced {
            let io = base.after_crash(false);
            io.set_fault(IoFault::CrashAt { op: cut, torn: true });
            transaction(&t, checkpoint, io.clone());
            // Was the transaction's commit (which carries the new header) durable?
            let probe = BufferPool::new(1 << 20);
            let committed = {
                let ts =
                    Tablespace::open_with(io.after_crash(false), &options(&t, checkpoint), &probe).unwrap();
                read_stamp(&ts, 25) != 0
            };
            // Damage the file's own header, as a torn in-place write of page 0 could, while
            // the journal still holds it (after the checkpoint emptied the journal, the
            // header in place is durable and whole).
            let damaged = io.after_crash(false);
            if damaged.bytes(PageFile::Journal).len() <= 64 {
                continue;
            }
            let mut bytes = damaged.bytes(PageFile::Data);
            bytes[..4096].fill(0);
            damaged.set_bytes(PageFile::Data, bytes);
            if committed {
                recovered += 1;
                reopen_and_check(
                    &t,
                    checkpoint,
                    damaged,
                    true,
                    &format!("damaged header at cut {cut}"),
                );
            } else {
                let err = Tablespace::open_with(damaged, &options(&t, checkpoint), &probe).unwrap_err();
                assert!(matches!(err, Error::Format { .. }), "cut {cut}: {err:?}");
            }
        }
        assert!(
            recovered > 0,
            "no cut point left a committed header in the journal"
        );
    }
}

#[test]
fn a_damaged_committed_batch_that_later_batches_follow_is_an_error_not_a_rollback() {
    let t = TestPages::new();
    let options = options(&t, false);
    let io = CrashIo::new();
    let pool = BufferPool::new(1 << 20);
    let ts = Tablespace::create_with(io.clone(), "damaged", &options, &pool).unwrap();
    for batch in 0..2 {
        stamp(&ts, batch, content(batch, 7)).unwrap();
        ts.sync().unwrap();
    }
    io.set_fault(IoFault::FailFrom { op: 0 });
    drop(ts);
    let mut journal = io.bytes(PageFile::Journal);
    journal[64 + 8 + 100] ^= 1; // inside the first batch's first frame
    let damaged = io.after_crash(false);
    damaged.set_bytes(PageFile::Journal, journal);
    let err = Tablespace::open_with(damaged, &options, &pool).unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err:?}");
    assert!(err.to_string().contains("journal"), "{err}");
    // Undamaged, both batches are there.
    reopen_check_pages(&t, io.after_crash(false), &[content(0, 7), content(1, 7)]);
}

fn reopen_check_pages(t: &TestPages, io: Arc<CrashIo>, expected: &[u64]) {
    let pool = BufferPool::new(1 << 20);
    let ts = Tablespace::open_with(io, &options(t, false), &pool).unwrap();
    for (n, want) in expected.iter().enumerate() {
        assert_eq!(read_stamp(&ts, n as u64), *want);
    }
}

/// Rotation and re-encryption of the base tablespace; returns whether they completed.
fn rotate_and_reencrypt(t: &TestPages, checkpoint: bool, io: Arc<CrashIo>) -> bool {
    let pool = BufferPool::new(8 * 4096);
    let Ok(ts) = Tablespace::open_with(io, &options(t, checkpoint), &pool) else {
        return false;
    };
    let rotated = ts.rotate_data_key().is_ok()
        && stamp(&ts, 3, content(3, 1)).is_ok()
        && ts
            .reencrypt(ReencryptOptions::default())
            .wait()
            .is_ok_and(|r| r.retired.iter().map(|r| r.version).eq([1]));
    rotated && ts.close().is_ok()
}

#[test]
fn a_crash_at_every_point_of_a_data_key_rotation_and_reencryption_loses_nothing() {
    for checkpoint in [true, false] {
        let t = TestPages::new();
        let base = base(&t, checkpoint);
        let clean = base.after_crash(false);
        assert!(rotate_and_reencrypt(&t, checkpoint, clean.clone()));
        let ops = clean.ops();
        let reopened = Tablespace::open_with(
            clean.after_crash(false),
            &options(&t, checkpoint),
            &BufferPool::new(1 << 20),
        )
        .unwrap();
        assert_eq!(reopened.info().data_key_version, 2);
        drop(reopened);
        for cut in 0..=ops {
            for torn in [false, true] {
                let io = base.after_crash(false);
                io.set_fault(IoFault::CrashAt { op: cut, torn });
                rotate_and_reencrypt(&t, checkpoint, io.clone());
                for lose_unsynced in [false, true] {
                    let label = format!("cut {cut}/{ops}, torn {torn}, unsynced lost {lose_unsynced}");
                    let io = io.after_crash(lose_unsynced);
                    {
                        let pool = BufferPool::new(1 << 20);
                        let ts = Tablespace::open_with(io.clone(), &options(&t, checkpoint), &pool)
                            .unwrap_or_else(|e| panic!("{label}: does not open: {e}"));
                        let pages: Vec<u64> = (0..PAGES).map(|p| read_stamp(&ts, p)).collect();
                        assert_eq!(pages, model(false), "{label}");
                        // The interrupted work resumes: the pass runs to the end.
                        ts.rotate_data_key().ok();
                        let report = ts
                            .reencrypt(ReencryptOptions::default())
                            .wait()
                            .unwrap_or_else(|e| panic!("{label}: {e}"));
                        assert!(
                            !report.retired.is_empty() || ts.info().data_key_version >= 2,
                            "{label}"
                        );
                        ts.close().unwrap();
                    }
                    let pool = BufferPool::new(1 << 20);
                    let ts = Tablespace::open_with(io, &options(&t, checkpoint), &pool).unwrap();
                    let pages: Vec<u64> = (0..PAGES).map(|p| read_stamp(&ts, p)).collect();
                    assert_eq!(pages, model(false), "{label}: after resuming");
                }
            }
        }
    }
}
