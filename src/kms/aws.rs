//! AWS KMS (and anything speaking its JSON 1.1 protocol with SigV4): `aws-kms:` or
//! `aws-kms:?region=R&endpoint=URL`.
//!
//! The official SDK does the protocol, the signing and the standard credential chain
//! (`AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` / `AWS_SESSION_TOKEN`, the shared config
//! and credentials files, web identity, instance metadata), the region
//! (`AWS_REGION` / `AWS_DEFAULT_REGION`, the config file) and the endpoint
//! (`AWS_ENDPOINT_URL_KMS` / `AWS_ENDPOINT_URL`); the URI's parameters override the last
//! two. Its own retries are off: tde's retry policy applies, the same for every KMS. Every
//! call has a timeout.
//!
//! Errors map to tde's kinds: `DisabledException` → disabled; `KMSInvalidStateException`
//! → the state `DescribeKey` reports (pending deletion, pending import, disabled);
//! `InvalidCiphertextException` / `IncorrectKeyException` → invalid ciphertext;
//! `NotFoundException` → not found; `AccessDeniedException` → access denied; throttling →
//! throttled; HTTP 5xx, timeouts and connection failures → unavailable.

use std::time::Duration;

use aws_sdk_kms::config::retry::RetryConfig;
use aws_sdk_kms::config::timeout::TimeoutConfig;
use aws_sdk_kms::config::{BehaviorVersion, Region};
use aws_sdk_kms::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_kms::primitives::Blob;

use super::{
    DataKeySpec, EncryptionContext, GeneratedDataKey, KeyMetadata, KeySpec, KeyState, KeyVersionInfo, Kms,
    KmsError, KmsErrorKind, KmsResult, Origin, RotationInfo, Timestamp,
};
use crate::error::{Error, Result};
use crate::secret::{DataKey, SecretBytes, WrappedKey};

/// Longest a call may take, connection included.
const CALL_TIMEOUT: Duration = Duration::from_secs(15);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Most plaintext `Encrypt` takes.
pub const MAX_ENCRYPT_PLAINTEXT: usize = 4096;

/// An AWS KMS (or a server speaking its protocol).
pub struct AwsKms {
    client: aws_sdk_kms::Client,
    runtime: tokio::runtime::Runtime,
    uri: String,
}

impl std::fmt::Debug for AwsKms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsKms")
            .field("uri", &self.uri)
            .finish_non_exhaustive()
    }
}

impl AwsKms {
    /// Connects with the standard AWS configuration, `region` and `endpoint` overriding
    /// it. Makes no call: a wrong credential or an unreachable endpoint shows at the first
    /// operation.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if no region is configured anywhere.
    pub fn connect(region: Option<&str>, endpoint: Option<&str>) -> Result<AwsKms> {
        AwsKms::connect_inner(region, endpoint, None)
    }

    /// As [`AwsKms::connect`], signing with the access key `access_key_id` and its
    /// `secret` instead of the credential chain (a principal of `tde kms serve`, say).
    ///
    /// # Errors
    /// As [`AwsKms::connect`].
    pub fn connect_with_key(
        region: &str,
        endpoint: Option<&str>,
        access_key_id: &str,
        secret: &SecretBytes,
    ) -> Result<AwsKms> {
        let secret = std::str::from_utf8(secret.expose())
            .map_err(|_| Error::InvalidArgument("a secret access key is text".into()))?;
        let credentials = aws_sdk_kms::config::Credentials::new(access_key_id, secret, None, None, "tde");
        AwsKms::connect_inner(Some(region), endpoint, Some(credentials))
    }

