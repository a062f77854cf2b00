//! An exclusive lock on a WAL directory, so two servers (or a server and `engram-wal
//! repair`) never write one log.

use std::fs::{File, OpenOptions};
use std::os::unix::io::AsRawFd;
use std::path::Path;

use super::error::{Result, WalError};

pub const LOCK_FILE_NAME: &str = "LOCK";

#[derive(Debug)]
pub struct DirLock {
    // The lock lives as long as this descriptor is open.
    _file: File,
}

impl DirLock {
    pub fn acquire(dir: &Path) -> Result<DirLock> {
        std::fs::create_dir_all(dir)
            .map_err(|e| WalError::io(format!("creating {}", dir.display()), e))?;
        let path = dir.join(LOCK_FILE_NAME);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| WalError::io(format!("opening {}", path.display()), e))?;
        // SAFETY: the descriptor is open and owned by `file`.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                return Err(WalError::Locked {
                    dir: dir.to_owned(),
                });
            }
            return Err(WalError::io(format!("locking {}", path.display()), e));
        }
        Ok(DirLock { _file: file })
    }
}
