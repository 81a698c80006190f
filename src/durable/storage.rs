//! The file system, as the durable-metadata code uses it.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::PathBuf;

/// The handful of file operations metadata files need, in one directory. Implemented by
/// [`FsStorage`] for real and by crash-simulating doubles in tests.
pub trait Storage: Send + Sync + fmt::Debug {
    /// Full path of `name`, for messages.
    fn path(&self, name: &str) -> PathBuf;
    /// Whether `name` exists.
    fn exists(&self, name: &str) -> io::Result<bool>;
    /// Reads all of `name`; `None` if it does not exist.
    fn read(&self, name: &str) -> io::Result<Option<Vec<u8>>>;
    /// Reads at most `len` bytes from the start of `name`; `None` if it does not exist.
    fn read_prefix(&self, name: &str, len: usize) -> io::Result<Option<Vec<u8>>>;
    /// Creates or truncates `name`, writes `bytes` and fsyncs the file.
    fn write_synced(&self, name: &str, bytes: &[u8]) -> io::Result<()>;
    /// Creates `name` with `bytes`, readable by the owner only; fails if it exists.
    fn create_private(&self, name: &str, bytes: &[u8]) -> io::Result<()>;
    /// Renames `from` over `to`.
    fn rename(&self, from: &str, to: &str) -> io::Result<()>;
    /// Fsyncs the directory, making renames and creations durable.
    fn sync_dir(&self) -> io::Result<()>;
    /// Takes an exclusive inter-process lock on the directory, held until the guard drops.
    fn lock(&self) -> io::Result<DirLock>;
}

/// An exclusive lock on a storage directory; released on drop.
#[derive(Debug)]
pub struct DirLock {
    _file: Option<File>,
}

/// A real directory.
#[derive(Debug, Clone)]
pub struct FsStorage {
    dir: PathBuf,
}

impl FsStorage {
    /// Files in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> FsStorage {
        FsStorage { dir: dir.into() }
    }
}

fn not_found_is_none<T>(r: io::Result<T>) -> io::Result<Option<T>> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

impl Storage for FsStorage {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn exists(&self, name: &str) -> io::Result<bool> {
        self.dir.join(name).try_exists()
    }

    fn read(&self, name: &str) -> io::Result<Option<Vec<u8>>> {
        not_found_is_none(std::fs::read(self.dir.join(name)))
    }

    fn read_prefix(&self, name: &str, len: usize) -> io::Result<Option<Vec<u8>>> {
        let Some(file) = not_found_is_none(File::open(self.dir.join(name)))? else {
            return Ok(None);
        };
        let mut buf = Vec::with_capacity(len);
        file.take(len as u64).read_to_end(&mut buf)?;
        Ok(Some(buf))
    }

    fn write_synced(&self, name: &str, bytes: &[u8]) -> io::Result<()> {
        let mut f = File::create(self.dir.join(name))?;
        f.write_all(bytes)?;
        f.sync_all()
    }

    fn create_private(&self, name: &str, bytes: &[u8]) -> io::Result<()> {
        let mut options = OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut f = options.open(self.dir.join(name))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        self.sync_dir()
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        std::fs::rename(self.dir.join(from), self.dir.join(to))
    }

    fn sync_dir(&self) -> io::Result<()> {
        #[cfg(unix)]
        {
            File::open(&self.dir)?.sync_all()
        }
        #[cfg(not(unix))]
        {
            Ok(())
        }
    }

    fn lock(&self) -> io::Result<DirLock> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.dir.join("lock"))?;
        file.lock()?;
        Ok(DirLock { _file: Some(file) })
    }
}
