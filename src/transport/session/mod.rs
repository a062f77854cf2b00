//! One engram/1 session, whatever carries it: a QUIC stream, or the WebSocket gateway's
//! in-memory pipe. reader.rs reads a session's frames and hands batches to the log;
//! acknowledger.rs answers them in order.

mod acknowledger;
mod reader;
mod recall;

pub use reader::{run_session, SessionError};

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::protocol::RESUME_TOKEN_BYTES;
use crate::auth::{Access, Authenticator};

/// The sending half of a session's stream.
pub trait FrameSink: AsyncWrite + Unpin + Send + 'static {
    /// Ends the stream and waits, at most `LAST_WORDS_TIMEOUT`, until the peer has all of
    /// it, so that a shutdown closing the connection next does not drop the last Ack.
    fn finish_delivered(&mut self) -> impl Future<Output = ()> + Send;
}

/// How long a closing session waits for its last frames to reach the client.
const LAST_WORDS_TIMEOUT: Duration = Duration::from_secs(5);

impl FrameSink for quinn::SendStream {
    async fn finish_delivered(&mut self) {
        if self.finish().is_ok() {
            let _ = tokio::time::timeout(LAST_WORDS_TIMEOUT, self.stopped()).await;
        }
    }
}

/// The WebSocket gateway's end of its pipe: what is written is delivered once the gateway
/// reads it, so finishing is closing.
impl FrameSink for tokio::io::WriteHalf<tokio::io::DuplexStream> {
    async fn finish_delivered(&mut self) {
        let _ = tokio::time::timeout(LAST_WORDS_TIMEOUT, self.shutdown()).await;
    }
}

/// Sessions open at once, over QUIC and WebSocket together, unless configured.
pub const SESSIONS_MAX_DEFAULT: usize = 10_000;
/// Observe frames read into one batch (one log append) at most, unless configured.
pub const BATCH_OBSERVATIONS_MAX_DEFAULT: usize = 1024;
/// How long a new session has to send Hello unless configured.
pub const HELLO_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);

/// Bounds on sessions, against clients that would hold the server's resources.
#[derive(Clone, Copy, Debug)]
pub struct SessionLimits {
    pub sessions_max: usize,
    /// A session that has not sent Hello by then is closed (slow-loris).
    pub hello_timeout: Duration,
    /// Observe frames a session hands to the log as one batch at most: what already
    /// arrived, up to this many.
    pub batch_observations_max: usize,
}

impl Default for SessionLimits {
    fn default() -> SessionLimits {
        SessionLimits {
            sessions_max: SESSIONS_MAX_DEFAULT,
            hello_timeout: HELLO_TIMEOUT_DEFAULT,
            batch_observations_max: BATCH_OBSERVATIONS_MAX_DEFAULT,
        }
    }
}

/// One open session, counted in `engram_streaming_active_sessions` and against
/// `sessions_max` while it lives.
pub(crate) struct OpenSession(Arc<SessionTable>);

impl Drop for OpenSession {
    fn drop(&mut self) {
        self.0.open_now.fetch_sub(1, Ordering::AcqRel);
        crate::metrics::metrics().active_sessions.dec();
    }
}

/// Sessions remembered for resumption.
const RESUMABLE_SESSIONS_MAX: usize = 100_000;

pub(crate) type Token = [u8; RESUME_TOKEN_BYTES];

/// Who may open a session, and what a resuming client needs: the last sequence number
/// acknowledged in its session.
#[derive(Default)]
pub struct SessionTable {
    auth: Arc<Authenticator>,
    limits: SessionLimits,
    /// Sessions open now, over both transports.
    open_now: AtomicUsize,
    next_id: AtomicU64,
    /// By resume token: the session's id, its last acked seq, and the name of the grant
    /// that opened it (a resume must present the same).
    acked: Mutex<HashMap<Token, (u64, u64, String)>>,
}

impl SessionTable {
    /// Sessions authenticated by `auth`, within `limits`.
    pub fn new(auth: Arc<Authenticator>, limits: SessionLimits) -> SessionTable {
        SessionTable {
            auth,
            limits,
            ..SessionTable::default()
        }
    }

    pub fn limits(&self) -> &SessionLimits {
        &self.limits
    }

    /// Counts a session as open while the guard lives; `None` past `sessions_max`.
    pub(crate) fn admit(self: &Arc<Self>) -> Option<OpenSession> {
        let admitted = self
            .open_now
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.limits.sessions_max).then_some(n + 1)
            })
            .is_ok();
        admitted.then(|| {
            crate::metrics::metrics().active_sessions.inc();
            OpenSession(self.clone())
        })
    }

    pub fn authenticator(&self) -> &Authenticator {
        &self.auth
    }

    /// A new session for `access`, or the one `token` resumes if `access` opened it.
    pub(crate) fn open(&self, token: Option<Token>, access: &Access) -> Option<(u64, Token, u64)> {
        let mut acked = self.acked.lock().expect("session table lock");
        if let Some(token) = token {
            let (id, last, opener) = acked.get(&token)?;
            return (opener == access.name()).then_some((*id, token, *last));
        }
        if acked.len() >= RESUMABLE_SESSIONS_MAX {
            // Forget an arbitrary old session; its client starts a new one and dedupe
            // keeps its resent observations from being stored twice.
            let victim = *acked.keys().next().expect("non-empty");
            acked.remove(&victim);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let token: Token = rand::random();
        acked.insert(token, (id, 0, access.name().to_owned()));
        Some((id, token, 0))
    }

    pub(crate) fn acked(&self, token: &Token, seq: u64) {
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
