//! The root key of a local KMS, and the sealed envelope its state is stored in.
//!
//! Invariant: the state never reaches disk unsealed; the root key exists only in memory
//! (derived from a passphrase with Argon2id, or read from a key file of mode 0600).
//! Not here: what the state holds (`state.rs`).
//!
//! Security notes: a root key file next to the KMS directory protects against the state
//! file leaking alone (a copied backup, a stray upload); keep the root key file on
//! another device, or use a passphrase, to protect against the whole directory leaking.
//! The envelope's public fields (KMS id, how the root key is obtained) are bound into the
//! state's associated data.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::cipher::{AeadKey, Suite};
use crate::durable::Storage;
use crate::kms::{KmsError, KmsErrorKind, KmsResult};
use crate::secret::{DataKey, SecretBytes};

/// Length of a root key in bytes.
pub(crate) const ROOT_KEY_LEN: usize = 32;
/// Default name of the root key file inside the KMS directory.
pub const DEFAULT_ROOT_KEY_FILE: &str = "root.key";

/// Argon2id cost parameters (RFC 9106, second recommended option: 64 MiB, 3 passes).
const ARGON2_M_COST_KIB: u32 = 64 * 1024;
const ARGON2_T_COST: u32 = 3;
const ARGON2_P_COST: u32 = 1;

/// How the root key is obtained; stored in the clear beside the sealed state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub(crate) enum RootSpec {
    /// A 32-byte file; a relative path is relative to the KMS directory.
    KeyFile { path: PathBuf },
    /// Argon2id of a passphrase.
    Passphrase {
        #[serde(with = "crate::hex::serde")]
        salt: Vec<u8>,
        m_cost_kib: u32,
        t_cost: u32,
        p_cost: u32,
    },
}

impl RootSpec {
    pub(crate) fn new_passphrase() -> KmsResult<RootSpec> {
        let mut salt = vec![0u8; 16];
        crate::error::os_random(&mut salt).map_err(internal)?;
        Ok(RootSpec::Passphrase {
            salt,
            m_cost_kib: ARGON2_M_COST_KIB,
            t_cost: ARGON2_T_COST,
            p_cost: ARGON2_P_COST,
        })
    }
}

/// The persisted envelope: public fields and the sealed state.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Envelope {
    pub format: u32,
    pub kms_id: String,
    pub root: RootSpec,
    #[serde(with = "crate::hex::serde")]
    pub sealed_state: Vec<u8>,
}

pub(crate) const ENVELOPE_FORMAT: u32 = 1;

/// The unlocked root key.
pub(crate) struct RootKey {
    key: AeadKey,
}

impl RootKey {
    /// Derives or reads the root key as `spec` says. `passphrase` is used for passphrase
    /// specs; `key_file` overrides the recorded key file path.
    pub(crate) fn unlock(
        spec: &RootSpec,
        dir: &Path,
        key_file: Option<&Path>,
        passphrase: Option<&SecretBytes>,
    ) -> KmsResult<RootKey> {
        let bytes = match spec {
            RootSpec::KeyFile { path } => {
                let path = key_file.map_or_else(|| dir.join(path), Path::to_path_buf);
                read_key_file(&path)?
            }
            RootSpec::Passphrase {
                salt,
                m_cost_kib,
                t_cost,
                p_cost,
            } => {
                let passphrase = passphrase.ok_or_else(|| {
                    KmsError::new(
                        KmsErrorKind::AccessDenied,
                        "this local KMS is protected by a passphrase; set TDE_KMS_PASSPHRASE",
                    )
                })?;
                derive(passphrase, salt, *m_cost_kib, *t_cost, *p_cost)?
            }
        };
        let key = AeadKey::new(Suite::Aes256Gcm, 1, &DataKey::from_slice(&bytes)).map_err(internal)?;
        Ok(RootKey { key })
    }

    pub(crate) fn seal(&self, aad: &[u8], plaintext: &[u8]) -> KmsResult<Vec<u8>> {
        self.key.seal(aad, plaintext).map_err(internal)
    }

