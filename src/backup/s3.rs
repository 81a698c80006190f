//! Backups in S3-compatible object storage: `s3://BUCKET/PREFIX`.
//!
//! The `object_store` crate does the protocol, the signing, its retries with backoff
//! (throttling, 5xx) and the timeouts. The region and the credentials come from the
//! standard AWS chain through `aws-config` (`AWS_ACCESS_KEY_ID` /
//! `AWS_SECRET_ACCESS_KEY` / `AWS_SESSION_TOKEN`, the shared config and credentials
//! files, web identity, container and instance metadata; `AWS_REGION` /
//! `AWS_DEFAULT_REGION`), the endpoint from `AWS_ENDPOINT_URL_S3`, else
//! `AWS_ENDPOINT_URL`, else the config file, else AWS itself. Plain `http://` endpoints
//! are accepted for loopback addresses only. Requests are path-style
//! (`ENDPOINT/BUCKET/KEY`), which S3 and the S3-compatible servers all accept.
//!
//! Objects up to [`SINGLE_PUT`] bytes go up in one PUT; larger ones as a multipart
//! upload that is aborted on any error, so it never becomes visible half-written.

use std::io::Read;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use object_store::aws::{AmazonS3, AmazonS3Builder, AwsCredential};
use object_store::path::Path as Key;
use object_store::{ClientOptions, CredentialProvider, ObjectStore, ObjectStoreExt, PutPayload};

use super::destination::{BACKUPS, Backend, OBJECTS, open_regular};
use crate::audit::AUDIT_FILE;
use crate::error::{Error, Result};

/// Objects larger than this are uploaded in parts of this size.
const SINGLE_PUT: u64 = 16 << 20;
const PART: usize = 16 << 20;
/// Ranged reads of this size.
const READ_CHUNK: u64 = 8 << 20;
/// Longest an audit trail may be.
const MAX_TRAIL: u64 = 1 << 30;

/// `s3://BUCKET/PREFIX`.
pub(super) struct S3Backend {
    url: String,
    prefix: String,
    store: AmazonS3,
    runtime: tokio::runtime::Runtime,
}

/// Whether `bucket` is a valid S3 bucket name (3–63 lower-case letters, digits, `.`,
/// `-`, starting and ending with a letter or digit).
fn is_bucket(bucket: &str) -> bool {
    (3..=63).contains(&bucket.len())
        && bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
        && bucket.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && bucket.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric())
}

/// Whether `prefix` is `/`-separated plain names (letters, digits, `.`, `_`, `-`, `+`;
/// no empty, `.` or `..` segment), at most 512 bytes.
fn is_prefix(prefix: &str) -> bool {
    prefix.len() <= 512
        && prefix.split('/').all(|seg| {
            !seg.is_empty()
                && seg != "."
                && seg != ".."
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'+'))
        })
}

