//! `tde audit show|verify`: the trail of KMS calls of a store, a tablespace or a backup
//! destination (needs no key, except `verify --deep`).

use std::path::{Path, PathBuf};

use clap::Subcommand;

use crate::CliResult;

#[derive(Debug, Subcommand)]
pub(crate) enum AuditCommand {
    /// Print every record of the audit trail of a store, a tablespace or a backup
    /// destination.
    Show {
        /// Directory of the store, tablespace file, or backup destination.
        path: PathBuf,
        /// One JSON object per line, as stored.
        #[arg(long)]
        json: bool,
    },
    /// Check the hash chain: any edited, removed, inserted or reordered record fails.
    /// With --deep, also open the store (needs the KMS) and check every keyed record's
    /// MAC, which someone without the KMS cannot forge.
    Verify {
        /// Directory of the store, tablespace file, or backup destination.
        path: PathBuf,
        /// Authenticate the records with the store's keys.
        #[arg(long)]
        deep: bool,
    },
}

pub(crate) fn run(flag: Option<&str>, cmd: AuditCommand) -> CliResult {
    match cmd {
        AuditCommand::Show { path, json } => {
            let records = match object_storage(&path)? {
                Some(dest) => tde::backup::audit_records(&dest)?,
                None => tde::audit::read_at(&trail(&path)?.0)?,
            };
            for r in records {
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
            let (records, head) = match object_storage(&path)? {
                Some(dest) => tde::backup::verify_destination_audit(&dest)?,
                None => {
                    let (file, chain) = trail(&path)?;
                    tde::audit::verify_at(&file, &chain)?
                }
            };
            println!("{records} records, chain intact; last hash {head}");
        }
        AuditCommand::Verify { path, deep: true } => {
            let engine = crate::db::open_any(&path, flag)?;
            let r = engine.verify_audit()?;
            engine.close()?;
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

/// The backup destination `path` names if it is in object storage (`s3://...`).
fn object_storage(path: &Path) -> CliResult<Option<tde::backup::Destination>> {
    match path.to_str() {
        Some(s) if s.contains("://") => Ok(Some(tde::backup::Destination::parse(s)?)),
        _ => Ok(None),
    }
}

/// The trail of `path` (a store, a tablespace, or a backup destination) and its chain id.
fn trail(path: &Path) -> CliResult<(PathBuf, String)> {
    if tde::backup::is_destination(path) {
        return Ok((
            path.join(tde::audit::AUDIT_FILE),
            tde::backup::DESTINATION_CHAIN.to_owned(),
        ));
    }
    Ok(tde::engines::audit_trail(path)?)
}
