//! Checkpoints: each space's index written to disk with the LSN it covers, so a restart
//! loads it and replays only the log after it, and the log can drop what every
//! checkpoint covers.
//!
//! ```text
//! DATA_DIR/index/space-NAME/ckpt-00000000000000004096/   covers every record up to LSN 4096
//!     graph.usearch    the HNSW graph and its vectors (the library's own format)
//!     entries.rkyv     what each key stands for: id, LSN, time, confidence, text
//!     manifest.json    space, dimension, metric, covered LSN, count, sizes and CRC-32s
//! ```
//!
//! A checkpoint is written into `tmp-LSN`, every file synced, the folder synced, renamed
//! to `ckpt-LSN` and the space folder synced: a crash leaves either the whole checkpoint
//! or none (a `tmp-` folder, removed on the next start). The two newest checkpoints of a
//! space are kept: if the newest is damaged, start-up falls back to the one before, and
//! the log is only truncated below what the older one covers.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use rkyv::rancor;

use super::space_index::IndexedEntry;
use super::{Hnsw, IndexError, IndexParams, SpaceIndex, VectorIndex};
use crate::space::Metric;
use crate::wal::Lsn;

const FORMAT: u32 = 1;
const GRAPH_FILE: &str = "graph.usearch";
const ENTRIES_FILE: &str = "entries.rkyv";
const MANIFEST_FILE: &str = "manifest.json";
/// Checkpoints kept per space.
const KEPT: usize = 2;

/// The folder of every space's checkpoints in a data directory.
pub fn checkpoints_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("index")
}

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error("checkpoint {path} is damaged: {reason}")]
    Damaged { path: PathBuf, reason: String },
    #[error(
        "no usable checkpoint of space {space:?} in {dir}: {reasons}. The log may no longer \
         hold what they covered: restore the folder from a backup, or move it away to rebuild \
         the space from the log (engram-wal stats shows the oldest LSN it still has)"
    )]
    NoneUsable {
        space: String,
        dir: PathBuf,
        reasons: String,
    },
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> CheckpointError {
    let context = context.into();
    move |source| CheckpointError::Io { context, source }
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Manifest {
    format: u32,
    space: String,
    dim: u32,
    metric: Metric,
    covered_lsn: u64,
    count: u64,
    params: IndexParams,
    /// The graph holds its vectors at unit length (`StoredForm::unit_length`). Absent
    /// from manifests written before cosine graphs did so, hence false by default.
    #[serde(default)]
    unit_length: bool,
    graph_bytes: u64,
    graph_crc32: u32,
    entries_bytes: u64,
    entries_crc32: u32,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct StoredEntry {
    id: String,
    lsn: u64,
    when_unix_ns: i64,
    confidence: f32,
    what: String,
}

/// A checkpoint read back: a space's graph and entries, covering every record of the
/// space up to `covered`.
pub struct LoadedCheckpoint {
    pub space: String,
    pub dim: u32,
    pub metric: Metric,
    pub covered: Lsn,
    pub graph: Hnsw,
    pub entries: Vec<IndexedEntry>,
    pub path: PathBuf,
}

fn space_dir(root: &Path, space: &str) -> PathBuf {
    // A prefix, so that space names such as ".." stay plain folder names.
    root.join(format!("space-{space}"))
}

fn checkpoint_name(covered: Lsn) -> String {
    format!("ckpt-{:020}", covered.0)
}

fn sync_dir(dir: &Path) -> Result<(), CheckpointError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(format!("syncing {}", dir.display())))
}

fn sync_file(path: &Path) -> Result<(), CheckpointError> {
    File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(io(format!("syncing {}", path.display())))
}

/// CRC-32 and length of a file, read in chunks.
fn crc_of(path: &Path) -> Result<(u64, u32), CheckpointError> {
    let mut file = File::open(path).map_err(io(format!("opening {}", path.display())))?;
    let mut hasher = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut len = 0u64;
    loop {
        let n = file
            .read(&mut buf)
            .map_err(io(format!("reading {}", path.display())))?;
        if n == 0 {
            return Ok((len, hasher.finalize()));
        }
        hasher.update(&buf[..n]);
        len += n as u64;
    }
}

