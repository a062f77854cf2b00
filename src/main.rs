//! `engram`: the server, and (with the rest of the serve issue) the client CLI.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::builder::TypedValueParser;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use std::sync::Arc;

mod cli;

use engram::index::IndexParams;
use engram::ingest::{Engine, IndexConfig, IngestLimits};
use engram::transport::http::Readiness;
use engram::transport::tls::ServerIdentity;
use engram::wal::{RecoveryMode, WalConfig};

/// glibc's allocator showed as a tenth of the QUIC path's CPU (malloc, free, consolidation
/// across threads); mimalloc's thread-local pages cost less for many small short-lived
/// allocations. docs/performance.md has the figures.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "engram", version, about = "A durable streaming memory server")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server: recover the log, then serve QUIC until SIGTERM or ctrl-c.
    Serve(ServeArgs),
    /// Stream observations from a JSON-lines file (`-` for stdin) to a server. Each line:
    /// {"id": "...", "embedding": [...], "what": "...", "confidence": 0.9, "when_unix_ns": 0};
    /// all but id and embedding are optional. Exits 1 if the server refused any.
    Observe(cli::observe::ObserveArgs),
    /// List the server's spaces: dimension, observations stored, newest LSN.
    Spaces(cli::spaces::SpacesArgs),
    /// Check that every id in a file (one per line, as `engram-load --ids-out` writes) is
    /// stored in a space. Exits 1 if any is missing.
    Check(cli::check::CheckArgs),
    /// Define a space before its first observation: its dimension and metric. Otherwise a
    /// space takes the dimension of its first observation and the cosine metric.
    CreateSpace(cli::create_space::CreateSpaceArgs),
    /// The k observations of a space nearest to a vector, or to a stored observation's own
    /// embedding (--id). Exits 1 if the server refuses the query.
    Recall(cli::recall::RecallArgs),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// A TOML file with any of these settings, named as the flags with `_` for `-`
    /// (`data_dir = "/var/lib/engram"`). A flag or its environment variable wins over the file.
    #[arg(long, env = "ENGRAM_CONFIG")]
    config: Option<PathBuf>,
    /// Where the log (and later the indexes) live.
    #[arg(long, env = "ENGRAM_DATA_DIR", default_value = "./engram-data")]
    data_dir: PathBuf,
    /// Where QUIC clients connect (ALPN engram/1). Port 0 picks a free port (logged).
    #[arg(long, env = "ENGRAM_QUIC_ADDR", default_value = "127.0.0.1:7400")]
    quic_addr: std::net::SocketAddr,
    /// Where GET /health and GET /ready answer. Port 0 picks a free port (logged).
    #[arg(long, env = "ENGRAM_HTTP_ADDR", default_value = "127.0.0.1:7480")]
    http_addr: std::net::SocketAddr,
    /// Observation bytes all sessions together may have unacknowledged. Past 50% clients
    /// are told Warning; past 75% sessions stop reading (Critical); a batch that would
    /// pass 100% is refused with the retryable Overloaded and a retry hint.
    #[arg(long, env = "ENGRAM_QUEUE_BYTES_MAX", default_value_t = engram::ingest::load::QUEUE_BYTES_MAX_DEFAULT)]
    queue_bytes_max: u64,
    /// Spaces the server keeps at most; an observation for one more is refused.
    #[arg(long, env = "ENGRAM_SPACES_MAX", default_value_t = engram::ingest::limits::SPACES_MAX_DEFAULT)]
    spaces_max: u32,
    /// Records durable but not yet indexed, at most. Past 50% clients are told Warning;
    /// past 75% sessions stop reading; at the bound batches are refused as Overloaded.
    /// A read-your-writes recall scans these records, so the bound also bounds its cost.
    #[arg(long, env = "ENGRAM_INDEX_LAG_MAX", default_value_t = engram::ingest::load::INDEX_LAG_MAX_DEFAULT, value_parser = clap::value_parser!(u64).range(1..))]
    index_lag_max: u64,
    /// Largest UDP payload path MTU discovery may raise QUIC packets to (1200-65527).
    /// Fewer, larger packets cost less per byte where the path carries them.
    #[arg(long, env = "ENGRAM_QUIC_UDP_PAYLOAD_MAX", default_value_t = engram::transport::endpoint::UDP_PAYLOAD_MAX_DEFAULT)]
    quic_udp_payload_max: u16,
    /// Bytes of Observe frames a session may have unacknowledged (its credits, announced in
    /// Welcome). Past them the server stops reading that session until acks free some.
    #[arg(long, env = "ENGRAM_INFLIGHT_BYTES_MAX", default_value_t = engram::ingest::limits::INFLIGHT_BYTES_MAX_DEFAULT)]
    inflight_bytes_max: u32,
    /// A TLS certificate (DER or PEM). Without one, a self-signed certificate is made once
    /// in DATA_DIR/tls/ and its SHA-256 fingerprint logged.
    #[arg(long, env = "ENGRAM_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The certificate's private key (DER PKCS#8 or PEM).
    #[arg(long, env = "ENGRAM_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Size every WAL segment is preallocated to.
    #[arg(long, env = "ENGRAM_WAL_SEGMENT_BYTES", default_value_t = engram::wal::SEGMENT_BYTES_DEFAULT)]
    wal_segment_bytes: u64,
    /// Microseconds the committer waits for more appends to share a sync (0: none).
    #[arg(long, env = "ENGRAM_WAL_COMMIT_WINDOW_US", default_value_t = 0)]
    wal_commit_window_us: u64,
    /// Most bytes written between two syncs.
    #[arg(long, env = "ENGRAM_WAL_COMMIT_BYTES_MAX", default_value_t = engram::wal::COMMIT_BYTES_MAX_DEFAULT)]
    wal_commit_bytes_max: u64,
    /// What recovery does with damage: tolerate-torn-tail, absolute-consistency, or
    /// salvage-before-corruption (operator's choice: drops acknowledged records).
    #[arg(
        long,
        env = "ENGRAM_WAL_RECOVERY_MODE",
        value_enum,
        default_value = "tolerate-torn-tail"
    )]
    wal_recovery_mode: RecoveryModeArg,
    /// Threads that insert durable observations into the indexes; spaces are partitioned
    /// over them. Default: one per core.
    #[arg(long, env = "ENGRAM_INDEX_WORKERS", default_value_t = engram::ingest::workers::default_workers(), value_parser = clap::value_parser!(u16).range(1..=1024).map(usize::from))]
    index_workers: usize,
    /// HNSW links per node (M); the bottom layer keeps twice as many.
    #[arg(long, env = "ENGRAM_HNSW_M", default_value_t = engram::index::M_DEFAULT, value_parser = clap::value_parser!(u16).range(2..=256).map(usize::from))]
    hnsw_m: usize,
    /// HNSW candidate list while inserting (ef_construction).
    #[arg(long, env = "ENGRAM_HNSW_EF_CONSTRUCTION", default_value_t = engram::index::EF_CONSTRUCTION_DEFAULT, value_parser = clap::value_parser!(u16).range(1..=4096).map(usize::from))]
    hnsw_ef_construction: usize,
    /// HNSW candidate list while searching (ef_search); a recall may ask for more.
    #[arg(long, env = "ENGRAM_HNSW_EF_SEARCH", default_value_t = engram::index::EF_SEARCH_DEFAULT, value_parser = clap::value_parser!(u16).range(1..=4096).map(usize::from))]
    hnsw_ef_search: usize,
    /// How the graphs store vectors: f16 (half the memory, scores within about 1e-3) or
    /// f32 (exact).
    #[arg(
        long,
        env = "ENGRAM_INDEX_QUANTIZATION",
        value_enum,
        default_value = "f16"
    )]
    index_quantization: engram::index::Quantization,
    /// Inserts by one index worker between checkpoints of its spaces (0: not by count).
    /// A checkpoint lets a restart replay only the log after it, and the log drop what
    /// the checkpoints cover.
    #[arg(long, env = "ENGRAM_CHECKPOINT_RECORDS", default_value_t = engram::ingest::checkpointer::CHECKPOINT_RECORDS_DEFAULT)]
    checkpoint_records: u64,
    /// Seconds between a worker's checkpoints when anything was inserted (0: not by time).
    #[arg(long, env = "ENGRAM_CHECKPOINT_INTERVAL_S", default_value_t = engram::ingest::checkpointer::CHECKPOINT_INTERVAL_DEFAULT.as_secs())]
    checkpoint_interval_s: u64,
    /// Spaces that get their own `space` label in /metrics; later ones are counted
    /// together under `space="_other"`, so that the series stay bounded.
    #[arg(long, env = "ENGRAM_METRICS_SPACES_MAX", default_value_t = engram::metrics::SPACE_LABELS_MAX_DEFAULT)]
    metrics_spaces_max: usize,
    /// Record per-observation metrics (counts, latencies, fsync times). Off only to
    /// measure what recording costs (scripts/bench-metrics-overhead.sh).
    #[arg(long, env = "ENGRAM_METRICS_RECORDING", default_value_t = true, action = clap::ArgAction::Set)]
    metrics_recording: bool,
    /// Milliseconds between the heartbeats the WebSocket gateway (/v1/stream) sends every
    /// session; a browser that hears none for two intervals reconnects.
    #[arg(long, env = "ENGRAM_WS_HEARTBEAT_MS", default_value_t = engram::transport::websocket::HEARTBEAT_DEFAULT.as_millis() as u64, value_parser = clap::value_parser!(u64).range(1..))]
    ws_heartbeat_ms: u64,
    /// A TOML file of tokens and the spaces each may read or write (docs/security.md).
    /// Without one, every client may do everything, and the server refuses to listen
    /// anywhere but on loopback.
    #[arg(long, env = "ENGRAM_AUTH_FILE")]
    auth_file: Option<PathBuf>,
    /// QUIC connections held at once; past it a new one is refused.
    #[arg(long, env = "ENGRAM_CONNECTIONS_MAX", default_value_t = engram::transport::quic::CONNECTIONS_MAX_DEFAULT, value_parser = clap::value_parser!(u32).range(1..).map(|v| v as usize))]
    connections_max: usize,
    /// Sessions open at once over QUIC and WebSocket together; past it a new one gets
    /// Error LimitReached.
    #[arg(long, env = "ENGRAM_SESSIONS_MAX", default_value_t = engram::transport::session::SESSIONS_MAX_DEFAULT, value_parser = clap::value_parser!(u32).range(1..).map(|v| v as usize))]
    sessions_max: usize,
    /// Sessions (streams) one QUIC connection may have open at once.
    #[arg(long, env = "ENGRAM_STREAMS_PER_CONNECTION_MAX", default_value_t = engram::transport::endpoint::STREAMS_PER_CONNECTION_MAX_DEFAULT, value_parser = clap::value_parser!(u32).range(1..=1024))]
    streams_per_connection_max: u32,
    /// Milliseconds a new session has to send Hello before it is closed.
    #[arg(long, env = "ENGRAM_HELLO_TIMEOUT_MS", default_value_t = engram::transport::session::HELLO_TIMEOUT_DEFAULT.as_millis() as u64, value_parser = clap::value_parser!(u64).range(1..))]
    hello_timeout_ms: u64,
    /// A certificate (DER or PEM) for TLS on --http-addr: https and wss.
    #[arg(long, env = "ENGRAM_HTTP_TLS_CERT", requires = "http_tls_key")]
    http_tls_cert: Option<PathBuf>,
    /// The key of --http-tls-cert (DER PKCS#8 or PEM).
    #[arg(long, env = "ENGRAM_HTTP_TLS_KEY", requires = "http_tls_cert")]
    http_tls_key: Option<PathBuf>,
    /// Serve GET /metrics here (and no longer on --http-addr), without a token: an
    /// address kept to the monitoring network.
    #[arg(long, env = "ENGRAM_METRICS_ADDR")]
    metrics_addr: Option<std::net::SocketAddr>,
    /// Milliseconds a QUIC connection may send nothing (not even a keep-alive) before it
    /// is closed.
    #[arg(long, env = "ENGRAM_IDLE_TIMEOUT_MS", default_value_t = engram::transport::endpoint::IDLE_TIMEOUT_DEFAULT.as_millis() as u64, value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    idle_timeout_ms: u64,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum RecoveryModeArg {
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

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let matches = Cli::command().get_matches();
    match Cli::from_arg_matches(&matches)?.command {
        Command::Observe(args) => cli::observe::run(args),
        Command::Spaces(args) => cli::spaces::run(args),
        Command::Check(args) => cli::check::run(args),
        Command::CreateSpace(args) => cli::create_space::run(args),
        Command::Recall(args) => cli::recall::run(args),
        Command::Serve(mut args) => {
            let given = matches
                .subcommand_matches("serve")
                .expect("the serve subcommand");
            apply_config_file(&mut args, given)?;
            serve(args)
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
    hnsw_m: Option<usize>,
    hnsw_ef_construction: Option<usize>,
    hnsw_ef_search: Option<usize>,
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
    http_tls_cert: Option<PathBuf>,
    http_tls_key: Option<PathBuf>,
}

/// Fills every setting that came from neither the command line nor the environment from
/// the config file, if one is given.
fn apply_config_file(args: &mut ServeArgs, given: &clap::ArgMatches) -> anyhow::Result<()> {
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
    fill!(hnsw_m, anyhow::Ok);
    fill!(hnsw_ef_construction, anyhow::Ok);
    fill!(hnsw_ef_search, anyhow::Ok);
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
    fill!(http_tls_cert, |v| anyhow::Ok(Some(v)));
    fill!(http_tls_key, |v| anyhow::Ok(Some(v)));
    fill!(wal_recovery_mode, |v: String| {
        <RecoveryModeArg as clap::ValueEnum>::from_str(&v.replace('_', "-"), false)
            .map_err(|e| anyhow::anyhow!("wal_recovery_mode in {}: {e}", path.display()))
    });
    tracing::info!(config = %path.display(), "read settings from the config file");
    Ok(())
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = WalConfig {
        segment_bytes: args.wal_segment_bytes,
        commit_window: Duration::from_micros(args.wal_commit_window_us),
        commit_bytes_max: args.wal_commit_bytes_max,
        recovery_mode: args.wal_recovery_mode.into(),
        ..WalConfig::default()
    };
    let identity = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => ServerIdentity::from_files(cert, key)?,
        _ => ServerIdentity::load_or_generate(&args.data_dir)?,
    };
    let quic_secret = engram::transport::endpoint::QuicSecret::load_or_generate(&args.data_dir)?;
    let auth = Arc::new(authenticator(&args)?);
    let limits = IngestLimits {
        inflight_bytes_max: args.inflight_bytes_max,
        queue_bytes_max: args.queue_bytes_max,
        spaces_max: args.spaces_max,
        index_lag_max: args.index_lag_max.max(1),
        ..IngestLimits::default()
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    // HTTP first, so that /ready says "recovering" while the log is being recovered.
    let readiness = Readiness::default();
    let http = runtime
        .block_on(tokio::net::TcpListener::bind(args.http_addr))
        .with_context(|| format!("binding HTTP to {}", args.http_addr))?;
    let http_addr = http.local_addr()?;
    // One table for both transports: a session's resume token works on either.
    let sessions = Arc::new(engram::transport::session::SessionTable::new(
        auth.clone(),
        engram::transport::session::SessionLimits {
            sessions_max: args.sessions_max,
            hello_timeout: Duration::from_millis(args.hello_timeout_ms),
        },
    ));
    let (ws_stop, ws_stopping) = tokio::sync::watch::channel(false);
    let gateway = engram::transport::websocket::Gateway::new(
        sessions.clone(),
        ws_stopping,
        Duration::from_millis(args.ws_heartbeat_ms.max(1)),
    );
    let router = engram::transport::http::router(
        readiness.clone(),
        gateway.clone(),
        auth,
        args.metrics_addr.is_none(),
    );
    if let Some(metrics_addr) = args.metrics_addr {
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind(metrics_addr))
            .with_context(|| format!("binding /metrics to {metrics_addr}"))?;
        tracing::info!(metrics_addr = %listener.local_addr()?, "GET /metrics is served here only");
        let metrics_router = engram::transport::http::metrics_router(readiness.clone());
        runtime.spawn(async move {
            if let Err(e) = axum::serve(listener, metrics_router).await {
                tracing::error!(error = %e, "the metrics server stopped");
            }
        });
    }
    match (&args.http_tls_cert, &args.http_tls_key) {
        (Some(cert), Some(key)) => {
            let config = ServerIdentity::from_files(cert, key)?.https_server_config()?;
            let listener = {
                let _entered = runtime.enter();
                engram::transport::https::TlsListener::new(
                    http,
                    config,
                    Duration::from_millis(args.hello_timeout_ms),
                )?
            };
            tracing::info!(cert = %cert.display(), "HTTP and WebSocket are served over TLS (https, wss)");
            runtime.spawn(async move {
                if let Err(e) = axum::serve(listener, router).await {
                    tracing::error!(error = %e, "the HTTPS server stopped");
                }
            });
        }
        _ => {
            runtime.spawn(async move {
                if let Err(e) = axum::serve(http, router).await {
                    tracing::error!(error = %e, "the HTTP server stopped");
                }
            });
        }
    }
    anyhow::ensure!(
        (1..=1024).contains(&args.index_workers)
            && (2..=256).contains(&args.hnsw_m)
            && (1..=4096).contains(&args.hnsw_ef_construction)
            && (1..=4096).contains(&args.hnsw_ef_search),
        "index settings out of range: index_workers 1..=1024, hnsw_m 2..=256, \
         hnsw_ef_construction and hnsw_ef_search 1..=4096"
    );
    let index = IndexConfig {
        workers: args.index_workers.max(1),
        params: IndexParams {
            m: args.hnsw_m,
            ef_construction: args.hnsw_ef_construction,
            ef_search: args.hnsw_ef_search,
            quantization: args.index_quantization,
        },
        checkpoint_records: args.checkpoint_records,
        checkpoint_interval: Duration::from_secs(args.checkpoint_interval_s),
    };
    let metrics = engram::metrics::metrics();
    metrics.set_space_labels_max(args.metrics_spaces_max);
    engram::metrics::set_recording(args.metrics_recording);
    let opening = std::time::Instant::now();
    let engine = Engine::open_with_storage(&args.data_dir, config, log_storage(), limits, index)
        .with_context(|| format!("opening the data in {}", args.data_dir.display()))?;
    metrics
        .recovery_duration
        .set(opening.elapsed().as_secs_f64());
    let engine = Arc::new(engine);
    readiness.set(&engine);
    runtime.block_on(async {
        // Signal handlers go in before the server says it is up, so that a SIGTERM sent
        // as soon as it is up is a graceful shutdown, not the default kill.
        let shutdown = ShutdownSignal::install()?;
        let tuning = engram::transport::endpoint::QuicTuning {
            udp_payload_max: args.quic_udp_payload_max,
            ..Default::default()
        };
        let endpoint = tuning
            .server(
                args.quic_addr,
                identity.quic_server_config()?,
                Some(&quic_secret),
                &engram::transport::endpoint::ConnectionLimits {
                    streams_per_connection_max: args.streams_per_connection_max,
                    idle_timeout: Duration::from_millis(args.idle_timeout_ms),
                },
            )
            .with_context(|| format!("binding QUIC to {}", args.quic_addr))?;
        let report = engine.wal().recovery_report();
        tracing::info!(
            quic_addr = %endpoint.local_addr()?,
            http_addr = %http_addr,
            data_dir = %args.data_dir.display(),
            cert = %identity.cert_path.display(),
            cert_sha256 = %identity.fingerprint(),
            records = report.records,
            last_lsn = %report.last_lsn,
            recovery_ms = report.duration.as_secs_f64() * 1e3,
            "engram is up"
        );
        let shutdown = async {
            shutdown.wait().await;
            let _ = ws_stop.send(true);
        };
        engram::transport::quic::serve(
            endpoint,
            engine.clone(),
            sessions,
            args.connections_max,
            shutdown,
        )
        .await;
        gateway.drained(WS_DRAIN_TIMEOUT).await;
        anyhow::Ok(())
    })?;
    tracing::info!(
        "shutting down: every session acknowledged what it read; syncing and closing the log"
    );
    match Arc::try_unwrap(engine) {
        Ok(engine) => engine.close()?,
        // A /ready request holds it for a moment: the last holder closes the log on drop.
        Err(shared) => drop(shared),
    }
    Ok(())
}

