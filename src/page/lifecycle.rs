//! The tablespace through [`KeyLifecycle`]: delegation to its own methods.

use std::path::Path;
use std::sync::Arc;

use super::Tablespace;
use crate::error::{Error, Result};
use crate::keys::{
    AutoRotation, EnvelopeId, IntegrityReport, KeyLifecycle, KeysDescription, PartReport, PendingReencrypt,
    ReencryptJob, ReencryptOptions, RewrapReport, RotatedKey, RotationPolicy, WatchReport, describe_envelope,
};
use crate::kms::Kms;

impl Tablespace {
    /// Its one envelope, with its versions, their states and seal counts (counted live).
    pub fn describe(&self) -> KeysDescription {
        let durable = self.inner.durable.lock();
        let meta = &durable.header.meta;
        let sealing = self.inner.sealing.read();
        KeysDescription {
            kind: "tablespace",
            kms: meta.kms.clone(),
            envelopes: vec![describe_envelope(
                EnvelopeId::Store,
                &meta.name,
                &meta.envelope,
                &|v| sealing.key(v).map(|k| k.seals()),
            )],
        }
    }

    /// Verifies the tablespace's audit trail with its keys: the hash chain, and the MAC
    /// of every keyed record.
    ///
    /// # Errors
    /// [`Error::Authentication`] for a forged record; [`Error::Corrupt`] for a broken
    /// chain; [`Error::InvalidArgument`] for a trail kept in memory.
    pub fn verify_audit(&self) -> Result<crate::audit::AuditReport> {
        let inner = &*self.inner;
        let path = inner.keys.audit().path().map(Path::to_path_buf).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "tablespace {:?} keeps its audit trail in memory",
                inner.name
            ))
        })?;
        let meta = inner.meta.lock();
        crate::audit::verify_keyed(&path, &crate::hex::encode(&inner.id), &|v| {
            meta.mac_key(v, crate::audit::AUDIT_MAC_LABEL)
        })
    }

    /// The records of the audit trail (for a trail kept in memory, as on test storage).
    ///
    /// # Errors
    /// [`Error::Io`], [`Error::Corrupt`].
    pub fn audit_records(&self) -> Result<Vec<crate::audit::AuditRecord>> {
        let audit = self.inner.keys.audit();
        match audit.path() {
            Some(path) => crate::audit::read_at(path),
            None => Ok(audit.memory_records()),
        }
    }

    /// Writes a copy of the audit trail to the new file `to` (backups carry it).
    pub(crate) fn copy_audit_to(&self, to: &Path) -> Result<()> {
        self.inner.keys.audit().copy_to(to)
    }

    /// Closes it and opens it again with the same options and pool.
    ///
    /// # Errors
    /// As [`Tablespace::close`] and [`Tablespace::open_with`].
    pub fn reopen(self) -> Result<Tablespace> {
        let io = self.inner.io.clone();
        let options = {
            let mut o = self.inner.options.clone();
            o.kms = self.inner.keys.kms();
            o
        };
        let pool = self.inner.pool.clone();
        self.close()?;
        Tablespace::open_with(io, &options, &pool)
    }
}

impl KeyLifecycle for Tablespace {
    fn kind(&self) -> &'static str {
        "tablespace"
    }

    fn location(&self) -> &Path {
        self.path()
    }

    fn describe(&self) -> KeysDescription {
        Tablespace::describe(self)
    }

    fn rotate_data_key(&self, table: Option<&str>) -> Result<Vec<RotatedKey>> {
        no_table(table)?;
        let version = Tablespace::rotate_data_key(self)?;
        Ok(vec![RotatedKey {
            table: self.inner.name.clone(),
            version,
        }])
    }

    fn rewrap(&self, table: Option<&str>, to_key: Option<&str>) -> Result<RewrapReport> {
        no_table(table)?;
        Tablespace::rewrap(self, to_key)
    }

    fn migrate(&self, to: Arc<dyn Kms>, to_key: &str, to_kms_uri: Option<&str>) -> Result<RewrapReport> {
        Tablespace::migrate(self, to, to_key, to_kms_uri)
    }

    fn reencrypt_status(&self) -> Result<Vec<PendingReencrypt>> {
        Tablespace::reencrypt_status(self)
    }

    fn reencrypt(&self, options: ReencryptOptions) -> ReencryptJob {
        Tablespace::reencrypt(self, options)
    }

    fn maintain_keys(&self, policy: &RotationPolicy) -> Result<Vec<RotatedKey>> {
        Tablespace::maintain_keys(self, policy)
    }

    fn auto_rotate(&self, policy: RotationPolicy) -> AutoRotation {
        Tablespace::auto_rotate(self, policy)
    }

    fn check_keys(&self) -> Result<WatchReport> {
        Tablespace::check_keys(self)
    }

    fn verify(&self) -> Result<IntegrityReport> {
        let (checked, error) = match Tablespace::verify(self) {
            Ok(pages) => (pages, None),
            Err(e) => (0, Some(e.to_string())),
        };
        Ok(IntegrityReport {
            unit: "pages",
            parts: vec![PartReport {
                name: self.inner.name.clone(),
                checked,
                error,
            }],
            files: Vec::new(),
        })
    }

    fn verify_audit(&self) -> Result<crate::audit::AuditReport> {
        Tablespace::verify_audit(self)
    }

    fn backup(
        &self,
        dest: &crate::backup::Destination,
        _progress: &mut dyn FnMut(u64, u64),
    ) -> Result<crate::backup::BackupReport> {
        crate::backup::create_tablespace(self, dest)
    }

    fn reopen(self: Box<Self>) -> Result<Box<dyn KeyLifecycle>> {
        Ok(Box::new(Tablespace::reopen(*self)?))
    }

    fn close(self: Box<Self>) -> Result<()> {
        Tablespace::close(*self)
    }
}

fn no_table(table: Option<&str>) -> Result<()> {
    match table {
        Some(_) => Err(Error::InvalidArgument(
            "a tablespace has one envelope: name no table".into(),
        )),
        None => Ok(()),
    }
}
