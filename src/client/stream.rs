//! Streaming that survives lost connections and server restarts, without losing or
//! duplicating anything.
//!
//! Every observation stays in `pending` until the server acknowledges it. After a lost
//! connection the stream reconnects with exponential backoff and jitter and resumes its
//! session: the server's Welcome says the last acknowledged seq, and the rest is resent
//! with the same seqs. If the server restarted and no longer knows the session, a new one
//! starts and everything pending is resent; the server's exactly-once dedupe acknowledges
//! what it had already stored without storing it again.

use std::collections::VecDeque;
use std::time::Duration;

use super::{with_causes, ClientError, ClientOptions, Rejected, Session};
use crate::observation::Observation;
use crate::transport::protocol::{ErrorCode, LoadState, RejectCode, RESUME_TOKEN_BYTES};

/// Reconnection delays: `initial`, doubling up to `max`, each with up to 50% random jitter
/// so that many clients do not retry in step. Gives up after `attempts_max` failures in a row.
#[derive(Clone, Debug)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
    pub attempts_max: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(50),
            max: Duration::from_secs(5),
            attempts_max: 60,
        }
    }
}

impl Backoff {
    fn delay(&self, attempt: u32) -> Duration {
        let base = self
            .initial
            .saturating_mul(1u32 << attempt.min(16))
            .min(self.max);
        base.mul_f64(1.0 + rand::random::<f64>() * 0.5)
    }
}

/// The least wait before resending what an overloaded server refused.
const RETRY_AFTER_MS_MIN: u32 = 10;

/// Observations held while unacknowledged, at most, by default; `send` waits for acks
/// past it (`ObservationStream::set_pending_max`).
pub const PENDING_OBSERVATIONS_MAX: usize = 4096;

pub struct ObservationStream {
    options: ClientOptions,
    backoff: Backoff,
    session: Option<Session>,
    token: Option<[u8; RESUME_TOKEN_BYTES]>,
    /// Sent (or to be resent) and not yet acknowledged, with their seq in the session.
    pending: VecDeque<(u64, Observation)>,
    pending_max: usize,
    acked: Vec<Observation>,
    rejected: Vec<(Observation, Rejected)>,
    /// Refused as Overloaded: resent once `retry_at` has passed.
    retry: VecDeque<Observation>,
    retry_at: Option<tokio::time::Instant>,
    /// Observations resent because the server was overloaded.
    pub overload_retries: u64,
    /// The highest load state any of its sessions heard.
    pub peak_load: LoadState,
    /// Connections made, the first included.
    pub connects: u32,
    /// Why the last lost session ended, as the client saw it.
    pub last_disconnect: Option<String>,
}

impl ObservationStream {
    pub async fn connect(
        options: ClientOptions,
        backoff: Backoff,
    ) -> Result<ObservationStream, ClientError> {
        let mut stream = ObservationStream {
            options,
            backoff,
            session: None,
            token: None,
            pending: VecDeque::new(),
            pending_max: PENDING_OBSERVATIONS_MAX,
            acked: Vec::new(),
            rejected: Vec::new(),
            retry: VecDeque::new(),
            retry_at: None,
            overload_retries: 0,
            peak_load: LoadState::Normal,
            connects: 0,
            last_disconnect: None,
        };
        stream.reconnect().await?;
        Ok(stream)
    }

    /// Holds at most `max` (at least 1) observations unacknowledged: a smaller window
    /// means less to resend after a lost connection, a larger one more throughput.
    pub fn set_pending_max(&mut self, max: usize) {
        self.pending_max = max.max(1);
    }

    /// Queues and sends one observation, reconnecting if the connection is lost.
    pub async fn send(&mut self, obs: Observation) -> Result<(), ClientError> {
        while self.pending.len() >= self.pending_max {
            let oldest = self.pending.front().expect("non-empty").0;
            self.wait_acked_once(oldest).await?;
        }
        self.resend_due().await?;
        self.send_now(obs).await
    }

