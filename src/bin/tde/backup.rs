//! `tde backup create|list|verify|restore`: ciphertext backups from the command line.

use std::path::PathBuf;

use clap::Subcommand;
use tde::backup::{BackupKind, Destination};
use tde::kms::KmsUri;
use tde::kv::StoreOptions;
use tde::page::TablespaceOptions;

use crate::CliResult;
use crate::db::{absolute, connect, open_any};
use crate::progress::Progress;

#[derive(Debug, Subcommand)]
pub(crate) enum BackupCommand {
    /// Back up a store (a directory) or a page-store tablespace (a file) into DEST (a
    /// directory, created if needed, or s3://BUCKET/PREFIX). Only files not already in DEST are copied; every backup stays
    /// restorable on its own.
    Create {
        /// Directory of the store, or tablespace file.
        path: PathBuf,
        /// Backup destination: a directory, or s3://BUCKET/PREFIX.
        dest: String,
    },
    /// List the backups in DEST.
    List {
        /// Backup destination: a directory, or s3://BUCKET/PREFIX.
        dest: String,
    },
    /// Check every manifest and file checksum without any key; with --deep, also restore
    /// to a scratch directory and authenticate every record (needs the KMS).
    Verify {
        /// Backup destination: a directory, or s3://BUCKET/PREFIX.
        dest: String,
        /// Only this backup.
        #[arg(long)]
        id: Option<String>,
        /// Also unwrap the keys and authenticate every record.
        #[arg(long)]
        deep: bool,
    },
    /// Rewrap a backup's data keys for another master key and/or another KMS, without
    /// touching its data files (e.g. to carry it to another region or provider).
    Rewrap {
        /// Backup destination: a directory, or s3://BUCKET/PREFIX.
        dest: String,
        /// The master key to wrap under.
        #[arg(long, value_name = "KEY")]
        to_key: String,
        /// The KMS of that key (default: the backup's own KMS).
        #[arg(long, value_name = "URI")]
        to_kms: Option<String>,
        /// The backup to rewrap (default: the latest).
        #[arg(long)]
        id: Option<String>,
    },
    /// Restore the latest backup (or --id) into NEWPATH, a new directory (a new file for
    /// a tablespace); needs the KMS.
    Restore {
        /// Backup destination: a directory, or s3://BUCKET/PREFIX.
        dest: String,
        /// Directory (or tablespace file) to restore into; must not exist (or be empty).
        newpath: PathBuf,
        /// The backup to restore (default: the latest).
        #[arg(long)]
        id: Option<String>,
    },
}

/// How to open what a backup holds.
struct Options {
    store: StoreOptions,
    tablespace: TablespaceOptions,
}

/// Options for a backup: `--kms` if given, else the KMS its manifest records.
fn options_for(dest: &Destination, id: Option<&str>, flag: Option<&str>) -> CliResult<Options> {
    let uri = match flag {
        Some(f) => absolute(KmsUri::parse(f)?)?,
        None => KmsUri::parse(&tde::backup::find(dest, id)?.kms)?,
    };
    let kms = connect(&uri)?;
    Ok(Options {
        store: StoreOptions::new(kms.clone()).kms_uri(uri.to_string()),
        tablespace: TablespaceOptions::new(kms).kms_uri(uri.to_string()),
    })
}

