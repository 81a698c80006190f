//! The local KMS's state: keys, versions, aliases, and the rules of their lifecycle.
//!
//! Invariant: this struct is only ever persisted sealed under the root key (see
//! `root.rs`); its `Material` fields are the only place master-key bytes exist, and they
//! are wiped on drop.
//! Not here: persistence, locking, cryptography with the keys (`mod.rs`).

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use zeroize::Zeroizing;

use crate::kms::{
    KeyMetadata, KeySpec, KeyState, KeyVersionInfo, KmsError, KmsErrorKind, KmsResult, Origin, RotationInfo,
    Timestamp,
};
use crate::secret::DataKey;

/// Prefix of every alias.
pub(crate) const ALIAS_PREFIX: &str = "alias/";
/// Prefix of service-key aliases: `alias/acs/<service>`.
pub(crate) const SERVICE_PREFIX: &str = "alias/acs/";
/// Rotation interval of service keys.
pub(crate) const SERVICE_ROTATION_DAYS: u32 = 365;
pub(crate) const DAY: u64 = 86_400;

/// Secret bytes inside the sealed state. Serialized as hex only into the buffer that is
/// sealed under the root key. Crate-private; wiped on drop.
#[derive(Clone)]
pub(crate) struct Material(Zeroizing<Vec<u8>>);

impl Material {
    pub(crate) fn new(bytes: Vec<u8>) -> Material {
        Material(Zeroizing::new(bytes))
    }
    pub(crate) fn from_key(key: &DataKey) -> Material {
        Material::new(key.expose().to_vec())
    }
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Material {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Material(..)")
    }
}

impl Serialize for Material {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let text = Zeroizing::new(crate::hex::encode(&self.0));
        s.serialize_str(&text)
    }
}

