//! Sealing and opening one data page.
//!
//! Invariant: a sealed page authenticates only at its own position (tablespace id, page
//! number) under the data key version recorded in its reserve; anything else is an
//! [`Error::Authentication`] naming the tablespace and page, and returns no bytes.
//!
//! Physical page layout (page size P, logical size L = P - R, where the reserve R is 32
//! bytes for the GCM suites and 52 for AEGIS-256, see [`reserve`]):
//!
//! ```text
//! offset     size  field
//! 0          L     ciphertext of the engine's page (the tablespace's suite, no padding)
//! L          4     data key version, u32 little-endian
//! L + 4      k     nonce, from the OS CSPRNG, fresh for every write of the page (k = 12
//!                  for the GCM suites, 32 for AEGIS-256)
//! L + 4 + k  16    tag
//! ```
//!
//! Associated data: `"tde page\0"`, tablespace id (16 bytes), page number (u64 LE), key
//! version (u32 LE). Swapping two pages, moving a page to another tablespace or relabelling
//! its key version fails authentication.

use std::collections::HashMap;
use std::sync::Arc;

use crate::cipher::{AeadKey, Detached, NONCE_LEN, Nonce, Suite, TAG_LEN};
use crate::error::{Error, Result};

const VERSION_AT: usize = 0;
const NONCE_AT: usize = VERSION_AT + 4;
/// Bytes at the end of every physical page that hold key version, nonce and tag, with a
/// GCM suite (and in unencrypted tablespaces); [`reserve`] gives every suite's.
pub const RESERVE: usize = NONCE_AT + NONCE_LEN + TAG_LEN;

/// The reserve of a tablespace sealed with `suite`.
pub const fn reserve(suite: Suite) -> usize {
    NONCE_AT + suite.nonce_len() + TAG_LEN
}

const AAD_LABEL: &[u8] = b"tde page\0";
const AAD_LEN: usize = AAD_LABEL.len() + 16 + 8 + 4;

/// How a tablespace's pages are protected.
#[derive(Debug)]
pub(crate) enum Sealing {
    /// AEAD under the tablespace's data key versions; new pages use `current`.
    Aead {
        keys: HashMap<u32, Arc<AeadKey>>,
        current: u32,
        /// Bytes of each page's reserve ([`reserve`] of the tablespace's suite).
        reserve: usize,
    },
    /// No encryption (benchmarks compare against this; see
    /// `TablespaceOptions::dangerous`). The reserve is zero.
    Off,
}

fn aad(tablespace: &[u8; 16], page: u64, version: u32) -> [u8; AAD_LEN] {
    let mut aad = [0u8; AAD_LEN];
    let (label, rest) = aad.split_at_mut(AAD_LABEL.len());
    label.copy_from_slice(AAD_LABEL);
    rest[..16].copy_from_slice(tablespace);
    rest[16..24].copy_from_slice(&page.to_le_bytes());
    rest[24..28].copy_from_slice(&version.to_le_bytes());
    aad
}

/// The data key version a sealed physical page with a reserve of `reserve` bytes names
/// (not authenticated).
pub(crate) fn stored_version(page: &[u8], reserve: usize) -> u32 {
    let reserve = &page[page.len() - reserve..];
    let mut word = [0u8; 4];
    word.copy_from_slice(&reserve[VERSION_AT..NONCE_AT]);
    u32::from_le_bytes(word)
}

impl Sealing {
    /// Bytes of each page's reserve.
    pub(crate) fn reserve(&self) -> usize {
        match self {
            Sealing::Aead { reserve, .. } => *reserve,
            Sealing::Off => RESERVE,
        }
    }

    /// Adds version `version` and makes it the one new pages are sealed with.
    pub(crate) fn make_current(&mut self, version: u32, key: Arc<AeadKey>) {
        if let Sealing::Aead { keys, current, .. } = self {
            keys.insert(version, key);
            *current = version;
        }
    }

    /// Forgets version `version`.
    pub(crate) fn forget(&mut self, version: u32) {
        if let Sealing::Aead { keys, .. } = self {
            keys.remove(&version);
        }
    }

    /// Forgets every version (the master key was revoked).
    pub(crate) fn forget_all(&mut self) {
        if let Sealing::Aead { keys, .. } = self {
            keys.clear();
        }
    }

    /// The key of version `version`, if held.
    pub(crate) fn key(&self, version: u32) -> Option<&Arc<AeadKey>> {
        match self {
            Sealing::Aead { keys, .. } => keys.get(&version),
            Sealing::Off => None,
        }
    }

