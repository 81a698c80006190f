//! Sealed values: every single-byte change, every truncation, extra bytes, other
//! associated data and other keys fail with a typed error and never return data.

use tde::Error;
use tde::cipher::{AeadKey, HEADER_LEN, OVERHEAD, Sealed, Suite};
use tde::secret::DataKey;

fn key(suite: Suite, version: u32) -> AeadKey {
    AeadKey::new(suite, version, &DataKey::generate(suite.key_len()).unwrap()).unwrap()
}

#[test]
fn flipping_any_byte_fails_authentication_or_parsing() {
    for suite in Suite::ALL {
        let k = key(suite, 7);
        let sealed = k.seal(b"table=t1 key=k1", b"the quick brown fox").unwrap();
        assert_eq!(sealed.len(), 19 + suite.overhead());
        assert_eq!(
            k.open(b"table=t1 key=k1", &sealed).unwrap(),
            b"the quick brown fox"
        );
        for i in 0..sealed.len() {
            for bit in [0x01u8, 0x80] {
                let mut bad = sealed.clone();
                bad[i] ^= bit;
                match k.open(b"table=t1 key=k1", &bad) {
                    Err(Error::Authentication { .. }) | Err(Error::Format { .. }) => {}
                    other => panic!("{suite}: flipping byte {i} gave {other:?}"),
                }
            }
        }
    }
}

#[test]
fn other_associated_data_fails() {
    let k = key(Suite::Aes256Gcm, 1);
    let sealed = k.seal(b"table=t1 key=k1", b"v").unwrap();
    for aad in [
        &b"table=t1 key=k2"[..],
        b"table=t2 key=k1",
        b"table=t1 key=k1\0",
        b"x",
    ] {
        assert!(matches!(k.open(aad, &sealed), Err(Error::Authentication { .. })));
    }
}

#[test]
fn empty_associated_data_is_refused() {
    let k = key(Suite::Aes256Gcm, 1);
    assert!(matches!(k.seal(b"", b"v"), Err(Error::InvalidArgument(_))));
    let sealed = k.seal(b"a", b"v").unwrap();
    assert!(matches!(k.open(b"", &sealed), Err(Error::InvalidArgument(_))));
}

#[test]
fn truncated_and_oversized_inputs_are_typed_errors() {
    for suite in Suite::ALL {
        let k = key(suite, 1);
        let sealed = k.seal(b"ad", b"some plaintext").unwrap();
        for len in 0..sealed.len() {
            match k.open(b"ad", &sealed[..len]) {
                Err(Error::Format { .. }) | Err(Error::Authentication { .. }) => {}
                other => panic!("truncated to {len}: {other:?}"),
            }
        }
        for extra in [1usize, 16, 4096] {
            let mut long = sealed.clone();
            long.extend(std::iter::repeat_n(0u8, extra));
            assert!(matches!(k.open(b"ad", &long), Err(Error::Authentication { .. })));
        }
        assert!(matches!(k.open(b"ad", &[]), Err(Error::Format { .. })));
    }
}

#[test]
fn another_key_or_key_version_fails() {
    let k1 = key(Suite::Aes256Gcm, 1);
    let k2 = key(Suite::Aes256Gcm, 1);
    let sealed = k1.seal(b"ad", b"v").unwrap();
    assert!(matches!(
        k2.open(b"ad", &sealed),
        Err(Error::Authentication { .. })
    ));
    let dk = DataKey::generate(32).unwrap();
    let v1 = AeadKey::new(Suite::Aes256Gcm, 1, &dk).unwrap();
    let v2 = AeadKey::new(Suite::Aes256Gcm, 2, &dk).unwrap();
    let sealed = v1.seal(b"ad", b"v").unwrap();
    assert!(matches!(
        v2.open(b"ad", &sealed),
        Err(Error::Authentication { .. })
    ));
    let sm4 = key(Suite::Sm4Gcm, 1);
    assert!(matches!(
        sm4.open(b"ad", &sealed),
        Err(Error::Authentication { .. })
    ));
    // The same 32 bytes as an AEGIS-256 key open nothing AES-256-GCM sealed, and the
    // other way round.
    let aegis = AeadKey::new(Suite::Aegis256, 1, &dk).unwrap();
    assert!(matches!(
        aegis.open(b"ad", &sealed),
        Err(Error::Authentication { .. })
    ));
    let by_aegis = aegis.seal(b"ad", b"v").unwrap();
    assert_eq!(aegis.open(b"ad", &by_aegis).unwrap(), b"v");
    assert!(matches!(
        v1.open(b"ad", &by_aegis),
        Err(Error::Authentication { .. })
    ));
}

