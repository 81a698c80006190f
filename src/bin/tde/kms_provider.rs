//! `tde kms` against a provider other than the local KMS: the verbs that provider has an
//! equivalent for, and a clear refusal for the others.

use tde::kms::{Kms, KmsUri};

use crate::CliResult;
use crate::kms::KmsCommand;

/// Runs `cmd` on the provider `uri` names.
pub(crate) fn run(uri: &KmsUri, cmd: KmsCommand) -> CliResult {
    match cmd {
        KmsCommand::Describe { key } => {
            let meta = tde::kms::open_uri(uri)?.describe_key(&key)?;
            println!("{}", serde_json::to_string_pretty(&meta)?);
            Ok(())
        }
        KmsCommand::CreateKey {
            alias, description, ..
        } => {
            let description = (!description.is_empty()).then_some(description.as_str());
            let id = create_key(uri, alias.as_deref(), description)?;
            println!("{id}");
            Ok(())
        }
        other => Err(format!(
            "`tde kms {}` is not supported by {uri}: manage its keys with the provider's own tools",
            verb(&other)
        )
        .into()),
    }
}

fn verb(cmd: &KmsCommand) -> String {
    let debug = format!("{cmd:?}");
    let name = debug.split([' ', '{', '(']).next().unwrap_or_default();
    let mut out = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('-');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

#[allow(unused_variables)]
fn create_key(uri: &KmsUri, alias: Option<&str>, description: Option<&str>) -> CliResult<String> {
    match uri {
        #[cfg(feature = "aws-kms")]
        KmsUri::AwsKms { region, endpoint } => {
            let kms = tde::kms::aws::AwsKms::connect(region.as_deref(), endpoint.as_deref())?;
            Ok(kms.create_key(alias, description)?)
        }
        #[cfg(feature = "vault")]
        KmsUri::VaultTransit {
            addr,
            mount,
            namespace,
        } => {
            let name = alias.ok_or("a Transit key needs a name: --alias NAME")?;
            let transit = tde::kms::vault::VaultTransit::connect(
                addr.as_deref(),
                mount.as_deref(),
                namespace.as_deref(),
            )?;
            Ok(transit.create_key(name)?)
        }
        #[cfg(feature = "pkcs11")]
        KmsUri::Pkcs11 { .. } => {
            let name = alias.ok_or("a key on a PKCS#11 token needs a label: --alias LABEL")?;
            Ok(tde::kms::pkcs11::Pkcs11Kms::open(uri)?.create_key(name)?)
        }
        _ => {
            // Without the provider's feature, opening it says which feature is missing.
            tde::kms::open_uri(uri)?;
            Err(format!("`tde kms create-key` is not supported by {uri}").into())
        }
    }
}
