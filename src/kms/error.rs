//! Errors a KMS returns, with the one question a caller always has: will a retry help?

use std::fmt;

/// What kind of failure a KMS reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum KmsErrorKind {
    /// No such key or alias, or the key was destroyed.
    NotFound,
    /// The key is disabled.
    Disabled,
    /// The key is scheduled for deletion.
    PendingDeletion,
    /// The key has no key material yet (imported keys before their import).
    PendingImport,
    /// The key's imported material has expired.
    KeyMaterialExpired,
    /// The caller is not permitted to do this, or the KMS cannot be unlocked.
    AccessDenied,
    /// The ciphertext is damaged, belongs to another key, or its encryption context does
    /// not match (these are indistinguishable by design).
    InvalidCiphertext,
    /// The request can never succeed as made (too much data, a bad alias, an operation a
    /// key does not support).
    InvalidRequest,
    /// The KMS is rate-limiting the caller.
    Throttled,
    /// The KMS cannot be reached or is temporarily failing.
    Unavailable,
    /// The KMS failed internally (its own storage is unreadable, for example).
    Internal,
}

impl KmsErrorKind {
    /// Whether the same request may succeed later without anyone changing anything.
    pub fn is_retryable(self) -> bool {
        matches!(self, KmsErrorKind::Throttled | KmsErrorKind::Unavailable)
    }

    fn label(self) -> &'static str {
        match self {
            KmsErrorKind::NotFound => "not found",
            KmsErrorKind::Disabled => "key disabled",
            KmsErrorKind::PendingDeletion => "key pending deletion",
            KmsErrorKind::PendingImport => "key pending import",
            KmsErrorKind::KeyMaterialExpired => "key material expired",
            KmsErrorKind::AccessDenied => "access denied",
            KmsErrorKind::InvalidCiphertext => "invalid ciphertext",
            KmsErrorKind::InvalidRequest => "invalid request",
            KmsErrorKind::Throttled => "throttled",
            KmsErrorKind::Unavailable => "KMS unavailable",
            KmsErrorKind::Internal => "KMS internal error",
        }
    }
}

impl fmt::Display for KmsErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// A KMS failure: its kind, the key it concerns (if any), and a message a person can act
/// on. Never contains key material.
#[derive(Debug)]
pub struct KmsError {
    kind: KmsErrorKind,
    key: Option<String>,
    message: String,
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl KmsError {
    /// A new error.
    pub fn new(kind: KmsErrorKind, message: impl Into<String>) -> KmsError {
        KmsError {
            kind,
            key: None,
            message: message.into(),
            source: None,
        }
    }

    /// Names the key (id or alias) the error concerns.
    #[must_use]
    pub fn with_key(mut self, key: impl Into<String>) -> KmsError {
        self.key = Some(key.into());
        self
    }

    /// Attaches the underlying cause.
    #[must_use]
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> KmsError {
        self.source = Some(Box::new(source));
        self
    }

    /// The kind of failure.
    pub fn kind(&self) -> KmsErrorKind {
        self.kind
    }

    /// The key the error concerns, if known.
    pub fn key(&self) -> Option<&str> {
        self.key.as_deref()
    }

    /// The human-readable message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Whether the same request may succeed if retried later.
    pub fn is_retryable(&self) -> bool {
        self.kind.is_retryable()
    }
}

impl fmt::Display for KmsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.key {
            Some(key) => write!(f, "{} (key {key}): {}", self.kind, self.message),
            None => write!(f, "{}: {}", self.kind, self.message),
        }
    }
}

impl std::error::Error for KmsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}
