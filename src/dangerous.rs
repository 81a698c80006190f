//! The one door to settings that weaken protection.
//!
//! Each options type that has such settings offers them only through its `dangerous()`
//! method, which returns a [`Dangerous`] wrapper whose methods name what they give up:
//!
//! - [`crate::page::TablespaceOptions`]: `unencrypted()` — pages not encrypted at all,
//!   for measuring what encryption costs;
//! - [`crate::kv::StoreOptions`]: `rocksdb_options(..)` — raw RocksDB options, checked:
//!   options that would make RocksDB rewrite bytes of an existing file under the same
//!   keystream or bypass the encrypted file layer are refused when the store opens.
//!
//! A search for `dangerous()` finds every such setting in a code base.

/// Settings of `T` that weaken protection; see the module documentation.
#[derive(Debug, Clone)]
#[must_use]
pub struct Dangerous<T>(pub(crate) T);