    fn connect_inner(
        region: Option<&str>,
        endpoint: Option<&str>,
        credentials: Option<aws_sdk_kms::config::Credentials>,
    ) -> Result<AwsKms> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("tde-aws-kms")
            .enable_all()
            .build()
            .map_err(|e| Error::io("starting the AWS client runtime", e))?;
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .retry_config(RetryConfig::disabled())
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(CONNECT_TIMEOUT)
                    .operation_timeout(CALL_TIMEOUT)
                    .build(),
            );
        if let Some(region) = region {
            loader = loader.region(Region::new(region.to_owned()));
        }
        if let Some(endpoint) = endpoint {
            loader = loader.endpoint_url(endpoint);
        }
        if let Some(credentials) = credentials {
            loader = loader.credentials_provider(credentials);
        }
        let config = runtime.block_on(loader.load());
        if config.region().is_none() {
            return Err(Error::InvalidArgument(
                "aws-kms: no AWS region; set AWS_REGION or use aws-kms:?region=R".into(),
            ));
        }
        let client = aws_sdk_kms::Client::new(&config);
        let mut uri = "aws-kms:".to_owned();
        let params: Vec<String> = [("region", region), ("endpoint", endpoint)]
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| format!("{k}={v}")))
            .collect();
        if !params.is_empty() {
            uri.push('?');
            uri.push_str(&params.join("&"));
        }
        Ok(AwsKms { client, runtime, uri })
    }

    fn context(context: &EncryptionContext) -> Option<std::collections::HashMap<String, String>> {
        (!context.is_empty()).then(|| {
            context
                .iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect()
        })
    }

    /// A `KMSInvalidStateException`: the kind the key's state implies.
    fn state_error(&self, key: Option<&str>, message: String) -> KmsError {
        let kind = key
            .and_then(|k| self.describe_key(k).ok())
            .map_or(KmsErrorKind::InvalidRequest, |meta| match meta.state {
                KeyState::Disabled => KmsErrorKind::Disabled,
                KeyState::PendingDeletion => KmsErrorKind::PendingDeletion,
                KeyState::PendingImport => KmsErrorKind::PendingImport,
                KeyState::Enabled => KmsErrorKind::InvalidRequest,
            });
        KmsError::new(kind, message)
    }

    fn map_error<E: ProvideErrorMetadata + std::error::Error + 'static>(
        &self,
        key: Option<&str>,
        error: SdkError<E>,
    ) -> KmsError {
        let with_key = |e: KmsError| match key {
            Some(k) => e.with_key(k),
            None => e,
        };
        let status = error.raw_response().map(|r| r.status().as_u16());
        let code = error.code().map(str::to_owned);
        let message = error
            .message()
            .map_or_else(|| aws_error_text(&error), str::to_owned);
        let kind = match (&error, code.as_deref()) {
            (SdkError::TimeoutError(_) | SdkError::DispatchFailure(_), _) => KmsErrorKind::Unavailable,
            (_, Some("DisabledException")) => KmsErrorKind::Disabled,
            (_, Some("KMSInvalidStateException")) => return with_key(self.state_error(key, message)),
            (_, Some("InvalidCiphertextException" | "IncorrectKeyException")) => {
                KmsErrorKind::InvalidCiphertext
            }
            (_, Some("NotFoundException")) => KmsErrorKind::NotFound,
            (
                _,
                Some("AccessDeniedException" | "UnrecognizedClientException" | "InvalidSignatureException"),
            ) => KmsErrorKind::AccessDenied,
            (
                _,
                Some(
                    "ThrottlingException"
                    | "LimitExceededException"
                    | "TooManyRequestsException"
                    | "RequestLimitExceeded",
                ),
            ) => KmsErrorKind::Throttled,
            (_, Some("KMSInternalException" | "DependencyTimeoutException" | "KeyUnavailableException")) => {
                KmsErrorKind::Unavailable
            }
            _ if status.is_some_and(|s| s >= 500) => KmsErrorKind::Unavailable,
            _ if status == Some(429) => KmsErrorKind::Throttled,
            (SdkError::ResponseError(_), _) => KmsErrorKind::Unavailable,
            _ => KmsErrorKind::InvalidRequest,
        };
        let text = match code {
            Some(code) => format!("{code}: {message}"),
            None => message,
        };
        with_key(KmsError::new(kind, text))
    }
}

