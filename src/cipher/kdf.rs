//! HKDF-SHA256 (RFC 5869), to derive independent subkeys from one data key: one for file
//! streams (CTR) and one for sealing values (GCM), so no key is ever used in two modes.

use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::secret::DataKey;

const BLOCK: usize = 64;

fn hmac(key: &[u8], parts: &[&[u8]]) -> Zeroizing<[u8; 32]> {
    let mut k = Zeroizing::new([0u8; BLOCK]);
    if key.len() > BLOCK {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| {
        let mut p = Zeroizing::new([0u8; BLOCK]);
        for (out, b) in p.iter_mut().zip(k.iter()) {
            *out = b ^ byte;
        }
        p
    };
    let mut inner = Sha256::new();
    inner.update(&pad(0x36)[..]);
    for p in parts {
        inner.update(p);
    }
    let mut outer = Sha256::new();
    outer.update(&pad(0x5c)[..]);
    outer.update(inner.finalize());
    Zeroizing::new(outer.finalize().into())
}

/// HKDF-SHA256 with output length `len` (at most 255 * 32 bytes).
pub(crate) fn hkdf(ikm: &[u8], salt: &[u8], info: &[u8], len: usize) -> Zeroizing<Vec<u8>> {
    let prk = hmac(salt, &[ikm]);
    let mut out = Zeroizing::new(Vec::with_capacity(len));
    let mut previous: Zeroizing<[u8; 32]> = Zeroizing::new([0u8; 32]);
    let mut counter = 1u8;
    while out.len() < len {
        let t = if counter == 1 {
            hmac(&prk[..], &[info, &[counter]])
        } else {
            hmac(&prk[..], &[&previous[..], info, &[counter]])
        };
        let take = (len - out.len()).min(32);
        out.extend_from_slice(&t[..take]);
        previous = t;
        counter = counter.wrapping_add(1);
    }
    out
}

/// Derives a subkey of `len` bytes from `key` for `purpose`.
pub(crate) fn derive_key(key: &DataKey, salt: &[u8], purpose: &[u8], len: usize) -> DataKey {
    DataKey::from_slice(&hkdf(key.expose(), salt, purpose, len))
}

#[cfg(test)]
mod tests {
    use crate::hex::{decode, encode};

    #[test]
    fn rfc5869_test_cases_1_and_3() {
        let okm = super::hkdf(
            &decode("0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b").unwrap(),
            &decode("000102030405060708090a0b0c").unwrap(),
            &decode("f0f1f2f3f4f5f6f7f8f9").unwrap(),
            42,
        );
        assert_eq!(
            encode(&okm),
            "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
        );
        let okm = super::hkdf(
            &decode("0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b").unwrap(),
            b"",
            b"",
            42,
        );
        assert_eq!(
            encode(&okm),
            "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8"
        );
    }
}
