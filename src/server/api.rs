//! The AWS KMS JSON 1.1 operations the server answers, with AWS's request and response
//! shapes and error codes, on the local KMS. Every request is authenticated (SigV4) and
//! authorised before it reaches the KMS.
//!
//! Authorisation: the key's policy (`policy`), then its grants. Keys made over the API
//! belong to the caller's account and get the default policy (the account's
//! administrators only). Keys of the local KMS that no account owns are not served.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};

use super::policy::{Decision, Policy};
use super::sigv4;
use crate::kms::local::{Grant, LocalKms, PrincipalInfo};
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

/// What `KeyId` names, in the local KMS's terms. A key id, or a key ARN's id, as is. An
/// alias is the caller's account's: aliases are per account, as AWS's are, and kept in
/// the KMS as `alias/ACCOUNT/NAME`, so that one account's names neither collide with nor
/// reveal another's. An alias ARN (`arn:aws:kms:R:ACCOUNT:alias/NAME`) names that
/// account's alias (whether the caller may use its key is then up to authorization).
fn key_ref(account: &str, key: &str) -> String {
    let (account, resource) = match key.strip_prefix("arn:aws:kms:") {
        Some(rest) => {
            let mut parts = rest.splitn(3, ':').skip(1);
            match (parts.next(), parts.next()) {
                (Some(a), Some(r)) if a.len() == 12 && a.bytes().all(|b| b.is_ascii_digit()) => (a, r),
                // Not an ARN this server issues: names nothing.
                _ => return key.to_owned(),
            }
        }
        None => (account, key),
    };
    match resource.strip_prefix("alias/") {
        Some(name) => account_alias(account, name),
        None => resource.strip_prefix("key/").unwrap_or(resource).to_owned(),
    }
}

