//! Every kind of file tde persists, mutated as an attacker who can write it would:
//! bit flips, truncation, extension, length and count fields set huge, path-like strings
//! in every string field of the JSON formats (with the unkeyed checksums fixed up, so the
//! mutation reaches the parser behind them), and files swapped in from another store.
//!
//! For every case: no panic, an answer within a generous bound (a hang guard, not a
//! performance assertion), a typed error or exactly the data that was written, and
//! nothing created, changed or removed outside the directory under test.
//!
//! Seeded and deterministic. `TDE_HOSTILE_CASES` sets the cases per file kind (default
//! 150; raise it locally, e.g. to 5000).

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::{Rng, files_below, rewrite_replicated};
use sha2::{Digest, Sha256};
use tde::kms::local::LocalKms;
use tde::kms::{EncryptionContext, Kms};
use tde::kv::{Store, StoreOptions, TableOptions};
use tde::page::{BufferPool, PageSize, Tablespace, TablespaceOptions};

const HANG_GUARD: Duration = Duration::from_secs(120);
const ROWS: u32 = 20;

fn cases() -> usize {
    std::env::var("TDE_HOSTILE_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(150)
}

/// Byte-level damage: flips, truncation, extension, overwritten words, and length, count
/// or sequence fields set huge.
fn damage(rng: &mut Rng, input: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..1 + rng.below(3) {
        match rng.below(5) {
            0 if !out.is_empty() => {
                let i = rng.below(out.len());
                out[i] ^= 1 << rng.below(8);
            }
            1 => out.truncate(rng.below(out.len() + 1)),
            2 => {
                let n = rng.below(64);
                out.extend((0..n).map(|_| rng.next() as u8));
            }
            3 if out.len() >= 8 => {
                let i = rng.below(out.len() - 7);
                let value = [u64::MAX, u64::MAX / 2, 1 << 40, u32::MAX as u64][rng.below(4)];
                out[i..i + 8].copy_from_slice(&value.to_le_bytes());
            }
            _ if !out.is_empty() => {
                let i = rng.below(out.len());
                out[i] = rng.next() as u8;
            }
            _ => {}
        }
    }
    out
}

/// A hostile value for a JSON field.
fn hostile_value(rng: &mut Rng, old: &serde_json::Value) -> serde_json::Value {
    use serde_json::json;
    const PATHS: [&str; 7] = [
        "../../outside/canary",
        "/etc/passwd",
        "..",
        "a/../../../outside",
        "",
        "objects/../../outside/canary",
        "\u{0}x",
    ];
    match old {
        serde_json::Value::String(_) => match rng.below(3) {
            0 => json!("x".repeat(1 << (10 + rng.below(10)))),
            _ => json!(PATHS[rng.below(PATHS.len())]),
        },
        serde_json::Value::Number(_) => [
            json!(u64::MAX),
            json!(0),
            json!(-1),
            json!(u32::MAX),
            json!(1u64 << 53),
        ][rng.below(5)]
        .clone(),
        serde_json::Value::Array(a) if !a.is_empty() && rng.below(2) == 0 => {
            let mut a = a.clone();
            let extra = a[rng.below(a.len())].clone();
            a.push(extra);
            json!(a)
        }
        serde_json::Value::Bool(b) => json!(!b),
        _ => json!(null),
    }
}

/// Sets one random leaf (or array) of `v` to a hostile value.
fn hostile_json(rng: &mut Rng, v: &mut serde_json::Value) {
    let mut leaves = Vec::new();
    collect(v, &mut String::new(), &mut leaves);
    if leaves.is_empty() {
        return;
    }
    let pointer = leaves[rng.below(leaves.len())].clone();
    if let Some(slot) = v.pointer_mut(&pointer) {
        *slot = hostile_value(rng, slot);
    }
}

fn collect(v: &serde_json::Value, at: &mut String, out: &mut Vec<String>) {
    out.push(at.clone());
    let len = at.len();
    match v {
        serde_json::Value::Object(m) => {
            for (k, child) in m {
                at.push('/');
                at.push_str(&k.replace('~', "~0").replace('/', "~1"));
                collect(child, at, out);
                at.truncate(len);
            }
        }
        serde_json::Value::Array(a) => {
            for (i, child) in a.iter().enumerate() {
                at.push_str(&format!("/{i}"));
                collect(child, at, out);
                at.truncate(len);
            }
        }
        _ => {}
    }
}

/// The world every case starts from: a local KMS, a store with a table, a tablespace,
/// a backup of each, and a canary directory that no case may touch.
struct World {
    _tmp: tempfile::TempDir,
    pristine: PathBuf,
    /// A second store, for files swapped in from elsewhere.
    other_store: PathBuf,
    blob: Vec<u8>,
}

fn context() -> EncryptionContext {
    EncryptionContext::new().with("purpose", "hostile")
}

fn options(root: &Path) -> Result<(Arc<LocalKms>, StoreOptions, TablespaceOptions), tde::Error> {
    let kms = Arc::new(LocalKms::open(root.join("kms"))?);
    Ok((
        kms.clone(),
        StoreOptions::new(kms.clone()),
        TablespaceOptions::new(kms).page_size(PageSize::K4),
    ))
}

fn page_bytes(n: u64, len: usize) -> Vec<u8> {
    (0..len).map(|i| (n as usize * 31 + i) as u8).collect()
}

impl World {
    fn new() -> World {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("pristine");
        std::fs::create_dir(&root).unwrap();
        let kms = LocalKms::create(root.join("kms")).unwrap();
        let key = kms.create_key(&Default::default()).unwrap().key_id;
        let blob = kms.encrypt(&key, b"hostile plaintext", &context()).unwrap();
        drop(kms);
        let (_, store_options, ts_options) = options(&root).unwrap();
        let store = Store::create(root.join("store"), store_options.clone()).unwrap();
        store.create_table("t", &TableOptions::default()).unwrap();
        for i in 0..ROWS {
            store
                .table("t")
                .unwrap()
                .put(format!("k{i}").as_bytes(), format!("v{i}").as_bytes())
                .unwrap();
        }
        store.flush().unwrap();
        tde::backup::create(&store, root.join("dest")).unwrap();
        drop(store);
        let pool = BufferPool::new(1 << 20);
        let ts = Tablespace::create(root.join("ts.tbs"), &ts_options, &pool).unwrap();
        for n in 0..4 {
            let mut page = ts.write(n).unwrap();
            let len = page.len();
            page.copy_from_slice(&page_bytes(n, len));
        }
        ts.checkpoint().unwrap();
        // A committed batch left in the journal.
        let mut page = ts.write(4).unwrap();
        let len = page.len();
        page.copy_from_slice(&page_bytes(4, len));
        drop(page);
        ts.sync().unwrap();
        tde::backup::create_tablespace(&ts, root.join("tsdest")).unwrap();
        drop(ts);
        std::fs::create_dir(root.join("outside")).unwrap();
        std::fs::write(root.join("outside").join("canary"), b"do not touch").unwrap();

        let other_store = tmp.path().join("other");
        let other = Store::create(&other_store, StoreOptions::new(options(&root).unwrap().0)).unwrap();
        other.create_table("t", &TableOptions::default()).unwrap();
        other.table("t").unwrap().put(b"k0", b"someone else's").unwrap();
        other.flush().unwrap();
        drop(other);
        World {
            _tmp: tmp,
            pristine: root,
            other_store,
            blob,
        }
    }

    /// A fresh copy of the world in which one case runs.
    fn copy(&self) -> tempfile::TempDir {
        let case = tempfile::tempdir().unwrap();
        copy_tree(&self.pristine, case.path());
        // The KMS's root key sits beside its directory.
        copy_tree(&self.pristine.join("kms.keys"), &case.path().join("kms.keys"));
        case
    }
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let mode = std::fs::metadata(entry.path()).unwrap().permissions().mode();
                std::fs::set_permissions(&target, std::fs::Permissions::from_mode(mode)).unwrap();
            }
        }
    }
}

