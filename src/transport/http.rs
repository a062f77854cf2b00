//! HTTP: GET /health (the process is alive and its log has not failed), GET /ready
//! (recovery is done and the log accepts writes), GET /stats (the log and the indexes, as
//! JSON), GET /metrics (Prometheus) and the WebSocket gateway at /v1/stream.

use std::sync::{Arc, OnceLock, Weak};

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use super::websocket::Gateway;
use crate::auth::Authenticator;
use crate::ingest::Engine;

/// Filled in once recovery is done; until then /ready answers 503.
#[derive(Clone, Default)]
pub struct Readiness {
    // Weak: the HTTP server must not keep the engine (and its log) alive at shutdown.
    engine: Arc<OnceLock<Weak<Engine>>>,
}

impl Readiness {
    pub fn set(&self, engine: &Arc<Engine>) {
        let _ = self.engine.set(Arc::downgrade(engine));
    }
}

/// The HTTP routes. `/stats` (and `/metrics`, if `with_metrics`) need a bearer token with
/// the admin right when `auth` has tokens; /health and /ready are open.
pub fn router(
    readiness: Readiness,
    gateway: Gateway,
    auth: Arc<Authenticator>,
    with_metrics: bool,
) -> Router {
    let stream = Router::new()
        .route("/v1/stream", get(stream))
        .with_state((readiness.clone(), gateway));
    let mut admin = Router::new().route("/stats", get(stats));
    if with_metrics {
        admin = admin.route("/metrics", get(metrics));
    }
    let admin = admin
        .route_layer(axum::middleware::from_fn_with_state(auth, admin_only))
        .with_state(readiness.clone());
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .with_state(readiness)
        .merge(admin)
        .merge(stream)
}

/// Upgrades to a WebSocket session once recovery is done; 503 until then.
async fn stream(
    State((readiness, gateway)): State<(Readiness, Gateway)>,
    headers: axum::http::HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    let Some(engine) = readiness.engine.get().and_then(Weak::upgrade) else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "reason": "recovering the log" })),
        )
            .into_response();
    };
    upgrade
        .max_message_size(Gateway::message_bytes_max(&engine))
        .on_upgrade(move |socket| gateway.serve(socket, engine, bearer(&headers)))
}

/// Live, unless the log failed (a sync or write error): then 503 with the cause, so a
/// supervisor restarts the server. After such a failure it acknowledges nothing more
/// (docs/durability.md, "Storage failures").
async fn health(State(readiness): State<Readiness>) -> (StatusCode, Json<serde_json::Value>) {
    let failure = readiness
        .engine
        .get()
        .and_then(Weak::upgrade)
        .and_then(|engine| engine.wal().failure());
    match failure {
        Some(cause) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({
                "status": "failed",
                "cause": cause,
                "action": "restart the server; recovery keeps every acknowledged observation",
            })),
        ),
        None => (StatusCode::OK, Json(json!({ "status": "live" }))),
    }
}

/// Prometheus' text format. Gauges of state the engine keeps are read from it now.
async fn metrics(State(readiness): State<Readiness>) -> impl axum::response::IntoResponse {
    let metrics = crate::metrics::metrics();
    if let Some(engine) = readiness.engine.get().and_then(Weak::upgrade) {
        sample(metrics, &engine);
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        metrics.render(),
    )
}

fn sample(metrics: &crate::metrics::Metrics, engine: &Engine) {
    let load = engine.load();
    metrics.queue_depth.set(load.queued() as i64);
    metrics.backpressure_state.set(load.state() as i64);
    let wal = engine.wal();
    metrics.wal_segments.set(wal.stats().segments as i64);
    metrics.wal_failed.set(i64::from(wal.failure().is_some()));
    let indexes = engine.indexes();
    let busy: Vec<u64> = (0..indexes.workers())
        .map(|w| indexes.worker_progress(w).busy_ns())
        .collect();
    metrics.sample_worker_busy(&busy);
    // Spaces past the label bound add up under `_other`.
    let mut lag: std::collections::BTreeMap<&str, (i64, i64)> = Default::default();
    let summaries = engine.spaces().summaries();
    for summary in &summaries {
        let vectors = indexes.get(&summary.name).map_or(0, |i| i.len() as i64);
        let entry = lag.entry(metrics.space_label(&summary.name)).or_default();
        entry.0 += (summary.observations as i64 - vectors).max(0);
        entry.1 += vectors;
    }
    for (label, (behind, vectors)) in lag {
        metrics.index_lag.with_label_values(&[label]).set(behind);
        metrics
            .index_vectors
            .with_label_values(&[label])
            .set(vectors);
    }
}

