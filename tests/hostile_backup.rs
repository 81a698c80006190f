//! A backup destination is hostile input: whoever can write it must not make tde read,
//! change or delete anything outside it, nor restore data that was not backed up.

mod common;

use std::path::{Path, PathBuf};

use common::{TestPages, TestStore, files_below};
use sha2::{Digest, Sha256};
use tde::Error;
use tde::backup::Manifest;
use tde::kv::TableOptions;

/// A store with one backup, and a directory beside the destination holding a secret that
/// an attacker would like tde to copy, change or delete.
struct Setup {
    t: TestStore,
    dest: PathBuf,
    outside: PathBuf,
}

impl Setup {
    fn new() -> Setup {
        let t = TestStore::new();
        let store = t.create();
        store.create_table("users", &TableOptions::default()).unwrap();
        store.table("users").unwrap().put(b"alice", b"v1").unwrap();
        let dest = t.tmp.path().join("dest");
        tde::backup::create(&store, &dest).unwrap();
        drop(store);
        let outside = t.tmp.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("root.key"), [7u8; 32]).unwrap();
        Setup { t, dest, outside }
    }

    fn manifest_path(&self) -> PathBuf {
        let id = tde::backup::find(&self.dest, None).unwrap().id;
        self.dest.join("backups").join(format!("{id}.json"))
    }

    fn manifest(&self) -> Manifest {
        serde_json::from_slice(&std::fs::read(self.manifest_path()).unwrap()).unwrap()
    }

    /// Rewrites the manifest as an attacker can: any field, with the checksum fixed up.
    fn forge(&self, change: impl FnOnce(&mut Manifest)) {
        let path = self.manifest_path();
        let mut m = self.manifest();
        change(&mut m);
        write_with_checksum(&path, m);
    }

    fn outside_untouched(&self) {
        let files = files_below(&self.outside);
        assert_eq!(
            files.len(),
            1,
            "a file appeared outside the destination: {files:?}"
        );
        assert_eq!(files[0].1, vec![7u8; 32], "the outside file changed");
    }
}