/// The tokens of `--auth-file`; without one, open access, which is refused anywhere but
/// on loopback.
fn authenticator(args: &ServeArgs) -> anyhow::Result<engram::auth::Authenticator> {
    if let Some(path) = &args.auth_file {
        let auth = engram::auth::Authenticator::load(path)?;
        tracing::info!(auth_file = %path.display(), "clients must present a token from the auth file");
        return Ok(auth);
    }
    for (flag, addr) in [
        ("--quic-addr", args.quic_addr),
        ("--http-addr", args.http_addr),
    ] {
        anyhow::ensure!(
            addr.ip().is_loopback(),
            "{flag} {addr} is not a loopback address, and there is no --auth-file: \
             without tokens every client could read and write every space. \
             Give an --auth-file (docs/security.md) or listen on 127.0.0.1"
        );
    }
    tracing::warn!(
        "no --auth-file: every client may read and write every space; \
         listening on loopback only"
    );
    Ok(engram::auth::Authenticator::open())
}

/// How long a graceful shutdown waits for WebSocket sessions to acknowledge what they
/// read and say close.
const WS_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// The real file system; in a chaos test's server, one that fails where the test says.
fn log_storage() -> Arc<dyn engram::wal::Storage> {
    #[cfg(feature = "fault-injection")]
    if engram::chaos::storage_faults_enabled() {
        tracing::warn!("storage faults are injected (ENGRAM_FAULT_*): this is a test run");
        return Arc::new(engram::wal::fault::TriggeredStorage);
    }
    Arc::new(engram::wal::OsStorage)
}

/// SIGTERM or ctrl-c.
struct ShutdownSignal {
    term: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
}

impl ShutdownSignal {
    fn install() -> anyhow::Result<ShutdownSignal> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(ShutdownSignal {
            term: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
        })
    }

    async fn wait(mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.interrupt.recv() => {}
        }
    }
}