#[test]
fn aegis_256_has_no_practical_seal_limit_and_a_256_bit_nonce() {
    let k = key(Suite::Aegis256, 1);
    assert_eq!(k.seal_limit(), u64::MAX);
    assert_eq!(key(Suite::Aes256Gcm, 1).seal_limit(), 1 << 32);
    let sealed = k.seal(b"ad", b"12345").unwrap();
    assert_eq!(sealed.len(), 5 + 6 + 32 + 16);
    assert_eq!(Suite::Aegis256.overhead(), 54);
    assert_eq!(OVERHEAD, Suite::Aes256Gcm.overhead());
    // An explicit limit still applies.
    let limited = key(Suite::Aegis256, 1).with_seal_limit(2);
    limited.seal(b"ad", b"x").unwrap();
    limited.seal(b"ad", b"x").unwrap();
    assert!(matches!(
        limited.seal(b"ad", b"x"),
        Err(Error::KeyExhausted { .. })
    ));
}

#[test]
fn swapping_two_values_fails() {
    let k = key(Suite::Aes256Gcm, 1);
    let a = k.seal(b"key=a", b"value of a").unwrap();
    let b = k.seal(b"key=b", b"value of b").unwrap();
    assert!(k.open(b"key=a", &b).is_err());
    assert!(k.open(b"key=b", &a).is_err());
}

#[test]
fn parse_exposes_versions_without_authenticating() {
    let k = key(Suite::Sm4Gcm, 42);
    let sealed = k.seal(b"ad", b"12345").unwrap();
    let view = Sealed::parse(&sealed).unwrap();
    assert_eq!(
        (view.suite, view.key_version, view.plaintext_len()),
        (Suite::Sm4Gcm, 42, 5)
    );
    let mut unknown = sealed.clone();
    unknown[0] = 9;
    assert!(matches!(Sealed::parse(&unknown), Err(Error::Format { .. })));
    let mut bad_suite = sealed;
    bad_suite[1] = 0xee;
    assert!(matches!(Sealed::parse(&bad_suite), Err(Error::Format { .. })));
    assert_eq!(HEADER_LEN, 18);
}

#[test]
fn nonces_are_fresh_for_every_seal() {
    let k = key(Suite::Aes256Gcm, 1);
    let mut seen = std::collections::HashSet::new();
    for _ in 0..10_000 {
        let sealed = k.seal(b"ad", b"same plaintext").unwrap();
        assert!(seen.insert(sealed[6..18].to_vec()), "nonce repeated");
    }
    assert_eq!(k.seals(), 10_000);
}

#[test]
fn seal_into_and_open_into_append_and_restore_on_error() {
    let k = key(Suite::Aes256Gcm, 1);
    let mut buf = b"prefix".to_vec();
    k.seal_into(b"ad", b"payload", &mut buf).unwrap();
    let sealed = buf[6..].to_vec();
    let mut out = b"head".to_vec();
    k.open_into(b"ad", &sealed, &mut out).unwrap();
    assert_eq!(out, b"headpayload");
    let mut out = b"head".to_vec();
    assert!(k.open_into(b"other", &sealed, &mut out).is_err());
    assert_eq!(out, b"head");
}
