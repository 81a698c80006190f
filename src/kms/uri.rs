//! Naming a KMS: `local:DIR` (or a bare path) for the embedded local KMS,
//! `aws-kms:[?region=R&endpoint=URL]` for AWS KMS, `vault-transit:[ADDR][?mount=M&namespace=NS]`
//! for Vault or OpenBao Transit, `pkcs11:token=LABEL?module-path=PATH` (RFC 7512) for a
//! PKCS#11 token, `kmip://HOST:PORT?cert=FILE&key=FILE&ca=FILE` for a KMIP server. A URI
//! names where a KMS is, never a secret: it is recorded in stores
//! and backups (a PKCS#11 `pin-value` is accepted but never shown or recorded).

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
    /// AWS KMS (feature `aws-kms`): region and endpoint override the standard AWS
    /// configuration.
    AwsKms {
        /// `region=`.
        region: Option<String>,
        /// `endpoint=`.
        endpoint: Option<String>,
    },
    /// A PKCS#11 token (feature `pkcs11`).
    Pkcs11 {
        /// `token=` (path attribute): the token's label.
        token: String,
        /// `module-path=`: the PKCS#11 module.
        module_path: PathBuf,
        /// `pin-source=`: a file holding the PIN (`file:PATH` or `PATH`).
        pin_source: Option<String>,
        /// `pin-value=`: the PIN itself; never displayed.
        pin_value: Option<Pin>,
    },
    /// A KMIP server over mutual TLS (feature `kmip`).
    Kmip {
        /// Host name or IP address (what the server's certificate must name).
        host: String,
        /// Port (KMIP's is 5696).
        port: u16,
        /// `cert=`: tde's client certificate (PEM).
        cert: PathBuf,
        /// `key=`: its private key (PEM); a path, never the key itself.
        key: PathBuf,
        /// `ca=`: the CA certificate(s) the server's certificate must chain to (PEM).
        ca: PathBuf,
    },
    /// Vault / OpenBao Transit (feature `vault`).
    VaultTransit {
        /// The server, e.g. `https://vault.example:8200`; default `VAULT_ADDR`.
        addr: Option<String>,
        /// `mount=` (default `transit`).
        mount: Option<String>,
        /// `namespace=` (default `VAULT_NAMESPACE`).
        namespace: Option<String>,
    },
}

/// A PIN given in a URI: compared, cloned, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Pin(String);

impl fmt::Debug for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Pin(..)")
    }
}

impl Drop for Pin {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

impl Pin {
    /// The PIN's bytes, as a secret.
    pub fn secret(&self) -> crate::secret::SecretBytes {
        crate::secret::SecretBytes::new(self.0.as_bytes().to_vec())
    }
}

/// RFC 3986 percent-decoding of one URI component.
fn percent_decode(scheme: &str, text: &str) -> Result<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| {
                    Error::InvalidArgument(format!("{scheme}: bad percent-encoding in {text:?}"))
                })?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| Error::InvalidArgument(format!("{scheme}: {text:?} is not UTF-8")))
}

/// `?k=v&k=v` of `query`, only the keys in `allowed`, each once.
fn parameters(scheme: &str, query: &str, allowed: &[&str]) -> Result<Vec<(String, String)>> {
    let mut out: Vec<(String, String)> = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if !allowed.contains(&k) || v.is_empty() || out.iter().any(|(seen, _)| seen == k) {
            return Err(Error::InvalidArgument(format!(
                "{scheme}: bad parameter {pair:?} (accepted, once each: {})",
                allowed.join(", ")
            )));
        }
        out.push((k.to_owned(), v.to_owned()));
    }
    Ok(out)
}

