//! `tde sql PATH [SQL]`: statements on an encrypted SQLite database.

use std::io::{Read, Write};
use std::path::Path;

use rusqlite::fallible_iterator::FallibleIterator;
use tde::sqlite::{Database, SqliteOptions, explain};

use crate::CliResult;
use crate::db::{absolute, connect, kms_for_create, require_key};

pub(crate) fn run(flag: Option<&str>, path: &Path, sql: Option<String>, key: Option<String>) -> CliResult {
    let db = if tde::sqlite::exists(path)? {
        let uri = match flag {
            Some(f) => absolute(tde::kms::KmsUri::parse(f)?)?,
            None => tde::kms::KmsUri::parse(&tde::sqlite::recorded_kms(path)?)?,
        };
        Database::open(path, &SqliteOptions::new(connect(&uri)?))?
    } else {
        let uri = kms_for_create(flag)?;
        require_key(&uri, key.as_ref(), "--key")?;
        let mut options = SqliteOptions::new(connect(&uri)?).kms_uri(uri.to_string());
        if let Some(key) = key {
            options = options.master_key(key);
        }
        Database::create(path, &options)?
    };
    let sql = match sql {
        Some(sql) => sql,
        None => {
            let mut text = String::new();
            std::io::stdin().read_to_string(&mut text)?;
            text
        }
    };
    let conn = db.connection()?;
    let mut out = std::io::stdout().lock();
    let mut batch = rusqlite::Batch::new(&conn, &sql);
    while let Some(mut stmt) = batch.next().map_err(explain)? {
        let columns = stmt.column_count();
        let mut rows = stmt.raw_query();
        while let Some(row) = rows.next().map_err(explain)? {
            for i in 0..columns {
                if i > 0 {
                    out.write_all(b"|")?;
                }
                match row.get_ref(i).map_err(explain)? {
                    rusqlite::types::ValueRef::Null => {}
                    rusqlite::types::ValueRef::Integer(v) => write!(out, "{v}")?,
                    rusqlite::types::ValueRef::Real(v) => write!(out, "{v}")?,
                    rusqlite::types::ValueRef::Text(v) | rusqlite::types::ValueRef::Blob(v) => {
                        out.write_all(v)?
                    }
                }
            }
            out.write_all(b"\n")?;
        }
    }
    Ok(())
}
