//! The root key of a local KMS, and the sealed envelope its state is stored in.
//!
//! Invariant: the state never reaches disk unsealed; the root key exists only in memory
//! (derived from a passphrase with Argon2id, or read from a key file of mode 0600).
//! Not here: what the state holds (`state.rs`).
//!
//! Security notes: by default the root key file lives outside the KMS directory, in a
//! directory of its own beside it (`DIR.keys/root.key`, modes 0700 and 0600), so that
//! whoever can read the KMS directory cannot read the key; keep it on another device, or
//! use a passphrase, to protect against both leaking together. KMS directories made
//! before kept `DIR/root.key` inside, which protects against none of that: rotate the
//! root key into a file elsewhere (`tde kms rotate-root`, with `--root-key-file`). A key
//! file must be a regular file of exactly 32 bytes, owned by the user tde runs as and
//! private to it, so a file planted by someone else is refused. The envelope's public
//! fields (KMS id, how the root key is obtained) are bound into the state's associated
//! data, and a passphrase's Argon2id parameters are bounded before anything is computed.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::cipher::{AeadKey, Suite};
use crate::durable::Storage;
use crate::kms::{KmsError, KmsErrorKind, KmsResult};
use crate::secret::{DataKey, SecretBytes};

/// Length of a root key in bytes.
pub(crate) const ROOT_KEY_LEN: usize = 32;
/// Default name of the root key file (in `DIR.keys/` beside the KMS directory `DIR`).
pub const DEFAULT_ROOT_KEY_FILE: &str = "root.key";

/// The default root key file of the KMS in `dir`: `DIR.keys/root.key`.
pub fn default_key_file(dir: &Path) -> PathBuf {
    let name = dir
        .file_name()
        .map_or_else(|| "kms".into(), |n| n.to_string_lossy().into_owned());
    dir.with_file_name(format!("{name}.keys"))
        .join(DEFAULT_ROOT_KEY_FILE)
}

/// The default key file as recorded: relative to the KMS directory, so the two can be
/// moved together.
pub(crate) fn recorded_default(dir: &Path) -> PathBuf {
    let name = dir
        .file_name()
        .map_or_else(|| "kms".into(), |n| n.to_string_lossy().into_owned());
    PathBuf::from(format!("../{name}.keys/{DEFAULT_ROOT_KEY_FILE}"))
}

/// The key file a spec names (`override_path` wins); `None` for a passphrase.
pub(crate) fn key_file_of(spec: &RootSpec, dir: &Path, override_path: Option<&Path>) -> Option<PathBuf> {
    match spec {
        RootSpec::Passphrase { .. } => None,
        RootSpec::KeyFile { path } => Some(override_path.map_or_else(|| dir.join(path), Path::to_path_buf)),
    }
}

/// Where a root-key rotation writes the next key, beside the current one.
pub(crate) fn next_of(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".next");
    path.with_file_name(name)
}

pub(crate) fn has_next(path: &Path) -> bool {
    next_of(path).is_file()
}

/// Removes the next key of a rotation that never sealed anything under it.
pub(crate) fn discard_next(path: &Path) {
    let next = next_of(path);
    if next.is_file() {
        let _ = std::fs::remove_file(next);
    }
}

/// Writes a new random next key beside `path` and returns it unlocked.
pub(crate) fn write_next(path: &Path) -> KmsResult<RootKey> {
    discard_next(path);
    let next = next_of(path);
    create_key_file_at(&next)?;
    RootKey::from_bytes(&read_key_file(&next)?)
}

/// Makes the next key the key file (the state is already sealed under it).
pub(crate) fn promote_next(path: &Path) -> KmsResult<()> {
    let failed = |e: std::io::Error| {
        KmsError::new(
            KmsErrorKind::Internal,
            format!("cannot replace root key file {}", path.display()),
        )
        .with_source(e)
    };
    std::fs::rename(next_of(path), path).map_err(failed)?;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(failed)
}

/// Argon2id cost parameters (RFC 9106, second recommended option: 64 MiB, 3 passes).
const ARGON2_M_COST_KIB: u32 = 64 * 1024;
const ARGON2_T_COST: u32 = 3;
const ARGON2_P_COST: u32 = 1;
/// Bounds on recorded Argon2id parameters: they are read before anything is
/// authenticated, so a doctored envelope must not make tde allocate or compute without
/// bound (nor weaken the derivation below today's default memory).
const ARGON2_M_COST_RANGE: std::ops::RangeInclusive<u32> = (8 * 1024)..=(1024 * 1024);
const ARGON2_T_COST_RANGE: std::ops::RangeInclusive<u32> = 1..=16;
const ARGON2_P_COST_RANGE: std::ops::RangeInclusive<u32> = 1..=16;
const SALT_LEN_RANGE: std::ops::RangeInclusive<usize> = 16..=64;

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

