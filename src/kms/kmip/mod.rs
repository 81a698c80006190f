//! KMIP servers: `kmip://HOST:PORT?cert=FILE&key=FILE&ca=FILE`, over mutual TLS (rustls;
//! TLS 1.2 or 1.3, the server's certificate checked against `ca`, tde's client
//! certificate `cert` with its private key `key`, PEM files).
//!
//! Protocol: KMIP 1.4 requests (Authenticated Encryption Additional Data and Tag are 1.4
//! fields), so servers that speak 1.4 or later serve it. Operations used: Create and
//! Activate (`tde kms create-key`), Locate (a key by its Name), Get Attributes (State),
//! Encrypt and Decrypt with AES-256-GCM, the encryption context as additional
//! authenticated data, the IV chosen by the server (Random IV), a 16-byte tag; Revoke and
//! Destroy. The master key material never leaves the server: tde never sends Get.
//!
//! Data keys come from the OS CSPRNG and are wrapped with Encrypt. A wrapped key is
//! `tdekmip1` ‖ u16 length ‖ the key's Unique Identifier ‖ u8 length ‖ IV ‖ tag (16) ‖
//! ciphertext: it names its key, so Decrypt needs no lookup, and a key destroyed and
//! re-created under the same Name does not unwrap it.
//!
//! Errors: Item Not Found → not found; Permission Denied on a key that is not Active
//! (revoked: Deactivated or Compromised; or Pre-Active) → disabled, otherwise → access
//! denied; Authentication Not Successful → access denied; a Decrypt that fails its tag
//! (Cryptographic Failure, or General Failure from servers that report it so) → invalid
//! ciphertext; I/O errors, timeouts and a closed connection → unavailable (retried by
//! tde's policy on a fresh connection). Keys have one version: KMIP's Re-key makes a new
//! object, which tde does not use; rotate master keys by rewrapping to a new key.

mod ttlv;

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use self::ttlv::Item;
use super::{
    DataKeySpec, EncryptionContext, GeneratedDataKey, KeyMetadata, KeyState, KeyVersionInfo, Kms, KmsError,
    KmsErrorKind, KmsResult, Timestamp,
};
use crate::error::{Error, Result};
use crate::secret::SecretBytes;

/// Longest a connection or a call may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const CALL_TIMEOUT: Duration = Duration::from_secs(15);
/// Most idle connections kept.
const MAX_IDLE: usize = 8;
/// The largest response read.
const MAX_RESPONSE: usize = 1 << 20;
/// Most plaintext Encrypt takes (tde wraps data keys and small secrets only).
pub const MAX_ENCRYPT_PLAINTEXT: usize = 32 * 1024;
const BLOB_MAGIC: &[u8] = b"tdekmip1";
const TAG_LEN: usize = 16;

/// Tags (KMIP 1.4 §9.1.3.1).
mod tag {
    pub const ATTRIBUTE: u32 = 0x420008;
    pub const ATTRIBUTE_NAME: u32 = 0x42000A;
    pub const ATTRIBUTE_VALUE: u32 = 0x42000B;
    pub const BATCH_COUNT: u32 = 0x42000D;
    pub const BATCH_ITEM: u32 = 0x42000F;
    pub const BLOCK_CIPHER_MODE: u32 = 0x420011;
    pub const CRYPTOGRAPHIC_ALGORITHM: u32 = 0x420028;
    pub const CRYPTOGRAPHIC_PARAMETERS: u32 = 0x42002B;
    pub const IV_COUNTER_NONCE: u32 = 0x42003D;
    pub const NAME_TYPE: u32 = 0x420054;
    pub const NAME_VALUE: u32 = 0x420055;
    pub const OBJECT_TYPE: u32 = 0x420057;
    pub const OPERATION: u32 = 0x42005C;
    pub const PROTOCOL_VERSION: u32 = 0x420069;
    pub const PROTOCOL_VERSION_MAJOR: u32 = 0x42006A;
    pub const PROTOCOL_VERSION_MINOR: u32 = 0x42006B;
    pub const REQUEST_HEADER: u32 = 0x420077;
    pub const REQUEST_MESSAGE: u32 = 0x420078;
    pub const REQUEST_PAYLOAD: u32 = 0x420079;
    pub const RESPONSE_MESSAGE: u32 = 0x42007B;
    pub const RESPONSE_PAYLOAD: u32 = 0x42007C;
    pub const RESULT_MESSAGE: u32 = 0x42007D;
    pub const RESULT_REASON: u32 = 0x42007E;
    pub const RESULT_STATUS: u32 = 0x42007F;
    pub const REVOCATION_REASON: u32 = 0x420081;
    pub const REVOCATION_REASON_CODE: u32 = 0x420082;
    pub const TEMPLATE_ATTRIBUTE: u32 = 0x420091;
    pub const UNIQUE_IDENTIFIER: u32 = 0x420094;
    pub const DATA: u32 = 0x4200C2;
    pub const RANDOM_IV: u32 = 0x4200C5;
    pub const TAG_LENGTH: u32 = 0x4200CE;
    pub const AEAD_DATA: u32 = 0x4200FE;
    pub const AEAD_TAG: u32 = 0x4200FF;
}

