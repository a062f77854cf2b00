//! Kill and recover, checked like Jepsen's set-full: three clients stream into two spaces
//! while the real server is SIGKILLed again and again, at random instants and at the
//! instants that matter most (a commit written but not synced, a segment just rolled, a
//! checkpoint written or renamed, a segment removal half done). After every restart every
//! acknowledged observation must be stored exactly once, unchanged, indexed once, and its
//! own embedding must recall it first.
//!
//! `CHAOS_CYCLES` sets the number of kills (20 by default, each crash point at least
//! twice), `CHAOS_SEED` the seed (random
//! by default; printed, and printed again on failure).

#[path = "../common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::server::{space_stats, Server};
use engram::chaos::CrashPoint;
use engram::client::{Backoff, ObservationStream, Session};
use engram::index::{Consistency, RecallQuery};
use engram::observation::Observation;
use engram::synthetic::{observation, Distribution};
use engram::wal::Lsn;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::{mpsc, watch};

const SPACES: [&str; 2] = ["alpha", "beta"];
const CLIENTS: u64 = 3;
const DIM: usize = 128;
/// Observations recalled with their own embedding in each check.
const SELF_RECALL_SAMPLES: usize = 16;

/// Checkpoint every 1,000 inserts, 2 MiB segments (about 3,000 of these observations),
/// so that rolls, checkpoints and segment removals all happen within a few cycles; a
/// lag bound of 3,000 keeps ingest near the index, so a cycle is a few thousand.
const FLAGS: [&str; 8] = [
    "--index-lag-max",
    "3000",
    "--checkpoint-records",
    "1000",
    "--index-workers",
    "2",
    "--wal-segment-bytes",
    "2097152",
];

fn setting(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name} must be a number, got {v:?}"))
    })
}

/// What the clients were told is durable, by (space, id).
type Ledger = Arc<Mutex<BTreeMap<(String, String), Observation>>>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Stream,
    /// Stop sending, have everything acknowledged, then say so; the number tells rounds apart.
    Quiet(u64),
    Stop,
}

/// How one cycle ends.
#[derive(Clone, Copy, Debug)]
enum Kill {
    /// SIGKILL from outside once this many more observations are acknowledged.
    AfterAcks(u64),
    /// The server kills itself the n-th time it reaches the point.
    At(CrashPoint, u64),
}

struct Client {
    number: u64,
    space: &'static str,
    seed: u64,
}

impl Client {
    fn observation(&self, n: u64) -> Observation {
        let prefix = format!("c{}-", self.number);
        observation(
            self.seed,
            self.space,
            &prefix,
            n,
            DIM,
            Distribution::Clustered,
        )
    }

    /// Streams until told to stop, through every restart, recording each acknowledgement.
    async fn run(
        self,
        options: engram::client::ClientOptions,
        mut phase: watch::Receiver<Phase>,
        ledger: Ledger,
        acked_count: Arc<watch::Sender<u64>>,
        quiet: mpsc::UnboundedSender<u64>,
    ) -> ObservationStream {
        let backoff = Backoff {
            initial: Duration::from_millis(20),
            max: Duration::from_millis(250),
            attempts_max: 2_000,
        };
        let mut stream = ObservationStream::connect(options, backoff).await.unwrap();
        // A small window: each restart resends at most this much per client, which keeps
        // a cycle to a few thousand observations, so that many cycles fit in a run.
        stream.set_pending_max(512);
        let mut n = 0u64;
        loop {
            let now = *phase.borrow_and_update();
            match now {
                Phase::Stream => {
                    stream.send(self.observation(n)).await.unwrap();
                    n += 1;
                    stream.poll_acked();
                }
                Phase::Quiet(round) => {
                    stream.flush().await.unwrap();
                    self.record(&mut stream, &ledger, &acked_count);
                    quiet.send(round).unwrap();
                    phase.changed().await.unwrap();
                    continue;
                }
                Phase::Stop => {
                    stream.flush().await.unwrap();
                    self.record(&mut stream, &ledger, &acked_count);
                    return stream;
                }
            }
            self.record(&mut stream, &ledger, &acked_count);
        }
    }