fn take(params: &mut Vec<(String, String)>, key: &str) -> Option<String> {
    let i = params.iter().position(|(k, _)| k == key)?;
    Some(params.remove(i).1)
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
        if let Some(rest) = text.strip_prefix("aws-kms:") {
            let query = rest.strip_prefix('?').unwrap_or(rest);
            if !rest.is_empty() && !rest.starts_with('?') {
                return Err(Error::InvalidArgument(format!(
                    "aws-kms: takes only parameters, e.g. aws-kms:?region=eu-west-1, not {text:?}"
                )));
            }
            let mut params = parameters("aws-kms", query, &["region", "endpoint"])?;
            return Ok(KmsUri::AwsKms {
                region: take(&mut params, "region"),
                endpoint: take(&mut params, "endpoint"),
            });
        }
        if let Some(rest) = text.strip_prefix("kmip://") {
            let (authority, query) = rest.split_once('?').unwrap_or((rest, ""));
            let (host, port) = authority
                .rsplit_once(':')
                .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)))
                .filter(|(h, p)| !h.is_empty() && *p != 0)
                .ok_or_else(|| {
                    Error::InvalidArgument(format!(
                        "kmip: needs HOST:PORT, e.g. kmip://kms.example:5696?cert=..., not {authority:?}"
                    ))
                })?;
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let mut params = parameters("kmip", query, &["cert", "key", "ca"])?;
            let mut file = |name: &str| {
                take(&mut params, name)
                    .map(|v| percent_decode("kmip", &v).map(PathBuf::from))
                    .transpose()?
                    .ok_or_else(|| {
                        Error::InvalidArgument(format!(
                            "kmip: needs ?cert=FILE&key=FILE&ca=FILE (mutual TLS); {name} is missing"
                        ))
                    })
            };
            let (cert, key, ca) = (file("cert")?, file("key")?, file("ca")?);
            return Ok(KmsUri::Kmip {
                host: host.to_owned(),
                port,
                cert,
                key,
                ca,
            });
        }
        if let Some(rest) = text.strip_prefix("pkcs11:") {
            let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
            let mut path_attrs = parameters("pkcs11", &path.replace(';', "&"), &["token"])?;
            let mut params = parameters("pkcs11", query, &["module-path", "pin-source", "pin-value"])?;
            let token = take(&mut path_attrs, "token")
                .ok_or_else(|| Error::InvalidArgument("pkcs11: needs token=LABEL".into()))?;
            let module = take(&mut params, "module-path").ok_or_else(|| {
                Error::InvalidArgument("pkcs11: needs ?module-path=PATH to the PKCS#11 module".into())
            })?;
            return Ok(KmsUri::Pkcs11 {
                token: percent_decode("pkcs11", &token)?,
                module_path: PathBuf::from(percent_decode("pkcs11", &module)?),
                pin_source: take(&mut params, "pin-source")
                    .map(|p| percent_decode("pkcs11", &p))
                    .transpose()?,
                pin_value: take(&mut params, "pin-value")
                    .map(|p| percent_decode("pkcs11", &p).map(Pin))
                    .transpose()?,
            });
        }
        if let Some(rest) = text.strip_prefix("vault-transit:") {
            let (addr, query) = rest.split_once('?').unwrap_or((rest, ""));
            let mut params = parameters("vault-transit", query, &["mount", "namespace"])?;
            return Ok(KmsUri::VaultTransit {
                addr: (!addr.is_empty()).then(|| addr.to_owned()),
                mount: take(&mut params, "mount"),
                namespace: take(&mut params, "namespace"),
            });
        }
        if let Some((scheme, _)) = text.split_once(':')
            && !scheme.is_empty()
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '+')
            && scheme.len() > 1
        {
            return Err(Error::InvalidArgument(format!(
                "unsupported KMS scheme {scheme:?}; tde knows local:DIR, aws-kms: and vault-transit:"
            )));
        }
        Ok(KmsUri::Local(PathBuf::from(text)))
    }

    /// The local KMS directory, for `Local`.
    pub fn local_dir(&self) -> Option<&Path> {
        match self {
            KmsUri::Local(dir) => Some(dir),
            _ => None,
        }
    }

    /// Whether the KMS creates the service key `alias/acs/tde` on first use (only the
    /// local KMS does: with another provider, name a master key).
    pub fn has_service_key(&self) -> bool {
        matches!(self, KmsUri::Local(_))
    }
}

