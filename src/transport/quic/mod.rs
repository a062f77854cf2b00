//! The QUIC server: one task per connection, one session per bidirectional stream.
//!
//! session.rs reads a session's frames and hands batches to the log; acknowledger.rs
//! answers them in order.

mod acknowledger;
mod recall;
mod session;

use session::run_session;
pub use session::SessionError;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::Instrument;

use super::protocol::RESUME_TOKEN_BYTES;
use crate::ingest::Engine;

/// Sessions remembered for resumption.
const RESUMABLE_SESSIONS_MAX: usize = 100_000;

pub(super) type Token = [u8; RESUME_TOKEN_BYTES];

/// What a resuming client needs: the last sequence number acknowledged in its session.
#[derive(Default)]
pub struct SessionTable {
    next_id: AtomicU64,
    acked: Mutex<HashMap<Token, (u64, u64)>>,
}

impl SessionTable {
    fn open(&self, token: Option<Token>) -> Option<(u64, Token, u64)> {
        let mut acked = self.acked.lock().expect("session table lock");
        if let Some(token) = token {
            let &(id, last) = acked.get(&token)?;
            return Some((id, token, last));
        }
        if acked.len() >= RESUMABLE_SESSIONS_MAX {
            // Forget an arbitrary old session; its client starts a new one and dedupe
            // keeps its resent observations from being stored twice.
            let victim = *acked.keys().next().expect("non-empty");
            acked.remove(&victim);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let token: Token = rand::random();
        acked.insert(token, (id, 0));
        Some((id, token, 0))
    }

    fn acked(&self, token: &Token, seq: u64) {
        if let Some(entry) = self
            .acked
            .lock()
            .expect("session table lock")
            .get_mut(token)
        {
            entry.1 = entry.1.max(seq);
        }
    }
}

/// Serves sessions on `endpoint` until `shutdown` completes, then stops accepting, lets
/// every session acknowledge what it has read, and returns.
pub async fn serve(
    endpoint: quinn::Endpoint,
    engine: Arc<Engine>,
    shutdown: impl Future<Output = ()>,
) {
    let sessions = Arc::new(SessionTable::default());
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
