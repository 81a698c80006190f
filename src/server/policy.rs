//! Key policies in a documented subset of the AWS policy language, and grants.
//!
//! A policy is `{"Version": "2012-10-17", "Statement": [...]}`; each statement has
//! `Effect` (`Allow` or `Deny`), `Principal` (`"*"`, or `{"AWS": ...}` with one or more
//! of: an account id or `arn:aws:iam::ACCOUNT:root` — the account's administrators —,
//! a principal's ARN `arn:aws:iam::ACCOUNT:user/NAME`, `"*"`; role ARNs never match, as
//! there is no STS), `Action` (one or more `kms:Operation`, with `*` and `?` wildcards,
//! case-insensitive), `Resource` (`"*"` or the key's ARN, wildcards allowed), and an
//! optional `Condition` with `StringEquals` / `StringLike` (and their `IgnoreCase`
//! variants) on `kms:EncryptionContext:<key>` and `kms:CallerAccount`. Every condition
//! must hold (any of its values); a context key the request lacks fails the condition.
//! Anything else in a policy — `NotAction`, `NotPrincipal`, other condition operators or
//! keys — is refused when the policy is put, never ignored.
//!
//! Evaluation: an explicit `Deny` in the policy wins; otherwise a statement that allows,
//! or a grant that covers the request, allows; otherwise the request is denied.

use serde_json::Value;

use crate::kms::EncryptionContext;

/// Longest policy accepted (AWS's limit).
pub(crate) const MAX_POLICY: usize = 32 * 1024;

/// Who is asking, for what.
pub(crate) struct Request<'a> {
    pub(crate) caller_arn: &'a str,
    pub(crate) caller_account: &'a str,
    pub(crate) caller_admin: bool,
    /// `kms:Operation`.
    pub(crate) action: &'a str,
    pub(crate) key_arn: &'a str,
    pub(crate) context: Option<&'a EncryptionContext>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Effect {
    Allow,
    Deny,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Operator {
    Equals,
    Like,
    EqualsIgnoreCase,
    LikeIgnoreCase,
}

#[derive(Debug, Clone)]
struct Condition {
    operator: Operator,
    key: String,
    values: Vec<String>,
}

#[derive(Debug, Clone)]
struct Statement {
    effect: Effect,
    /// `None`: anyone.
    principals: Option<Vec<String>>,
    actions: Vec<String>,
    resources: Vec<String>,
    conditions: Vec<Condition>,
}

/// A parsed policy.
#[derive(Debug, Clone)]
pub(crate) struct Policy {
    statements: Vec<Statement>,
}

/// The outcome of a policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    Allow,
    Deny,
    /// No statement applies.
    None,
}

fn strings(v: &Value, what: &str) -> Result<Vec<String>, String> {
    match v {
        Value::String(s) => Ok(vec![s.clone()]),
        Value::Array(items) if !items.is_empty() => items
            .iter()
            .map(|i| {
                i.as_str()
                    .map(ToOwned::to_owned)
                    .ok_or_else(|| format!("{what}: strings only"))
            })
            .collect(),
        _ => Err(format!("{what}: a string or a non-empty list of strings")),
    }
}

/// Case-insensitive glob with `*` and `?`.
pub(crate) fn glob(pattern: &str, text: &str, ignore_case: bool) -> bool {
    let norm = |s: &str| -> Vec<char> {
        if ignore_case {
            s.to_lowercase().chars().collect()
        } else {
            s.chars().collect()
        }
    };
    let (p, t) = (norm(pattern), norm(text));
    // Iterative matching with backtracking to the last star.
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

impl Policy {
    /// Parses and checks `text`.
    pub(crate) fn parse(text: &str) -> Result<Policy, String> {
        if text.len() > MAX_POLICY {
            return Err(format!("a policy is at most {MAX_POLICY} bytes"));
        }
        let doc: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
        let obj = doc.as_object().ok_or("a policy is a JSON object")?;
        for k in obj.keys() {
            if !matches!(k.as_str(), "Version" | "Id" | "Statement") {
                return Err(format!("unsupported policy element {k:?}"));
            }
        }
        let statements = match obj.get("Statement") {
            Some(Value::Array(items)) => items.iter().collect::<Vec<_>>(),
            Some(v @ Value::Object(_)) => vec![v],
            _ => return Err("Statement: one statement or a list".into()),
        };
        let statements = statements
            .into_iter()
            .map(Statement::parse)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Policy { statements })
    }

    /// The default policy of a key of `account`: its administrators may do anything.
    pub(crate) fn default_text(account: &str) -> String {
        serde_json::json!({
            "Version": "2012-10-17",
            "Id": "key-default-1",
            "Statement": [{
                "Sid": "Enable the account's administrators",
                "Effect": "Allow",
                "Principal": {"AWS": format!("arn:aws:iam::{account}:root")},
                "Action": "kms:*",
                "Resource": "*"
            }]
        })
        .to_string()
    }

    pub(crate) fn decide(&self, req: &Request<'_>) -> Decision {
        let mut allowed = false;
        for s in &self.statements {
            if s.applies(req) {
                match s.effect {
                    Effect::Deny => return Decision::Deny,
                    Effect::Allow => allowed = true,
                }
            }
        }
        if allowed { Decision::Allow } else { Decision::None }
    }
}

