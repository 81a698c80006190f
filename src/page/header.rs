//! Page 0 of a tablespace: its identity and its envelope, so that the file plus the KMS
//! is enough to open it.
//!
//! Invariant: the header holds only public data (the EDKs are wrapped). A checksum
//! detects damage before the KMS is asked; once the data key is unwrapped, a GMAC under
//! a key derived from it authenticates every field, including the page count, so a
//! truncated file or an edited header is detected.
//!
//! Byte map (all integers little-endian; the rest of the page is zero):
//!
//! ```text
//! offset     size  field
//! 0          8     magic "TDEPAGE\0"
//! 8          4     format version (1)
//! 12         4     physical page size in bytes
//! 16         16    tablespace id (random)
//! 32         8     page count: physical pages in the file, header included
//! 40         4     length n of the metadata
//! 44         n     metadata, JSON: name, KMS, whether pages are encrypted, envelope
//!                  (master key, suite, data key versions with their EDKs, current version)
//! 44+n       12    MAC nonce
//! 56+n       16    MAC tag: GMAC over bytes 0..44+n under the header key
//! 72+n       32    SHA-256 of bytes 0..72+n
//! ```

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::cipher::{AeadKey, Detached, NONCE_LEN, Nonce, TAG_LEN};
use crate::error::{Error, Result};
use crate::keyring::Envelope;

/// Magic number at offset 0 of every tablespace file.
pub const MAGIC: [u8; 8] = *b"TDEPAGE\0";
/// Current header format version.
pub const FORMAT_VERSION: u32 = 1;

const MAGIC_AT: usize = 0;
const FORMAT_AT: usize = MAGIC_AT + 8;
const PAGE_SIZE_AT: usize = FORMAT_AT + 4;
const ID_AT: usize = PAGE_SIZE_AT + 4;
const COUNT_AT: usize = ID_AT + 16;
const META_LEN_AT: usize = COUNT_AT + 8;
const META_AT: usize = META_LEN_AT + 4;
/// Bytes after the metadata: MAC nonce, MAC tag, checksum.
const TRAILER: usize = NONCE_LEN + TAG_LEN + 32;
/// The smallest page size, which bounds the header.
const MIN_PAGE: usize = 4096;
const MAC_AAD_LABEL: &[u8] = b"tde tablespace header\0";

/// What the header records besides its fixed fields.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Meta {
    /// The tablespace's name (its file name when created).
    pub name: String,
    /// The KMS it was created with (URI or description).
    pub kms: String,
    /// Whether data pages are sealed. Only benchmarks create tablespaces without.
    pub encrypted: bool,
    /// Master key, suite and data key versions.
    pub envelope: Envelope,
}

/// A decoded header.
#[derive(Debug, Clone)]
pub struct Header {
    /// Physical page size.
    pub page_size: u32,
    /// Tablespace id.
    pub id: [u8; 16],
    /// Physical pages in the file, header included.
    pub page_count: u64,
    /// The rest.
    pub meta: Meta,
}

fn format_error(detail: impl Into<String>) -> Error {
    Error::Format {
        what: "tablespace header",
        detail: detail.into(),
    }
}

fn mac_aad(signed: &[u8]) -> Vec<u8> {
    let mut aad = MAC_AAD_LABEL.to_vec();
    aad.extend_from_slice(signed);
    aad
}

impl Header {
    /// Encodes the header into one page, authenticated under `mac_key`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if the metadata does not fit in 4 KiB.
    pub fn encode(&self, mac_key: &AeadKey) -> Result<Vec<u8>> {
        let meta = serde_json::to_vec(&self.meta).map_err(|e| Error::InvalidArgument(e.to_string()))?;
        if META_AT + meta.len() + TRAILER > MIN_PAGE {
            return Err(Error::InvalidArgument(format!(
                "tablespace metadata of {} bytes does not fit in its header (too many key versions?)",
                meta.len()
            )));
        }
        let mut page = vec![0u8; self.page_size as usize];
        page[MAGIC_AT..FORMAT_AT].copy_from_slice(&MAGIC);
        page[FORMAT_AT..PAGE_SIZE_AT].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        page[PAGE_SIZE_AT..ID_AT].copy_from_slice(&self.page_size.to_le_bytes());
        page[ID_AT..COUNT_AT].copy_from_slice(&self.id);
        page[COUNT_AT..META_LEN_AT].copy_from_slice(&self.page_count.to_le_bytes());
        page[META_LEN_AT..META_AT].copy_from_slice(&(meta.len() as u32).to_le_bytes());
        let mac_at = META_AT + meta.len();
        page[META_AT..mac_at].copy_from_slice(&meta);
        let mac = mac_key.seal_detached(&mac_aad(&page[..mac_at]), &mut [])?;
        page[mac_at..mac_at + NONCE_LEN].copy_from_slice(mac.nonce.as_slice());
        page[mac_at + NONCE_LEN..mac_at + NONCE_LEN + TAG_LEN].copy_from_slice(&mac.tag);
        let sum_at = mac_at + NONCE_LEN + TAG_LEN;
        let sum = Sha256::digest(&page[..sum_at]);
        page[sum_at..sum_at + 32].copy_from_slice(&sum);
        Ok(page)
    }

