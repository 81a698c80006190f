//! Cipher suites, the sealed-value format, and nonce policy: pure functions of
//! (key, bytes).
//!
//! Invariant: every seal uses a fresh 96-bit nonce from the OS CSPRNG and non-empty
//! associated data; a key refuses to seal past its limit (2^32 seals by default, NIST
//! SP 800-38D for random nonces) and reports when it is close, so the keyring can rotate.
//! Not here: where keys come from (`kms`, `keyring`), what the associated data means
//! (the stores build it).
//! Security notes: a failed open returns no bytes and names no secret; an engine that
//! decrypts before verifying has its output zeroed.

mod engine;
pub(crate) mod kdf;
mod nonce;
mod sealed;
mod stream;

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};

use engine::Engine;
pub use nonce::{MAX_NONCE_LEN, NONCE_LEN, Nonce};
pub use sealed::{FORMAT_VERSION, HEADER_LEN, OVERHEAD, Sealed};
pub use stream::{FileStream, STREAM_IV_LEN};

use crate::error::{Error, Result};
use crate::secret::DataKey;

/// GCM tag length in bytes.
pub const TAG_LEN: usize = 16;

/// Seals a key may perform with random 96-bit nonces before the collision probability
/// exceeds 2^-32 (NIST SP 800-38D, section 8.3).
pub const RANDOM_NONCE_LIMIT: u64 = 1 << 32;

/// An AEAD suite, recorded by id in every sealed value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Suite {
    /// AES-256 in Galois/Counter Mode. The default.
    Aes256Gcm,
    /// SM4 in Galois/Counter Mode (GB/T 32907 block cipher, for SCA compliance). About
    /// 30 times slower than AES-256-GCM in software.
    Sm4Gcm,
    /// AEGIS-256 (RFC draft-irtf-cfrg-aegis-aead), through the `aegis` crate: 256-bit keys
    /// and 256-bit random nonces, so a key has no practical seal limit, and faster than
    /// AES-256-GCM on CPUs with AES instructions. Not a FIPS or SCA algorithm.
    #[serde(rename = "aegis-256")]
    Aegis256,
}

impl Suite {
    /// Every suite, in id order.
    pub const ALL: [Suite; 3] = [Suite::Aes256Gcm, Suite::Sm4Gcm, Suite::Aegis256];

    /// The id stored on disk.
    pub const fn id(self) -> u8 {
        match self {
            Suite::Aes256Gcm => 1,
            Suite::Sm4Gcm => 2,
            Suite::Aegis256 => 3,
        }
    }

    /// The suite with this on-disk id.
    ///
    /// # Errors
    /// [`Error::Format`] for an unknown id.
    pub fn from_id(id: u8) -> Result<Suite> {
        Suite::ALL
            .into_iter()
            .find(|s| s.id() == id)
            .ok_or_else(|| Error::Format {
                what: "suite id",
                detail: format!("unknown suite id {id}"),
            })
    }

    /// Key length in bytes.
    pub const fn key_len(self) -> usize {
        match self {
            Suite::Aes256Gcm | Suite::Aegis256 => 32,
            Suite::Sm4Gcm => 16,
        }
    }

    /// Nonce length in bytes: 12 for the GCM suites, 32 for AEGIS-256.
    pub const fn nonce_len(self) -> usize {
        match self {
            Suite::Aes256Gcm | Suite::Sm4Gcm => NONCE_LEN,
            Suite::Aegis256 => MAX_NONCE_LEN,
        }
    }

    /// Seals one key may perform with random nonces: 2^32 for the GCM suites (the NIST
    /// SP 800-38D bound for 96-bit random nonces); no practical limit for AEGIS-256, whose
    /// 256-bit random nonces do not collide.
    pub const fn seal_limit(self) -> u64 {
        match self {
            Suite::Aes256Gcm | Suite::Sm4Gcm => RANDOM_NONCE_LIMIT,
            Suite::Aegis256 => u64::MAX,
        }
    }

    /// Bytes a sealed value of this suite adds to its plaintext (see [`Sealed`]).
    pub const fn overhead(self) -> usize {
        sealed::BOUND_LEN + self.nonce_len() + TAG_LEN
    }

    /// The name used in options and on the command line.
    pub const fn name(self) -> &'static str {
        match self {
            Suite::Aes256Gcm => "aes-256-gcm",
            Suite::Sm4Gcm => "sm4-gcm",
            Suite::Aegis256 => "aegis-256",
        }
    }
}