/// Writes `index`, which holds exactly the space's records up to `covered`, as a new
/// checkpoint; the caller keeps inserts out meanwhile. Returns its folder (the existing
/// one if this LSN is already checkpointed).
pub fn write_checkpoint(
    root: &Path,
    index: &SpaceIndex,
    covered: Lsn,
    params: &IndexParams,
) -> Result<PathBuf, CheckpointError> {
    let dir = space_dir(root, index.name());
    let done = dir.join(checkpoint_name(covered));
    if dir.exists() {
        // A restart replays the log from the oldest checkpoint of all spaces, so a space
        // restored from a newer one (a crash came between two spaces' checkpoints)
        // already holds records past `covered`: its checkpoint on disk covers more than
        // this one would, and stands until the worker passes it.
        if let Some((newest, path)) = checkpoints_in(&dir)?.into_iter().next() {
            if newest >= covered {
                return Ok(path);
            }
        }
    }
    if !dir.exists() {
        fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
        sync_dir(root)?;
    }
    let tmp = dir.join(format!("tmp-{:020}", covered.0));
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(io(format!("removing {}", tmp.display())))?;
    }
    fs::create_dir(&tmp).map_err(io(format!("creating {}", tmp.display())))?;

    let graph_path = tmp.join(GRAPH_FILE);
    index.graph().save(&graph_path)?;
    sync_file(&graph_path)?;
    let (graph_bytes, graph_crc32) = crc_of(&graph_path)?;

    let stored: Vec<StoredEntry> = index
        .entries()
        .by_key
        .iter()
        .map(|e| StoredEntry {
            id: e.id.to_string(),
            lsn: e.lsn.0,
            when_unix_ns: e.when_unix_ns,
            confidence: e.confidence,
            what: e.what.to_string(),
        })
        .collect();
    let count = stored.len() as u64;
    assert!(
        stored.iter().all(|e| e.lsn <= covered.0),
        "a checkpoint holds nothing past the LSN it covers"
    );
    let bytes = rkyv::to_bytes::<rancor::Error>(&stored).expect("archiving into memory");
    let entries_path = tmp.join(ENTRIES_FILE);
    write_synced(&entries_path, &bytes)?;

    let manifest = Manifest {
        format: FORMAT,
        space: index.name().to_owned(),
        dim: index.dim(),
        metric: index.metric(),
        covered_lsn: covered.0,
        count,
        params: *params,
        unit_length: index.graph().form().unit_length,
        graph_bytes,
        graph_crc32,
        entries_bytes: bytes.len() as u64,
        entries_crc32: crc32fast::hash(&bytes),
    };
    let json = serde_json::to_vec_pretty(&manifest).expect("a manifest serializes");
    write_synced(&tmp.join(MANIFEST_FILE), &json)?;
    sync_dir(&tmp)?;
    crate::chaos::reached(crate::chaos::CrashPoint::CheckpointWritten);
    fs::rename(&tmp, &done).map_err(io(format!("renaming {}", tmp.display())))?;
    crate::chaos::reached(crate::chaos::CrashPoint::CheckpointRenamed);
    sync_dir(&dir)?;
    prune(&dir)?;
    Ok(done)
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), CheckpointError> {
    if crate::chaos::disk_full() {
        let full = std::io::Error::from_raw_os_error(libc::ENOSPC);
        return Err(io(format!("writing {}", path.display()))(full));
    }
    let mut file = File::create(path).map_err(io(format!("creating {}", path.display())))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(io(format!("writing {}", path.display())))
}

/// Removes every checkpoint that covers records past `log_end`, the log's last LSN. Only
/// a repaired log ends before a checkpoint (`engram-wal repair` cut it at a corruption):
/// such a checkpoint holds records the log no longer has, and the LSNs after the cut
/// will be used again. Returns how many were removed.
pub fn discard_beyond(root: &Path, log_end: Lsn) -> Result<usize, CheckpointError> {
    if !root.exists() {
        return Ok(0);
    }
    let mut removed = 0;
    for entry in fs::read_dir(root).map_err(io(format!("listing {}", root.display())))? {
        let dir = entry
            .map_err(io(format!("listing {}", root.display())))?
            .path();
        if !dir.is_dir() {
            continue;
        }
        let mut changed = false;
        for (covered, path) in checkpoints_in(&dir)? {
            if covered > log_end {
                tracing::warn!(checkpoint = %path.display(), %covered, %log_end,
                    "a checkpoint covers records past the end of the log (was the log \
                     repaired?); removed, the index is rebuilt from older ones and the log");
                fs::remove_dir_all(&path).map_err(io(format!("removing {}", path.display())))?;
                changed = true;
                removed += 1;
            }
        }
        if changed {
            sync_dir(&dir)?;
        }
    }
    Ok(removed)
}

