//! The key management service (KMS) interface, and the embedded local KMS.
//!
//! Invariant: master keys never leave a KMS; callers get plaintext data keys only from
//! `generate_data_key` and `decrypt_data_key`, and only into [`DataKey`], which wipes
//! itself. This is the only layer that talks to a KMS.
//! Not here: which tables use which keys (`keyring`), sealing data (`cipher`).
//!
//! The trait is provider-neutral: the local KMS here, and cloud or hardware KMSs behind
//! cargo features, implement the same five operations with the same error kinds.

#[cfg(feature = "aws-kms")]
pub mod aws;
mod error;
#[cfg(feature = "kmip")]
pub mod kmip;
pub mod local;
#[cfg(feature = "pkcs11")]
pub mod pkcs11;
#[cfg(any(feature = "aws-kms", feature = "vault", feature = "pkcs11", feature = "kmip"))]
mod provider;
mod types;
mod uri;
#[cfg(feature = "vault")]
pub mod vault;

pub use error::{KmsError, KmsErrorKind};
pub use types::{
    DataKeySpec, EncryptionContext, GeneratedDataKey, KeyMetadata, KeySpec, KeyState, KeyVersionInfo,
    MAX_DIRECT_PLAINTEXT, Origin, RotationInfo, Timestamp,
};
pub use uri::{KmsUri, Pin, default_local_dir, open as open_uri};

pub use crate::clock::{Clock, SystemClock};

use crate::secret::{DataKey, SecretBytes, WrappedKey};

/// Result of a KMS call.
pub type KmsResult<T> = std::result::Result<T, KmsError>;

/// A key management service. `key` arguments accept a key id or an alias
/// (`alias/...`); asking for `alias/acs/<service>` creates that service key on first use
/// where the KMS supports service keys.
///
/// Implementations must be safe to call from many threads at once.
pub trait Kms: Send + Sync {
    /// A short description of the KMS for messages and audit records, e.g.
    /// `local:/var/lib/tde/kms`. Contains no secret.
    fn describe(&self) -> String;

    /// Creates a data key of `spec` under master key `key`, bound to `context`.
    ///
    /// # Errors
    /// [`KmsErrorKind::NotFound`], the state kinds (`Disabled`, `PendingDeletion`,
    /// `PendingImport`, `KeyMaterialExpired`), `AccessDenied`, `Throttled`,
    /// `Unavailable`.
    fn generate_data_key(
        &self,
        key: &str,
        spec: DataKeySpec,
        context: &EncryptionContext,
    ) -> KmsResult<GeneratedDataKey>;

    /// Encrypts at most [`MAX_DIRECT_PLAINTEXT`] bytes under master key `key`. The
    /// returned blob names its key and key version.
    ///
    /// # Errors
    /// As [`Kms::generate_data_key`], and `InvalidRequest` for too much plaintext.
    fn encrypt(&self, key: &str, plaintext: &[u8], context: &EncryptionContext) -> KmsResult<Vec<u8>>;

    /// Decrypts a blob from [`Kms::encrypt`] or [`Kms::generate_data_key`]. The context
    /// must match exactly.
    ///
    /// # Errors
    /// `InvalidCiphertext` if the blob is damaged, foreign, or the context differs; the
    /// state kinds if its key is not usable.
    fn decrypt(&self, ciphertext: &[u8], context: &EncryptionContext) -> KmsResult<SecretBytes>;

    /// Decrypts a blob and encrypts its plaintext under `destination_key` (its current
    /// version; the same key to move to its newest version) with `destination_context`,
    /// without returning the plaintext.
    ///
    /// # Errors
    /// As [`Kms::decrypt`] for the source and [`Kms::encrypt`] for the destination.
    fn re_encrypt(
        &self,
        ciphertext: &[u8],
        source_context: &EncryptionContext,
        destination_key: &str,
        destination_context: &EncryptionContext,
    ) -> KmsResult<Vec<u8>>;

    /// State, versions and rotation settings of a master key. No key material.
    ///
    /// # Errors
    /// `NotFound`, `AccessDenied`, `Throttled`, `Unavailable`.
    fn describe_key(&self, key: &str) -> KmsResult<KeyMetadata>;

    /// Whether this KMS can tell, without unwrapping, if the caller may still unwrap a
    /// given wrapped key ([`Kms::check_unwrap`]). KMSs whose permissions change only with
    /// key states (the local KMS, PKCS#11) say no: `describe_key` answers for them.
    fn can_check_unwrap(&self) -> bool {
        false
    }

    /// Asks whether the caller may still unwrap `wrapped` under `context`, without
    /// unwrapping it (AWS KMS: `Decrypt` with `DryRun`). Permissions that grants and
    /// policies give or take away change no key state, so a key watch asks this too.
    ///
    /// # Errors
    /// `AccessDenied` and the key-state kinds if it may not; `Unavailable`, `Throttled`.
    fn check_unwrap(&self, wrapped: &[u8], context: &EncryptionContext) -> KmsResult<()> {
        let _ = (wrapped, context);
        Ok(())
    }

    /// Unwraps a data key (EDK) into a [`DataKey`].
    ///
    /// # Errors
    /// As [`Kms::decrypt`], and `InvalidCiphertext` if the plaintext has the wrong length.
    fn decrypt_data_key(
        &self,
        wrapped: &WrappedKey,
        spec: DataKeySpec,
        context: &EncryptionContext,
    ) -> KmsResult<DataKey> {
        let plain = self.decrypt(wrapped.as_bytes(), context)?;
        if plain.len() != spec.key_len() {
            return Err(KmsError::new(
                KmsErrorKind::InvalidCiphertext,
                format!(
                    "wrapped key holds {} bytes, expected a {}-byte data key",
                    plain.len(),
                    spec.key_len()
                ),
            ));
        }
        Ok(DataKey::from_slice(plain.expose()))
    }
}

impl<K: Kms + ?Sized> Kms for std::sync::Arc<K> {
    fn describe(&self) -> String {
        (**self).describe()
    }
    fn generate_data_key(
        &self,
        key: &str,
        spec: DataKeySpec,
        context: &EncryptionContext,
    ) -> KmsResult<GeneratedDataKey> {
        (**self).generate_data_key(key, spec, context)
    }
    fn encrypt(&self, key: &str, plaintext: &[u8], context: &EncryptionContext) -> KmsResult<Vec<u8>> {
        (**self).encrypt(key, plaintext, context)
    }
    fn decrypt(&self, ciphertext: &[u8], context: &EncryptionContext) -> KmsResult<SecretBytes> {
        (**self).decrypt(ciphertext, context)
    }
    fn re_encrypt(
        &self,
        ciphertext: &[u8],
        source_context: &EncryptionContext,
        destination_key: &str,
        destination_context: &EncryptionContext,
    ) -> KmsResult<Vec<u8>> {
        (**self).re_encrypt(ciphertext, source_context, destination_key, destination_context)
    }
    fn describe_key(&self, key: &str) -> KmsResult<KeyMetadata> {
        (**self).describe_key(key)
    }
    fn can_check_unwrap(&self) -> bool {
        (**self).can_check_unwrap()
    }
    fn check_unwrap(&self, wrapped: &[u8], context: &EncryptionContext) -> KmsResult<()> {
        (**self).check_unwrap(wrapped, context)
    }
}
