//! Who may use a local KMS served over the network (`tde kms serve`): accounts, and
//! principals with access keys. Kept in the KMS state, so it is sealed under the root key
//! with the keys, written atomically with them, and follows a root-key rotation.
//!
//! A principal's secret access key is shown once, when it is made, and is otherwise only
//! in the sealed state (as `Material`, which never prints). Accounts and principals are
//! named as AWS names them, so that existing tools parse the ARNs:
//! `arn:aws:iam::ACCOUNT:user/NAME` and `arn:aws:iam::ACCOUNT:root` (the account's
//! administrators).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::state::Material;
use crate::kms::{KmsError, KmsErrorKind, KmsResult, Timestamp};

/// Accounts and principals.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Governance {
    /// Account id (12 digits) → account.
    #[serde(default)]
    pub accounts: BTreeMap<String, AccountRecord>,
    /// Access key id → principal.
    #[serde(default)]
    pub principals: BTreeMap<String, PrincipalRecord>,
    /// Key id → the account that owns it (keys made over the API, or given to one).
    #[serde(default)]
    pub key_owners: BTreeMap<String, String>,
    /// Key id → its key policy (JSON text), when it is not the default.
    #[serde(default)]
    pub key_policies: BTreeMap<String, String>,
    /// Grant id → grant.
    #[serde(default)]
    pub grants: BTreeMap<String, Grant>,
    /// The key of the request audit trail's MACs (made on first use).
    #[serde(default)]
    pub audit_key: Option<Material>,
}

/// A grant: lets `grantee` (a principal's ARN, or an account's administrators) perform
/// `operations` with key `key_id`, within the context constraints, until it is retired or
/// revoked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// The key.
    pub key_id: String,
    /// Who may use it: `arn:aws:iam::ACCOUNT:user/NAME`, `arn:aws:iam::ACCOUNT:root` or an
    /// account id.
    pub grantee: String,
    /// Who may retire it (besides the grantee and the key's administrators).
    #[serde(default)]
    pub retiring: Option<String>,
    /// `Decrypt`, `GenerateDataKey`, ...
    pub operations: Vec<String>,
    /// The request's context must be exactly this.
    #[serde(default)]
    pub context_equals: Option<BTreeMap<String, String>>,
    /// The request's context must contain these pairs.
    #[serde(default)]
    pub context_subset: Option<BTreeMap<String, String>>,
    /// A name the creator gave it.
    #[serde(default)]
    pub name: String,
    /// Who made it.
    pub issuer: String,
    /// When.
    pub created_at: Timestamp,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct AccountRecord {
    pub name: String,
    pub created_at: Timestamp,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct PrincipalRecord {
    pub name: String,
    pub account: String,
    pub admin: bool,
    pub enabled: bool,
    pub created_at: Timestamp,
    pub secret: Material,
}

/// A principal as the operator sees it (no secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PrincipalInfo {
    /// `arn:aws:iam::ACCOUNT:user/NAME`.
    pub arn: String,
    /// Its name within its account.
    pub name: String,
    /// Its account id.
    pub account: String,
    /// Its access key id.
    pub access_key_id: String,
    /// Whether it administers its account's keys.
    pub admin: bool,
    /// Whether its requests are accepted.
    pub enabled: bool,
    /// When it was made.
    pub created_at: Timestamp,
}

/// A principal's new credentials: the secret is shown once.
pub struct PrincipalCredentials {
    /// The principal.
    pub info: PrincipalInfo,
    /// Its secret access key.
    pub secret_access_key: crate::secret::SecretBytes,
}

impl std::fmt::Debug for PrincipalCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrincipalCredentials")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

/// An account's administrators, as a policy names them.
pub fn account_root_arn(account: &str) -> String {
    format!("arn:aws:iam::{account}:root")
}

/// A principal's ARN.
pub fn user_arn(account: &str, name: &str) -> String {
    format!("arn:aws:iam::{account}:user/{name}")
}

fn invalid(message: String) -> KmsError {
    KmsError::new(KmsErrorKind::InvalidRequest, message)
}

/// Account and principal names: 1–64 letters, digits and `+=,.@_-` (IAM's alphabet).
pub(crate) fn validate_name(what: &str, name: &str) -> KmsResult<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+=,.@_-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(invalid(format!(
            "{what} name {name:?}: 1-64 letters, digits and +=,.@_-"
        )))
    }
}

impl PrincipalRecord {
    pub(crate) fn info(&self, access_key_id: &str) -> PrincipalInfo {
        PrincipalInfo {
            arn: user_arn(&self.account, &self.name),
            name: self.name.clone(),
            account: self.account.clone(),
            access_key_id: access_key_id.to_owned(),
            admin: self.admin,
            enabled: self.enabled,
            created_at: self.created_at,
        }
    }
}

impl Governance {
    /// The account `account` names: its id, or its name.
    pub(crate) fn account_id(&self, account: &str) -> KmsResult<String> {
        if self.accounts.contains_key(account) {
            return Ok(account.to_owned());
        }
        self.accounts
            .iter()
            .find(|(_, a)| a.name == account)
            .map(|(id, _)| id.clone())
            .ok_or_else(|| KmsError::new(KmsErrorKind::NotFound, format!("no account {account:?}")))
    }

    /// The access key id of the principal `who` names: its ARN, its access key id, or
    /// `NAME` if exactly one account has a principal of that name.
    pub(crate) fn principal_key(&self, who: &str) -> KmsResult<String> {
        if self.principals.contains_key(who) {
            return Ok(who.to_owned());
        }
        let matches: Vec<&String> = self
            .principals
            .iter()
            .filter(|(_, p)| user_arn(&p.account, &p.name) == who || p.name == who)
            .map(|(k, _)| k)
            .collect();
        match matches[..] {
            [one] => Ok(one.clone()),
            [] => Err(KmsError::new(
                KmsErrorKind::NotFound,
                format!("no principal {who:?}"),
            )),
            _ => Err(invalid(format!(
                "{who:?} names principals in several accounts; give its ARN"
            ))),
        }
    }

