//! The vocabulary every KMS speaks: encryption contexts, key specs and states, metadata.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::{Duration, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::secret::{DataKey, WrappedKey};

/// Most plaintext a KMS encrypts directly with a master key; larger data needs a data
/// key (envelope encryption).
pub const MAX_DIRECT_PLAINTEXT: usize = 6 * 1024;

/// Key-value pairs a KMS binds to a ciphertext as associated data: decrypting needs the
/// exact same pairs. tde puts the store, table and key version here so a wrapped key
/// cannot be moved to another table or store.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EncryptionContext(BTreeMap<String, String>);

impl EncryptionContext {
    /// An empty context.
    pub fn new() -> EncryptionContext {
        EncryptionContext::default()
    }

    /// Adds (or replaces) a pair.
    #[must_use]
    pub fn with(mut self, key: impl Into<String>, value: impl Into<String>) -> EncryptionContext {
        self.0.insert(key.into(), value.into());
        self
    }

    /// Adds (or replaces) a pair in place.
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<String>) {
        self.0.insert(key.into(), value.into());
    }

    /// The pairs, sorted by key.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Whether there are no pairs.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The value of `key`, if it is there.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    /// A canonical, unambiguous byte encoding (sorted pairs, each string length-prefixed)
    /// for use as associated data.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&(self.0.len() as u32).to_le_bytes());
        for (k, v) in &self.0 {
            for s in [k, v] {
                out.extend_from_slice(&(s.len() as u32).to_le_bytes());
                out.extend_from_slice(s.as_bytes());
            }
        }
        out
    }
}

impl fmt::Display for EncryptionContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (k, v) in &self.0 {
            if !first {
                f.write_str(",")?;
            }
            first = false;
            write!(f, "{k}={v}")?;
        }
        Ok(())
    }
}

/// Size of a data key to generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataKeySpec {
    /// 32 bytes, for AES-256-GCM.
    Aes256,
    /// 16 bytes, for SM4-GCM.
    Sm4,
}

impl DataKeySpec {
    /// Key length in bytes.
    pub fn key_len(self) -> usize {
        match self {
            DataKeySpec::Aes256 => 32,
            DataKeySpec::Sm4 => 16,
        }
    }
}

impl From<crate::cipher::Suite> for DataKeySpec {
    fn from(suite: crate::cipher::Suite) -> DataKeySpec {
        match suite {
            crate::cipher::Suite::Aes256Gcm | crate::cipher::Suite::Aegis256 => DataKeySpec::Aes256,
            crate::cipher::Suite::Sm4Gcm => DataKeySpec::Sm4,
        }
    }
}

/// A data key as `GenerateDataKey` returns it: plaintext for use in memory now, wrapped
/// for storing beside the data.
#[derive(Debug)]
pub struct GeneratedDataKey {
    /// The id of the master key that wrapped it (aliases resolved).
    pub key_id: String,
    /// The plaintext data key. Never persist it.
    pub plaintext: DataKey,
    /// The wrapped data key (EDK). Store it.
    pub wrapped: WrappedKey,
}

/// The algorithm of a master key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeySpec {
    /// AES-256; wraps with AES-256-GCM.
    #[serde(rename = "aes-256")]
    Aes256,
    /// SM4; wraps with SM4-GCM.
    Sm4,
}

impl KeySpec {
    /// Key material length in bytes.
    pub fn material_len(self) -> usize {
        match self {
            KeySpec::Aes256 => 32,
            KeySpec::Sm4 => 16,
        }
    }

    /// The suite used to wrap with a key of this spec.
    pub fn suite(self) -> crate::cipher::Suite {
        match self {
            KeySpec::Aes256 => crate::cipher::Suite::Aes256Gcm,
            KeySpec::Sm4 => crate::cipher::Suite::Sm4Gcm,
        }
    }
}

impl FromStr for KeySpec {
    type Err = crate::Error;
    fn from_str(s: &str) -> crate::Result<KeySpec> {
        match s.to_ascii_lowercase().as_str() {
            "aes-256" | "aes256" | "aes_256" => Ok(KeySpec::Aes256),
            "sm4" | "sm4-128" | "sm4_128" => Ok(KeySpec::Sm4),
            _ => Err(crate::Error::InvalidArgument(format!(
                "unknown key spec {s:?}; expected aes-256 or sm4"
            ))),
        }
    }
}

