//! PKCS#11 tokens and HSMs: an RFC 7512 URI such as
//! `pkcs11:token=LABEL?module-path=/usr/lib/softhsm/libsofthsm2.so`. The PIN comes from
//! `pin-value` in the URI (never recorded), else `pin-source` (a file), else
//! `TDE_PKCS11_PIN`.
//!
//! Master keys are AES-256 secret keys on the token, found by label (`alias/NAME` means
//! `NAME`), created sensitive and not extractable: their material never leaves the token.
//! Wrapping is `C_Encrypt` with `CKM_AES_GCM`, a 96-bit IV from the OS CSPRNG and the
//! encryption context as additional authenticated data; data keys come from the OS
//! CSPRNG. A wrapped key is `tdep11\x01`, the key's label (length-prefixed), the IV and
//! the ciphertext with its tag, so it names its key. A key with `CKA_ENCRYPT` /
//! `CKA_DECRYPT` false is disabled; a destroyed key is not found.
//!
//! One session, behind a lock, serves every call (tokens serialise operations anyway); a
//! module is initialised once per process and shared.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::RvError;
use cryptoki::mechanism::Mechanism;
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;
use parking_lot::Mutex;

use super::{
    DataKeySpec, EncryptionContext, GeneratedDataKey, KeyMetadata, KeyState, KeyVersionInfo, Kms, KmsError,
    KmsErrorKind, KmsResult, Timestamp,
};
use crate::error::{Error, Result};
use crate::secret::SecretBytes;

const BLOB_MAGIC: &[u8] = b"tdep11\x01";
const IV_LEN: usize = 12;
const TAG_BITS: u64 = 128;
/// Most plaintext `encrypt` takes (tde wraps data keys and small secrets only).
pub const MAX_ENCRYPT_PLAINTEXT: usize = 6 * 1024;

/// A token reached through a PKCS#11 module.
pub struct Pkcs11Kms {
    session: Mutex<Session>,
    uri: String,
}

impl std::fmt::Debug for Pkcs11Kms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pkcs11Kms")
            .field("uri", &self.uri)
            .finish_non_exhaustive()
    }
}

/// Each module is initialised once per process (a second `C_Initialize` is an error).
fn module(path: &Path) -> Result<Pkcs11> {
    static MODULES: OnceLock<Mutex<HashMap<PathBuf, Pkcs11>>> = OnceLock::new();
    let mut modules = MODULES.get_or_init(Default::default).lock();
    if let Some(m) = modules.get(path) {
        return Ok(m.clone());
    }
    let fail =
        |e: cryptoki::error::Error| Error::InvalidArgument(format!("PKCS#11 module {}: {e}", path.display()));
    let pkcs11 = Pkcs11::new(path).map_err(fail)?;
    match pkcs11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(cryptoki::error::Error::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => return Err(fail(e)),
    }
    modules.insert(path.to_path_buf(), pkcs11.clone());
    Ok(pkcs11)
}

/// A token key label from a key id or `alias/LABEL`.
fn label(key: &str) -> KmsResult<&str> {
    let label = key.strip_prefix("alias/").unwrap_or(key);
    if label.is_empty() || label.len() > 200 || label.chars().any(char::is_control) {
        return Err(KmsError::new(
            KmsErrorKind::InvalidRequest,
            format!("{key:?} is not a key label"),
        )
        .with_key(key));
    }
    Ok(label)
}

fn map_error(e: &cryptoki::error::Error) -> KmsError {
    use RvError as R;
    let kind = match e {
        cryptoki::error::Error::Pkcs11(rv, _) => match rv {
            R::KeyFunctionNotPermitted => KmsErrorKind::Disabled,
            R::EncryptedDataInvalid | R::EncryptedDataLenRange => KmsErrorKind::InvalidCiphertext,
            R::PinIncorrect | R::PinLocked | R::PinExpired | R::UserNotLoggedIn => KmsErrorKind::AccessDenied,
            R::KeyHandleInvalid | R::ObjectHandleInvalid => KmsErrorKind::NotFound,
            R::DeviceError
            | R::DeviceRemoved
            | R::DeviceMemory
            | R::TokenNotPresent
            | R::SessionHandleInvalid
            | R::SessionClosed => KmsErrorKind::Unavailable,
            _ => KmsErrorKind::InvalidRequest,
        },
        _ => KmsErrorKind::Internal,
    };
    KmsError::new(kind, format!("PKCS#11: {e}"))
}

