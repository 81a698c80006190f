//! The RocksDB store through [`KeyLifecycle`]: delegation to the store's own methods,
//! plus the whole-store integrity check and the description of its envelopes.

use std::path::Path;
use std::sync::Arc;

use super::{STORE_LABEL, Store};
use crate::error::{Error, Result};
use crate::keys::{
    AutoRotation, EnvelopeId, IntegrityReport, KeyLifecycle, KeysDescription, PartReport, PendingReencrypt,
    ReencryptJob, ReencryptOptions, RewrapReport, RotatedKey, RotationPolicy, WatchReport, describe_envelope,
};
use crate::kms::Kms;

/// What [`Store::upgrade`] found.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct UpgradeReport {
    /// RocksDB's files in format 1 before the upgrade.
    pub before: Vec<String>,
    /// Those still in format 1 after it.
    pub after: Vec<String>,
}

impl Store {
    /// Every envelope (the store-level key and each table's), with its versions, their
    /// states and their seal counts (counted live).
    pub fn describe(&self) -> KeysDescription {
        let keyring = self.inner.keyring.lock();
        let data = keyring.data();
        let tables = self.inner.tables.read();
        let mut envelopes = vec![describe_envelope(
            EnvelopeId::Store,
            STORE_LABEL,
            &data.store_key,
            &|_| None,
        )];
        envelopes.extend(data.tables.iter().map(|t| {
            describe_envelope(
                EnvelopeId::Table(t.envelope.table_id),
                &t.name,
                &t.envelope,
                &|v| tables.get(&t.name)?.key(v).map(|k| k.seals()),
            )
        }));
        KeysDescription {
            kind: "store",
            kms: data.kms.clone(),
            envelopes,
        }
    }

    /// Reads and authenticates every record of every table, then every byte of every
    /// file RocksDB keeps ([`Store::verify_files`]); a table or file that fails is
    /// reported with its first error, and the others are still checked.
    ///
    /// # Errors
    /// [`Error::NoSuchTable`] if a table is dropped meanwhile.
    pub fn verify(&self) -> Result<IntegrityReport> {
        let mut parts = Vec::new();
        for info in self.tables() {
            let table = self.table(&info.name)?;
            let mut part = PartReport {
                name: info.name.clone(),
                checked: 0,
                error: None,
            };
            match table.iter() {
                Ok(iter) => {
                    for item in iter {
                        match item {
                            Ok(_) => part.checked += 1,
                            Err(e) => {
                                part.error = Some(e.to_string());
                                break;
                            }
                        }
                    }
                }
                Err(e) => part.error = Some(e.to_string()),
            }
            parts.push(part);
        }
        Ok(IntegrityReport {
            unit: "records",
            parts,
            files: self.verify_files()?,
        })
    }

    /// Reads and authenticates every byte of every file RocksDB keeps in the store: live
    /// table files, write-ahead logs, MANIFEST, OPTIONS, CURRENT, IDENTITY and info logs.
    /// A torn tail of a log (the unfinished last flush of a crash, or of a log being
    /// written now) is left out, as the store leaves it out. A file written by an earlier
    /// release in format 1 (not authenticated) fails, naming it; a compaction or
    /// [`Store::upgrade`] rewrites it.
    ///
    /// # Errors
    /// [`Error::Io`] if the directory cannot be listed; [`Error::Engine`].
    pub fn verify_files(&self) -> Result<Vec<PartReport>> {
        let live: std::collections::HashSet<String> = self
            .inner
            .db
            .live_files()
            .map_err(super::engine)?
            .into_iter()
            .map(|f| f.name.trim_start_matches('/').to_owned())
            .collect();
        let dir = &self.inner.path;
        let listing = |e| Error::io(format!("listing {}", dir.display()), e);
        let mut names = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(listing)? {
            let name = entry.map_err(listing)?.file_name().to_string_lossy().into_owned();
            let table_file = name.ends_with(".sst") || name.ends_with(".blob");
            // A table file that is not live is being written or deleted right now.
            if (table_file && live.contains(&name)) || (!table_file && super::files::rocksdb_log_name(&name))
            {
                names.push(name);
            }
        }
        names.sort();
        Ok(names
            .into_iter()
            .map(|name| {
                let checked = self.inner.files.verify_file(&dir.join(&name));
                PartReport {
                    name,
                    checked: *checked.as_ref().unwrap_or(&0),
                    error: checked.err().map(|e| e.to_string()),
                }
            })
            .collect())
    }

