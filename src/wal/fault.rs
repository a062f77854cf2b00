//! A storage backend for tests that simulates power loss and injects I/O errors.
//!
//! It runs on real files, and remembers what a crash would undo: the old contents of every
//! 4 KiB page written since that file's last sync, and every creation and rename in a
//! directory since that directory's last sync. `crash` undoes them (all, or a random torn
//! mix), then fails every later operation with EIO, as if the machine had lost power.
//! Compiled only with the `fault-injection` feature.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::storage::{FileMap, OsStorage, Preallocation, Storage, StorageFile};

pub const PAGE_BYTES: u64 = 4096;
const SECTOR_BYTES: u64 = 512;

/// What a crash does to the bytes that were written but not synced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashMode {
    /// Every unsynced page reverts to its old contents; unsynced directory changes vanish.
    DropUnsynced,
    /// Each unsynced page is kept, reverted, or torn (512-byte sectors new, old or garbage);
    /// a random prefix of the unsynced directory changes survives.
    TornPages,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FaultCounts {
    pub ops: u64,
    pub syncs: u64,
    pub crashed: bool,
}

struct FileState {
    file: Arc<dyn StorageFile>,
    /// Old contents of each page written since the last sync, by page number.
    dirty_pages: BTreeMap<u64, Vec<u8>>,
    /// The file's length at the last sync, if it changed since.
    synced_len: Option<u64>,
}

enum DirOp {
    Created(PathBuf),
    Renamed { from: PathBuf, to: PathBuf },
}

struct State {
    rng: StdRng,
    ops: u64,
    syncs: u64,
    crash_at_op: Option<(u64, CrashMode)>,
    crashed: bool,
    fail_syncs: bool,
    /// Outcomes of the next preallocations, in order: true fails with ENOSPC.
    allocation_outcomes: std::collections::VecDeque<bool>,
    files: Vec<FileState>,
    dir_ops: Vec<DirOp>,
}

/// See the module documentation. Clones share one simulated machine.
#[derive(Clone)]
pub struct FaultyStorage {
    state: Arc<Mutex<State>>,
}

impl std::fmt::Debug for FaultyStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FaultyStorage")
    }
}

fn eio() -> io::Error {
    io::Error::from_raw_os_error(libc::EIO)
}

