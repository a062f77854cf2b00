//! One engram/1 session, whatever carries it: a QUIC stream, or the WebSocket gateway's
//! in-memory pipe. reader.rs reads a session's frames and hands batches to the log;
//! acknowledger.rs answers them in order.

mod acknowledger;
mod reader;
mod recall;

pub use reader::{run_session, SessionError};

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::protocol::RESUME_TOKEN_BYTES;

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

/// Sessions remembered for resumption.
const RESUMABLE_SESSIONS_MAX: usize = 100_000;

pub(crate) type Token = [u8; RESUME_TOKEN_BYTES];

/// What a resuming client needs: the last sequence number acknowledged in its session.
#[derive(Default)]
pub struct SessionTable {
    next_id: AtomicU64,
    acked: Mutex<HashMap<Token, (u64, u64)>>,
}

impl SessionTable {
    pub(crate) fn open(&self, token: Option<Token>) -> Option<(u64, Token, u64)> {
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
