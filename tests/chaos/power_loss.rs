//! Power loss under the whole ingest engine (validation, dedupe, the log, the index workers,
//! checkpoints and truncation), with the log on the fault backend: at a random storage
//! operation the machine loses power, dropping every byte not yet synced or tearing the
//! unsynced pages. Each trial lives twice (crash, recover, write more, crash again), then
//! recovers on the real file system and checks like Jepsen's set-full: every acknowledged
//! observation is stored exactly once with its exact embedding, the index holds each once,
//! and its own embedding recalls it first.
//!
//! `CHAOS_POWER_TRIALS` sets the number of trials (200 by default), `CHAOS_SEED` the first
//! seed. A failure names its trial's seed; rerun with `CHAOS_SEED=<it> CHAOS_POWER_TRIALS=1`.
//! Checkpoint files are written on the real file system, outside the fault model: they are
//! synced and renamed into place before any log segment they cover is removed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use engram::index::{IndexParams, Quantization, RecallQuery};
use engram::ingest::{Engine, Handled, IndexConfig, IngestLimits};
use engram::observation::Observation;
use engram::synthetic::{observation, Distribution};
use engram::wal::fault::{CrashMode, FaultyStorage};
use engram::wal::{OsStorage, Storage, WalConfig};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const SPACES: [&str; 2] = ["p0", "p1"];
const DIM: usize = 16;

fn setting(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name} must be a number, got {v:?}"))
    })
}

/// 16 KiB segments and small commits, so a few hundred observations roll segments and
/// a checkpoint every 40 inserts lets the log be truncated.
fn wal_config() -> WalConfig {
    WalConfig {
        segment_bytes: 16 << 10,
        commit_bytes_max: 4 << 10,
        record_payload_bytes_max: 2 << 10,
        ..WalConfig::default()
    }
}

fn index_config() -> IndexConfig {
    IndexConfig {
        workers: 2,
        insert_threads: 2,
        priority: Default::default(),
        // Exact vectors, so a stored embedding compares equal to the one sent.
        params: IndexParams {
            quantization: Quantization::F32,
            ..IndexParams::default()
        },
        checkpoint_records: 40,
        checkpoint_interval: Duration::from_secs(3600),
        defer: Some(engram::ingest::workers::INDEX_DEFER_DEFAULT),
    }
}

fn open(dir: &Path, storage: Arc<dyn Storage>) -> Arc<Engine> {
    let engine = Engine::open_with_storage(
        dir,
        wal_config(),
        storage,
        IngestLimits::default(),
        index_config(),
    )
    .unwrap_or_else(|e| panic!("recovery after power loss failed: {e:#}"));
    Arc::new(engine)
}

/// What the writers of one trial did.
#[derive(Default)]
struct History {
    /// Every observation handed to the engine, by (space, id).
    submitted: BTreeMap<(String, String), Observation>,
    /// Every observation the engine said is durable.
    acked: BTreeSet<(String, String)>,
}