/// Whether `endpoint` (`http://HOST[:PORT][/...]`) names a loopback host.
fn is_loopback(endpoint: &str) -> bool {
    let rest = endpoint.strip_prefix("http://").unwrap_or(endpoint);
    let authority = rest.split('/').next().unwrap_or("");
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The AWS credential chain, for `object_store`.
#[derive(Debug)]
struct Credentials(aws_credential_types::provider::SharedCredentialsProvider);

#[async_trait::async_trait]
impl CredentialProvider for Credentials {
    type Credential = AwsCredential;

    async fn get_credential(&self) -> object_store::Result<Arc<AwsCredential>> {
        use aws_credential_types::provider::ProvideCredentials;
        let c = self
            .0
            .provide_credentials()
            .await
            .map_err(|e| object_store::Error::Generic {
                store: "S3",
                source: Box::new(e),
            })?;
        Ok(Arc::new(AwsCredential {
            key_id: c.access_key_id().to_owned(),
            secret_key: c.secret_access_key().to_owned(),
            token: c.session_token().map(ToOwned::to_owned),
        }))
    }
}

fn s3_error(what: String, e: object_store::Error) -> Error {
    Error::io(what, std::io::Error::other(e.to_string()))
}

impl S3Backend {
    /// `rest` is what follows `s3://`: `BUCKET/PREFIX`. Makes no request.
    pub(super) fn connect(rest: &str) -> Result<S3Backend> {
        let bad =
            |why: &str| Error::InvalidArgument(format!("s3://{rest}: {why} (expected s3://BUCKET/PREFIX)"));
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let prefix = prefix.trim_end_matches('/');
        if !is_bucket(bucket) {
            return Err(bad("not a valid bucket name"));
        }
        if !prefix.is_empty() && !is_prefix(prefix) {
            return Err(bad(
                "the prefix must be /-separated names of letters, digits, '.', '_', '-', '+'",
            ));
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("tde-s3")
            .enable_all()
            .build()
            .map_err(|e| Error::io("starting the S3 client runtime", e))?;
        let config = runtime.block_on(aws_config::defaults(aws_config::BehaviorVersion::latest()).load());
        let endpoint = ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"]
            .iter()
            .find_map(|v| std::env::var(v).ok().filter(|s| !s.is_empty()))
            .or_else(|| config.endpoint_url().map(ToOwned::to_owned));
        let region = config.region().map_or("us-east-1", |r| r.as_ref()).to_owned();
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(bucket)
            .with_region(region)
            .with_client_options(
                ClientOptions::new()
                    .with_timeout(Duration::from_secs(120))
                    .with_connect_timeout(Duration::from_secs(5)),
            );
        if let Some(provider) = config.credentials_provider() {
            builder = builder.with_credentials(Arc::new(Credentials(provider)));
        }
        if let Some(endpoint) = &endpoint {
            if endpoint.starts_with("http://") {
                if !is_loopback(endpoint) {
                    return Err(Error::InvalidArgument(format!(
                        "S3 endpoint {endpoint}: plain HTTP is accepted for loopback addresses only"
                    )));
                }
                builder = builder.with_allow_http(true);
            } else if !endpoint.starts_with("https://") {
                return Err(Error::InvalidArgument(format!(
                    "S3 endpoint {endpoint:?} must start with https:// (or http:// for loopback)"
                )));
            }
            builder = builder.with_endpoint(endpoint);
        }
        let store = builder
            .build()
            .map_err(|e| Error::InvalidArgument(format!("s3://{rest}: {e}")))?;
        Ok(S3Backend {
            url: format!("s3://{bucket}/{prefix}"),
            prefix: prefix.to_owned(),
            store,
            runtime,
        })
    }

    fn key(&self, parts: &[&str]) -> Key {
        let mut key = self.prefix.clone();
        for p in parts {
            if !key.is_empty() {
                key.push('/');
            }
            key.push_str(p);
        }
        Key::from(key)
    }

    fn object(&self, sha: &str) -> Key {
        self.key(&[OBJECTS, sha])
    }

    fn manifest(&self, id: &str) -> Key {
        self.key(&[BACKUPS, &format!("{id}.json")])
    }

    fn size_of(&self, key: &Key) -> Result<Option<u64>> {
        match self.runtime.block_on(self.store.head(key)) {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(s3_error(format!("reading {}/{key}", self.bucket_url()), e)),
        }
    }

    fn bucket_url(&self) -> String {
        let bucket = self
            .url
            .trim_start_matches("s3://")
            .split('/')
            .next()
            .unwrap_or("");
        format!("s3://{bucket}")
    }

    fn corrupt(&self, key: &Key, detail: String) -> Error {
        super::corrupt(Path::new(&format!("{}/{key}", self.bucket_url())), detail)
    }

    /// Uploads the file `from` to `key`: one PUT, or a multipart upload aborted on error.
    fn upload(&self, key: &Key, from: &Path) -> Result<()> {
        let fail = |e: object_store::Error| s3_error(format!("uploading {}/{key}", self.bucket_url()), e);
        let mut file = open_regular(from)?;
        let len = file
            .metadata()
            .map_err(|e| Error::io(format!("reading {}", from.display()), e))?
            .len();
        let read = |file: &mut std::fs::File, n: usize| -> Result<Vec<u8>> {
            let mut buf = Vec::with_capacity(n);
            file.by_ref()
                .take(n as u64)
                .read_to_end(&mut buf)
                .map_err(|e| Error::io(format!("reading {}", from.display()), e))?;
            Ok(buf)
        };
        if len <= SINGLE_PUT {
            let bytes = read(&mut file, len as usize)?;
            self.runtime
                .block_on(self.store.put(key, PutPayload::from(bytes)))
                .map_err(fail)?;
            return Ok(());
        }
        let mut upload = self
            .runtime
            .block_on(self.store.put_multipart(key))
            .map_err(fail)?;
        let result = (|| {
            loop {
                let part = read(&mut file, PART)?;
                if part.is_empty() {
                    break;
                }
                let done = part.len() < PART;
                self.runtime
                    .block_on(upload.put_part(PutPayload::from(part)))
                    .map_err(fail)?;
                if done {
                    break;
                }
            }
            self.runtime.block_on(upload.complete()).map_err(fail)
        })();
        if result.is_err() {
            let _ = self.runtime.block_on(upload.abort());
        }
        result.map(|_| ())
    }

    fn download(&self, key: &Key, to: &Path, max: u64) -> Result<bool> {
        let Some(size) = self.size_of(key)? else {
            return Ok(false);
        };
        if size > max {
            return Err(self.corrupt(key, format!("larger than {max} bytes")));
        }
        let mut out =
            std::fs::File::create(to).map_err(|e| Error::io(format!("creating {}", to.display()), e))?;
        let mut reader = ObjectReader {
            backend: self,
            key: key.clone(),
            size,
            at: 0,
            buf: bytes_empty(),
        };
        std::io::copy(&mut reader, &mut out)
            .and_then(|_| out.sync_all())
            .map_err(|e| Error::io(format!("downloading {}/{key}", self.bucket_url()), e))?;
        Ok(true)
    }
}

fn bytes_empty() -> std::io::Cursor<Vec<u8>> {
    std::io::Cursor::new(Vec::new())
}

/// Reads an object in ranged requests of [`READ_CHUNK`] bytes, up to the size `HEAD`
/// reported (a reader stops at most one chunk past what it asked for).
struct ObjectReader<'a> {
    backend: &'a S3Backend,
    key: Key,
    size: u64,
    at: u64,
    buf: std::io::Cursor<Vec<u8>>,
}

impl Read for ObjectReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        let n = self.buf.read(out)?;
        if n > 0 || self.at >= self.size {
            return Ok(n);
        }
        let range: Range<u64> = self.at..self.size.min(self.at + READ_CHUNK);
        let bytes = self
            .backend
            .runtime
            .block_on(self.backend.store.get_range(&self.key, range.clone()))
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        if bytes.len() as u64 != range.end - range.start {
            return Err(std::io::Error::other(format!(
                "{}/{}: the object changed while it was read",
                self.backend.bucket_url(),
                self.key
            )));
        }
        self.at = range.end;
        self.buf = std::io::Cursor::new(bytes.to_vec());
        self.buf.read(out)
    }
}

