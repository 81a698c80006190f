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

    /// Reads and authenticates every record of every table; a table that fails is
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
        })
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