/// The covered LSNs of a space folder's checkpoints, newest first.
fn checkpoints_in(dir: &Path) -> Result<Vec<(Lsn, PathBuf)>, CheckpointError> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir).map_err(io(format!("listing {}", dir.display())))? {
        let entry = entry.map_err(io(format!("listing {}", dir.display())))?;
        let name = entry.file_name();
        let Some(lsn) = name
            .to_str()
            .and_then(|n| n.strip_prefix("ckpt-"))
            .and_then(|n| n.parse().ok())
        else {
            continue;
        };
        found.push((Lsn(lsn), entry.path()));
    }
    found.sort_by_key(|c| std::cmp::Reverse(c.0));
    Ok(found)
}

/// Keeps the newest `KEPT` checkpoints and no leftover `tmp-` folder.
fn prune(dir: &Path) -> Result<(), CheckpointError> {
    let mut removed = false;
    for (_, path) in checkpoints_in(dir)?.into_iter().skip(KEPT) {
        fs::remove_dir_all(&path).map_err(io(format!("removing {}", path.display())))?;
        removed = true;
    }
    for entry in fs::read_dir(dir).map_err(io(format!("listing {}", dir.display())))? {
        let entry = entry.map_err(io(format!("listing {}", dir.display())))?;
        if entry.file_name().to_string_lossy().starts_with("tmp-") {
            let path = entry.path();
            fs::remove_dir_all(&path).map_err(io(format!("removing {}", path.display())))?;
            removed = true;
        }
    }
    if removed {
        sync_dir(dir)?;
    }
    Ok(())
}

/// What the log must still hold for `space`: everything after the older kept checkpoint
/// (the fallback if the newest is damaged). `None` if the space has fewer than `KEPT`
/// checkpoints: the log must keep all of it.
pub fn fallback_lsn(root: &Path, space: &str) -> Result<Option<Lsn>, CheckpointError> {
    let dir = space_dir(root, space);
    if !dir.exists() {
        return Ok(None);
    }
    Ok(checkpoints_in(&dir)?.get(KEPT - 1).map(|(lsn, _)| *lsn))
}

/// The newest usable checkpoint of every space in `root`. A damaged newest one is
/// reported and the one before it used.
pub fn load_checkpoints(root: &Path) -> Result<Vec<LoadedCheckpoint>, CheckpointError> {
    if !root.exists() {
        return Ok(Vec::new());
    }
    let mut loaded = Vec::new();
    for entry in fs::read_dir(root).map_err(io(format!("listing {}", root.display())))? {
        let entry = entry.map_err(io(format!("listing {}", root.display())))?;
        let dir = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(space) = name.strip_prefix("space-") else {
            continue;
        };
        prune(&dir)?;
        let candidates = checkpoints_in(&dir)?;
        if candidates.is_empty() {
            continue;
        }
        let mut reasons = Vec::new();
        let mut usable = None;
        for (covered, path) in candidates {
            match load_one(&path, space, covered) {
                Ok(checkpoint) => {
                    usable = Some(checkpoint);
                    break;
                }
                Err(e) => {
                    tracing::error!(error = %e, "a checkpoint is damaged; trying the one before");
                    reasons.push(e.to_string());
                }
            }
        }
        match usable {
            Some(checkpoint) => loaded.push(checkpoint),
            None => {
                return Err(CheckpointError::NoneUsable {
                    space: space.to_owned(),
                    dir,
                    reasons: reasons.join("; "),
                })
            }
        }
    }
    loaded.sort_by(|a, b| a.space.cmp(&b.space));
    Ok(loaded)
}

