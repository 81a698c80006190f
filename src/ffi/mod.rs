//! The crate's only `unsafe` code: calls into C.
//!
//! Invariant: every `unsafe` block here has a `// SAFETY:` paragraph; the rest of the crate
//! is compiled under `#![deny(unsafe_code)]`.
//! Not here: any cryptography or policy; these are thin, audited bridges.
#![allow(unsafe_code)]

mod fork;
pub(crate) mod rocksdb;
#[cfg(feature = "sqlite")]
pub(crate) mod sqlite_vfs;

pub(crate) use fork::generation as fork_generation;

/// The effective user id of this process.
#[cfg(unix)]
pub(crate) fn effective_uid() -> u32 {
    // SAFETY: geteuid takes no arguments, touches no memory of ours and cannot fail.
    unsafe { libc::geteuid() }
}