/// Operations.
mod op {
    pub const CREATE: u32 = 0x01;
    pub const LOCATE: u32 = 0x08;
    pub const GET_ATTRIBUTES: u32 = 0x0B;
    pub const ACTIVATE: u32 = 0x12;
    pub const REVOKE: u32 = 0x13;
    pub const DESTROY: u32 = 0x14;
    pub const ENCRYPT: u32 = 0x1F;
    pub const DECRYPT: u32 = 0x20;
}

/// Result reasons tde tells apart.
mod reason {
    pub const ITEM_NOT_FOUND: u32 = 0x01;
    pub const AUTHENTICATION_NOT_SUCCESSFUL: u32 = 0x03;
    pub const CRYPTOGRAPHIC_FAILURE: u32 = 0x0A;
    pub const PERMISSION_DENIED: u32 = 0x0C;
    pub const GENERAL_FAILURE: u32 = 0x100;
}

const AES: u32 = 0x03;
const GCM: u32 = 0x09;
const SYMMETRIC_KEY: u32 = 0x02;
const USAGE_ENCRYPT_DECRYPT: i32 = 0x04 | 0x08;
const NAME_TEXT: u32 = 0x01;
const STATE_ACTIVE: u32 = 0x02;

/// A key's KMIP state (KMIP 1.4 §3.22).
fn state_name(state: u32) -> &'static str {
    match state {
        1 => "Pre-Active",
        2 => "Active",
        3 => "Deactivated",
        4 => "Compromised",
        5 => "Destroyed",
        6 => "Destroyed Compromised",
        _ => "unknown",
    }
}

type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// A KMIP server.
pub struct KmipKms {
    addr: String,
    server_name: ServerName<'static>,
    config: Arc<rustls::ClientConfig>,
    /// Idle connections, reused; a call takes one (or dials), and puts it back unless
    /// it failed. Calls in flight each have their own, so an open's parallel unwraps run
    /// in parallel.
    idle: Mutex<Vec<Tls>>,
    /// Names resolved to Unique Identifiers.
    uids: Mutex<std::collections::HashMap<String, String>>,
    uri: String,
}

impl std::fmt::Debug for KmipKms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KmipKms")
            .field("uri", &self.uri)
            .finish_non_exhaustive()
    }
}

fn unavailable(e: impl std::fmt::Display) -> KmsError {
    KmsError::new(KmsErrorKind::Unavailable, format!("KMIP: {e}"))
}

/// A key name (or Unique Identifier): printable, at most 255 bytes.
fn key_name(key: &str) -> KmsResult<&str> {
    let name = key.strip_prefix("alias/").unwrap_or(key);
    if name.is_empty() || name.len() > 255 || name.chars().any(char::is_control) {
        return Err(KmsError::new(
            KmsErrorKind::InvalidRequest,
            format!("{key:?} is not a KMIP key name"),
        ));
    }
    Ok(name)
}

fn read_pem<T>(
    what: &str,
    path: &Path,
    parse: impl FnOnce(&Path) -> std::result::Result<T, rustls::pki_types::pem::Error>,
) -> Result<T> {
    parse(path).map_err(|e| Error::InvalidArgument(format!("kmip: {what} {}: {e}", path.display())))
}