impl Statement {
    fn parse(v: &Value) -> Result<Statement, String> {
        let obj = v.as_object().ok_or("a statement is a JSON object")?;
        for k in obj.keys() {
            if !matches!(
                k.as_str(),
                "Sid" | "Effect" | "Principal" | "Action" | "Resource" | "Condition"
            ) {
                return Err(format!("unsupported statement element {k:?}"));
            }
        }
        let effect = match obj.get("Effect").and_then(Value::as_str) {
            Some("Allow") => Effect::Allow,
            Some("Deny") => Effect::Deny,
            _ => return Err("Effect: Allow or Deny".into()),
        };
        let principals = match obj.get("Principal") {
            Some(Value::String(s)) if s == "*" => None,
            Some(Value::Object(p)) => {
                if p.keys().any(|k| k != "AWS") {
                    return Err("Principal: only {\"AWS\": ...} is supported".into());
                }
                let list = strings(p.get("AWS").ok_or("Principal: AWS is required")?, "Principal")?;
                if list.iter().any(|s| s == "*") {
                    None
                } else {
                    Some(list)
                }
            }
            _ => return Err("Principal: \"*\" or {\"AWS\": ...}".into()),
        };
        let actions = strings(obj.get("Action").ok_or("Action is required")?, "Action")?;
        if actions
            .iter()
            .any(|a| !a.to_ascii_lowercase().starts_with("kms:") && a != "*")
        {
            return Err("Action: kms:... actions only".into());
        }
        let resources = strings(obj.get("Resource").ok_or("Resource is required")?, "Resource")?;
        let mut conditions = Vec::new();
        if let Some(c) = obj.get("Condition") {
            let ops = c.as_object().ok_or("Condition: an object")?;
            for (op, keys) in ops {
                let operator = match op.as_str() {
                    "StringEquals" => Operator::Equals,
                    "StringLike" => Operator::Like,
                    "StringEqualsIgnoreCase" => Operator::EqualsIgnoreCase,
                    "StringLikeIgnoreCase" => Operator::LikeIgnoreCase,
                    other => return Err(format!("unsupported condition operator {other:?}")),
                };
                let keys = keys.as_object().ok_or("Condition: an object of keys")?;
                for (key, values) in keys {
                    let lower = key.to_ascii_lowercase();
                    if !(lower.starts_with("kms:encryptioncontext:") || lower == "kms:calleraccount") {
                        return Err(format!(
                            "unsupported condition key {key:?} (kms:EncryptionContext:<key> and kms:CallerAccount are)"
                        ));
                    }
                    conditions.push(Condition {
                        operator,
                        key: key.clone(),
                        values: strings(values, "Condition")?,
                    });
                }
            }
        }
        Ok(Statement {
            effect,
            principals,
            actions,
            resources,
            conditions,
        })
    }

    fn applies(&self, req: &Request<'_>) -> bool {
        let principal = match &self.principals {
            None => true,
            Some(list) => list.iter().any(|p| principal_matches(p, req)),
        };
        principal
            && self.actions.iter().any(|a| glob(a, req.action, true))
            && self.resources.iter().any(|r| glob(r, req.key_arn, false))
            && self.conditions.iter().all(|c| c.holds(req))
    }
}

fn principal_matches(p: &str, req: &Request<'_>) -> bool {
    let root = format!("arn:aws:iam::{}:root", req.caller_account);
    if p == req.caller_account || p == root {
        return req.caller_admin;
    }
    p == req.caller_arn
}