    pub(crate) fn new_account(&mut self, name: &str, now: Timestamp) -> KmsResult<String> {
        validate_name("account", name)?;
        if self.accounts.values().any(|a| a.name == name) {
            return Err(invalid(format!("an account is already named {name:?}")));
        }
        let id = loop {
            let mut b = [0u8; 8];
            crate::error::os_random(&mut b).map_err(super::root::internal)?;
            let id = format!("{:012}", u64::from_le_bytes(b) % 1_000_000_000_000);
            if !self.accounts.contains_key(&id) {
                break id;
            }
        };
        self.accounts.insert(
            id.clone(),
            AccountRecord {
                name: name.to_owned(),
                created_at: now,
            },
        );
        Ok(id)
    }

    pub(crate) fn new_principal(
        &mut self,
        name: &str,
        account: &str,
        admin: bool,
        now: Timestamp,
    ) -> KmsResult<PrincipalCredentials> {
        validate_name("principal", name)?;
        let account = self.account_id(account)?;
        if self
            .principals
            .values()
            .any(|p| p.account == account && p.name == name)
        {
            return Err(invalid(format!(
                "account {account} already has a principal {name:?}"
            )));
        }
        let (access_key_id, secret) = self.new_access_key()?;
        let record = PrincipalRecord {
            name: name.to_owned(),
            account,
            admin,
            enabled: true,
            created_at: now,
            secret: Material::new(secret.expose().to_vec()),
        };
        let info = record.info(&access_key_id);
        self.principals.insert(access_key_id, record);
        Ok(PrincipalCredentials {
            info,
            secret_access_key: secret,
        })
    }

    /// A fresh access key id (`TDE` + 17 upper-case letters and digits, 20 characters as
    /// AWS's) and a secret (40 characters).
    fn new_access_key(&self) -> KmsResult<(String, crate::secret::SecretBytes)> {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
        loop {
            let mut b = [0u8; 17];
            crate::error::os_random(&mut b).map_err(super::root::internal)?;
            let id: String = std::iter::once("TDE".to_owned())
                .chain(
                    b.iter()
                        .map(|x| char::from(ALPHABET[usize::from(x % 32)]).to_string()),
                )
                .collect();
            if self.principals.contains_key(&id) {
                continue;
            }
            let mut s = zeroize::Zeroizing::new([0u8; 30]);
            crate::error::os_random(&mut s[..]).map_err(super::root::internal)?;
            const SECRET_ALPHABET: &[u8] =
                b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
            // 30 bytes → 40 characters of 6 bits each.
            let mut secret = Vec::with_capacity(40);
            for chunk in s.chunks(3) {
                let n = (u32::from(chunk[0]) << 16) | (u32::from(chunk[1]) << 8) | u32::from(chunk[2]);
                for shift in [18, 12, 6, 0] {
                    secret.push(SECRET_ALPHABET[((n >> shift) & 63) as usize]);
                }
            }
            return Ok((id, crate::secret::SecretBytes::new(secret)));
        }
    }

    /// Gives the principal `who` a new access key; the old one stops working at once.
    pub(crate) fn rotate_principal(&mut self, who: &str) -> KmsResult<PrincipalCredentials> {
        let old = self.principal_key(who)?;
        let mut record = self
            .principals
            .remove(&old)
            .ok_or_else(|| KmsError::new(KmsErrorKind::NotFound, format!("no principal {who:?}")))?;
        let (access_key_id, secret) = self.new_access_key()?;
        record.secret = Material::new(secret.expose().to_vec());
        let info = record.info(&access_key_id);
        self.principals.insert(access_key_id, record);
        Ok(PrincipalCredentials {
            info,
            secret_access_key: secret,
        })
    }

    pub(crate) fn list(&self) -> Vec<PrincipalInfo> {
        let mut all: Vec<PrincipalInfo> = self.principals.iter().map(|(k, p)| p.info(k)).collect();
        all.sort_by(|a, b| a.arn.cmp(&b.arn));
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accounts_and_principals() {
        let mut g = Governance::default();
        let now = Timestamp(1);
        let a = g.new_account("customer", now).unwrap();
        assert_eq!(a.len(), 12);
        assert!(a.bytes().all(|b| b.is_ascii_digit()));
        assert!(g.new_account("customer", now).is_err(), "names are unique");
        assert!(g.new_account("bad name", now).is_err());
        let p = g.new_principal("node-1", "customer", true, now).unwrap();
        assert_eq!(p.info.arn, format!("arn:aws:iam::{a}:user/node-1"));
        assert_eq!(p.info.access_key_id.len(), 20);
        assert_eq!(p.secret_access_key.len(), 40);
        assert!(!format!("{p:?}").contains(std::str::from_utf8(p.secret_access_key.expose()).unwrap()));
        assert!(g.new_principal("node-1", &a, false, now).is_err());
        assert_eq!(g.principal_key("node-1").unwrap(), p.info.access_key_id);
        assert_eq!(g.principal_key(&p.info.arn).unwrap(), p.info.access_key_id);
        let q = g.rotate_principal("node-1").unwrap();
        assert_ne!(q.info.access_key_id, p.info.access_key_id);
        assert!(!g.principals.contains_key(&p.info.access_key_id));
        assert_eq!(g.list().len(), 1);
    }
}
