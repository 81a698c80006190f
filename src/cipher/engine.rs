//! The AEAD engines behind a suite: RustCrypto AES-256-GCM and SM4-GCM, and (feature
//! `aws-lc`) aws-lc-rs AES-256-GCM.
//!
//! Invariant: every engine computes the standard GCM construction with a 96-bit nonce and
//! a 128-bit tag, so bytes sealed by one AES engine open with the other.
//! Not here: nonces, formats, seal counting (`cipher`).
//! Security notes: key schedules are wiped on drop (aes-gcm's `zeroize` feature; aws-lc
//! cleanses its context on free). After a failed open the buffer is zeroed, because some
//! engines decrypt before they verify.

use aes_gcm::aead::consts::U12;
use aes_gcm::{AeadInOut, Aes256Gcm, AesGcm, KeyInit, Nonce, Tag};
use sm4::Sm4;

use super::nonce::NONCE_LEN;
use super::{Backend, Suite, TAG_LEN};
use crate::error::{Error, Result};

type Sm4Gcm = AesGcm<Sm4, U12>;

pub(crate) enum Engine {
    Aes(Box<Aes256Gcm>),
    Sm4(Box<Sm4Gcm>),
    #[cfg(feature = "aws-lc")]
    AwsLc(aws_lc_rs::aead::LessSafeKey),
}

impl Engine {
    pub(crate) fn new(suite: Suite, backend: Backend, key: &[u8]) -> Result<Engine> {
        if key.len() != suite.key_len() {
            return Err(Error::InvalidArgument(format!(
                "{} needs a {}-byte key, got {} bytes",
                suite,
                suite.key_len(),
                key.len()
            )));
        }
        let bad_len = |_| Error::InvalidArgument(format!("{suite} key has the wrong length"));
        Ok(match (suite, backend) {
            (Suite::Sm4Gcm, _) => Engine::Sm4(Box::new(Sm4Gcm::new_from_slice(key).map_err(bad_len)?)),
            (Suite::Aes256Gcm, Backend::RustCrypto) => {
                Engine::Aes(Box::new(Aes256Gcm::new_from_slice(key).map_err(bad_len)?))
            }
            #[cfg(feature = "aws-lc")]
            (Suite::Aes256Gcm, Backend::AwsLc) => {
                use aws_lc_rs::aead::{AES_256_GCM, LessSafeKey, UnboundKey};
                let unbound = UnboundKey::new(&AES_256_GCM, key)
                    .map_err(|_| Error::InvalidArgument("AES-256-GCM key rejected by aws-lc".into()))?;
                Engine::AwsLc(LessSafeKey::new(unbound))
            }
        })
    }

    /// Encrypts `buf` in place and returns the tag.
    pub(crate) fn seal(&self, nonce: &[u8; NONCE_LEN], aad: &[u8], buf: &mut [u8]) -> Result<[u8; TAG_LEN]> {
        let too_long = |_| Error::InvalidArgument("message too long for GCM".into());
        let n = Nonce::<U12>::from(*nonce);
        let tag: Tag = match self {
            Engine::Aes(c) => c.encrypt_inout_detached(&n, aad, buf.into()).map_err(too_long)?,
            Engine::Sm4(c) => c.encrypt_inout_detached(&n, aad, buf.into()).map_err(too_long)?,
            #[cfg(feature = "aws-lc")]
            Engine::AwsLc(k) => {
                use aws_lc_rs::aead::{Aad, Nonce as AwsNonce};
                let tag = k
                    .seal_in_place_separate_tag(AwsNonce::assume_unique_for_key(*nonce), Aad::from(aad), buf)
                    .map_err(|_| Error::InvalidArgument("message too long for GCM".into()))?;
                let mut out = [0u8; TAG_LEN];
                out.copy_from_slice(tag.as_ref());
                return Ok(out);
            }
        };
        Ok(tag.into())
    }

    /// Decrypts `buf` in place after verifying `tag`. On failure `buf` is zeroed.
    pub(crate) fn open(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<()> {
        let n = Nonce::<U12>::from(*nonce);
        let t = Tag::from(*tag);
        let ok = match self {
            Engine::Aes(c) => c.decrypt_inout_detached(&n, aad, (&mut *buf).into(), &t).is_ok(),
            Engine::Sm4(c) => c.decrypt_inout_detached(&n, aad, (&mut *buf).into(), &t).is_ok(),
            #[cfg(feature = "aws-lc")]
            Engine::AwsLc(k) => {
                use aws_lc_rs::aead::{Aad, Nonce as AwsNonce};
                k.open_in_place_separate_tag(
                    AwsNonce::assume_unique_for_key(*nonce),
                    Aad::from(aad),
                    tag,
                    buf,
                )
                .is_ok()
            }
        };
        if ok {
            Ok(())
        } else {
            buf.fill(0);
            Err(Error::Authentication {
                location: "sealed data".into(),
            })
        }
    }
}
