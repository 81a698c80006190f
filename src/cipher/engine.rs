//! The AEAD engines behind a suite: aws-lc-rs AES-256-GCM (feature `aws-lc`, the
//! default), RustCrypto's `aes-gcm` crate over the `aes` and `sm4` block ciphers (always
//! built: SM4-GCM uses it, and AES-256-GCM with the `rustcrypto` feature), and the
//! `aegis` crate's AEGIS-256 (libaegis, which picks AES-NI or ARM code at run time).
//!
//! Invariant: every GCM engine computes the standard GCM construction with a 96-bit nonce
//! and a 128-bit tag, so bytes sealed by one AES engine open with the other. AEGIS-256
//! takes a 256-bit nonce and gives a 128-bit tag.
//! Not here: nonces, formats, seal counting (`cipher`).
//! Security notes: key schedules are wiped on drop (the `zeroize` features of `aes`,
//! `sm4` and `aes-gcm`; aws-lc cleanses its context on free; the AEGIS key is held in a
//! `Zeroizing` buffer, though the `aegis` crate copies it onto the stack for each call
//! and does not wipe that copy). After a failed open the buffer is zeroed, whatever the
//! engine did with it.

use aes_gcm::aead::consts::U12;
use aes_gcm::{AeadInOut, Aes256Gcm, AesGcm, KeyInit, Nonce, Tag};
use sm4::Sm4;

use super::nonce::{MAX_NONCE_LEN, NONCE_LEN};
use super::{Backend, Suite, TAG_LEN};
use crate::error::{Error, Result};

type Sm4Gcm = AesGcm<Sm4, U12>;

pub(crate) enum Engine {
    Aes(Box<Aes256Gcm>),
    Sm4(Box<Sm4Gcm>),
    #[cfg(feature = "aws-lc")]
    AwsLc(aws_lc_rs::aead::LessSafeKey),
    Aegis(zeroize::Zeroizing<[u8; 32]>),
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
            (Suite::Aegis256, _) => {
                let mut k = zeroize::Zeroizing::new([0u8; 32]);
                k.copy_from_slice(key);
                Engine::Aegis(k)
            }
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
    pub(crate) fn seal(&self, nonce: &[u8], aad: &[u8], buf: &mut [u8]) -> Result<[u8; TAG_LEN]> {
        if let Engine::Aegis(key) = self {
            let nonce: &[u8; MAX_NONCE_LEN] = nonce.try_into().map_err(|_| bad_nonce())?;
            return Ok(aegis::aegis256::Aegis256::<TAG_LEN>::new(key, nonce).encrypt_in_place(buf, aad));
        }
        let nonce: &[u8; NONCE_LEN] = nonce.try_into().map_err(|_| bad_nonce())?;
        let too_long = |_| Error::InvalidArgument("message too long for GCM".into());
        let n = Nonce::<U12>::from(*nonce);
        match self {
            Engine::Aes(c) => Ok(c
                .encrypt_inout_detached(&n, aad, buf.into())
                .map_err(too_long)?
                .into()),
            Engine::Sm4(c) => Ok(c
                .encrypt_inout_detached(&n, aad, buf.into())
                .map_err(too_long)?
                .into()),
            #[cfg(feature = "aws-lc")]
            Engine::AwsLc(k) => {
                use aws_lc_rs::aead::{Aad, Nonce as AwsNonce};
                let tag = k
                    .seal_in_place_separate_tag(AwsNonce::assume_unique_for_key(*nonce), Aad::from(aad), buf)
                    .map_err(|_| Error::InvalidArgument("message too long for GCM".into()))?;
                let mut out = [0u8; TAG_LEN];
                out.copy_from_slice(tag.as_ref());
                Ok(out)
            }
            Engine::Aegis(_) => Err(bad_nonce()),
        }
    }

