//! Crypto-shredding a table: drop its data and destroy every copy of its wrapped data
//! keys that the store holds, so nothing the store keeps can decrypt it again.
//!
//! Invariant: after `shred_table` returns, neither keyring copy holds the table's EDKs
//! (every keyring write replaces both copies), its column family is dropped, and the
//! write-ahead log that held its records has been retired. What remains outside the
//! store's control is documented on the method.

use super::Store;
use crate::error::Result;

impl Store {
    /// Drops table `name` and crypto-shreds it: its data is removed, both copies of the
    /// keyring are rewritten without its wrapped data keys, its data keys are wiped from
    /// memory, and the other tables are flushed so that the write-ahead log holding its
    /// recent records is retired (a plain [`Store::drop_table`] leaves that log live until
    /// the next flush).
    ///
    /// What remains true: the table's SST files and sealed values were encrypted under its
    /// own data key, so freed disk blocks holding them are unreadable once the key is gone.
    /// Records of a table *without* value sealing also passed through the write-ahead log,
    /// which is encrypted under the store-level key: freed blocks of an old log remain
    /// readable to someone holding that key. Backups taken earlier still hold the wrapped
    /// key; destroying (or disabling) the master key that wrapped it is what shreds them.
    ///
    /// # Errors
    /// [`crate::Error::NoSuchTable`]; [`crate::Error::Engine`], [`crate::Error::Io`].
    pub fn shred_table(&self, name: &str) -> Result<()> {
        self.drop_table(name)?;
        self.retire_log()
    }

    /// Switches to a new write-ahead log and flushes every table, so the log that held
    /// a dropped table's records is deleted.
    pub(crate) fn retire_log(&self) -> Result<()> {
        // A flush only switches to a new log when a memtable holds something: write one
        // marker into the (otherwise unused) default column family so the log that holds
        // the table's records is switched out and, once every table is flushed, deleted.
        let db = &self.inner.db;
        db.put_opt(b"tde:shred", b"", &self.inner.write_options)
            .map_err(super::engine)?;
        self.flush()
    }
}
