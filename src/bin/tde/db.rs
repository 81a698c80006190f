//! `tde db`, `tde table`, `tde put/get/del/scan/load/verify`: the encrypted store from the
//! command line.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::{Args, Subcommand};
use tde::cipher::Suite;
use tde::keys::KeyLifecycle;
use tde::kms::{Kms, KmsUri};
use tde::kv::{ScanOptions, Store, StoreOptions, TableOptions};

use crate::CliResult;

#[derive(Debug, Subcommand)]
pub(crate) enum DbCommand {
    /// Create a store in PATH (a new or empty directory). It records the KMS it is created
    /// with (--kms, else TDE_KMS, else the default local KMS).
    Create {
        /// Directory of the store.
        path: PathBuf,
        /// Master key for the store and for tables that do not choose one (default: the
        /// service key alias/acs/tde).
        #[arg(long, value_name = "KEY")]
        default_key: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum TableCommand {
    /// Create a table with its own data key.
    Create {
        /// Directory of the store.
        path: PathBuf,
        /// Table name.
        name: String,
        /// Master key for this table (default: the store's default key).
        #[arg(long, value_name = "KEY")]
        key: Option<String>,
        /// Cipher: aes-256-gcm, sm4-gcm or aegis-256.
        #[arg(long, value_name = "CIPHER")]
        cipher: Option<Suite>,
        /// Also seal each value with AEAD, bound to its record (every byte of every
        /// file is authenticated either way; this costs speed, space and compression).
        #[arg(long)]
        seal_values: bool,
    },
    /// Drop a table: its data, then its wrapped keys.
    Drop {
        /// Directory of the store.
        path: PathBuf,
        /// Table name.
        name: String,
        /// Crypto-shred: also rewrite both keyring copies without the table's wrapped
        /// keys and retire the write-ahead log that held its records. Backups still hold
        /// the wrapped keys: destroy the master key to shred those.
        #[arg(long)]
        shred: bool,
    },
    /// List tables.
    List {
        /// Directory of the store.
        path: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// PATH and TABLE, shared by the record commands.
#[derive(Debug, Args)]
pub(crate) struct Target {
    /// Directory of the store.
    pub path: PathBuf,
    /// Table name.
    pub table: String,
}

/// The KMS for a new store: --kms, else TDE_KMS, else the default local KMS.
pub(crate) fn kms_for_create(flag: Option<&str>) -> CliResult<KmsUri> {
    let text = match flag {
        Some(f) => f.to_owned(),
        None => match std::env::var("TDE_KMS") {
            Ok(v) if !v.is_empty() => v,
            _ => format!("local:{}", tde::kms::default_local_dir()?.display()),
        },
    };
    absolute(KmsUri::parse(&text)?)
}

/// A provider without an auto-created service key needs a master key named.
pub(crate) fn require_key(uri: &KmsUri, key: Option<&String>, flag: &str) -> CliResult {
    if key.is_none() && !uri.has_service_key() {
        return Err(format!(
            "{uri} has no service key that tde creates on first use: name a master key with {flag}"
        )
        .into());
    }
    Ok(())
}

pub(crate) fn absolute(uri: KmsUri) -> CliResult<KmsUri> {
    Ok(match uri {
        KmsUri::Local(dir) => KmsUri::Local(std::path::absolute(dir)?),
        KmsUri::Kmip {
            host,
            port,
            cert,
            key,
            ca,
        } => KmsUri::Kmip {
            host,
            port,
            cert: std::path::absolute(cert)?,
            key: std::path::absolute(key)?,
            ca: std::path::absolute(ca)?,
        },
        other => other,
    })
}

pub(crate) fn connect(uri: &KmsUri) -> CliResult<Arc<dyn Kms>> {
    Ok(tde::kms::open_uri(uri)?)
}

/// The KMS for what `path` holds: `--kms` if given, else the one it recorded.
pub(crate) fn kms_for(path: &Path, flag: Option<&str>) -> CliResult<KmsUri> {
    match flag {
        Some(f) => absolute(KmsUri::parse(f)?),
        None => Ok(KmsUri::parse(&tde::engines::recorded_kms(path)?)?),
    }
}

/// Opens a store with `--kms` if given, else the KMS it recorded.
pub(crate) fn open_store(path: &Path, flag: Option<&str>) -> CliResult<Store> {
    if tde::engines::identify(path)? != tde::engines::EngineKind::Store {
        return Err(format!("{} is a tablespace; this command works on stores", path.display()).into());
    }
    let uri = kms_for(path, flag)?;
    let kms = connect(&uri)?;
    Ok(Store::open(
        path,
        StoreOptions::new(kms).kms_uri(uri.to_string()),
    )?)
}

/// Opens what `path` holds (a store or a tablespace) with `--kms` if given, else the
/// KMS it recorded.
pub(crate) fn open_any(path: &Path, flag: Option<&str>) -> CliResult<Box<dyn KeyLifecycle>> {
    let uri = kms_for(path, flag)?;
    Ok(tde::engines::open(
        path,
        connect(&uri)?,
        Some(&uri.to_string()),
        16 << 20,
    )?)
}

pub(crate) fn run_db(flag: Option<&str>, cmd: DbCommand) -> CliResult {
    match cmd {
        DbCommand::Create { path, default_key } => {
            let uri = kms_for_create(flag)?;
            require_key(&uri, default_key.as_ref(), "--default-key")?;
            let kms = connect(&uri)?;
            let mut options = StoreOptions::new(kms).kms_uri(uri.to_string());
            if let Some(key) = default_key {
                options = options.default_key(key);
            }
            let store = Store::create(&path, options)?;
            println!("{}", store.store_id());
            eprintln!("created store {} (KMS {uri})", path.display());
        }
    }
    Ok(())
}

pub(crate) fn run_table(flag: Option<&str>, cmd: TableCommand) -> CliResult {
    match cmd {
        TableCommand::Create {
            path,
            name,
            key,
            cipher,
            seal_values,
        } => {
            let store = open_store(&path, flag)?;
            let mut options = TableOptions::default();
            if let Some(key) = key {
                options = options.master_key(key);
            }
            if let Some(cipher) = cipher {
                options = options.suite(cipher);
            }
            options = options.seal_values(seal_values);
            store.create_table(&name, &options)?;
            let info = store.tables().into_iter().find(|t| t.name == name);
            if let Some(info) = info {
                println!(
                    "table {} created (key {}, {}, value sealing {})",
                    info.name,
                    info.master_key,
                    info.suite,
                    if info.value_seal { "on" } else { "off" }
                );
            }
        }
        TableCommand::Drop { path, name, shred } => {
            let store = open_store(&path, flag)?;
            if shred {
                store.shred_table(&name)?;
                println!("table {name} dropped and shredded: no copy of its data key is left in the store");
            } else {
                store.drop_table(&name)?;
                println!("table {name} dropped");
            }
        }
        TableCommand::List { path, json } => {
            let store = open_store(&path, flag)?;
            let tables = store.tables();
            if json {
                let mut out = std::io::stdout().lock();
                serde_json::to_writer_pretty(&mut out, &tables)?;
                writeln!(out)?;
                return Ok(());
            }
            println!(
                "{:<24}  {:<12}  {:<5}  {:>6}  MASTER KEY",
                "TABLE", "CIPHER", "SEAL", "DK VER"
            );
            for t in tables {
                println!(
                    "{:<24}  {:<12}  {:<5}  {:>6}  {}",
                    t.name,
                    t.suite.name(),
                    if t.value_seal { "on" } else { "off" },
                    t.data_key_version,
                    t.master_key
                );
            }
        }
    }
    Ok(())
}

pub(crate) fn put(flag: Option<&str>, target: &Target, key: &str, value: &str) -> CliResult {
    let store = open_store(&target.path, flag)?;
    store
        .table(&target.table)?
        .put(key.as_bytes(), value.as_bytes())?;
    Ok(())
}

pub(crate) fn get(flag: Option<&str>, target: &Target, key: &str) -> CliResult {
    let store = open_store(&target.path, flag)?;
    match store.table(&target.table)?.get(key.as_bytes())? {
        Some(value) => {
            let mut out = std::io::stdout().lock();
            out.write_all(&value)?;
            writeln!(out)?;
            Ok(())
        }
        None => Err(format!("key {key:?} not found in table {:?}", target.table).into()),
    }
}

pub(crate) fn del(flag: Option<&str>, target: &Target, key: &str) -> CliResult {
    let store = open_store(&target.path, flag)?;
    store.table(&target.table)?.delete(key.as_bytes())?;
    Ok(())
}

pub(crate) fn scan(flag: Option<&str>, target: &Target, prefix: Option<String>) -> CliResult {
    let store = open_store(&target.path, flag)?;
    let table = store.table(&target.table)?;
    let options = prefix.map(ScanOptions::prefix).unwrap_or_default();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for item in table.scan(&options)? {
        let (k, v) = item?;
        out.write_all(&k)?;
        out.write_all(b"\t")?;
        out.write_all(&v)?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(())
}

/// Rows per write batch when loading.
const LOAD_BATCH: usize = 1000;

pub(crate) fn load(flag: Option<&str>, target: &Target) -> CliResult {
    let store = open_store(&target.path, flag)?;
    let table = store.table(&target.table)?;
    let mut batch = store.batch();
    let mut rows = 0u64;
    for (n, line) in std::io::stdin().lock().lines().enumerate() {
        let line = line?;
        if line.is_empty() {
            continue;
        }
        let (k, v) = line
            .split_once('\t')
            .ok_or_else(|| format!("line {}: expected KEY<TAB>VALUE", n + 1))?;
        batch.put(&table, k.as_bytes(), v.as_bytes());
        rows += 1;
        if batch.len() >= LOAD_BATCH {
            store.write(std::mem::replace(&mut batch, store.batch()))?;
        }
    }
    if !batch.is_empty() {
        store.write(batch)?;
    }
    store.flush()?;
    eprintln!("loaded {rows} rows into {}", target.table);
    Ok(())
}

pub(crate) fn verify(flag: Option<&str>, path: &Path) -> CliResult {
    let engine = open_any(path, flag)?;
    let report = engine.verify()?;
    for part in &report.parts {
        match &part.error {
            None => println!("{}: {} {}, all authentic", part.name, part.checked, report.unit),
            Some(e) => println!(
                "{}: FAILED after {} {}: {e}",
                part.name, part.checked, report.unit
            ),
        }
    }
    for file in report.files.iter().filter(|f| f.error.is_some()) {
        println!(
            "{}: FAILED: {}",
            file.name,
            file.error.as_deref().unwrap_or_default()
        );
    }
    engine.close()?;
    if report.failures() > 0 {
        return Err(format!("{} part(s) failed verification", report.failures()).into());
    }
    let parts = match (report.unit, report.parts.len()) {
        ("pages", 1) => "1 tablespace".to_owned(),
        (_, n) => format!("{n} tables"),
    };
    println!("verified {} {} in {parts}", report.checked(), report.unit);
    if !report.files.is_empty() {
        let bytes: u64 = report.files.iter().map(|f| f.checked).sum();
        println!(
            "authenticated every byte of {} files ({bytes} bytes)",
            report.files.len()
        );
    }
    Ok(())
}

pub(crate) fn upgrade(flag: Option<&str>, path: &Path) -> CliResult {
    let store = open_store(path, flag)?;
    let (store, report) = store.upgrade()?;
    drop(store);
    if report.before.is_empty() {
        println!("nothing to upgrade: every file is in format 2");
        return Ok(());
    }
    println!(
        "rewrote {} files of format 1",
        report.before.len() - report.after.len()
    );
    if !report.after.is_empty() {
        return Err(format!("still in format 1: {}", report.after.join(", ")).into());
    }
    Ok(())
}

pub(crate) fn rotate(
    flag: Option<&str>,
    path: &Path,
    table: Option<&str>,
    to_key: Option<&str>,
) -> CliResult {
    let engine = open_any(path, flag)?;
    let report = engine.rewrap(table, to_key)?;
    engine.close()?;
    println!(
        "rewrapped {} data key(s) of {} envelope(s); no data file was rewritten",
        report.wrapped_keys, report.envelopes
    );
    Ok(())
}

pub(crate) fn watch(flag: Option<&str>, path: &Path, interval: u64, once: bool) -> CliResult {
    let engine = open_any(path, flag)?;
    loop {
        let report = engine.check_keys()?;
        for (key, error) in &report.unreachable {
            println!("unreachable: master key {key}: {error} (tables keep working)");
        }
        for (table, key, why) in &report.revoked {
            println!("revoked: table {table} (master key {key}): {why}");
        }
        if once {
            println!("checked {} master key(s)", report.keys_checked);
            if !report.revoked.is_empty() {
                return Err(format!("{} table(s) failed closed", report.revoked.len()).into());
            }
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_secs(interval.max(1)));
    }
}

pub(crate) fn migrate(flag: Option<&str>, path: &Path, to_key: &str, to_kms: Option<&str>) -> CliResult {
    let from = kms_for(path, flag)?;
    let engine = tde::engines::open(path, connect(&from)?, Some(&from.to_string()), 16 << 20)?;
    let uri = match to_kms {
        Some(u) => absolute(KmsUri::parse(u)?)?,
        None => from,
    };
    let report = engine.migrate(connect(&uri)?, to_key, Some(&uri.to_string()))?;
    engine.close()?;
    println!(
        "moved {} data key(s) of {} envelope(s) to {to_key} (KMS {uri}); no data file was rewritten",
        report.wrapped_keys, report.envelopes
    );
    Ok(())
}