    /// RocksDB's files in the store still in format 1 (written by an earlier release:
    /// encrypted, not authenticated), by name.
    ///
    /// # Errors
    /// [`Error::Io`] if the directory cannot be listed.
    pub fn format1_files(&self) -> Result<Vec<String>> {
        let dir = &self.inner.path;
        let listing = |e| Error::io(format!("listing {}", dir.display()), e);
        let mut names = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(listing)? {
            let entry = entry.map_err(listing)?;
            if super::files::is_format1(&entry.path()) {
                names.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        names.sort();
        Ok(names)
    }

    /// Rewrites every file still in format 1 in format 2, online: flushes every table and
    /// compacts it (a new SST for every old one), rewrites the files RocksDB reads only at
    /// open (IDENTITY, OPTIONS, old info logs), then reopens the store, which replaces its
    /// MANIFEST, CURRENT, WAL and info LOG. Returns the reopened store and what it found
    /// before and after (after: nothing, unless another process holds a file).
    ///
    /// # Errors
    /// As [`Store::flush`], [`Store::compact`] and [`Store::reopen`]; [`Error::Corrupt`] or
    /// [`Error::Authentication`] for a file that cannot be read.
    pub fn upgrade(self) -> Result<(Store, UpgradeReport)> {
        let before = self.format1_files()?;
        if before.is_empty() {
            return Ok((
                self,
                UpgradeReport {
                    before,
                    after: Vec::new(),
                },
            ));
        }
        self.inner.flush_all()?;
        self.compact()?;
        self.rewrite_format1_read_at_open()?;
        let store = self.reopen()?;
        // The reopen renamed the old info LOG to LOG.old.*.
        store.rewrite_format1_read_at_open()?;
        let after = store.format1_files()?;
        Ok((store, UpgradeReport { before, after }))
    }

    fn rewrite_format1_read_at_open(&self) -> Result<()> {
        for name in self.format1_files()? {
            if name == "IDENTITY" || name.starts_with("OPTIONS-") || name.starts_with("LOG.old.") {
                self.inner.files.rewrite_store_file(&self.inner.path.join(name))?;
            }
        }
        Ok(())
    }

    /// Closes the store and opens it again with the options it was opened with (RocksDB
    /// replaces its MANIFEST and info log at open).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if another handle on the store is alive; as
    /// [`Store::open`].
    pub fn reopen(self) -> Result<Store> {
        let path = self.inner.path.clone();
        let mut options = self.inner.options.clone();
        options.kms = self.inner.kms();
        let inner = Arc::try_unwrap(self.inner).map_err(|_| {
            Error::InvalidArgument("the store cannot be reopened while other handles on it are alive".into())
        })?;
        drop(inner);
        Store::open(path, options)
    }
}

impl KeyLifecycle for Store {
    fn kind(&self) -> &'static str {
        "store"
    }

    fn location(&self) -> &Path {
        self.path()
    }

    fn describe(&self) -> KeysDescription {
        Store::describe(self)
    }

    fn rotate_data_key(&self, table: Option<&str>) -> Result<Vec<RotatedKey>> {
        Store::rotate_data_key(self, table)
    }

    fn rewrap(&self, table: Option<&str>, to_key: Option<&str>) -> Result<RewrapReport> {
        Store::rewrap(self, table, to_key)
    }

    fn migrate(&self, to: Arc<dyn Kms>, to_key: &str, to_kms_uri: Option<&str>) -> Result<RewrapReport> {
        Store::migrate(self, to, to_key, to_kms_uri)
    }

    fn reencrypt_status(&self) -> Result<Vec<PendingReencrypt>> {
        Store::reencrypt_status(self)
    }

    fn reencrypt(&self, options: ReencryptOptions) -> ReencryptJob {
        Store::reencrypt(self, options)
    }

    fn maintain_keys(&self, policy: &RotationPolicy) -> Result<Vec<RotatedKey>> {
        Store::maintain_keys(self, policy)
    }

    fn auto_rotate(&self, policy: RotationPolicy) -> AutoRotation {
        Store::auto_rotate(self, policy)
    }

    fn check_keys(&self) -> Result<WatchReport> {
        Store::check_keys(self)
    }

    fn verify(&self) -> Result<IntegrityReport> {
        Store::verify(self)
    }

    fn verify_audit(&self) -> Result<crate::audit::AuditReport> {
        Store::verify_audit(self)
    }

    fn backup(
        &self,
        dest: &crate::backup::Destination,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<crate::backup::BackupReport> {
        crate::backup::create_with_progress(self, dest, progress)
    }

    fn reopen(self: Box<Self>) -> Result<Box<dyn KeyLifecycle>> {
        Ok(Box::new(Store::reopen(*self)?))
    }

    fn close(self: Box<Self>) -> Result<()> {
        self.inner.save_seal_counts()
    }
}
