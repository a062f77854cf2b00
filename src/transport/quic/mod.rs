//! The QUIC server: one task per connection, one session per bidirectional stream
//! (transport/session runs each).

use std::future::Future;
use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::Instrument;

use super::session::{run_session, SessionTable};
use crate::ingest::Engine;

/// Connections the server holds at once unless configured.
pub const CONNECTIONS_MAX_DEFAULT: usize = 1024;

/// Serves sessions on `endpoint` until `shutdown` completes, then stops accepting, lets
/// every session acknowledge what it has read, and returns. Past `connections_max` open
/// connections a new one is refused (the client sees CONNECTION_REFUSED).
pub async fn serve(
    endpoint: quinn::Endpoint,
    engine: Arc<Engine>,
    sessions: Arc<SessionTable>,
    connections_max: usize,
    shutdown: impl Future<Output = ()>,
) {
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                while connections.try_join_next().is_some() {}
                if connections.len() >= connections_max {
                    crate::metrics::metrics().limit_hits.with_label_values(&["connections"]).inc();
                    tracing::warn!(remote = %incoming.remote_address(), connections_max,
                        "a connection was refused: the server holds connections_max");
                    incoming.refuse();
                    continue;
                }
                let (engine, sessions, stop) = (engine.clone(), sessions.clone(), stop_rx.clone());
                let remote = incoming.remote_address();
                connections.spawn(async move {
                    match incoming.await {
                        Ok(conn) => serve_connection(conn, engine, sessions, stop).await,
                        Err(e) => tracing::debug!(error = %e, "handshake failed"),
                    }
                }.instrument(tracing::info_span!("connection", %remote)));
            }
            () = &mut shutdown => break,
        }
    }
    endpoint.set_server_config(None);
    let _ = stop_tx.send(true);
    while connections.join_next().await.is_some() {}
    endpoint.close(0u32.into(), b"shutdown");
    endpoint.wait_idle().await;
}

async fn serve_connection(
    conn: quinn::Connection,
    engine: Arc<Engine>,
    sessions: Arc<SessionTable>,
    stop: watch::Receiver<bool>,
) {
    let mut streams = JoinSet::new();
    let mut stopping = stop.clone();
    // A connection that opens no session does not hold its place for ever, even if its
    // keep-alives keep it from idling out.
    let hello_timeout = sessions.limits().hello_timeout;
    let first = tokio::select! {
        first = tokio::time::timeout(hello_timeout, conn.accept_bi()) => first,
        _ = stopping.wait_for(|s| *s) => return,
    };
    let mut first = match first {
        Ok(stream) => Some(stream),
        Err(_) => {
            crate::metrics::metrics()
                .limit_hits
                .with_label_values(&["hello_timeout"])
                .inc();
            conn.close(
                CLOSE_NO_SESSION.into(),
                b"no session opened within hello_timeout",
            );
            return;
        }
    };
    loop {
        let stream = match first.take() {
            Some(stream) => stream,
            None => tokio::select! {
                stream = conn.accept_bi() => stream,
                _ = stopping.wait_for(|s| *s) => break,
            },
        };
        match stream {
            Ok((send, recv)) => {
                let (engine, sessions, stop) = (engine.clone(), sessions.clone(), stop.clone());
                streams.spawn(async move {
                    if let Err(e) = run_session(engine, sessions, send, recv, stop).await {
                        tracing::debug!(error = %e, "session ended with an error");
                    }
                });
            }
            // A closed connection is the normal end.
            Err(_) => break,
        }
    }
    while streams.join_next().await.is_some() {}
}

/// The application close code of a connection that opened no session in time.
pub const CLOSE_NO_SESSION: u32 = 1;