/// Format 2: the sequence number is sealed with the state.
pub(crate) const ENVELOPE_FORMAT: u32 = 2;
/// Format 1: the state alone was sealed; read, and rewritten as format 2 at the next
/// change.
pub(crate) const LEGACY_FORMAT: u32 = 1;

/// The unlocked root key.
pub(crate) struct RootKey {
    key: AeadKey,
}

impl RootKey {
    /// Derives or reads the root key as `spec` says: from `key_file` for key-file specs,
    /// from `passphrase` for passphrase specs.
    pub(crate) fn unlock(
        spec: &RootSpec,
        key_file: Option<&Path>,
        passphrase: Option<&SecretBytes>,
    ) -> KmsResult<RootKey> {
        let bytes = match spec {
            RootSpec::KeyFile { .. } => {
                let path = key_file
                    .ok_or_else(|| KmsError::new(KmsErrorKind::AccessDenied, "no root key file was given"))?;
                read_key_file(path)?
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
        RootKey::from_bytes(&bytes)
    }

    fn from_bytes(bytes: &[u8]) -> KmsResult<RootKey> {
        let key = AeadKey::new(Suite::Aes256Gcm, 1, &DataKey::from_slice(bytes)).map_err(internal)?;
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

/// Creates a new random root key file (mode 0600) at an arbitrary path, and its
/// directory (mode 0700) if missing.
pub(crate) fn create_key_file_at(path: &Path) -> KmsResult<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !dir.exists() {
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder.create(dir).map_err(|e| {
            KmsError::new(
                KmsErrorKind::Internal,
                format!("cannot create the root key directory {}", dir.display()),
            )
            .with_source(e)
        })?;
    }
    let name = path.file_name().and_then(|n| n.to_str()).ok_or_else(|| {
        KmsError::new(
            KmsErrorKind::InvalidRequest,
            format!("bad root key file path {}", path.display()),
        )
    })?;
    create_key_file(&crate::durable::FsStorage::new(dir), name)
}

fn read_key_file(path: &Path) -> KmsResult<Zeroizing<Vec<u8>>> {
    use std::io::Read;
    let denied = |msg: String| KmsError::new(KmsErrorKind::AccessDenied, msg);
    let file = std::fs::File::open(path)
        .map_err(|e| denied(format!("cannot read root key file {}", path.display())).with_source(e))?;
    let meta = file
        .metadata()
        .map_err(|e| denied(format!("cannot stat root key file {}", path.display())).with_source(e))?;
    if !meta.is_file() {
        return Err(denied(format!(
            "root key file {} is not a regular file",
            path.display()
        )));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let mode = meta.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(denied(format!(
                "root key file {} is accessible to other users (mode {:o}); run chmod 600 on it",
                path.display(),
                mode & 0o777
            )));
        }
        let me = crate::ffi::effective_uid();
        if meta.uid() != me {
            return Err(denied(format!(
                "root key file {} belongs to user {}, not to the user tde runs as ({me}); refusing a key someone else could have planted",
                path.display(),
                meta.uid()
            )));
        }
    }
    let mut bytes = Zeroizing::new(Vec::with_capacity(ROOT_KEY_LEN + 1));
    file.take(ROOT_KEY_LEN as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| denied(format!("cannot read root key file {}", path.display())).with_source(e))?;
    if bytes.len() != ROOT_KEY_LEN {
        return Err(denied(format!(
            "root key file {} is not {ROOT_KEY_LEN} bytes long",
            path.display(),
        )));
    }
    Ok(bytes)
}

fn derive(passphrase: &SecretBytes, salt: &[u8], m: u32, t: u32, p: u32) -> KmsResult<Zeroizing<Vec<u8>>> {
    use argon2::{Algorithm, Argon2, Params, Version};
    if passphrase.is_empty() {
        return Err(KmsError::new(KmsErrorKind::AccessDenied, "empty passphrase"));
    }
    if !ARGON2_M_COST_RANGE.contains(&m)
        || !ARGON2_T_COST_RANGE.contains(&t)
        || !ARGON2_P_COST_RANGE.contains(&p)
        || !SALT_LEN_RANGE.contains(&salt.len())
    {
        return Err(KmsError::new(
            KmsErrorKind::AccessDenied,
            format!(
                "refusing recorded Argon2id parameters (memory {m} KiB, {t} passes, {p} lanes, {}-byte salt): outside the accepted bounds",
                salt.len()
            ),
        ));
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