/// The text of an SDK error with its sources (no secrets: requests are not included).
fn aws_error_text(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

fn seconds(t: Option<&aws_sdk_kms::primitives::DateTime>) -> Timestamp {
    Timestamp(t.map_or(0, |t| u64::try_from(t.secs()).unwrap_or(0)))
}

impl Kms for AwsKms {
    fn describe(&self) -> String {
        self.uri.clone()
    }

    fn generate_data_key(
        &self,
        key: &str,
        spec: DataKeySpec,
        context: &EncryptionContext,
    ) -> KmsResult<GeneratedDataKey> {
        let request = self
            .client
            .generate_data_key()
            .key_id(key)
            .number_of_bytes(spec.key_len() as i32)
            .set_encryption_context(AwsKms::context(context));
        let out = self
            .runtime
            .block_on(request.send())
            .map_err(|e| self.map_error(Some(key), e))?;
        let malformed = || KmsError::new(KmsErrorKind::Internal, "GenerateDataKey returned no key");
        let plaintext = out.plaintext().ok_or_else(malformed)?;
        if plaintext.as_ref().len() != spec.key_len() {
            return Err(malformed());
        }
        Ok(GeneratedDataKey {
            key_id: out.key_id().unwrap_or(key).to_owned(),
            plaintext: DataKey::from_slice(plaintext.as_ref()),
            wrapped: WrappedKey::from_bytes(out.ciphertext_blob().ok_or_else(malformed)?.as_ref().to_vec()),
        })
    }

    fn encrypt(&self, key: &str, plaintext: &[u8], context: &EncryptionContext) -> KmsResult<Vec<u8>> {
        super::provider::check_direct(plaintext.len(), MAX_ENCRYPT_PLAINTEXT, "AWS KMS")?;
        let request = self
            .client
            .encrypt()
            .key_id(key)
            .plaintext(Blob::new(plaintext))
            .set_encryption_context(AwsKms::context(context));
        let out = self
            .runtime
            .block_on(request.send())
            .map_err(|e| self.map_error(Some(key), e))?;
        out.ciphertext_blob()
            .map(|b| b.as_ref().to_vec())
            .ok_or_else(|| KmsError::new(KmsErrorKind::Internal, "Encrypt returned no ciphertext"))
    }

    fn decrypt(&self, ciphertext: &[u8], context: &EncryptionContext) -> KmsResult<SecretBytes> {
        let request = self
            .client
            .decrypt()
            .ciphertext_blob(Blob::new(ciphertext))
            .set_encryption_context(AwsKms::context(context));
        let out = self
            .runtime
            .block_on(request.send())
            .map_err(|e| self.map_error(None, e))?;
        out.plaintext()
            .map(|p| SecretBytes::new(p.as_ref().to_vec()))
            .ok_or_else(|| KmsError::new(KmsErrorKind::Internal, "Decrypt returned no plaintext"))
    }

    fn re_encrypt(
        &self,
        ciphertext: &[u8],
        source_context: &EncryptionContext,
        destination_key: &str,
        destination_context: &EncryptionContext,
    ) -> KmsResult<Vec<u8>> {
        let request = self
            .client
            .re_encrypt()
            .ciphertext_blob(Blob::new(ciphertext))
            .set_source_encryption_context(AwsKms::context(source_context))
            .destination_key_id(destination_key)
            .set_destination_encryption_context(AwsKms::context(destination_context));
        let out = self
            .runtime
            .block_on(request.send())
            .map_err(|e| self.map_error(Some(destination_key), e))?;
        out.ciphertext_blob()
            .map(|b| b.as_ref().to_vec())
            .ok_or_else(|| KmsError::new(KmsErrorKind::Internal, "ReEncrypt returned no ciphertext"))
    }

    fn can_check_unwrap(&self) -> bool {
        true
    }

    fn check_unwrap(&self, wrapped: &[u8], context: &EncryptionContext) -> KmsResult<()> {
        let request = self
            .client
            .decrypt()
            .ciphertext_blob(Blob::new(wrapped))
            .set_encryption_context(AwsKms::context(context))
            .dry_run(true);
        match self.runtime.block_on(request.send()) {
            // A server that ignores DryRun decrypted it: allowed (the plaintext is
            // dropped at once).
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some("DryRunOperationException") => Ok(()),
            Err(e) => Err(self.map_error(None, e)),
        }
    }

    fn describe_key(&self, key: &str) -> KmsResult<KeyMetadata> {
        let out = self
            .runtime
            .block_on(self.client.describe_key().key_id(key).send())
            .map_err(|e| self.map_error(Some(key), e))?;
        let meta = out
            .key_metadata()
            .ok_or_else(|| KmsError::new(KmsErrorKind::Internal, "DescribeKey returned no metadata"))?;
        use aws_sdk_kms::types::KeyState as S;
        let state = match meta.key_state() {
            Some(S::Enabled) => KeyState::Enabled,
            Some(S::PendingDeletion | S::PendingReplicaDeletion) => KeyState::PendingDeletion,
            Some(S::PendingImport) => KeyState::PendingImport,
            _ => KeyState::Disabled,
        };
        let origin = match meta.origin() {
            Some(aws_sdk_kms::types::OriginType::External) => Origin::External,
            _ => Origin::Kms,
        };
        let created = seconds(meta.creation_date());
        Ok(KeyMetadata {
            key_id: meta.arn().unwrap_or(meta.key_id()).to_owned(),
            aliases: Vec::new(),
            description: meta.description().unwrap_or_default().to_owned(),
            spec: KeySpec::Aes256,
            origin,
            state,
            created_at: created,
            service_key: false,
            versions: vec![KeyVersionInfo {
                version: 1,
                created_at: created,
            }],
            primary_version: 1,
            rotation: RotationInfo {
                interval_days: None,
                last_rotated_at: created,
                next_rotation_at: None,
            },
            deletion_date: meta.deletion_date().map(|d| seconds(Some(d))),
            material_expires_at: meta.valid_to().map(|d| seconds(Some(d))),
            material_expired: false,
        })
    }
}

impl AwsKms {
    /// Creates a symmetric key (and the alias `alias`, if given) — the `tde kms
    /// create-key` of this provider; returns the key's ARN.
    ///
    /// # Errors
    /// [`Error::Kms`] as AWS KMS answers.
    pub fn create_key(&self, alias: Option<&str>, description: Option<&str>) -> Result<String> {
        let out = self
            .runtime
            .block_on(
                self.client
                    .create_key()
                    .set_description(description.map(str::to_owned))
                    .send(),
            )
            .map_err(|e| self.map_error(None, e))?;
        let meta = out
            .key_metadata()
            .ok_or_else(|| KmsError::new(KmsErrorKind::Internal, "CreateKey returned no metadata"))?;
        let id = meta.key_id().to_owned();
        if let Some(alias) = alias {
            self.runtime
                .block_on(
                    self.client
                        .create_alias()
                        .alias_name(alias)
                        .target_key_id(&id)
                        .send(),
                )
                .map_err(|e| self.map_error(Some(alias), e))?;
        }
        Ok(meta.arn().unwrap_or(&id).to_owned())
    }

    /// The key id an alias (or id, or ARN) names: the management operations take no
    /// alias.
    fn resolve(&self, key: &str) -> Result<String> {
        let out = self
            .runtime
            .block_on(self.client.describe_key().key_id(key).send())
            .map_err(|e| self.map_error(Some(key), e))?;
        out.key_metadata()
            .map(|m| m.key_id().to_owned())
            .ok_or_else(|| KmsError::new(KmsErrorKind::Internal, "DescribeKey returned no metadata").into())
    }

    /// Enables or disables `key` (`EnableKey` / `DisableKey`: the emergency stop).
    ///
    /// # Errors
    /// [`Error::Kms`] as AWS KMS answers.
    pub fn set_enabled(&self, key: &str, on: bool) -> Result<()> {
        let key = &self.resolve(key)?;
        if on {
            self.runtime
                .block_on(self.client.enable_key().key_id(key).send())
                .map_err(|e| self.map_error(Some(key), e))?;
        } else {
            self.runtime
                .block_on(self.client.disable_key().key_id(key).send())
                .map_err(|e| self.map_error(Some(key), e))?;
        }
        Ok(())
    }

    /// Rotates `key` now (`RotateKeyOnDemand`).
    ///
    /// # Errors
    /// [`Error::Kms`] as AWS KMS answers.
    pub fn rotate_key(&self, key: &str) -> Result<()> {
        let key = &self.resolve(key)?;
        self.runtime
            .block_on(self.client.rotate_key_on_demand().key_id(key).send())
            .map_err(|e| self.map_error(Some(key), e))?;
        Ok(())
    }

    /// Schedules `key`'s deletion after `days` (7-30); returns the deletion date.
    ///
    /// # Errors
    /// [`Error::Kms`] as AWS KMS answers.
    pub fn schedule_deletion(&self, key: &str, days: u32) -> Result<Timestamp> {
        let key = &self.resolve(key)?;
        let out = self
            .runtime
            .block_on(
                self.client
                    .schedule_key_deletion()
                    .key_id(key)
                    .pending_window_in_days(i32::try_from(days).unwrap_or(30))
                    .send(),
            )
            .map_err(|e| self.map_error(Some(key), e))?;
        Ok(seconds(out.deletion_date()))
    }

    /// Cancels `key`'s scheduled deletion (`CancelKeyDeletion`).
    ///
    /// # Errors
    /// [`Error::Kms`] as AWS KMS answers.
    pub fn cancel_deletion(&self, key: &str) -> Result<()> {
        let key = &self.resolve(key)?;
        self.runtime
            .block_on(self.client.cancel_key_deletion().key_id(key).send())
            .map_err(|e| self.map_error(Some(key), e))?;
        Ok(())
    }

    /// Points `alias` at `key`: `UpdateAlias`, or `CreateAlias` if it does not exist.
    ///
    /// # Errors
    /// [`Error::Kms`] as AWS KMS answers.
    pub fn set_alias(&self, alias: &str, key: &str) -> Result<()> {
        let key = &self.resolve(key)?;
        let updated = self.runtime.block_on(
            self.client
                .update_alias()
                .alias_name(alias)
                .target_key_id(key)
                .send(),
        );
        match updated.map_err(|e| self.map_error(Some(alias), e)) {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == KmsErrorKind::NotFound => {
                self.runtime
                    .block_on(
                        self.client
                            .create_alias()
                            .alias_name(alias)
                            .target_key_id(key)
                            .send(),
                    )
                    .map_err(|e| self.map_error(Some(alias), e))?;
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }
}