fn top_level(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Every operation a user would run on the world, each checked: an error, or exactly
/// the data that was written.
///
/// `rows_may_vanish`: RocksDB's own metadata (MANIFEST, CURRENT) is CTR ciphertext
/// without authentication, so a damaged MANIFEST can make RocksDB drop files as torn;
/// values that are returned are still authenticated (see the README's threat model).
fn exercise(root: &Path, blob: &[u8], rows_may_vanish: bool) {
    let Ok((kms, store_options, ts_options)) = options(root) else {
        return;
    };
    if let Ok(plain) = kms.decrypt(blob, &context()) {
        assert_eq!(
            plain.expose(),
            b"hostile plaintext",
            "the KMS returned other data"
        );
    }
    let check_store = |store: &Store| {
        if let Ok(table) = store.table("t") {
            for i in 0..ROWS {
                match table.get(format!("k{i}").as_bytes()) {
                    Ok(Some(v)) => assert_eq!(v, format!("v{i}").into_bytes(), "altered data returned"),
                    Ok(None) => assert!(rows_may_vanish, "row k{i} vanished without an error"),
                    Err(_) => {}
                }
            }
        }
    };
    if let Ok(store) = Store::open(root.join("store"), store_options.clone()) {
        check_store(&store);
        let _ = store.verify_audit();
    }
    let _ = tde::backup::verify(root.join("dest"), None);
    if let Ok(store) = tde::backup::restore(
        root.join("dest"),
        None,
        &root.join("restored"),
        store_options.clone(),
    ) {
        check_store(&store);
        drop(store);
        let _ = std::fs::remove_dir_all(root.join("restored"));
    }
    let _ = tde::backup::rewrap(root.join("dest"), None, kms.clone(), None, "alias/acs/tde", None);
    let pool = BufferPool::new(1 << 20);
    if let Ok(ts) = Tablespace::open(root.join("ts.tbs"), &ts_options, &pool) {
        for n in 0..5 {
            if let Ok(page) = ts.read(n) {
                assert_eq!(&page[..], &page_bytes(n, page.len())[..], "page {n} altered");
            }
        }
    }
    let _ = tde::backup::verify_deep_tablespace(root.join("tsdest"), None, &ts_options);
}

/// Runs `cases()` cases, each mutating a fresh copy of the world with `mutate`.
fn campaign(name: &str, seed: u64, mutate: impl Fn(&mut Rng, &Path, &World)) {
    campaign_with(name, seed, false, mutate);
}

fn campaign_with(name: &str, seed: u64, rows_may_vanish: bool, mutate: impl Fn(&mut Rng, &Path, &World)) {
    let world = World::new();
    let canary = files_below(&world.pristine.join("outside"));
    let mut rng = Rng(seed);
    for case in 0..cases() {
        let dir = world.copy();
        let root = dir.path();
        let before = top_level(root);
        mutate(&mut rng, root, &world);
        if std::env::var_os("TDE_HOSTILE_TRACE").is_some() {
            eprintln!("{name} case {case}");
            let keep = world.pristine.parent().unwrap().join(format!("case-{case}"));
            copy_tree(root, &keep);
        }
        // The hang guard: the case runs on its own thread; one that does not answer in
        // time fails the test (and its directory is kept to reproduce it).
        let (done, finished) = std::sync::mpsc::channel();
        let (path, blob) = (root.to_path_buf(), world.blob.clone());
        std::thread::spawn(move || {
            exercise(&path, &blob, rows_may_vanish);
            let _ = done.send(());
        });
        match finished.recv_timeout(HANG_GUARD) {
            Ok(()) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                let kept = dir.keep();
                panic!(
                    "{name} case {case}: no answer within {HANG_GUARD:?}; its files are in {}",
                    kept.display()
                );
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                panic!("{name} case {case}: the case panicked (see above)")
            }
        }
        assert_eq!(
            files_below(&root.join("outside")),
            canary_at(&canary, &world.pristine, root),
            "{name} case {case}: the outside directory changed"
        );
        assert_eq!(
            top_level(root),
            before,
            "{name} case {case}: files appeared beside the directories under test"
        );
        assert!(files_below(&world.pristine.join("outside")) == canary);
    }
}

