//! Bring your own key: import parameters (an RSA-3072 wrapping key and a one-time token
//! valid 24 hours) and unwrapping imported material (RSA-OAEP with SHA-256).
//!
//! Invariant: a token opens only for the key and KMS it was issued for, only until it
//! expires, and only while it is the key's latest; the RSA private key lives only in the
//! sealed state and is dropped once the import succeeds or the token expires.

use rsa::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, LineEnding};
use rsa::{PrivateKey as RsaPrivateKey, PublicKey as RsaPublicKey};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use zeroize::Zeroizing;

use super::root::RootKey;
use super::state::Material;
use crate::error::{Error, Result};
use crate::kms::{KmsError, KmsErrorKind, KmsResult, Timestamp};

/// RSA modulus size of the wrapping key.
pub const WRAPPING_KEY_BITS: usize = 3072;
/// How long import parameters stay valid.
pub const IMPORT_TOKEN_LIFETIME_SECS: u64 = 24 * 3600;

/// What a user needs to import key material: wrap the material with
/// [`wrap_key_material`] (or `openssl pkeyutl -encrypt -pkeyopt rsa_padding_mode:oaep
/// -pkeyopt rsa_oaep_md:sha256 -pkeyopt rsa_mgf1_md:sha256`) and pass it back with the
/// token.
#[derive(Clone)]
pub struct ImportParameters {
    /// The key the parameters are for.
    pub key_id: String,
    /// RSA public key, SubjectPublicKeyInfo DER.
    pub public_key_der: Vec<u8>,
    /// The same key, PEM.
    pub public_key_pem: String,
    /// The import token to pass back with the wrapped material.
    pub import_token: Vec<u8>,
    /// When the token and wrapping key expire.
    pub expires_at: Timestamp,
}

impl std::fmt::Debug for ImportParameters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImportParameters")
            .field("key_id", &self.key_id)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// Wraps key material for import with the public key from [`ImportParameters`]
/// (RSA-OAEP, SHA-256 for both the hash and MGF1). Runs on the client side.
///
/// # Errors
/// [`Error::InvalidArgument`] if the public key does not parse or the material is too
/// long for it.
pub fn wrap_key_material(public_key_der: &[u8], material: &[u8]) -> Result<Vec<u8>> {
    let public = RsaPublicKey::from_public_key_der(public_key_der)
        .map_err(|e| Error::InvalidArgument(format!("wrapping public key does not parse: {e}")))?;
    public
        .oaep_encrypt::<Sha256>(material)
        .map_err(|e| Error::InvalidArgument(format!("cannot wrap key material: {e}")))
}

#[derive(Serialize, Deserialize)]
struct TokenClaims {
    key_id: String,
    token_id: String,
    expires_at: u64,
}

fn token_aad(kms_id: &str, key_id: &str) -> Vec<u8> {
    format!("tde local kms import token\0{kms_id}\0{key_id}").into_bytes()
}

pub(crate) struct NewWrappingKey {
    pub private_key: Material,
    pub public_key_der: Vec<u8>,
    pub public_key_pem: String,
}

fn internal(what: &str, e: impl std::fmt::Display) -> KmsError {
    KmsError::new(KmsErrorKind::Internal, format!("{what}: {e}"))
}

pub(crate) fn new_wrapping_key() -> KmsResult<NewWrappingKey> {
    let mut rng = getrandom::SysRng;
    let private = RsaPrivateKey::new(&mut rng, WRAPPING_KEY_BITS)
        .map_err(|e| internal("RSA key generation failed", e))?;
    let der = private
        .to_pkcs8_der()
        .map_err(|e| internal("encoding the wrapping key", e))?;
    let public = private.to_public_key();
    Ok(NewWrappingKey {
        private_key: Material::new(der.as_bytes().to_vec()),
        public_key_der: public
            .to_public_key_der()
            .map_err(|e| internal("encoding the wrapping key", e))?
            .as_bytes()
            .to_vec(),
        public_key_pem: public
            .to_public_key_pem(LineEnding::LF)
            .map_err(|e| internal("encoding the wrapping key", e))?,
    })
}

pub(crate) fn issue_token(
    root: &RootKey,
    kms_id: &str,
    key_id: &str,
    token_id: &str,
    expires_at: Timestamp,
) -> KmsResult<Vec<u8>> {
    let claims = TokenClaims {
        key_id: key_id.to_owned(),
        token_id: token_id.to_owned(),
        expires_at: expires_at.0,
    };
    let json = serde_json::to_vec(&claims).map_err(|e| internal("encoding the import token", e))?;
    root.seal(&token_aad(kms_id, key_id), &json)
}

/// Checks a token for `key_id`; returns its token id.
pub(crate) fn check_token(
    root: &RootKey,
    kms_id: &str,
    key_id: &str,
    token: &[u8],
    now: Timestamp,
) -> KmsResult<String> {
    let bad = |msg: &str| KmsError::new(KmsErrorKind::InvalidRequest, msg.to_owned()).with_key(key_id);
    let json = root
        .open(&token_aad(kms_id, key_id), token, "import token")
        .map_err(|_| bad("the import token is not valid for this key"))?;
    let claims: TokenClaims =
        serde_json::from_slice(&json).map_err(|_| bad("the import token does not parse"))?;
    if claims.key_id != key_id {
        return Err(bad("the import token is for another key"));
    }
    if now.0 >= claims.expires_at {
        return Err(bad(
            "the import token has expired; get new import parameters and wrap the material again",
        ));
    }
    Ok(claims.token_id)
}

pub(crate) fn unwrap_material(private_key: &Material, wrapped: &[u8]) -> KmsResult<Zeroizing<Vec<u8>>> {
    let private =
        RsaPrivateKey::from_pkcs8_der(private_key.bytes()).map_err(|e| internal("stored wrapping key", e))?;
    private.oaep_decrypt::<Sha256>(wrapped).map(Zeroizing::new).map_err(|_| {
        KmsError::new(
            KmsErrorKind::InvalidCiphertext,
            "the wrapped key material does not decrypt with these import parameters (RSA-OAEP with SHA-256 expected)",
        )
    })
}