/// Two writers ingest random batches (some resending acknowledged ones) until the
/// storage fails under them.
async fn write_until_crash(
    engine: &Arc<Engine>,
    seed: u64,
    life: u64,
    history: &Arc<Mutex<History>>,
) {
    let writers: Vec<_> = (0..2u64)
        .map(|w| {
            let engine = engine.clone();
            let history = history.clone();
            tokio::spawn(async move {
                let mut rng = StdRng::seed_from_u64(seed ^ (life << 8) ^ w);
                let prefix = format!("l{life}w{w}-");
                let mut n = 0u64;
                for _ in 0..400 {
                    let mut batch = Vec::new();
                    for _ in 0..rng.random_range(1..6) {
                        let resend = {
                            let h = history.lock().unwrap();
                            (rng.random_bool(0.15) && !h.acked.is_empty()).then(|| {
                                let nth = rng.random_range(0..h.acked.len());
                                let key = h.acked.iter().nth(nth).unwrap();
                                h.submitted[key].clone()
                            })
                        };
                        let o = resend.unwrap_or_else(|| {
                            n += 1;
                            let space = SPACES[rng.random_range(0..SPACES.len())];
                            observation(seed, space, &prefix, n, DIM, Distribution::Uniform)
                        });
                        history
                            .lock()
                            .unwrap()
                            .submitted
                            .insert((o.space.clone(), o.id.clone()), o.clone());
                        batch.push(o);
                    }
                    let keys: Vec<_> = batch
                        .iter()
                        .map(|o| (o.space.clone(), o.id.clone()))
                        .collect();
                    let Ok(outcomes) = engine.ingest(batch).await else {
                        return;
                    };
                    let mut h = history.lock().unwrap();
                    for (key, outcome) in keys.into_iter().zip(outcomes) {
                        match outcome {
                            Handled::Stored { .. } | Handled::Duplicate { .. } => {
                                h.acked.insert(key);
                            }
                            Handled::Rejected(r) => panic!("seed {seed}: {key:?} refused: {r:?}"),
                        }
                    }
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
}

/// Waits until the index workers have caught up with the durable log.
fn wait_indexed(engine: &Engine, seed: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let indexes = engine.indexes();
    while (0..indexes.workers())
        .any(|w| indexes.worker_progress(w).indexed_lsn() < engine.wal().durable_lsn())
    {
        assert!(
            Instant::now() < deadline,
            "seed {seed}: the index never caught up"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The set-full check after recovery.
fn check(engine: &Engine, history: &History, seed: u64, when: &str) {
    let stored: BTreeMap<String, u64> = engine
        .spaces()
        .summaries()
        .into_iter()
        .map(|s| (s.name, s.observations))
        .collect();
    wait_indexed(engine, seed);
    for space in SPACES {
        let submitted: Vec<String> = history
            .submitted
            .keys()
            .filter(|(s, _)| s == space)
            .map(|(_, id)| id.clone())
            .collect();
        let present = engine.contains(space, &submitted);
        for (id, &there) in submitted.iter().zip(&present) {
            let key = (space.to_owned(), id.clone());
            assert!(
                there || !history.acked.contains(&key),
                "seed {seed}, {when}: acknowledged {key:?} is lost"
            );
        }
        // Stored beyond what was acknowledged is allowed (synced, then the power went
        // before the acknowledgement); stored twice or never sent is not.
        let found = present.iter().filter(|&&p| p).count() as u64;
        assert_eq!(
            stored.get(space).copied().unwrap_or(0),
            found,
            "seed {seed}, {when}: {space} stores a different number than the distinct ids sent and found"
        );
        let indexed = engine.indexes().get(space).map_or(0, |i| i.len() as u64);
        assert_eq!(
            indexed, found,
            "seed {seed}, {when}: {space}'s index holds each once"
        );
    }
    for key in &history.acked {
        let sent = &history.submitted[key];
        let embedding = engine.embedding_of(&key.0, &key.1).unwrap();
        assert_eq!(
            embedding, sent.embedding,
            "seed {seed}, {when}: {key:?} changed"
        );
        let recalled = engine
            .recall(&RecallQuery::new(&key.0, sent.embedding.clone(), 1))
            .unwrap();
        let top = &recalled.hits[0];
        assert_eq!(
            (&top.id, &top.what, top.when_unix_ns, top.confidence),
            (&sent.id, &sent.what, sent.when_unix_ns, sent.confidence),
            "seed {seed}, {when}: {key:?} does not recall itself first"
        );
    }
}

/// What the trials exercised, so that a run that never rolled a segment or wrote a
/// checkpoint cannot pass unnoticed.
#[derive(Default)]
struct Exercised {
    segments_created: u64,
    checkpoints: u64,
}

fn close(engine: Arc<Engine>, exercised: &mut Exercised) {
    let engine = Arc::into_inner(engine).expect("the writers are done");
    exercised.segments_created += engine.wal().stats().segments_created;
    exercised.checkpoints += engine.checkpoint_counts().0;
    // After a power loss the log cannot close cleanly; that is the point.
    let _ = engine.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_observations_survive_power_loss_at_random_instants() {
    let trials = setting("CHAOS_POWER_TRIALS").unwrap_or(200);
    let first = setting("CHAOS_SEED").unwrap_or_else(rand::random);
    eprintln!("power-loss trials: {trials}, CHAOS_SEED={first}");
    let mut acked_total = 0;
    let mut exercised = Exercised::default();
    for trial in 0..trials {
        let seed = first.wrapping_add(trial);
        let mut rng = StdRng::seed_from_u64(seed);
        let dir = tempfile::tempdir().unwrap();
        let history = Arc::new(Mutex::new(History::default()));
        for life in 0..2u64 {
            let machine = FaultyStorage::new(seed ^ life);
            let engine = open(dir.path(), Arc::new(machine.clone()));
            if life > 0 {
                check(
                    &engine,
                    &history.lock().unwrap(),
                    seed,
                    "after the first crash",
                );
            }
            let mode = if rng.random_bool(0.5) {
                CrashMode::DropUnsynced
            } else {
                CrashMode::TornPages
            };
            machine.crash_at_op(rng.random_range(1..600), mode);
            write_until_crash(&engine, seed, life, &history).await;
            // A crash point past the writers' last operation: the power goes now.
            machine.crash(mode);
            close(engine, &mut exercised);
        }
        let engine = open(dir.path(), Arc::new(OsStorage));
        let history = history.lock().unwrap();
        check(&engine, &history, seed, "after the second crash");
        acked_total += history.acked.len();
        drop(history);
        close(engine, &mut exercised);
    }
    eprintln!(
        "{trials} trials, {acked_total} acknowledgements, none lost or duplicated; \
         {} segments created, {} checkpoints written",
        exercised.segments_created, exercised.checkpoints
    );
    assert!(acked_total > 0, "the trials acknowledged something");
    assert!(
        exercised.segments_created > trials && exercised.checkpoints > trials,
        "the trials rolled segments and wrote checkpoints"
    );
}