fn canary_at(canary: &[(PathBuf, Vec<u8>)], from: &Path, to: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    canary
        .iter()
        .map(|(p, b)| (to.join(p.strip_prefix(from).unwrap()), b.clone()))
        .collect()
}

/// A mutation that understands a file's structure.
type Structured<'a> = &'a dyn Fn(&[u8], &mut Rng) -> Vec<u8>;

fn mutate_file(rng: &mut Rng, path: &Path, json: Option<Structured<'_>>) {
    let Ok(bytes) = std::fs::read(path) else {
        return;
    };
    let mutated = match json {
        Some(structured) if rng.below(2) == 0 => structured(&bytes, rng),
        _ => damage(rng, &bytes),
    };
    std::fs::write(path, mutated).unwrap();
}

fn one_of(rng: &mut Rng, dir: &Path, filter: impl Fn(&str) -> bool) -> Option<PathBuf> {
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file() && filter(&p.file_name().unwrap().to_string_lossy()))
        .collect();
    names.sort();
    (!names.is_empty()).then(|| names.swap_remove(rng.below(names.len())))
}

fn replicated_json(bytes: &[u8], rng: &mut Rng) -> Vec<u8> {
    rewrite_replicated(bytes, |v| hostile_json(rng, v))
}

#[test]
fn keyring_copies() {
    campaign("keyring", 11, |rng, root, _| {
        for copy in ["TDE-KEYRING.a", "TDE-KEYRING.b"] {
            if rng.below(3) != 0 {
                mutate_file(rng, &root.join("store").join(copy), Some(&replicated_json));
            }
        }
    });
}

