//! A tablespace and its journal are hostile input: an open that fails writes nothing,
//! and what the files say about sizes is bounded before use.

mod common;

use std::path::Path;

use common::{TestKms, TestPages};
use sha2::{Digest, Sha256};
use tde::Error;
use tde::page::{BufferPool, PageSize, Tablespace, TablespaceOptions, journal_path};

fn snapshot(path: &Path) -> (Vec<u8>, Vec<u8>) {
    (
        std::fs::read(path).unwrap(),
        std::fs::read(journal_path(path)).unwrap_or_default(),
    )
}

/// A tablespace with two committed batches left in its journal.
fn with_journal(p: &TestPages) -> std::path::PathBuf {
    let path = p.path("t.tbs");
    let options = p.options().page_size(PageSize::K4).checkpoint_bytes(1 << 30);
    let pool = BufferPool::new(1 << 20);
    let ts = Tablespace::create(&path, &options, &pool).unwrap();
    for n in 0..4 {
        ts.write(n).unwrap()[..4].copy_from_slice(b"old!");
    }
    ts.checkpoint().unwrap();
    for batch in 0..2u64 {
        ts.write(batch).unwrap()[..4].copy_from_slice(b"new!");
        ts.sync().unwrap();
    }
    // A crash before close: copy the files as they are now, journal included.
    let copy = p.path("crashed.tbs");
    std::fs::copy(&path, &copy).unwrap();
    std::fs::copy(journal_path(&path), journal_path(&copy)).unwrap();
    drop(ts);
    copy
}

#[test]
fn an_open_that_fails_on_a_forged_journal_frame_writes_nothing() {
    let p = TestPages::new();
    let path = with_journal(&p);
    // Flip a byte inside the first committed frame (batches follow it).
    let journal = journal_path(&path);
    let mut bytes = std::fs::read(&journal).unwrap();
    bytes[64 + 8 + 100] ^= 1;
    std::fs::write(&journal, &bytes).unwrap();
    let before = snapshot(&path);
    let options = p.options().page_size(PageSize::K4);
    let err = Tablespace::open(&path, &options, &BufferPool::new(1 << 20)).unwrap_err();
    assert!(
        matches!(err, Error::Corrupt { .. } | Error::Authentication { .. }),
        "{err:?}"
    );
    assert_eq!(
        snapshot(&path),
        before,
        "a failed open wrote to the tablespace or journal"
    );
}

#[test]
fn an_open_with_the_wrong_kms_writes_nothing() {
    let p = TestPages::new();
    let path = with_journal(&p);
    let before = snapshot(&path);
    let other = TestKms::new();
    let options = TablespaceOptions::new(std::sync::Arc::new(other.kms)).page_size(PageSize::K4);
    let err = Tablespace::open(&path, &options, &BufferPool::new(1 << 20)).unwrap_err();
    assert!(matches!(err, Error::KeysUnavailable { .. }), "{err:?}");
    assert_eq!(snapshot(&path), before);

    // The same with no journal at all: none is written.
    let p = TestPages::new();
    let path = p.path("fresh.tbs");
    let pool = BufferPool::new(1 << 20);
    let ts = Tablespace::create(&path, &p.options(), &pool).unwrap();
    ts.write(0).unwrap()[..4].copy_from_slice(b"data");
    ts.close().unwrap();
    std::fs::remove_file(journal_path(&path)).unwrap();
    let before = std::fs::read(&path).unwrap();
    let other = TestKms::new();
    let options = TablespaceOptions::new(std::sync::Arc::new(other.kms));
    assert!(Tablespace::open(&path, &options, &pool).is_err());
    assert_eq!(std::fs::read(&path).unwrap(), before);
    assert_eq!(std::fs::read(journal_path(&path)).unwrap_or_default(), b"");
}

#[test]
fn a_journal_header_with_a_huge_page_size_is_refused_before_any_allocation() {
    let p = TestPages::new();
    let path = with_journal(&p);
    let journal = journal_path(&path);
    let mut bytes = std::fs::read(&journal).unwrap();
    bytes[24..28].copy_from_slice(&u32::MAX.to_le_bytes());
    let sum = Sha256::digest(&bytes[..32]);
    bytes[32..64].copy_from_slice(&sum);
    std::fs::write(&journal, &bytes).unwrap();
    // Also break the data file's header, so the journal's page size is the one used.
    let mut data = std::fs::read(&path).unwrap();
    data[0] ^= 0xff;
    std::fs::write(&path, &data).unwrap();
    let options = p.options().page_size(PageSize::K4);
    let err = Tablespace::open(&path, &options, &BufferPool::new(1 << 20)).unwrap_err();
    assert!(
        matches!(err, Error::Corrupt { .. } | Error::Format { .. }),
        "{err:?}"
    );
}

#[cfg(unix)]
#[test]
fn a_journal_that_is_a_symbolic_link_is_not_followed() {
    let p = TestPages::new();
    let path = p.path("t.tbs");
    let pool = BufferPool::new(1 << 20);
    Tablespace::create(&path, &p.options(), &pool)
        .unwrap()
        .close()
        .unwrap();
    let outside = p.path("outside");
    std::fs::write(&outside, b"precious").unwrap();
    std::fs::remove_file(journal_path(&path)).unwrap();
    std::os::unix::fs::symlink(&outside, journal_path(&path)).unwrap();
    assert!(Tablespace::open(&path, &p.options(), &pool).is_err());
    assert_eq!(std::fs::read(&outside).unwrap(), b"precious");
}
