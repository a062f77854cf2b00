//! engram-load: a load generator. Observations are synthetic and deterministic in
//! (seed, space, id), so any checker can recompute what was sent.
//!
//! Target `quic` (the default) streams to a server; target `wal` appends straight to a
//! local log (the durable core, without the network); target `raw-quic` streams the same
//! message size over quinn alone (the transport's ceiling, raw.rs); target `recall`
//! queries a space and reports recall latency (recall.rs); target `ws` streams through
//! the WebSocket gateway as a browser would (websocket.rs).

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, IsTerminal, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use engram::synthetic::{self, Distribution};
use engram::wal::{wal_dir, Entry, Preallocation, RecordKind, Wal, WalConfig};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

#[cfg(feature = "peers")]
mod peers;
mod raw;
mod recall;
mod websocket;

/// Requests each connection keeps in flight to a peer (targets redis and nats) unless
/// --window says otherwise.
pub const PEER_WINDOW_DEFAULT: usize = 100;

/// glibc's allocator showed as a tenth of the QUIC path's CPU (malloc, free, consolidation
/// across threads); mimalloc's thread-local pages cost less for many small short-lived
/// allocations. docs/performance.md has the figures.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "engram-load",
    version,
    about = "Generate observation load and report acked rate and latency"
)]
struct Args {
    /// Where to send: `quic` streams to a server at --addr; `wal` appends to the log in
    /// --data-dir directly (the durable core without the network).
    #[arg(long, value_enum, default_value = "quic")]
    target: Target,
    /// The server (target quic).
    #[arg(long, default_value = "127.0.0.1:7400")]
    addr: std::net::SocketAddr,
    /// The server's HTTP address, where the WebSocket gateway listens (target ws).
    #[arg(long, default_value = "127.0.0.1:7480")]
    http_addr: std::net::SocketAddr,
    /// Observations each connection keeps unacknowledged at most: target ws (default
    /// 1024), redis and nats (default 100), quic (default: the client's bound, 4096).
    #[arg(long)]
    window: Option<usize>,
    /// The peer's address (targets redis and nats).
    #[arg(long, default_value = "127.0.0.1:6379")]
    peer_addr: std::net::SocketAddr,
    /// Send each observation as its engram/1 Observe frame in a binary message instead of
    /// JSON (target ws).
    #[arg(long)]
    ws_binary: bool,
    /// The server's certificate (target quic); the server writes it to DATA_DIR/tls/.
    #[arg(long, default_value = "./engram-data/tls/cert.der")]
    cert: PathBuf,
    /// The token to present to a server with an auth file (in Hello, or as the
    /// WebSocket's bearer).
    #[arg(long, env = "ENGRAM_TOKEN", hide_env_values = true)]
    token: Option<String>,
    #[arg(long, default_value = "./engram-load-data")]
    data_dir: PathBuf,
    #[arg(long, default_value = "load")]
    space: String,
    /// Spread the observations over this many spaces, SPACE-0 to SPACE-(N-1) (target
    /// quic); 1: all in SPACE.
    #[arg(long, default_value_t = 1)]
    spaces: u64,
    /// Results per recall (target recall).
    #[arg(short, long, default_value_t = 10)]
    k: usize,
    /// Consistency of each recall (target recall).
    #[arg(long, value_enum, default_value = "read-your-writes")]
    consistency: ConsistencyArg,
    /// The LSN of --consistency as-of.
    #[arg(long, default_value_t = 0)]
    as_of: u64,
    /// Observations to send in all.
    #[arg(long, default_value_t = 100_000)]
    count: u64,
    /// The first observation's number (target quic): ids run obs-START to
    /// obs-(START+COUNT-1), so a second run adds new observations to a space instead of
    /// resending the same ids.
    #[arg(long, default_value_t = 0)]
    start: u64,
    /// Embedding dimension.
    #[arg(long, default_value_t = 384)]
    dim: usize,
    /// Concurrent senders.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Observations per append (target wal). Over QUIC there is nothing to set: the
    /// client writes whatever is queued in one write, and the server appends whatever it
    /// has read in one batch.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Offered observations per second over all senders; 0 sends as fast as acks allow.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[arg(long, value_enum, default_value = "uniform")]
    distribution: Distribution,
    /// Worker threads of the sender runtime (targets quic and raw-quic). On a machine the server shares,
    /// fewer threads leave more of the cores to the server.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
    /// Append each id to this file as its ack arrives.
    #[arg(long)]
    ids_out: Option<PathBuf>,
    /// Commit window of the log, in microseconds (target wal).
    #[arg(long, default_value_t = 0)]
    commit_window_us: u64,
    /// Segment size of the log in MiB (target wal).
    #[arg(long, default_value_t = 64)]
    segment_mib: u64,
    /// How the log reserves segment space (target wal).
    #[arg(long, value_enum, default_value = "fallocate")]
    preallocation: PreallocationArg,
    /// Create each segment at the roll instead of preparing it in the background (target wal).
    #[arg(long)]
    no_prepare: bool,
}

