//! The two files of a tablespace, as the page store uses them: positional reads and
//! writes, length, fsync. Implemented by [`FileIo`] for real and by crash-simulating
//! doubles in tests (`testing::CrashIo`).

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Which file of a tablespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PageFile {
    /// The tablespace itself: header page and data pages.
    Data,
    /// The journal of committed but not yet checkpointed pages.
    Journal,
}

/// Storage of one tablespace (its data file and its journal).
///
/// Reads may run concurrently with each other and with writes to other offsets; the page
/// store never writes the same offset from two threads at once.
pub trait PageIo: Send + Sync + fmt::Debug {
    /// A description of `file` for messages (usually its path).
    fn describe(&self, file: PageFile) -> String;
    /// Current length of `file` in bytes.
    fn len(&self, file: PageFile) -> io::Result<u64>;
    /// Fills `buf` from `offset`; a read past the end is `UnexpectedEof`.
    fn read_exact_at(&self, file: PageFile, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    /// Writes all of `data` at `offset`.
    fn write_all_at(&self, file: PageFile, offset: u64, data: &[u8]) -> io::Result<()>;
    /// Truncates or extends `file` to `len` bytes.
    fn set_len(&self, file: PageFile, len: u64) -> io::Result<()>;
    /// Makes every write to `file` so far durable (fdatasync).
    fn sync(&self, file: PageFile) -> io::Result<()>;
    /// The file of the tablespace's audit trail, beside it; `None` keeps the trail in
    /// memory (storage that is not a file system).
    fn audit_path(&self) -> Option<PathBuf> {
        None
    }
}

/// A tablespace file `path` and its journal `path` + `-journal`, on the real file system.
/// Holds an exclusive lock on the data file while open, so two processes cannot open
/// the same tablespace.
#[derive(Debug)]
pub struct FileIo {
    data: File,
    journal: File,
    path: PathBuf,
    journal_path: PathBuf,
}

/// The journal path of the tablespace at `path`.
pub fn journal_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push("-journal");
    PathBuf::from(name)
}

impl FileIo {
    /// Opens (or, with `create`, creates; the data file must not exist) the files of the
    /// tablespace at `path` and locks them.
    ///
    /// # Errors
    /// The I/O error; `WouldBlock` if another handle holds the tablespace.
    pub fn open(path: &Path, create: bool) -> io::Result<FileIo> {
        let mut options = OpenOptions::new();
        options.read(true).write(true);
        if create {
            options.create_new(true);
        }
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let data = options.open(path)?;
        if let Err(e) = data.try_lock() {
            return Err(match e {
                std::fs::TryLockError::WouldBlock => io::Error::new(
                    io::ErrorKind::WouldBlock,
                    "the tablespace is open elsewhere (its file is locked)",
                ),
                std::fs::TryLockError::Error(e) => e,
            });
        }
        let journal_path = journal_path(path);
        // The journal's name is derived, not given: never follow a link planted there.
        let journal = {
            use std::os::unix::fs::OpenOptionsExt;
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&journal_path)?
        };
        if create && let Some(dir) = path.parent() {
            // The new directory entries must survive a crash.
            let dir = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            };
            File::open(dir)?.sync_all()?;
        }
        Ok(FileIo {
            data,
            journal,
            path: path.to_path_buf(),
            journal_path,
        })
    }

    fn file(&self, file: PageFile) -> &File {
        match file {
            PageFile::Data => &self.data,
            PageFile::Journal => &self.journal,
        }
    }
}

impl PageIo for FileIo {
    fn audit_path(&self) -> Option<PathBuf> {
        Some(crate::audit::tablespace_audit_path(&self.path))
    }

    fn describe(&self, file: PageFile) -> String {
        match file {
            PageFile::Data => self.path.display().to_string(),
            PageFile::Journal => self.journal_path.display().to_string(),
        }
    }

    fn len(&self, file: PageFile) -> io::Result<u64> {
        Ok(self.file(file).metadata()?.len())
    }

    fn read_exact_at(&self, file: PageFile, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.file(file).read_exact_at(buf, offset)
    }

    fn write_all_at(&self, file: PageFile, offset: u64, data: &[u8]) -> io::Result<()> {
        self.file(file).write_all_at(data, offset)
    }

    fn set_len(&self, file: PageFile, len: u64) -> io::Result<()> {
        self.file(file).set_len(len)
    }

    fn sync(&self, file: PageFile) -> io::Result<()> {
        self.file(file).sync_data()
    }
}