    /// Decrypts `buf` in place after verifying `tag`. On failure `buf` is zeroed.
    pub(crate) fn open(&self, nonce: &[u8], aad: &[u8], buf: &mut [u8], tag: &[u8; TAG_LEN]) -> Result<()> {
        let ok = if let Engine::Aegis(key) = self {
            let nonce: &[u8; MAX_NONCE_LEN] = nonce.try_into().map_err(|_| bad_nonce())?;
            aegis::aegis256::Aegis256::<TAG_LEN>::new(key, nonce)
                .decrypt_in_place(buf, tag, aad)
                .is_ok()
        } else {
            self.open_gcm(nonce.try_into().map_err(|_| bad_nonce())?, aad, buf, tag)
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

    fn open_gcm(&self, nonce: &[u8; NONCE_LEN], aad: &[u8], buf: &mut [u8], tag: &[u8; TAG_LEN]) -> bool {
        let n = Nonce::<U12>::from(*nonce);
        let t = Tag::<aes_gcm::aead::consts::U16>::from(*tag);
        match self {
            Engine::Aes(c) => c.decrypt_inout_detached(&n, aad, buf.into(), &t).is_ok(),
            Engine::Sm4(c) => c.decrypt_inout_detached(&n, aad, buf.into(), &t).is_ok(),
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
            Engine::Aegis(_) => false,
        }
    }
}

fn bad_nonce() -> Error {
    Error::InvalidArgument("a nonce of the wrong length for the suite".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hex::decode;

    struct Vector {
        suite: Suite,
        key: &'static str,
        nonce: &'static str,
        aad: &'static str,
        plaintext: &'static str,
        ciphertext: &'static str,
        tag: &'static str,
    }

    /// AES-256-GCM: test cases 14 and 16 of McGrew & Viega, "The Galois/Counter Mode of
    /// Operation" (the NIST submission). SM4-GCM: RFC 8998, appendix A.1. AEGIS-256: test
    /// vectors 1 and 3 of draft-irtf-cfrg-aegis-aead (appendix A.3, 128-bit tags).
    const VECTORS: &[Vector] = &[
        Vector {
            suite: Suite::Aes256Gcm,
            key: "0000000000000000000000000000000000000000000000000000000000000000",
            nonce: "000000000000000000000000",
            aad: "",
            plaintext: "00000000000000000000000000000000",
            ciphertext: "cea7403d4d606b6e074ec5d3baf39d18",
            tag: "d0d1c8a799996bf0265b98b5d48ab919",
        },
        Vector {
            suite: Suite::Aes256Gcm,
            key: "feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308",
            nonce: "cafebabefacedbaddecaf888",
            aad: "feedfacedeadbeeffeedfacedeadbeefabaddad2",
            plaintext: "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72\
                        1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39",
            ciphertext: "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa\
                         8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662",
            tag: "76fc6ece0f4e1768cddf8853bb2d551b",
        },
        Vector {
            suite: Suite::Sm4Gcm,
            key: "0123456789abcdeffedcba9876543210",
            nonce: "00001234567800000000abcd",
            aad: "feedfacedeadbeeffeedfacedeadbeefabaddad2",
            plaintext: "aaaaaaaaaaaaaaaabbbbbbbbbbbbbbbbccccccccccccccccdddddddddddddddd\
                        eeeeeeeeeeeeeeeeffffffffffffffffeeeeeeeeeeeeeeeeaaaaaaaaaaaaaaaa",
            ciphertext: "17f399f08c67d5ee19d0dc9969c4bb7d5fd46fd3756489069157b282bb200735\
                         d82710ca5c22f0ccfa7cbf93d496ac15a56834cbcf98c397b4024a2691233b8d",
            tag: "83de3541e4c2b58177e065a9bf7b62ec",
        },
        Vector {
            suite: Suite::Aegis256,
            key: "1001000000000000000000000000000000000000000000000000000000000000",
            nonce: "1000020000000000000000000000000000000000000000000000000000000000",
            aad: "",
            plaintext: "00000000000000000000000000000000",
            ciphertext: "754fc3d8c973246dcc6d741412a4b236",
            tag: "3fe91994768b332ed7f570a19ec5896e",
        },
        Vector {
            suite: Suite::Aegis256,
            key: "1001000000000000000000000000000000000000000000000000000000000000",
            nonce: "1000020000000000000000000000000000000000000000000000000000000000",
            aad: "0001020304050607",
            plaintext: "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
            ciphertext: "f373079ed84b2709faee373584585d60accd191db310ef5d8b11833df9dec711",
            tag: "8d86f91ee606e9ff26a01b64ccbdd91d",
        },
    ];

    fn backends() -> Vec<Backend> {
        #[allow(unused_mut)]
        let mut all = vec![Backend::RustCrypto];
        #[cfg(feature = "aws-lc")]
        all.push(Backend::AwsLc);
        all
    }

    #[test]
    fn known_answers_seal_and_open() {
        for backend in backends() {
            for v in VECTORS {
                let engine = Engine::new(v.suite, backend, &decode(v.key).unwrap()).unwrap();
                let nonce = decode(v.nonce).unwrap();
                assert_eq!(nonce.len(), v.suite.nonce_len());
                let aad = decode(v.aad).unwrap();
                let mut buf = decode(v.plaintext).unwrap();
                let tag = engine.seal(&nonce, &aad, &mut buf).unwrap();
                assert_eq!(crate::hex::encode(&buf), v.ciphertext, "{} {backend:?}", v.suite);
                assert_eq!(crate::hex::encode(&tag), v.tag, "{} {backend:?}", v.suite);
                engine.open(&nonce, &aad, &mut buf, &tag).unwrap();
                assert_eq!(crate::hex::encode(&buf), v.plaintext);
            }
        }
    }

    #[test]
    fn failed_open_zeroes_the_buffer() {
        for (backend, v) in backends()
            .into_iter()
            .map(|b| (b, &VECTORS[1]))
            .chain([(Backend::default(), &VECTORS[4])])
        {
            let engine = Engine::new(v.suite, backend, &decode(v.key).unwrap()).unwrap();
            let nonce = decode(v.nonce).unwrap();
            let mut buf = decode(v.ciphertext).unwrap();
            let mut tag: [u8; TAG_LEN] = decode(v.tag).unwrap().try_into().unwrap();
            tag[0] ^= 1;
            assert!(
                engine
                    .open(&nonce, &decode(v.aad).unwrap(), &mut buf, &tag)
                    .is_err()
            );
            assert!(buf.iter().all(|&b| b == 0), "{backend:?}");
        }
    }

    #[test]
    fn wrong_key_length_is_an_error() {
        assert!(Engine::new(Suite::Aes256Gcm, Backend::RustCrypto, &[0u8; 16]).is_err());
        assert!(Engine::new(Suite::Sm4Gcm, Backend::RustCrypto, &[0u8; 32]).is_err());
        assert!(Engine::new(Suite::Aegis256, Backend::RustCrypto, &[0u8; 16]).is_err());
    }

    #[test]
    fn a_nonce_of_another_suites_length_is_refused() {
        let gcm = Engine::new(Suite::Aes256Gcm, Backend::default(), &[1u8; 32]).unwrap();
        let aegis = Engine::new(Suite::Aegis256, Backend::default(), &[1u8; 32]).unwrap();
        let mut buf = [0u8; 8];
        assert!(gcm.seal(&[0u8; MAX_NONCE_LEN], b"ad", &mut buf).is_err());
        assert!(aegis.seal(&[0u8; NONCE_LEN], b"ad", &mut buf).is_err());
        assert!(
            aegis
                .open(&[0u8; NONCE_LEN], b"ad", &mut buf, &[0u8; TAG_LEN])
                .is_err()
        );
    }
}