impl Pkcs11Kms {
    /// Opens the token a `pkcs11:` URI names, with the PIN from its `pin-value`, else its
    /// `pin-source` file, else `TDE_PKCS11_PIN`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for another kind of URI or no PIN; as
    /// [`Pkcs11Kms::connect`].
    pub fn open(uri: &super::KmsUri) -> Result<Pkcs11Kms> {
        let super::KmsUri::Pkcs11 {
            token,
            module_path,
            pin_source,
            pin_value,
        } = uri
        else {
            return Err(Error::InvalidArgument(format!("{uri} is not a pkcs11: URI")));
        };
        let pin = match (pin_value, pin_source) {
            (Some(pin), _) => pin.secret(),
            (None, Some(source)) => {
                let path = source.strip_prefix("file:").unwrap_or(source);
                let text = std::fs::read_to_string(path)
                    .map_err(|e| Error::io(format!("reading the PKCS#11 PIN from {path}"), e))?;
                SecretBytes::new(text.trim_end_matches(['\n', '\r']).as_bytes().to_vec())
            }
            (None, None) => SecretBytes::new(
                std::env::var("TDE_PKCS11_PIN")
                    .map_err(|_| {
                        Error::InvalidArgument(
                            "pkcs11: no PIN; set TDE_PKCS11_PIN or use ?pin-source=FILE".into(),
                        )
                    })?
                    .into_bytes(),
            ),
        };
        Pkcs11Kms::connect(module_path, token, &pin)
    }

