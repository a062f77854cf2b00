//! The `engram serve` and `engram-load` binaries, run as child processes.

mod common;

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use engram::observation::Observation;
use engram::synthetic::{self, Distribution};
use engram::wal::{wal_dir, Lsn, Wal, WalConfig};

/// Kills the server when the test ends, passed or failed, so no orphan outlives it.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Kills a child that hangs; never used to wait for progress.
fn watchdog(pid: u32, secs: u64) {
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(secs));
        let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
    });
}

#[test]
fn serve_recovers_the_log_holds_its_lock_and_stops_cleanly_on_sigterm() {
    let data = tempfile::tempdir().unwrap();
    {
        let wal = Wal::open(wal_dir(data.path()), WalConfig::default()).unwrap();
        wal.append_blocking(vec![engram::wal::Entry {
            kind: engram::wal::RecordKind::Observation,
            payload: synthetic::observation(1, "s", "x-", 0, 8, Distribution::Uniform).to_payload(),
        }])
        .unwrap();
    }
    let mut server = KillOnDrop(
        common::server::serve_command(data.path(), "127.0.0.1:0")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    watchdog(server.0.id(), 60);
    let mut log = BufReader::new(server.0.stderr.take().unwrap()).lines();
    let up = log
        .by_ref()
        .map(|l| l.unwrap())
        .find(|l| l.contains("engram is up"))
        .expect("server came up");
    assert!(
        up.contains("records=1") && up.contains("last_lsn=1"),
        "{up}"
    );
    // While it runs, nobody else may open its log.
    let err = Wal::open(wal_dir(data.path()), WalConfig::default())
        .err()
        .expect("locked");
    assert!(
        err.to_string().contains("locked by another process"),
        "{err}"
    );

    let status = Command::new("kill")
        .args(["-TERM", &server.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let rest: Vec<String> = log.map(|l| l.unwrap()).collect();
    assert!(rest.iter().any(|l| l.contains("shutting down")), "{rest:?}");
    assert!(
        server.0.wait().unwrap().success(),
        "a clean exit after SIGTERM"
    );
    let wal = Wal::open(wal_dir(data.path()), WalConfig::default()).unwrap();
    assert_eq!(wal.durable_lsn(), Lsn(1));
}

#[test]
fn engram_load_acks_every_observation_and_records_each_id() {
    let data = tempfile::tempdir().unwrap();
    let ids = data.path().join("ids.txt");
    let out = Command::new(env!("CARGO_BIN_EXE_engram-load"))
        .args(["--target", "wal"])
        .args([
            "--count",
            "2000",
            "--dim",
            "32",
            "--connections",
            "4",
            "--batch",
            "10",
            "--seed",
            "9",
        ])
        .args([
            "--space",
            "bench",
            "--distribution",
            "clustered",
            "--json",
            "--data-dir",
        ])
        .arg(data.path())
        .arg("--ids-out")
        .arg(&ids)
        .output()
        .unwrap();
    let report = common::success_json(&out);
    assert_eq!(report["sent"], 2000);
    assert_eq!(report["acked"], 2000);
    assert_eq!(report["rejected"], 0);
    assert!(report["obs_per_sec"].as_f64().unwrap() > 0.0);
    let p50 = report["ack_latency_ms"]["p50"].as_f64().unwrap();
    let p99 = report["ack_latency_ms"]["p99"].as_f64().unwrap();
    assert!(0.0 < p50 && p50 <= p99 && p99 <= report["ack_latency_ms"]["max"].as_f64().unwrap());

    let lines: Vec<String> = std::fs::read_to_string(&ids)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    let unique: HashSet<&String> = lines.iter().collect();
    assert_eq!(
        (lines.len(), unique.len()),
        (2000, 2000),
        "every acked id once"
    );

    // What is in the log is exactly what the seed says: a checker can recompute it.
    let wal = Wal::open(wal_dir(data.path()), WalConfig::default()).unwrap();
    assert_eq!(wal.durable_lsn(), Lsn(2000));
    let mut cursor = wal.reader().cursor(Lsn(1));
    let mut stored = HashSet::new();
    while let Some(record) = cursor.read_next().unwrap() {
        let obs = Observation::view(record.payload()).unwrap();
        assert_eq!(obs.space.as_str(), "bench");
        let expected =
            synthetic::embedding(9, "bench", obs.id.as_str(), 32, Distribution::Clustered);
        let got: Vec<f32> = obs.embedding.iter().map(|x| x.to_native()).collect();
        assert_eq!(got, expected, "{}", obs.id.as_str());
        stored.insert(obs.id.as_str().to_owned());
    }
    assert_eq!(
        stored,
        unique.into_iter().cloned().collect::<HashSet<String>>()
    );
}

#[test]
fn serve_reads_a_toml_config_file_and_flags_win_over_it() {
    let dir = tempfile::tempdir().unwrap();
    let from_file = dir.path().join("from-file");
    let from_flag = dir.path().join("from-flag");
    let config = dir.path().join("engram.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\nquic_addr = \"127.0.0.1:0\"\nhttp_addr = \"127.0.0.1:0\"\nwal_recovery_mode = \"absolute_consistency\"\n",
            from_file
        ),
    )
    .unwrap();
    let up_line = |extra: &[&str]| {
        let mut server = KillOnDrop(
            Command::new(env!("CARGO_BIN_EXE_engram"))
                .args(["serve", "--config"])
                .arg(&config)
                .args(extra)
                .env("RUST_LOG", "info")
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
        );
        watchdog(server.0.id(), 60);
        let lines = BufReader::new(server.0.stderr.take().unwrap()).lines();
        let up = lines
            .map(|l| l.unwrap())
            .find(|l| l.contains("engram is up"))
            .expect("server came up");
        drop(server);
        up
    };
    let up = up_line(&[]);
    assert!(
        up.contains(&format!("data_dir={}", from_file.display())),
        "{up}"
    );
    assert!(
        from_file.join("tls").join("cert.der").exists(),
        "the data went where the file said"
    );
    let flag = from_flag.to_str().unwrap();
    let up = up_line(&["--data-dir", flag]);
    assert!(
        up.contains(&format!("data_dir={flag}")),
        "the flag wins: {up}"
    );

    std::fs::write(&config, "data_dir = \"x\"\nquic_adr = \"127.0.0.1:0\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_engram"))
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("quic_adr") && err.contains("unknown field"),
        "{err}"
    );
}

