//! The local KMS directory is hostile input: whoever can write it (without the root key)
//! cannot roll a running KMS back, revive destroyed keys from an old copy, make tde read
//! a file of their choosing as the root key, or make it compute without bound.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{TestKms, ctx};
use tde::Error;
use tde::kms::local::{CreateKeyOptions, LocalKms};
use tde::kms::{Kms, KmsErrorKind};
use tde::secret::SecretBytes;

const COPIES: [&str; 2] = ["kms-state.a", "kms-state.b"];

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

/// Rewrites both copies of the state file as an attacker can: the envelope's public
/// JSON, and the header's sequence number, with the (unkeyed) checksum fixed up.
fn forge(dir: &Path, seq: Option<u64>, change: impl Fn(&mut serde_json::Value)) {
    for copy in COPIES {
        let path = dir.join(copy);
        let bytes = std::fs::read(&path).unwrap();
        let mut out = common::rewrite_replicated(&bytes, &change);
        if let Some(seq) = seq {
            // The sequence number sits in the header, before the checksum's input ends.
            out[8..16].copy_from_slice(&seq.to_le_bytes());
            out = common::rewrite_replicated(&out, |_| {});
        }
        std::fs::write(&path, out).unwrap();
    }
}

fn kind(err: &Error) -> Option<KmsErrorKind> {
    match err {
        Error::Kms(e) => Some(e.kind()),
        _ => None,
    }
}

#[test]
fn a_running_kms_refuses_an_older_state_put_back_under_it() {
    let t = TestKms::new();
    let old = t.tmp.path().join("old");
    copy_dir(&t.dir(), &old);
    let key = t.kms.create_key(&CreateKeyOptions::default()).unwrap().key_id;
    // Put back the older, genuine state: the running KMS has seen a newer one.
    for copy in COPIES {
        std::fs::copy(old.join(copy), t.dir().join(copy)).unwrap();
    }
    let err = t.kms.describe_key(&key).unwrap_err();
    assert_eq!(err.kind(), KmsErrorKind::Internal, "{err}");
    assert!(err.to_string().contains("older copy"), "{err}");
    // The same with the header's sequence number raised above the current one: the
    // sealed sequence number decides.
    forge(&t.dir(), Some(1_000), |_| {});
    let err = t.kms.describe_key(&key).unwrap_err();
    assert!(err.to_string().contains("older copy"), "{err}");
    // A fresh process sees the header disagree with the sealed state.
    let err = LocalKms::open(t.dir()).unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err}");
}

#[test]
fn a_destroyed_key_does_not_come_back_from_a_copy_taken_before() {
    let t = TestKms::new();
    let key = t.kms.create_key(&CreateKeyOptions::default()).unwrap().key_id;
    let blob = t.kms.encrypt(&key, b"secret", &ctx("t")).unwrap();
    let before = t.tmp.path().join("before");
    copy_dir(&t.dir(), &before);
    // The copy opens with the current root key file (the attacker's hope)...
    let root = tde::kms::local::default_key_file(&t.dir());
    LocalKms::builder(&before).root_key_file(&root).open().unwrap();
    t.kms.schedule_key_deletion(&key, Some(7)).unwrap();
    t.clock.advance(Duration::from_secs(8 * 86_400));
    assert_eq!(
        t.kms.decrypt(&blob, &ctx("t")).unwrap_err().kind(),
        KmsErrorKind::NotFound
    );
    // ...but after the destruction the key file holds a new root key: the old copy is
    // sealed under a key that no longer exists.
    let err = LocalKms::builder(&before)
        .root_key_file(&root)
        .open()
        .unwrap_err();
    assert_eq!(kind(&err), Some(KmsErrorKind::AccessDenied), "{err}");
    // The KMS itself reopens and still works.
    let kms = t.reopen();
    let other = kms.create_key(&CreateKeyOptions::default()).unwrap().key_id;
    kms.encrypt(&other, b"x", &ctx("t")).unwrap();
}