impl Args {
    /// The `n`-th observation of SPACE: the same for every target and every run.
    fn observation(&self, n: u64) -> engram::observation::Observation {
        synthetic::observation(
            self.seed,
            &self.space,
            "obs-",
            n,
            self.dim,
            self.distribution,
        )
    }
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum PreallocationArg {
    ZeroFill,
    Fallocate,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Target {
    Quic,
    Wal,
    /// quinn alone, in process, with the same message size: the transport's ceiling.
    RawQuic,
    /// --count recalls of SPACE over QUIC, closed loop per connection or paced by --rate:
    /// the report's latency is recall latency.
    Recall,
    /// JSON over the WebSocket gateway at --http-addr, --window unacknowledged per
    /// connection.
    Ws,
    /// A peer for comparison: XADD to Redis at --peer-addr (run it with `appendonly yes`,
    /// `appendfsync always`), --window in flight per connection. Needs `--features peers`.
    Redis,
    /// A peer for comparison: JetStream publishes with acks to NATS at --peer-addr
    /// (file storage), --window in flight per connection. Needs `--features peers`.
    Nats,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ConsistencyArg {
    ReadYourWrites,
    AsOf,
    Eventual,
}

#[derive(Serialize)]
struct Report {
    target: &'static str,
    sent: u64,
    acked: u64,
    rejected: u64,
    seconds: f64,
    obs_per_sec: f64,
    ack_latency_ms: Latency,
}

#[derive(Serialize)]
struct Latency {
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.connections > 0 && args.batch > 0,
        "--connections and --batch must be positive"
    );
    let report = match args.target {
        Target::Wal => run_wal(&args)?,
        Target::Quic => run_quic(&args)?,
        Target::RawQuic => raw::run(&args)?,
        Target::Recall => recall::run(&args)?,
        Target::Ws => websocket::run(&args)?,
        #[cfg(feature = "peers")]
        Target::Redis => peers::run_redis(&args)?,
        #[cfg(feature = "peers")]
        Target::Nats => peers::run_nats(&args)?,
        #[cfg(not(feature = "peers"))]
        Target::Redis | Target::Nats => anyhow::bail!(
            "engram-load was built without the peer clients: cargo build --release --features peers"
        ),
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        let l = &report.ack_latency_ms;
        println!(
            "{}: sent {} acked {} rejected {} in {:.2}s: {:.0} obs/s; ack latency ms p50 {:.3} p90 {:.3} p99 {:.3} max {:.3}",
            report.target, report.sent, report.acked, report.rejected, report.seconds, report.obs_per_sec, l.p50, l.p90, l.p99, l.max
        );
    }
    Ok(())
}

fn run_wal(args: &Args) -> anyhow::Result<Report> {
    let config = WalConfig {
        commit_window: Duration::from_micros(args.commit_window_us),
        segment_bytes: args.segment_mib << 20,
        preallocation: match args.preallocation {
            PreallocationArg::ZeroFill => Preallocation::ZeroFill,
            PreallocationArg::Fallocate => Preallocation::Fallocate,
        },
        prepare_next_segment: !args.no_prepare,
        ..WalConfig::default()
    };
    let wal = Arc::new(Wal::open(wal_dir(&args.data_dir), config).context("opening the log")?);
    let ids_out = open_ids_out(args)?;
    let bar = progress_bar(args.count);
    let sent = Arc::new(AtomicU64::new(0));
    let rejected = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let latencies: Vec<Vec<f64>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..args.connections)
            .map(|sender| {
                let (wal, ids_out, bar, sent, rejected) = (
                    wal.clone(),
                    ids_out.clone(),
                    bar.clone(),
                    sent.clone(),
                    rejected.clone(),
                );
                scope.spawn(move || {
                    sender_loop(args, sender, &wal, &ids_out, &bar, &sent, &rejected)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("sender thread"))
            .collect()
    });
    let seconds = started.elapsed().as_secs_f64();
    bar.finish_and_clear();
    let all: Vec<f64> = latencies.into_iter().flatten().collect();
    Ok(report(
        "wal",
        all,
        sent.load(Ordering::Relaxed),
        rejected.load(Ordering::Relaxed),
        seconds,
    ))
}

/// The file acked ids are appended to, if any; shared by every sender.
fn open_ids_out(args: &Args) -> anyhow::Result<Arc<Option<Mutex<BufWriter<File>>>>> {
    let Some(path) = &args.ids_out else {
        return Ok(Arc::new(None));
    };
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    Ok(Arc::new(Some(Mutex::new(BufWriter::new(file)))))
}

/// The report from every acked observation's latency (ms).
fn report(
    target: &'static str,
    mut latencies: Vec<f64>,
    sent: u64,
    rejected: u64,
    seconds: f64,
) -> Report {
    latencies.sort_by(f64::total_cmp);
    let acked = latencies.len() as u64;
    let pick = |q: f64| {
        let i = ((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1));
        latencies.get(i).copied().unwrap_or(0.0)
    };
    Report {
        target,
        sent,
        acked,
        rejected,
        seconds,
        obs_per_sec: acked as f64 / seconds,
        ack_latency_ms: Latency {
            p50: pick(0.50),
            p90: pick(0.90),
            p99: pick(0.99),
            max: latencies.last().copied().unwrap_or(0.0),
        },
    }
}

/// One sender: its share of the observations, in batches, paced to its share of --rate.
/// Returns the ack latency of every acked observation, in milliseconds.
fn sender_loop(
    args: &Args,
    sender: usize,
    wal: &Wal,
    ids_out: &Option<Mutex<BufWriter<File>>>,
    bar: &ProgressBar,
    sent: &AtomicU64,
    rejected: &AtomicU64,
) -> Vec<f64> {
    let mine: Vec<u64> = (sender as u64..args.count)
        .step_by(args.connections)
        .collect();
    let mut latencies = Vec::with_capacity(mine.len());
    let batch_interval = (args.rate > 0).then(|| {
        Duration::from_secs_f64(args.batch as f64 * args.connections as f64 / args.rate as f64)
    });
    let start = Instant::now();
    for (i, chunk) in mine.chunks(args.batch).enumerate() {
        if let Some(interval) = batch_interval {
            let due = start + interval * i as u32;
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        let observations: Vec<_> = chunk.iter().map(|&n| args.observation(n)).collect();
        let entries = observations
            .iter()
            .map(|o| Entry {
                kind: RecordKind::Observation,
                payload: o.to_payload(),
            })
            .collect();
        sent.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        let t = Instant::now();
        match wal.append_blocking(entries) {
            Ok(_) => {
                let ms = t.elapsed().as_secs_f64() * 1e3;
                latencies.extend(std::iter::repeat_n(ms, chunk.len()));
                if let Some(out) = ids_out {
                    let mut out = out.lock().expect("ids file lock");
                    for o in &observations {
                        let _ = writeln!(out, "{}", o.id);
                    }
                    let _ = out.flush();
                }
                bar.inc(chunk.len() as u64);
            }
            Err(e) => {
                rejected.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                if !e.is_retryable() {
                    eprintln!("engram-load: sender {sender} stops: {e}");
                    break;
                }
            }
        }
    }
    latencies
}

fn progress_bar(count: u64) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(count);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} acked ({per_sec}, {eta})")
            .expect("static template"),
    );
    bar
}