impl fmt::Display for Suite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Suite {
    type Err = Error;
    fn from_str(s: &str) -> Result<Suite> {
        Suite::ALL
            .into_iter()
            .find(|suite| suite.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "unknown cipher {s:?}; expected aes-256-gcm, sm4-gcm or aegis-256"
                ))
            })
    }
}

#[cfg(not(any(feature = "aws-lc", feature = "rustcrypto")))]
compile_error!("tde needs an AES backend: the `aws-lc` feature (default) or `rustcrypto`");

/// Which implementation computes AES-256-GCM. SM4-GCM always uses RustCrypto.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Backend {
    /// RustCrypto's `aes-gcm` crate (AES-NI and CLMUL where the CPU has them).
    RustCrypto,
    /// aws-lc-rs (feature `aws-lc`, the default): same bytes, several times faster.
    #[cfg(feature = "aws-lc")]
    AwsLc,
}

impl Default for Backend {
    /// `AwsLc` when the `aws-lc` feature is on (the default), otherwise `RustCrypto`.
    fn default() -> Backend {
        #[cfg(feature = "aws-lc")]
        {
            Backend::AwsLc
        }
        #[cfg(not(feature = "aws-lc"))]
        {
            Backend::RustCrypto
        }
    }
}

/// How close a key is to its seal limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyUsage {
    /// Below the rotation threshold.
    Fresh,
    /// Past the rotation threshold (3/4 of the limit): rotate soon.
    RotateSoon,
    /// At the limit: the key refuses to seal.
    Exhausted,
}

/// The tag and nonce of a detached seal, for formats that store them apart from the
/// ciphertext (e.g. a page reserve).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Detached {
    /// The nonce used ([`Suite::nonce_len`] bytes).
    pub nonce: Nonce,
    /// The authentication tag.
    pub tag: [u8; TAG_LEN],
}

/// A data key ready to seal and open: suite, key version, expanded key schedule, and a
/// count of seals.
///
/// Cheap to share between threads (`&AeadKey` is enough). No `Clone`; `Debug` shows no
/// key bytes.
pub struct AeadKey {
    suite: Suite,
    version: u32,
    engine: Engine,
    seals: AtomicU64,
    limit: u64,
}

impl AeadKey {
    /// A key for `suite` with the default backend. `version` is recorded in every value
    /// it seals.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if `key` has the wrong length for `suite`.
    pub fn new(suite: Suite, version: u32, key: &DataKey) -> Result<AeadKey> {
        AeadKey::with_backend(suite, version, key, Backend::default())
    }

    /// As [`AeadKey::new`], with an explicit AES backend.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if `key` has the wrong length for `suite`.
    pub fn with_backend(suite: Suite, version: u32, key: &DataKey, backend: Backend) -> Result<AeadKey> {
        Ok(AeadKey {
            suite,
            version,
            engine: Engine::new(suite, backend, key.expose())?,
            seals: AtomicU64::new(0),
            limit: suite.seal_limit(),
        })
    }

    /// Starts the seal count at `seals` (what this key sealed before, as recorded by the
    /// keyring).
    #[must_use]
    pub fn with_prior_seals(self, seals: u64) -> AeadKey {
        self.seals.store(seals, Ordering::Relaxed);
        self
    }

    /// Lowers the seal limit below the suite's ([`Suite::seal_limit`]; never raises it).
    #[must_use]
    pub fn with_seal_limit(mut self, limit: u64) -> AeadKey {
        self.limit = limit.min(self.suite.seal_limit());
        self
    }

    /// The suite.
    pub fn suite(&self) -> Suite {
        self.suite
    }

    /// The key version recorded in sealed values.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Seals performed so far (including prior seals).
    pub fn seals(&self) -> u64 {
        self.seals.load(Ordering::Relaxed)
    }

    /// The seal limit.
    pub fn seal_limit(&self) -> u64 {
        self.limit
    }

    /// How close the key is to its limit.
    pub fn usage(&self) -> KeyUsage {
        let seals = self.seals();
        if seals >= self.limit {
            KeyUsage::Exhausted
        } else if seals >= self.limit / 4 * 3 {
            KeyUsage::RotateSoon
        } else {
            KeyUsage::Fresh
        }
    }