/// The scheduling policy and nice value of each of `pid`'s threads whose name starts with
/// `prefix`, from /proc (stat fields 19 and 41).
/// For each thread of `pid` whose name starts with `prefix`: its name and the contents
/// of its /proc file `file`. Threads that end meanwhile are left out.
fn thread_files(pid: u32, prefix: &str, file: &str) -> Vec<(String, String)> {
    let mut found = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let task = task.unwrap().path();
        let (Ok(comm), Ok(contents)) = (
            std::fs::read_to_string(task.join("comm")),
            std::fs::read_to_string(task.join(file)),
        ) else {
            continue; // the thread ended
        };
        if comm.starts_with(prefix) {
            found.push((comm.trim().to_owned(), contents));
        }
    }
    found
}

fn thread_priorities(pid: u32, prefix: &str) -> Vec<(String, i64, i64)> {
    thread_files(pid, prefix, "stat")
        .into_iter()
        .map(|(comm, stat)| {
            // Fields after the parenthesised name, which may hold spaces.
            let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
            let field = |n: usize| fields[n - 3].parse::<i64>().unwrap();
            (comm, field(41), field(19))
        })
        .collect()
}

/// The index threads of `pid` (workers and insert pool, not the lag gauge), polled until
/// `done` says so or a deadline passes: each thread names itself and sets its own
/// priority as it starts, which may be just after "engram is up".
fn index_threads_until(
    pid: u32,
    done: impl Fn(&[(String, i64, i64)]) -> bool,
) -> Vec<(String, i64, i64)> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let threads: Vec<_> = ["engram-index-", "engram-insert-"]
            .iter()
            .flat_map(|prefix| thread_priorities(pid, prefix))
            // The lag gauge (comm is cut to 15 bytes) only publishes the lag, at the
            // normal priority, so that backpressure follows the log at once.
            .filter(|(name, _, _)| name != "engram-index-la")
            .collect();
        if done(&threads) || std::time::Instant::now() > deadline {
            return threads;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// How many of `threads` are workers and how many insert threads.
fn index_thread_counts(threads: &[(String, i64, i64)]) -> (usize, usize) {
    let workers = threads
        .iter()
        .filter(|t| t.0.starts_with("engram-index-"))
        .count();
    (workers, threads.len() - workers)
}

/// Polls until every index thread of `pid` has `policy` and `nice`.
fn index_threads_reach(pid: u32, policy: i64, nice: i64) -> Vec<(String, i64, i64)> {
    index_threads_until(pid, |threads| {
        let (workers, pool) = index_thread_counts(threads);
        workers > 0 && pool > 0 && threads.iter().all(|t| (t.1, t.2) == (policy, nice))
    })
}

#[test]
fn index_threads_run_below_ingest_at_the_configured_priority() {
    const SCHED_OTHER: i64 = 0;
    const SCHED_IDLE: i64 = 5;
    // The yielding insert pool: how many threads under SCHED_IDLE (one per core).
    let cores = std::thread::available_parallelism().unwrap().get();
    for (flags, policy, nice, yielding) in [
        (vec![], SCHED_OTHER, 10, 0),
        (
            vec!["--index-nice", "15", "--index-yield"],
            SCHED_OTHER,
            15,
            cores,
        ),
        (vec!["--index-yield", "false"], SCHED_OTHER, 10, 0),
        (vec!["--index-sched-idle"], SCHED_IDLE, 0, 0),
    ] {
        let data = tempfile::tempdir().unwrap();
        let server = common::server::Server::start(data.path(), &flags);
        let pid = server.child.id();
        let threads = index_threads_reach(pid, policy, nice);
        assert!(
            !threads.is_empty() && threads.iter().all(|t| (t.1, t.2) == (policy, nice)),
            "{flags:?}: index threads {threads:?}"
        );
        // Each thread sets its own policy as it starts, perhaps after the others.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let yield_pool = loop {
            let pool = thread_priorities(pid, "engram-yield-");
            let settled =
                pool.len() == yielding && pool.iter().all(|t| (t.1, t.2) == (SCHED_IDLE, 0));
            if settled || std::time::Instant::now() > deadline {
                break pool;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        assert!(
            yield_pool.len() == yielding
                && yield_pool.iter().all(|t| (t.1, t.2) == (SCHED_IDLE, 0)),
            "{flags:?}: the yielding insert pool {yield_pool:?}"
        );
        // Those that acknowledge observations stay at the normal priority.
        let ingest = thread_priorities(pid, "engram-wal-comm");
        assert!(
            !ingest.is_empty() && ingest.iter().all(|t| (t.1, t.2) == (SCHED_OTHER, 0)),
            "{flags:?}: the log's committer {ingest:?}"
        );
        server.terminate();
    }
}

/// The slice, in ns, of each of `pid`'s threads whose name starts with `prefix`, from
/// /proc (the kernel's scheduler statistics).
fn thread_slices(pid: u32, prefix: &str) -> Vec<u64> {
    thread_files(pid, prefix, "sched")
        .into_iter()
        .filter(|(comm, _)| comm != "engram-index-la")
        .map(|(_, sched)| {
            sched
                .lines()
                .find(|l| l.starts_with("se.slice"))
                .and_then(|l| l.split(':').nth(1))
                .map(|v| v.trim().parse::<u64>().unwrap())
                .expect("se.slice in /proc/PID/task/TID/sched")
        })
        .collect()
}

#[test]
fn index_threads_ask_for_the_configured_slice_and_ingest_keeps_the_kernels() {
    if !engram::ingest::priority::kernel_takes_custom_slices().expect("a readable kernel release") {
        eprintln!("skipped: this kernel has no custom slices (Linux 6.12 and later)");
        return;
    }
    let kernel_slice = |pid: u32| thread_slices(pid, "engram-wal-comm");
    for (flags, wanted_ms) in [(vec![], Some(100)), (vec!["--index-slice-ms", "0"], None)] {
        let data = tempfile::tempdir().unwrap();
        let server = common::server::Server::start(data.path(), &flags);
        let pid = server.child.id();
        let committer = kernel_slice(pid);
        assert_eq!(committer.len(), 1, "one committer thread");
        // Not set by engram: whatever the kernel gives a thread by default.
        let wanted = wanted_ms.map_or(committer[0], |ms: u64| ms * 1_000_000);
        assert_ne!(
            committer[0], 100_000_000,
            "the committer keeps the kernel's slice"
        );
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let slices = loop {
            let slices: Vec<u64> = ["engram-index-", "engram-insert-"]
                .iter()
                .flat_map(|prefix| thread_slices(pid, prefix))
                .collect();
            if slices.len() >= 2 && slices.iter().all(|&s| s == wanted)
                || std::time::Instant::now() > deadline
            {
                break slices;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        assert!(
            slices.len() >= 2 && slices.iter().all(|&s| s == wanted),
            "{flags:?}: index thread slices {slices:?}, wanted {wanted}"
        );
        server.terminate();
    }
}

#[test]
fn index_workers_and_insert_threads_bound_the_threads_that_index() {
    for (workers, inserters) in [(1, 1), (3, 2)] {
        let data = tempfile::tempdir().unwrap();
        let (w, i) = (workers.to_string(), inserters.to_string());
        let flags = ["--index-workers", &w, "--index-insert-threads", &i];
        let server = common::server::Server::start(data.path(), &flags);
        let wanted = (workers, inserters);
        let threads = index_threads_until(server.child.id(), |threads| {
            index_thread_counts(threads) == wanted
        });
        assert_eq!(
            index_thread_counts(&threads),
            wanted,
            "{flags:?}: index workers and insert threads"
        );
        server.terminate();
    }
}
