//! The file stream cipher: AES-256-CTR or SM4-CTR with a random 128-bit IV per file,
//! seekable to any byte offset.
//!
//! Invariant: a file's IV comes from the OS CSPRNG when the file is created, so no two
//! files share a keystream; offsets are positions in the file, so each byte of a file has
//! its own keystream byte. File-level CTR provides confidentiality only: integrity comes
//! from sealing values (and pages) with AEAD.
//! Not here: the file header that stores the IV (`kv::files`).

use aes::Aes256Enc;
use aes::cipher::consts::U16;
use aes::cipher::{Array, BlockCipherEncrypt, KeyInit};
use sm4::Sm4;

use super::{Backend, Suite};
use crate::error::{Error, Result};
use crate::secret::DataKey;

/// IV length of a file stream.
pub const STREAM_IV_LEN: usize = 16;

/// Counter blocks encrypted per batch (the AES-NI path pipelines them).
const BATCH: usize = 256;
/// The batch for short inputs.
const SMALL_BATCH: usize = 16;

enum Engine {
    Aes(Box<Aes256Enc>),
    Sm4(Box<Sm4>),
    #[cfg(feature = "aws-lc")]
    AwsLc(Box<aws_lc_rs::cipher::EncryptingKey>),
}

/// A CTR keystream for one file (NIST SP 800-38A CTR with a 128-bit big-endian counter
/// starting at the IV). `apply` takes `&self`, so one stream serves concurrent reads of
/// the same file, and encrypts counter blocks in batches without copying the key
/// schedule.
pub struct FileStream {
    engine: Engine,
    iv: u128,
}

impl FileStream {
    /// A stream for `key` (the suite's key length) and `iv`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a key of the wrong length.
    pub fn new(suite: Suite, key: &DataKey, iv: [u8; STREAM_IV_LEN]) -> Result<FileStream> {
        FileStream::with_backend(suite, key, iv, Backend::default())
    }

    /// As [`FileStream::new`], with an explicit AES backend (same keystream).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a key of the wrong length.
    pub fn with_backend(
        suite: Suite,
        key: &DataKey,
        iv: [u8; STREAM_IV_LEN],
        backend: Backend,
    ) -> Result<FileStream> {
        let bad = |_| Error::InvalidArgument(format!("{suite} file key has the wrong length"));
        let engine = match (suite, backend) {
            (Suite::Sm4Gcm, _) => Engine::Sm4(Box::new(Sm4::new_from_slice(key.expose()).map_err(bad)?)),
            // AEGIS-256 tables' files are streamed with AES-256-CTR.
            (Suite::Aes256Gcm | Suite::Aegis256, Backend::RustCrypto) => {
                Engine::Aes(Box::new(Aes256Enc::new_from_slice(key.expose()).map_err(bad)?))
            }
            #[cfg(feature = "aws-lc")]
            (Suite::Aes256Gcm | Suite::Aegis256, Backend::AwsLc) => {
                use aws_lc_rs::cipher::{AES_256, EncryptingKey, UnboundCipherKey};
                let rejected = |_| Error::InvalidArgument("AES-256 key rejected by aws-lc".into());
                let unbound = UnboundCipherKey::new(&AES_256, key.expose()).map_err(rejected)?;
                Engine::AwsLc(Box::new(EncryptingKey::ctr(unbound).map_err(rejected)?))
            }
        };
        Ok(FileStream {
            engine,
            iv: u128::from_be_bytes(iv),
        })
    }

    /// XORs `data` with the keystream at file position `offset` (encrypts or decrypts).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if the backend refuses (never for RustCrypto); `data` is
    /// then not to be used.
    pub fn apply(&self, offset: u64, data: &mut [u8]) -> Result<()> {
        match &self.engine {
            Engine::Aes(cipher) => ctr(&**cipher, self.iv, offset, data),
            Engine::Sm4(cipher) => ctr(&**cipher, self.iv, offset, data),
            #[cfg(feature = "aws-lc")]
            Engine::AwsLc(key) => return aws_lc_ctr(key, self.iv, offset, data),
        }
        Ok(())
    }
}

fn ctr<C: BlockCipherEncrypt<BlockSize = U16>>(cipher: &C, iv: u128, offset: u64, data: &mut [u8]) {
    let mut counter = iv.wrapping_add(u128::from(offset / 16));
    let mut skip = (offset % 16) as usize;
    // Small writes (a WAL record) need a few blocks; zero only what a call can use.
    let mut small = [Array::<u8, U16>::default(); SMALL_BATCH];
    let mut large;
    let blocks: &mut [Array<u8, U16>] = if (skip + data.len()).div_ceil(16) <= SMALL_BATCH {
        &mut small
    } else {
        large = [Array::<u8, U16>::default(); BATCH];
        &mut large
    };
    let mut rest = data;
    while !rest.is_empty() {
        // One batch covers a partial first block, whole blocks, and a partial last one.
        let n = (skip + rest.len()).div_ceil(16).min(blocks.len());
        for block in &mut blocks[..n] {
            *block = Array::from(counter.to_be_bytes());
            counter = counter.wrapping_add(1);
        }
        cipher.encrypt_blocks(&mut blocks[..n]);
        let keystream = &Array::slice_as_flattened(&blocks[..n])[skip..];
        let (chunk, tail) = rest.split_at_mut(keystream.len().min(rest.len()));
        xor(chunk, keystream);
        rest = tail;
        skip = 0;
    }
}