    fn count_seal(&self) -> Result<()> {
        let before = self.seals.fetch_add(1, Ordering::Relaxed);
        if before >= self.limit {
            self.seals.fetch_sub(1, Ordering::Relaxed);
            return Err(Error::KeyExhausted {
                version: self.version,
                limit: self.limit,
            });
        }
        Ok(())
    }

    /// Seals `plaintext` into the versioned format (see [`Sealed`]), bound to `aad`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for empty `aad`; [`Error::KeyExhausted`] past the seal
    /// limit; [`Error::Random`] if the OS generator fails.
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(plaintext.len() + self.suite.overhead());
        self.seal_into(aad, plaintext, &mut out)?;
        Ok(out)
    }

    /// As [`AeadKey::seal`], appending to `out` (reuse one buffer on hot paths).
    ///
    /// # Errors
    /// As [`AeadKey::seal`]; `out` is restored to its previous length on error.
    pub fn seal_into(&self, aad: &[u8], plaintext: &[u8], out: &mut Vec<u8>) -> Result<()> {
        require_aad(aad)?;
        self.count_seal()?;
        let nonce = nonce::fresh(self.suite.nonce_len())?;
        let start = out.len();
        out.reserve(plaintext.len() + self.suite.overhead());
        let (header, header_len) = sealed::header(self.suite, self.version, &nonce);
        let header = &header[..header_len];
        out.extend_from_slice(header);
        out.extend_from_slice(plaintext);
        let result = sealed::with_full_aad(header, aad, |full| {
            self.engine
                .seal(nonce.as_slice(), full, &mut out[start + header_len..])
        });
        match result {
            Ok(tag) => {
                out.extend_from_slice(&tag);
                Ok(())
            }
            Err(e) => {
                out.truncate(start);
                Err(e)
            }
        }
    }

    /// Opens a sealed value produced by [`AeadKey::seal`] with the same `aad`.
    ///
    /// # Errors
    /// [`Error::Format`] if `sealed` is truncated or of an unknown version or suite;
    /// [`Error::Authentication`] if it was modified, moved, or sealed under another key,
    /// key version or associated data.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(sealed.len().saturating_sub(self.suite.overhead()));
        self.open_into(aad, sealed, &mut out)?;
        Ok(out)
    }

    /// As [`AeadKey::open`], appending the plaintext to `out`.
    ///
    /// # Errors
    /// As [`AeadKey::open`]; nothing is appended on error.
    pub fn open_into(&self, aad: &[u8], sealed: &[u8], out: &mut Vec<u8>) -> Result<()> {
        require_aad(aad)?;
        let view = Sealed::parse(sealed)?;
        if view.suite != self.suite || view.key_version != self.version {
            return Err(Error::Authentication {
                location: format!(
                    "sealed value (sealed with {} key version {}, opened with {} key version {})",
                    view.suite, view.key_version, self.suite, self.version
                ),
            });
        }
        let start = out.len();
        out.extend_from_slice(view.ciphertext);
        let result = sealed::with_full_aad(view.header, aad, |full| {
            self.engine.open(view.nonce, full, &mut out[start..], view.tag)
        });
        if result.is_err() {
            out.truncate(start);
        }
        result
    }

    /// Encrypts `buf` in place with a fresh nonce and returns nonce and tag, for formats
    /// that keep them elsewhere. `aad` must bind everything the caller's format needs
    /// bound (including the key version).
    ///
    /// # Errors
    /// As [`AeadKey::seal`].
    pub fn seal_detached(&self, aad: &[u8], buf: &mut [u8]) -> Result<Detached> {
        require_aad(aad)?;
        self.count_seal()?;
        let nonce = nonce::fresh(self.suite.nonce_len())?;
        let tag = self.engine.seal(nonce.as_slice(), aad, buf)?;
        Ok(Detached { nonce, tag })
    }

    /// Decrypts `buf` in place, verifying `detached.tag`. On failure `buf` is zeroed.
    ///
    /// # Errors
    /// [`Error::Authentication`] if anything does not match.
    pub fn open_detached(&self, aad: &[u8], detached: &Detached, buf: &mut [u8]) -> Result<()> {
        require_aad(aad)?;
        self.engine
            .open(detached.nonce.as_slice(), aad, buf, &detached.tag)
    }
}

impl fmt::Debug for AeadKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AeadKey")
            .field("suite", &self.suite)
            .field("version", &self.version)
            .field("seals", &self.seals())
            .finish_non_exhaustive()
    }
}