#[test]
fn kms_state_copies() {
    campaign("kms state", 12, |rng, root, _| {
        for copy in ["kms-state.a", "kms-state.b"] {
            if rng.below(3) != 0 {
                mutate_file(rng, &root.join("kms").join(copy), Some(&replicated_json));
            }
        }
    });
}

#[test]
fn audit_trail() {
    campaign("audit", 13, |rng, root, _| {
        let path = root.join("store").join(tde::audit::AUDIT_FILE);
        let json = |bytes: &[u8], rng: &mut Rng| -> Vec<u8> {
            let text = String::from_utf8_lossy(bytes);
            let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
            if lines.is_empty() {
                return bytes.to_vec();
            }
            let i = rng.below(lines.len());
            if let Ok(mut v) = serde_json::from_str::<serde_json::Value>(&lines[i]) {
                hostile_json(rng, &mut v);
                lines[i] = v.to_string();
            }
            (lines.join("\n") + "\n").into_bytes()
        };
        mutate_file(rng, &path, Some(&json));
    });
}

#[test]
fn tablespace_header_pages_and_journal() {
    campaign("tablespace", 14, |rng, root, _| {
        let path = if rng.below(2) == 0 {
            root.join("ts.tbs")
        } else {
            tde::page::journal_path(&root.join("ts.tbs"))
        };
        let bytes = std::fs::read(&path).unwrap();
        // Aim at the header page half of the time.
        let (start, end) = if rng.below(2) == 0 && bytes.len() > 4096 {
            (0, 4096)
        } else {
            (0, bytes.len())
        };
        let mut out = bytes[..start].to_vec();
        out.extend(damage(rng, &bytes[start..end]));
        out.extend_from_slice(&bytes[end..]);
        std::fs::write(&path, out).unwrap();
    });
}

#[test]
fn backup_manifests_and_objects() {
    campaign("backup", 15, |rng, root, _| {
        let dest = root.join(if rng.below(3) == 0 { "tsdest" } else { "dest" });
        if rng.below(2) == 0 {
            let Some(manifest) = one_of(rng, &dest.join("backups"), |n| n.ends_with(".json")) else {
                return;
            };
            let json = |bytes: &[u8], rng: &mut Rng| -> Vec<u8> {
                let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(bytes) else {
                    return bytes.to_vec();
                };
                hostile_json(rng, &mut v);
                // Fix up the unkeyed checksum so the mutation reaches validation.
                v["checksum"] = serde_json::json!("");
                if let Ok(m) = serde_json::from_value::<tde::backup::Manifest>(v.clone()) {
                    let mut m = m;
                    m.checksum = String::new();
                    m.checksum = common::hex(&Sha256::digest(serde_json::to_vec(&m).unwrap()));
                    return serde_json::to_vec(&m).unwrap();
                }
                serde_json::to_vec(&v).unwrap()
            };
            mutate_file(rng, &manifest, Some(&json));
        } else if let Some(object) = one_of(rng, &dest.join("objects"), |_| true) {
            mutate_file(rng, &object, None);
        }
    });
}

#[test]
fn rocksdb_file_headers_and_files_swapped_from_another_store() {
    campaign_with("store files", 16, true, |rng, root, world| {
        let store = root.join("store");
        let only = std::env::var("TDE_HOSTILE_ONLY").unwrap_or_default();
        let kinds_of = |n: &str| {
            n.ends_with(".sst")
                || n.ends_with(".log")
                || n.starts_with("MANIFEST-")
                || n.starts_with("OPTIONS-")
                || n == "CURRENT"
                || n == "IDENTITY"
        };
        let kinds = |n: &str| n.starts_with(only.as_str()) && kinds_of(n);
        let Some(victim) = one_of(rng, &store, kinds) else {
            return;
        };
        if rng.below(3) == 0 {
            // The same kind of file from another store.
            let name = victim.file_name().unwrap().to_string_lossy().into_owned();
            let prefix: String = name.chars().take_while(|c| !c.is_ascii_digit()).collect();
            let ext = name.rsplit('.').next().unwrap_or_default().to_owned();
            if let Some(donor) = one_of(rng, &world.other_store, |n| {
                n.starts_with(&prefix) && n.ends_with(&ext) && kinds(n)
            }) {
                std::fs::copy(donor, &victim).unwrap();
            }
            return;
        }
        // The file header (the first 68 bytes), or anywhere.
        let bytes = std::fs::read(&victim).unwrap();
        let cut = if rng.below(2) == 0 {
            68.min(bytes.len())
        } else {
            bytes.len()
        };
        let mut out = damage(rng, &bytes[..cut]);
        if out.len() == cut {
            out.extend_from_slice(&bytes[cut..]);
        }
        std::fs::write(&victim, out).unwrap();
    });
}