fn write_with_checksum(path: &Path, mut m: Manifest) {
    m.checksum = String::new();
    m.checksum = common::hex(&Sha256::digest(serde_json::to_vec(&m).unwrap()));
    std::fs::write(path, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
}

/// Every operation on a destination, each expected to fail.
fn every_operation_fails(s: &Setup) -> Vec<Error> {
    let kms = s.t.kms.clone();
    let errors = vec![
        tde::backup::verify(&s.dest, None).unwrap_err(),
        tde::backup::verify_deep(&s.dest, None, s.t.options()).unwrap_err(),
        tde::backup::restore(&s.dest, None, &s.t.tmp.path().join("restored"), s.t.options()).unwrap_err(),
        tde::backup::rewrap(&s.dest, None, kms, None, "alias/acs/tde", None).unwrap_err(),
    ];
    assert!(
        !s.t.tmp.path().join("restored").exists(),
        "a failed restore left files"
    );
    errors
}

#[test]
fn object_names_and_file_names_that_are_paths_are_refused_and_nothing_outside_is_touched() {
    for forged in ["../../outside/root.key", "/etc/passwd", "..", ""] {
        let s = Setup::new();
        // The attacker points the keyring's object at the secret (rewrap would copy it and
        // then delete "the old keyring object").
        s.forge(|m| {
            for f in m.files.iter_mut().filter(|f| f.name.starts_with("TDE-KEYRING")) {
                f.sha256 = forged.to_owned();
            }
        });
        for e in every_operation_fails(&s) {
            assert!(matches!(e, Error::Corrupt { .. }), "{forged}: {e:?}");
        }
        s.outside_untouched();

        let s = Setup::new();
        s.forge(|m| m.files[0].name = format!("../../outside/{forged}"));
        for e in every_operation_fails(&s) {
            assert!(matches!(e, Error::Corrupt { .. }), "{forged}: {e:?}");
        }
        s.outside_untouched();
    }
}

#[test]
fn a_manifest_whose_id_is_not_its_name_or_whose_fields_are_out_of_range_is_refused() {
    let s = Setup::new();
    s.forge(|m| m.id = "../../outside/x".into());
    for e in every_operation_fails(&s) {
        assert!(matches!(e, Error::Corrupt { .. }), "{e:?}");
    }
    let s = Setup::new();
    s.forge(|m| m.files[0].size = u64::MAX);
    for e in every_operation_fails(&s) {
        assert!(matches!(e, Error::Corrupt { .. }), "{e:?}");
    }
    let s = Setup::new();
    s.forge(|m| m.store_id = "../x".into());
    for e in every_operation_fails(&s) {
        assert!(matches!(e, Error::Corrupt { .. }), "{e:?}");
    }
    s.outside_untouched();
}

#[cfg(unix)]
#[test]
fn symbolic_links_in_a_destination_are_not_followed() {
    // An object replaced by a link to the secret.
    let s = Setup::new();
    let m = s.manifest();
    let keyring = m.files.iter().find(|f| f.name == "TDE-KEYRING.a").unwrap();
    let object = s.dest.join("objects").join(&keyring.sha256);
    std::fs::remove_file(&object).unwrap();
    std::os::unix::fs::symlink(s.outside.join("root.key"), &object).unwrap();
    for e in every_operation_fails(&s) {
        assert!(matches!(e, Error::Corrupt { .. }), "{e:?}");
    }
    s.outside_untouched();

    // The objects directory replaced by a link to the outside directory.
    let s = Setup::new();
    let objects = s.dest.join("objects");
    std::fs::rename(&objects, s.t.tmp.path().join("moved")).unwrap();
    std::os::unix::fs::symlink(&s.outside, &objects).unwrap();
    for e in every_operation_fails(&s) {
        assert!(matches!(e, Error::Corrupt { .. }), "{e:?}");
    }
    s.outside_untouched();

    // A manifest that is a link.
    let s = Setup::new();
    let path = s.manifest_path();
    let real = s.outside.join("m.json");
    std::fs::rename(&path, &real).unwrap();
    std::os::unix::fs::symlink(&real, &path).unwrap();
    assert!(matches!(
        tde::backup::verify(&s.dest, None),
        Err(Error::Corrupt { .. })
    ));
}

#[test]
fn a_manifest_made_to_name_another_backups_keyring_fails_authentication() {
    let s = Setup::new();
    // A second backup after a master-key rewrap of the store: its keyring differs.
    let store = s.t.open().unwrap();
    store.create_table("second", &TableOptions::default()).unwrap();
    let second = tde::backup::create(&store, &s.dest).unwrap();
    drop(store);
    let all = tde::backup::list(&s.dest).unwrap();
    let (old, new) = (&all[0], &all[1]);
    // The attacker makes the newest backup restore the older keyring (without "second").
    let mut forged = new.clone();
    for f in forged
        .files
        .iter_mut()
        .filter(|f| f.name.starts_with("TDE-KEYRING"))
    {
        let older = old.files.iter().find(|o| o.name == f.name).unwrap();
        f.sha256 = older.sha256.clone();
        f.size = older.size;
    }
    write_with_checksum(
        &s.dest.join("backups").join(format!("{}.json", second.id)),
        forged,
    );
    // Keyless verification cannot know: every object exists and matches its hash.
    tde::backup::verify(&s.dest, Some(&second.id)).unwrap();
    // With the keys it is refused, and nothing is left behind.
    let target = s.t.tmp.path().join("restored");
    let err = tde::backup::restore(&s.dest, Some(&second.id), &target, s.t.options()).unwrap_err();
    assert!(matches!(err, Error::Authentication { .. }), "{err:?}");
    assert!(!target.exists());
    let err = tde::backup::verify_deep(&s.dest, Some(&second.id), s.t.options()).unwrap_err();
    assert!(matches!(err, Error::Authentication { .. }), "{err:?}");
    let kms = s.t.kms.clone();
    let err = tde::backup::rewrap(&s.dest, Some(&second.id), kms, None, "alias/acs/tde", None).unwrap_err();
    assert!(matches!(err, Error::Authentication { .. }), "{err:?}");
}

#[test]
fn an_edited_keyring_inside_a_backup_fails_authentication_at_restore() {
    let s = Setup::new();
    let m = s.manifest();
    let keyring = m
        .files
        .iter()
        .find(|f| f.name == "TDE-KEYRING.a")
        .unwrap()
        .clone();
    // The attacker turns value sealing off in both keyring copies and stores them as new
    // objects with fixed-up checksums (copy header checksum and manifest checksum).
    let bytes = std::fs::read(s.dest.join("objects").join(&keyring.sha256)).unwrap();
    let forged = common::rewrite_replicated(&bytes, |k| {
        k["tables"][0]["value_seal"] = serde_json::Value::Bool(false);
    });
    let sha = common::hex(&Sha256::digest(&forged));
    std::fs::write(s.dest.join("objects").join(&sha), &forged).unwrap();
    s.forge(|m| {
        for f in m.files.iter_mut().filter(|f| f.name.starts_with("TDE-KEYRING")) {
            f.sha256 = sha.clone();
            f.size = forged.len() as u64;
        }
    });
    let err = tde::backup::restore(&s.dest, None, &s.t.tmp.path().join("r"), s.t.options()).unwrap_err();
    assert!(matches!(err, Error::Authentication { .. }), "{err:?}");
}

#[test]
fn deep_verify_and_rewrap_do_their_scratch_work_outside_the_destination() {
    let s = Setup::new();
    let before = files_below(&s.dest).len();
    tde::backup::verify_deep(&s.dest, None, s.t.options()).unwrap();
    // What it leaves: the destination's audit trail, which records its KMS calls.
    let entries: Vec<_> = std::fs::read_dir(&s.dest)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(entries.len(), 3, "{entries:?}");
    assert!(entries.iter().any(|e| e == tde::audit::AUDIT_FILE));
    assert_eq!(files_below(&s.dest).len(), before + 1);
    let kms = s.t.kms.clone();
    tde::backup::rewrap(&s.dest, None, kms, None, "alias/acs/tde", None).unwrap();
    let entries: Vec<_> = std::fs::read_dir(&s.dest)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(entries.len(), 3, "{entries:?}");
    // The rewrapped backup still restores and authenticates.
    let store = tde::backup::restore(&s.dest, None, &s.t.tmp.path().join("r"), s.t.options()).unwrap();
    assert_eq!(
        store.table("users").unwrap().get(b"alice").unwrap().unwrap(),
        b"v1"
    );
}

#[test]
fn a_tablespace_backup_with_a_forged_manifest_is_refused() {
    let p = TestPages::new();
    let pool = tde::page::BufferPool::new(1 << 20);
    let ts = tde::page::Tablespace::create(p.path("t.tbs"), &p.options(), &pool).unwrap();
    ts.write(1).unwrap().copy_from_slice(&vec![5u8; ts.page_size()]);
    ts.sync().unwrap();
    let dest = p.path("dest");
    let first = tde::backup::create_tablespace(&ts, &dest).unwrap();
    ts.write(2).unwrap().copy_from_slice(&vec![6u8; ts.page_size()]);
    ts.sync().unwrap();
    let second = tde::backup::create_tablespace(&ts, &dest).unwrap();
    drop(ts);
    // The newer manifest made to name the older file (a rollback of the tablespace).
    let all = tde::backup::list(&dest).unwrap();
    let mut forged = all[1].clone();
    forged.files[0] = all[0].files[0].clone();
    write_with_checksum(&dest.join("backups").join(format!("{}.json", second.id)), forged);
    let err = tde::backup::restore_tablespace(&dest, Some(&second.id), &p.path("r.tbs"), &p.options(), &pool)
        .unwrap_err();
    assert!(matches!(err, Error::Authentication { .. }), "{err:?}");
    assert!(!p.path("r.tbs").exists());
    // The genuine older one restores.
    tde::backup::restore_tablespace(&dest, Some(&first.id), &p.path("r.tbs"), &p.options(), &pool).unwrap();
}

#[test]
fn rewrap_removes_no_object_while_any_manifest_is_unreadable() {
    let s = Setup::new();
    let store = s.t.open().unwrap();
    let second = tde::backup::create(&store, &s.dest).unwrap();
    drop(store);
    let first = tde::backup::list(&s.dest).unwrap()[0].clone();
    // Damage the other backup's manifest: whether it still needs an object is unknown.
    let other = s.dest.join("backups").join(format!("{}.json", first.id));
    std::fs::write(&other, b"{ damaged").unwrap();
    let objects_before = files_below(&s.dest.join("objects")).len();
    let kms = s.t.kms.clone();
    let key = s.t.local().create_key(&Default::default()).unwrap().key_id;
    tde::backup::rewrap(&s.dest, Some(&second.id), kms, None, &key, None).unwrap();
    // New keyring objects were added; none was removed.
    assert!(files_below(&s.dest.join("objects")).len() > objects_before);
    let restored = tde::backup::restore(
        &s.dest,
        Some(&second.id),
        &s.t.tmp.path().join("r"),
        s.t.options(),
    )
    .unwrap();
    assert_eq!(
        restored.table("users").unwrap().get(b"alice").unwrap().unwrap(),
        b"v1"
    );
}
