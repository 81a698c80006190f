//! A crash at any point of a KMS state change never leaves the KMS unreadable: after the
//! crash it opens, and holds either the state before or the state after the change.

mod common;

use common::ctx;
use tde::kms::local::{CreateKeyOptions, LocalKms};
use tde::kms::{KeyState, Kms};
use tde::testing::CrashStorage;

/// Runs `change` against a KMS that crashes at cut point 0, 1, 2, ... until a run
/// completes; after each crash, reopens normally and calls `check`.
fn at_every_cut_point(
    torn: bool,
    change: impl Fn(&LocalKms) -> tde::Result<()>,
    check: impl Fn(&LocalKms, bool),
) -> usize {
    for cut in 0.. {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("kms");
        {
            let kms = LocalKms::create(&dir).unwrap();
            let key = kms
                .create_key(&CreateKeyOptions {
                    alias: Some("alias/base".into()),
                    ..CreateKeyOptions::default()
                })
                .unwrap();
            let blob = kms.encrypt(&key.key_id, b"before", &ctx("t")).unwrap();
            std::fs::write(tmp.path().join("blob"), blob).unwrap();
        }
        let storage = CrashStorage::new(&dir, cut, torn);
        let crashed = match LocalKms::builder(&dir).storage(storage.clone()).open() {
            Ok(kms) => change(&kms).is_err(),
            Err(_) => true,
        };
        assert_eq!(crashed, storage.crashed(), "cut {cut}: an error without a crash");
        let reopened =
            LocalKms::open(&dir).unwrap_or_else(|e| panic!("cut {cut}: KMS unreadable after crash: {e}"));
        check(&reopened, crashed);
        // What was encrypted before the change still decrypts (once the key is enabled,
        // if the crash left it disabled).
        reopened.enable_key("alias/base").unwrap();
        let blob = std::fs::read(tmp.path().join("blob")).unwrap();
        assert_eq!(
            reopened.decrypt(&blob, &ctx("t")).unwrap().expose(),
            b"before",
            "cut {cut}"
        );
        if !crashed {
            return cut;
        }
    }
    unreachable!()
}

#[test]
fn crash_while_creating_a_key() {
    for torn in [false, true] {
        let cuts = at_every_cut_point(
            torn,
            |kms| {
                kms.create_key(&CreateKeyOptions {
                    alias: Some("alias/new".into()),
                    ..CreateKeyOptions::default()
                })?;
                Ok(())
            },
            |kms, crashed| {
                let n = kms.list_keys().unwrap().len();
                if crashed {
                    assert!(n == 1 || n == 2, "{n} keys");
                    assert_eq!(n == 2, kms.describe_key("alias/new").is_ok());
                } else {
                    assert_eq!(n, 2);
                }
            },
        );
        // Two copies, each: write temp, rename, sync dir.
        assert_eq!(cuts, 6);
    }
}

#[test]
fn crash_during_a_sequence_of_changes() {
    let cuts = at_every_cut_point(
        true,
        |kms| {
            kms.rotate_key("alias/base")?;
            kms.disable_key("alias/base")?;
            kms.enable_key("alias/base")?;
            kms.create_key(&CreateKeyOptions::default())?;
            Ok(())
        },
        |kms, crashed| {
            let meta = kms.describe_key("alias/base").unwrap();
            assert!(matches!(meta.state, KeyState::Enabled | KeyState::Disabled));
            if !crashed {
                assert_eq!(meta.primary_version, 2);
                assert_eq!(meta.state, KeyState::Enabled);
                assert_eq!(kms.list_keys().unwrap().len(), 2);
            }
            // Whatever survived, it can still be changed.
            kms.create_key(&CreateKeyOptions::default()).unwrap();
        },
    );
    assert_eq!(cuts, 24);
}

#[test]
fn crash_while_creating_the_kms() {
    for cut in 0..8 {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("kms");
        std::fs::create_dir_all(&dir).unwrap();
        let storage = CrashStorage::new(&dir, cut, true);
        let result = LocalKms::builder(&dir).storage(storage.clone()).create();
        if result.is_ok() {
            assert!(!storage.crashed());
            LocalKms::open(&dir).unwrap();
            return;
        }
        // Either no KMS yet (init can simply be run again) or a readable one.
        match LocalKms::open(&dir) {
            Ok(kms) => {
                kms.list_keys().unwrap();
            }
            Err(_) => {
                LocalKms::create(&dir).unwrap_or_else(|e| panic!("cut {cut}: init cannot be retried: {e}"));
            }
        }
    }
    panic!("create never completed");
}
