//! HashiCorp Vault / OpenBao Transit: `vault-transit:` (address from `VAULT_ADDR`) or
//! `vault-transit:https://HOST:PORT`, with `?mount=NAME` (default `transit`) and
//! `?namespace=NS` (or `VAULT_NAMESPACE`). The token comes from `VAULT_TOKEN`, a CA
//! certificate from `VAULT_CACERT`; plain `http://` is accepted for loopback addresses
//! only.
//!
//! Transit's `datakey` and `rewrap` take a key-derivation `context`, not associated data,
//! so tde generates data keys itself (from the OS CSPRNG) and wraps them with `encrypt`,
//! the encryption context as `associated_data`; it unwraps with `decrypt`, and rewraps
//! with `decrypt` + `encrypt`. A wrapped key is `tdevt1:NAME:vault:vN:...`: the Transit
//! key's name and Transit's ciphertext, so `decrypt` needs no key id.
//!
//! Transit has no disabled state. A key is stopped by policy (HTTP 403 → access denied),
//! by a `min_decryption_version` above the version that wrapped (→ disabled), or by
//! deletion (→ not found). 429 → throttled; 5xx, timeouts and connection failures →
//! unavailable; a ciphertext that does not authenticate → invalid ciphertext.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};

use super::{
    DataKeySpec, EncryptionContext, GeneratedDataKey, KeyMetadata, KeySpec, KeyState, KeyVersionInfo, Kms,
    KmsError, KmsErrorKind, KmsResult, Origin, RotationInfo, Timestamp,
};
use crate::error::{Error, Result};
use crate::secret::SecretBytes;

/// Longest a call may take, connection included.
const CALL_TIMEOUT: Duration = Duration::from_secs(15);
/// The largest response read.
const MAX_RESPONSE: u64 = 1 << 20;
/// Most plaintext `encrypt` takes (Transit's own limit is the request size; tde wraps
/// data keys and small secrets only).
pub const MAX_ENCRYPT_PLAINTEXT: usize = 32 * 1024;
const BLOB_PREFIX: &str = "tdevt1:";

/// A Vault or OpenBao Transit secrets engine.
pub struct VaultTransit {
    agent: ureq::Agent,
    addr: String,
    mount: String,
    namespace: Option<String>,
    token: SecretBytes,
    uri: String,
}

impl std::fmt::Debug for VaultTransit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VaultTransit")
            .field("uri", &self.uri)
            .finish_non_exhaustive()
    }
}

/// Whether `addr` (`http://HOST[:PORT]`) names a loopback host.
fn is_loopback(addr: &str) -> bool {
    let rest = addr.trim_start_matches("http://");
    let host = match rest.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => rest.split([':', '/']).next().unwrap_or_default(),
    };
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// A Transit key name from a key id or `alias/NAME`; names are plain.
fn key_name(key: &str) -> KmsResult<&str> {
    let name = key.strip_prefix("alias/").unwrap_or(key);
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && !name.starts_with('.');
    if ok {
        Ok(name)
    } else {
        Err(KmsError::new(
            KmsErrorKind::InvalidRequest,
            format!("{key:?} is not a Transit key name (letters, digits, '-', '_', '.')"),
        )
        .with_key(key))
    }
}

