//! `engram serve`'s settings: flags, their environment variables, and `--config FILE`.

use std::path::PathBuf;

use anyhow::Context;
use clap::builder::TypedValueParser;
use engram::wal::RecoveryMode;

#[derive(clap::Args)]
pub struct ServeArgs {
    /// A TOML file with any of these settings, named as the flags with `_` for `-`
    /// (`data_dir = "/var/lib/engram"`). A flag or its environment variable wins over the file.
    #[arg(long, env = "ENGRAM_CONFIG")]
    pub config: Option<PathBuf>,
    /// Where the log (and later the indexes) live.
    #[arg(long, env = "ENGRAM_DATA_DIR", default_value = "./engram-data")]
    pub data_dir: PathBuf,
    /// Where QUIC clients connect (ALPN engram/1). Port 0 picks a free port (logged).
    #[arg(long, env = "ENGRAM_QUIC_ADDR", default_value = "127.0.0.1:7400")]
    pub quic_addr: std::net::SocketAddr,
    /// Where GET /health and GET /ready answer. Port 0 picks a free port (logged).
    #[arg(long, env = "ENGRAM_HTTP_ADDR", default_value = "127.0.0.1:7480")]
    pub http_addr: std::net::SocketAddr,
    /// Observation bytes all sessions together may have unacknowledged. Past 50% clients
    /// are told Warning; past 75% sessions stop reading (Critical); a batch that would
    /// pass 100% is refused with the retryable Overloaded and a retry hint.
    #[arg(long, env = "ENGRAM_QUEUE_BYTES_MAX", default_value_t = engram::ingest::load::QUEUE_BYTES_MAX_DEFAULT)]
    pub queue_bytes_max: u64,
    /// Spaces the server keeps at most; an observation for one more is refused.
    #[arg(long, env = "ENGRAM_SPACES_MAX", default_value_t = engram::ingest::limits::SPACES_MAX_DEFAULT)]
    pub spaces_max: u32,
    /// Records durable but not yet indexed, at most. Past 50% clients are told Warning;
    /// past 75% sessions stop reading; at the bound batches are refused as Overloaded.
    /// A read-your-writes recall scans these records, so the bound also bounds its cost.
    #[arg(long, env = "ENGRAM_INDEX_LAG_MAX", default_value_t = engram::ingest::load::INDEX_LAG_MAX_DEFAULT, value_parser = clap::value_parser!(u64).range(1..))]
    pub index_lag_max: u64,
    /// Largest UDP payload path MTU discovery may raise QUIC packets to (1200-65527).
    /// Fewer, larger packets cost less per byte where the path carries them.
    #[arg(long, env = "ENGRAM_QUIC_UDP_PAYLOAD_MAX", default_value_t = engram::transport::endpoint::UDP_PAYLOAD_MAX_DEFAULT)]
    pub quic_udp_payload_max: u16,
    /// Bytes of Observe frames a session may have unacknowledged (its credits, announced in
    /// Welcome). Past them the server stops reading that session until acks free some.
    #[arg(long, env = "ENGRAM_INFLIGHT_BYTES_MAX", default_value_t = engram::ingest::limits::INFLIGHT_BYTES_MAX_DEFAULT)]
    pub inflight_bytes_max: u32,
    /// A TLS certificate (DER or PEM). Without one, a self-signed certificate is made once
    /// in DATA_DIR/tls/ and its SHA-256 fingerprint logged.
    #[arg(long, env = "ENGRAM_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The certificate's private key (DER PKCS#8 or PEM).
    #[arg(long, env = "ENGRAM_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Size every WAL segment is preallocated to.
    #[arg(long, env = "ENGRAM_WAL_SEGMENT_BYTES", default_value_t = engram::wal::SEGMENT_BYTES_DEFAULT)]
    pub wal_segment_bytes: u64,
    /// Microseconds the committer waits for more appends to share a sync (0: none).
    #[arg(long, env = "ENGRAM_WAL_COMMIT_WINDOW_US", default_value_t = 0)]
    pub wal_commit_window_us: u64,
    /// Most bytes written between two syncs.
    #[arg(long, env = "ENGRAM_WAL_COMMIT_BYTES_MAX", default_value_t = engram::wal::COMMIT_BYTES_MAX_DEFAULT)]
    pub wal_commit_bytes_max: u64,
    /// What recovery does with damage: tolerate-torn-tail, absolute-consistency, or
    /// salvage-before-corruption (operator's choice: drops acknowledged records).
    #[arg(
        long,
        env = "ENGRAM_WAL_RECOVERY_MODE",
        value_enum,
        default_value = "tolerate-torn-tail"
    )]
    pub wal_recovery_mode: RecoveryModeArg,
    /// Threads that insert durable observations into the indexes; spaces are partitioned
    /// over them. Default: one per core.
    #[arg(long, env = "ENGRAM_INDEX_WORKERS", default_value_t = engram::ingest::workers::default_workers(), value_parser = clap::value_parser!(u16).range(1..=1024).map(usize::from))]
    pub index_workers: usize,
    /// Threads the inserts of one batch are spread over, so that a single busy space
    /// can use several cores. Default: one per core. With `--index-workers 1` and 1 here
    /// the index uses at most one core and leaves the rest to ingest: the low-latency
    /// profile of docs/operations/streaming-tuning.md.
    #[arg(long, env = "ENGRAM_INDEX_INSERT_THREADS", default_value_t = engram::ingest::workers::default_workers(), value_parser = clap::value_parser!(u16).range(1..=1024).map(usize::from))]
    pub index_insert_threads: usize,
    /// The nice value (0-19) of the index threads. Above the threads that acknowledge
    /// observations and answer recalls (0), so indexing yields the cores to them and takes
    /// what they leave; 0 gives indexing an equal share.
    #[arg(long, env = "ENGRAM_INDEX_NICE", default_value_t = engram::ingest::priority::INDEX_NICE_DEFAULT, value_parser = clap::value_parser!(i32).range(0..=19))]
    pub index_nice: i32,
    /// The time slice in ms (0-100) the index threads ask of the scheduler at
    /// `--index-nice` (Linux 6.12 and later; older kernels ignore it). A thread waking
    /// with a shorter slice preempts them at once, so the long default lets the
    /// committer, the tokio workers and the kernel's writeback run as soon as they wake.
    /// 0: the kernel's default slice.
    #[arg(long, env = "ENGRAM_INDEX_SLICE_MS", default_value_t = engram::ingest::priority::INDEX_SLICE.as_millis() as u64, value_parser = clap::value_parser!(u64).range(0..=100))]
    pub index_slice_ms: u64,
    /// While the index keeps up (its lag under half of `--index-lag-max`), run the inserts
    /// under SCHED_IDLE: only on cores nothing else wants. Once it falls further behind,
    /// at `--index-nice`. For throughput: at full speed ingest acked about 20% more, but
    /// the ack tail at 50K/s grew (syncs waited longer for writeback), so it is off by
    /// default.
    #[arg(long, env = "ENGRAM_INDEX_YIELD", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub index_yield: bool,
    /// Run the index threads under SCHED_IDLE instead (`--index-nice` is then unused):
    /// they run only on cores nothing else wants, and a waking ingest or recall thread
    /// preempts them at once. For a machine engram has to itself: any other busy process
    /// stops indexing, and past the index lag bound ingest with it.
    #[arg(long, env = "ENGRAM_INDEX_SCHED_IDLE", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub index_sched_idle: bool,
    /// While observations keep arriving (one acknowledged within the last MS, 0-1000) at
    /// over twice the rate the index inserts them, and the index lag is under half of
    /// `--index-lag-max`, the index waits, so ingest has every core: inserting then would
    /// not keep up anyway. It catches up once the stream pauses for MS or falls half the
    /// bound behind. A slower stream is indexed as it arrives. 0: index as records become
    /// durable, whatever the pace.
    #[arg(long, env = "ENGRAM_INDEX_DEFER_MS", default_value_t = engram::ingest::workers::INDEX_DEFER_DEFAULT.as_millis() as u64, value_parser = clap::value_parser!(u64).range(0..=1000))]
    pub index_defer_ms: u64,
    /// HNSW links per node (M); the bottom layer keeps twice as many.
    #[arg(long, env = "ENGRAM_HNSW_M", default_value_t = engram::index::M_DEFAULT, value_parser = clap::value_parser!(u16).range(2..=256).map(usize::from))]
    pub hnsw_m: usize,
    /// HNSW candidate list while inserting (ef_construction).
    #[arg(long, env = "ENGRAM_HNSW_EF_CONSTRUCTION", default_value_t = engram::index::EF_CONSTRUCTION_DEFAULT, value_parser = clap::value_parser!(u16).range(1..=4096).map(usize::from))]
    pub hnsw_ef_construction: usize,
    /// HNSW candidate list while searching (ef_search); a recall may ask for more.
    #[arg(long, env = "ENGRAM_HNSW_EF_SEARCH", default_value_t = engram::index::EF_SEARCH_DEFAULT, value_parser = clap::value_parser!(u16).range(1..=4096).map(usize::from))]
    pub hnsw_ef_search: usize,
    /// Spaces holding at most this many indexed observations are searched exactly (every
    /// vector compared) instead of through the graph; 0 never. Up to about a thousand
    /// 384-d vectors the scan is as fast as the walk, and it always finds the true best.
    #[arg(long, env = "ENGRAM_EXACT_SEARCH_MAX", default_value_t = engram::index::EXACT_SEARCH_MAX_DEFAULT, value_parser = clap::value_parser!(u32).range(0..=100_000).map(|n| n as usize))]
    pub exact_search_max: usize,
    /// How the graphs store vectors: f16 (half the memory, scores within about 1e-3) or
    /// f32 (exact).
    #[arg(
        long,
        env = "ENGRAM_INDEX_QUANTIZATION",
        value_enum,
        default_value = "f16"
    )]
    pub index_quantization: engram::index::Quantization,
    /// Inserts by one index worker between checkpoints of its spaces (0: not by count).
    /// A checkpoint lets a restart replay only the log after it, and the log drop what
    /// the checkpoints cover.
    #[arg(long, env = "ENGRAM_CHECKPOINT_RECORDS", default_value_t = engram::ingest::checkpointer::CHECKPOINT_RECORDS_DEFAULT)]
    pub checkpoint_records: u64,
    /// Seconds between a worker's checkpoints when anything was inserted (0: not by time).
    #[arg(long, env = "ENGRAM_CHECKPOINT_INTERVAL_S", default_value_t = engram::ingest::checkpointer::CHECKPOINT_INTERVAL_DEFAULT.as_secs())]
    pub checkpoint_interval_s: u64,
    /// Spaces that get their own `space` label in /metrics; later ones are counted
    /// together under `space="_other"`, so that the series stay bounded.
    #[arg(long, env = "ENGRAM_METRICS_SPACES_MAX", default_value_t = engram::metrics::SPACE_LABELS_MAX_DEFAULT)]
    pub metrics_spaces_max: usize,
    /// Record per-observation metrics (counts, latencies, fsync times). Off only to
    /// measure what recording costs (scripts/bench-metrics-overhead.sh).
    #[arg(long, env = "ENGRAM_METRICS_RECORDING", default_value_t = true, action = clap::ArgAction::Set)]
    pub metrics_recording: bool,
    /// Milliseconds between the heartbeats the WebSocket gateway (/v1/stream) sends every
    /// session; a browser that hears none for two intervals reconnects.
    #[arg(long, env = "ENGRAM_WS_HEARTBEAT_MS", default_value_t = engram::transport::websocket::HEARTBEAT_DEFAULT.as_millis() as u64, value_parser = clap::value_parser!(u64).range(1..))]
    pub ws_heartbeat_ms: u64,
    /// A TOML file of tokens and the spaces each may read or write (docs/security.md).
    /// Without one, every client may do everything, and the server refuses to listen
    /// anywhere but on loopback.
    #[arg(long, env = "ENGRAM_AUTH_FILE")]
    pub auth_file: Option<PathBuf>,
    /// QUIC connections held at once; past it a new one is refused.
    #[arg(long, env = "ENGRAM_CONNECTIONS_MAX", default_value_t = engram::transport::quic::CONNECTIONS_MAX_DEFAULT, value_parser = clap::value_parser!(u32).range(1..).map(|v| v as usize))]
    pub connections_max: usize,
    /// Sessions open at once over QUIC and WebSocket together; past it a new one gets
    /// Error LimitReached.
    #[arg(long, env = "ENGRAM_SESSIONS_MAX", default_value_t = engram::transport::session::SESSIONS_MAX_DEFAULT, value_parser = clap::value_parser!(u32).range(1..).map(|v| v as usize))]
    pub sessions_max: usize,
    /// Sessions (streams) one QUIC connection may have open at once.
    #[arg(long, env = "ENGRAM_STREAMS_PER_CONNECTION_MAX", default_value_t = engram::transport::endpoint::STREAMS_PER_CONNECTION_MAX_DEFAULT, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub streams_per_connection_max: u32,
    /// Milliseconds a new session has to send Hello before it is closed.
    #[arg(long, env = "ENGRAM_HELLO_TIMEOUT_MS", default_value_t = engram::transport::session::HELLO_TIMEOUT_DEFAULT.as_millis() as u64, value_parser = clap::value_parser!(u64).range(1..))]
    pub hello_timeout_ms: u64,
    /// A certificate (DER or PEM) for TLS on --http-addr: https and wss.
    #[arg(long, env = "ENGRAM_HTTP_TLS_CERT", requires = "http_tls_key")]
    pub http_tls_cert: Option<PathBuf>,
    /// The key of --http-tls-cert (DER PKCS#8 or PEM).
    #[arg(long, env = "ENGRAM_HTTP_TLS_KEY", requires = "http_tls_cert")]
    pub http_tls_key: Option<PathBuf>,
    /// Observations a session hands to the log in one batch at most (what already arrived,
    /// up to this many): larger batches share a sync and its overhead, smaller ones start
    /// their sync sooner.
    #[arg(long, env = "ENGRAM_INGEST_BATCH_MAX", default_value_t = engram::transport::session::BATCH_OBSERVATIONS_MAX_DEFAULT, value_parser = clap::value_parser!(u32).range(1..=65536).map(|v| v as usize))]
    pub ingest_batch_max: usize,
    /// Serve GET /metrics here (and no longer on --http-addr), without a token: an
    /// address kept to the monitoring network.
    #[arg(long, env = "ENGRAM_METRICS_ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Milliseconds a QUIC connection may send nothing (not even a keep-alive) before it
    /// is closed.
    #[arg(long, env = "ENGRAM_IDLE_TIMEOUT_MS", default_value_t = engram::transport::endpoint::IDLE_TIMEOUT_DEFAULT.as_millis() as u64, value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub idle_timeout_ms: u64,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum RecoveryModeArg {
    TolerateTornTail,
    AbsoluteConsistency,
    SalvageBeforeCorruption,
}

