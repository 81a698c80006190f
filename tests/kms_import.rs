//! Bring your own key: import parameters, import, expiry, re-import.

mod common;

use std::time::Duration;

use common::{TestKms, contains, ctx, files_below};
use tde::kms::Clock;
use tde::kms::local::{CreateKeyOptions, wrap_key_material};
use tde::kms::{KeySpec, KeyState, Kms, KmsErrorKind, Origin, Timestamp};

fn external(t: &TestKms, spec: KeySpec) -> String {
    t.kms
        .create_key(&CreateKeyOptions {
            origin: Origin::External,
            spec,
            ..CreateKeyOptions::default()
        })
        .unwrap()
        .key_id
}

#[test]
fn imported_key_works_and_stops_after_expiry_until_reimported() {
    let t = TestKms::new();
    let key = external(&t, KeySpec::Aes256);
    assert_eq!(t.kms.describe_key(&key).unwrap().state, KeyState::PendingImport);
    assert_eq!(
        t.kms.encrypt(&key, b"x", &ctx("t")).unwrap_err().kind(),
        KmsErrorKind::PendingImport
    );

    let material = [0x42u8; 32];
    let params = t.kms.import_parameters(&key).unwrap();
    assert_eq!(params.expires_at.0, t.clock.now().0 + 24 * 3600);
    let wrapped = wrap_key_material(&params.public_key_der, &material).unwrap();
    let expires = Timestamp(t.clock.now().0 + 3600);
    let meta = t
        .kms
        .import_key_material(&key, &wrapped, &params.import_token, Some(expires))
        .unwrap();
    assert_eq!(meta.state, KeyState::Enabled);
    assert_eq!(meta.material_expires_at, Some(expires));

    let blob = t.kms.encrypt(&key, b"byok", &ctx("t")).unwrap();
    assert_eq!(t.kms.decrypt(&blob, &ctx("t")).unwrap().expose(), b"byok");
    // The token is single-use.
    assert_eq!(
        t.kms
            .import_key_material(&key, &wrapped, &params.import_token, None)
            .unwrap_err()
            .kind(),
        KmsErrorKind::InvalidRequest
    );
    // Imported keys do not rotate inside the KMS.
    assert_eq!(
        t.kms.rotate_key(&key).unwrap_err().kind(),
        KmsErrorKind::InvalidRequest
    );

    t.clock.advance(Duration::from_secs(3600));
    let err = t.kms.decrypt(&blob, &ctx("t")).unwrap_err();
    assert_eq!(err.kind(), KmsErrorKind::KeyMaterialExpired);
    assert!(err.to_string().contains("import it again"), "{err}");
    let meta = t.reopen().describe_key(&key).unwrap();
    assert!(meta.material_expired);
    assert_eq!(meta.state, KeyState::PendingImport);
    assert!(meta.versions.is_empty());

    // Other material is refused; the same material brings the key back.
    let params = t.kms.import_parameters(&key).unwrap();
    let other = wrap_key_material(&params.public_key_der, &[0x43u8; 32]).unwrap();
    assert_eq!(
        t.kms
            .import_key_material(&key, &other, &params.import_token, None)
            .unwrap_err()
            .kind(),
        KmsErrorKind::InvalidRequest
    );
    let params = t.kms.import_parameters(&key).unwrap();
    let same = wrap_key_material(&params.public_key_der, &material).unwrap();
    t.kms
        .import_key_material(&key, &same, &params.import_token, None)
        .unwrap();
    assert_eq!(t.kms.decrypt(&blob, &ctx("t")).unwrap().expose(), b"byok");
}

#[test]
fn tokens_expire_after_24_hours_and_bind_their_key() {
    let t = TestKms::new();
    let (a, b) = (external(&t, KeySpec::Sm4), external(&t, KeySpec::Sm4));
    let pa = t.kms.import_parameters(&a).unwrap();
    let pb = t.kms.import_parameters(&b).unwrap();
    let for_a = wrap_key_material(&pa.public_key_der, &[1u8; 16]).unwrap();
    // A token of key b does not import into key a.
    assert_eq!(
        t.kms
            .import_key_material(&a, &for_a, &pb.import_token, None)
            .unwrap_err()
            .kind(),
        KmsErrorKind::InvalidRequest
    );
    // Material wrapped for b's parameters does not unwrap under a's.
    let for_b = wrap_key_material(&pb.public_key_der, &[1u8; 16]).unwrap();
    assert_eq!(
        t.kms
            .import_key_material(&a, &for_b, &pa.import_token, None)
            .unwrap_err()
            .kind(),
        KmsErrorKind::InvalidCiphertext
    );
    // Wrong length for the spec.
    let long = wrap_key_material(&pa.public_key_der, &[1u8; 32]).unwrap();
    assert_eq!(
        t.kms
            .import_key_material(&a, &long, &pa.import_token, None)
            .unwrap_err()
            .kind(),
        KmsErrorKind::InvalidRequest
    );
    // An expiry in the past.
    assert_eq!(
        t.kms
            .import_key_material(&a, &for_a, &pa.import_token, Some(Timestamp(t.clock.now().0 - 1)))
            .unwrap_err()
            .kind(),
        KmsErrorKind::InvalidRequest
    );
    t.clock.advance(Duration::from_secs(24 * 3600));
    let err = t
        .kms
        .import_key_material(&a, &for_a, &pa.import_token, None)
        .unwrap_err();
    assert_eq!(err.kind(), KmsErrorKind::InvalidRequest);
    assert!(err.to_string().contains("expired"), "{err}");
    // Superseded parameters stop working when new ones are issued.
    let p1 = t.kms.import_parameters(&a).unwrap();
    let p2 = t.kms.import_parameters(&a).unwrap();
    let w1 = wrap_key_material(&p1.public_key_der, &[1u8; 16]).unwrap();
    assert!(
        t.kms
            .import_key_material(&a, &w1, &p1.import_token, None)
            .is_err()
    );
    let w2 = wrap_key_material(&p2.public_key_der, &[1u8; 16]).unwrap();
    assert_eq!(
        t.kms
            .import_key_material(&a, &w2, &p2.import_token, None)
            .unwrap()
            .state,
        KeyState::Enabled
    );
}

#[test]
fn generated_keys_refuse_import_and_material_never_reaches_disk_in_clear() {
    let t = TestKms::new();
    let generated = t.kms.create_key(&CreateKeyOptions::default()).unwrap().key_id;
    assert_eq!(
        t.kms.import_parameters(&generated).unwrap_err().kind(),
        KmsErrorKind::InvalidRequest
    );

    let key = external(&t, KeySpec::Aes256);
    let material: Vec<u8> = (0u8..32).map(|i| i.wrapping_mul(37).wrapping_add(11)).collect();
    let params = t.kms.import_parameters(&key).unwrap();
    let wrapped = wrap_key_material(&params.public_key_der, &material).unwrap();
    t.kms
        .import_key_material(&key, &wrapped, &params.import_token, None)
        .unwrap();
    let hex = common::hex(&material);
    for (path, bytes) in files_below(&t.dir()) {
        assert!(
            !contains(&bytes, &material),
            "{} holds the key material",
            path.display()
        );
        assert!(
            !contains(&bytes, hex.as_bytes()),
            "{} holds the key material in hex",
            path.display()
        );
    }
}
