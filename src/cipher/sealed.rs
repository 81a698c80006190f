//! The sealed-value format.
//!
//! ```text
//! offset      size  field
//! 0           1     format version (FORMAT_VERSION = 1)
//! 1           1     suite id (1 = AES-256-GCM, 2 = SM4-GCM, 3 = AEGIS-256)
//! 2           4     key version, u32 little-endian
//! 6           k     nonce, random from the OS CSPRNG (k = 12 for the GCM suites, 32 for
//!                   AEGIS-256)
//! 6 + k       n     ciphertext (same length as the plaintext)
//! 6 + k + n   16    tag
//! ```
//!
//! The associated data is bytes 0..6 followed by the caller's associated data, so
//! changing the version, suite or key version fails authentication even before the key
//! lookup would.

use super::nonce::{MAX_NONCE_LEN, NONCE_LEN, Nonce};
use super::{Suite, TAG_LEN};
use crate::error::{Error, Result};

/// Current format version.
pub const FORMAT_VERSION: u8 = 1;

const VERSION_AT: usize = 0;
const SUITE_AT: usize = VERSION_AT + 1;
const KEY_VERSION_AT: usize = SUITE_AT + 1;
const NONCE_AT: usize = KEY_VERSION_AT + 4;
/// Bytes before the ciphertext with a GCM suite ([`Suite::overhead`] has every suite's).
pub const HEADER_LEN: usize = NONCE_AT + NONCE_LEN;
/// Bytes a seal with a GCM suite adds to the plaintext ([`Suite::overhead`] has every
/// suite's).
pub const OVERHEAD: usize = HEADER_LEN + TAG_LEN;
/// The prefix of the header that is authenticated as associated data.
pub(crate) const BOUND_LEN: usize = NONCE_AT;
/// The longest header of any suite.
pub(crate) const MAX_HEADER_LEN: usize = NONCE_AT + MAX_NONCE_LEN;

/// A parsed, not yet authenticated, sealed value.
#[derive(Debug, Clone, Copy)]
pub struct Sealed<'a> {
    /// The suite it claims.
    pub suite: Suite,
    /// The key version it claims; pick the key by this.
    pub key_version: u32,
    pub(crate) header: &'a [u8],
    pub(crate) nonce: &'a [u8],
    pub(crate) ciphertext: &'a [u8],
    pub(crate) tag: &'a [u8; TAG_LEN],
}

impl<'a> Sealed<'a> {
    /// Splits `bytes` into its fields without authenticating anything.
    ///
    /// # Errors
    /// [`Error::Format`] if truncated, or of an unknown format version or suite.
    pub fn parse(bytes: &'a [u8]) -> Result<Sealed<'a>> {
        let malformed = |detail: String| Error::Format {
            what: "sealed value",
            detail,
        };
        if bytes.len() < OVERHEAD {
            return Err(malformed(format!(
                "{} bytes is shorter than the {OVERHEAD}-byte minimum",
                bytes.len()
            )));
        }
        if bytes[VERSION_AT] != FORMAT_VERSION {
            return Err(malformed(format!("unknown format version {}", bytes[VERSION_AT])));
        }
        let suite = Suite::from_id(bytes[SUITE_AT])
            .map_err(|_| malformed(format!("unknown suite id {}", bytes[SUITE_AT])))?;
        if bytes.len() < suite.overhead() {
            return Err(malformed(format!(
                "{} bytes is shorter than the {}-byte minimum of {suite}",
                bytes.len(),
                suite.overhead()
            )));
        }
        let (head, rest) = bytes.split_at(NONCE_AT + suite.nonce_len());
        let (ciphertext, tag) = rest.split_at(rest.len() - TAG_LEN);
        Ok(Sealed {
            suite,
            key_version: u32::from_le_bytes(
                head[KEY_VERSION_AT..NONCE_AT]
                    .try_into()
                    .map_err(|_| malformed("header".into()))?,
            ),
            header: &head[..BOUND_LEN],
            nonce: &head[NONCE_AT..],
            ciphertext,
            tag: tag.try_into().map_err(|_| malformed("tag".into()))?,
        })
    }

    /// Length of the plaintext inside.
    pub fn plaintext_len(&self) -> usize {
        self.ciphertext.len()
    }
}

/// The header for a new sealed value, and its length.
pub(crate) fn header(suite: Suite, key_version: u32, nonce: &Nonce) -> ([u8; MAX_HEADER_LEN], usize) {
    let mut h = [0u8; MAX_HEADER_LEN];
    h[VERSION_AT] = FORMAT_VERSION;
    h[SUITE_AT] = suite.id();
    h[KEY_VERSION_AT..NONCE_AT].copy_from_slice(&key_version.to_le_bytes());
    let n = nonce.as_slice();
    h[NONCE_AT..NONCE_AT + n.len()].copy_from_slice(n);
    (h, NONCE_AT + n.len())
}

/// Calls `f` with the associated data: the bound header prefix, then `aad`. Small
/// associated data stays on the stack.
pub(crate) fn with_full_aad<T>(header: &[u8], aad: &[u8], f: impl FnOnce(&[u8]) -> T) -> T {
    let bound = &header[..BOUND_LEN];
    let len = BOUND_LEN + aad.len();
    let mut stack = [0u8; 256];
    if len <= stack.len() {
        stack[..BOUND_LEN].copy_from_slice(bound);
        stack[BOUND_LEN..len].copy_from_slice(aad);
        f(&stack[..len])
    } else {
        let mut heap = Vec::with_capacity(len);
        heap.extend_from_slice(bound);
        heap.extend_from_slice(aad);
        f(&heap)
    }
}