impl From<RecoveryModeArg> for RecoveryMode {
    fn from(arg: RecoveryModeArg) -> RecoveryMode {
        match arg {
            RecoveryModeArg::TolerateTornTail => RecoveryMode::TolerateTornTail,
            RecoveryModeArg::AbsoluteConsistency => RecoveryMode::AbsoluteConsistency,
            RecoveryModeArg::SalvageBeforeCorruption => RecoveryMode::SalvageBeforeCorruption,
        }
    }
}

/// `--config FILE`: every serve setting, in TOML. Unknown keys are an error, so a typo
/// never silently leaves a default in place.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    data_dir: Option<PathBuf>,
    quic_addr: Option<std::net::SocketAddr>,
    http_addr: Option<std::net::SocketAddr>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    inflight_bytes_max: Option<u32>,
    quic_udp_payload_max: Option<u16>,
    queue_bytes_max: Option<u64>,
    spaces_max: Option<u32>,
    index_lag_max: Option<u64>,
    wal_segment_bytes: Option<u64>,
    wal_commit_window_us: Option<u64>,
    wal_commit_bytes_max: Option<u64>,
    wal_recovery_mode: Option<String>,
    index_workers: Option<usize>,
    index_insert_threads: Option<usize>,
    index_nice: Option<i32>,
    index_slice_ms: Option<u64>,
    index_sched_idle: Option<bool>,
    index_yield: Option<bool>,
    index_defer_ms: Option<u64>,
    hnsw_m: Option<usize>,
    hnsw_ef_construction: Option<usize>,
    hnsw_ef_search: Option<usize>,
    exact_search_max: Option<usize>,
    index_quantization: Option<engram::index::Quantization>,
    checkpoint_records: Option<u64>,
    checkpoint_interval_s: Option<u64>,
    metrics_spaces_max: Option<usize>,
    metrics_recording: Option<bool>,
    ws_heartbeat_ms: Option<u64>,
    auth_file: Option<PathBuf>,
    connections_max: Option<usize>,
    sessions_max: Option<usize>,
    streams_per_connection_max: Option<u32>,
    hello_timeout_ms: Option<u64>,
    idle_timeout_ms: Option<u64>,
    metrics_addr: Option<std::net::SocketAddr>,
    ingest_batch_max: Option<usize>,
    http_tls_cert: Option<PathBuf>,
    http_tls_key: Option<PathBuf>,
}

