//! The local KMS's key lifecycle through the public API.

mod common;

use common::{TestKms, ctx};
use tde::kms::Clock;
use tde::kms::local::{CreateKeyOptions, LocalKms};
use tde::kms::{DataKeySpec, KeySpec, KeyState, Kms, KmsErrorKind, MAX_DIRECT_PLAINTEXT};
use tde::secret::SecretBytes;
use tde::{Error, Result};

fn kind<T: std::fmt::Debug>(r: tde::kms::KmsResult<T>) -> KmsErrorKind {
    r.expect_err("expected a KMS error").kind()
}

fn new_key(t: &TestKms) -> String {
    t.kms.create_key(&CreateKeyOptions::default()).unwrap().key_id
}

#[test]
fn disabled_key_refuses_generate_and_decrypt_and_works_after_enable() {
    let t = TestKms::new();
    let key = new_key(&t);
    let dk = t
        .kms
        .generate_data_key(&key, DataKeySpec::Aes256, &ctx("t1"))
        .unwrap();
    t.kms.disable_key(&key).unwrap();
    assert_eq!(
        kind(t.kms.generate_data_key(&key, DataKeySpec::Aes256, &ctx("t1"))),
        KmsErrorKind::Disabled
    );
    let err = t
        .kms
        .decrypt_data_key(&dk.wrapped, DataKeySpec::Aes256, &ctx("t1"))
        .unwrap_err();
    assert_eq!(err.kind(), KmsErrorKind::Disabled);
    assert!(!err.is_retryable());
    assert!(err.to_string().contains(&key), "{err}");
    assert_eq!(
        kind(t.kms.encrypt(&key, b"x", &ctx("t1"))),
        KmsErrorKind::Disabled
    );
    t.kms.enable_key(&key).unwrap();
    let again = t
        .kms
        .decrypt_data_key(&dk.wrapped, DataKeySpec::Aes256, &ctx("t1"))
        .unwrap();
    assert_eq!(again.len(), 32);
    t.kms
        .generate_data_key(&key, DataKeySpec::Sm4, &ctx("t1"))
        .unwrap();
}

#[test]
fn a_blob_decrypts_after_two_rotations_and_new_blobs_use_the_new_version() {
    let t = TestKms::new();
    let key = new_key(&t);
    let old = t.kms.encrypt(&key, b"secret config", &ctx("t")).unwrap();
    assert_eq!(t.kms.rotate_key(&key).unwrap().primary_version, 2);
    let mid = t.kms.encrypt(&key, b"mid", &ctx("t")).unwrap();
    let meta = t.kms.rotate_key(&key).unwrap();
    assert_eq!(meta.primary_version, 3);
    assert_eq!(meta.versions.len(), 3);
    assert_eq!(t.kms.decrypt(&old, &ctx("t")).unwrap().expose(), b"secret config");
    assert_eq!(t.kms.decrypt(&mid, &ctx("t")).unwrap().expose(), b"mid");
    // Rewrap to the current version without seeing the plaintext.
    let rewrapped = t.kms.re_encrypt(&old, &ctx("t"), &key, &ctx("t")).unwrap();
    assert_ne!(rewrapped, old);
    assert_eq!(
        t.kms.decrypt(&rewrapped, &ctx("t")).unwrap().expose(),
        b"secret config"
    );
    // And from another handle on the same directory.
    assert_eq!(
        t.reopen().decrypt(&old, &ctx("t")).unwrap().expose(),
        b"secret config"
    );
}

