//! The AWS KMS JSON 1.1 operations the server answers, with AWS's request and response
//! shapes and error codes, on the local KMS. Every request is authenticated (SigV4) and
//! authorised before it reaches the KMS.
//!
//! Authorisation in this version: the default key policy, under which a key is used and
//! administered by its account's administrators only. Keys made over the API belong to
//! the caller's account.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};

use super::sigv4;
use crate::kms::local::{LocalKms, PrincipalInfo};
use crate::kms::{DataKeySpec, EncryptionContext, KeyMetadata, KeyState, Kms, KmsError, KmsErrorKind};

/// An AWS error: HTTP status, `__type`, message.
#[derive(Debug)]
pub(crate) struct ApiError {
    pub(crate) status: u16,
    pub(crate) code: &'static str,
    pub(crate) message: String,
}

fn error(status: u16, code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError {
        status,
        code,
        message: message.into(),
    }
}

fn invalid(message: impl Into<String>) -> ApiError {
    error(400, "ValidationException", message)
}

impl From<KmsError> for ApiError {
    fn from(e: KmsError) -> ApiError {
        let (status, code) = match e.kind() {
            KmsErrorKind::NotFound => (400, "NotFoundException"),
            KmsErrorKind::Disabled => (400, "DisabledException"),
            KmsErrorKind::PendingDeletion
            | KmsErrorKind::PendingImport
            | KmsErrorKind::KeyMaterialExpired => (400, "KMSInvalidStateException"),
            KmsErrorKind::AccessDenied => (400, "AccessDeniedException"),
            KmsErrorKind::InvalidCiphertext => (400, "InvalidCiphertextException"),
            KmsErrorKind::InvalidRequest => (400, "ValidationException"),
            KmsErrorKind::Throttled => (400, "ThrottlingException"),
            KmsErrorKind::Unavailable | KmsErrorKind::Internal => (500, "KMSInternalException"),
        };
        error(status, code, e.to_string())
    }
}

/// What a request carries once authenticated.
pub(crate) struct Caller {
    pub(crate) principal: PrincipalInfo,
    pub(crate) region: String,
}

fn key_arn(region: &str, account: &str, id: &str) -> String {
    format!("arn:aws:kms:{region}:{account}:key/{id}")
}

/// A key id from `KeyId`: an id, an alias, or either's ARN (`arn:aws:kms:R:A:key/ID`,
/// `arn:aws:kms:R:A:alias/NAME`).
fn key_name(key: &str) -> &str {
    match key.strip_prefix("arn:aws:kms:") {
        Some(rest) => rest
            .splitn(3, ':')
            .nth(2)
            .map_or(key, |r| r.strip_prefix("key/").unwrap_or(r)),
        None => key,
    }
}

fn str_field<'a>(body: &'a Value, name: &str) -> Result<&'a str, ApiError> {
    body.get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| invalid(format!("{name} is required")))
}

fn blob_field(body: &Value, name: &str) -> Result<Vec<u8>, ApiError> {
    B64.decode(str_field(body, name)?)
        .map_err(|_| invalid(format!("{name} is not base64")))
}

fn context_field(body: &Value, name: &str) -> Result<EncryptionContext, ApiError> {
    let mut ctx = EncryptionContext::new();
    if let Some(map) = body.get(name) {
        let map = map
            .as_object()
            .ok_or_else(|| invalid(format!("{name} must be a map of strings")))?;
        for (k, v) in map {
            let v = v
                .as_str()
                .ok_or_else(|| invalid(format!("{name} must be a map of strings")))?;
            ctx = ctx.with(k.clone(), v.to_owned());
        }
    }
    Ok(ctx)
}

fn timestamp(t: crate::kms::Timestamp) -> Value {
    json!(t.0)
}