    fn record(&self, stream: &mut ObservationStream, ledger: &Ledger, count: &watch::Sender<u64>) {
        let rejected = stream.take_rejected();
        assert!(rejected.is_empty(), "nothing may be refused: {rejected:?}");
        let acked = stream.take_acked();
        if acked.is_empty() {
            return;
        }
        let mut ledger = ledger.lock().unwrap();
        for o in &acked {
            let key = (o.space.clone(), o.id.clone());
            assert!(
                ledger.insert(key, o.clone()).is_none(),
                "{} acknowledged twice to client {}",
                o.id,
                self.number
            );
        }
        count.send_modify(|c| *c += acked.len() as u64);
    }
}

/// The set-full check on a quiet server: every acknowledged observation is stored once and
/// indexed once, nothing else is stored, and a sample recalls itself first, unchanged.
/// Returns how many of the sample the graph's approximate search did not find first.
async fn check(server: &Server, ledger: &Ledger, rng: &mut StdRng, seed: u64, cycle: u64) -> u64 {
    let acked = ledger.lock().unwrap().clone();
    let mut session = Session::connect(&server.options("checker"), None)
        .await
        .unwrap();
    let listing = session.list_spaces().await.unwrap();
    let stats = tokio::task::block_in_place(|| server.wait_indexed());
    for space in SPACES {
        let ids: Vec<String> = acked
            .keys()
            .filter(|(s, _)| s == space)
            .map(|(_, id)| id.clone())
            .collect();
        let found = session.check_ids(space, &ids).await.unwrap();
        let missing: Vec<&String> = ids
            .iter()
            .zip(&found)
            .filter(|(_, f)| !**f)
            .map(|(i, _)| i)
            .collect();
        assert!(
            missing.is_empty(),
            "seed {seed}, cycle {cycle}: {} acknowledged observations of {space} are lost, e.g. {:?}",
            missing.len(),
            &missing[..missing.len().min(10)]
        );
        let stored = listing
            .spaces
            .iter()
            .find(|e| e.name == space)
            .map_or(0, |e| e.observations);
        assert_eq!(
            stored,
            ids.len() as u64,
            "seed {seed}, cycle {cycle}: {space} stores {stored} observations for {} acknowledged (duplicates or strays)",
            ids.len()
        );
        let indexed = space_stats(&stats, space)["indexed"].as_u64().unwrap();
        assert_eq!(
            indexed,
            ids.len() as u64,
            "seed {seed}, cycle {cycle}: {space}'s index holds {indexed} for {} stored",
            ids.len()
        );
    }
    let all: Vec<&Observation> = acked.values().collect();
    let mut graph_misses = 0;
    for _ in 0..all.len().min(SELF_RECALL_SAMPLES) {
        let o = all[rng.random_range(0..all.len())];
        // Exact: AsOf the listing's durable LSN scores every stored vector, so this checks
        // what was stored, whatever way the graph happens to be wired.
        let mut exact = RecallQuery::new(&o.space, o.embedding.clone(), 3);
        exact.consistency = Consistency::AsOf(Lsn(listing.durable_lsn));
        let recalled = session.recall(&exact).await.unwrap();
        let top = &recalled.hits[0];
        assert_eq!(
            top.id, o.id,
            "seed {seed}, cycle {cycle}: {o:?} does not recall itself first: {recalled:?}"
        );
        assert!(
            top.score > 0.999,
            "seed {seed}, cycle {cycle}: {} scores {} against itself",
            o.id,
            top.score
        );
        assert_eq!(
            (&top.what, top.when_unix_ns, top.confidence),
            (&o.what, o.when_unix_ns, o.confidence),
            "seed {seed}, cycle {cycle}: {} changed",
            o.id
        );
        // Through the graph (read-your-writes, beam 256), which is approximate: counted,
        // and bounded by the caller. Measured misses: none in 8,572 self-queries at 60,000
        // of these vectors a space, 1 in about 4,700 at 240,000 (docs/durability.md).
        let mut graph = RecallQuery::new(&o.space, o.embedding.clone(), 1);
        graph.ef = Some(256);
        let hits = session.recall(&graph).await.unwrap().hits;
        graph_misses += u64::from(hits.first().map(|h| h.id.as_str()) != Some(o.id.as_str()));
    }
    session.goodbye().await.unwrap();
    graph_misses
}