#[test]
fn context_mismatch_and_tampering_fail() {
    let t = TestKms::new();
    let key = new_key(&t);
    let dk = t
        .kms
        .generate_data_key(&key, DataKeySpec::Aes256, &ctx("t1"))
        .unwrap();
    for other in [
        ctx("t2"),
        ctx("t1").with("extra", "1"),
        tde::kms::EncryptionContext::new(),
    ] {
        let err = t
            .kms
            .decrypt_data_key(&dk.wrapped, DataKeySpec::Aes256, &other)
            .unwrap_err();
        assert_eq!(err.kind(), KmsErrorKind::InvalidCiphertext);
    }
    let bytes = dk.wrapped.as_bytes();
    for i in 0..bytes.len() {
        let mut bad = bytes.to_vec();
        bad[i] ^= 0x20;
        let r = t.kms.decrypt(&bad, &ctx("t1"));
        assert!(
            matches!(
                r.as_ref().map_err(|e| e.kind()),
                Err(KmsErrorKind::InvalidCiphertext | KmsErrorKind::NotFound)
            ),
            "byte {i}: {r:?}"
        );
    }
    assert_eq!(
        kind(t.kms.decrypt(&bytes[..bytes.len() - 1], &ctx("t1"))),
        KmsErrorKind::InvalidCiphertext
    );
    assert_eq!(
        kind(t.kms.decrypt(b"", &ctx("t1"))),
        KmsErrorKind::InvalidCiphertext
    );
    // Wrong data-key length is caught by decrypt_data_key.
    let err = t
        .kms
        .decrypt_data_key(&dk.wrapped, DataKeySpec::Sm4, &ctx("t1"))
        .unwrap_err();
    assert_eq!(err.kind(), KmsErrorKind::InvalidCiphertext);
}

#[test]
fn direct_encryption_is_limited_to_6_kib() {
    let t = TestKms::new();
    let key = new_key(&t);
    let max = vec![1u8; MAX_DIRECT_PLAINTEXT];
    let blob = t.kms.encrypt(&key, &max, &ctx("t")).unwrap();
    assert_eq!(t.kms.decrypt(&blob, &ctx("t")).unwrap().expose(), &max[..]);
    let err = t
        .kms
        .encrypt(&key, &vec![1u8; MAX_DIRECT_PLAINTEXT + 1], &ctx("t"))
        .unwrap_err();
    assert_eq!(err.kind(), KmsErrorKind::InvalidRequest);
    assert!(err.to_string().contains("6144"), "{err}");
}

#[test]
fn service_key_is_created_on_first_use_and_cannot_be_disabled_deleted_or_imported() {
    let t = TestKms::new();
    assert!(t.kms.list_keys().unwrap().is_empty());
    let dk = t
        .kms
        .generate_data_key("alias/acs/tde", DataKeySpec::Aes256, &ctx("t"))
        .unwrap();
    let meta = t.kms.describe_key("alias/acs/tde").unwrap();
    assert!(meta.service_key);
    assert_eq!(meta.key_id, dk.key_id);
    assert_eq!(meta.rotation.interval_days, Some(365));
    // Same key on every later use, from any handle.
    assert_eq!(
        t.reopen().describe_key("alias/acs/tde").unwrap().key_id,
        dk.key_id
    );
    assert_eq!(t.kms.list_keys().unwrap().len(), 1);
    for r in [
        t.kms.disable_key("alias/acs/tde").map(|_| ()),
        t.kms.disable_key(&dk.key_id).map(|_| ()),
        t.kms.schedule_key_deletion(&dk.key_id, Some(7)).map(|_| ()),
        t.kms.import_parameters(&dk.key_id).map(|_| ()),
    ] {
        assert_eq!(r.unwrap_err().kind(), KmsErrorKind::AccessDenied);
    }
    assert_eq!(t.kms.describe_key(&dk.key_id).unwrap().state, KeyState::Enabled);
    // Users cannot claim the reserved namespace.
    let key = new_key(&t);
    assert_eq!(
        kind(t.kms.set_alias("alias/acs/other", &key)),
        KmsErrorKind::InvalidRequest
    );
    // A second service is a second key.
    let other = t.kms.describe_key("alias/acs/backup").unwrap();
    assert_ne!(other.key_id, dk.key_id);
    assert_eq!(
        kind(t.kms.describe_key("alias/acs/")),
        KmsErrorKind::InvalidRequest
    );
}