/// Fills every setting that came from neither the command line nor the environment from
/// the config file, if one is given.
pub fn apply_config_file(args: &mut ServeArgs, given: &clap::ArgMatches) -> anyhow::Result<()> {
    use clap::parser::ValueSource;
    let Some(path) = args.config.clone() else {
        return Ok(());
    };
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let file: ConfigFile =
        toml::from_str(&text).with_context(|| format!("in {}", path.display()))?;
    let from_file = |id: &str| {
        !matches!(
            given.value_source(id),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        )
    };
    macro_rules! fill {
        ($field:ident, $convert:expr) => {
            if let Some(value) = file.$field {
                if from_file(stringify!($field)) {
                    args.$field = $convert(value)?;
                }
            }
        };
    }
    fill!(data_dir, anyhow::Ok);
    fill!(quic_addr, anyhow::Ok);
    fill!(http_addr, anyhow::Ok);
    fill!(tls_cert, |v| anyhow::Ok(Some(v)));
    fill!(tls_key, |v| anyhow::Ok(Some(v)));
    fill!(inflight_bytes_max, anyhow::Ok);
    fill!(quic_udp_payload_max, anyhow::Ok);
    fill!(queue_bytes_max, anyhow::Ok);
    fill!(spaces_max, anyhow::Ok);
    fill!(index_lag_max, anyhow::Ok);
    fill!(wal_segment_bytes, anyhow::Ok);
    fill!(wal_commit_window_us, anyhow::Ok);
    fill!(wal_commit_bytes_max, anyhow::Ok);
    fill!(index_workers, anyhow::Ok);
    fill!(index_insert_threads, anyhow::Ok);
    fill!(index_nice, anyhow::Ok);
    fill!(index_slice_ms, anyhow::Ok);
    fill!(index_sched_idle, anyhow::Ok);
    fill!(index_yield, anyhow::Ok);
    fill!(index_defer_ms, anyhow::Ok);
    fill!(hnsw_m, anyhow::Ok);
    fill!(hnsw_ef_construction, anyhow::Ok);
    fill!(hnsw_ef_search, anyhow::Ok);
    fill!(exact_search_max, anyhow::Ok);
    fill!(index_quantization, anyhow::Ok);
    fill!(checkpoint_records, anyhow::Ok);
    fill!(checkpoint_interval_s, anyhow::Ok);
    fill!(metrics_spaces_max, anyhow::Ok);
    fill!(metrics_recording, anyhow::Ok);
    fill!(ws_heartbeat_ms, anyhow::Ok);
    fill!(auth_file, |v| anyhow::Ok(Some(v)));
    fill!(connections_max, anyhow::Ok);
    fill!(sessions_max, anyhow::Ok);
    fill!(streams_per_connection_max, anyhow::Ok);
    fill!(hello_timeout_ms, anyhow::Ok);
    fill!(idle_timeout_ms, anyhow::Ok);
    fill!(metrics_addr, |v| anyhow::Ok(Some(v)));
    fill!(ingest_batch_max, anyhow::Ok);
    fill!(http_tls_cert, |v| anyhow::Ok(Some(v)));
    fill!(http_tls_key, |v| anyhow::Ok(Some(v)));
    fill!(wal_recovery_mode, |v: String| {
        <RecoveryModeArg as clap::ValueEnum>::from_str(&v.replace('_', "-"), false)
            .map_err(|e| anyhow::anyhow!("wal_recovery_mode in {}: {e}", path.display()))
    });
    tracing::info!(config = %path.display(), "read settings from the config file");
    Ok(())
}