fn load_one(path: &Path, space: &str, covered: Lsn) -> Result<LoadedCheckpoint, CheckpointError> {
    let damaged = |reason: String| CheckpointError::Damaged {
        path: path.to_owned(),
        reason,
    };
    let manifest_bytes = fs::read(path.join(MANIFEST_FILE))
        .map_err(|e| damaged(format!("reading {MANIFEST_FILE}: {e}")))?;
    let manifest: Manifest = serde_json::from_slice(&manifest_bytes)
        .map_err(|e| damaged(format!("{MANIFEST_FILE}: {e}")))?;
    if manifest.format != FORMAT || manifest.space != space || manifest.covered_lsn != covered.0 {
        return Err(damaged(format!(
            "the manifest says format {}, space {:?}, LSN {}",
            manifest.format, manifest.space, manifest.covered_lsn
        )));
    }
    let graph_path = path.join(GRAPH_FILE);
    let (graph_bytes, graph_crc32) =
        crc_of(&graph_path).map_err(|e| damaged(format!("{GRAPH_FILE}: {e}")))?;
    if (graph_bytes, graph_crc32) != (manifest.graph_bytes, manifest.graph_crc32) {
        return Err(damaged(format!(
            "{GRAPH_FILE} has {graph_bytes} bytes, CRC-32 {graph_crc32:08x}; the manifest says {} bytes, {:08x}",
            manifest.graph_bytes, manifest.graph_crc32
        )));
    }
    let mut bytes = rkyv::util::AlignedVec::<16>::new();
    bytes.extend_from_slice(
        &fs::read(path.join(ENTRIES_FILE))
            .map_err(|e| damaged(format!("reading {ENTRIES_FILE}: {e}")))?,
    );
    if (bytes.len() as u64, crc32fast::hash(&bytes))
        != (manifest.entries_bytes, manifest.entries_crc32)
    {
        return Err(damaged(format!(
            "{ENTRIES_FILE} does not match the manifest's length and CRC-32"
        )));
    }
    let archived = rkyv::access::<rkyv::Archived<Vec<StoredEntry>>, rancor::Error>(&bytes)
        .map_err(|e| damaged(format!("{ENTRIES_FILE}: {e}")))?;
    let entries: Vec<IndexedEntry> = archived
        .iter()
        .map(|e| IndexedEntry {
            id: e.id.as_str().into(),
            lsn: Lsn(e.lsn.to_native()),
            when_unix_ns: e.when_unix_ns.to_native(),
            confidence: e.confidence.to_native(),
            what: e.what.as_str().into(),
        })
        .collect();
    if entries.len() as u64 != manifest.count {
        return Err(damaged(format!(
            "{} entries; the manifest says {}",
            entries.len(),
            manifest.count
        )));
    }
    // The graph keeps the parameters it was built with: a changed --hnsw-m applies to
    // spaces created after it.
    let graph = Hnsw::load(
        &graph_path,
        manifest.dim,
        manifest.metric,
        &manifest.params,
        manifest.unit_length,
    )?;
    if graph.len() as u64 != manifest.count {
        return Err(damaged(format!(
            "the graph holds {} vectors; the manifest says {}",
            graph.len(),
            manifest.count
        )));
    }
    Ok(LoadedCheckpoint {
        space: space.to_owned(),
        dim: manifest.dim,
        metric: manifest.metric,
        covered,
        graph,
        entries,
        path: path.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::SpaceIndexes;

    fn space_with(indexes: &SpaceIndexes, n: u64) -> std::sync::Arc<SpaceIndex> {
        space_of(indexes, "s", Metric::L2, n)
    }

    /// The LSNs the checkpoints in a space's folder cover, newest first.
    fn covered_on_disk(dir: &Path) -> Vec<Lsn> {
        checkpoints_in(dir)
            .unwrap()
            .into_iter()
            .map(|c| c.0)
            .collect()
    }

    /// Space `name` holding records 1 to `n`, at LSNs 1 to `n`.
    fn space_of(
        indexes: &SpaceIndexes,
        name: &str,
        metric: Metric,
        n: u64,
    ) -> std::sync::Arc<SpaceIndex> {
        let space = indexes.get_or_create(name, 4, metric).unwrap();
        for i in space.len() as u64..n {
            let key = match space.admit(&format!("id-{i}"), Lsn(i + 1), 7, 0.5, "text") {
                super::super::Admission::New(key) => key,
                other => panic!("{other:?}"),
            };
            space.insert(key, &[i as f32, 1.0, 2.0, 3.0]).unwrap();
        }
        space
    }

    #[test]
    fn a_cosine_graph_keeps_its_unit_vectors_across_a_checkpoint_and_older_ones_load_as_given() {
        let root = tempfile::tempdir().unwrap();
        let params = IndexParams::default();
        let indexes = SpaceIndexes::new(params, 1);
        let space = space_of(&indexes, "c", Metric::Cosine, 10);
        assert!(space.graph().form().unit_length);
        let written = write_checkpoint(root.path(), &space, Lsn(10), &params).unwrap();
        let loaded = load_checkpoints(root.path()).unwrap();
        assert!(loaded[0].graph.form().unit_length);

        // A manifest from before the field: the graph's vectors are taken as given.
        let manifest_path = written.join(MANIFEST_FILE);
        let mut manifest: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&manifest_path).unwrap()).unwrap();
        manifest
            .as_object_mut()
            .unwrap()
            .remove("unit_length")
            .unwrap();
        std::fs::write(&manifest_path, manifest.to_string()).unwrap();
        let loaded = load_checkpoints(root.path()).unwrap();
        assert!(!loaded[0].graph.form().unit_length);
    }

    #[test]
    fn a_space_restored_from_a_newer_checkpoint_keeps_it_while_the_replay_is_behind() {
        let root = tempfile::tempdir().unwrap();
        let params = IndexParams::default();
        let indexes = SpaceIndexes::new(params, 1);
        let space = space_with(&indexes, 30);
        let newest = write_checkpoint(root.path(), &space, Lsn(30), &params).unwrap();
        // The worker replays from an older space's checkpoint; at LSN 20 a checkpoint is
        // due, while this space holds records up to 30.
        let kept = write_checkpoint(root.path(), &space, Lsn(20), &params).unwrap();
        assert_eq!(kept, newest);
        let dir = space_dir(root.path(), "s");
        assert_eq!(covered_on_disk(&dir), vec![Lsn(30)]);
    }

    #[test]
    fn checkpoints_round_trip_keep_two_and_fall_back_past_damage() {
        let root = tempfile::tempdir().unwrap();
        let params = IndexParams::default();
        let indexes = SpaceIndexes::new(params, 1);
        for n in [10, 20, 30] {
            let space = space_with(&indexes, n);
            write_checkpoint(root.path(), &space, Lsn(n), &params).unwrap();
        }
        let dir = space_dir(root.path(), "s");
        assert_eq!(covered_on_disk(&dir), vec![Lsn(30), Lsn(20)]);
        assert_eq!(fallback_lsn(root.path(), "s").unwrap(), Some(Lsn(20)));
        std::fs::create_dir(dir.join("tmp-00000000000000000040")).unwrap();

        let loaded = load_checkpoints(root.path()).unwrap();
        assert_eq!(loaded.len(), 1);
        let c = &loaded[0];
        assert_eq!(
            (c.covered, c.dim, c.metric, c.graph.len()),
            (Lsn(30), 4, Metric::L2, 30)
        );
        assert_eq!(c.entries[29].id.as_ref(), "id-29");
        assert_eq!((c.entries[29].lsn, &*c.entries[29].what), (Lsn(30), "text"));
        assert!(
            !dir.join("tmp-00000000000000000040").exists(),
            "a crash's leftover goes"
        );

        // One flipped byte in the newest graph: the one before is used.
        let graph = dir.join(checkpoint_name(Lsn(30))).join(GRAPH_FILE);
        let mut bytes = std::fs::read(&graph).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x40;
        std::fs::write(&graph, &bytes).unwrap();
        let loaded = load_checkpoints(root.path()).unwrap();
        assert_eq!((loaded[0].covered, loaded[0].entries.len()), (Lsn(20), 20));

        // Both damaged: start-up refuses, naming the space and what to do.
        std::fs::write(dir.join(checkpoint_name(Lsn(20))).join(ENTRIES_FILE), b"x").unwrap();
        let err = load_checkpoints(root.path())
            .err()
            .expect("refused")
            .to_string();
        assert!(err.contains("no usable checkpoint of space \"s\""), "{err}");
        assert!(err.contains("CRC-32"), "{err}");
    }
}