async fn stats(State(readiness): State<Readiness>) -> (StatusCode, Json<serde_json::Value>) {
    let Some(engine) = readiness.engine.get().and_then(Weak::upgrade) else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "reason": "recovering the log" })),
        );
    };
    let counters = engine.index_counters();
    let indexes = engine.indexes();
    let spaces: Vec<_> = indexes
        .all()
        .iter()
        .map(|s| {
            json!({
                "space": s.name(),
                "dimension": s.dim(),
                "metric": s.metric(),
                "indexed": s.len(),
                "indexed_lsn": s.progress().indexed_lsn(),
            })
        })
        .collect();
    let workers: Vec<_> = (0..indexes.workers())
        .map(|w| indexes.worker_progress(w).indexed_lsn())
        .collect();
    let load = std::sync::atomic::Ordering::Relaxed;
    (
        StatusCode::OK,
        Json(json!({
            "wal": engine.wal().stats(),
            "load": {
                "state": format!("{:?}", engine.load().state()),
                "queued_bytes": engine.load().queued(),
                "index_lag": engine.load().index_lag(),
            },
            "index": {
                "params": indexes.params(),
                "workers_indexed_lsn": workers,
                "inserted": counters.inserted.load(load),
                "panics": counters.panics.load(load),
                "duplicates": counters.duplicates.load(load),
                "relinked": counters.relinked.load(load),
                "audits": counters.audits.load(load),
                "checkpoints_written": engine.checkpoint_counts().0,
                "checkpoints_failed": engine.checkpoint_counts().1,
                "spaces": spaces,
            },
        })),
    )
}

async fn ready(State(readiness): State<Readiness>) -> (StatusCode, Json<serde_json::Value>) {
    match readiness.engine.get().and_then(Weak::upgrade) {
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "ready": false, "reason": "recovering the log" })),
        ),
        Some(engine) => match engine.wal().failure() {
            Some(cause) => (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(
                    json!({ "ready": false, "reason": "the log failed; restart the server", "cause": cause }),
                ),
            ),
            None => (
                StatusCode::OK,
                Json(
                    json!({ "ready": true, "durable_lsn": engine.wal().durable_lsn(), "spaces": engine.spaces().len() }),
                ),
            ),
        },
    }
}

/// The token of an `Authorization: Bearer TOKEN` header, if any.
pub fn bearer(headers: &axum::http::HeaderMap) -> Option<String> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_owned())
}

/// Only GET /metrics, for `--metrics-addr`: an address the operator keeps to the
/// monitoring network, so no token is asked there.
pub fn metrics_router(readiness: Readiness) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .with_state(readiness)
}

/// Lets a request through if the server is open or its bearer token has the admin right;
/// 401 otherwise (counted, and the same answer for a missing or a wrong token).
async fn admin_only(
    State(auth): State<Arc<Authenticator>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let token = bearer(request.headers());
    let refusal = match auth.authenticate(token.as_deref()) {
        Ok(access) if access.is_admin() => return next.run(request).await,
        Ok(_) => "forbidden",
        Err(e) => e.reason(),
    };
    crate::metrics::metrics()
        .auth_failures
        .with_label_values(&[refusal])
        .inc();
    (
        StatusCode::UNAUTHORIZED,
        [(axum::http::header::WWW_AUTHENTICATE, "Bearer")],
        Json(json!({ "reason": "a bearer token with the admin right is required" })),
    )
        .into_response()
}
