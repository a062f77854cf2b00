//! One segment file: created preallocated with a durable header, then mapped for reading.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use super::config::WalConfig;
use super::error::{CorruptionAt, CorruptionReason, Result, WalError};
use super::format::{SegmentHeader, SEGMENT_HEADER_BYTES};
use super::lsn::{Lsn, SegmentName};
use super::storage::{FileMap, Storage, StorageFile};

/// A preallocated, synced file under a temporary name, not yet a segment.
pub(crate) struct PreparedSegment {
    temp: PathBuf,
    file: Arc<dyn StorageFile>,
}

impl PreparedSegment {
    /// Removes a prepared file that will not be used.
    pub(crate) fn discard(self, storage: &dyn Storage) {
        let _ = storage.remove_file(&self.temp);
    }
}

pub struct Segment {
    name: String,
    path: PathBuf,
    header: SegmentHeader,
    file: Arc<dyn StorageFile>,
    map: FileMap,
}

impl std::fmt::Debug for Segment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Segment")
            .field("name", &self.name)
            .field("header", &self.header)
            .finish()
    }
}

pub(crate) fn is_storage_full(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
}

impl Segment {
    /// Makes a preallocated, synced file under a temporary name, ready to become a segment.
    /// This is the slow part (a sync of the allocation, or of 64 MiB of zeros with
    /// `Preallocation::ZeroFill`), so the committer has it done in the
    /// background before the active segment fills up.
    pub(crate) fn prepare(
        storage: &dyn Storage,
        dir: &Path,
        config: &WalConfig,
    ) -> Result<PreparedSegment> {
        let temp = dir.join(SegmentName::temp_file_name(rand::random()));
        let made = storage.create_new(&temp).and_then(|file| {
            file.allocate(config.segment_bytes, config.preallocation)?;
            file.sync_data()?;
            Ok(file)
        });
        match made {
            Ok(file) => Ok(PreparedSegment { temp, file }),
            Err(e) => {
                // Best effort: the next open removes leftovers anyway.
                let _ = storage.remove_file(&temp);
                if is_storage_full(&e) {
                    return Err(WalError::StorageFull {
                        path: temp,
                        source: e,
                    });
                }
                Err(WalError::io(format!("preparing {}", temp.display()), e))
            }
        }
    }

    /// Turns a prepared file into the segment starting at `first_lsn`.
    ///
    /// The protocol makes a half-created segment impossible to mistake for a real one: the
    /// header is written and synced under the temporary name, then the file is renamed and
    /// the directory synced. A crash leaves either no segment or a complete empty one; a
    /// leftover temporary file is removed on the next open.
    pub(crate) fn install(
        storage: &dyn Storage,
        dir: &Path,
        prepared: PreparedSegment,
        first_lsn: Lsn,
        config: &WalConfig,
    ) -> Result<Segment> {
        let name = SegmentName::file_name(first_lsn);
        let path = dir.join(&name);
        let header = SegmentHeader {
            first_lsn,
            salt: rand::random(),
            capacity_bytes: config.segment_bytes,
            torn_window_bytes: config.torn_window_bytes(),
            created_unix_ns: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64),
        };
        let PreparedSegment { temp, file } = prepared;
        let installed = file
            .write_all_at(&header.encode(), 0)
            .and_then(|()| file.sync_data())
            .and_then(|()| storage.rename(&temp, &path))
            .and_then(|()| storage.sync_dir(dir));
        if let Err(e) = installed {
            let _ = storage.remove_file(&temp);
            return Err(WalError::io(
                format!("creating segment {}", path.display()),
                e,
            ));
        }
        let map = file
            .map()
            .map_err(|e| WalError::io(format!("mapping {}", path.display()), e))?;
        Ok(Segment {
            name,
            path,
            header,
            file,
            map,
        })
    }

    /// Opens an existing segment. A bad header is reported as corruption at offset 0.
    pub(crate) fn open(
        storage: &dyn Storage,
        dir: &Path,
        name: &str,
        writable: bool,
    ) -> Result<Segment> {
        let name_lsn = SegmentName::parse(name).expect("callers pass segment file names");
        let path = dir.join(name);
        let file = storage
            .open(&path, writable)
            .map_err(|e| WalError::io(format!("opening {}", path.display()), e))?;
        let map = file
            .map()
            .map_err(|e| WalError::io(format!("mapping {}", path.display()), e))?;
        let corrupt = |reason| {
            WalError::Corruption(CorruptionAt {
                segment: name.to_owned(),
                offset: 0,
                lsn: name_lsn,
                reason,
            })
        };
        let header = SegmentHeader::decode(map.as_slice())
            .map_err(|e| corrupt(CorruptionReason::Header(e)))?;
        if header.first_lsn != name_lsn {
            return Err(corrupt(CorruptionReason::Header(
                super::format::HeaderError::NameMismatch {
                    in_header: header.first_lsn,
                    in_name: name_lsn,
                },
            )));
        }
        Ok(Segment {
            name: name.to_owned(),
            path,
            header,
            file,
            map,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn header(&self) -> &SegmentHeader {
        &self.header
    }

    pub fn first_lsn(&self) -> Lsn {
        self.header.first_lsn
    }

    /// The whole file as mapped, header included.
    pub fn bytes(&self) -> &[u8] {
        self.map.as_slice()
    }

    /// The bytes from `offset` to the end of the file; empty past the end (a file cut short
    /// by damage may end before its first record).
    pub fn bytes_from(&self, offset: usize) -> &[u8] {
        self.bytes().get(offset..).unwrap_or(&[])
    }

    pub(crate) fn file(&self) -> &Arc<dyn StorageFile> {
        &self.file
    }

    pub(crate) fn capacity(&self) -> u64 {
        self.header.capacity_bytes
    }
}

/// Where records start in every segment: the page after the header, so no commit ever
/// rewrites the page that holds the header.
pub const FIRST_RECORD_OFFSET: u64 = super::format::COMMIT_ALIGN_BYTES;
const _: () = assert!(SEGMENT_HEADER_BYTES as u64 <= FIRST_RECORD_OFFSET);
