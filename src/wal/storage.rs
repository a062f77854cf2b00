//! File I/O behind a small trait, so tests can run the log on a backend that keeps
//! "written" and "durable" bytes apart (see `fault.rs`).

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::sync::Arc;

use memmap2::Mmap;

/// How a new segment's space is reserved. Both reserve every block with posix_fallocate, so
/// a full disk fails when a segment is created, never later in a commit or as SIGBUS.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Preallocation {
    /// posix_fallocate alone (the default). ext4 and XFS mark the blocks unwritten, and a
    /// sync that writes into them journals the conversion. That costs a little per small
    /// commit, but nothing extra in bytes written (docs/performance.md).
    Fallocate,
    /// posix_fallocate, then zeros written over the whole file. Later syncs then flush data
    /// only, which makes small commits faster. But every byte is written twice, and a
    /// background zero-fill of 64 MiB delays the cache flushes of concurrent commits by
    /// tens of milliseconds.
    ZeroFill,
}

/// A read-only view of a whole file, shared with the page cache: bytes written with
/// `write_all_at` are visible through it at once.
pub struct FileMap {
    map: Option<Mmap>,
}

impl FileMap {
    pub fn as_slice(&self) -> &[u8] {
        self.map.as_deref().unwrap_or(&[])
    }
}

impl fmt::Debug for FileMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FileMap({} bytes)", self.as_slice().len())
    }
}

/// One open file of the log.
pub trait StorageFile: Send + Sync + fmt::Debug {
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Makes every byte written so far durable (fdatasync).
    fn sync_data(&self) -> io::Result<()>;
    /// Reserves `len` bytes on disk so that later writes below `len` cannot fail for space.
    fn allocate(&self, len: u64, how: Preallocation) -> io::Result<()>;
    fn set_len(&self, len: u64) -> io::Result<()>;
    fn size(&self) -> io::Result<u64>;
    fn map(&self) -> io::Result<FileMap>;
}

/// Directory-level operations of the log.
pub trait Storage: Send + Sync + fmt::Debug {
    /// Creates a file that must not exist yet, open for reading and writing.
    fn create_new(&self, path: &Path) -> io::Result<Arc<dyn StorageFile>>;
    fn open(&self, path: &Path, writable: bool) -> io::Result<Arc<dyn StorageFile>>;
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Makes creations, renames and removals in `dir` durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// The names of the plain files in `dir`.
    fn list_files(&self, dir: &Path) -> io::Result<Vec<String>>;
}

/// The real file system.
#[derive(Debug, Default, Clone, Copy)]
pub struct OsStorage;

#[derive(Debug)]
pub struct OsFile {
    file: File,
}

const ZERO_FILL_CHUNK_BYTES: usize = 1 << 20;

impl StorageFile for OsFile {
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.file.write_all_at(buf, offset)
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn allocate(&self, len: u64, how: Preallocation) -> io::Result<()> {
        let len_off =
            libc::off_t::try_from(len).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: the descriptor is open and owned by `self.file` for the duration of the call.
        let rc = unsafe { libc::posix_fallocate(self.file.as_raw_fd(), 0, len_off) };
        match rc {
            0 => {}
            // Some file systems (tmpfs on old kernels, some FUSE) lack fallocate: fall back
            // to zero-filling, which reserves the space just as surely.
            libc::EOPNOTSUPP | libc::EINVAL => return self.zero_fill(len),
            errno => return Err(io::Error::from_raw_os_error(errno)),
        }
        match how {
            Preallocation::ZeroFill => self.zero_fill(len),
            Preallocation::Fallocate => Ok(()),
        }
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    fn map(&self) -> io::Result<FileMap> {
        if self.size()? == 0 {
            return Ok(FileMap { map: None });
        }
        // SAFETY: the log never shrinks a file that a live map covers, except `seal` and
        // `repair`, which run before any reader maps the segment (recovery) or with the log
        // closed (the WAL tool holds the lock). Other processes must not truncate WAL files.
        let map = unsafe { Mmap::map(&self.file)? };
        Ok(FileMap { map: Some(map) })
    }
}

impl OsFile {
    fn zero_fill(&self, len: u64) -> io::Result<()> {
        let zeros = vec![0u8; ZERO_FILL_CHUNK_BYTES];
        let mut offset = 0u64;
        while offset < len {
            let n = (len - offset).min(ZERO_FILL_CHUNK_BYTES as u64) as usize;
            self.file.write_all_at(&zeros[..n], offset)?;
            offset += n as u64;
        }
        Ok(())
    }
}

impl Storage for OsStorage {
    fn create_new(&self, path: &Path) -> io::Result<Arc<dyn StorageFile>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)?;
        Ok(Arc::new(OsFile { file }))
    }

    fn open(&self, path: &Path, writable: bool) -> io::Result<Arc<dyn StorageFile>> {
        let file = OpenOptions::new().read(true).write(writable).open(path)?;
        Ok(Arc::new(OsFile { file }))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        fs::create_dir_all(dir)
    }

    fn list_files(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                if let Some(name) = entry.file_name().to_str() {
                    names.push(name.to_owned());
                }
            }
        }
        names.sort();
        Ok(names)
    }
}