impl KmipKms {
    /// Prepares a client for the server at `host:port`, with the client certificate
    /// `cert` and key `key` and the CA certificate(s) `ca` that the server's certificate
    /// must chain to. Makes no connection.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for unreadable or malformed PEM files or a host that is
    /// not a valid server name.
    pub fn connect(host: &str, port: u16, cert: &Path, key: &Path, ca: &Path) -> Result<KmipKms> {
        let certs: Vec<CertificateDer<'static>> = read_pem("certificate", cert, |p| {
            CertificateDer::pem_file_iter(p)?.collect::<std::result::Result<Vec<_>, _>>()
        })?;
        if certs.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "kmip: {} holds no certificate",
                cert.display()
            )));
        }
        let private = read_pem("private key", key, |p| PrivateKeyDer::from_pem_file(p))?;
        let mut roots = rustls::RootCertStore::empty();
        let cas: Vec<CertificateDer<'static>> = read_pem("CA certificate", ca, |p| {
            CertificateDer::pem_file_iter(p)?.collect::<std::result::Result<Vec<_>, _>>()
        })?;
        for c in cas {
            roots
                .add(c)
                .map_err(|e| Error::InvalidArgument(format!("kmip: CA certificate {}: {e}", ca.display())))?;
        }
        if roots.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "kmip: {} holds no CA certificate",
                ca.display()
            )));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .and_then(|b| {
                b.with_root_certificates(roots)
                    .with_client_auth_cert(certs, private)
            })
            .map_err(|e| Error::InvalidArgument(format!("kmip: TLS configuration: {e}")))?;
        let server_name = ServerName::try_from(host.to_owned())
            .map_err(|e| Error::InvalidArgument(format!("kmip: host {host:?}: {e}")))?;
        let uri = format!(
            "kmip://{host}:{port}?cert={}&key={}&ca={}",
            cert.display(),
            key.display(),
            ca.display()
        );
        Ok(KmipKms {
            addr: format!("{host}:{port}"),
            server_name,
            config: Arc::new(config),
            idle: Mutex::new(Vec::new()),
            uids: Mutex::new(std::collections::HashMap::new()),
            uri,
        })
    }

    /// Opens the KMIP server `uri` names.
    ///
    /// # Errors
    /// As [`KmipKms::connect`]; [`Error::InvalidArgument`] for another kind of URI.
    pub fn open(uri: &super::KmsUri) -> Result<KmipKms> {
        match uri {
            super::KmsUri::Kmip {
                host,
                port,
                cert,
                key,
                ca,
            } => KmipKms::connect(host, *port, cert, key, ca),
            other => Err(Error::InvalidArgument(format!("{other} is not a kmip:// URI"))),
        }
    }

    fn dial(&self) -> KmsResult<Tls> {
        let addrs: Vec<_> = self
            .addr
            .to_socket_addrs()
            .map_err(|e| unavailable(format!("resolving {}: {e}", self.addr)))?
            .collect();
        let mut last = None;
        for addr in addrs {
            match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
                Ok(tcp) => {
                    tcp.set_read_timeout(Some(CALL_TIMEOUT)).map_err(unavailable)?;
                    tcp.set_write_timeout(Some(CALL_TIMEOUT)).map_err(unavailable)?;
                    tcp.set_nodelay(true).map_err(unavailable)?;
                    let conn = rustls::ClientConnection::new(self.config.clone(), self.server_name.clone())
                        .map_err(|e| {
                        KmsError::new(KmsErrorKind::InvalidRequest, format!("KMIP TLS: {e}"))
                    })?;
                    let mut tls = rustls::StreamOwned::new(conn, tcp);
                    // Handshake now, so a refused certificate shows as such.
                    while tls.conn.is_handshaking() {
                        tls.conn
                            .complete_io(&mut tls.sock)
                            .map_err(|e| handshake_error(&self.addr, &e))?;
                    }
                    return Ok(tls);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(unavailable(format!(
            "connecting to {}: {}",
            self.addr,
            last.map_or_else(|| "no address".to_owned(), |e| e.to_string())
        )))
    }

    /// Sends one request of operation `operation` with `payload`; the response payload.
    fn call(&self, operation: u32, payload: Vec<Item>, key: &str) -> KmsResult<Item> {
        let request = Item::structure(
            tag::REQUEST_MESSAGE,
            vec![
                Item::structure(
                    tag::REQUEST_HEADER,
                    vec![
                        Item::structure(
                            tag::PROTOCOL_VERSION,
                            vec![
                                Item::int(tag::PROTOCOL_VERSION_MAJOR, 1),
                                Item::int(tag::PROTOCOL_VERSION_MINOR, 4),
                            ],
                        ),
                        Item::int(tag::BATCH_COUNT, 1),
                    ],
                ),
                Item::structure(
                    tag::BATCH_ITEM,
                    vec![
                        Item::enumeration(tag::OPERATION, operation),
                        Item::structure(tag::REQUEST_PAYLOAD, payload),
                    ],
                ),
            ],
        );
        let mut bytes = zeroize::Zeroizing::new(Vec::new());
        request.encode(&mut bytes);
        drop(request);
        let response = self.exchange(&bytes)?;
        drop(bytes);
        let item = Item::decode(&response)
            .map_err(|e| KmsError::new(KmsErrorKind::Internal, format!("KMIP: malformed response: {e}")))?;
        drop(response);
        if item.tag != tag::RESPONSE_MESSAGE {
            return Err(KmsError::new(
                KmsErrorKind::Internal,
                "KMIP: not a response message",
            ));
        }
        let Item { value, .. } = item;
        let ttlv::Value::Structure(children) = value else {
            return Err(KmsError::new(
                KmsErrorKind::Internal,
                "KMIP: not a response message",
            ));
        };
        let batch = children
            .into_iter()
            .find(|i| i.tag == tag::BATCH_ITEM)
            .ok_or_else(|| KmsError::new(KmsErrorKind::Internal, "KMIP: response without a batch item"))?;
        let status = batch.get(tag::RESULT_STATUS).and_then(Item::as_enum);
        if status != Some(0) {
            let reason = batch.get(tag::RESULT_REASON).and_then(Item::as_enum).unwrap_or(0);
            let message = batch
                .get(tag::RESULT_MESSAGE)
                .and_then(Item::as_text)
                .unwrap_or_default()
                .chars()
                .take(512)
                .collect::<String>();
            return Err(self.failure(operation, reason, &message, key));
        }
        let ttlv::Value::Structure(items) = batch.value else {
            return Err(KmsError::new(
                KmsErrorKind::Internal,
                "KMIP: malformed batch item",
            ));
        };
        Ok(items
            .into_iter()
            .find(|i| i.tag == tag::RESPONSE_PAYLOAD)
            .unwrap_or_else(|| Item::structure(tag::RESPONSE_PAYLOAD, Vec::new())))
    }

    /// Writes `request` and reads one response on an idle connection (a new one if
    /// there is none); a failure drops the connection.
    fn exchange(&self, request: &[u8]) -> KmsResult<zeroize::Zeroizing<Vec<u8>>> {
        let idle = self.idle.lock().pop();
        let mut tls = match idle {
            Some(tls) => tls,
            None => self.dial()?,
        };
        let result = (|| {
            tls.write_all(request)?;
            tls.flush()?;
            let mut head = [0u8; 8];
            tls.read_exact(&mut head)?;
            let len = u32::from_be_bytes([head[4], head[5], head[6], head[7]]) as usize;
            if len > MAX_RESPONSE {
                return Err(std::io::Error::other(format!("a {len}-byte response")));
            }
            let mut out = zeroize::Zeroizing::new(vec![0u8; 8 + len]);
            out[..8].copy_from_slice(&head);
            tls.read_exact(&mut out[8..])?;
            Ok(out)
        })();
        match result {
            Ok(out) => {
                let mut idle = self.idle.lock();
                if idle.len() < MAX_IDLE {
                    idle.push(tls);
                }
                Ok(out)
            }
            Err(e) => Err(unavailable(format!("{}: {e}", self.addr))),
        }
    }

    fn failure(&self, operation: u32, reason: u32, message: &str, key: &str) -> KmsError {
        let kind = match reason {
            reason::ITEM_NOT_FOUND => KmsErrorKind::NotFound,
            reason::AUTHENTICATION_NOT_SUCCESSFUL => KmsErrorKind::AccessDenied,
            reason::PERMISSION_DENIED => KmsErrorKind::AccessDenied,
            reason::CRYPTOGRAPHIC_FAILURE | reason::GENERAL_FAILURE if operation == op::DECRYPT => {
                KmsErrorKind::InvalidCiphertext
            }
            reason::GENERAL_FAILURE => KmsErrorKind::Internal,
            _ => KmsErrorKind::InvalidRequest,
        };
        KmsError::new(kind, format!("KMIP answered reason {reason:#x}: {message}")).with_key(key)
    }

    /// The state of the object `uid`, and when it was made (or activated) if the server
    /// says.
    fn state(&self, uid: &str) -> KmsResult<(u32, Option<i64>)> {
        let payload = self.call(
            op::GET_ATTRIBUTES,
            vec![
                Item::text(tag::UNIQUE_IDENTIFIER, uid),
                Item::text(tag::ATTRIBUTE_NAME, "State"),
                Item::text(tag::ATTRIBUTE_NAME, "Initial Date"),
                Item::text(tag::ATTRIBUTE_NAME, "Activation Date"),
            ],
            uid,
        )?;
        let mut state = None;
        let mut activated = None;
        for attr in payload.all(tag::ATTRIBUTE) {
            let name = attr.get(tag::ATTRIBUTE_NAME).and_then(Item::as_text);
            let value = attr.get(tag::ATTRIBUTE_VALUE);
            match name {
                Some("State") => state = value.and_then(Item::as_enum),
                Some("Initial Date" | "Activation Date") if activated.is_none() => {
                    activated = value.and_then(Item::as_date);
                }
                _ => {}
            }
        }
        let state = state.ok_or_else(|| {
            KmsError::new(KmsErrorKind::Internal, format!("KMIP: no State for {uid}")).with_key(uid)
        })?;
        Ok((state, activated))
    }

    /// A refusal on `uid`, made precise with its state: a key that is not Active is
    /// disabled (revoked keys are Deactivated or Compromised), a destroyed one not found.
    fn explain(&self, e: KmsError, uid: &str) -> KmsError {
        if e.kind() != KmsErrorKind::AccessDenied {
            return e;
        }
        match self.state(uid) {
            Ok((STATE_ACTIVE, _)) | Err(_) => e,
            Ok((5 | 6, _)) => {
                KmsError::new(KmsErrorKind::NotFound, format!("KMIP key {uid} is destroyed")).with_key(uid)
            }
            Ok((state, _)) => KmsError::new(
                KmsErrorKind::Disabled,
                format!("KMIP key {uid} is {} (not Active)", state_name(state)),
            )
            .with_key(uid),
        }
    }

    /// The Unique Identifier of the key named `key` (its Name attribute), or `key` itself
    /// if no object has that name and it is an identifier.
    fn resolve(&self, key: &str) -> KmsResult<String> {
        let name = key_name(key)?;
        if let Some(uid) = self.uids.lock().get(name) {
            return Ok(uid.clone());
        }
        let payload = self.call(op::LOCATE, vec![name_attribute(name)], key)?;
        let found: Vec<String> = payload
            .all(tag::UNIQUE_IDENTIFIER)
            .filter_map(Item::as_text)
            .map(ToOwned::to_owned)
            .collect();
        let uid = match found.as_slice() {
            [] => {
                // Perhaps an identifier: it must exist.
                self.state(name)?;
                name.to_owned()
            }
            [one] => one.clone(),
            many => {
                return Err(KmsError::new(
                    KmsErrorKind::InvalidRequest,
                    format!(
                        "{} KMIP objects are named {name:?}; name one by its Unique Identifier",
                        many.len()
                    ),
                )
                .with_key(key));
            }
        };
        self.uids.lock().insert(name.to_owned(), uid.clone());
        Ok(uid)
    }

    fn encrypt_with(&self, key: &str, plaintext: &[u8], context: &EncryptionContext) -> KmsResult<Vec<u8>> {
        let uid = self.resolve(key)?;
        let payload = self
            .call(
                op::ENCRYPT,
                vec![
                    Item::text(tag::UNIQUE_IDENTIFIER, &uid),
                    gcm_parameters(true),
                    Item::bytes(tag::DATA, plaintext),
                    Item::bytes(tag::AEAD_DATA, &context.canonical_bytes()),
                ],
                key,
            )
            .map_err(|e| self.explain(e, &uid))?;
        let field = |t: u32, what: &str| {
            payload.get(t).and_then(Item::as_bytes).ok_or_else(|| {
                KmsError::new(KmsErrorKind::Internal, format!("KMIP Encrypt returned no {what}"))
            })
        };
        let ciphertext = field(tag::DATA, "data")?;
        let iv = field(tag::IV_COUNTER_NONCE, "IV")?;
        let tag = field(tag::AEAD_TAG, "tag")?;
        if iv.is_empty() || iv.len() > 255 || tag.len() != TAG_LEN || ciphertext.len() != plaintext.len() {
            return Err(KmsError::new(
                KmsErrorKind::Internal,
                "KMIP Encrypt returned malformed output",
            ));
        }
        let mut blob =
            Vec::with_capacity(BLOB_MAGIC.len() + 3 + uid.len() + iv.len() + TAG_LEN + ciphertext.len());
        blob.extend_from_slice(BLOB_MAGIC);
        blob.extend_from_slice(&u16::try_from(uid.len()).unwrap_or(u16::MAX).to_be_bytes());
        blob.extend_from_slice(uid.as_bytes());
        blob.push(u8::try_from(iv.len()).unwrap_or(u8::MAX));
        blob.extend_from_slice(iv);
        blob.extend_from_slice(tag);
        blob.extend_from_slice(ciphertext);
        Ok(blob)
    }

    /// Creates an AES-256 key named `name` for Encrypt and Decrypt, and activates it;
    /// returns its Unique Identifier. Refused if a key has that name.
    ///
    /// # Errors
    /// [`Error::Kms`] as the server answers.
    pub fn create_key(&self, name: &str) -> Result<String> {
        let name = key_name(name)?;
        let existing = self.call(op::LOCATE, vec![name_attribute(name)], name)?;
        if existing.get(tag::UNIQUE_IDENTIFIER).is_some() {
            return Err(KmsError::new(
                KmsErrorKind::InvalidRequest,
                format!("a KMIP key is already named {name:?}"),
            )
            .with_key(name)
            .into());
        }
        let attribute = |n: &str, value: Item| {
            Item::structure(tag::ATTRIBUTE, vec![Item::text(tag::ATTRIBUTE_NAME, n), value])
        };
        let payload = self.call(
            op::CREATE,
            vec![
                Item::enumeration(tag::OBJECT_TYPE, SYMMETRIC_KEY),
                Item::structure(
                    tag::TEMPLATE_ATTRIBUTE,
                    vec![
                        attribute(
                            "Cryptographic Algorithm",
                            Item::enumeration(tag::ATTRIBUTE_VALUE, AES),
                        ),
                        attribute("Cryptographic Length", Item::int(tag::ATTRIBUTE_VALUE, 256)),
                        attribute(
                            "Cryptographic Usage Mask",
                            Item::int(tag::ATTRIBUTE_VALUE, USAGE_ENCRYPT_DECRYPT),
                        ),
                        name_attribute(name),
                    ],
                ),
            ],
            name,
        )?;
        let uid = payload
            .get(tag::UNIQUE_IDENTIFIER)
            .and_then(Item::as_text)
            .ok_or_else(|| KmsError::new(KmsErrorKind::Internal, "KMIP Create returned no identifier"))?
            .to_owned();
        self.call(op::ACTIVATE, vec![Item::text(tag::UNIQUE_IDENTIFIER, &uid)], name)?;
        Ok(uid)
    }

    /// Revokes key `key` (reason: cessation of operation): it no longer encrypts, and
    /// whether it still decrypts is the server's choice (PyKMIP refuses). Irreversible.
    ///
    /// # Errors
    /// [`Error::Kms`] as the server answers.
    pub fn revoke_key(&self, key: &str) -> Result<()> {
        let uid = self.resolve(key)?;
        self.call(
            op::REVOKE,
            vec![
                Item::text(tag::UNIQUE_IDENTIFIER, &uid),
                Item::structure(
                    tag::REVOCATION_REASON,
                    vec![Item::enumeration(tag::REVOCATION_REASON_CODE, 0x05)],
                ),
            ],
            key,
        )?;
        Ok(())
    }

    /// Destroys key `key` (revoking it first if it is Active): everything it wrapped is
    /// lost.
    ///
    /// # Errors
    /// [`Error::Kms`] as the server answers.
    pub fn destroy_key(&self, key: &str) -> Result<()> {
        let uid = self.resolve(key)?;
        if self.state(&uid)?.0 == STATE_ACTIVE {
            self.revoke_key(&uid)?;
        }
        self.call(op::DESTROY, vec![Item::text(tag::UNIQUE_IDENTIFIER, &uid)], key)?;
        self.uids.lock().retain(|_, v| *v != uid);
        Ok(())
    }
}

fn name_attribute(name: &str) -> Item {
    Item::structure(
        tag::ATTRIBUTE,
        vec![
            Item::text(tag::ATTRIBUTE_NAME, "Name"),
            Item::structure(
                tag::ATTRIBUTE_VALUE,
                vec![
                    Item::text(tag::NAME_VALUE, name),
                    Item::enumeration(tag::NAME_TYPE, NAME_TEXT),
                ],
            ),
        ],
    )
}

/// AES-GCM with a 16-byte tag; on Encrypt, the server picks the IV.
fn gcm_parameters(random_iv: bool) -> Item {
    // In the order KMIP 1.4 §3.6 lists them (servers read them in that order).
    let mut items = vec![
        Item::enumeration(tag::BLOCK_CIPHER_MODE, GCM),
        Item::enumeration(tag::CRYPTOGRAPHIC_ALGORITHM, AES),
    ];
    if random_iv {
        items.push(Item::boolean(tag::RANDOM_IV, true));
    }
    items.push(Item::int(tag::TAG_LENGTH, TAG_LEN as i32));
    Item::structure(tag::CRYPTOGRAPHIC_PARAMETERS, items)
}

fn handshake_error(addr: &str, e: &std::io::Error) -> KmsError {
    // A certificate the other side refuses is not cured by retrying.
    let refused = e
        .get_ref()
        .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some());
    let kind = if refused {
        KmsErrorKind::AccessDenied
    } else {
        KmsErrorKind::Unavailable
    };
    KmsError::new(kind, format!("KMIP TLS handshake with {addr}: {e}"))
}