/// How long any one wait may take before the run is called stuck.
const DEADLINE: Duration = Duration::from_secs(300);

/// Waits for `future`, failing the test (with what it waited for) after 5 minutes rather
/// than hanging: a deadline against a stuck run, not a synchronisation.
async fn within<T>(
    seed: u64,
    cycle: u64,
    what: &str,
    future: impl std::future::Future<Output = T>,
) -> T {
    tokio::time::timeout(DEADLINE, future)
        .await
        .unwrap_or_else(|_| panic!("seed {seed}, cycle {cycle}: {what} took over 5 minutes"))
}

/// SIGKILLs a server process when dropped.
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // SAFETY: kill(2) has no memory effects; the pid is our child's, not yet reaped.
        unsafe {
            libc::kill(self.0 as i32, libc::SIGKILL);
        }
    }
}

fn crash_env(kill: Kill) -> Vec<(String, String)> {
    match kill {
        Kill::AfterAcks(_) => vec![],
        Kill::At(point, n) => vec![(
            "ENGRAM_FAULT_CRASH_AT".into(),
            format!("{}:{n}", point.name()),
        )],
    }
}

fn start(data: &std::path::Path, addr: &str, kill: Kill) -> Server {
    let env = crash_env(kill);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    tokio::task::block_in_place(|| Server::start_with_env(data, addr, &FLAGS, &env))
}

