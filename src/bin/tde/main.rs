//! `tde`: the command-line tool for tde's KMS, stores and backups.
//!
//! Only calls the library; every rule lives there.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

mod audit;
mod backup;
mod bench;
mod bench_page;
mod bench_primitive;
mod bench_reencrypt;
mod bench_serve;
mod db;
mod kms;
mod kms_provider;
mod page;
mod progress;
mod reencrypt;
#[cfg(feature = "sqlite")]
mod sql;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Transparent data encryption for storage engines.
#[derive(Debug, Parser)]
#[command(name = "tde", version, about, long_about = None)]
struct Cli {
    /// The KMS: `local:DIR` or a bare path for the embedded local KMS. Default: for
    /// commands on an existing store, the KMS it was created with; otherwise the TDE_KMS
    /// environment variable, else a local KMS under the user's data directory
    /// ($TDE_HOME/kms, $XDG_DATA_HOME/tde/kms or ~/.local/share/tde/kms).
    #[arg(long, global = true, value_name = "URI")]
    kms: Option<String>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Manage master keys in the local KMS.
    #[command(subcommand)]
    Kms(kms::KmsCommand),
    /// Create an encrypted store.
    #[command(subcommand)]
    Db(db::DbCommand),
    /// Create, drop and list tables of a store.
    #[command(subcommand)]
    Table(db::TableCommand),
    /// Write a record.
    Put {
        #[command(flatten)]
        target: db::Target,
        /// Key.
        key: String,
        /// Value.
        value: String,
    },
    /// Print a record's value (a missing key is an error).
    Get {
        #[command(flatten)]
        target: db::Target,
        /// Key.
        key: String,
    },
    /// Delete a record.
    Del {
        #[command(flatten)]
        target: db::Target,
        /// Key.
        key: String,
    },
    /// Print records as KEY<TAB>VALUE lines.
    Scan {
        #[command(flatten)]
        target: db::Target,
        /// Only keys starting with P.
        #[arg(long, value_name = "P")]
        prefix: Option<String>,
    },
    /// Read KEY<TAB>VALUE lines from stdin and write them in batches.
    Load {
        #[command(flatten)]
        target: db::Target,
    },
    /// Tablespaces of the encrypted page store.
    #[command(subcommand)]
    Page(page::PageCommand),
    /// Rotate keys, online. --master rewraps the data keys under the current version of
    /// their master key (after `tde kms rotate`) or under another master key (--to-key);
    /// no data file is rewritten. --data makes a new data key version current for new
    /// writes; `tde reencrypt` then moves old data to it and retires the old version.
    #[command(group(clap::ArgGroup::new("which").required(true).args(["master", "data"])))]
    Rotate {
        /// Directory of the store.
        path: std::path::PathBuf,
        /// Only this table (default: every table and the store-level key).
        #[arg(long, value_name = "T")]
        table: Option<String>,
        /// Rotate the master key wrapping (rewrap the EDKs).
        #[arg(long)]
        master: bool,
        /// Rotate the data keys (a new version for new writes).
        #[arg(long)]
        data: bool,
        /// With --master: wrap under this master key instead (it becomes the store's
        /// default when no --table is given).
        #[arg(long, value_name = "KEY", conflicts_with = "data")]
        to_key: Option<String>,
    },
    /// Re-encrypt data still under old data key versions and retire those versions.
    /// Without --wait, reports what remains; with --wait, runs the pass to completion with
    /// progress. An interrupted pass resumes where it stopped.
    Reencrypt {
        /// Directory of the store.
        path: std::path::PathBuf,
        /// Rewrite at most this many MB (10^6 bytes) of old files per second.
        #[arg(long, value_name = "MB/s")]
        rate: Option<f64>,
        /// Run the pass to completion.
        #[arg(long)]
        wait: bool,
    },
    /// Move a whole store to another master key and/or KMS, online: every data key is
    /// unwrapped by the current KMS and wrapped by the new one; no data file is rewritten.
    Migrate {
        /// Directory of the store.
        path: std::path::PathBuf,
        /// The master key to move to.
        #[arg(long, value_name = "KEY")]
        to_key: String,
        /// The KMS of that key (default: the store's current KMS).
        #[arg(long, value_name = "URI")]
        to_kms: Option<String>,
    },
    /// Ask the KMS for the state of every master key a store uses, and report tables
    /// whose key was revoked (disabled, pending deletion, gone or not permitted). Repeats
    /// every --interval until interrupted, unless --once.
    Watch {
        /// Directory of the store.
        path: std::path::PathBuf,
        /// Seconds between checks.
        #[arg(long, default_value_t = 30)]
        interval: u64,
        /// Check once and exit (non-zero if a key is revoked).
        #[arg(long)]
        once: bool,
    },
    /// Ciphertext backups: create, list, verify, restore.
    #[command(subcommand)]
    Backup(backup::BackupCommand),
    /// A store's audit trail of KMS calls.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// Benchmarks: plain vs encrypted, side by side.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Read and authenticate every record of every table, and every byte of every file.
    Verify {
        /// Directory of the store.
        path: std::path::PathBuf,
    },
    /// Run SQL on an encrypted SQLite database (created if it does not exist); rows are
    /// printed with columns separated by `|`. Without SQL, statements are read from
    /// standard input.
    #[cfg(feature = "sqlite")]
    Sql {
        /// The database file.
        path: std::path::PathBuf,
        /// Statements to run.
        sql: Option<String>,
        /// Master key for a new database (default: the KMS's service key).
        #[arg(long)]
        key: Option<String>,
    },
    /// Rewrite a store's files written by an earlier release (format 1: encrypted, not
    /// authenticated) in today's format, online.
    Upgrade {
        /// Directory of the store.
        path: std::path::PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Kms(cmd) => kms::run(cli.kms.as_deref(), cmd),
        Command::Db(cmd) => db::run_db(cli.kms.as_deref(), cmd),
        Command::Table(cmd) => db::run_table(cli.kms.as_deref(), cmd),
        Command::Put { target, key, value } => db::put(cli.kms.as_deref(), &target, &key, &value),
        Command::Get { target, key } => db::get(cli.kms.as_deref(), &target, &key),
        Command::Del { target, key } => db::del(cli.kms.as_deref(), &target, &key),
        Command::Scan { target, prefix } => db::scan(cli.kms.as_deref(), &target, prefix),
        Command::Load { target } => db::load(cli.kms.as_deref(), &target),
        Command::Verify { path } => db::verify(cli.kms.as_deref(), &path),
        Command::Upgrade { path } => db::upgrade(cli.kms.as_deref(), &path),
        #[cfg(feature = "sqlite")]
        Command::Sql { path, sql, key } => sql::run(cli.kms.as_deref(), &path, sql, key),
        Command::Page(cmd) => page::run(cli.kms.as_deref(), cmd),
        Command::Rotate {
            path,
            table,
            master: _,
            data,
            to_key,
        } => {
            if data {
                reencrypt::rotate_data(cli.kms.as_deref(), &path, table.as_deref())
            } else {
                db::rotate(cli.kms.as_deref(), &path, table.as_deref(), to_key.as_deref())
            }
        }
        Command::Reencrypt { path, rate, wait } => reencrypt::run(cli.kms.as_deref(), &path, rate, wait),
        Command::Migrate { path, to_key, to_kms } => {
            db::migrate(cli.kms.as_deref(), &path, &to_key, to_kms.as_deref())
        }
        Command::Watch { path, interval, once } => db::watch(cli.kms.as_deref(), &path, interval, once),
        Command::Backup(cmd) => backup::run(cli.kms.as_deref(), cmd),
        Command::Audit(cmd) => audit::run(cli.kms.as_deref(), cmd),
        Command::Bench(cmd) => bench::run(cmd),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tde: error: {e}");
            let mut source = std::error::Error::source(&*e);
            while let Some(s) = source {
                eprintln!("  caused by: {s}");
                source = s.source();
            }
            ExitCode::FAILURE
        }
    }
}

/// Errors the CLI reports: the library's, or its own usage problems.
pub(crate) type CliResult<T = ()> = Result<T, Box<dyn std::error::Error + Send + Sync>>;