/// Account `account`'s alias `alias/NAME`, as the local KMS keeps it.
fn account_alias(account: &str, name: &str) -> String {
    format!("alias/{account}/{name}")
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

fn denied(caller: &Caller, action: &str) -> ApiError {
    error(
        400,
        "AccessDeniedException",
        format!(
            "User: {} is not authorized to perform: kms:{action} on this resource",
            caller.principal.arn
        ),
    )
}

/// What an authorised request may rely on.
pub(crate) struct Access {
    /// The account that owns the key.
    pub(crate) owner: String,
    /// The grant that allowed it, if a grant did.
    pub(crate) grant: Option<String>,
}

/// Whether `grantee` (as a grant names it) is the caller.
fn is_grantee(grantee: &str, caller: &Caller) -> bool {
    let p = &caller.principal;
    grantee == p.arn
        || (p.admin && (grantee == p.account || grantee == crate::kms::local::account_root_arn(&p.account)))
}

fn grant_covers(g: &Grant, caller: &Caller, action: &str, ctx: Option<&EncryptionContext>) -> bool {
    if !is_grantee(&g.grantee, caller) || !g.operations.iter().any(|o| o == action) {
        return false;
    }
    let pairs = |c: &EncryptionContext| -> std::collections::BTreeMap<String, String> {
        c.iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect()
    };
    if let Some(equals) = &g.context_equals
        && ctx.map(pairs).as_ref() != Some(equals)
    {
        return false;
    }
    if let Some(subset) = &g.context_subset {
        let Some(ctx) = ctx else {
            return false;
        };
        if !subset.iter().all(|(k, v)| ctx.get(k) == Some(v.as_str())) {
            return false;
        }
    }
    true
}

/// Whether `caller` may perform `action` (an operation name) on key `key_id`, with the
/// request's encryption context `ctx`: the key's policy (an explicit deny wins), then its
/// grants.
pub(crate) fn authorize(
    kms: &LocalKms,
    caller: &Caller,
    key_id: &str,
    action: &str,
    ctx: Option<&EncryptionContext>,
) -> Result<Access, ApiError> {
    let Some(owner) = kms.key_owner(key_id)? else {
        return Err(denied(caller, action));
    };
    let text = kms
        .key_policy(key_id)?
        .unwrap_or_else(|| Policy::default_text(&owner));
    let policy = Policy::parse(&text).map_err(|e| error(500, "KMSInternalException", e))?;
    let qualified = format!("kms:{action}");
    let arn = key_arn(&caller.region, &owner, key_id);
    let request = super::policy::Request {
        caller_arn: &caller.principal.arn,
        caller_account: &caller.principal.account,
        caller_admin: caller.principal.admin,
        action: &qualified,
        key_arn: &arn,
        context: ctx,
    };
    match policy.decide(&request) {
        Decision::Deny => Err(denied(caller, action)),
        Decision::Allow => Ok(Access { owner, grant: None }),
        Decision::None => kms
            .grants(key_id)?
            .into_iter()
            .find(|(_, g)| grant_covers(g, caller, action, ctx))
            .map(|(id, _)| Access {
                owner,
                grant: Some(id),
            })
            .ok_or_else(|| denied(caller, action)),
    }
}

/// `DryRunOperationException` if the request asked for a dry run (after it was
/// authorised: the answer says it would have succeeded).
fn dry_run(body: &Value) -> Result<(), ApiError> {
    if body.get("DryRun").and_then(Value::as_bool) == Some(true) {
        return Err(error(
            412,
            "DryRunOperationException",
            "The request would have succeeded, but the DryRun parameter was set.",
        ));
    }
    Ok(())
}

/// A key's id from `KeyId` (id, alias or ARN), if it exists.
fn resolve(kms: &LocalKms, caller: &Caller, body: &Value, field: &str) -> Result<String, ApiError> {
    Ok(kms
        .describe_key(&key_ref(&caller.principal.account, str_field(body, field)?))?
        .key_id)
}

fn context_map(
    body: &Value,
    name: &str,
) -> Result<Option<std::collections::BTreeMap<String, String>>, ApiError> {
    match body.get(name) {
        None => Ok(None),
        Some(_) => Ok(Some(
            context_field(body, name)?
                .iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
        )),
    }
}

/// The operations a grant may allow.
const GRANT_OPERATIONS: &[&str] = &[
    "Decrypt",
    "Encrypt",
    "GenerateDataKey",
    "GenerateDataKeyWithoutPlaintext",
    "ReEncryptFrom",
    "ReEncryptTo",
    "CreateGrant",
    "RetireGrant",
    "DescribeKey",
];

fn grant_json(id: &str, g: &Grant, region: &str, owner: &str) -> Value {
    let mut constraints = serde_json::Map::new();
    if let Some(c) = &g.context_equals {
        constraints.insert("EncryptionContextEquals".into(), json!(c));
    }
    if let Some(c) = &g.context_subset {
        constraints.insert("EncryptionContextSubset".into(), json!(c));
    }
    let mut out = json!({
        "KeyId": key_arn(region, owner, &g.key_id),
        "GrantId": id,
        "Name": g.name,
        "CreationDate": timestamp(g.created_at),
        "GranteePrincipal": g.grantee,
        "IssuingAccount": crate::kms::local::account_root_arn(owner),
        "Operations": g.operations,
    });
    if let Some(r) = &g.retiring {
        out["RetiringPrincipal"] = json!(r);
    }
    if !constraints.is_empty() {
        out["Constraints"] = Value::Object(constraints);
    }
    out
}

/// `Limit` (1–1000, default 100) and `Marker` of a list request.
fn page(body: &Value) -> Result<(usize, Option<String>), ApiError> {
    let limit = match body.get("Limit") {
        None => 100,
        Some(v) => match v.as_u64() {
            Some(n @ 1..=1000) => usize::try_from(n).unwrap_or(100),
            _ => return Err(invalid("Limit: 1 to 1000")),
        },
    };
    Ok((
        limit,
        body.get("Marker").and_then(Value::as_str).map(ToOwned::to_owned),
    ))
}

/// One page of `items` (sorted by their marker key) after `marker`.
fn paginate<T>(items: Vec<(String, T)>, limit: usize, marker: Option<&str>) -> (Vec<T>, Option<String>) {
    let mut rest: Vec<(String, T)> = items
        .into_iter()
        .filter(|(k, _)| marker.is_none_or(|m| k.as_str() > m))
        .collect();
    let next = if rest.len() > limit {
        rest.truncate(limit);
        rest.last().map(|(k, _)| k.clone())
    } else {
        None
    };
    (rest.into_iter().map(|(_, v)| v).collect(), next)
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

/// Runs operation `op` with JSON `body` for `caller`; the answer, and the grant that
/// allowed it if a grant did.
pub(crate) fn dispatch(
    kms: &LocalKms,
    caller: &Caller,
    op: &str,
    body: &Value,
) -> Result<(Value, Option<String>), ApiError> {
    let region = caller.region.as_str();
    let arn = |owner: &str, id: &str| key_arn(region, owner, id);
    let plain = |v: Value| Ok((v, None));
    match op {
        "CreateKey" => {
            if !caller.principal.admin {
                return Err(denied(caller, op));
            }
            if body.get("Policy").is_some() {
                return Err(invalid("set a key's policy with PutKeyPolicy after CreateKey"));
            }
            let origin = match body.get("Origin").and_then(Value::as_str) {
                None | Some("AWS_KMS") => crate::kms::Origin::Kms,
                Some("EXTERNAL") => crate::kms::Origin::External,
                Some(other) => {
                    return Err(error(
                        400,
                        "UnsupportedOperationException",
                        format!("Origin {other}"),
                    ));
                }
            };
            match body
                .get("KeySpec")
                .or_else(|| body.get("CustomerMasterKeySpec"))
                .and_then(Value::as_str)
            {
                None | Some("SYMMETRIC_DEFAULT") => {}
                Some(other) => {
                    return Err(error(
                        400,
                        "UnsupportedOperationException",
                        format!("KeySpec {other}: symmetric keys only"),
                    ));
                }
            }
            let options = crate::kms::local::CreateKeyOptions {
                description: body
                    .get("Description")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
                origin,
                ..Default::default()
            };
            let meta = kms.create_key_for(&options, &caller.principal.account)?;
            plain(json!({"KeyMetadata": metadata(&meta, &caller.principal.account, region)}))
        }
        "DescribeKey" => {
            let meta = kms.describe_key(&key_ref(&caller.principal.account, str_field(body, "KeyId")?))?;
            let access = authorize(kms, caller, &meta.key_id, op, None)?;
            Ok((
                json!({"KeyMetadata": metadata(&meta, &access.owner, region)}),
                access.grant,
            ))
        }
        "ListKeys" => {
            let (limit, marker) = page(body)?;
            let mut keys: Vec<(String, Value)> = Vec::new();
            for meta in kms.list_keys()? {
                if kms.key_owner(&meta.key_id)?.as_deref() == Some(caller.principal.account.as_str()) {
                    let v =
                        json!({"KeyId": meta.key_id, "KeyArn": arn(&caller.principal.account, &meta.key_id)});
                    keys.push((meta.key_id, v));
                }
            }
            keys.sort_by(|a, b| a.0.cmp(&b.0));
            let (keys, next) = paginate(keys, limit, marker.as_deref());
            let mut out = json!({"Keys": keys, "Truncated": next.is_some()});
            if let Some(n) = next {
                out["NextMarker"] = json!(n);
            }
            plain(out)
        }
        "ListAliases" => {
            let (limit, marker) = page(body)?;
            let account = caller.principal.account.as_str();
            let only = match body.get("KeyId").and_then(Value::as_str) {
                Some(k) => Some(kms.describe_key(&key_ref(account, k))?.key_id),
                None => None,
            };
            let prefix = account_alias(account, "");
            let mut aliases: Vec<(String, Value)> = Vec::new();
            for meta in kms.list_keys()? {
                if only.as_ref().is_some_and(|o| *o != meta.key_id) {
                    continue;
                }
                for name in meta.aliases.iter().filter_map(|a| a.strip_prefix(&prefix)) {
                    let alias = format!("alias/{name}");
                    let v = json!({
                        "AliasName": alias,
                        "AliasArn": format!("arn:aws:kms:{region}:{account}:{alias}"),
                        "TargetKeyId": meta.key_id,
                    });
                    aliases.push((alias, v));
                }
            }
            aliases.sort_by(|a, b| a.0.cmp(&b.0));
            let (aliases, next) = paginate(aliases, limit, marker.as_deref());
            let mut out = json!({"Aliases": aliases, "Truncated": next.is_some()});
            if let Some(n) = next {
                out["NextMarker"] = json!(n);
            }
            plain(out)
        }
        "CreateAlias" | "UpdateAlias" => {
            let account = caller.principal.account.as_str();
            let name = str_field(body, "AliasName")?
                .strip_prefix("alias/")
                .ok_or_else(|| invalid("AliasName must begin with alias/"))?;
            if name.starts_with("aws/") {
                return Err(invalid("alias/aws/ names are reserved"));
            }
            let alias = account_alias(account, name);
            let id = resolve(kms, caller, body, "TargetKeyId")?;
            // An alias and its key are in one account, as in AWS.
            if kms.key_owner(&id)?.as_deref() != Some(account) {
                return Err(denied(caller, op));
            }
            authorize(kms, caller, &id, op, None)?;
            let current = kms.describe_key(&alias).ok().map(|m| m.key_id);
            match (op, &current) {
                ("CreateAlias", Some(_)) => {
                    return Err(error(
                        400,
                        "AlreadyExistsException",
                        format!("alias/{name} exists"),
                    ));
                }
                ("UpdateAlias", None) => {
                    return Err(error(400, "NotFoundException", format!("no alias alias/{name}")));
                }
                _ => {}
            }
            if let Some(current) = current {
                authorize(kms, caller, &current, op, None)?;
            }
            kms.set_alias(&alias, &id)?;
            plain(json!({}))
        }
        "DeleteAlias" => {
            let name = str_field(body, "AliasName")?
                .strip_prefix("alias/")
                .ok_or_else(|| invalid("AliasName must begin with alias/"))?;
            let alias = account_alias(&caller.principal.account, name);
            let id = kms.describe_key(&alias)?.key_id;
            authorize(kms, caller, &id, op, None)?;
            kms.delete_alias(&alias)?;
            plain(json!({}))
        }
        "EnableKey" | "DisableKey" | "EnableKeyRotation" | "DisableKeyRotation" | "CancelKeyDeletion" => {
            let id = resolve(kms, caller, body, "KeyId")?;
            let access = authorize(kms, caller, &id, op, None)?;
            match op {
                "EnableKey" => drop(kms.enable_key(&id)?),
                "DisableKey" => drop(kms.disable_key(&id)?),
                "EnableKeyRotation" => {
                    let days = body
                        .get("RotationPeriodInDays")
                        .and_then(Value::as_u64)
                        .map_or(Ok(365), |d| {
                            u32::try_from(d).map_err(|_| invalid("RotationPeriodInDays"))
                        })?;
                    if !(90..=2560).contains(&days) {
                        return Err(invalid("RotationPeriodInDays: 90 to 2560"));
                    }
                    kms.set_rotation(&id, Some(days))?;
                }
                "DisableKeyRotation" => drop(kms.set_rotation(&id, None)?),
                _ => {
                    kms.cancel_key_deletion(&id)?;
                    return plain(json!({"KeyId": arn(&access.owner, &id)}));
                }
            }
            plain(json!({}))
        }
        "GetKeyRotationStatus" => {
            let meta = kms.describe_key(&key_ref(&caller.principal.account, str_field(body, "KeyId")?))?;
            let access = authorize(kms, caller, &meta.key_id, op, None)?;
            let mut out = json!({
                "KeyId": arn(&access.owner, &meta.key_id),
                "KeyRotationEnabled": meta.rotation.interval_days.is_some(),
            });
            if let Some(d) = meta.rotation.interval_days {
                out["RotationPeriodInDays"] = json!(d);
            }
            if let Some(next) = meta.rotation.next_rotation_at {
                out["NextRotationDate"] = timestamp(next);
            }
            plain(out)
        }
        "RotateKeyOnDemand" => {
            let id = resolve(kms, caller, body, "KeyId")?;
            let access = authorize(kms, caller, &id, op, None)?;
            kms.rotate_key(&id)?;
            plain(json!({"KeyId": arn(&access.owner, &id)}))
        }
        "ScheduleKeyDeletion" => {
            let id = resolve(kms, caller, body, "KeyId")?;
            let access = authorize(kms, caller, &id, op, None)?;
            let days = body
                .get("PendingWindowInDays")
                .and_then(Value::as_u64)
                .map(|d| u32::try_from(d).unwrap_or(u32::MAX));
            let meta = kms.schedule_key_deletion(&id, days)?;
            let mut out = json!({"KeyId": arn(&access.owner, &id), "KeyState": "PendingDeletion"});
            if let Some(d) = meta.deletion_date {
                out["DeletionDate"] = timestamp(d);
            }
            out["PendingWindowInDays"] = json!(days.unwrap_or(crate::kms::local::DELETION_WINDOW_DAYS.2));
            plain(out)
        }
        "PutKeyPolicy" => {
            let id = resolve(kms, caller, body, "KeyId")?;
            authorize(kms, caller, &id, op, None)?;
            if body
                .get("PolicyName")
                .and_then(Value::as_str)
                .is_some_and(|n| n != "default")
            {
                return Err(invalid("PolicyName: default"));
            }
            let text = str_field(body, "Policy")?;
            let policy =
                Policy::parse(text).map_err(|e| error(400, "MalformedPolicyDocumentException", e))?;
            // AWS's lockout safety check: a policy under which the caller could no longer
            // change the policy is refused unless the caller says it means it.
            let bypass = body
                .get("BypassPolicyLockoutSafetyCheck")
                .and_then(Value::as_bool)
                == Some(true);
            let owner = kms.key_owner(&id)?.unwrap_or_default();
            let arn = key_arn(region, &owner, &id);
            let still_allowed = policy.decide(&super::policy::Request {
                caller_arn: &caller.principal.arn,
                caller_account: &caller.principal.account,
                caller_admin: caller.principal.admin,
                action: "kms:PutKeyPolicy",
                key_arn: &arn,
                context: None,
            }) == Decision::Allow;
            if !still_allowed && !bypass {
                return Err(error(
                    400,
                    "MalformedPolicyDocumentException",
                    "the new key policy will not allow you to update the key policy in the future \
                     (set BypassPolicyLockoutSafetyCheck to mean it)",
                ));
            }
            kms.put_key_policy(&id, text)?;
            plain(json!({}))
        }
        "GetKeyPolicy" => {
            let id = resolve(kms, caller, body, "KeyId")?;
            let access = authorize(kms, caller, &id, op, None)?;
            let text = kms
                .key_policy(&id)?
                .unwrap_or_else(|| Policy::default_text(&access.owner));
            Ok((json!({"Policy": text, "PolicyName": "default"}), access.grant))
        }
        "CreateGrant" => {
            let id = resolve(kms, caller, body, "KeyId")?;
            let access = authorize(kms, caller, &id, op, None)?;
            let grantee = str_field(body, "GranteePrincipal")?.to_owned();
            let operations: Vec<String> = body
                .get("Operations")
                .and_then(Value::as_array)
                .filter(|ops| !ops.is_empty())
                .ok_or_else(|| invalid("Operations: a non-empty list"))?
                .iter()
                .map(|o| {
                    o.as_str()
                        .filter(|o| GRANT_OPERATIONS.contains(o))
                        .map(ToOwned::to_owned)
                        .ok_or_else(|| invalid(format!("Operations: one of {}", GRANT_OPERATIONS.join(", "))))
                })
                .collect::<Result<_, _>>()?;
            let constraints = body.get("Constraints").cloned().unwrap_or(Value::Null);
            dry_run(body)?;
            let grant = Grant {
                key_id: id.clone(),
                grantee,
                retiring: body
                    .get("RetiringPrincipal")
                    .and_then(Value::as_str)
                    .map(ToOwned::to_owned),
                operations,
                context_equals: context_map(&constraints, "EncryptionContextEquals")?,
                context_subset: context_map(&constraints, "EncryptionContextSubset")?,
                name: body
                    .get("Name")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
                issuer: caller.principal.arn.clone(),
                created_at: crate::kms::Timestamp(
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs()),
                ),
            };
            let grant_id = kms.create_grant(grant)?;
            // The token is the grant id: grants here take effect at once, so a token is
            // never needed, and one given is accepted.
            Ok((json!({"GrantId": grant_id, "GrantToken": grant_id}), access.grant))
        }
        "ListGrants" => {
            let id = resolve(kms, caller, body, "KeyId")?;
            let access = authorize(kms, caller, &id, op, None)?;
            let (limit, marker) = page(body)?;
            let only_id = body.get("GrantId").and_then(Value::as_str);
            let only_grantee = body.get("GranteePrincipal").and_then(Value::as_str);
            let grants: Vec<(String, Value)> = kms
                .grants(&id)?
                .into_iter()
                .filter(|(gid, g)| {
                    only_id.is_none_or(|o| o == gid) && only_grantee.is_none_or(|o| o == g.grantee)
                })
                .map(|(gid, g)| {
                    let v = grant_json(&gid, &g, region, &access.owner);
                    (gid, v)
                })
                .collect();
            let (grants, next) = paginate(grants, limit, marker.as_deref());
            let mut out = json!({"Grants": grants, "Truncated": next.is_some()});
            if let Some(n) = next {
                out["NextMarker"] = json!(n);
            }
            plain(out)
        }
        "RetireGrant" | "RevokeGrant" => {
            let grant_id = body
                .get("GrantId")
                .or_else(|| body.get("GrantToken"))
                .and_then(Value::as_str)
                .ok_or_else(|| invalid("GrantId (with KeyId) or GrantToken is required"))?;
            let grants = kms.grants_by_id(grant_id)?;
            let Some(grant) = grants else {
                return Err(error(400, "NotFoundException", format!("no grant {grant_id}")));
            };
            if let Some(k) = body.get("KeyId").and_then(Value::as_str)
                && kms.describe_key(&key_ref(&caller.principal.account, k))?.key_id != grant.key_id
            {
                return Err(error(
                    400,
                    "NotFoundException",
                    format!("no grant {grant_id} on that key"),
                ));
            }
            let allowed = if op == "RetireGrant" {
                // The retiring principal, the grantee, or whoever the key's policy allows.
                grant.retiring.as_deref().is_some_and(|r| is_grantee(r, caller))
                    || is_grantee(&grant.grantee, caller)
                    || authorize(kms, caller, &grant.key_id, op, None).is_ok()
            } else {
                authorize(kms, caller, &grant.key_id, op, None).is_ok()
            };
            if !allowed {
                return Err(denied(caller, op));
            }
            dry_run(body)?;
            kms.remove_grant(grant_id)?;
            plain(json!({}))
        }
        "GetParametersForImport" => {
            let id = resolve(kms, caller, body, "KeyId")?;
            let access = authorize(kms, caller, &id, op, None)?;
            match body.get("WrappingAlgorithm").and_then(Value::as_str) {
                Some("RSAES_OAEP_SHA_256") => {}
                _ => {
                    return Err(invalid(
                        "WrappingAlgorithm: RSAES_OAEP_SHA_256 (the one this server offers)",
                    ));
                }
            }
            match body.get("WrappingKeySpec").and_then(Value::as_str) {
                Some("RSA_3072") => {}
                _ => return Err(invalid("WrappingKeySpec: RSA_3072 (the one this server offers)")),
            }
            let params = kms.import_parameters(&id)?;
            plain(json!({
                "KeyId": arn(&access.owner, &id),
                "ImportToken": B64.encode(&params.import_token),
                "PublicKey": B64.encode(&params.public_key_der),
                "ParametersValidTo": timestamp(params.expires_at),
            }))
        }
        "ImportKeyMaterial" => {
            let id = resolve(kms, caller, body, "KeyId")?;
            authorize(kms, caller, &id, op, None)?;
            let token = blob_field(body, "ImportToken")?;
            let material = zeroize::Zeroizing::new(blob_field(body, "EncryptedKeyMaterial")?);
            let expires = match body.get("ExpirationModel").and_then(Value::as_str) {
                None | Some("KEY_MATERIAL_DOES_NOT_EXPIRE") => None,
                Some("KEY_MATERIAL_EXPIRES") => {
                    let t = body
                        .get("ValidTo")
                        .and_then(Value::as_f64)
                        .ok_or_else(|| invalid("ValidTo is required when the material expires"))?;
                    Some(crate::kms::Timestamp(t.max(0.0) as u64))
                }
                Some(other) => return Err(invalid(format!("ExpirationModel {other}"))),
            };
            kms.import_key_material(&id, &material, &token, expires)?;
            plain(json!({}))
        }
        "GenerateDataKey" | "GenerateDataKeyWithoutPlaintext" => {
            let id = resolve(kms, caller, body, "KeyId")?;
            let ctx = context_field(body, "EncryptionContext")?;
            let access = authorize(kms, caller, &id, op, Some(&ctx))?;
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
            dry_run(body)?;
            let dk = kms.generate_data_key(&id, spec, &ctx)?;
            let mut out = json!({
                "KeyId": arn(&access.owner, &id),
                "CiphertextBlob": B64.encode(dk.wrapped.as_bytes()),
            });
            if op == "GenerateDataKey" {
                out["Plaintext"] = json!(B64.encode(dk.plaintext.expose()));
            }
            Ok((out, access.grant))
        }
        "Encrypt" => {
            let id = resolve(kms, caller, body, "KeyId")?;
            let ctx = context_field(body, "EncryptionContext")?;
            let access = authorize(kms, caller, &id, op, Some(&ctx))?;
            let plain_text = zeroize::Zeroizing::new(blob_field(body, "Plaintext")?);
            dry_run(body)?;
            let blob = kms.encrypt(&id, &plain_text, &ctx)?;
            Ok((
                json!({
                    "KeyId": arn(&access.owner, &id),
                    "CiphertextBlob": B64.encode(blob),
                    "EncryptionAlgorithm": "SYMMETRIC_DEFAULT",
                }),
                access.grant,
            ))
        }
        "Decrypt" => {
            let blob = blob_field(body, "CiphertextBlob")?;
            let id = kms.blob_key_id(&blob)?;
            if let Some(given) = body.get("KeyId").and_then(Value::as_str)
                && kms
                    .describe_key(&key_ref(&caller.principal.account, given))?
                    .key_id
                    != id
            {
                return Err(error(
                    400,
                    "IncorrectKeyException",
                    "the ciphertext was not encrypted under that key",
                ));
            }
            let ctx = context_field(body, "EncryptionContext")?;
            let access = authorize(kms, caller, &id, op, Some(&ctx))?;
            dry_run(body)?;
            let plain_text = kms.decrypt(&blob, &ctx)?;
            Ok((
                json!({
                    "KeyId": arn(&access.owner, &id),
                    "Plaintext": B64.encode(plain_text.expose()),
                    "EncryptionAlgorithm": "SYMMETRIC_DEFAULT",
                }),
                access.grant,
            ))
        }
        "ReEncrypt" => {
            let blob = blob_field(body, "CiphertextBlob")?;
            let source = kms.blob_key_id(&blob)?;
            let source_ctx = context_field(body, "SourceEncryptionContext")?;
            let destination_ctx = context_field(body, "DestinationEncryptionContext")?;
            let from = authorize(kms, caller, &source, "ReEncryptFrom", Some(&source_ctx))?;
            let destination = resolve(kms, caller, body, "DestinationKeyId")?;
            let to = authorize(kms, caller, &destination, "ReEncryptTo", Some(&destination_ctx))?;
            dry_run(body)?;
            let out = kms.re_encrypt(&blob, &source_ctx, &destination, &destination_ctx)?;
            Ok((
                json!({
                    "CiphertextBlob": B64.encode(out),
                    "KeyId": arn(&to.owner, &destination),
                    "SourceKeyId": arn(&from.owner, &source),
                    "SourceEncryptionAlgorithm": "SYMMETRIC_DEFAULT",
                    "DestinationEncryptionAlgorithm": "SYMMETRIC_DEFAULT",
                }),
                to.grant.or(from.grant),
            ))
        }
        _ => Err(error(
            400,
            "UnsupportedOperationException",
            format!("{op} is not supported by this server"),
        )),
    }
}

/// Fills what `event` says about the request: the key it names, its encryption context
/// and a keyed hash of its ciphertext blob (never the blob, never plaintext).
pub(crate) fn describe_request(
    kms: &LocalKms,
    account: &str,
    body: &Value,
    event: &mut crate::kms::local::TrailEvent,
) {
    let key = ["KeyId", "TargetKeyId", "DestinationKeyId"]
        .iter()
        .find_map(|f| body.get(*f).and_then(Value::as_str))
        .map(|k| key_ref(account, k));
    let blob = body
        .get("CiphertextBlob")
        .and_then(Value::as_str)
        .and_then(|b| B64.decode(b).ok());
    event.key = match (&key, &blob) {
        (Some(k), _) => kms.describe_key(k).map_or_else(|_| k.clone(), |m| m.key_id),
        (None, Some(b)) => kms.blob_key_id(b).unwrap_or_default(),
        _ => String::new(),
    };
    for field in ["EncryptionContext", "SourceEncryptionContext"] {
        if let Some(map) = body.get(field).and_then(Value::as_object) {
            event.context = map
                .iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                .collect();
            break;
        }
    }
    event.blob = blob;
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
        let me = "111111111111";
        assert_eq!(key_ref(me, "arn:aws:kms:us-east-1:123456789012:key/abc"), "abc");
        assert_eq!(key_ref(me, "abc"), "abc");
        assert_eq!(
            key_ref(me, "arn:aws:kms:us-east-1:123456789012:alias/x"),
            "alias/123456789012/x"
        );
        assert_eq!(key_ref(me, "alias/x"), "alias/111111111111/x");
        // Nothing but a 12-digit account reaches the alias namespace.
        let forged = "arn:aws:kms:us-east-1:1/alias/y:alias/x";
        assert_eq!(key_ref(me, forged), forged);
        assert_eq!(key_ref(me, "alias/acs/tde"), "alias/111111111111/acs/tde");
    }
}
