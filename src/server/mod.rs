//! `tde kms serve`: the local KMS on the network, speaking the AWS KMS JSON 1.1 protocol
//! with SigV4 authentication, so that AWS SDKs, the aws CLI and tde's own `aws-kms:`
//! provider are its clients (feature `server`).
//!
//! HTTP is hyper's, TLS rustls's (through tokio-rustls). Plain HTTP is accepted on a
//! loopback address only. One server per KMS directory: a second is refused (an
//! exclusive lock on `DIR/kms-server.lock`). Requests are at most 1 MiB; each is
//! authenticated (`sigv4`), authorised and answered (`api`) on a blocking thread, since
//! the local KMS does file I/O.

mod api;
mod policy;
mod sigv4;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

use crate::error::{Error, Result};
use crate::kms::Kms;
use crate::kms::local::{LocalKms, TrailEvent};

/// The default listening address: loopback, port 7700.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7700";
/// The largest request body accepted.
const MAX_BODY: usize = 1 << 20;

/// How to serve.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Where to listen.
    pub listen: SocketAddr,
    /// TLS certificate chain and private key (PEM); required unless `listen` is loopback.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Accept only this region in signatures (default: any).
    pub region: Option<String>,
    /// Requests per second each principal may make (a token bucket holding two seconds'
    /// worth); more are refused with `ThrottlingException`. Default
    /// [`DEFAULT_RATE_LIMIT`].
    pub rate_limit: u32,
}

/// The default per-principal request rate, per second.
pub const DEFAULT_RATE_LIMIT: u32 = 1000;

impl Default for ServeOptions {
    fn default() -> ServeOptions {
        ServeOptions {
            listen: DEFAULT_LISTEN.parse().unwrap_or_else(|_| unreachable!()),
            tls: None,
            region: None,
            rate_limit: DEFAULT_RATE_LIMIT,
        }
    }
}

/// Key `key`'s policy as the server applies it: the one put last, else the default one
/// (its account's administrators may do everything). The operator's view, on the
/// directory.
///
/// # Errors
/// `NotFound` for an unknown key; `InvalidRequest` for a key owned by no account (the
/// server does not serve it).
pub fn key_policy(kms: &LocalKms, key: &str) -> crate::kms::KmsResult<String> {
    let id = kms.describe_key(key)?.key_id;
    let owner = owner(kms, &id)?;
    Ok(kms
        .key_policy(&id)?
        .unwrap_or_else(|| policy::Policy::default_text(&owner)))
}

/// Replaces key `key`'s policy as the operator, on the directory: the text is checked as
/// `PutKeyPolicy` checks it (the documented subset; anything else is refused), but not
/// for lockout, since this is how a key whose policy locks everyone out is repaired.
///
/// # Errors
/// `InvalidRequest` for a policy outside the subset or a key owned by no account;
/// `NotFound` for an unknown key.
pub fn put_key_policy(kms: &LocalKms, key: &str, text: &str) -> crate::kms::KmsResult<()> {
    let id = kms.describe_key(key)?.key_id;
    owner(kms, &id)?;
    policy::Policy::parse(text).map_err(|why| {
        crate::kms::KmsError::new(
            crate::kms::KmsErrorKind::InvalidRequest,
            format!("MalformedPolicyDocument: {why}"),
        )
    })?;
    kms.put_key_policy(&id, text)
}

fn owner(kms: &LocalKms, id: &str) -> crate::kms::KmsResult<String> {
    kms.key_owner(id)?.ok_or_else(|| {
        crate::kms::KmsError::new(
            crate::kms::KmsErrorKind::InvalidRequest,
            format!("key {id} belongs to no account: `tde kms account assign-key` gives it one"),
        )
    })
}

/// The audit trail's writer: one thread that appends whatever records are waiting in one
/// write and one sync, then acknowledges them all (group commit).
struct Auditor {
    tx: parking_lot::Mutex<std::sync::mpsc::Sender<Pending>>,
}

