//! `tde kms` against a provider other than the local KMS: the verbs that provider has an
//! equivalent for, and a clear refusal for the others.

use tde::kms::{Kms, KmsUri};
use tde::secret::SecretBytes;

use crate::CliResult;
use crate::kms::{KmsCommand, context, read_stdin, write_binary};

/// Runs `cmd` on the provider `uri` names.
pub(crate) fn run(uri: &KmsUri, cmd: KmsCommand) -> CliResult {
    match cmd {
        // What every provider does through the KMS interface.
        KmsCommand::Describe { key } => {
            let meta = tde::kms::open_uri(uri)?.describe_key(&key)?;
            println!("{}", serde_json::to_string_pretty(&meta)?);
            Ok(())
        }
        KmsCommand::Encrypt { key, context: pairs } => {
            let plaintext = SecretBytes::new(read_stdin(tde::kms::MAX_DIRECT_PLAINTEXT)?);
            let blob = tde::kms::open_uri(uri)?.encrypt(&key, plaintext.expose(), &context(pairs))?;
            write_binary(&blob)
        }
        KmsCommand::Decrypt { context: pairs } => {
            let blob = read_stdin(64 * 1024)?;
            let plain = tde::kms::open_uri(uri)?.decrypt(&blob, &context(pairs))?;
            write_binary(plain.expose())
        }
        // What only the local KMS has: its directory, root key, key list and BYOK import.
        cmd @ (KmsCommand::Init { .. }
        | KmsCommand::List { .. }
        | KmsCommand::RotateRoot
        | KmsCommand::ChangePassphrase
        | KmsCommand::ImportParams { .. }
        | KmsCommand::Import { .. }
        | KmsCommand::Serve { .. }
        | KmsCommand::Audit(_)
        | KmsCommand::Account(_)
        | KmsCommand::Principal(_)) => unsupported(uri, &cmd),
        other => admin(uri, other),
    }
}

pub(crate) fn verb(cmd: &KmsCommand) -> String {
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

fn unsupported(uri: &KmsUri, cmd: &KmsCommand) -> CliResult {
    Err(format!(
        "`tde kms {}` is not supported by {uri}: manage its keys with the provider's own tools",
        verb(cmd)
    )
    .into())
}

/// The administrative verbs, per provider.
#[allow(unused_variables)]
fn admin(uri: &KmsUri, cmd: KmsCommand) -> CliResult {
    match uri {
        #[cfg(feature = "aws-kms")]
        KmsUri::AwsKms { region, endpoint } => {
            let kms = tde::kms::aws::AwsKms::connect(region.as_deref(), endpoint.as_deref())?;
            match cmd {
                KmsCommand::CreateKey {
                    alias, description, ..
                } => {
                    let description = (!description.is_empty()).then_some(description.as_str());
                    println!("{}", kms.create_key(alias.as_deref(), description)?);
                }
                KmsCommand::Enable { key } => kms.set_enabled(&key, true)?,
                KmsCommand::Disable { key } => kms.set_enabled(&key, false)?,
                KmsCommand::Rotate { key } => kms.rotate_key(&key)?,
                KmsCommand::ScheduleDeletion { key, days } => {
                    println!(
                        "key {key} will be deleted on {}",
                        kms.schedule_deletion(&key, days)?
                    );
                }
                KmsCommand::CancelDeletion { key } => kms.cancel_deletion(&key)?,
                KmsCommand::Alias { alias, key } => kms.set_alias(&alias, &key)?,
                other => return unsupported(uri, &other),
            }
            Ok(())
        }
        #[cfg(feature = "vault")]
        KmsUri::VaultTransit {
            addr,
            mount,
            namespace,
        } => {
            let transit = tde::kms::vault::VaultTransit::connect(
                addr.as_deref(),
                mount.as_deref(),
                namespace.as_deref(),
            )?;
            match cmd {
                KmsCommand::CreateKey { alias, .. } => {
                    let name = alias.ok_or("a Transit key needs a name: --alias NAME")?;
                    println!("{}", transit.create_key(&name)?);
                }
                KmsCommand::Rotate { key } => transit.rotate_key(&key)?,
                other => return unsupported(uri, &other),
            }
            Ok(())
        }
        #[cfg(feature = "kmip")]
        KmsUri::Kmip { .. } => {
            let server = tde::kms::kmip::KmipKms::open(uri)?;
            match cmd {
                KmsCommand::CreateKey { alias, .. } => {
                    let name = alias.ok_or("a KMIP key needs a name: --alias NAME")?;
                    println!("{}", server.create_key(&name)?);
                }
                KmsCommand::Disable { key } => {
                    server.revoke_key(&key)?;
                    eprintln!("KMIP key {key} revoked: it no longer encrypts (KMIP has no way back)");
                }
                KmsCommand::ScheduleDeletion { .. } => {
                    return Err("KMIP destroys at once, with no waiting period: revoke with `tde kms disable KEY`, and destroy with the server's own tools once nothing needs the key".into());
                }
                other => return unsupported(uri, &other),
            }
            Ok(())
        }
        #[cfg(feature = "pkcs11")]
        KmsUri::Pkcs11 { .. } => {
            let token = tde::kms::pkcs11::Pkcs11Kms::open(uri)?;
            match cmd {
                KmsCommand::CreateKey { alias, .. } => {
                    let label = alias.ok_or("a key on a PKCS#11 token needs a label: --alias LABEL")?;
                    println!("{}", token.create_key(&label)?);
                }
                KmsCommand::Enable { key } => token.set_enabled(&key, true)?,
                KmsCommand::Disable { key } => token.set_enabled(&key, false)?,
                other => return unsupported(uri, &other),
            }
            Ok(())
        }
        _ => {
            // Without the provider's feature, opening it says which feature is missing.
            tde::kms::open_uri(uri)?;
            unsupported(uri, &cmd)
        }
    }
}
