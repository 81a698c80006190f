//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tde::clock::ManualClock;
use tde::kms::EncryptionContext;
use tde::kms::local::LocalKms;

/// A local KMS in a temporary directory with a clock the test moves.
pub struct TestKms {
    pub tmp: tempfile::TempDir,
    pub clock: Arc<ManualClock>,
    pub kms: LocalKms,
}

impl TestKms {
    pub fn new() -> TestKms {
        let tmp = tempfile::tempdir().expect("tempdir");
        let clock = Arc::new(ManualClock::new());
        let kms = LocalKms::builder(tmp.path().join("kms"))
            .clock(clock.clone())
            .create()
            .expect("create local KMS");
        TestKms { tmp, clock, kms }
    }

    pub fn dir(&self) -> PathBuf {
        self.tmp.path().join("kms")
    }

    /// A second handle on the same directory (as another process would have).
    pub fn reopen(&self) -> LocalKms {
        LocalKms::builder(self.dir())
            .clock(self.clock.clone())
            .open()
            .expect("reopen local KMS")
    }
}

pub fn ctx(table: &str) -> EncryptionContext {
    EncryptionContext::new().with("store", "s1").with("table", table)
}

/// Every file below `dir`, with its contents.
pub fn files_below(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("read_dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let bytes = std::fs::read(&path).expect("read");
                out.push((path, bytes));
            }
        }
    }
    out
}

pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