/// A record waiting to be written, and where to say it was (or why not).
type Pending = (
    TrailEvent,
    std::sync::mpsc::SyncSender<std::result::Result<(), String>>,
);

/// Most records written in one group.
const MAX_GROUP: usize = 4096;

impl Auditor {
    fn start(trail: crate::kms::local::Trail) -> Auditor {
        let (tx, rx) = std::sync::mpsc::channel::<Pending>();
        std::thread::Builder::new()
            .name("tde-kms-audit".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut group = vec![first];
                    while group.len() < MAX_GROUP {
                        match rx.try_recv() {
                            Ok(next) => group.push(next),
                            Err(_) => break,
                        }
                    }
                    let events: Vec<TrailEvent> = group.iter().map(|(e, _)| e.clone()).collect();
                    let result = trail.append(&events).map_err(|e| e.to_string());
                    for (_, ack) in group {
                        let _ = ack.send(result.clone());
                    }
                }
            })
            .map_or_else(
                |_| Auditor {
                    tx: parking_lot::Mutex::new(std::sync::mpsc::channel().0),
                },
                |_| Auditor {
                    tx: parking_lot::Mutex::new(tx),
                },
            )
    }

    /// Records `event`; returns once it is durable.
    fn record(&self, event: TrailEvent) -> std::result::Result<(), String> {
        let (ack, done) = std::sync::mpsc::sync_channel(1);
        self.tx
            .lock()
            .send((event, ack))
            .map_err(|_| "the audit writer has stopped".to_owned())?;
        done.recv()
            .map_err(|_| "the audit writer has stopped".to_owned())?
    }
}

struct Server {
    kms: Arc<LocalKms>,
    auditor: Auditor,
    region: Option<String>,
    limiter: RateLimiter,
}

/// Per-principal token buckets: `rate` tokens a second, holding two seconds' worth.
struct RateLimiter {
    rate: f64,
    /// Access key id → (tokens, when last filled).
    buckets: parking_lot::Mutex<std::collections::HashMap<String, (f64, std::time::Instant)>>,
}

impl RateLimiter {
    fn new(rate: u32) -> RateLimiter {
        RateLimiter {
            rate: f64::from(rate),
            buckets: parking_lot::Mutex::new(std::collections::HashMap::new()),
        }
    }