    /// Opens a session on the token labelled `token` through the module at `module_path`
    /// and logs in with `pin`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if the module does not load or no token has that label;
    /// [`Error::Kms`] (access denied) for a wrong PIN.
    pub fn connect(module_path: &Path, token: &str, pin: &SecretBytes) -> Result<Pkcs11Kms> {
        let pkcs11 = module(module_path)?;
        let fail = |e: cryptoki::error::Error| Error::Kms(map_error(&e));
        let slot = pkcs11
            .get_slots_with_token()
            .map_err(fail)?
            .into_iter()
            .find(|slot| {
                pkcs11
                    .get_token_info(*slot)
                    .is_ok_and(|info| info.label().trim_end() == token)
            })
            .ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "no PKCS#11 token labelled {token:?} through {}",
                    module_path.display()
                ))
            })?;
        let session = pkcs11.open_rw_session(slot).map_err(fail)?;
        let pin = std::str::from_utf8(pin.expose())
            .map_err(|_| Error::InvalidArgument("the PKCS#11 PIN is not UTF-8".into()))?;
        match session.login(UserType::User, Some(&AuthPin::from(pin))) {
            Ok(()) | Err(cryptoki::error::Error::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
            Err(e) => return Err(fail(e)),
        }
        Ok(Pkcs11Kms {
            session: Mutex::new(session),
            uri: format!("pkcs11:token={token}?module-path={}", module_path.display()),
        })
    }

    /// The secret key labelled `label`.
    fn find(session: &Session, key: &str) -> KmsResult<ObjectHandle> {
        let label = label(key)?;
        let found = session
            .find_objects(&[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::Label(label.as_bytes().to_vec()),
            ])
            .map_err(|e| map_error(&e).with_key(key))?;
        match found.as_slice() {
            [one] => Ok(*one),
            [] => Err(KmsError::new(
                KmsErrorKind::NotFound,
                format!("no key labelled {label:?} on the token"),
            )
            .with_key(key)),
            _ => Err(KmsError::new(
                KmsErrorKind::InvalidRequest,
                format!("{} keys are labelled {label:?} on the token", found.len()),
            )
            .with_key(key)),
        }
    }

    fn wrap(&self, key: &str, plaintext: &[u8], context: &EncryptionContext) -> KmsResult<Vec<u8>> {
        let label = label(key)?;
        let session = self.session.lock();
        let handle = Pkcs11Kms::find(&session, key)?;
        let mut iv = [0u8; IV_LEN];
        crate::error::os_random(&mut iv)
            .map_err(|e| KmsError::new(KmsErrorKind::Internal, format!("no randomness: {e}")))?;
        let aad = context.canonical_bytes();
        let mut iv_param = iv;
        let params = GcmParams::new(&mut iv_param, &aad, TAG_BITS.into()).map_err(|e| map_error(&e))?;
        let sealed = session
            .encrypt(&Mechanism::AesGcm(params), handle, plaintext)
            .map_err(|e| map_error(&e).with_key(key))?;
        let mut blob = Vec::with_capacity(BLOB_MAGIC.len() + 1 + label.len() + IV_LEN + sealed.len());
        blob.extend_from_slice(BLOB_MAGIC);
        blob.push(label.len() as u8);
        blob.extend_from_slice(label.as_bytes());
        blob.extend_from_slice(&iv);
        blob.extend_from_slice(&sealed);
        Ok(blob)
    }

    /// Creates the AES-256 key `label` on the token: sensitive, not extractable, for
    /// encryption and decryption (the `tde kms create-key` of this provider).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if the label is taken; [`Error::Kms`].
    pub fn create_key(&self, key: &str) -> Result<String> {
        let label = label(key)?.to_owned();
        let session = self.session.lock();
        if Pkcs11Kms::find(&session, &label).is_ok() {
            return Err(Error::InvalidArgument(format!(
                "a key labelled {label:?} exists on the token"
            )));
        }
        session
            .generate_key(
                &Mechanism::AesKeyGen,
                &[
                    Attribute::Class(ObjectClass::SECRET_KEY),
                    Attribute::KeyType(KeyType::AES),
                    Attribute::ValueLen(32u64.into()),
                    Attribute::Token(true),
                    Attribute::Private(true),
                    Attribute::Sensitive(true),
                    Attribute::Extractable(false),
                    Attribute::Encrypt(true),
                    Attribute::Decrypt(true),
                    Attribute::Label(label.as_bytes().to_vec()),
                ],
            )
            .map_err(|e| Error::Kms(map_error(&e)))?;
        Ok(label)
    }

    /// Enables or disables `key` (`CKA_ENCRYPT` and `CKA_DECRYPT`).
    ///
    /// # Errors
    /// [`Error::Kms`].
    pub fn set_enabled(&self, key: &str, on: bool) -> Result<()> {
        let session = self.session.lock();
        let handle = Pkcs11Kms::find(&session, key)?;
        session
            .update_attributes(handle, &[Attribute::Encrypt(on), Attribute::Decrypt(on)])
            .map_err(|e| Error::Kms(map_error(&e).with_key(key)))
    }
}

/// A blob's (label, IV, sealed bytes); a blob is hostile input.
fn parse_blob(blob: &[u8]) -> KmsResult<(&str, [u8; IV_LEN], &[u8])> {
    let invalid = || KmsError::new(KmsErrorKind::InvalidCiphertext, "not a PKCS#11-wrapped blob");
    let rest = blob.strip_prefix(BLOB_MAGIC).ok_or_else(invalid)?;
    let (&len, rest) = rest.split_first().ok_or_else(invalid)?;
    let len = usize::from(len);
    if rest.len() < len + IV_LEN + 16 {
        return Err(invalid());
    }
    let (label_bytes, rest) = rest.split_at(len);
    let label = std::str::from_utf8(label_bytes).map_err(|_| invalid())?;
    let label = self::label(label).map_err(|_| invalid())?;
    let (iv, sealed) = rest.split_at(IV_LEN);
    let mut iv_out = [0u8; IV_LEN];
    iv_out.copy_from_slice(iv);
    Ok((label, iv_out, sealed))
}

