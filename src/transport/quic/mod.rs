//! The QUIC server: one task per connection, one session per bidirectional stream
//! (transport/session runs each).

use std::future::Future;
use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::Instrument;

use super::session::{run_session, SessionTable};
use crate::ingest::Engine;

/// Serves sessions on `endpoint` until `shutdown` completes, then stops accepting, lets
/// every session acknowledge what it has read, and returns.
pub async fn serve(
    endpoint: quinn::Endpoint,
    engine: Arc<Engine>,
    sessions: Arc<SessionTable>,
    shutdown: impl Future<Output = ()>,
) {
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { break };
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
    loop {
        tokio::select! {
            stream = conn.accept_bi() => match stream {
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
            },
            _ = stopping.wait_for(|s| *s) => break,
        }
    }
    while streams.join_next().await.is_some() {}
}