    /// Opens; a failure means the wrong root key (or tampering) and is reported as
    /// access denied.
    pub(crate) fn open(&self, aad: &[u8], sealed: &[u8], what: &str) -> KmsResult<Zeroizing<Vec<u8>>> {
        self.key.open(aad, sealed).map(Zeroizing::new).map_err(|_| {
            KmsError::new(
                KmsErrorKind::AccessDenied,
                format!("the root key does not open the {what}: wrong passphrase or root key file, or the file was modified"),
            )
        })
    }
}

/// Associated data for the sealed state.
pub(crate) fn state_aad(kms_id: &str, root: &RootSpec) -> KmsResult<Vec<u8>> {
    let mut aad = b"tde local kms state\0".to_vec();
    aad.extend_from_slice(kms_id.as_bytes());
    aad.push(0);
    aad.extend_from_slice(&serde_json::to_vec(root).map_err(internal)?);
    Ok(aad)
}

/// Creates a new random root key file (mode 0600) in `storage` under `name`.
pub(crate) fn create_key_file(storage: &dyn Storage, name: &str) -> KmsResult<()> {
    let mut bytes = Zeroizing::new([0u8; ROOT_KEY_LEN]);
    crate::error::os_random(&mut bytes[..]).map_err(internal)?;
    storage.create_private(name, &bytes[..]).map_err(|e| {
        KmsError::new(
            KmsErrorKind::Internal,
            format!("cannot create root key file {}", storage.path(name).display()),
        )
        .with_source(e)
    })
}

/// Creates a new random root key file (mode 0600) at an arbitrary path.
pub(crate) fn create_key_file_at(path: &Path) -> KmsResult<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).ok_or_else(|| {
        KmsError::new(
            KmsErrorKind::InvalidRequest,
            format!("bad root key file path {}", path.display()),
        )
    })?;
    create_key_file(&crate::durable::FsStorage::new(dir), name)
}

fn read_key_file(path: &Path) -> KmsResult<Zeroizing<Vec<u8>>> {
    let denied = |msg: String| KmsError::new(KmsErrorKind::AccessDenied, msg);
    let bytes = Zeroizing::new(
        std::fs::read(path)
            .map_err(|e| denied(format!("cannot read root key file {}", path.display())).with_source(e))?,
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)
            .map_err(|e| denied(format!("cannot stat root key file {}", path.display())).with_source(e))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(denied(format!(
                "root key file {} is accessible to other users (mode {:o}); run chmod 600 on it",
                path.display(),
                mode & 0o777
            )));
        }
    }
    if bytes.len() != ROOT_KEY_LEN {
        return Err(denied(format!(
            "root key file {} holds {} bytes, expected {ROOT_KEY_LEN}",
            path.display(),
            bytes.len()
        )));
    }
    Ok(bytes)
}

fn derive(passphrase: &SecretBytes, salt: &[u8], m: u32, t: u32, p: u32) -> KmsResult<Zeroizing<Vec<u8>>> {
    use argon2::{Algorithm, Argon2, Params, Version};
    if passphrase.is_empty() {
        return Err(KmsError::new(KmsErrorKind::AccessDenied, "empty passphrase"));
    }
    let params = Params::new(m, t, p, Some(ROOT_KEY_LEN))
        .map_err(|e| KmsError::new(KmsErrorKind::Internal, format!("bad Argon2id parameters: {e}")))?;
    let mut out = Zeroizing::new(vec![0u8; ROOT_KEY_LEN]);
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password_into(passphrase.expose(), salt, &mut out)
        .map_err(|e| KmsError::new(KmsErrorKind::Internal, format!("Argon2id failed: {e}")))?;
    Ok(out)
}

pub(crate) fn internal(e: impl std::error::Error + Send + Sync + 'static) -> KmsError {
    KmsError::new(KmsErrorKind::Internal, e.to_string()).with_source(e)
}