impl fmt::Display for KmsUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let query = |pairs: &[(&str, &Option<String>)]| {
            let set: Vec<String> = pairs
                .iter()
                .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={v}")))
                .collect();
            if set.is_empty() {
                String::new()
            } else {
                format!("?{}", set.join("&"))
            }
        };
        match self {
            KmsUri::Local(dir) => write!(f, "local:{}", dir.display()),
            KmsUri::AwsKms { region, endpoint } => {
                write!(
                    f,
                    "aws-kms:{}",
                    query(&[("region", region), ("endpoint", endpoint)])
                )
            }
            KmsUri::Pkcs11 {
                token,
                module_path,
                pin_source,
                ..
            } => {
                let module = Some(module_path.display().to_string());
                write!(
                    f,
                    "pkcs11:token={token}{}",
                    query(&[("module-path", &module), ("pin-source", pin_source)])
                )
            }
            KmsUri::Kmip {
                host,
                port,
                cert,
                key,
                ca,
            } => {
                let host = if host.contains(':') {
                    format!("[{host}]")
                } else {
                    host.clone()
                };
                write!(
                    f,
                    "kmip://{host}:{port}?cert={}&key={}&ca={}",
                    cert.display(),
                    key.display(),
                    ca.display()
                )
            }
            KmsUri::VaultTransit {
                addr,
                mount,
                namespace,
            } => write!(
                f,
                "vault-transit:{}{}",
                addr.as_deref().unwrap_or_default(),
                query(&[("mount", mount), ("namespace", namespace)])
            ),
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

/// The error for a provider this build does not include.
#[cfg_attr(
    all(feature = "aws-kms", feature = "vault", feature = "pkcs11", feature = "kmip"),
    allow(dead_code)
)]
fn missing_feature(uri: &KmsUri, feature: &str) -> Error {
    Error::InvalidArgument(format!(
        "{uri} needs a tde built with the `{feature}` feature (cargo build --features {feature})"
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
        #[cfg(feature = "aws-kms")]
        KmsUri::AwsKms { region, endpoint } => Ok(Arc::new(super::aws::AwsKms::connect(
            region.as_deref(),
            endpoint.as_deref(),
        )?)),
        #[cfg(not(feature = "aws-kms"))]
        KmsUri::AwsKms { .. } => Err(missing_feature(uri, "aws-kms")),
        #[cfg(feature = "kmip")]
        KmsUri::Kmip { .. } => Ok(Arc::new(super::kmip::KmipKms::open(uri)?)),
        #[cfg(not(feature = "kmip"))]
        KmsUri::Kmip { .. } => Err(missing_feature(uri, "kmip")),
        #[cfg(feature = "pkcs11")]
        KmsUri::Pkcs11 { .. } => Ok(Arc::new(super::pkcs11::Pkcs11Kms::open(uri)?)),
        #[cfg(not(feature = "pkcs11"))]
        KmsUri::Pkcs11 { .. } => Err(missing_feature(uri, "pkcs11")),
        #[cfg(feature = "vault")]
        KmsUri::VaultTransit {
            addr,
            mount,
            namespace,
        } => Ok(Arc::new(super::vault::VaultTransit::connect(
            addr.as_deref(),
            mount.as_deref(),
            namespace.as_deref(),
        )?)),
        #[cfg(not(feature = "vault"))]
        KmsUri::VaultTransit { .. } => Err(missing_feature(uri, "vault")),
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
        assert!(KmsUri::parse("aws-kms:?colour=red").is_err());
        assert!(KmsUri::parse("aws-kms:?region=a&region=b").is_err());
        assert!(KmsUri::parse("gcp-kms:x").is_err());
        for text in [
            "aws-kms:",
            "aws-kms:?region=eu-west-1",
            "aws-kms:?region=eu-west-1&endpoint=http://127.0.0.1:5000",
            "vault-transit:",
            "vault-transit:https://vault.example:8200",
            "vault-transit:http://127.0.0.1:8200?mount=kms&namespace=team",
            "pkcs11:token=tde?module-path=/usr/lib/softhsm/libsofthsm2.so",
            "kmip://127.0.0.1:5696?cert=/etc/tde/c.pem&key=/etc/tde/k.pem&ca=/etc/tde/ca.pem",
            "kmip://[::1]:5696?cert=c&key=k&ca=a",
            "pkcs11:token=tde?module-path=/m.so&pin-source=file:/run/pin",
        ] {
            assert_eq!(KmsUri::parse(text).unwrap().to_string(), text, "round trip");
        }
        // A PIN in the URI is used, never shown.
        let uri = KmsUri::parse("pkcs11:token=My%20Token?module-path=/m.so&pin-value=1234").unwrap();
        assert_eq!(uri.to_string(), "pkcs11:token=My Token?module-path=/m.so");
        assert!(!format!("{uri:?}").contains("1234"));
        assert!(KmsUri::parse("pkcs11:token=t").is_err(), "no module");
        assert!(KmsUri::parse("kmip://h:5696?cert=c&key=k").is_err(), "no CA");
        assert!(KmsUri::parse("kmip://h?cert=c&key=k&ca=a").is_err(), "no port");
        assert!(
            KmsUri::parse("kmip://h:5696?cert=c&key=k&ca=a&pin=1").is_err(),
            "unknown parameter"
        );
        assert!(KmsUri::parse("pkcs11:?module-path=/m.so").is_err(), "no token");
        assert!(KmsUri::parse("local:").is_err());
        assert!(KmsUri::parse("").is_err());
        assert_eq!(KmsUri::parse("local:/x").unwrap().to_string(), "local:/x");
    }
}