    /// Decodes a header page and checks its checksum (not yet its MAC: that needs the
    /// data key; see [`Header::verify`]).
    ///
    /// # Errors
    /// [`Error::Format`] for a wrong magic, an unknown version, a bad checksum or a
    /// malformed field.
    pub fn decode(page: &[u8]) -> Result<Header> {
        if page.len() < MIN_PAGE {
            return Err(format_error(format!("{} bytes, shorter than a page", page.len())));
        }
        if page[MAGIC_AT..FORMAT_AT] != MAGIC {
            return Err(format_error("not a tde tablespace (wrong magic number)"));
        }
        let u32_at = |at: usize| {
            let mut word = [0u8; 4];
            word.copy_from_slice(&page[at..at + 4]);
            u32::from_le_bytes(word)
        };
        let format = u32_at(FORMAT_AT);
        if format != FORMAT_VERSION {
            return Err(format_error(format!("unsupported format version {format}")));
        }
        let meta_len = u32_at(META_LEN_AT) as usize;
        if META_AT + meta_len + TRAILER > MIN_PAGE {
            return Err(format_error("metadata length out of range"));
        }
        let sum_at = META_AT + meta_len + NONCE_LEN + TAG_LEN;
        if Sha256::digest(&page[..sum_at])[..] != page[sum_at..sum_at + 32] {
            return Err(format_error("checksum mismatch (the header is damaged)"));
        }
        let page_size = u32_at(PAGE_SIZE_AT);
        PageSize::from_bytes(page_size as usize)?;
        let mut id = [0u8; 16];
        id.copy_from_slice(&page[ID_AT..COUNT_AT]);
        let mut count = [0u8; 8];
        count.copy_from_slice(&page[COUNT_AT..META_LEN_AT]);
        let meta: Meta = serde_json::from_slice(&page[META_AT..META_AT + meta_len])
            .map_err(|e| format_error(format!("metadata: {e}")))?;
        Ok(Header {
            page_size,
            id,
            page_count: u64::from_le_bytes(count),
            meta,
        })
    }

    /// Checks the header page's MAC under `mac_key`.
    ///
    /// # Errors
    /// [`Error::Authentication`] if any field was changed.
    pub fn verify(page: &[u8], mac_key: &AeadKey) -> Result<()> {
        let mut word = [0u8; 4];
        word.copy_from_slice(&page[META_LEN_AT..META_AT]);
        let mac_at = META_AT + u32::from_le_bytes(word) as usize;
        let mut mac = Detached {
            nonce: Nonce::from_slice(&page[mac_at..mac_at + NONCE_LEN])?,
            tag: [0; TAG_LEN],
        };
        mac.tag
            .copy_from_slice(&page[mac_at + NONCE_LEN..mac_at + NONCE_LEN + TAG_LEN]);
        mac_key.open_detached(&mac_aad(&page[..mac_at]), &mac, &mut [])
    }
}

/// Physical page sizes a tablespace can have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PageSize {
    /// 4 KiB.
    K4,
    /// 8 KiB.
    K8,
    /// 16 KiB. The default.
    #[default]
    K16,
    /// 32 KiB.
    K32,
    /// 64 KiB.
    K64,
}

impl PageSize {
    /// Every size, smallest first.
    pub const ALL: [PageSize; 5] = [
        PageSize::K4,
        PageSize::K8,
        PageSize::K16,
        PageSize::K32,
        PageSize::K64,
    ];

