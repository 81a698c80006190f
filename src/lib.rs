//! # tde — transparent data encryption for storage engines
//!
//! A storage engine keeps reading and writing as before; underneath, every table has its
//! own data key (DK), every byte that reaches disk is authenticated ciphertext, and the
//! DKs are wrapped by master keys held in a key management service (KMS). A wrapped DK
//! (EDK) is stored beside the data; the KMS unwraps it when the store is opened.
//!
//! ## Threat model, briefly
//!
//! - **Protected:** data files, backups and metadata at rest against anyone who can read
//!   or modify them without the KMS: they see ciphertext, and any modification, swap or
//!   replay of values between places is detected (AES-256-GCM or SM4-GCM with associated
//!   data that binds each ciphertext to its place).
//! - **Not protected:** a running process's memory, an attacker with the KMS's
//!   credentials, and traffic analysis (sizes and access patterns are visible).
//!
//! ## Layers
//!
//! - [`cipher`]: suites, the sealed format, nonce policy.
//! - [`kms`]: the KMS trait and the embedded [`kms::local::LocalKms`].
//! - [`secret`]: key types that wipe themselves and never print.
//! - [`keyring`]: table → wrapped data keys, the file a RocksDB store keeps them in.
//! - [`keys`]: the key lifecycle for every engine: unwrap at open, rotate, rewrap,
//!   migrate, retire, seal counts, retries and an audit record per KMS call; the
//!   [`keys::KeyLifecycle`] trait stores and tablespaces share.
//! - [`audit`]: the hash-chained trail of every KMS call a store makes.
//! - [`backup`]: ciphertext backups: incremental, verifiable without keys, restorable
//!   with the KMS.
//! - [`kv`]: the encrypted key-value store on RocksDB (a column family per table).
//! - [`page`]: the encrypted page store (a tablespace file per table) and its shared
//!   buffer pool, for engines that manage their own pages.
//!
//! ## Example
//!
//! ```
//! use tde::cipher::{AeadKey, Suite};
//! use tde::kms::{DataKeySpec, EncryptionContext, Kms, local::LocalKms};
//!
//! # fn main() -> tde::Result<()> {
//! let dir = tempfile::tempdir().map_err(|e| tde::Error::InvalidArgument(e.to_string()))?;
//! let kms = LocalKms::create(dir.path().join("kms"))?;
//! let context = EncryptionContext::new().with("table", "users");
//! let dk = kms.generate_data_key("alias/acs/tde", DataKeySpec::Aes256, &context)?;
//!
//! let key = AeadKey::new(Suite::Aes256Gcm, 1, &dk.plaintext)?;
//! let sealed = key.seal(b"users/42", b"alice")?;
//! assert_eq!(key.open(b"users/42", &sealed)?, b"alice");
//!
//! // Later, only the wrapped key is stored; the KMS unwraps it at open.
//! let again = kms.decrypt_data_key(&dk.wrapped, DataKeySpec::Aes256, &context)?;
//! let key = AeadKey::new(Suite::Aes256Gcm, 1, &again)?;
//! assert_eq!(key.open(b"users/42", &sealed)?, b"alice");
//! # Ok(())
//! # }
//! ```
#![deny(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]
#![warn(missing_docs)]

pub mod audit;
pub mod backup;
pub mod cipher;
mod clock;
pub mod dangerous;
mod durable;
pub mod engines;
mod error;
mod ffi;
mod hex;
pub mod keyring;
pub mod keys;
pub mod kms;
pub mod kv;
pub mod page;
pub mod secret;
#[cfg(feature = "server")]
pub mod server;
#[cfg(feature = "sqlite")]
pub mod sqlite;
#[cfg(feature = "testing")]
pub mod testing;

pub use error::{EngineErrorKind, Error, Result};