impl fmt::Display for KeySpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeySpec::Aes256 => "aes-256",
            KeySpec::Sm4 => "sm4",
        })
    }
}

/// Where a master key's material came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Origin {
    /// Generated by the KMS.
    Kms,
    /// Imported by the user (bring your own key).
    External,
}

impl FromStr for Origin {
    type Err = crate::Error;
    fn from_str(s: &str) -> crate::Result<Origin> {
        match s.to_ascii_lowercase().as_str() {
            "kms" | "aws_kms" => Ok(Origin::Kms),
            "external" => Ok(Origin::External),
            _ => Err(crate::Error::InvalidArgument(format!(
                "unknown key origin {s:?}; expected kms or external"
            ))),
        }
    }
}

/// The lifecycle state of a master key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyState {
    /// Usable.
    Enabled,
    /// Refuses every cryptographic operation until enabled again.
    Disabled,
    /// Refuses every cryptographic operation; destroyed at its deletion date unless the
    /// deletion is cancelled.
    PendingDeletion,
    /// Has no key material (an imported key before its import, or after its material
    /// expired).
    PendingImport,
}

impl fmt::Display for KeyState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// Seconds since the Unix epoch, shown and serialized as RFC 3339 (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub u64);

impl Timestamp {
    /// Parses RFC 3339, e.g. `2027-01-31T12:00:00Z`.
    ///
    /// # Errors
    /// [`crate::Error::InvalidArgument`] if it does not parse or is before 1970.
    pub fn parse_rfc3339(text: &str) -> crate::Result<Timestamp> {
        let t = humantime::parse_rfc3339_weak(text)
            .map_err(|e| crate::Error::InvalidArgument(format!("{text:?} is not an RFC 3339 time: {e}")))?;
        let secs = t
            .duration_since(UNIX_EPOCH)
            .map_err(|_| crate::Error::InvalidArgument(format!("{text:?} is before 1970")))?;
        Ok(Timestamp(secs.as_secs()))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = UNIX_EPOCH + Duration::from_secs(self.0);
        write!(f, "{}", humantime::format_rfc3339_seconds(t))
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Timestamp, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Timestamp::parse_rfc3339(&text).map_err(serde::de::Error::custom)
    }
}

/// One version of a master key's material.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyVersionInfo {
    /// Version number, from 1.
    pub version: u32,
    /// When it was created (or imported).
    pub created_at: Timestamp,
}

/// Automatic rotation settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RotationInfo {
    /// Rotation interval in days, if automatic rotation is on.
    pub interval_days: Option<u32>,
    /// When the primary version was last changed.
    pub last_rotated_at: Timestamp,
    /// When the next automatic rotation is due.
    pub next_rotation_at: Option<Timestamp>,
}

/// What a KMS says about a master key. Contains no key material.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyMetadata {
    /// The key id.
    pub key_id: String,
    /// Aliases pointing at the key.
    pub aliases: Vec<String>,
    /// Free text.
    pub description: String,
    /// Algorithm.
    pub spec: KeySpec,
    /// Where the material came from.
    pub origin: Origin,
    /// Lifecycle state.
    pub state: KeyState,
    /// When the key was created.
    pub created_at: Timestamp,
    /// Whether this is a service key (created on first use of `alias/acs/<service>`;
    /// cannot be disabled, deleted or imported into).
    pub service_key: bool,
    /// Versions whose material the KMS holds.
    pub versions: Vec<KeyVersionInfo>,
    /// The version used for new encryptions (0 while pending import).
    pub primary_version: u32,
    /// Rotation settings.
    pub rotation: RotationInfo,
    /// When the key will be destroyed, if deletion is scheduled.
    pub deletion_date: Option<Timestamp>,
    /// When imported material expires, if it does.
    pub material_expires_at: Option<Timestamp>,
    /// Whether imported material has expired (and was removed).
    pub material_expired: bool,
}