/// How often each point is reached in a cycle here decides how far ahead its kill is set.
fn plan(cycle: u64, rng: &mut StdRng) -> Kill {
    if cycle.is_multiple_of(2) {
        return Kill::AfterAcks(rng.random_range(200..3_000));
    }
    let point = CrashPoint::ALL[(cycle / 2) as usize % CrashPoint::ALL.len()];
    let n = match point {
        CrashPoint::CommitUnsynced => rng.random_range(1..60),
        _ => rng.random_range(1..=2),
    };
    Kill::At(point, n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_observation_survives_repeated_sigkills_exactly_once() {
    let cycles = setting("CHAOS_CYCLES").unwrap_or(20);
    let seed = setting("CHAOS_SEED").unwrap_or_else(rand::random);
    eprintln!("kill cycles: {cycles}, CHAOS_SEED={seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let data = tempfile::tempdir().unwrap();
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");

    let mut kill = plan(0, &mut rng);
    let mut server = Some(start(data.path(), &addr, kill));
    // The address and the certificate (DATA_DIR/tls) stay the same across restarts.
    let options = server.as_ref().unwrap().options("chaos");
    let ledger: Ledger = Default::default();
    let acked_count = Arc::new(watch::channel(0u64).0);
    let (phase, _) = watch::channel(Phase::Stream);
    let (quiet_tx, mut quiet) = mpsc::unbounded_channel();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|number| {
            let client = Client {
                number,
                space: SPACES[number as usize % SPACES.len()],
                seed,
            };
            tokio::spawn(client.run(
                options.clone(),
                phase.subscribe(),
                ledger.clone(),
                acked_count.clone(),
                quiet_tx.clone(),
            ))
        })
        .collect();

    let mut injected: BTreeMap<&str, u64> = BTreeMap::new();
    let mut graph_misses = 0;
    for cycle in 0..cycles {
        let mut running = server.take().unwrap();
        let base = *acked_count.borrow();
        let mut counted = acked_count.subscribe();
        match kill {
            Kill::AfterAcks(k) => {
                within(
                    seed,
                    cycle,
                    "streaming to the kill",
                    counted.wait_for(|c| *c >= base + k),
                )
                .await
                .unwrap();
                running.kill9();
            }
            Kill::At(point, n) => {
                // The server kills itself; if the point is not reached in a long stretch
                // of streaming, the cycle ends with an outside kill and is not counted.
                let pid = running.child.id();
                // If this test fails while the server lives, the runtime would wait for
                // the blocked wait below forever; the guard kills the server instead.
                let guard = KillOnDrop(pid);
                let mut exited = tokio::task::spawn_blocking(move || {
                    let status = running.child.wait().unwrap();
                    // Every line up to the exit: the reader thread ends at end of file.
                    let log: Vec<String> = running.log.iter().collect();
                    (status, log)
                });
                let ended = async {
                    tokio::select! {
                        done = &mut exited => done.unwrap(),
                        _ = counted.wait_for(|c| *c >= base + 20_000) => {
                            drop(KillOnDrop(pid));
                            (&mut exited).await.unwrap()
                        }
                    }
                };
                let (status, log) = within(seed, cycle, "the crash", ended).await;
                std::mem::forget(guard);
                use std::os::unix::process::ExitStatusExt;
                assert_eq!(
                    status.signal(),
                    Some(9),
                    "seed {seed}, cycle {cycle}: {status}; log {log:#?}"
                );
                if log.iter().any(|l| l.contains("injected crash at")) {
                    *injected.entry(point.name()).or_default() += 1;
                } else {
                    eprintln!("cycle {cycle}: {} was not reached {n} times", point.name());
                }
            }
        }
        // Restart clean, let the clients resume and settle, and check.
        let clean = start(data.path(), &addr, Kill::AfterAcks(0));
        phase.send_replace(Phase::Quiet(cycle));
        for _ in 0..CLIENTS {
            // A client that panicked (its message is above) never says it is quiet.
            let round = tokio::time::timeout(DEADLINE, quiet.recv())
                .await
                .unwrap_or_else(|_| {
                    // What the server was doing: its load state, lag, index progress,
                    // log and threads.
                    let diagnosis = tokio::task::block_in_place(|| clean.diagnosis());
                    panic!(
                        "seed {seed}, cycle {cycle}: the clients settling took over 5 minutes; \
                         {diagnosis}"
                    )
                });
            assert_eq!(round, Some(cycle));
        }
        graph_misses += check(&clean, &ledger, &mut rng, seed, cycle).await;
        eprintln!(
            "cycle {cycle}: {kill:?}; {} acknowledged, all present once",
            *acked_count.borrow()
        );
        kill = plan(cycle + 1, &mut rng);
        server = Some(match kill {
            Kill::AfterAcks(_) => clean,
            Kill::At(..) => {
                assert!(clean.terminate().success(), "a graceful stop");
                start(data.path(), &addr, kill)
            }
        });
        phase.send_replace(Phase::Stream);
    }

    phase.send_replace(Phase::Stop);
    let mut reconnected = 0;
    for client in clients {
        let stream = client.await.unwrap();
        reconnected += u64::from(stream.connects > 1);
        stream.close().await.unwrap();
    }
    let server = server.take().unwrap();
    graph_misses += check(&server, &ledger, &mut rng, seed, cycles).await;
    // The graph is approximate, but a miss rate over 1% would mean a damaged index.
    let sampled = (cycles + 1) * SELF_RECALL_SAMPLES as u64;
    eprintln!("graph self-recall missed {graph_misses} of {sampled}");
    assert!(
        graph_misses * 100 <= sampled,
        "seed {seed}: the graph missed {graph_misses} of {sampled} self-recalls"
    );
    assert_eq!(
        reconnected, CLIENTS,
        "every client streamed across restarts"
    );
    eprintln!("crashes injected at: {injected:?}");
    if cycles >= 2 * CrashPoint::ALL.len() as u64 {
        for point in CrashPoint::ALL {
            assert!(
                injected.contains_key(point.name()),
                "seed {seed}: no cycle crashed at {}: {injected:?}",
                point.name()
            );
        }
    }
}