    /// Bytes per physical page.
    pub const fn bytes(self) -> usize {
        match self {
            PageSize::K4 => 4 << 10,
            PageSize::K8 => 8 << 10,
            PageSize::K16 => 16 << 10,
            PageSize::K32 => 32 << 10,
            PageSize::K64 => 64 << 10,
        }
    }

    /// The size of `bytes` bytes.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] unless `bytes` is 4, 8, 16, 32 or 64 KiB.
    pub fn from_bytes(bytes: usize) -> Result<PageSize> {
        PageSize::ALL
            .into_iter()
            .find(|s| s.bytes() == bytes)
            .ok_or_else(|| {
                Error::InvalidArgument(format!("page size {bytes}: expected 4, 8, 16, 32 or 64 KiB"))
            })
    }
}

impl std::str::FromStr for PageSize {
    type Err = Error;

    /// `4k`, `8k`, `16k`, `32k`, `64k` (or the number of bytes).
    fn from_str(s: &str) -> Result<PageSize> {
        let lower = s.trim().to_ascii_lowercase();
        let bytes = match lower.strip_suffix(['k']).or_else(|| lower.strip_suffix("kib")) {
            Some(kib) => kib.parse::<usize>().map(|k| k << 10),
            None => lower.parse::<usize>(),
        }
        .map_err(|_| Error::InvalidArgument(format!("page size {s:?}: expected 4k, 8k, 16k, 32k or 64k")))?;
        PageSize::from_bytes(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cipher::Suite;
    use crate::keyring::DkVersion;
    use crate::kms::Timestamp;
    use crate::secret::{DataKey, WrappedKey};

    fn header() -> Header {
        Header {
            page_size: 8192,
            id: [3; 16],
            page_count: 42,
            meta: Meta {
                name: "orders".into(),
                kms: "local:/k".into(),
                encrypted: true,
                envelope: Envelope {
                    table_id: 1,
                    cmk: "alias/acs/tde".into(),
                    suite: Suite::Aes256Gcm,
                    versions: vec![DkVersion {
                        version: 1,
                        edk: WrappedKey::from_bytes(vec![9; 120]),
                        cmk_id: "key-1".into(),
                        created_at: Timestamp(5),
                        seals: 0,
                    }],
                    current: 1,
                    retired: Vec::new(),
                    reencrypt: None,
                },
            },
        }
    }

    #[test]
    fn round_trip_checksum_and_mac() {
        let key = AeadKey::new(Suite::Aes256Gcm, 1, &DataKey::generate(32).unwrap()).unwrap();
        let page = header().encode(&key).unwrap();
        assert_eq!(page.len(), 8192);
        let back = Header::decode(&page).unwrap();
        assert_eq!(back.page_count, 42);
        assert_eq!(back.meta.name, "orders");
        Header::verify(&page, &key).unwrap();

        // Damage is caught by the checksum; a forged page count with a recomputed
        // checksum is caught by the MAC.
        let mut damaged = page.clone();
        damaged[COUNT_AT] ^= 1;
        assert!(matches!(Header::decode(&damaged), Err(Error::Format { .. })));
        let meta_len = serde_json::to_vec(&header().meta).unwrap().len();
        let sum_at = META_AT + meta_len + NONCE_LEN + TAG_LEN;
        let sum = Sha256::digest(&damaged[..sum_at]);
        damaged[sum_at..sum_at + 32].copy_from_slice(&sum);
        Header::decode(&damaged).unwrap();
        assert!(matches!(
            Header::verify(&damaged, &key),
            Err(Error::Authentication { .. })
        ));

        let other = AeadKey::new(Suite::Aes256Gcm, 1, &DataKey::generate(32).unwrap()).unwrap();
        assert!(Header::verify(&page, &other).is_err());
        assert!(Header::decode(&page[..100]).is_err());
    }

    #[test]
    fn page_sizes_parse() {
        assert_eq!("16k".parse::<PageSize>().unwrap(), PageSize::K16);
        assert_eq!("65536".parse::<PageSize>().unwrap(), PageSize::K64);
        assert_eq!("4KiB".parse::<PageSize>().unwrap(), PageSize::K4);
        assert!("12k".parse::<PageSize>().is_err());
        assert!("big".parse::<PageSize>().is_err());
    }
}
