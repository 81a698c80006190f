//! What the providers that wrap with a server-side `encrypt` share: data keys from the OS
//! CSPRNG wrapped there, the direct-encryption limit, and metadata for keys the provider
//! describes only in part.

use super::{
    DataKeySpec, GeneratedDataKey, KeyMetadata, KeySpec, KeyState, KeyVersionInfo, KmsError, KmsErrorKind,
    KmsResult, Origin, RotationInfo, Timestamp,
};
use crate::secret::{DataKey, WrappedKey};

/// A data key of `spec` from the OS CSPRNG, wrapped by `wrap`, reported under `key_id`.
#[cfg_attr(
    not(any(feature = "vault", feature = "pkcs11", feature = "kmip")),
    allow(dead_code)
)]
pub(crate) fn generate_and_wrap(
    key_id: &str,
    spec: DataKeySpec,
    wrap: impl FnOnce(&[u8]) -> KmsResult<Vec<u8>>,
) -> KmsResult<GeneratedDataKey> {
    let plaintext = DataKey::generate(spec.key_len())
        .map_err(|e| KmsError::new(KmsErrorKind::Internal, format!("no randomness: {e}")))?;
    let wrapped = wrap(plaintext.expose())?;
    Ok(GeneratedDataKey {
        key_id: key_id.to_owned(),
        plaintext,
        wrapped: WrappedKey::from_bytes(wrapped),
    })
}

/// [`KmsErrorKind::InvalidRequest`] if `len` bytes exceed `provider`'s direct-encryption
/// limit `max`.
pub(crate) fn check_direct(len: usize, max: usize, provider: &str) -> KmsResult<()> {
    if len > max {
        return Err(KmsError::new(
            KmsErrorKind::InvalidRequest,
            format!("{provider} encrypts at most {max} bytes directly; use a data key"),
        ));
    }
    Ok(())
}

/// Metadata for an AES-256 key of which a provider reports the state, versions and
/// creation time only.
#[cfg_attr(not(any(feature = "pkcs11", feature = "kmip")), allow(dead_code))]
pub(crate) fn metadata(key_id: &str, state: KeyState, versions: Vec<KeyVersionInfo>) -> KeyMetadata {
    let created = versions.first().map_or(Timestamp(0), |v| v.created_at);
    let last = versions.last().map_or(created, |v| v.created_at);
    KeyMetadata {
        key_id: key_id.to_owned(),
        aliases: Vec::new(),
        description: String::new(),
        spec: KeySpec::Aes256,
        origin: Origin::Kms,
        state,
        created_at: created,
        service_key: false,
        primary_version: versions.last().map_or(1, |v| v.version),
        versions,
        rotation: RotationInfo {
            interval_days: None,
            last_rotated_at: last,
            next_rotation_at: None,
        },
        deletion_date: None,
        material_expires_at: None,
        material_expired: false,
    }
}