impl VaultTransit {
    /// Connects to the Transit engine at `addr` (default: `VAULT_ADDR`), under `mount`
    /// (default `transit`) and `namespace` (default: `VAULT_NAMESPACE`), with the token in
    /// `VAULT_TOKEN` and the CA certificate in `VAULT_CACERT` if set. Makes no call.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a missing address or token, plain HTTP to a host
    /// that is not loopback, or an unreadable CA certificate.
    pub fn connect(addr: Option<&str>, mount: Option<&str>, namespace: Option<&str>) -> Result<VaultTransit> {
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let addr = addr
            .map(str::to_owned)
            .or_else(|| env("VAULT_ADDR"))
            .ok_or_else(|| {
                Error::InvalidArgument(
                    "vault-transit: no address; set VAULT_ADDR or use vault-transit:https://HOST:PORT".into(),
                )
            })?;
        let addr = addr.trim_end_matches('/').to_owned();
        if addr.starts_with("http://") {
            if !is_loopback(&addr) {
                return Err(Error::InvalidArgument(format!(
                    "vault-transit: plain HTTP is accepted for loopback addresses only, not {addr}"
                )));
            }
        } else if !addr.starts_with("https://") {
            return Err(Error::InvalidArgument(format!(
                "vault-transit: the address must start with https:// (or http:// for loopback), not {addr:?}"
            )));
        }
        let mount = mount.unwrap_or("transit").trim_matches('/').to_owned();
        if mount.is_empty()
            || !mount
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_/.".contains(&b))
        {
            return Err(Error::InvalidArgument(format!(
                "vault-transit: bad mount {mount:?}"
            )));
        }
        let namespace = namespace.map(str::to_owned).or_else(|| env("VAULT_NAMESPACE"));
        let token = env("VAULT_TOKEN")
            .ok_or_else(|| Error::InvalidArgument("vault-transit: set VAULT_TOKEN".into()))?;
        let mut tls = ureq::tls::TlsConfig::builder();
        if let Some(ca) = env("VAULT_CACERT") {
            let pem = std::fs::read(&ca).map_err(|e| Error::io(format!("reading VAULT_CACERT {ca}"), e))?;
            let certs: Vec<ureq::tls::Certificate<'static>> = ureq::tls::parse_pem(&pem)
                .filter_map(|item| match item {
                    Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                    _ => None,
                })
                .collect();
            if certs.is_empty() {
                return Err(Error::InvalidArgument(format!(
                    "VAULT_CACERT {ca} holds no PEM certificate"
                )));
            }
            tls = tls.root_certs(ureq::tls::RootCerts::new_with_certs(&certs));
        }
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(CALL_TIMEOUT))
            .http_status_as_error(false)
            .tls_config(tls.build())
            .build()
            .into();
        let mut uri = format!("vault-transit:{addr}");
        let mut params = Vec::new();
        if mount != "transit" {
            params.push(format!("mount={mount}"));
        }
        if let Some(ns) = &namespace {
            params.push(format!("namespace={ns}"));
        }
        if !params.is_empty() {
            uri.push('?');
            uri.push_str(&params.join("&"));
        }
        Ok(VaultTransit {
            agent,
            addr,
            mount,
            namespace,
            token: SecretBytes::new(token.into_bytes()),
            uri,
        })
    }

    /// Calls `path` (below the mount) with `body` (POST) or without (GET); the `data`
    /// object of the answer.
    fn call(&self, path: &str, body: Option<&Value>, key: &str) -> KmsResult<Value> {
        let url = format!("{}/v1/{}/{path}", self.addr, self.mount);
        let token = std::str::from_utf8(self.token.expose()).unwrap_or_default();
        let outcome = match body {
            Some(body) => {
                let mut request = self
                    .agent
                    .post(&url)
                    .header("X-Vault-Token", token)
                    .header("Content-Type", "application/json");
                if let Some(ns) = &self.namespace {
                    request = request.header("X-Vault-Namespace", ns);
                }
                request.send(body.to_string())
            }
            None => {
                let mut request = self.agent.get(&url).header("X-Vault-Token", token);
                if let Some(ns) = &self.namespace {
                    request = request.header("X-Vault-Namespace", ns);
                }
                request.call()
            }
        };
        let mut response = outcome.map_err(|e| transport_error(&e).with_key(key))?;
        let status = response.status().as_u16();
        let text = response
            .body_mut()
            .with_config()
            .limit(MAX_RESPONSE)
            .read_to_string()
            .map_err(|e| {
                KmsError::new(
                    KmsErrorKind::Unavailable,
                    format!("reading Transit's answer: {e}"),
                )
            })?;
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if (200..300).contains(&status) {
            return Ok(value.get("data").cloned().unwrap_or(Value::Null));
        }
        let errors = value
            .get("errors")
            .and_then(Value::as_array)
            .map(|e| e.iter().filter_map(Value::as_str).collect::<Vec<_>>().join("; "))
            .unwrap_or_default();
        Err(status_error(status, &errors).with_key(key))
    }

    fn encrypt_with(&self, key: &str, plaintext: &[u8], context: &EncryptionContext) -> KmsResult<Vec<u8>> {
        let name = key_name(key)?;
        let body = json!({
            "plaintext": B64.encode(plaintext),
            "associated_data": B64.encode(context.canonical_bytes()),
        });
        let data = self.call(&format!("encrypt/{name}"), Some(&body), key)?;
        let ciphertext = data
            .get("ciphertext")
            .and_then(Value::as_str)
            .ok_or_else(|| KmsError::new(KmsErrorKind::Internal, "Transit returned no ciphertext"))?;
        Ok(format!("{BLOB_PREFIX}{name}:{ciphertext}").into_bytes())
    }
}