/// The account that owns `key`, or an error if the caller may not use it.
fn authorize(kms: &LocalKms, caller: &Caller, key_id: &str, action: &str) -> Result<String, ApiError> {
    let owner = kms.key_owner(key_id)?;
    let allowed = caller.principal.admin && owner.as_deref() == Some(caller.principal.account.as_str());
    if allowed {
        Ok(caller.principal.account.clone())
    } else {
        Err(error(
            400,
            "AccessDeniedException",
            format!(
                "User: {} is not authorized to perform: kms:{action} on this resource",
                caller.principal.arn
            ),
        ))
    }
}

fn metadata(meta: &KeyMetadata, account: &str, region: &str) -> Value {
    let state = match meta.state {
        KeyState::Enabled => "Enabled",
        KeyState::Disabled => "Disabled",
        KeyState::PendingDeletion => "PendingDeletion",
        KeyState::PendingImport => "PendingImport",
    };
    let mut m = json!({
        "AWSAccountId": account,
        "KeyId": meta.key_id,
        "Arn": key_arn(region, account, &meta.key_id),
        "CreationDate": timestamp(meta.created_at),
        "Enabled": meta.state == KeyState::Enabled,
        "Description": meta.description,
        "KeyUsage": "ENCRYPT_DECRYPT",
        "KeyState": state,
        "Origin": if meta.origin == crate::kms::Origin::External { "EXTERNAL" } else { "AWS_KMS" },
        "KeyManager": "CUSTOMER",
        "KeySpec": "SYMMETRIC_DEFAULT",
        "CustomerMasterKeySpec": "SYMMETRIC_DEFAULT",
        "EncryptionAlgorithms": ["SYMMETRIC_DEFAULT"],
        "MultiRegion": false,
    });
    if let Some(d) = meta.deletion_date {
        m["DeletionDate"] = timestamp(d);
    }
    m
}