impl Kms for Pkcs11Kms {
    fn describe(&self) -> String {
        self.uri.clone()
    }

    fn generate_data_key(
        &self,
        key: &str,
        spec: DataKeySpec,
        context: &EncryptionContext,
    ) -> KmsResult<GeneratedDataKey> {
        super::provider::generate_and_wrap(label(key)?, spec, |dk| self.wrap(key, dk, context))
    }

    fn encrypt(&self, key: &str, plaintext: &[u8], context: &EncryptionContext) -> KmsResult<Vec<u8>> {
        super::provider::check_direct(plaintext.len(), MAX_ENCRYPT_PLAINTEXT, "tde on a PKCS#11 token")?;
        self.wrap(key, plaintext, context)
    }

    fn decrypt(&self, ciphertext: &[u8], context: &EncryptionContext) -> KmsResult<SecretBytes> {
        let (label, mut iv, sealed) = parse_blob(ciphertext)?;
        let session = self.session.lock();
        let handle = Pkcs11Kms::find(&session, label)?;
        let aad = context.canonical_bytes();
        let params = GcmParams::new(&mut iv, &aad, TAG_BITS.into()).map_err(|e| map_error(&e))?;
        match session.decrypt(&Mechanism::AesGcm(params), handle, sealed) {
            Ok(plain) => Ok(SecretBytes::new(plain)),
            Err(e) => {
                let mapped = map_error(&e).with_key(label);
                // A tag that does not verify is reported differently by each token.
                let forged = matches!(
                    e,
                    cryptoki::error::Error::Pkcs11(RvError::FunctionFailed | RvError::GeneralError, _)
                );
                Err(if forged {
                    KmsError::new(
                        KmsErrorKind::InvalidCiphertext,
                        "the token refused the ciphertext",
                    )
                    .with_key(label)
                } else {
                    mapped
                })
            }
        }
    }

    fn re_encrypt(
        &self,
        ciphertext: &[u8],
        source_context: &EncryptionContext,
        destination_key: &str,
        destination_context: &EncryptionContext,
    ) -> KmsResult<Vec<u8>> {
        let plain = self.decrypt(ciphertext, source_context)?;
        self.wrap(destination_key, plain.expose(), destination_context)
    }

    fn describe_key(&self, key: &str) -> KmsResult<KeyMetadata> {
        let session = self.session.lock();
        let handle = Pkcs11Kms::find(&session, key)?;
        let attributes = session
            .get_attributes(handle, &[AttributeType::Encrypt, AttributeType::Decrypt])
            .map_err(|e| map_error(&e).with_key(key))?;
        let enabled = attributes
            .iter()
            .all(|a| matches!(a, Attribute::Encrypt(true) | Attribute::Decrypt(true)));
        let state = if enabled {
            KeyState::Enabled
        } else {
            KeyState::Disabled
        };
        let version = KeyVersionInfo {
            version: 1,
            created_at: Timestamp(0),
        };
        Ok(super::provider::metadata(label(key)?, state, vec![version]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blobs_are_checked_before_their_label_is_used() {
        let mut good = BLOB_MAGIC.to_vec();
        good.push(3);
        good.extend_from_slice(b"abc");
        good.extend_from_slice(&[0u8; IV_LEN + 16]);
        assert_eq!(parse_blob(&good).unwrap().0, "abc");
        let short = &good[..good.len() - 1];
        let mut control = good.clone();
        control[BLOB_MAGIC.len() + 1] = b'\n';
        let mut long = good.clone();
        long[BLOB_MAGIC.len()] = 200;
        for bad in [short, &control, &long, b"tdep11", b""] {
            assert!(
                matches!(parse_blob(bad), Err(e) if e.kind() == KmsErrorKind::InvalidCiphertext),
                "{bad:?}"
            );
        }
    }
}