/// A blob's (Transit key name, Transit ciphertext). A blob is hostile input: the name is
/// checked before it becomes part of a URL.
fn parse_blob(blob: &[u8]) -> KmsResult<(&str, &str)> {
    let invalid = || KmsError::new(KmsErrorKind::InvalidCiphertext, "not a Transit-wrapped blob");
    let text = std::str::from_utf8(blob).map_err(|_| invalid())?;
    let rest = text.strip_prefix(BLOB_PREFIX).ok_or_else(invalid)?;
    let (name, ciphertext) = rest.split_once(':').ok_or_else(invalid)?;
    let name = key_name(name).map_err(|_| invalid())?;
    if !ciphertext.starts_with("vault:v") || ciphertext.len() > 64 * 1024 {
        return Err(invalid());
    }
    Ok((name, ciphertext))
}

fn transport_error(e: &ureq::Error) -> KmsError {
    let kind = match e {
        // A certificate that does not verify or an address that cannot work: retrying
        // changes nothing.
        ureq::Error::Tls(_)
        | ureq::Error::Rustls(_)
        | ureq::Error::Pem(_)
        | ureq::Error::BadUri(_)
        | ureq::Error::RequireHttpsOnly(_)
        | ureq::Error::InvalidProxyUrl => KmsErrorKind::InvalidRequest,
        _ => KmsErrorKind::Unavailable,
    };
    KmsError::new(kind, format!("Transit: {e}"))
}

fn status_error(status: u16, errors: &str) -> KmsError {
    let lower = errors.to_ascii_lowercase();
    let kind = match status {
        403 => KmsErrorKind::AccessDenied,
        404 => KmsErrorKind::NotFound,
        429 => KmsErrorKind::Throttled,
        500..=599 => KmsErrorKind::Unavailable,
        _ if lower.contains("disallowed by policy") => KmsErrorKind::Disabled,
        _ if lower.contains("not found") || lower.contains("no existing key") => KmsErrorKind::NotFound,
        _ if lower.contains("message authentication failed")
            || lower.contains("invalid ciphertext")
            || lower.contains("unable to decrypt") =>
        {
            KmsErrorKind::InvalidCiphertext
        }
        _ => KmsErrorKind::InvalidRequest,
    };
    KmsError::new(kind, format!("Transit answered {status}: {errors}"))
}

impl Kms for VaultTransit {
    fn describe(&self) -> String {
        self.uri.clone()
    }

    fn generate_data_key(
        &self,
        key: &str,
        spec: DataKeySpec,
        context: &EncryptionContext,
    ) -> KmsResult<GeneratedDataKey> {
        super::provider::generate_and_wrap(key_name(key)?, spec, |dk| self.encrypt_with(key, dk, context))
    }

    fn encrypt(&self, key: &str, plaintext: &[u8], context: &EncryptionContext) -> KmsResult<Vec<u8>> {
        super::provider::check_direct(plaintext.len(), MAX_ENCRYPT_PLAINTEXT, "tde on Transit")?;
        self.encrypt_with(key, plaintext, context)
    }

    fn decrypt(&self, ciphertext: &[u8], context: &EncryptionContext) -> KmsResult<SecretBytes> {
        let (name, transit) = parse_blob(ciphertext)?;
        let body = json!({
            "ciphertext": transit,
            "associated_data": B64.encode(context.canonical_bytes()),
        });
        let data = self.call(&format!("decrypt/{name}"), Some(&body), name)?;
        let encoded = data
            .get("plaintext")
            .and_then(Value::as_str)
            .ok_or_else(|| KmsError::new(KmsErrorKind::Internal, "Transit returned no plaintext"))?;
        let plain = B64
            .decode(encoded)
            .map_err(|_| KmsError::new(KmsErrorKind::Internal, "Transit returned bad base64"))?;
        Ok(SecretBytes::new(plain))
    }

    fn re_encrypt(
        &self,
        ciphertext: &[u8],
        source_context: &EncryptionContext,
        destination_key: &str,
        destination_context: &EncryptionContext,
    ) -> KmsResult<Vec<u8>> {
        let plain = self.decrypt(ciphertext, source_context)?;
        self.encrypt_with(destination_key, plain.expose(), destination_context)
    }