    /// Seals `buf` (one physical page holding the plain logical page) in place.
    pub(crate) fn seal(&self, tablespace: &[u8; 16], page: u64, buf: &mut [u8]) -> Result<()> {
        let logical = buf.len() - self.reserve();
        let (body, reserve) = buf.split_at_mut(logical);
        match self {
            Sealing::Off => reserve.fill(0),
            Sealing::Aead { keys, current, .. } => {
                let key = keys.get(current).ok_or_else(|| {
                    Error::InvalidArgument(format!("no data key version {current} for sealing"))
                })?;
                let d = key.seal_detached(&aad(tablespace, page, *current), body)?;
                let tag_at = reserve.len() - TAG_LEN;
                reserve[VERSION_AT..NONCE_AT].copy_from_slice(&current.to_le_bytes());
                reserve[NONCE_AT..tag_at].copy_from_slice(d.nonce.as_slice());
                reserve[tag_at..].copy_from_slice(&d.tag);
            }
        }
        Ok(())
    }

    /// Opens `buf` (one physical page as read from disk) in place; on success the first
    /// `buf.len() - reserve` bytes are the plain page. On failure `buf` holds no plaintext.
    /// Returns the key version the page was sealed with.
    pub(crate) fn open(
        &self,
        tablespace: &[u8; 16],
        page: u64,
        buf: &mut [u8],
        what: &dyn Fn() -> String,
    ) -> Result<u32> {
        let logical = buf.len() - self.reserve();
        let (body, reserve) = buf.split_at_mut(logical);
        match self {
            Sealing::Off => Ok(0),
            Sealing::Aead { keys, .. } => {
                let mut word = [0u8; 4];
                word.copy_from_slice(&reserve[VERSION_AT..NONCE_AT]);
                let version = u32::from_le_bytes(word);
                let Some(key) = keys.get(&version) else {
                    body.fill(0);
                    return Err(Error::Authentication {
                        location: format!(
                            "{} (it names data key version {version}, which this tablespace does not have)",
                            what()
                        ),
                    });
                };
                let tag_at = reserve.len() - TAG_LEN;
                let mut detached = Detached {
                    nonce: Nonce::from_slice(&reserve[NONCE_AT..tag_at])?,
                    tag: [0; TAG_LEN],
                };
                detached.tag.copy_from_slice(&reserve[tag_at..]);
                key.open_detached(&aad(tablespace, page, version), &detached, body)
                    .map_err(|e| e.at(what()))?;
                Ok(version)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cipher::Suite;
    use crate::secret::DataKey;

    fn sealing(suite: Suite, version: u32) -> Sealing {
        let dk = DataKey::generate(suite.key_len()).unwrap();
        let key = AeadKey::new(suite, version, &dk).unwrap();
        Sealing::Aead {
            keys: HashMap::from([(version, Arc::new(key))]),
            current: version,
            reserve: reserve(suite),
        }
    }

    #[test]
    fn a_page_opens_only_where_it_was_sealed() {
        for suite in Suite::ALL {
            let s = sealing(suite, 1);
            let r = reserve(suite);
            assert_eq!(s.reserve(), r);
            let ts = [7u8; 16];
            let mut page = vec![0u8; 4096];
            page[..5].copy_from_slice(b"hello");
            let plain = page.clone();
            s.seal(&ts, 3, &mut page).unwrap();
            assert!(!page.windows(5).any(|w| w == b"hello"));
            assert_eq!(stored_version(&page, r), 1);
            let what = || "tablespace t page 3".to_owned();

            let mut ok = page.clone();
            s.open(&ts, 3, &mut ok, &what).unwrap();
            assert_eq!(ok[..4096 - r], plain[..4096 - r]);

            let mut moved = page.clone();
            let err = s.open(&ts, 4, &mut moved, &what).unwrap_err();
            assert!(err.to_string().contains("tablespace t page 3"), "{err}");
            assert!(moved[..4096 - r].iter().all(|&b| b == 0));

            let mut other = page.clone();
            assert!(s.open(&[8u8; 16], 3, &mut other, &what).is_err());

            for at in [0, 100, 4096 - r - 1, 4096 - r, 4096 - r + 4, 4096 - 20, 4095] {
                let mut flipped = page.clone();
                flipped[at] ^= 1;
                assert!(
                    matches!(
                        s.open(&ts, 3, &mut flipped, &what),
                        Err(Error::Authentication { .. })
                    ),
                    "{suite}: flip at {at}"
                );
            }
            let mut zero = vec![0u8; 4096];
            assert!(
                s.open(&ts, 3, &mut zero, &what).is_err(),
                "an all-zero page is not authentic"
            );
        }
    }
}
