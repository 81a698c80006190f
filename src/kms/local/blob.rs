//! Ciphertext blobs of the local KMS (wrapped data keys and directly encrypted data).
//!
//! ```text
//! offset  size  field
//! 0       4     magic "TDEK"
//! 4       1     blob version (1)
//! 5       1     key id length L
//! 6       L     key id (ASCII)
//! 6 + L   ...   sealed value (cipher::Sealed: format version, suite, key version,
//!               nonce, ciphertext, tag)
//! ```
//!
//! The sealed value's associated data is a domain label, bytes 0..6+L, and the canonical
//! encryption context: a blob cannot be re-labelled with another key id or opened with
//! another context.

use zeroize::Zeroizing;

use super::state::KeyRecord;
use crate::cipher::{AeadKey, Sealed};
use crate::kms::{EncryptionContext, KmsError, KmsErrorKind, KmsResult};
use crate::secret::DataKey;

const MAGIC: &[u8; 4] = b"TDEK";
const BLOB_VERSION: u8 = 1;
const ID_LEN_AT: usize = MAGIC.len() + 1;
const ID_AT: usize = ID_LEN_AT + 1;
const DOMAIN: &[u8] = b"tde local kms blob\0";

/// A parsed blob, not yet authenticated.
pub(crate) struct Blob<'a> {
    pub key_id: &'a str,
    head: &'a [u8],
    sealed: &'a [u8],
}

fn invalid(detail: &str) -> KmsError {
    KmsError::new(
        KmsErrorKind::InvalidCiphertext,
        format!("not a ciphertext of this KMS: {detail}"),
    )
}

impl<'a> Blob<'a> {
    pub(crate) fn parse(bytes: &'a [u8]) -> KmsResult<Blob<'a>> {
        if bytes.len() < ID_AT || &bytes[..MAGIC.len()] != MAGIC {
            return Err(invalid("missing header"));
        }
        if bytes[MAGIC.len()] != BLOB_VERSION {
            return Err(invalid(&format!("unknown blob version {}", bytes[MAGIC.len()])));
        }
        let end = ID_AT + usize::from(bytes[ID_LEN_AT]);
        if bytes.len() < end {
            return Err(invalid("truncated"));
        }
        let key_id = std::str::from_utf8(&bytes[ID_AT..end]).map_err(|_| invalid("bad key id"))?;
        Ok(Blob {
            key_id,
            head: &bytes[..end],
            sealed: &bytes[end..],
        })
    }
}

fn aad(head: &[u8], context: &EncryptionContext) -> Vec<u8> {
    let mut aad = DOMAIN.to_vec();
    aad.extend_from_slice(head);
    aad.extend_from_slice(&context.canonical_bytes());
    aad
}

fn cipher(key: &KeyRecord, version: u32) -> KmsResult<AeadKey> {
    let material = key.material(version)?;
    AeadKey::new(key.spec.suite(), version, &DataKey::from_slice(material.bytes()))
        .map_err(|e| KmsError::new(KmsErrorKind::Internal, e.to_string()).with_key(&key.id))
}

/// Encrypts under the key's primary version. The caller has checked the key is usable.
pub(crate) fn seal(key: &KeyRecord, context: &EncryptionContext, plaintext: &[u8]) -> KmsResult<Vec<u8>> {
    let id_len = u8::try_from(key.id.len()).map_err(|_| invalid("key id too long"))?;
    let mut out = Vec::with_capacity(ID_AT + key.id.len() + plaintext.len() + crate::cipher::OVERHEAD);
    out.extend_from_slice(MAGIC);
    out.push(BLOB_VERSION);
    out.push(id_len);
    out.extend_from_slice(key.id.as_bytes());
    let aad = aad(&out, context);
    cipher(key, key.primary)?
        .seal_into(&aad, plaintext, &mut out)
        .map_err(|e| KmsError::new(KmsErrorKind::Internal, e.to_string()).with_key(&key.id))?;
    Ok(out)
}

/// Decrypts a blob of `key`. The caller has checked the key is usable.
pub(crate) fn open(
    key: &KeyRecord,
    blob: &Blob<'_>,
    context: &EncryptionContext,
) -> KmsResult<Zeroizing<Vec<u8>>> {
    let version = Sealed::parse(blob.sealed)
        .map_err(|_| invalid("truncated"))?
        .key_version;
    let plain = cipher(key, version)?
        .open(&aad(blob.head, context), blob.sealed)
        .map_err(|_| {
            KmsError::new(
                KmsErrorKind::InvalidCiphertext,
                "the ciphertext was modified, or the encryption context does not match",
            )
            .with_key(&key.id)
        })?;
    Ok(Zeroizing::new(plain))
}
