//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tde::kms::EncryptionContext;
use tde::kms::local::LocalKms;
use tde::testing::ManualClock;

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

    /// The directory, the clock and the KMS as a shareable handle (for stores).
    pub fn shared(self) -> (tempfile::TempDir, Arc<ManualClock>, Arc<LocalKms>) {
        (self.tmp, self.clock, Arc::new(self.kms))
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

/// A store directory with its own local KMS, wrapped in a fault-injecting, call-counting
/// KMS.
pub struct TestStore {
    pub tmp: tempfile::TempDir,
    pub kms: Arc<tde::testing::FaultyKms<Arc<LocalKms>>>,
}

impl TestStore {
    pub fn new() -> TestStore {
        let tmp = tempfile::tempdir().expect("tempdir");
        let local = Arc::new(LocalKms::create(tmp.path().join("kms")).expect("kms"));
        TestStore {
            kms: Arc::new(tde::testing::FaultyKms::new(local)),
            tmp,
        }
    }

    pub fn path(&self) -> PathBuf {
        self.tmp.path().join("store")
    }

    pub fn local(&self) -> &LocalKms {
        self.kms.inner()
    }

    pub fn options(&self) -> tde::kv::StoreOptions {
        tde::kv::StoreOptions::new(self.kms.clone())
    }

    pub fn create(&self) -> tde::kv::Store {
        tde::kv::Store::create(self.path(), self.options()).expect("create store")
    }

    pub fn open(&self) -> tde::Result<tde::kv::Store> {
        tde::kv::Store::open(self.path(), self.options())
    }
}

/// A snapshot of every file's bytes below `dir`, to prove that a failed open changed
/// nothing.
pub fn fingerprint(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files = files_below(dir);
    // The lock file, and the audit trail, which records the failed attempt.
    files.retain(|(p, _)| !p.ends_with("LOCK") && !p.ends_with(tde::audit::AUDIT_FILE));
    files.sort();
    files
}

/// Runs `cmd` with `stdin` piped in; returns its output.
pub fn run_with_stdin(cmd: &mut std::process::Command, stdin: &[u8]) -> std::process::Output {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tde");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin)
        .expect("write stdin");
    child.wait_with_output().expect("wait for tde")
}

/// A directory for tablespaces with its own local KMS, wrapped in a fault-injecting,
/// call-counting KMS.
pub struct TestPages {
    pub tmp: tempfile::TempDir,
    pub kms: Arc<tde::testing::FaultyKms<Arc<LocalKms>>>,
}

impl TestPages {
    pub fn new() -> TestPages {
        let tmp = tempfile::tempdir().expect("tempdir");
        let local = Arc::new(LocalKms::create(tmp.path().join("kms")).expect("kms"));
        TestPages {
            kms: Arc::new(tde::testing::FaultyKms::new(local)),
            tmp,
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    pub fn local(&self) -> &LocalKms {
        self.kms.inner()
    }

    pub fn options(&self) -> tde::page::TablespaceOptions {
        tde::page::TablespaceOptions::new(self.kms.clone())
    }
}

/// Options for a table under its own master key `key`.
pub fn keyed(key: &str) -> tde::kv::TableOptions {
    tde::kv::TableOptions::default().master_key(key)
}

/// The `tde` command line against a local KMS in a temporary directory (`TDE_KMS`).
pub struct Cli {
    pub tmp: tempfile::TempDir,
}

impl Cli {
    /// A new directory with an initialised KMS.
    pub fn new() -> Cli {
        let cli = Cli {
            tmp: tempfile::tempdir().expect("tempdir"),
        };
        cli.ok(&["kms", "init"]);
        cli
    }

    /// `name` inside the directory, as a string for arguments.
    pub fn path(&self, name: &str) -> String {
        self.tmp.path().join(name).to_string_lossy().into_owned()
    }

    pub fn cmd(&self, args: &[&str]) -> std::process::Command {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_tde"));
        cmd.args(args)
            .env("TDE_KMS", self.tmp.path().join("kms"))
            .env_remove("TDE_KMS_PASSPHRASE")
            .env("HOME", self.tmp.path().join("home"));
        cmd
    }

    pub fn run(&self, args: &[&str], stdin: &[u8]) -> std::process::Output {
        run_with_stdin(&mut self.cmd(args), stdin)
    }

    /// Runs `args`, which must succeed; returns (stdout, stderr).
    pub fn ok_both(&self, args: &[&str], stdin: &[u8]) -> (String, String) {
        let out = self.run(args, stdin);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        (
            String::from_utf8(out.stdout).expect("utf-8 stdout"),
            String::from_utf8(out.stderr).expect("utf-8 stderr"),
        )
    }

    /// Runs `args` with `stdin`, which must succeed; returns stdout.
    pub fn ok_in(&self, args: &[&str], stdin: &[u8]) -> String {
        self.ok_both(args, stdin).0
    }

    pub fn ok(&self, args: &[&str]) -> String {
        self.ok_in(args, b"")
    }

    /// Runs `args`, which must fail; returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args, b"");
        assert!(!out.status.success(), "{args:?} unexpectedly succeeded");
        String::from_utf8(out.stderr).expect("utf-8 stderr")
    }
}

/// Runs `tde args` with `HOME` at `home` (the KMS comes from `--kms` in `args`).
pub fn tde_at_home(home: &Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_tde"))
        .args(args)
        .env("HOME", home)
        .output()
        .expect("run tde")
}

/// A seeded generator (splitmix64) for reproducible mutation tests.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
    /// Up to `max` random bytes.
    pub fn some_bytes(&mut self, max: usize) -> Vec<u8> {
        let n = self.below(max);
        self.bytes(n)
    }
    /// A copy of `input` with a few random edits: flips, truncation, extension, splices.
    pub fn mutate(&mut self, input: &[u8]) -> Vec<u8> {
        let mut out = input.to_vec();
        for _ in 0..1 + self.below(3) {
            match self.below(4) {
                0 if !out.is_empty() => {
                    let i = self.below(out.len());
                    out[i] ^= 1 << self.below(8);
                }
                1 => out.truncate(self.below(out.len() + 1)),
                2 => {
                    let extra = self.some_bytes(40);
                    out.extend(extra);
                }
                _ if !out.is_empty() => {
                    let i = self.below(out.len());
                    out[i] = self.next() as u8;
                }
                _ => {}
            }
        }
        out
    }
}

/// Rewrites a replicated metadata copy (keyring, KMS state) as someone without the keys
/// can: `change` edits its JSON payload, and the copy's unkeyed checksum is fixed up. A
/// copy whose payload is not JSON comes back unchanged.
pub fn rewrite_replicated(bytes: &[u8], change: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
    use sha2::{Digest, Sha256};
    let Ok(mut payload) = serde_json::from_slice::<serde_json::Value>(bytes.get(56..).unwrap_or_default())
    else {
        return bytes.to_vec();
    };
    change(&mut payload);
    let payload = serde_json::to_vec(&payload).expect("json");
    let mut out = bytes[..16].to_vec();
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    let mut h = Sha256::new();
    h.update(&out);
    h.update(&payload);
    out.extend_from_slice(&h.finalize());
    out.extend_from_slice(&payload);
    out
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Checks a `tde bench kv|page --json` object: a limit in (0, 1] for every ratio, and the
/// bare primitive's speeds (seal, open, memory copy) measured in the same run.
pub fn assert_limits_and_primitive(json: &serde_json::Value, text: &str) {
    let ratios = json["ratios"].as_object().expect("ratios");
    for w in ratios.keys() {
        let limit = json["limits"][w]
            .as_f64()
            .unwrap_or_else(|| panic!("no limit for {w}: {text}"));
        assert!(limit > 0.0 && limit <= 1.0, "{w}: {limit}");
    }
    let primitive = json["primitive"].as_object().expect("primitive");
    let sizes: Vec<&serde_json::Value> = primitive.values().filter(|v| v.is_object()).collect();
    assert!(!sizes.is_empty(), "{text}");
    for s in sizes {
        for f in ["seal_gb_per_sec", "open_gb_per_sec", "copy_gb_per_sec"] {
            assert!(s[f].as_f64().unwrap() > 0.0, "{f}: {text}");
        }
    }
}