impl Condition {
    fn holds(&self, req: &Request<'_>) -> bool {
        let lower = self.key.to_ascii_lowercase();
        let actual: Option<String> = if lower == "kms:calleraccount" {
            Some(req.caller_account.to_owned())
        } else {
            // The context key keeps its case: `kms:EncryptionContext:` is 22 bytes.
            let name = &self.key["kms:EncryptionContext:".len()..];
            req.context.and_then(|c| c.get(name).map(ToOwned::to_owned))
        };
        let Some(actual) = actual else {
            return false;
        };
        self.values.iter().any(|v| match self.operator {
            Operator::Equals => *v == actual,
            Operator::EqualsIgnoreCase => v.eq_ignore_ascii_case(&actual),
            Operator::Like => glob(v, &actual, false),
            Operator::LikeIgnoreCase => glob(v, &actual, true),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req<'a>(
        arn: &'a str,
        account: &'a str,
        admin: bool,
        action: &'a str,
        ctx: &'a EncryptionContext,
    ) -> Request<'a> {
        Request {
            caller_arn: arn,
            caller_account: account,
            caller_admin: admin,
            action,
            key_arn: "arn:aws:kms:us-east-1:111111111111:key/k1",
            context: Some(ctx),
        }
    }

    #[test]
    fn globs() {
        assert!(glob("kms:Describe*", "kms:DescribeKey", true));
        assert!(glob("KMS:decrypt", "kms:Decrypt", true));
        assert!(glob("kms:*", "kms:Decrypt", true));
        assert!(!glob("kms:Describe*", "kms:Decrypt", true));
        assert!(glob("store-?", "store-1", false));
        assert!(!glob("store-?", "store-12", false));
        assert!(glob("*-prod-*", "db-prod-7", false));
    }

    #[test]
    fn the_default_policy_allows_the_accounts_administrators_only() {
        let p = Policy::parse(&Policy::default_text("111111111111")).unwrap();
        let ctx = EncryptionContext::new();
        let admin = "arn:aws:iam::111111111111:user/a";
        assert_eq!(
            p.decide(&req(admin, "111111111111", true, "kms:Decrypt", &ctx)),
            Decision::Allow
        );
        assert_eq!(
            p.decide(&req(admin, "111111111111", false, "kms:Decrypt", &ctx)),
            Decision::None
        );
        let other = "arn:aws:iam::222222222222:user/a";
        assert_eq!(
            p.decide(&req(other, "222222222222", true, "kms:Decrypt", &ctx)),
            Decision::None
        );
    }

    #[test]
    fn nodes_may_use_the_key_for_their_own_store_only_and_deny_wins() {
        let text = r#"{"Version":"2012-10-17","Statement":[
            {"Effect":"Allow","Principal":{"AWS":["arn:aws:iam::111111111111:user/node-1"]},
             "Action":["kms:GenerateDataKey*","kms:Decrypt"],"Resource":"*",
             "Condition":{"StringEquals":{"kms:EncryptionContext:tde:store":"store-1"}}},
            {"Effect":"Allow","Principal":{"AWS":"111111111111"},"Action":"kms:Describe*","Resource":"*"},
            {"Effect":"Deny","Principal":"*","Action":"kms:Decrypt","Resource":"*",
             "Condition":{"StringLike":{"kms:EncryptionContext:tde:table":"quarantine*"}}}
        ]}"#;
        let p = Policy::parse(text).unwrap();
        let node = "arn:aws:iam::111111111111:user/node-1";
        let own = EncryptionContext::new()
            .with("tde:store", "store-1")
            .with("tde:table", "t");
        let other = EncryptionContext::new().with("tde:store", "store-2");
        let quarantined = EncryptionContext::new()
            .with("tde:store", "store-1")
            .with("tde:table", "quarantine-1");
        let decide = |action, ctx| p.decide(&req(node, "111111111111", false, action, ctx));
        assert_eq!(decide("kms:Decrypt", &own), Decision::Allow);
        assert_eq!(
            decide("kms:GenerateDataKeyWithoutPlaintext", &own),
            Decision::Allow
        );
        assert_eq!(decide("kms:Decrypt", &other), Decision::None);
        assert_eq!(decide("kms:Encrypt", &own), Decision::None);
        assert_eq!(decide("kms:Decrypt", &quarantined), Decision::Deny);
    }

    #[test]
    fn unsupported_elements_are_refused_not_ignored() {
        for bad in [
            r#"{"Statement":[{"Effect":"Allow","Principal":"*","NotAction":"kms:Decrypt","Resource":"*"}]}"#,
            r#"{"Statement":[{"Effect":"Allow","Principal":"*","Action":"kms:*","Resource":"*","Condition":{"NumericLessThan":{"kms:CallerAccount":"1"}}}]}"#,
            r#"{"Statement":[{"Effect":"Allow","Principal":"*","Action":"kms:*","Resource":"*","Condition":{"StringEquals":{"aws:SourceIp":"1.2.3.4"}}}]}"#,
            r#"{"Statement":[{"Effect":"Maybe","Principal":"*","Action":"kms:*","Resource":"*"}]}"#,
            r#"{"Statement":[{"Effect":"Allow","Principal":{"Service":"x"},"Action":"kms:*","Resource":"*"}]}"#,
            r#"{"Statement":[{"Effect":"Allow","Principal":"*","Action":"s3:*","Resource":"*"}]}"#,
            "not json",
        ] {
            assert!(Policy::parse(bad).is_err(), "{bad}");
        }
    }
}
