//! The crate's one error type.
//!
//! Invariant: no variant carries key material, nonces or tags; an authentication failure
//! names *where* (table, key, page, file), never *what* the secret was.
//! Not here: KMS-specific detail, which lives in [`KmsError`] and is wrapped by
//! [`Error::Kms`].

use std::io;
use std::path::PathBuf;

use crate::kms::KmsError;

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in tde.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Authenticated decryption failed: the bytes were modified, moved to another place,
    /// or opened with the wrong key or associated data. No data is returned.
    #[error(
        "authentication failed for {location}: the data was modified, moved, or opened with the wrong key"
    )]
    Authentication {
        /// What failed, e.g. `table "users", key 0x6b31` or `sealed value`.
        location: String,
    },

    /// Bytes that should hold one of tde's formats are malformed, truncated, or of an
    /// unknown version.
    #[error("malformed {what}: {detail}")]
    Format {
        /// The format, e.g. `sealed value`.
        what: &'static str,
        /// What is wrong with it.
        detail: String,
    },

    /// A caller passed an argument that can never work (empty associated data, a key of
    /// the wrong length, an unknown suite name, ...). Retrying will not help.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// A key has sealed as many messages as is safe with random 96-bit nonces; it must be
    /// rotated before it seals again.
    #[error("key version {version} has reached its limit of {limit} seals; rotate it")]
    KeyExhausted {
        /// The exhausted key version.
        version: u32,
        /// The limit it reached.
        limit: u64,
    },

    /// A KMS refused or failed a request. [`KmsError::is_retryable`] says whether a retry
    /// can help.
    #[error(transparent)]
    Kms(#[from] KmsError),

    /// A file tde owns (keyring, KMS state, ...) failed its checksum or does not parse.
    /// Nothing was modified.
    #[error("{what} at {path} is corrupt: {detail}")]
    Corrupt {
        /// What the file is.
        what: &'static str,
        /// Where it is.
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
    },

    /// An I/O operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, e.g. `writing /data/kms/state.a`.
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// Data keys of a store could not be unwrapped at open; each failure names the
    /// table, the data key version and the master key. Nothing was written.
    #[error("cannot open the store: {} data key(s) could not be unwrapped: {}", failures.len(), join(failures))]
    KeysUnavailable {
        /// What failed.
        failures: Vec<crate::keyring::KeyFailure>,
    },

    /// A table name that the store does not have.
    #[error("no table named {0:?}")]
    NoSuchTable(String),

    /// The storage engine reported an error: `kind` says whether it saw corrupt bytes
    /// (damage or tampering: do not retry, restore from a backup), an I/O failure (disk
    /// full, device error), or something else; `message` is RocksDB's status text.
    #[error("storage engine ({kind}): {message}")]
    Engine {
        /// What kind of failure.
        kind: EngineErrorKind,
        /// The engine's message.
        message: String,
    },

    /// The table's master key was disabled, scheduled for deletion, deleted or is no
    /// longer permitted, as the key-state watch found: the table failed closed and its
    /// data keys were wiped from memory. Re-enable the key and reopen the store.
    #[error(
        "table {table:?} is unavailable: its master key {key} was revoked ({reason}); re-enable the key and reopen the store"
    )]
    KeyRevoked {
        /// The table.
        table: String,
        /// The master key.
        key: String,
        /// What the KMS reported.
        reason: String,
    },

    /// A long operation was cancelled; it resumes where it stopped when started again.
    #[error("cancelled; the operation resumes where it stopped when started again")]
    Cancelled,

    /// The buffer pool cannot make room: every frame is pinned (or one page is larger
    /// than the whole budget). Release page guards or give the pool a larger budget.
    #[error(
        "the buffer pool is full: {needed} bytes needed, budget {budget} bytes, and no frame can be evicted (all pinned)"
    )]
    BufferPoolFull {
        /// The pool's budget in bytes.
        budget: usize,
        /// Bytes the pool would need to hold.
        needed: usize,
    },

    /// An earlier write of this tablespace failed (for example a failed fsync), so what
    /// reached the disk is unknown. It refuses further writes; reopen it to recover from
    /// its journal.
    #[error(
        "tablespace {tablespace} refuses writes after an earlier failure ({cause}); reopen it to recover"
    )]
    Poisoned {
        /// The tablespace.
        tablespace: String,
        /// The failure that poisoned it.
        cause: String,
    },

    /// The operating system's random number generator failed.
    #[error("the operating system's random number generator failed: {0}")]
    Random(String),
}

impl Error {
    /// Whether the same call may succeed if retried later (KMS throttling or outage).
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Kms(e) => e.is_retryable(),
            Error::KeysUnavailable { failures } => failures.iter().all(|f| f.error.is_retryable()),
            Error::Engine {
                kind: EngineErrorKind::Busy,
                ..
            } => true,
            _ => false,
        }
    }

    /// Builds an [`Error::Io`] with a description of what was being done.
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// Replaces the location of an [`Error::Authentication`]; other errors pass through.
    #[must_use]
    pub fn at(self, location: impl Into<String>) -> Self {
        match self {
            Error::Authentication { .. } => Error::Authentication {
                location: location.into(),
            },
            other => other,
        }
    }
}

/// What kind of failure the storage engine reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum EngineErrorKind {
    /// Bytes on disk are corrupt: damaged, truncated or modified.
    Corruption,
    /// The operating system failed an I/O operation (disk full, device error).
    Io,
    /// The engine is busy or timed out; a retry may succeed.
    Busy,
    /// Anything else (a bad argument, an unsupported operation, an internal error).
    Other,
}

impl std::fmt::Display for EngineErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            EngineErrorKind::Corruption => "corruption",
            EngineErrorKind::Io => "I/O error",
            EngineErrorKind::Busy => "busy",
            EngineErrorKind::Other => "error",
        })
    }
}

impl Error {
    /// An engine error of kind `kind`.
    pub(crate) fn engine(kind: EngineErrorKind, message: impl Into<String>) -> Error {
        Error::Engine {
            kind,
            message: message.into(),
        }
    }
}

fn join(failures: &[crate::keyring::KeyFailure]) -> String {
    failures
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Fills `buf` from the operating system's CSPRNG.
pub(crate) fn os_random(buf: &mut [u8]) -> Result<()> {
    getrandom::fill(buf).map_err(|e| Error::Random(e.to_string()))
}
