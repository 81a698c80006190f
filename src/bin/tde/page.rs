//! `tde page`: tablespaces of the encrypted page store from the command line.

use std::path::{Path, PathBuf};

use clap::Subcommand;
use tde::cipher::Suite;
use tde::page::{BufferPool, PageSize, Tablespace, TablespaceOptions};

use crate::CliResult;
use crate::db::{connect, kms_for_create};

#[derive(Debug, Subcommand)]
pub(crate) enum PageCommand {
    /// Create a tablespace file (and its journal, FILE-journal) with its own data key. It
    /// records the KMS it is created with (--kms, else TDE_KMS, else the default local KMS).
    Create {
        /// The tablespace file (must not exist).
        file: PathBuf,
        /// Master key (default: the service key alias/acs/tde).
        #[arg(long, value_name = "KEY")]
        key: Option<String>,
        /// Cipher: aes-256-gcm, sm4-gcm or aegis-256.
        #[arg(long, value_name = "CIPHER", default_value = "aes-256-gcm")]
        cipher: Suite,
        /// Physical page size: 4k, 8k, 16k, 32k or 64k.
        #[arg(long, default_value = "16k")]
        page_size: PageSize,
    },
    /// Show what a tablespace header records (needs no key: seal counts are as recorded
    /// in the header, not verified).
    Info {
        /// The tablespace file.
        file: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Open a tablespace (recovering from its journal) and authenticate every page.
    Verify {
        /// The tablespace file.
        file: PathBuf,
    },
}

/// Opens a tablespace with `--kms` if given, else the KMS its header records.
pub(crate) fn open(file: &Path, flag: Option<&str>, pool: &BufferPool) -> CliResult<Tablespace> {
    let uri = crate::db::kms_for(file, flag)?;
    let options = TablespaceOptions::new(connect(&uri)?).kms_uri(uri.to_string());
    Ok(Tablespace::open(file, &options, pool)?)
}

pub(crate) fn run(flag: Option<&str>, cmd: PageCommand) -> CliResult {
    match cmd {
        PageCommand::Create {
            file,
            key,
            cipher,
            page_size,
        } => {
            let uri = kms_for_create(flag)?;
            crate::db::require_key(&uri, key.as_ref(), "--key")?;
            let mut options = TablespaceOptions::new(connect(&uri)?)
                .kms_uri(uri.to_string())
                .suite(cipher)
                .page_size(page_size);
            if let Some(key) = key {
                options = options.master_key(key);
            }
            let ts = Tablespace::create(&file, &options, &BufferPool::new(1 << 20))?;
            let info = ts.info();
            ts.close()?;
            println!("{}", info.id);
            eprintln!(
                "created tablespace {} ({} KiB pages, {} under {}, KMS {uri})",
                file.display(),
                page_size.bytes() >> 10,
                info.suite,
                info.master_key
            );
        }
        PageCommand::Info { file, json } => {
            let info = Tablespace::inspect(&file)?;
            if json {
                println!("{}", serde_json::to_string(&info)?);
            } else {
                println!("name               {}", info.name);
                println!("id                 {}", info.id);
                println!(
                    "page size          {} bytes ({} physical)",
                    info.page_size, info.physical_page_size
                );
                println!("pages              {}", info.page_count);
                println!("encrypted          {}", info.encrypted);
                println!("cipher             {}", info.suite);
                println!("master key         {}", info.master_key);
                println!("data key version   {}", info.data_key_version);
                println!("kms                {}", info.kms);
                for v in &info.versions {
                    let state = serde_json::to_value(v.state)?;
                    println!(
                        "  version {:<4} {:<9} {} seals (as recorded)",
                        v.version,
                        state.as_str().unwrap_or_default(),
                        v.seals
                    );
                }
            }
        }
        PageCommand::Verify { file } => {
            let pool = BufferPool::new(16 << 20);
            let ts = open(&file, flag, &pool)?;
            let pages = ts.verify()?;
            ts.close()?;
            println!("{}: {pages} pages, all authentic", file.display());
        }
    }
    Ok(())
}