pub(crate) fn run(flag: Option<&str>, cmd: BackupCommand) -> CliResult {
    let parse = |dest: &str| Destination::parse(dest);
    match cmd {
        BackupCommand::Create { path, dest } => {
            let dest = parse(&dest)?;
            let engine = open_any(&path, flag)?;
            let mut progress = Progress::bytes("backing up", 0);
            let report = engine.backup(&dest, &mut |done, total| {
                progress.set_total(total);
                progress.set(done, None);
            })?;
            progress.finish(report.bytes);
            engine.close()?;
            println!("{}", report.id);
            eprintln!(
                "backup {} of {}: {} files, {} bytes, {} bytes copied (the rest was already in {dest})",
                report.id,
                path.display(),
                report.files,
                report.bytes,
                report.copied_bytes,
            );
        }
        BackupCommand::List { dest } => {
            let dest = parse(&dest)?;
            for m in tde::backup::list(&dest)? {
                let bytes: u64 = m.files.iter().map(|f| f.size).sum();
                let kind = match m.kind {
                    BackupKind::Store => "store",
                    BackupKind::Tablespace => "tablespace",
                };
                println!(
                    "{}  {}  {kind} {}  {} files  {bytes} bytes",
                    m.id,
                    m.created,
                    m.store_id,
                    m.files.len()
                );
            }
        }
        BackupCommand::Verify { dest, id, deep } => {
            let dest = parse(&dest)?;
            let report = if deep {
                let options = options_for(&dest, id.as_deref(), flag)?;
                match tde::backup::find(&dest, id.as_deref())?.kind {
                    BackupKind::Store => tde::backup::verify_deep(&dest, id.as_deref(), options.store)?,
                    BackupKind::Tablespace => {
                        tde::backup::verify_deep_tablespace(&dest, id.as_deref(), &options.tablespace)?
                    }
                }
            } else {
                let mut progress = Progress::bytes("verifying", 0);
                let report = tde::backup::verify_with_progress(&dest, id.as_deref(), &mut |done, total| {
                    progress.set_total(total);
                    progress.set(done, None);
                })?;
                progress.finish(report.bytes);
                report
            };
            println!(
                "{} backup(s), {} files, {} bytes: checksums match",
                report.backups, report.files, report.bytes
            );
            if let Some(records) = report.records {
                println!("{records} records authenticated");
            }
        }
        BackupCommand::Rewrap {
            dest,
            to_key,
            to_kms,
            id,
        } => {
            let dest = parse(&dest)?;
            let from_uri = match flag {
                Some(f) => absolute(KmsUri::parse(f)?)?,
                None => KmsUri::parse(&tde::backup::find(&dest, id.as_deref())?.kms)?,
            };
            let from = connect(&from_uri)?;
            let (to, to_uri, same) = match to_kms {
                Some(u) => {
                    let uri = absolute(KmsUri::parse(&u)?)?;
                    let same = uri == from_uri;
                    (connect(&uri)?, uri, same)
                }
                None => (from.clone(), from_uri.clone(), true),
            };
            let uri = to_uri.to_string();
            let m = match tde::backup::find(&dest, id.as_deref())?.kind {
                BackupKind::Store => {
                    let to = (!same).then_some(to);
                    tde::backup::rewrap(&dest, id.as_deref(), from, to, &to_key, Some(&uri))?
                }
                BackupKind::Tablespace => {
                    let options = TablespaceOptions::new(from).kms_uri(from_uri.to_string());
                    let target = (!same).then_some((to, Some(uri.as_str())));
                    tde::backup::rewrap_tablespace(&dest, id.as_deref(), &options, target, &to_key)?
                }
            };
            println!(
                "backup {} rewrapped for {to_key} (KMS {to_uri}); no data file changed",
                m.id
            );
        }
        BackupCommand::Restore { dest, newpath, id } => {
            let dest = parse(&dest)?;
            let options = options_for(&dest, id.as_deref(), flag)?;
            if tde::backup::find(&dest, id.as_deref())?.kind == BackupKind::Tablespace {
                let pool = tde::page::BufferPool::new(4 << 20);
                let ts = tde::backup::restore_tablespace(
                    &dest,
                    id.as_deref(),
                    &newpath,
                    &options.tablespace,
                    &pool,
                )?;
                let info = ts.info();
                ts.close()?;
                println!(
                    "restored tablespace {} into {} ({} pages)",
                    info.id,
                    newpath.display(),
                    info.page_count
                );
                return Ok(());
            }
            let store = tde::backup::restore(&dest, id.as_deref(), &newpath, options.store)?;
            println!(
                "restored store {} into {} ({} tables)",
                store.store_id(),
                newpath.display(),
                store.tables().len()
            );
        }
    }
    Ok(())
}