/// The parts of a wrapped blob.
struct Blob<'a> {
    uid: &'a str,
    iv: &'a [u8],
    tag: &'a [u8],
    ciphertext: &'a [u8],
}

/// A blob's parts. A blob is hostile input.
fn parse_blob(blob: &[u8]) -> KmsResult<Blob<'_>> {
    let invalid = || KmsError::new(KmsErrorKind::InvalidCiphertext, "not a KMIP-wrapped blob");
    let rest = blob.strip_prefix(BLOB_MAGIC).ok_or_else(invalid)?;
    let (len, rest) = rest.split_first_chunk::<2>().ok_or_else(invalid)?;
    let len = usize::from(u16::from_be_bytes(*len));
    if len == 0 || len > 255 || rest.len() < len {
        return Err(invalid());
    }
    let (uid, rest) = rest.split_at(len);
    let uid = std::str::from_utf8(uid).map_err(|_| invalid())?;
    key_name(uid).map_err(|_| invalid())?;
    let (iv_len, rest) = rest.split_first().ok_or_else(invalid)?;
    let iv_len = usize::from(*iv_len);
    if iv_len == 0 || rest.len() < iv_len + TAG_LEN {
        return Err(invalid());
    }
    let (iv, rest) = rest.split_at(iv_len);
    let (tag, ciphertext) = rest.split_at(TAG_LEN);
    if ciphertext.len() > MAX_ENCRYPT_PLAINTEXT {
        return Err(invalid());
    }
    Ok(Blob {
        uid,
        iv,
        tag,
        ciphertext,
    })
}