/// Runs operation `op` with JSON `body` for `caller`.
pub(crate) fn dispatch(kms: &LocalKms, caller: &Caller, op: &str, body: &Value) -> Result<Value, ApiError> {
    let region = caller.region.as_str();
    match op {
        "CreateKey" => {
            if !caller.principal.admin {
                return Err(error(
                    400,
                    "AccessDeniedException",
                    format!(
                        "User: {} is not authorized to perform: kms:CreateKey",
                        caller.principal.arn
                    ),
                ));
            }
            let options = crate::kms::local::CreateKeyOptions {
                description: body
                    .get("Description")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
                ..Default::default()
            };
            let meta = kms.create_key_for(&options, &caller.principal.account)?;
            Ok(json!({"KeyMetadata": metadata(&meta, &caller.principal.account, region)}))
        }
        "DescribeKey" => {
            let key = key_name(str_field(body, "KeyId")?);
            let meta = kms.describe_key(key)?;
            let account = authorize(kms, caller, &meta.key_id, "DescribeKey")?;
            Ok(json!({"KeyMetadata": metadata(&meta, &account, region)}))
        }
        "EnableKey" | "DisableKey" => {
            let key = key_name(str_field(body, "KeyId")?);
            let id = kms.describe_key(key)?.key_id;
            authorize(kms, caller, &id, op)?;
            if op == "EnableKey" {
                kms.enable_key(&id)?;
            } else {
                kms.disable_key(&id)?;
            }
            Ok(json!({}))
        }
        "GenerateDataKey" | "GenerateDataKeyWithoutPlaintext" => {
            let key = key_name(str_field(body, "KeyId")?);
            let id = kms.describe_key(key)?.key_id;
            let account = authorize(kms, caller, &id, op)?;
            let spec = match (
                body.get("KeySpec").and_then(Value::as_str),
                body.get("NumberOfBytes"),
            ) {
                (Some("AES_256"), None) => DataKeySpec::Aes256,
                (None, Some(n)) if n.as_u64() == Some(32) => DataKeySpec::Aes256,
                (None, Some(n)) if n.as_u64() == Some(16) => DataKeySpec::Sm4,
                _ => {
                    return Err(invalid(
                        "give KeySpec AES_256, or NumberOfBytes 32 or 16 (this server makes no other sizes)",
                    ));
                }
            };
            let ctx = context_field(body, "EncryptionContext")?;
            let dk = kms.generate_data_key(&id, spec, &ctx)?;
            let mut out = json!({
                "KeyId": key_arn(region, &account, &id),
                "CiphertextBlob": B64.encode(dk.wrapped.as_bytes()),
            });
            if op == "GenerateDataKey" {
                out["Plaintext"] = json!(B64.encode(dk.plaintext.expose()));
            }
            Ok(out)
        }
        "Encrypt" => {
            let key = key_name(str_field(body, "KeyId")?);
            let id = kms.describe_key(key)?.key_id;
            let account = authorize(kms, caller, &id, op)?;
            let plain = zeroize::Zeroizing::new(blob_field(body, "Plaintext")?);
            let blob = kms.encrypt(&id, &plain, &context_field(body, "EncryptionContext")?)?;
            Ok(json!({
                "KeyId": key_arn(region, &account, &id),
                "CiphertextBlob": B64.encode(blob),
                "EncryptionAlgorithm": "SYMMETRIC_DEFAULT",
            }))
        }
        "Decrypt" => {
            let blob = blob_field(body, "CiphertextBlob")?;
            let id = kms.blob_key_id(&blob)?;
            if let Some(given) = body.get("KeyId").and_then(Value::as_str)
                && kms.describe_key(key_name(given))?.key_id != id
            {
                return Err(error(
                    400,
                    "IncorrectKeyException",
                    "the ciphertext was not encrypted under that key",
                ));
            }
            let account = authorize(kms, caller, &id, op)?;
            let plain = kms.decrypt(&blob, &context_field(body, "EncryptionContext")?)?;
            Ok(json!({
                "KeyId": key_arn(region, &account, &id),
                "Plaintext": B64.encode(plain.expose()),
                "EncryptionAlgorithm": "SYMMETRIC_DEFAULT",
            }))
        }
        "ReEncrypt" => {
            let blob = blob_field(body, "CiphertextBlob")?;
            let source = kms.blob_key_id(&blob)?;
            authorize(kms, caller, &source, "ReEncryptFrom")?;
            let destination = kms
                .describe_key(key_name(str_field(body, "DestinationKeyId")?))?
                .key_id;
            let account = authorize(kms, caller, &destination, "ReEncryptTo")?;
            let out = kms.re_encrypt(
                &blob,
                &context_field(body, "SourceEncryptionContext")?,
                &destination,
                &context_field(body, "DestinationEncryptionContext")?,
            )?;
            Ok(json!({
                "CiphertextBlob": B64.encode(out),
                "KeyId": key_arn(region, &account, &destination),
                "SourceKeyId": key_arn(region, &account, &source),
            }))
        }
        _ => Err(error(
            400,
            "UnknownOperationException",
            format!("{op} is not supported"),
        )),
    }
}

/// The AWS error for a request that does not authenticate.
pub(crate) fn auth_error(e: &sigv4::AuthError) -> ApiError {
    match e {
        sigv4::AuthError::Malformed(why) => error(400, "IncompleteSignatureException", why.clone()),
        sigv4::AuthError::Skewed => error(
            400,
            "InvalidSignatureException",
            "Signature expired: the request time is more than 5 minutes from the server's",
        ),
        sigv4::AuthError::BadSignature => error(
            400,
            "InvalidSignatureException",
            "The request signature we calculated does not match the signature you provided.",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_ids_from_arns() {
        assert_eq!(key_name("arn:aws:kms:us-east-1:123456789012:key/abc"), "abc");
        assert_eq!(key_name("arn:aws:kms:us-east-1:123456789012:alias/x"), "alias/x");
        assert_eq!(key_name("alias/x"), "alias/x");
    }
}