fn require_aad(aad: &[u8]) -> Result<()> {
    if aad.is_empty() {
        return Err(Error::InvalidArgument(
            "associated data must not be empty: it binds a ciphertext to where it belongs".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(suite: Suite, version: u32) -> AeadKey {
        AeadKey::new(suite, version, &DataKey::generate(suite.key_len()).unwrap()).unwrap()
    }

    #[test]
    fn seal_limit_is_enforced_and_reported() {
        let k = key(Suite::Aes256Gcm, 1).with_seal_limit(8);
        for _ in 0..5 {
            k.seal(b"ad", b"x").unwrap();
        }
        assert_eq!(k.usage(), KeyUsage::Fresh);
        k.seal(b"ad", b"x").unwrap();
        assert_eq!(k.usage(), KeyUsage::RotateSoon);
        k.seal(b"ad", b"x").unwrap();
        k.seal(b"ad", b"x").unwrap();
        assert_eq!(k.usage(), KeyUsage::Exhausted);
        assert!(matches!(
            k.seal(b"ad", b"x"),
            Err(Error::KeyExhausted { version: 1, limit: 8 })
        ));
        let mut buf = [0u8; 4];
        assert!(matches!(
            k.seal_detached(b"ad", &mut buf),
            Err(Error::KeyExhausted { .. })
        ));
        assert_eq!(k.seals(), 8);
        let restarted = key(Suite::Aes256Gcm, 1).with_prior_seals(RANDOM_NONCE_LIMIT);
        assert!(matches!(
            restarted.seal(b"ad", b"x"),
            Err(Error::KeyExhausted { .. })
        ));
        assert_eq!(key(Suite::Sm4Gcm, 1).seal_limit(), RANDOM_NONCE_LIMIT);
    }

    #[test]
    fn detached_round_trip_and_tamper() {
        for suite in Suite::ALL {
            let k = key(suite, 3);
            let mut page = vec![7u8; 4096];
            let d = k.seal_detached(b"page 9", &mut page).unwrap();
            assert_ne!(page, vec![7u8; 4096]);
            let mut copy = page.clone();
            k.open_detached(b"page 9", &d, &mut copy).unwrap();
            assert_eq!(copy, vec![7u8; 4096]);
            let mut moved = page.clone();
            assert!(k.open_detached(b"page 8", &d, &mut moved).is_err());
            let mut flipped = page.clone();
            flipped[100] ^= 0x80;
            assert!(matches!(
                k.open_detached(b"page 9", &d, &mut flipped),
                Err(Error::Authentication { .. })
            ));
        }
    }

    #[test]
    fn suite_names_and_ids_round_trip() {
        for suite in Suite::ALL {
            assert_eq!(Suite::from_id(suite.id()).unwrap(), suite);
            assert_eq!(suite.name().parse::<Suite>().unwrap(), suite);
        }
        assert!(Suite::from_id(0).is_err());
        assert!("des".parse::<Suite>().is_err());
    }

    #[test]
    fn debug_shows_no_key_bytes() {
        let dk = DataKey::from_slice(&[0x5a; 32]);
        let k = AeadKey::new(Suite::Aes256Gcm, 1, &dk).unwrap();
        let shown = format!("{k:?}");
        assert!(
            !shown.contains("90") && !shown.to_lowercase().contains("5a"),
            "{shown}"
        );
    }

    #[cfg(feature = "aws-lc")]
    #[test]
    fn backends_produce_the_same_bytes_both_ways() {
        let dk = DataKey::generate(32).unwrap();
        let rust = AeadKey::with_backend(Suite::Aes256Gcm, 1, &dk, Backend::RustCrypto).unwrap();
        let aws = AeadKey::with_backend(Suite::Aes256Gcm, 1, &dk, Backend::AwsLc).unwrap();
        for len in (0usize..=1100).step_by(7).chain([15, 16, 17, 4096, 16384 + 3]) {
            let plain: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let a = rust.seal(b"cross", &plain).unwrap();
            assert_eq!(aws.open(b"cross", &a).unwrap(), plain);
            let b = aws.seal(b"cross", &plain).unwrap();
            assert_eq!(rust.open(b"cross", &b).unwrap(), plain);
            let mut page = plain.clone();
            let d = aws.seal_detached(b"page", &mut page).unwrap();
            rust.open_detached(b"page", &d, &mut page).unwrap();
            assert_eq!(page, plain);
        }
    }
}