/// Streams to a server: one resilient session per connection, each paced to its share of
/// --rate. An observation's latency runs from its send to the ack that covers it.
fn run_quic(args: &Args) -> anyhow::Result<Report> {
    let cert = std::fs::read(&args.cert)
        .with_context(|| format!("reading the server certificate {}", args.cert.display()))?;
    let ids_out = open_ids_out(args)?;
    let bar = progress_bar(args.count);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()?;
    let started = Instant::now();
    let results: Vec<anyhow::Result<Sent>> = runtime.block_on(async {
        let tasks: Vec<_> = (0..args.connections)
            .map(|sender| {
                let mut options = engram::client::ClientOptions::new(
                    args.addr,
                    cert.clone(),
                    &format!("engram-load-{sender}"),
                );
                options.auth_token = args.token.clone();
                let mine: Vec<u64> = (args.start + sender as u64..args.start + args.count)
                    .step_by(args.connections)
                    .collect();
                let (ids_out, bar) = (ids_out.clone(), bar.clone());
                let (seed, space, dim, distribution, spaces) = (
                    args.seed,
                    args.space.clone(),
                    args.dim,
                    args.distribution,
                    args.spaces.max(1),
                );
                let interval = (args.rate > 0)
                    .then(|| Duration::from_secs_f64(args.connections as f64 / args.rate as f64));
                let window = args.window;
                tokio::spawn(async move {
                    let mut stream =
                        engram::client::ObservationStream::connect(options, Default::default())
                            .await?;
                    if let Some(window) = window {
                        stream.set_pending_max(window);
                    }
                    let mut tally = Tally::new(ids_out, bar, mine.len());
                    let start = Instant::now();
                    for (i, &n) in mine.iter().enumerate() {
                        if let Some(interval) = interval {
                            let due = tokio::time::Instant::from_std(start + interval * i as u32);
                            // Acks are timed as they arrive, not at the next send.
                            loop {
                                tokio::select! {
                                    () = tokio::time::sleep_until(due) => break,
                                    () = stream.wait_settled() => tally.account(&mut stream),
                                }
                            }
                        }
                        let space = if spaces > 1 {
                            format!("{space}-{}", n % spaces)
                        } else {
                            space.clone()
                        };
                        stream
                            .send(synthetic::observation(
                                seed,
                                &space,
                                "obs-",
                                n,
                                dim,
                                distribution,
                            ))
                            .await?;
                        tally.sent();
                        stream.poll_acked();
                        tally.account(&mut stream);
                    }
                    // Each ack of the last window timed as it arrives, not when all are in.
                    while stream.unacknowledged() > 0 {
                        stream.wait_oldest_acked().await?;
                        tally.account(&mut stream);
                    }
                    stream.flush().await?;
                    tally.account(&mut stream);
                    stream.close().await?;
                    anyhow::Ok(Sent {
                        latencies: tally.latencies,
                        sent: mine.len() as u64,
                        rejected: tally.rejected,
                    })
                })
            })
            .collect();
        join_senders(tasks).await
    });
    bar.finish_and_clear();
    summed("quic", results, started.elapsed().as_secs_f64())
}

