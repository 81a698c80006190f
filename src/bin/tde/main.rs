//! `tde`: the command-line tool for tde's KMS, stores and backups.
//!
//! Only calls the library; every rule lives there.

mod kms;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Transparent data encryption for storage engines.
#[derive(Debug, Parser)]
#[command(name = "tde", version, about, long_about = None)]
struct Cli {
    /// The KMS: `local:DIR` or a bare path for the embedded local KMS. Default: a local
    /// KMS under the user's data directory ($TDE_HOME/kms, $XDG_DATA_HOME/tde/kms or
    /// ~/.local/share/tde/kms).
    #[arg(long, global = true, env = "TDE_KMS", value_name = "URI")]
    kms: Option<String>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Manage master keys in the local KMS.
    #[command(subcommand)]
    Kms(kms::KmsCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Kms(cmd) => kms::run(cli.kms.as_deref(), cmd),
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