#[cfg(feature = "aws-lc")]
fn aws_lc_ctr(key: &aws_lc_rs::cipher::EncryptingKey, iv: u128, offset: u64, data: &mut [u8]) -> Result<()> {
    use aws_lc_rs::cipher::EncryptionContext;
    let run = |buf: &mut [u8], counter: u128| {
        key.less_safe_encrypt(buf, EncryptionContext::Iv128(counter.to_be_bytes().into()))
            .map(|_| ())
            .map_err(|_| Error::InvalidArgument("aws-lc refused a CTR operation".into()))
    };
    let mut counter = iv.wrapping_add(u128::from(offset / 16));
    let skip = (offset % 16) as usize;
    let mut rest = data;
    if skip != 0 && !rest.is_empty() {
        let mut block = [0u8; 16];
        run(&mut block, counter)?;
        let take = (16 - skip).min(rest.len());
        let (head, tail) = rest.split_at_mut(take);
        xor(head, &block[skip..]);
        rest = tail;
        counter = counter.wrapping_add(1);
    }
    if rest.is_empty() {
        return Ok(());
    }
    run(rest, counter)
}

/// `data ^= keystream` over the shorter of the two (vectorized by the compiler).
pub(crate) fn xor(data: &mut [u8], keystream: &[u8]) {
    for (d, k) in data.iter_mut().zip(keystream) {
        *d ^= k;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hex::{decode, encode};

    #[test]
    fn nist_sp800_38a_f5_5_ctr_aes256() {
        let key = DataKey::from_bytes(
            decode("603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4").unwrap(),
        );
        let iv: [u8; 16] = decode("f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff")
            .unwrap()
            .try_into()
            .unwrap();
        let stream = FileStream::new(Suite::Aes256Gcm, &key, iv).unwrap();
        let mut data = decode("6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e51").unwrap();
        stream.apply(0, &mut data).unwrap();
        assert_eq!(
            encode(&data),
            "601ec313775789a5b7a7f504bbf3d228f443e3ca4d62b59aca84e990cacaf5c5"
        );
    }

    #[cfg(feature = "aws-lc")]
    #[test]
    fn aws_lc_and_rustcrypto_streams_agree_at_every_offset() {
        let key = DataKey::generate(32).unwrap();
        for iv in [[7u8; 16], [0xff; 16]] {
            let rust = FileStream::with_backend(Suite::Aes256Gcm, &key, iv, Backend::RustCrypto).unwrap();
            let aws = FileStream::with_backend(Suite::Aes256Gcm, &key, iv, Backend::AwsLc).unwrap();
            for (offset, len) in [
                (0u64, 0usize),
                (0, 5),
                (3, 13),
                (4096, 4096),
                (4101, 5000),
                (15, 1),
                (17, 31),
            ] {
                let mut a: Vec<u8> = (0..len).map(|i| i as u8).collect();
                let mut b = a.clone();
                rust.apply(offset, &mut a).unwrap();
                aws.apply(offset, &mut b).unwrap();
                assert_eq!(a, b, "offset {offset} len {len}");
            }
        }
    }

    #[test]
    fn counter_wraps_at_2_to_128() {
        let key = DataKey::generate(32).unwrap();
        let stream = FileStream::new(Suite::Aes256Gcm, &key, [0xff; 16]).unwrap();
        let zero = FileStream::new(Suite::Aes256Gcm, &key, [0; 16]).unwrap();
        let mut a = [0u8; 32];
        stream.apply(0, &mut a).unwrap();
        let mut b = [0u8; 16];
        zero.apply(0, &mut b).unwrap();
        assert_eq!(a[16..], b);
    }

    #[test]
    fn any_offset_and_split_give_the_same_keystream() {
        for suite in Suite::ALL {
            let key = DataKey::generate(suite.key_len()).unwrap();
            let stream = FileStream::new(suite, &key, [9u8; 16]).unwrap();
            let plain: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
            let mut whole = plain.clone();
            stream.apply(4096, &mut whole).unwrap();
            let mut parts = plain.clone();
            let (a, b) = parts.split_at_mut(333);
            stream.apply(4096, a).unwrap();
            stream.apply(4096 + 333, b).unwrap();
            let mut bytewise = plain.clone();
            for (i, byte) in bytewise.iter_mut().enumerate().take(100) {
                stream.apply(4096 + i as u64, std::slice::from_mut(byte)).unwrap();
            }
            assert_eq!(whole[..100], bytewise[..100]);
            assert_eq!(whole, parts);
            stream.apply(4096, &mut whole).unwrap();
            assert_eq!(whole, plain);
        }
    }
}