/// What one sender sent and what came back.
struct Sent {
    /// Ack latency of every acknowledged observation, in milliseconds.
    latencies: Vec<f64>,
    sent: u64,
    rejected: u64,
}

/// Waits for every sender task, in order.
async fn join_senders<T>(tasks: Vec<tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut out = Vec::with_capacity(tasks.len());
    for task in tasks {
        out.push(task.await.expect("sender task"));
    }
    out
}

/// One report from every sender's outcome; the first failed sender's error, if any.
fn summed(
    target: &'static str,
    results: Vec<anyhow::Result<Sent>>,
    seconds: f64,
) -> anyhow::Result<Report> {
    let (mut all, mut sent, mut rejected) = (Vec::new(), 0, 0);
    for r in results {
        let r = r?;
        all.extend(r.latencies);
        sent += r.sent;
        rejected += r.rejected;
    }
    Ok(report(target, all, sent, rejected, seconds))
}

/// One sender's record of what it sent and what came back.
struct Tally {
    /// Send times of the observations not yet settled, in send order.
    sent_at: std::collections::VecDeque<Instant>,
    /// Ack latency of every acknowledged observation, in milliseconds.
    latencies: Vec<f64>,
    rejected: u64,
    ids_out: Arc<Option<Mutex<BufWriter<File>>>>,
    bar: ProgressBar,
}

impl Tally {
    fn new(ids_out: Arc<Option<Mutex<BufWriter<File>>>>, bar: ProgressBar, count: usize) -> Tally {
        Tally {
            sent_at: std::collections::VecDeque::new(),
            latencies: Vec::with_capacity(count),
            rejected: 0,
            ids_out,
            bar,
        }
    }

    fn sent(&mut self) {
        self.sent_at.push_back(Instant::now());
    }

    /// Takes the acks that arrived: latencies, the ids file, the progress bar.
    fn account(&mut self, stream: &mut engram::client::ObservationStream) {
        let acked = stream.take_acked();
        let refused = stream.take_rejected();
        let now = Instant::now();
        // Acks settle in send order; a refused observation's latency is not an ack's.
        for _ in 0..acked.len() {
            if let Some(t) = self.sent_at.pop_front() {
                self.latencies.push((now - t).as_secs_f64() * 1e3);
            }
        }
        self.sent_at.drain(..refused.len().min(self.sent_at.len()));
        self.rejected += refused.len() as u64;
        if let (Some(out), false) = (self.ids_out.as_ref(), acked.is_empty()) {
            let mut out = out.lock().expect("ids file lock");
            for o in &acked {
                let _ = writeln!(out, "{}", o.id);
            }
            let _ = out.flush();
        }
        self.bar.inc(acked.len() as u64);
    }
}