#[test]
fn deletion_waits_7_to_30_days_can_be_cancelled_and_destroys_on_open() {
    let t = TestKms::new();
    let key = new_key(&t);
    let blob = t.kms.encrypt(&key, b"x", &ctx("t")).unwrap();
    for bad in [0, 6, 31] {
        assert_eq!(
            kind(t.kms.schedule_key_deletion(&key, Some(bad))),
            KmsErrorKind::InvalidRequest
        );
    }
    let meta = t.kms.schedule_key_deletion(&key, None).unwrap();
    assert_eq!(meta.state, KeyState::PendingDeletion);
    let deletion = meta.deletion_date.unwrap();
    assert_eq!(deletion.0 - t.clock.now().0, 30 * 86_400);
    assert_eq!(
        kind(t.kms.decrypt(&blob, &ctx("t"))),
        KmsErrorKind::PendingDeletion
    );
    assert_eq!(kind(t.kms.enable_key(&key)), KmsErrorKind::InvalidRequest);
    assert_eq!(t.kms.cancel_key_deletion(&key).unwrap().state, KeyState::Disabled);
    t.kms.enable_key(&key).unwrap();
    t.kms.decrypt(&blob, &ctx("t")).unwrap();

    t.kms.set_alias("alias/doomed", &key).unwrap();
    t.kms.schedule_key_deletion(&key, Some(7)).unwrap();
    t.clock.advance_days(6);
    assert_eq!(
        t.reopen().describe_key(&key).unwrap().state,
        KeyState::PendingDeletion
    );
    t.clock.advance_days(1);
    let reopened = t.reopen();
    let err = reopened.describe_key(&key).unwrap_err();
    assert_eq!(err.kind(), KmsErrorKind::NotFound);
    assert!(err.to_string().contains("destroyed"), "{err}");
    assert_eq!(kind(reopened.decrypt(&blob, &ctx("t"))), KmsErrorKind::NotFound);
    assert_eq!(
        kind(reopened.describe_key("alias/doomed")),
        KmsErrorKind::NotFound
    );
    assert_eq!(kind(t.kms.cancel_key_deletion(&key)), KmsErrorKind::NotFound);
    assert!(reopened.list_keys().unwrap().is_empty());
}

#[test]
fn automatic_rotation_happens_when_the_kms_is_used() {
    let t = TestKms::new();
    let meta = t
        .kms
        .create_key(&CreateKeyOptions {
            rotation_days: Some(90),
            ..CreateKeyOptions::default()
        })
        .unwrap();
    let blob = t.kms.encrypt(&meta.key_id, b"x", &ctx("t")).unwrap();
    t.clock.advance_days(89);
    assert_eq!(t.kms.describe_key(&meta.key_id).unwrap().primary_version, 1);
    t.clock.advance_days(1);
    let after = t.kms.describe_key(&meta.key_id).unwrap();
    assert_eq!(after.primary_version, 2);
    assert_eq!(
        after.rotation.next_rotation_at.unwrap().0,
        t.clock.now().0 + 90 * 86_400
    );
    assert_eq!(t.kms.decrypt(&blob, &ctx("t")).unwrap().expose(), b"x");
    t.kms.set_rotation(&meta.key_id, None).unwrap();
    t.clock.advance_days(400);
    assert_eq!(t.kms.describe_key(&meta.key_id).unwrap().primary_version, 2);
    assert_eq!(
        kind(t.kms.create_key(&CreateKeyOptions {
            rotation_days: Some(0),
            ..CreateKeyOptions::default()
        })),
        KmsErrorKind::InvalidRequest
    );
}

