//! Naming a KMS: `local:DIR` (or a bare path) for the embedded local KMS.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::Kms;
use super::local::LocalKms;
use crate::error::{Error, Result};

/// Where a KMS is.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum KmsUri {
    /// The embedded local KMS in a directory.
    Local(PathBuf),
}

impl KmsUri {
    /// Parses `local:DIR` or a bare path.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for an empty string or an unknown scheme.
    pub fn parse(text: &str) -> Result<KmsUri> {
        if text.is_empty() {
            return Err(Error::InvalidArgument("empty KMS URI".into()));
        }
        if let Some(dir) = text.strip_prefix("local:") {
            let dir = dir.strip_prefix("//").unwrap_or(dir);
            if dir.is_empty() {
                return Err(Error::InvalidArgument(
                    "local: needs a directory, e.g. local:/var/lib/tde/kms".into(),
                ));
            }
            return Ok(KmsUri::Local(PathBuf::from(dir)));
        }
        if let Some((scheme, _)) = text.split_once(':')
            && !scheme.is_empty()
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '+')
            && scheme.len() > 1
        {
            return Err(Error::InvalidArgument(format!(
                "unsupported KMS scheme {scheme:?}; this build supports local:DIR"
            )));
        }
        Ok(KmsUri::Local(PathBuf::from(text)))
    }

    /// The local KMS directory, for `Local`.
    pub fn local_dir(&self) -> Option<&Path> {
        match self {
            KmsUri::Local(dir) => Some(dir),
        }
    }
}

impl fmt::Display for KmsUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KmsUri::Local(dir) => write!(f, "local:{}", dir.display()),
        }
    }
}

/// The default local KMS directory: `$TDE_HOME/kms` if set, else
/// `$XDG_DATA_HOME/tde/kms`, else `$HOME/.local/share/tde/kms`.
///
/// # Errors
/// [`Error::InvalidArgument`] if none of those variables is set.
pub fn default_local_dir() -> Result<PathBuf> {
    let non_empty = |name: &str| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(home) = non_empty("TDE_HOME") {
        return Ok(home.join("kms"));
    }
    if let Some(data) = non_empty("XDG_DATA_HOME") {
        return Ok(data.join("tde").join("kms"));
    }
    if let Some(home) = non_empty("HOME") {
        return Ok(home.join(".local").join("share").join("tde").join("kms"));
    }
    Err(Error::InvalidArgument(
        "no KMS given and no home directory to put the default one in; pass --kms or set TDE_KMS".into(),
    ))
}

/// Opens the KMS a URI names. A local KMS is unlocked with its root key file, or with
/// the passphrase in `TDE_KMS_PASSPHRASE`.
///
/// # Errors
/// As [`LocalKms::open`]: the directory must already hold a KMS.
pub fn open(uri: &KmsUri) -> Result<Arc<dyn Kms>> {
    match uri {
        KmsUri::Local(dir) => Ok(Arc::new(LocalKms::open(dir)?)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_local_uris_and_paths() {
        assert_eq!(KmsUri::parse("local:/a/b").unwrap(), KmsUri::Local("/a/b".into()));
        assert_eq!(
            KmsUri::parse("local:///a/b").unwrap(),
            KmsUri::Local("/a/b".into())
        );
        assert_eq!(KmsUri::parse("/a/b").unwrap(), KmsUri::Local("/a/b".into()));
        assert_eq!(KmsUri::parse("rel/dir").unwrap(), KmsUri::Local("rel/dir".into()));
        assert!(KmsUri::parse("aws-kms://eu").is_err());
        assert!(KmsUri::parse("local:").is_err());
        assert!(KmsUri::parse("").is_err());
        assert_eq!(KmsUri::parse("local:/x").unwrap().to_string(), "local:/x");
    }
}