impl FaultyStorage {
    pub fn new(seed: u64) -> FaultyStorage {
        FaultyStorage {
            state: Arc::new(Mutex::new(State {
                rng: StdRng::seed_from_u64(seed),
                ops: 0,
                syncs: 0,
                crash_at_op: None,
                crashed: false,
                fail_syncs: false,
                allocation_outcomes: Default::default(),
                files: Vec::new(),
                dir_ops: Vec::new(),
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Loses power when the `op`-th storage operation from now starts (it fails).
    pub fn crash_at_op(&self, op: u64, mode: CrashMode) {
        let mut s = self.lock();
        let at = s.ops + op.max(1);
        s.crash_at_op = Some((at, mode));
    }

    /// Loses power now.
    pub fn crash(&self, mode: CrashMode) {
        self.lock().crash(mode);
    }

    /// Every sync from now on fails with EIO, and its pages stay undurable.
    pub fn fail_syncs(&self) {
        self.lock().fail_syncs = true;
    }

    /// Decides the next preallocations in the order they happen: `true` fails with ENOSPC,
    /// `false` succeeds; after the list, all succeed. Order, not timing, decides, so a
    /// background preparation gets its outcome deterministically.
    pub fn enospc_on_allocations(&self, outcomes: &[bool]) {
        self.lock().allocation_outcomes = outcomes.iter().copied().collect();
    }

    pub fn counts(&self) -> FaultCounts {
        let s = self.lock();
        FaultCounts {
            ops: s.ops,
            syncs: s.syncs,
            crashed: s.crashed,
        }
    }

    fn track(&self, file: Arc<dyn StorageFile>) -> Arc<dyn StorageFile> {
        let mut s = self.lock();
        let index = s.files.len();
        s.files.push(FileState {
            file,
            dirty_pages: BTreeMap::new(),
            synced_len: None,
        });
        Arc::new(FaultyFile {
            storage: self.clone(),
            index,
        })
    }
}

impl State {
    /// Counts an operation; fails it if the machine is down or goes down now.
    fn begin(&mut self) -> io::Result<()> {
        self.ops += 1;
        if let Some((at, mode)) = self.crash_at_op {
            if self.ops >= at {
                self.crash_at_op = None;
                self.crash(mode);
            }
        }
        if self.crashed {
            return Err(eio());
        }
        Ok(())
    }

    fn crash(&mut self, mode: CrashMode) {
        if self.crashed {
            return;
        }
        self.crashed = true;
        for i in 0..self.files.len() {
            let pages = std::mem::take(&mut self.files[i].dirty_pages);
            let file = self.files[i].file.clone();
            if let Some(len) = self.files[i].synced_len.take() {
                // Restore the length first; old page contents are written back below.
                file.set_len(len).expect("restore length");
            }
            for (page, old) in pages {
                let at = page * PAGE_BYTES;
                let Ok(len) = file.size() else { continue };
                if at >= len {
                    continue;
                }
                let n = (len - at).min(old.len() as u64) as usize;
                let mut new = vec![0u8; n];
                file.read_exact_at(&mut new, at).expect("read page");
                let keep = self.page_after_crash(mode, &old[..n], &new);
                file.write_all_at(&keep, at).expect("write page back");
            }
        }
        let ops = std::mem::take(&mut self.dir_ops);
        let survive = match mode {
            CrashMode::DropUnsynced => 0,
            CrashMode::TornPages => self.rng.random_range(0..=ops.len()),
        };
        for op in ops.into_iter().skip(survive).rev() {
            match op {
                DirOp::Renamed { from, to } => {
                    let _ = std::fs::rename(&to, &from);
                }
                DirOp::Created(path) => {
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
    }

    fn page_after_crash(&mut self, mode: CrashMode, old: &[u8], new: &[u8]) -> Vec<u8> {
        match mode {
            CrashMode::DropUnsynced => old.to_vec(),
            CrashMode::TornPages => match self.rng.random_range(0..3) {
                0 => new.to_vec(),
                1 => old.to_vec(),
                _ => {
                    let mut torn = Vec::with_capacity(new.len());
                    for (o, n) in old
                        .chunks(SECTOR_BYTES as usize)
                        .zip(new.chunks(SECTOR_BYTES as usize))
                    {
                        match self.rng.random_range(0..3) {
                            0 => torn.extend_from_slice(n),
                            1 => torn.extend_from_slice(o),
                            _ => torn.extend((0..n.len()).map(|_| self.rng.random::<u8>())),
                        }
                    }
                    torn
                }
            },
        }
    }

    /// Remembers the old contents of every page in `[offset, offset + len)` not yet dirty.
    fn remember_pages(&mut self, index: usize, offset: u64, len: u64) -> io::Result<()> {
        let state = &mut self.files[index];
        let file_len = state.file.size()?;
        let first = offset / PAGE_BYTES;
        let last = (offset + len).div_ceil(PAGE_BYTES);
        for page in first..last {
            if state.dirty_pages.contains_key(&page) {
                continue;
            }
            let at = page * PAGE_BYTES;
            let mut old = vec![0u8; PAGE_BYTES as usize];
            let readable = file_len.saturating_sub(at).min(PAGE_BYTES) as usize;
            state.file.read_exact_at(&mut old[..readable], at)?;
            state.dirty_pages.insert(page, old);
        }
        Ok(())
    }
}

struct FaultyFile {
    storage: FaultyStorage,
    index: usize,
}

impl std::fmt::Debug for FaultyFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FaultyFile({})", self.index)
    }
}

impl StorageFile for FaultyFile {
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut s = self.storage.lock();
        s.begin()?;
        s.remember_pages(self.index, offset, buf.len() as u64)?;
        s.files[self.index].file.write_all_at(buf, offset)
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let s = self.storage.lock();
        s.files[self.index].file.read_exact_at(buf, offset)
    }

    fn sync_data(&self) -> io::Result<()> {
        let mut s = self.storage.lock();
        s.begin()?;
        if s.fail_syncs {
            return Err(eio());
        }
        s.syncs += 1;
        // Durability is modelled here, so the real fdatasync is not needed (and tests run fast).
        let state = &mut s.files[self.index];
        state.dirty_pages.clear();
        state.synced_len = None;
        Ok(())
    }

    fn allocate(&self, len: u64, how: Preallocation) -> io::Result<()> {
        let mut s = self.storage.lock();
        s.begin()?;
        if s.allocation_outcomes.pop_front() == Some(true) {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        let old_len = s.files[self.index].file.size()?;
        s.files[self.index].synced_len.get_or_insert(old_len);
        s.files[self.index].file.allocate(len, how)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut s = self.storage.lock();
        s.begin()?;
        let old_len = s.files[self.index].file.size()?;
        if len < old_len {
            s.remember_pages(self.index, len, old_len - len)?;
        }
        s.files[self.index].synced_len.get_or_insert(old_len);
        s.files[self.index].file.set_len(len)
    }

    fn size(&self) -> io::Result<u64> {
        let s = self.storage.lock();
        s.files[self.index].file.size()
    }

    fn map(&self) -> io::Result<FileMap> {
        let s = self.storage.lock();
        s.files[self.index].file.map()
    }
}

impl Storage for FaultyStorage {
    fn create_new(&self, path: &Path) -> io::Result<Arc<dyn StorageFile>> {
        let file = {
            let mut s = self.lock();
            s.begin()?;
            let file = OsStorage.create_new(path)?;
            s.dir_ops.push(DirOp::Created(path.to_owned()));
            file
        };
        Ok(self.track(file))
    }

    fn open(&self, path: &Path, writable: bool) -> io::Result<Arc<dyn StorageFile>> {
        let file = {
            let mut s = self.lock();
            s.begin()?;
            OsStorage.open(path, writable)?
        };
        Ok(self.track(file))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut s = self.lock();
        s.begin()?;
        OsStorage.rename(from, to)?;
        s.dir_ops.push(DirOp::Renamed {
            from: from.to_owned(),
            to: to.to_owned(),
        });
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut s = self.lock();
        s.begin()?;
        // A removal that a crash undoes only leaves a file that was meant to go: the log
        // tolerates that (an old segment, a temp file), so it is applied at once.
        OsStorage.remove_file(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut s = self.lock();
        s.begin()?;
        if s.fail_syncs {
            return Err(eio());
        }
        s.syncs += 1;
        s.dir_ops.retain(|op| {
            let path = match op {
                DirOp::Created(p) => p,
                DirOp::Renamed { to, .. } => to,
            };
            path.parent() != Some(dir)
        });
        Ok(())
    }

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut s = self.lock();
        s.begin()?;
        OsStorage.create_dir_all(dir)
    }

    fn list_files(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut s = self.lock();
        s.begin()?;
        OsStorage.list_files(dir)
    }
}

/// The real file system, failing where the running test says (`crate::chaos`): preallocation
/// with ENOSPC while the disk is "full", syncs with EIO while they "fail". Lets a chaos test
/// inject both into the real server binary.
#[derive(Debug, Default, Clone, Copy)]
pub struct TriggeredStorage;

#[derive(Debug)]
struct TriggeredFile(Arc<dyn StorageFile>);

fn failing_sync() -> io::Result<()> {
    if crate::chaos::sync_fails() {
        return Err(eio());
    }
    Ok(())
}

impl StorageFile for TriggeredFile {
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.0.write_all_at(buf, offset)
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.0.read_exact_at(buf, offset)
    }

    fn sync_data(&self) -> io::Result<()> {
        failing_sync()?;
        self.0.sync_data()
    }

    fn allocate(&self, len: u64, how: Preallocation) -> io::Result<()> {
        if crate::chaos::disk_full() {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        self.0.allocate(len, how)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }

    fn size(&self) -> io::Result<u64> {
        self.0.size()
    }

    fn map(&self) -> io::Result<FileMap> {
        self.0.map()
    }
}

impl Storage for TriggeredStorage {
    fn create_new(&self, path: &Path) -> io::Result<Arc<dyn StorageFile>> {
        Ok(Arc::new(TriggeredFile(OsStorage.create_new(path)?)))
    }

    fn open(&self, path: &Path, writable: bool) -> io::Result<Arc<dyn StorageFile>> {
        Ok(Arc::new(TriggeredFile(OsStorage.open(path, writable)?)))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        OsStorage.rename(from, to)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        OsStorage.remove_file(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        failing_sync()?;
        OsStorage.sync_dir(dir)
    }

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        OsStorage.create_dir_all(dir)
    }

    fn list_files(&self, dir: &Path) -> io::Result<Vec<String>> {
        OsStorage.list_files(dir)
    }
}