#[test]
fn aliases_resolve_move_and_are_validated() {
    let t = TestKms::new();
    let a = t
        .kms
        .create_key(&CreateKeyOptions {
            alias: Some("alias/payments".into()),
            description: "payments".into(),
            ..CreateKeyOptions::default()
        })
        .unwrap();
    assert_eq!(a.aliases, vec!["alias/payments".to_owned()]);
    let blob = t.kms.encrypt("alias/payments", b"v", &ctx("t")).unwrap();
    let b = new_key(&t);
    t.kms.set_alias("alias/payments", &b).unwrap();
    assert_eq!(t.kms.describe_key("alias/payments").unwrap().key_id, b);
    // The blob names its key id, not the alias.
    assert_eq!(t.kms.decrypt(&blob, &ctx("t")).unwrap().expose(), b"v");
    let taken = t.kms.create_key(&CreateKeyOptions {
        alias: Some("alias/payments".into()),
        ..CreateKeyOptions::default()
    });
    assert_eq!(kind(taken), KmsErrorKind::InvalidRequest);
    for bad in ["payments", "alias/", "alias/has space"] {
        assert_eq!(
            kind(t.kms.set_alias(bad, &b)),
            KmsErrorKind::InvalidRequest,
            "{bad}"
        );
    }
    assert_eq!(
        kind(t.kms.set_alias("alias/x", "no-such-key")),
        KmsErrorKind::NotFound
    );
    assert_eq!(kind(t.kms.describe_key("alias/missing")), KmsErrorKind::NotFound);
}

#[test]
fn sm4_master_keys_wrap_and_unwrap() {
    let t = TestKms::new();
    let meta = t
        .kms
        .create_key(&CreateKeyOptions {
            spec: KeySpec::Sm4,
            ..CreateKeyOptions::default()
        })
        .unwrap();
    assert_eq!(meta.spec, KeySpec::Sm4);
    let dk = t
        .kms
        .generate_data_key(&meta.key_id, DataKeySpec::Sm4, &ctx("t"))
        .unwrap();
    assert_eq!(dk.plaintext.len(), 16);
    t.kms
        .decrypt_data_key(&dk.wrapped, DataKeySpec::Sm4, &ctx("t"))
        .unwrap();
}

#[test]
fn re_encrypt_moves_a_blob_to_another_key_and_context() {
    let t = TestKms::new();
    let (a, b) = (new_key(&t), new_key(&t));
    let blob = t.kms.encrypt(&a, b"moving", &ctx("t1")).unwrap();
    let moved = t.kms.re_encrypt(&blob, &ctx("t1"), &b, &ctx("t2")).unwrap();
    t.kms.disable_key(&a).unwrap();
    assert_eq!(t.kms.decrypt(&moved, &ctx("t2")).unwrap().expose(), b"moving");
    assert_eq!(
        kind(t.kms.re_encrypt(&blob, &ctx("t1"), &b, &ctx("t2"))),
        KmsErrorKind::Disabled
    );
    t.kms.enable_key(&a).unwrap();
    t.kms.disable_key(&b).unwrap();
    assert_eq!(
        kind(t.kms.re_encrypt(&blob, &ctx("t1"), &b, &ctx("t2"))),
        KmsErrorKind::Disabled
    );
    assert_eq!(
        kind(t.kms.re_encrypt(&blob, &ctx("wrong"), &a, &ctx("t2"))),
        KmsErrorKind::InvalidCiphertext
    );
}

#[test]
fn changes_by_one_handle_are_seen_by_another() {
    let t = TestKms::new();
    let other = t.reopen();
    let key = new_key(&t);
    let blob = other.encrypt(&key, b"shared", &ctx("t")).unwrap();
    other.disable_key(&key).unwrap();
    assert_eq!(kind(t.kms.decrypt(&blob, &ctx("t"))), KmsErrorKind::Disabled);
    t.kms.enable_key(&key).unwrap();
    assert_eq!(other.decrypt(&blob, &ctx("t")).unwrap().expose(), b"shared");
}

#[test]
fn concurrent_changes_from_many_threads_are_all_kept() {
    let t = TestKms::new();
    let handles: Vec<_> = (0..4).map(|_| t.reopen()).collect();
    std::thread::scope(|s| {
        for h in &handles {
            s.spawn(move || {
                for _ in 0..5 {
                    h.create_key(&CreateKeyOptions::default()).unwrap();
                }
            });
        }
    });
    assert_eq!(t.kms.list_keys().unwrap().len(), 20);
}

