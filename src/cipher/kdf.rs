//! Key derivation and message authentication over SHA-256: HKDF (RFC 5869) to derive
//! independent subkeys from one data key (one for file streams, one for sealing values,
//! one for authenticating metadata), so no key is ever used for two purposes; and
//! HMAC-SHA256 tags for metadata files (keyrings, backup manifests, audit chains).
//!
//! Not here: choosing what a key authenticates (its owners decide the label and bytes).
//! Security notes: both come from the RustCrypto `hkdf` and `hmac` crates; tags are
//! compared in constant time.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::secret::DataKey;

/// HKDF-SHA256 with output length `len` (at most 255 * 32 bytes).
pub(crate) fn hkdf(ikm: &[u8], salt: &[u8], info: &[u8], len: usize) -> Zeroizing<Vec<u8>> {
    let mut out = Zeroizing::new(vec![0u8; len]);
    // The only error is a length over 255 * 32, which no caller asks for.
    if hkdf::Hkdf::<Sha256>::new(Some(salt), ikm)
        .expand(info, &mut out)
        .is_err()
    {
        out.clear();
    }
    out
}

/// Derives a subkey of `len` bytes from `key` for `purpose`.
pub(crate) fn derive_key(key: &DataKey, salt: &[u8], purpose: &[u8], len: usize) -> DataKey {
    DataKey::from_slice(&hkdf(key.expose(), salt, purpose, len))
}

/// Length of a [`MacKey`] tag.
pub(crate) const TAG_LEN: usize = 32;

/// A key for HMAC-SHA256 tags over metadata. Wiped on drop; never printed.
pub(crate) struct MacKey(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for MacKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MacKey").finish_non_exhaustive()
    }
}

impl MacKey {
    /// The key for `purpose`, derived from data key `key` with `salt` (e.g. a store id).
    pub(crate) fn derive(key: &DataKey, salt: &[u8], purpose: &[u8]) -> MacKey {
        let okm = hkdf(key.expose(), salt, purpose, 32);
        let mut bytes = Zeroizing::new([0u8; 32]);
        bytes.copy_from_slice(&okm);
        MacKey(bytes)
    }

    fn hmac(&self) -> Hmac<Sha256> {
        // HMAC takes keys of any length.
        <Hmac<Sha256> as KeyInit>::new_from_slice(&self.0[..]).unwrap_or_else(|_| unreachable!())
    }

    /// The tag of the concatenation of `parts`, each prefixed by its length so that no
    /// two different sequences of parts share a tag.
    pub(crate) fn tag(&self, parts: &[&[u8]]) -> [u8; TAG_LEN] {
        let mut mac = self.hmac();
        for part in parts {
            mac.update(&(part.len() as u64).to_le_bytes());
            mac.update(part);
        }
        mac.finalize().into_bytes().into()
    }

    /// Whether `tag` is the tag of `parts`, compared in constant time.
    pub(crate) fn verify(&self, parts: &[&[u8]], tag: &[u8]) -> bool {
        let mut mac = self.hmac();
        for part in parts {
            mac.update(&(part.len() as u64).to_le_bytes());
            mac.update(part);
        }
        mac.verify_slice(tag).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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

    #[test]
    fn tags_depend_on_key_purpose_and_part_boundaries() {
        let dk = DataKey::from_slice(&[7u8; 32]);
        let a = MacKey::derive(&dk, b"store", b"keyring");
        let b = MacKey::derive(&dk, b"store", b"manifest");
        let tag = a.tag(&[b"ab", b"c"]);
        assert!(a.verify(&[b"ab", b"c"], &tag));
        assert!(!a.verify(&[b"a", b"bc"], &tag));
        assert!(!b.verify(&[b"ab", b"c"], &tag));
        assert!(!a.verify(&[b"ab", b"c"], &tag[..31]));
    }
}