#[test]
fn root_key_rotation_reseals_and_finishes_after_a_crash() {
    let t = TestKms::new();
    let key = t.kms.create_key(&CreateKeyOptions::default()).unwrap().key_id;
    let blob = t.kms.encrypt(&key, b"secret", &ctx("t")).unwrap();
    let root = tde::kms::local::default_key_file(&t.dir());
    let old_root = std::fs::read(&root).unwrap();
    let before = t.tmp.path().join("before");
    copy_dir(&t.dir(), &before);
    t.kms.rotate_root_key().unwrap();
    assert_ne!(std::fs::read(&root).unwrap(), old_root);
    assert_eq!(t.kms.decrypt(&blob, &ctx("t")).unwrap().expose(), b"secret");
    assert_eq!(t.reopen().decrypt(&blob, &ctx("t")).unwrap().expose(), b"secret");
    let err = LocalKms::builder(&before)
        .root_key_file(&root)
        .open()
        .unwrap_err();
    assert_eq!(kind(&err), Some(KmsErrorKind::AccessDenied), "{err}");

    // A crash after the state was sealed under the next key but before that key replaced
    // the old file: the next open finishes the rotation.
    let new_root = std::fs::read(&root).unwrap();
    let next = root.with_file_name("root.key.next");
    std::fs::rename(&root, &next).unwrap();
    std::fs::write(&root, &old_root).unwrap();
    set_private(&root);
    assert_eq!(t.reopen().decrypt(&blob, &ctx("t")).unwrap().expose(), b"secret");
    assert_eq!(std::fs::read(&root).unwrap(), new_root);
    assert!(!next.exists());
    // A crash before anything was sealed under the next key: it is discarded.
    std::fs::write(&next, [1u8; 32]).unwrap();
    set_private(&next);
    t.reopen();
    assert!(!next.exists());
}

fn set_private(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
}

#[test]
fn changing_the_passphrase_keeps_the_keys_and_retires_the_old_passphrase() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("kms");
    let first = || SecretBytes::new(b"first passphrase".to_vec());
    let kms = LocalKms::builder(&dir).passphrase(first()).create().unwrap();
    let key = kms.create_key(&CreateKeyOptions::default()).unwrap().key_id;
    let blob = kms.encrypt(&key, b"secret", &ctx("t")).unwrap();
    kms.change_passphrase(SecretBytes::new(b"second passphrase".to_vec()))
        .unwrap();
    assert!(kms.rotate_root_key().is_err(), "a passphrase KMS has no key file");
    let err = LocalKms::builder(&dir).passphrase(first()).open().unwrap_err();
    assert_eq!(kind(&err), Some(KmsErrorKind::AccessDenied), "{err}");
    let kms = LocalKms::builder(&dir)
        .passphrase(SecretBytes::new(b"second passphrase".to_vec()))
        .open()
        .unwrap();
    assert_eq!(kms.decrypt(&blob, &ctx("t")).unwrap().expose(), b"secret");
}

#[test]
fn recorded_parameters_are_bounded_and_recorded_paths_are_not_trusted_blindly() {
    // Argon2id memory and passes set huge: refused at once, nothing allocated.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("kms");
    LocalKms::builder(&dir)
        .passphrase(SecretBytes::new(b"pass".to_vec()))
        .create()
        .unwrap();
    forge(&dir, None, |e| {
        e["root"]["m_cost_kib"] = serde_json::json!(u32::MAX);
        e["root"]["t_cost"] = serde_json::json!(u32::MAX);
    });
    let started = Instant::now();
    let err = LocalKms::builder(&dir)
        .passphrase(SecretBytes::new(b"pass".to_vec()))
        .open()
        .unwrap_err();
    assert_eq!(kind(&err), Some(KmsErrorKind::AccessDenied), "{err}");
    assert!(err.to_string().contains("bounds"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(60), "hang guard");

    // The recorded key file path pointed at a device or a directory: refused, no hang.
    for target in ["/dev/zero", "/"] {
        let t = TestKms::new();
        forge(&t.dir(), None, |e| e["root"]["path"] = serde_json::json!(target));
        let err = LocalKms::open(t.dir()).unwrap_err();
        assert_eq!(kind(&err), Some(KmsErrorKind::AccessDenied), "{target}: {err}");
    }
}

#[cfg(unix)]
#[test]
fn a_key_file_owned_by_someone_else_is_refused() {
    let t = TestKms::new();
    let root = tde::kms::local::default_key_file(&t.dir());
    // As root (CI), hand the file to another user; as anyone else chown fails and the
    // check cannot be exercised here.
    if std::os::unix::fs::chown(&root, Some(65_534), None).is_err() {
        return;
    }
    let err = LocalKms::open(t.dir()).unwrap_err();
    assert_eq!(kind(&err), Some(KmsErrorKind::AccessDenied), "{err}");
    assert!(err.to_string().contains("belongs to user"), "{err}");
}