    async fn send_now(&mut self, obs: Observation) -> Result<(), ClientError> {
        loop {
            let session = self.session.as_mut().expect("connected");
            match session.send(&obs).await {
                Ok(seq) => {
                    self.pending.push_back((seq, obs));
                    return Ok(());
                }
                Err(ClientError::Stream(e)) => {
                    self.last_disconnect = Some(with_causes(&e));
                    self.reconnect().await?
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Waits until the oldest observation not yet acknowledged is, or was refused;
    /// returns at once if none is waiting.
    pub async fn wait_oldest_acked(&mut self) -> Result<(), ClientError> {
        match self.pending.front() {
            Some(&(oldest, _)) => self.wait_acked_once(oldest).await,
            None => Ok(()),
        }
    }

    /// Waits until everything sent so far is acknowledged.
    pub async fn flush(&mut self) -> Result<(), ClientError> {
        loop {
            if let Some(&(last, _)) = self.pending.back() {
                self.wait_acked_once(last).await?;
                continue;
            }
            if self.retry.is_empty() {
                return Ok(());
            }
            if let Some(at) = self.retry_at {
                tokio::time::sleep_until(at).await;
            }
            self.resend_due().await?;
        }
    }

    /// Resends what an overloaded server refused, once its retry hint has passed.
    async fn resend_due(&mut self) -> Result<(), ClientError> {
        if self.retry.is_empty()
            || self
                .retry_at
                .is_some_and(|at| at > tokio::time::Instant::now())
        {
            return Ok(());
        }
        self.retry_at = None;
        while let Some(obs) = self.retry.pop_front() {
            self.overload_retries += 1;
            self.send_now(obs).await?;
        }
        Ok(())
    }

    /// Takes in whatever the server acknowledged so far, without waiting.
    /// Runs after every send in a load loop, so it takes only refusals not taken yet.
    pub fn poll_acked(&mut self) {
        if let Some(session) = &self.session {
            self.peak_load = self.peak_load.max(session.peak_load());
            let (acked_seq, rejects) = session.take_settled();
            self.settle(acked_seq, &rejects);
        }
    }

    /// Waits until the server acknowledges or refuses something more, then takes it in
    /// (`poll_acked`). For a caller that times acks as they arrive instead of at its next
    /// send. While the connection is lost it waits until the next send reconnects.
    pub async fn wait_settled(&mut self) {
        if let Some(session) = self.session.as_mut() {
            session.settled_changed().await;
        }
        self.poll_acked();
    }

    /// Observations sent and neither acknowledged nor refused yet.
    pub fn unacknowledged(&self) -> usize {
        self.pending.len()
    }

    /// Observations acknowledged (durable) since the last call, in order.
    pub fn take_acked(&mut self) -> Vec<Observation> {
        std::mem::take(&mut self.acked)
    }

    /// Observations the server refused, with why, since the last call.
    pub fn take_rejected(&mut self) -> Vec<(Observation, Rejected)> {
        std::mem::take(&mut self.rejected)
    }

    /// Drops the connection, as a network failure would.
    pub fn abort_connection(&self) {
        if let Some(session) = &self.session {
            session.abort();
        }
    }

    pub async fn close(mut self) -> Result<(), ClientError> {
        self.flush().await?;
        if let Some(session) = self.session.take() {
            session.goodbye().await?;
        }
        Ok(())
    }

    /// Waits once for `seq` to be acknowledged, reconnecting if the session is lost. Seqs
    /// change when the stream reconnects to a restarted server, so callers take the seq
    /// from `pending` again after every call.
    async fn wait_acked_once(&mut self, seq: u64) -> Result<(), ClientError> {
        let session = self.session.as_mut().expect("connected");
        match session.wait_acked(seq).await {
            Ok(progress) => {
                self.peak_load = self.peak_load.max(progress.peak_load);
                let (acked_seq, rejects) = session.take_settled();
                self.settle(acked_seq, &rejects);
                Ok(())
            }
            Err(ClientError::Ended { .. }) | Err(ClientError::Stream(_)) => self.reconnect().await,
            Err(e) => Err(e),
        }
    }

    /// Moves everything up to `acked_seq` out of `pending`: rejected ones (named in
    /// `new_rejects`, the session's refusals taken since the last call) to `rejected`,
    /// Overloaded ones to the retry queue.
    fn settle(&mut self, acked_seq: u64, new_rejects: &[Rejected]) {
        while self
            .pending
            .front()
            .is_some_and(|(seq, _)| *seq <= acked_seq)
        {
            let (seq, obs) = self.pending.pop_front().expect("non-empty");
            match new_rejects.iter().find(|r| r.seq == seq) {
                Some(r) if r.code == RejectCode::Overloaded as u16 => {
                    let wait = self.session.as_ref().map_or(0, |s| s.retry_after_ms());
                    let at = tokio::time::Instant::now()
                        + Duration::from_millis(u64::from(wait.max(RETRY_AFTER_MS_MIN)));
                    self.retry_at = Some(self.retry_at.map_or(at, |t| t.max(at)));
                    self.retry.push_back(obs);
                }
                Some(r) => self.rejected.push((obs, r.clone())),
                None => self.acked.push(obs),
            }
        }
    }

    /// Connects (resuming the session if the server still knows it) and resends every
    /// observation the server has not acknowledged.
    async fn reconnect(&mut self) -> Result<(), ClientError> {
        if let Some(old) = self.session.take() {
            // What the old session had acknowledged before it was lost still counts.
            let (acked_seq, rejects) = old.take_settled();
            self.settle(acked_seq, &rejects);
            let progress = old.progress();
            if progress.ended.is_some() {
                self.last_disconnect = progress.ended.clone();
            }
            old.abort();
        }
        let mut failures = 0;
        loop {
            match Session::connect(&self.options, self.token).await {
                Ok(mut session) => {
                    self.connects += 1;
                    if self.token == Some(session.resume_token) {
                        // Resumed: seqs are still this session's; drop what it acknowledged.
                        self.settle(session.progress().acked_seq, &[]);
                    }
                    self.token = Some(session.resume_token);
                    // No acknowledgement may settle an entry before it is sent again.
                    for entry in self.pending.iter_mut() {
                        entry.0 = UNSENT;
                    }
                    let mut lost = false;
                    for entry in self.pending.iter_mut() {
                        match session.send(&entry.1).await {
                            Ok(seq) => entry.0 = seq,
                            Err(_) => {
                                lost = true;
                                break;
                            }
                        }
                    }
                    if !lost {
                        self.session = Some(session);
                        return Ok(());
                    }
                    let (acked_seq, rejects) = session.take_settled();
                    self.settle(acked_seq, &rejects);
                    session.abort();
                    failures += 1;
                    if failures >= self.backoff.attempts_max {
                        return Err(ClientError::Ended {
                            seq: 0,
                            acked: acked_seq,
                        });
                    }
                }
                // A token the server does not take will not be taken on a retry either.
                Err(e @ ClientError::Server { code, .. })
                    if code == ErrorCode::Unauthenticated as u16 =>
                {
                    return Err(e)
                }
                Err(ClientError::Server { code, .. })
                    if code == ErrorCode::UnknownResumeToken as u16 =>
                {
                    // The server restarted: start over; dedupe keeps resends exactly-once.
                    self.token = None;
                    continue;
                }
                Err(e) => {
                    failures += 1;
                    if failures >= self.backoff.attempts_max {
                        return Err(e);
                    }
                }
            }
            tokio::time::sleep(self.backoff.delay(failures.saturating_sub(1))).await;
        }
    }
}

/// The seq of a pending observation not yet sent in the current session.
const UNSENT: u64 = u64::MAX;