    fn describe_key(&self, key: &str) -> KmsResult<KeyMetadata> {
        let name = key_name(key)?;
        let data = self.call(&format!("keys/{name}"), None, key)?;
        let number = |field: &str| data.get(field).and_then(Value::as_u64).unwrap_or(0);
        let min_decryption = u32::try_from(number("min_decryption_version")).unwrap_or(u32::MAX);
        let versions: Vec<KeyVersionInfo> = data
            .get("keys")
            .and_then(Value::as_object)
            .map(|keys| {
                let mut v: Vec<KeyVersionInfo> = keys
                    .iter()
                    .filter_map(|(version, created)| {
                        Some(KeyVersionInfo {
                            version: version.parse().ok()?,
                            created_at: Timestamp(created.as_u64().unwrap_or(0)),
                        })
                    })
                    .filter(|v| v.version >= min_decryption)
                    .collect();
                v.sort_by_key(|v| v.version);
                v
            })
            .unwrap_or_default();
        let primary = u32::try_from(number("latest_version")).unwrap_or(0);
        let created = versions.first().map_or(Timestamp(0), |v| v.created_at);
        let last_rotated = versions.last().map_or(created, |v| v.created_at);
        let spec = match data.get("type").and_then(Value::as_str) {
            Some("aes256-gcm96") => KeySpec::Aes256,
            other => {
                return Err(KmsError::new(
                    KmsErrorKind::InvalidRequest,
                    format!("Transit key {name} is of type {other:?}; tde wraps with aes256-gcm96 keys"),
                )
                .with_key(key));
            }
        };
        Ok(KeyMetadata {
            key_id: name.to_owned(),
            aliases: Vec::new(),
            description: String::new(),
            spec,
            origin: Origin::Kms,
            state: KeyState::Enabled,
            created_at: created,
            service_key: false,
            versions,
            primary_version: primary,
            rotation: RotationInfo {
                interval_days: u32::try_from(number("auto_rotate_period") / 86_400)
                    .ok()
                    .filter(|d| *d > 0),
                last_rotated_at: last_rotated,
                next_rotation_at: None,
            },
            deletion_date: None,
            material_expires_at: None,
            material_expired: false,
        })
    }
}

impl VaultTransit {
    /// Creates the aes256-gcm96 Transit key `name` (the `tde kms create-key` of this
    /// provider); returns its name.
    ///
    /// # Errors
    /// [`Error::Kms`] as Transit answers.
    pub fn create_key(&self, name: &str) -> Result<String> {
        let name = key_name(name)?.to_owned();
        self.call(
            &format!("keys/{name}"),
            Some(&json!({"type": "aes256-gcm96"})),
            &name,
        )?;
        Ok(name)
    }

    /// Makes a new version of Transit key `name` the one that wraps.
    ///
    /// # Errors
    /// [`Error::Kms`] as Transit answers.
    pub fn rotate_key(&self, name: &str) -> Result<()> {
        let name = key_name(name)?.to_owned();
        self.call(&format!("keys/{name}/rotate"), Some(&json!({})), &name)?;
        Ok(())
    }
}

impl VaultTransit {
    /// Sets the oldest version of Transit key `name` that may still decrypt: wrapped
    /// keys of older versions are refused from then on (Transit's way to stop a version).
    ///
    /// # Errors
    /// [`Error::Kms`] as Transit answers.
    pub fn set_min_decryption_version(&self, name: &str, version: u32) -> Result<()> {
        let name = key_name(name)?.to_owned();
        let body = json!({"min_decryption_version": version});
        self.call(&format!("keys/{name}/config"), Some(&body), &name)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_addresses_may_use_plain_http() {
        for ok in [
            "http://127.0.0.1:8200",
            "http://localhost:8200",
            "http://[::1]:8200",
        ] {
            assert!(is_loopback(ok), "{ok}");
        }
        for bad in [
            "http://10.0.0.1:8200",
            "http://vault.example:8200",
            "http://127.0.0.1.evil:1",
        ] {
            assert!(!is_loopback(bad), "{bad}");
        }
    }

    #[test]
    fn blobs_are_checked_before_their_key_name_reaches_a_url() {
        assert!(parse_blob(b"tdevt1:orders:vault:v1:abc").is_ok());
        for bad in [
            &b"tdevt1:../sys/seal:vault:v1:x"[..],
            b"tdevt1:a/b:vault:v1:x",
            b"tdevt1::vault:v1:x",
            b"other:a:vault:v1:x",
            b"tdevt1:a:notvault",
            b"\xff",
        ] {
            assert!(
                matches!(parse_blob(bad), Err(e) if e.kind() == KmsErrorKind::InvalidCiphertext),
                "{bad:?}"
            );
        }
    }
}
