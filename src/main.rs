//! `engram`: the server, and (with the rest of the serve issue) the client CLI.

use std::io::IsTerminal;
use std::time::Duration;

use anyhow::Context;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use std::sync::Arc;

mod cli;

use cli::serve_config::{apply_config_file, ServeArgs};

use engram::index::IndexParams;
use engram::ingest::priority::{IndexPriority, INDEX_SLICE_MAX};
use engram::ingest::workers::INDEX_DEFER_MAX;
use engram::ingest::{Engine, IndexConfig, IngestLimits};
use engram::transport::http::Readiness;
use engram::transport::tls::ServerIdentity;
use engram::wal::WalConfig;

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
    Serve(Box<ServeArgs>),
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
            serve(*args)
        }
    }
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
            batch_observations_max: args.ingest_batch_max,
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
            && (1..=1024).contains(&args.index_insert_threads)
            && (2..=256).contains(&args.hnsw_m)
            && (1..=4096).contains(&args.hnsw_ef_construction)
            && (1..=4096).contains(&args.hnsw_ef_search)
            && args.exact_search_max <= 100_000
            && (0..=19).contains(&args.index_nice)
            && Duration::from_millis(args.index_slice_ms) <= INDEX_SLICE_MAX
            && Duration::from_millis(args.index_defer_ms) <= INDEX_DEFER_MAX,
        "index settings out of range: index_workers and index_insert_threads 1..=1024, hnsw_m 2..=256, \
         hnsw_ef_construction and hnsw_ef_search 1..=4096, exact_search_max 0..=100000, \
         index_nice 0..=19, index_slice_ms 0..=100, index_defer_ms 0..=1000"
    );
    let index = IndexConfig {
        workers: args.index_workers.max(1),
        insert_threads: args.index_insert_threads.max(1),
        priority: if args.index_sched_idle {
            IndexPriority::Idle
        } else {
            let (nice, slice) = (args.index_nice, Duration::from_millis(args.index_slice_ms));
            if args.index_yield {
                IndexPriority::Yielding { nice, slice }
            } else {
                IndexPriority::Nice { nice, slice }
            }
        },
        params: IndexParams {
            m: args.hnsw_m,
            ef_construction: args.hnsw_ef_construction,
            ef_search: args.hnsw_ef_search,
            quantization: args.index_quantization,
            exact_search_max: args.exact_search_max,
        },
        checkpoint_records: args.checkpoint_records,
        checkpoint_interval: Duration::from_secs(args.checkpoint_interval_s),
        defer: (args.index_defer_ms > 0).then(|| Duration::from_millis(args.index_defer_ms)),
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