impl Backend for S3Backend {
    fn name(&self) -> String {
        self.url.clone()
    }

    fn object_location(&self, sha: &str) -> std::path::PathBuf {
        format!("{}/{}", self.bucket_url(), self.object(sha)).into()
    }

    fn prepare(&self, _create: bool) -> Result<()> {
        // Object storage has no directories to create or to find replaced by links.
        Ok(())
    }

    fn object_size(&self, sha: &str) -> Result<Option<u64>> {
        self.size_of(&self.object(sha))
    }

    fn put_object(&self, sha: &str, from: &Path) -> Result<()> {
        self.upload(&self.object(sha), from)
    }

    fn sync_objects(&self) -> Result<()> {
        // A PUT is durable when it returns.
        Ok(())
    }

    fn open_object(&self, sha: &str) -> Result<Option<Box<dyn Read + '_>>> {
        let key = self.object(sha);
        let Some(size) = self.size_of(&key)? else {
            return Ok(None);
        };
        Ok(Some(Box::new(ObjectReader {
            backend: self,
            key,
            size,
            at: 0,
            buf: bytes_empty(),
        })))
    }

    fn remove_object(&self, sha: &str) {
        let _ = self.runtime.block_on(self.store.delete(&self.object(sha)));
    }

    fn manifest_names(&self) -> Result<Vec<String>> {
        let prefix = self.key(&[BACKUPS]);
        let listing = self
            .runtime
            .block_on(self.store.list_with_delimiter(Some(&prefix)))
            .map_err(|e| s3_error(format!("listing {}/{prefix}", self.bucket_url()), e))?;
        Ok(listing
            .objects
            .into_iter()
            .filter_map(|o| o.location.filename().map(ToOwned::to_owned))
            .collect())
    }

    fn read_manifest(&self, id: &str, max: u64) -> Result<Vec<u8>> {
        let key = self.manifest(id);
        let size = self
            .size_of(&key)?
            .ok_or_else(|| self.corrupt(&key, "is missing".into()))?;
        if size > max {
            return Err(self.corrupt(&key, format!("larger than {max} bytes")));
        }
        let bytes = self
            .runtime
            .block_on(self.store.get_range(&key, 0..size))
            .map_err(|e| s3_error(format!("reading {}/{key}", self.bucket_url()), e))?;
        Ok(bytes.to_vec())
    }

    fn write_manifest(&self, id: &str, bytes: &[u8]) -> Result<()> {
        let key = self.manifest(id);
        self.runtime
            .block_on(self.store.put(&key, PutPayload::from(bytes.to_vec())))
            .map_err(|e| s3_error(format!("writing {}/{key}", self.bucket_url()), e))?;
        Ok(())
    }

    fn fetch_trail(&self, to: &Path) -> Result<()> {
        self.download(&self.key(&[AUDIT_FILE]), to, MAX_TRAIL)?;
        Ok(())
    }

    fn store_trail(&self, from: &Path) -> Result<()> {
        if std::fs::symlink_metadata(from).is_ok() {
            self.upload(&self.key(&[AUDIT_FILE]), from)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_validated_before_any_request() {
        for bad in [
            "",
            "B",
            "ab",
            "Bucket/x",
            "bucket/../x",
            "bucket/a//b",
            "bucket/./x",
            "bucket/x?y=1",
            "bucket/x y",
            "-bucket/x",
        ] {
            assert!(S3Backend::connect(bad).is_err(), "{bad:?} accepted");
        }
        assert!(is_prefix("tde/prod-1/db.v2"));
        assert!(is_bucket("my-bucket.backups"));
    }

    #[test]
    fn plain_http_only_to_loopback() {
        assert!(is_loopback("http://127.0.0.1:5000"));
        assert!(is_loopback("http://localhost:9000/"));
        assert!(is_loopback("http://[::1]:9000"));
        assert!(!is_loopback("http://s3.example.com"));
        assert!(!is_loopback("http://10.0.0.1:9000"));
    }
}