    /// Takes a token from `access_key_id`'s bucket at `now`; `false` if it is empty.
    fn admit(&self, access_key_id: &str, now: std::time::Instant) -> bool {
        let capacity = self.rate * 2.0;
        let mut buckets = self.buckets.lock();
        let (tokens, last) = buckets.entry(access_key_id.to_owned()).or_insert((capacity, now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * self.rate).min(capacity);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// An exclusive lock on the KMS directory's server lock file, held while serving.
struct DirLock(#[allow(dead_code)] std::fs::File);

fn lock_dir(dir: &Path) -> Result<DirLock> {
    let path = dir.join("kms-server.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
    match file.try_lock() {
        Ok(()) => Ok(DirLock(file)),
        Err(std::fs::TryLockError::WouldBlock) => Err(Error::InvalidArgument(format!(
            "another `tde kms serve` is serving {}",
            dir.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => Err(Error::io(format!("locking {}", path.display()), e)),
    }
}

fn tls_acceptor(cert: &Path, key: &Path) -> Result<tokio_rustls::TlsAcceptor> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let bad = |what: &str, p: &Path, e: &dyn std::fmt::Display| {
        Error::InvalidArgument(format!("{what} {}: {e}", p.display()))
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(Iterator::collect)
        .map_err(|e| bad("TLS certificate", cert, &e))?;
    let private = PrivateKeyDer::from_pem_file(key).map_err(|e| bad("TLS key", key, &e))?;
    let config =
        rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .and_then(|b| b.with_no_client_auth().with_single_cert(certs, private))
            .map_err(|e| bad("TLS configuration with", cert, &e))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Serves `kms` until the process ends; calls `started` with the bound address first.
///
/// # Errors
/// [`Error::InvalidArgument`] for plain HTTP on an address that is not loopback, bad TLS
/// files, or another server on the same directory; [`Error::Io`] if the address cannot be
/// bound.
pub fn serve(kms: Arc<LocalKms>, options: ServeOptions, started: impl FnOnce(SocketAddr)) -> Result<()> {
    if options.tls.is_none() && !options.listen.ip().is_loopback() {
        return Err(Error::InvalidArgument(format!(
            "{}: plain HTTP is accepted on a loopback address only; give --tls-cert and --tls-key",
            options.listen
        )));
    }
    let _lock = lock_dir(kms.dir())?;
    let tls = options
        .tls
        .as_ref()
        .map(|(cert, key)| tls_acceptor(cert, key))
        .transpose()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("tde-kms-serve")
        .build()
        .map_err(|e| Error::io("starting the server runtime", e))?;
    if options.rate_limit == 0 {
        return Err(Error::InvalidArgument(
            "the rate limit must be at least 1 request per second".into(),
        ));
    }
    let (trail, cut) = kms.trail()?;
    if cut > 0 {
        eprintln!("the audit trail ended in a torn record of {cut} bytes; it was cut, and the cut recorded");
    }
    let server = Arc::new(Server {
        auditor: Auditor::start(trail),
        kms,
        region: options.region.clone(),
        limiter: RateLimiter::new(options.rate_limit),
    });
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(options.listen)
            .await
            .map_err(|e| Error::io(format!("binding {}", options.listen), e))?;
        let local = listener
            .local_addr()
            .map_err(|e| Error::io("reading the bound address", e))?;
        started(local);
        loop {
            let Ok((tcp, peer)) = listener.accept().await else {
                continue;
            };
            let server = server.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let server = server.clone();
                    async move { Ok::<_, Infallible>(server.handle(req, peer).await) }
                });
                let http = hyper::server::conn::http1::Builder::new();
                let _ = match tls {
                    Some(acceptor) => match acceptor.accept(tcp).await {
                        Ok(stream) => http.serve_connection(TokioIo::new(stream), service).await,
                        Err(_) => return,
                    },
                    None => http.serve_connection(TokioIo::new(tcp), service).await,
                };
            });
        }
    })
}

fn respond(status: u16, body: &serde_json::Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("Content-Type", "application/x-amz-json-1.1")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

fn error_response(e: &api::ApiError) -> Response<Full<Bytes>> {
    respond(
        e.status,
        &serde_json::json!({"__type": e.code, "message": e.message}),
    )
}

impl Server {
    async fn handle(self: Arc<Self>, req: Request<Incoming>, peer: SocketAddr) -> Response<Full<Bytes>> {
        let (parts, body) = req.into_parts();
        let body = match Limited::new(body, MAX_BODY).collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => {
                return error_response(&api::ApiError {
                    status: 413,
                    code: "ValidationException",
                    message: format!("requests are at most {MAX_BODY} bytes"),
                });
            }
        };
        let server = self.clone();
        let answer = tokio::task::spawn_blocking(move || server.answer(&parts, &body, peer)).await;
        match answer {
            Ok(Ok(value)) => respond(200, &value),
            Ok(Err(e)) => error_response(&e),
            Err(_) => error_response(&api::ApiError {
                status: 500,
                code: "KMSInternalException",
                message: "internal error".into(),
            }),
        }
    }

    /// Answers a request and records it in the audit trail; a request that cannot be
    /// recorded is refused.
    fn answer(
        &self,
        parts: &hyper::http::request::Parts,
        body: &[u8],
        peer: SocketAddr,
    ) -> std::result::Result<serde_json::Value, api::ApiError> {
        let mut event = TrailEvent {
            source: peer.to_string(),
            ..TrailEvent::default()
        };
        let result = self.answer_unrecorded(parts, body, &mut event);
        event.outcome = match &result {
            Ok(_) => "ok".to_owned(),
            Err(e) => e.code.to_owned(),
        };
        if let Err(e) = self.auditor.record(event) {
            return Err(api::ApiError {
                status: 500,
                code: "KMSInternalException",
                message: format!("the audit trail cannot be written: {e}"),
            });
        }
        result
    }

    fn answer_unrecorded(
        &self,
        parts: &hyper::http::request::Parts,
        body: &[u8],
        event: &mut TrailEvent,
    ) -> std::result::Result<serde_json::Value, api::ApiError> {
        let bad = |code: &'static str, message: &str| api::ApiError {
            status: 400,
            code,
            message: message.to_owned(),
        };
        let headers: Vec<(String, String)> = parts
            .headers
            .iter()
            .filter_map(|(n, v)| Some((n.as_str().to_owned(), v.to_str().ok()?.to_owned())))
            .collect();
        // HTTP/1.1 carries the host in a header; hyper keeps it there.
        let req = sigv4::Request {
            method: parts.method.as_str(),
            path: parts.uri.path(),
            query: parts.uri.query().unwrap_or(""),
            headers: &headers,
            body,
        };
        let op = req
            .header("x-amz-target")
            .and_then(|t| t.strip_prefix("TrentService."))
            .ok_or_else(|| {
                bad(
                    "UnknownOperationException",
                    "no X-Amz-Target: TrentService.<Operation>",
                )
            })?
            .to_owned();
        event.op = op.clone();
        let authorization = req
            .header("authorization")
            .ok_or_else(|| bad("MissingAuthenticationTokenException", "the request is not signed"))?;
        let auth = sigv4::parse_authorization(authorization).map_err(|e| api::auth_error(&e))?;
        event.access_key_id = auth.access_key_id.clone();
        if auth.service != "kms" {
            return Err(bad(
                "InvalidSignatureException",
                "the credential scope's service is not kms",
            ));
        }
        if let Some(region) = &self.region
            && *region != auth.region
        {
            return Err(bad(
                "InvalidSignatureException",
                &format!("this server serves region {region}, not {}", auth.region),
            ));
        }
        let (principal, secret) = self.kms.principal_secret(&auth.access_key_id).map_err(|_| {
            bad(
                "UnrecognizedClientException",
                "The security token included in the request is invalid.",
            )
        })?;
        let now = i64::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        )
        .unwrap_or(i64::MAX);
        sigv4::verify(&req, &auth, &secret, now).map_err(|e| api::auth_error(&e))?;
        drop(secret);
        event.principal = principal.arn.clone();
        event.account = principal.account.clone();
        if !principal.enabled {
            return Err(bad("AccessDeniedException", "the principal is disabled"));
        }
        if !self.limiter.admit(&auth.access_key_id, std::time::Instant::now()) {
            return Err(bad("ThrottlingException", "Rate exceeded"));
        }
        let json: serde_json::Value = if body.is_empty() {
            serde_json::json!({})
        } else {
            serde_json::from_slice(body).map_err(|_| bad("SerializationException", "the body is not JSON"))?
        };
        api::describe_request(&self.kms, &principal.account, &json, event);
        let caller = api::Caller {
            principal,
            region: auth.region.clone(),
        };
        let (value, grant) = api::dispatch(&self.kms, &caller, &op, &json)?;
        event.grant = grant;
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_principal_gets_its_own_bucket_of_two_seconds() {
        let limiter = RateLimiter::new(10);
        let t0 = std::time::Instant::now();
        let admitted = (0..50).filter(|_| limiter.admit("a", t0)).count();
        assert_eq!(admitted, 20, "a burst of twice the rate");
        assert!(limiter.admit("b", t0), "another principal is not throttled");
        assert!(!limiter.admit("a", t0));
        // A second later, ten more.
        let t1 = t0 + std::time::Duration::from_secs(1);
        assert_eq!((0..50).filter(|_| limiter.admit("a", t1)).count(), 10);
    }
}
