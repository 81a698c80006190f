//! `tde audit show|verify`: the store's trail of KMS calls (needs no key).

use std::path::PathBuf;

use clap::Subcommand;

use crate::CliResult;

#[derive(Debug, Subcommand)]
pub(crate) enum AuditCommand {
    /// Print every record of a store's audit trail.
    Show {
        /// Directory of the store.
        path: PathBuf,
        /// One JSON object per line, as stored.
        #[arg(long)]
        json: bool,
    },
    /// Check the hash chain: any edited, removed, inserted or reordered record fails.
    /// With --deep, also open the store (needs the KMS) and check every keyed record's
    /// MAC, which someone without the KMS cannot forge.
    Verify {
        /// Directory of the store.
        path: PathBuf,
        /// Authenticate the records with the store's keys.
        #[arg(long)]
        deep: bool,
    },
}

pub(crate) fn run(flag: Option<&str>, cmd: AuditCommand) -> CliResult {
    match cmd {
        AuditCommand::Show { path, json } => {
            for r in tde::audit::read(&path)? {
                if json {
                    println!("{}", serde_json::to_string(&r)?);
                } else {
                    let reason = serde_json::to_value(r.reason)?;
                    println!(
                        "{:>5}  {}  {:<18} {:<12} {:<24} {:<16} {}",
                        r.seq,
                        r.time,
                        r.op,
                        reason.as_str().unwrap_or_default(),
                        r.key,
                        r.table,
                        r.outcome
                    );
                }
            }
        }
        AuditCommand::Verify { path, deep: false } => {
            let keyring = tde::keyring::Keyring::open(&path)?;
            let (records, head) = tde::audit::verify(&path, &keyring.data().store_id)?;
            println!("{records} records, chain intact; last hash {head}");
        }
        AuditCommand::Verify { path, deep: true } => {
            let store = crate::db::open_store(&path, flag)?;
            let r = store.verify_audit()?;
            println!(
                "{} records, chain intact; {} authenticated with the store's keys, {} after the last keyed record; last hash {}",
                r.records,
                r.authenticated,
                r.records - r.authenticated,
                r.head
            );
        }
    }
    Ok(())
}