impl<'de> Deserialize<'de> for Material {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Material, D::Error> {
        let text = Zeroizing::new(String::deserialize(d)?);
        crate::hex::decode(&text)
            .map(Material::new)
            .map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct VersionRecord {
    pub version: u32,
    pub created_at: Timestamp,
    pub material: Option<Material>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct PendingImport {
    pub token_id: String,
    pub expires_at: Timestamp,
    /// PKCS#8 DER of the RSA wrapping key.
    pub private_key: Material,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct KeyRecord {
    pub id: String,
    pub description: String,
    pub spec: KeySpec,
    pub origin: Origin,
    pub state: KeyState,
    pub created_at: Timestamp,
    /// `Some(service)` for a service key.
    pub service: Option<String>,
    pub versions: Vec<VersionRecord>,
    pub primary: u32,
    pub rotation_days: Option<u32>,
    pub last_rotated_at: Timestamp,
    pub deletion_at: Option<Timestamp>,
    pub material_expires_at: Option<Timestamp>,
    pub material_expired: bool,
    /// SHA-256 of imported material, so a re-import must bring the same material.
    pub material_check: Option<String>,
    pub import: Option<PendingImport>,
}

impl KeyRecord {
    /// Fails with the state's error kind unless the key is usable.
    pub(crate) fn require_usable(&self) -> KmsResult<()> {
        let err = |kind, msg: String| Err(KmsError::new(kind, msg).with_key(&self.id));
        match self.state {
            KeyState::Enabled => Ok(()),
            KeyState::Disabled => err(
                KmsErrorKind::Disabled,
                "the key is disabled; enable it to use it".into(),
            ),
            KeyState::PendingDeletion => err(
                KmsErrorKind::PendingDeletion,
                format!(
                    "the key is scheduled for deletion on {}; cancel the deletion and enable it to use it",
                    self.deletion_at.unwrap_or(Timestamp(0))
                ),
            ),
            KeyState::PendingImport if self.material_expired => err(
                KmsErrorKind::KeyMaterialExpired,
                format!(
                    "the imported key material expired on {}; import it again",
                    self.material_expires_at.unwrap_or(Timestamp(0))
                ),
            ),
            KeyState::PendingImport => err(
                KmsErrorKind::PendingImport,
                "the key has no key material yet; import it first".into(),
            ),
        }
    }

    /// The material of `version`.
    pub(crate) fn material(&self, version: u32) -> KmsResult<&Material> {
        self.versions
            .iter()
            .find(|v| v.version == version)
            .and_then(|v| v.material.as_ref())
            .ok_or_else(|| {
                KmsError::new(
                    KmsErrorKind::InvalidCiphertext,
                    format!("the key has no version {version}"),
                )
                .with_key(&self.id)
            })
    }

    pub(crate) fn rotation_due(&self, now: Timestamp) -> bool {
        self.state == KeyState::Enabled
            && self.origin == Origin::Kms
            && self
                .rotation_days
                .is_some_and(|d| now.0 >= self.last_rotated_at.0 + u64::from(d) * DAY)
    }

    pub(crate) fn add_version(&mut self, material: Material, now: Timestamp) -> u32 {
        let version = self.versions.iter().map(|v| v.version).max().unwrap_or(0) + 1;
        self.versions.push(VersionRecord {
            version,
            created_at: now,
            material: Some(material),
        });
        self.primary = version;
        self.last_rotated_at = now;
        version
    }

    pub(crate) fn metadata(&self, aliases: &BTreeMap<String, String>) -> KeyMetadata {
        KeyMetadata {
            key_id: self.id.clone(),
            aliases: aliases
                .iter()
                .filter(|(_, id)| **id == self.id)
                .map(|(a, _)| a.clone())
                .collect(),
            description: self.description.clone(),
            spec: self.spec,
            origin: self.origin,
            state: self.state,
            created_at: self.created_at,
            service_key: self.service.is_some(),
            versions: self
                .versions
                .iter()
                .filter(|v| v.material.is_some())
                .map(|v| KeyVersionInfo {
                    version: v.version,
                    created_at: v.created_at,
                })
                .collect(),
            primary_version: self.primary,
            rotation: RotationInfo {
                interval_days: self.rotation_days,
                last_rotated_at: self.last_rotated_at,
                next_rotation_at: self
                    .rotation_days
                    .filter(|_| self.origin == Origin::Kms)
                    .map(|d| Timestamp(self.last_rotated_at.0 + u64::from(d) * DAY)),
            },
            deletion_date: self.deletion_at,
            material_expires_at: self.material_expires_at,
            material_expired: self.material_expired,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct State {
    pub keys: BTreeMap<String, KeyRecord>,
    pub aliases: BTreeMap<String, String>,
    /// Destroyed key ids and when they were destroyed.
    pub destroyed: BTreeMap<String, Timestamp>,
    /// Accounts and principals of a served KMS (`tde kms serve`).
    #[serde(default)]
    pub governance: super::governance::Governance,
}

impl State {
    pub(crate) fn empty() -> State {
        State {
            keys: BTreeMap::new(),
            aliases: BTreeMap::new(),
            destroyed: BTreeMap::new(),
            governance: super::governance::Governance::default(),
        }
    }

    /// The id `name` (a key id or alias) refers to.
    pub(crate) fn resolve(&self, name: &str) -> KmsResult<&KeyRecord> {
        let id = if name.starts_with(ALIAS_PREFIX) {
            self.aliases.get(name).ok_or_else(|| {
                KmsError::new(KmsErrorKind::NotFound, format!("no alias {name}")).with_key(name)
            })?
        } else {
            name
        };
        self.keys.get(id).ok_or_else(|| match self.destroyed.get(id) {
            Some(at) => {
                KmsError::new(KmsErrorKind::NotFound, format!("the key was destroyed on {at}")).with_key(id)
            }
            None => KmsError::new(KmsErrorKind::NotFound, "no such key").with_key(id),
        })
    }

    pub(crate) fn resolve_mut(&mut self, name: &str) -> KmsResult<&mut KeyRecord> {
        let id = self.resolve(name)?.id.clone();
        self.keys
            .get_mut(&id)
            .ok_or_else(|| KmsError::new(KmsErrorKind::NotFound, "no such key").with_key(id))
    }

    /// Whether any time-based transition is due.
    pub(crate) fn transitions_due(&self, now: Timestamp) -> bool {
        self.keys.values().any(|k| {
            k.rotation_due(now)
                || (k.state == KeyState::PendingDeletion && k.deletion_at.is_some_and(|at| now >= at))
                || (!k.material_expired && k.material_expires_at.is_some_and(|at| now >= at))
                || k.import.as_ref().is_some_and(|i| now >= i.expires_at)
        })
    }

    /// Applies every due transition: destroys keys past their deletion date, removes
    /// expired imported material and import parameters, and rotates keys whose interval
    /// has passed. `new_material` supplies fresh key material for rotations.
    pub(crate) fn apply_transitions(
        &mut self,
        now: Timestamp,
        mut new_material: impl FnMut(KeySpec) -> KmsResult<Material>,
    ) -> KmsResult<()> {
        let doomed: Vec<String> = self
            .keys
            .values()
            .filter(|k| k.state == KeyState::PendingDeletion && k.deletion_at.is_some_and(|at| now >= at))
            .map(|k| k.id.clone())
            .collect();
        for id in doomed {
            self.keys.remove(&id);
            self.aliases.retain(|_, target| *target != id);
            self.destroyed.insert(id, now);
        }
        for key in self.keys.values_mut() {
            if !key.material_expired && key.material_expires_at.is_some_and(|at| now >= at) {
                for v in &mut key.versions {
                    v.material = None;
                }
                key.material_expired = true;
                key.primary = 0;
                if key.state != KeyState::PendingDeletion {
                    key.state = KeyState::PendingImport;
                }
            }
            if key.import.as_ref().is_some_and(|i| now >= i.expires_at) {
                key.import = None;
            }
            if key.rotation_due(now) {
                let material = new_material(key.spec)?;
                key.add_version(material, now);
            }
        }
        Ok(())
    }
}