impl Kms for KmipKms {
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
        super::provider::check_direct(plaintext.len(), MAX_ENCRYPT_PLAINTEXT, "tde on KMIP")?;
        self.encrypt_with(key, plaintext, context)
    }

    fn decrypt(&self, ciphertext: &[u8], context: &EncryptionContext) -> KmsResult<SecretBytes> {
        let Blob {
            uid,
            iv,
            tag,
            ciphertext: data,
        } = parse_blob(ciphertext)?;
        let payload = self
            .call(
                op::DECRYPT,
                vec![
                    Item::text(tag::UNIQUE_IDENTIFIER, uid),
                    gcm_parameters(false),
                    Item::bytes(tag::DATA, data),
                    Item::bytes(tag::IV_COUNTER_NONCE, iv),
                    Item::bytes(tag::AEAD_DATA, &context.canonical_bytes()),
                    Item::bytes(tag::AEAD_TAG, tag),
                ],
                uid,
            )
            .map_err(|e| self.explain(e, uid))?;
        let plain = payload
            .get(tag::DATA)
            .and_then(Item::as_bytes)
            .ok_or_else(|| KmsError::new(KmsErrorKind::Internal, "KMIP Decrypt returned no data"))?;
        if plain.len() != data.len() {
            return Err(KmsError::new(
                KmsErrorKind::Internal,
                "KMIP Decrypt returned malformed output",
            ));
        }
        Ok(SecretBytes::new(plain.to_vec()))
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
        let uid = self.resolve(key)?;
        let (state, activated) = self.state(&uid)?;
        let kind = match state {
            STATE_ACTIVE => KeyState::Enabled,
            5 | 6 => {
                return Err(
                    KmsError::new(KmsErrorKind::NotFound, format!("KMIP key {uid} is destroyed"))
                        .with_key(key),
                );
            }
            _ => KeyState::Disabled,
        };
        let created = Timestamp(activated.and_then(|t| u64::try_from(t).ok()).unwrap_or(0));
        let mut meta = super::provider::metadata(
            &uid,
            kind,
            vec![KeyVersionInfo {
                version: 1,
                created_at: created,
            }],
        );
        meta.description = format!("KMIP state: {}", state_name(state));
        if uid != key_name(key)? {
            meta.aliases = vec![key_name(key)?.to_owned()];
        }
        Ok(meta)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blobs_are_parsed_as_hostile_input() {
        let mut blob = BLOB_MAGIC.to_vec();
        blob.extend_from_slice(&3u16.to_be_bytes());
        blob.extend_from_slice(b"uid");
        blob.push(12);
        blob.extend_from_slice(&[1; 12]);
        blob.extend_from_slice(&[2; 16]);
        blob.extend_from_slice(&[3; 32]);
        let b = parse_blob(&blob).unwrap();
        assert_eq!(
            (b.uid, b.iv.len(), b.tag.len(), b.ciphertext.len()),
            ("uid", 12, 16, 32)
        );
        for cut in 0..BLOB_MAGIC.len() + 2 + 3 + 1 + 12 + 16 {
            assert!(parse_blob(&blob[..cut]).is_err(), "cut at {cut}");
        }
        let mut bad = blob.clone();
        bad[BLOB_MAGIC.len()..BLOB_MAGIC.len() + 2].copy_from_slice(&u16::MAX.to_be_bytes());
        assert!(parse_blob(&bad).is_err());
        assert!(parse_blob(b"tdep11\x01whatever").is_err());
    }

    #[test]
    fn unreadable_files_are_refused_before_any_connection() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let err = KmipKms::connect("127.0.0.1", 5696, &missing, &missing, &missing).unwrap_err();
        assert!(err.to_string().contains("certificate"), "{err}");
        let err = KmipKms::connect("127.0.0.1", 5696, &empty, &empty, &empty).unwrap_err();
        assert!(err.to_string().contains("no certificate"), "{err}");
    }
}