#[test]
fn passphrase_protected_kms_needs_the_right_passphrase() -> Result<()> {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("kms");
    let kms = LocalKms::builder(&dir)
        .passphrase(SecretBytes::new(b"correct horse battery staple".to_vec()))
        .create()?;
    let key = kms.create_key(&CreateKeyOptions::default())?.key_id;
    let blob = kms.encrypt(&key, b"x", &ctx("t"))?;
    assert!(!dir.join("root.key").exists());
    let wrong = LocalKms::builder(&dir)
        .passphrase(SecretBytes::new(b"Tr0ub4dor&3".to_vec()))
        .open();
    match wrong {
        Err(Error::Kms(e)) => assert_eq!(e.kind(), KmsErrorKind::AccessDenied),
        other => panic!("{other:?}"),
    }
    let right = LocalKms::builder(&dir)
        .passphrase(SecretBytes::new(b"correct horse battery staple".to_vec()))
        .open()?;
    assert_eq!(right.decrypt(&blob, &ctx("t"))?.expose(), b"x");
    Ok(())
}

#[test]
fn root_key_file_must_be_private_and_right() {
    let t = TestKms::new();
    let root = tde::kms::local::default_key_file(&t.dir());
    assert!(
        !t.dir().join("root.key").exists(),
        "the root key is kept out of the KMS directory"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&root).unwrap().permissions().mode() & 0o777,
            0o600
        );
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = LocalKms::open(t.dir()).unwrap_err();
        assert!(err.to_string().contains("chmod 600"), "{err}");
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let other = tempfile::tempdir().unwrap();
    LocalKms::create(other.path().join("kms")).unwrap();
    let err = LocalKms::builder(t.dir())
        .root_key_file(tde::kms::local::default_key_file(&other.path().join("kms")))
        .open()
        .unwrap_err();
    assert!(
        matches!(&err, Error::Kms(e) if e.kind() == KmsErrorKind::AccessDenied),
        "{err}"
    );
}

#[test]
fn opening_a_missing_kms_or_creating_twice_fails_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let err = LocalKms::open(tmp.path().join("nope")).unwrap_err();
    assert!(
        matches!(&err, Error::Kms(e) if e.kind() == KmsErrorKind::NotFound),
        "{err}"
    );
    assert!(
        !tmp.path().join("nope").exists(),
        "open must not create the directory"
    );
    LocalKms::create(tmp.path().join("k")).unwrap();
    assert!(matches!(
        LocalKms::create(tmp.path().join("k")),
        Err(Error::InvalidArgument(_))
    ));
}

#[test]
fn damaged_state_copies() {
    let t = TestKms::new();
    let key = new_key(&t);
    let blob = t.kms.encrypt(&key, b"x", &ctx("t")).unwrap();
    let a = t.dir().join("kms-state.a");
    let b = t.dir().join("kms-state.b");
    let mut bytes = std::fs::read(&a).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&a, &bytes).unwrap();
    // One copy damaged: still opens, and the next write repairs it.
    let kms = t.reopen();
    assert_eq!(kms.decrypt(&blob, &ctx("t")).unwrap().expose(), b"x");
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    // Both damaged: a clear error, and nothing is modified.
    std::fs::write(&a, b"junk").unwrap();
    std::fs::write(&b, b"junk").unwrap();
    let err = LocalKms::open(t.dir()).unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err}");
    assert_eq!(std::fs::read(&a).unwrap(), b"junk");
}

#[test]
fn no_key_material_in_debug_output() {
    let t = TestKms::new();
    let dk = t
        .kms
        .generate_data_key("alias/acs/tde", DataKeySpec::Aes256, &ctx("t"))
        .unwrap();
    let shown = format!("{dk:?} {:?}", t.kms);
    let key_hex = common::hex(&t.kms.decrypt(dk.wrapped.as_bytes(), &ctx("t")).unwrap().expose()[..8]);
    assert!(!shown.contains(&key_hex), "{shown}");
    assert!(shown.contains("DataKey"), "{shown}");
}
