//! Secret and public key types.
//!
//! Invariant: secret bytes live only in types that wipe them on drop, cannot be cloned or
//! serialized, and whose `Debug` prints no byte of them. Wrapped (encrypted) keys are a
//! different, public type.
//! Not here: what the keys are used for (`cipher`), where wrapped keys come from (`kms`).
//!
//! Security notes: the bytes of a [`DataKey`] are reachable only inside this crate. Code
//! outside it can create one (a KMS adapter returns them) but can only hand it to the
//! cipher layer.

use std::fmt;

use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, Zeroizing};

use crate::error::{Result, os_random};

/// A plaintext data key (DK) or other symmetric secret.
///
/// Wiped from memory on drop; no `Clone`, no `Serialize`; `Debug` shows only the length.
pub struct DataKey {
    bytes: Box<[u8]>,
}

impl DataKey {
    /// Takes ownership of key bytes. The caller's buffer is wiped.
    pub fn from_bytes(mut bytes: Vec<u8>) -> Self {
        let key = DataKey {
            bytes: bytes.as_slice().into(),
        };
        bytes.zeroize();
        key
    }

    /// Copies key bytes from a slice. The caller remains responsible for its own copy.
    pub fn from_slice(bytes: &[u8]) -> Self {
        DataKey { bytes: bytes.into() }
    }

    /// A fresh random key of `len` bytes from the operating system's CSPRNG.
    ///
    /// # Errors
    /// [`Error::Random`](crate::Error::Random) if the OS generator fails.
    pub fn generate(len: usize) -> Result<Self> {
        let mut bytes = vec![0u8; len].into_boxed_slice();
        os_random(&mut bytes)?;
        Ok(DataKey { bytes })
    }

    /// Length of the key in bytes.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether the key has no bytes (never true for a usable key).
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The key bytes. Crate-private: only the cipher layer and the embedded KMS read them.
    pub(crate) fn expose(&self) -> &[u8] {
        &self.bytes
    }
}

impl Drop for DataKey {
    fn drop(&mut self) {
        self.bytes.zeroize();
    }
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DataKey")
            .field("len", &self.bytes.len())
            .finish_non_exhaustive()
    }
}

/// Secret bytes that are not a key: the plaintext of a small-data decryption, a passphrase.
///
/// Wiped on drop; no `Clone`, no `Serialize`; `Debug` shows only the length.
pub struct SecretBytes(Zeroizing<Vec<u8>>);

impl SecretBytes {
    /// Takes ownership of the bytes.
    pub fn new(bytes: Vec<u8>) -> Self {
        SecretBytes(Zeroizing::new(bytes))
    }

    /// The secret bytes.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are no bytes.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretBytes")
            .field("len", &self.0.len())
            .finish_non_exhaustive()
    }
}

/// A wrapped (encrypted) data key, "EDK": public data, safe to store beside the data it
/// protects. Only the KMS that wrapped it can unwrap it, and only with the same
/// encryption context.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct WrappedKey(#[serde(with = "crate::hex::serde")] Vec<u8>);

impl WrappedKey {
    /// Wraps the opaque bytes a KMS returned.
    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        WrappedKey(bytes)
    }

    /// The opaque bytes, as the KMS returned them.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Consumes the wrapper.
    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }
}

impl fmt::Debug for WrappedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WrappedKey({} bytes)", self.0.len())
    }
}

/// Constant-time equality of two byte strings (length is not secret).
pub(crate) fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_prints_no_key_bytes() {
        let key = DataKey::from_slice(&[0xAB; 32]);
        let shown = format!("{key:?} {key:#?}");
        assert!(!shown.to_lowercase().contains("ab, "), "{shown}");
        assert!(!shown.contains("171"), "{shown}");
        assert!(!shown.to_lowercase().contains("abab"), "{shown}");
        assert!(shown.contains("DataKey"));
        let secret = SecretBytes::new(b"hunter2".to_vec());
        assert!(!format!("{secret:?}").contains("hunter2"));
    }

    #[test]
    fn from_bytes_wipes_the_source_and_keeps_the_key() {
        let key = DataKey::from_bytes(vec![7u8; 16]);
        assert_eq!(key.expose(), &[7u8; 16]);
        assert_eq!(key.len(), 16);
    }

    #[test]
    fn generated_keys_differ() {
        let a = DataKey::generate(32).unwrap();
        let b = DataKey::generate(32).unwrap();
        assert!(!ct_eq(a.expose(), b.expose()));
        assert!(ct_eq(a.expose(), DataKey::from_slice(a.expose()).expose()));
    }

    #[test]
    fn constant_time_compare() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"ab"));
    }
}
