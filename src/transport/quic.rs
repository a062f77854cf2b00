//! The QUIC server: one task per connection, one session per bidirectional stream.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tracing::Instrument;

use super::framed::{write_frames, FrameReader, StreamError};
use super::protocol::{
    ErrorCode, Frame, LoadState, ObserveFrame, SpaceEntry, PROTOCOL_VERSION, RESUME_TOKEN_BYTES,
};
use crate::ingest::{Engine, EngineError, Handled, LoadPermit, Overloaded, ServerLoad};

/// Observe frames read into one batch at most: one log append.
const BATCH_OBSERVATIONS_MAX: usize = 1024;
/// Batches of one session in flight between its reader and its acknowledger.
const SESSION_BATCHES_IN_FLIGHT_MAX: usize = 16;
/// Sessions remembered for resumption.
const RESUMABLE_SESSIONS_MAX: usize = 100_000;

type Token = [u8; RESUME_TOKEN_BYTES];

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

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Stream(#[from] StreamError),
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// A batch in the log's commit queue, or already decided.
enum BatchOutcome {
    /// A task that waits for the sync. It runs to the end even if the session is gone:
    /// the append is in the log's queue and will be durable, so its dedupe claims must be
    /// committed, never released (a release would let a resend store it twice).
    Submitted(tokio::task::JoinHandle<Result<Vec<Handled>, EngineError>>),
    Done(Result<Vec<Handled>, EngineError>),
}

enum Work {
    Batch {
        last_seq: u64,
        seqs: Vec<u64>,
        outcome: BatchOutcome,
        /// Released when the batch is acknowledged.
        _credits: Option<OwnedSemaphorePermit>,
        _queued: Option<LoadPermit>,
        /// Set when the server refused the whole batch: the client retries after this.
        overloaded: Option<Overloaded>,
    },
    /// A ListSpaces or CheckIds frame to answer.
    Request(Frame),
    Goodbye,
    Error(ErrorCode, String),
}

async fn run_session(
    engine: Arc<Engine>,
    sessions: Arc<SessionTable>,
    mut send: quinn::SendStream,
    recv: quinn::RecvStream,
    mut stop: watch::Receiver<bool>,
) -> Result<(), SessionError> {
    let limits = engine.limits().announced();
    let mut reader = FrameReader::new(recv, limits.frame_bytes_max);
    let hello = match reader.next().await {
        Ok(Some(frame)) => frame,
        Ok(None) => return Ok(()),
        Err(StreamError::Protocol(e)) => {
            return close_with(&mut send, ErrorCode::MalformedFrame, e.to_string()).await
        }
        Err(e) => return Err(e.into()),
    };
    let token = match hello {
        Frame::Hello {
            version,
            resume_token,
            ..
        } if version == PROTOCOL_VERSION => resume_token,
        Frame::Hello { version, .. } => {
            return close_with(
                &mut send,
                ErrorCode::UnsupportedVersion,
                format!(
                    "version {version} is not supported; this server speaks {PROTOCOL_VERSION}"
                ),
            )
            .await;
        }
        other => {
            return close_with(
                &mut send,
                ErrorCode::UnexpectedFrame,
                format!("expected Hello, got {}", other.frame_type()),
            )
            .await
        }
    };
    let Some((session_id, token, last_acked_seq)) = sessions.open(token) else {
        return close_with(
            &mut send,
            ErrorCode::UnknownResumeToken,
            "unknown resume token: start a new session".into(),
        )
        .await;
    };
    write_frames(
        &mut send,
        &[
            Frame::Welcome {
                session_id,
                resume_token: token,
                last_acked_seq,
                limits,
            },
            flow_control(
                engine.load(),
                engine.load().state(),
                limits.inflight_bytes_max,
                None,
            ),
        ],
    )
    .await?;
    let (work_tx, work_rx) = mpsc::channel(SESSION_BATCHES_IN_FLIGHT_MAX);
    let credits = Arc::new(Semaphore::new(limits.inflight_bytes_max.max(1) as usize));
    let acknowledger = tokio::spawn(acknowledge(
        Acknowledger {
            send,
            sessions: sessions.clone(),
            token,
            last_acked: last_acked_seq,
            credits: credits.clone(),
            load: engine.load().subscribe(),
            engine: engine.clone(),
        },
        work_rx,
    ));
    let read_result = read_observations(&engine, &mut reader, &work_tx, &mut stop, &credits).await;
    if let Err(e) = &read_result {
        let (code, message) = match e {
            SessionError::Stream(StreamError::Protocol(p)) => {
                (ErrorCode::MalformedFrame, p.to_string())
            }
            other => (ErrorCode::MalformedFrame, other.to_string()),
        };
        let _ = work_tx.send(Work::Error(code, message)).await;
    }
    drop(work_tx);
    let acked = acknowledger.await.expect("the acknowledger does not panic");
    read_result?;
    acked
}

/// Reads Observe frames into batches: as many as already arrived and the session's credits
/// allow. Each batch's ingest starts at once, and the batch goes to the acknowledger in
/// order. Observe frames hold credits (their encoded bytes) until they are acknowledged.
/// With none left the reader stops reading, and QUIC's flow control holds the client back,
/// so a session never holds more than its credits.
async fn read_observations(
    engine: &Arc<Engine>,
    reader: &mut FrameReader,
    work: &mpsc::Sender<Work>,
    stop: &mut watch::Receiver<bool>,
    credits: &Arc<Semaphore>,
) -> Result<(), SessionError> {
    let credits_max = engine.limits().inflight_bytes_max.max(1);
    let load = engine.load().clone();
    let mut load_state = load.subscribe();
    loop {
        // Server-wide Critical: stop reading until the commit queue drains.
        let reading = tokio::select! {
            () = load.wait_below_critical(&mut load_state) => true,
            stopped = stop.wait_for(|s| *s) => {
                drop(stopped);
                false
            }
        };
        if !reading {
            let _ = work.send(Work::Goodbye).await;
            return Ok(());
        }
        let first = tokio::select! {
            frame = reader.next() => Some(frame?),
            stopped = stop.wait_for(|s| *s) => {
                drop(stopped);
                None
            }
        };
        // Shutting down: acknowledge what was read, say goodbye.
        let Some(first) = first else {
            let _ = work.send(Work::Goodbye).await;
            return Ok(());
        };
        let mut batch: Vec<ObserveFrame> = Vec::new();
        let mut held: Option<OwnedSemaphorePermit> = None;
        let mut after = None;
        let mut next = first;
        loop {
            match next {
                Some(Frame::Observe(obs)) => {
                    let cost = (obs.encoded_len() as u64).min(credits_max as u64) as u32;
                    let permit = match credits.clone().try_acquire_many_owned(cost) {
                        Ok(permit) => permit,
                        Err(_) => {
                            // Out of credits: hand on what is read, then wait for acks.
                            if !dispatch(engine, work, &mut batch, held.take()).await {
                                return Ok(());
                            }
                            credits
                                .clone()
                                .acquire_many_owned(cost)
                                .await
                                .expect("the semaphore is never closed")
                        }
                    };
                    match held.as_mut() {
                        Some(h) => h.merge(permit),
                        None => held = Some(permit),
                    }
                    batch.push(obs);
                }
                other => {
                    after = Some(other);
                    break;
                }
            }
            if batch.len() >= BATCH_OBSERVATIONS_MAX {
                break;
            }
            match reader.buffered().map_err(StreamError::from)? {
                Some(frame) => next = Some(frame),
                None => break,
            }
        }
        if !dispatch(engine, work, &mut batch, held.take()).await {
            return Ok(());
        }
        match after {
            None => {}
            Some(None) | Some(Some(Frame::ClientGoodbye { .. })) => {
                let _ = work.send(Work::Goodbye).await;
                return Ok(());
            }
            Some(Some(request @ (Frame::ListSpaces { .. } | Frame::CheckIds { .. }))) => {
                // Answered by the acknowledger in turn: after every observation sent
                // before it is acknowledged, so a session reads its own writes.
                let queued = work.send(Work::Request(request)).await;
                if queued.is_err() {
                    return Ok(());
                }
            }
            Some(Some(other)) => {
                let _ = work
                    .send(Work::Error(
                        ErrorCode::UnexpectedFrame,
                        format!("unexpected {} frame in a session", other.frame_type()),
                    ))
                    .await;
                return Ok(());
            }
        }
    }
}

/// Starts ingesting `batch` and hands it to the acknowledger with the credits it holds.
/// False if the acknowledger is gone (the session is ending).
async fn dispatch(
    engine: &Arc<Engine>,
    work: &mpsc::Sender<Work>,
    batch: &mut Vec<ObserveFrame>,
    credits: Option<OwnedSemaphorePermit>,
) -> bool {
    if batch.is_empty() {
        return true;
    }
    let batch = std::mem::take(batch);
    let last_seq = batch.last().expect("non-empty").seq;
    let seqs: Vec<u64> = batch.iter().map(|o| o.seq).collect();
    let bytes: u64 = batch.iter().map(|o| o.encoded_len() as u64).sum();
    let (outcome, queued, overloaded) = match engine.load().admit(bytes) {
        // Submitted here, in the reader, so that the session's batches reach the log in
        // the order they were sent; the acknowledger waits for their syncs.
        Ok(queued) => match engine.submit(batch).await {
            Ok(submitted) => (
                BatchOutcome::Submitted(tokio::spawn(submitted.outcome())),
                Some(queued),
                None,
            ),
            Err(e) => (BatchOutcome::Done(Err(e)), Some(queued), None),
        },
        Err(overloaded) => {
            // Refused whole and dropped now: an overloaded server holds nothing more.
            let refused = vec![Handled::Rejected(overloaded.rejection()); batch.len()];
            (BatchOutcome::Done(Ok(refused)), None, Some(overloaded))
        }
    };
    work.send(Work::Batch {
        last_seq,
        seqs,
        outcome,
        _credits: credits,
        _queued: queued,
        overloaded,
    })
    .await
    .is_ok()
}

/// The sending half of a session.
struct Acknowledger {
    send: quinn::SendStream,
    sessions: Arc<SessionTable>,
    token: Token,
    last_acked: u64,
    credits: Arc<Semaphore>,
    /// The server-wide load state; the client hears of every change.
    load: watch::Receiver<LoadState>,
    engine: Arc<Engine>,
}

impl Acknowledger {
    fn flow_control(&self, state: LoadState, retry_after: Option<Duration>) -> Frame {
        let credits = u32::try_from(self.credits.available_permits()).unwrap_or(u32::MAX);
        flow_control(self.engine.load(), state, credits, retry_after)
    }
}

/// A FlowControl for `state`. Paused (Critical or worse) grants no credits; Overloaded
/// always carries a retry hint, the server's current one unless `retry_after` is given.
fn flow_control(
    load: &ServerLoad,
    state: LoadState,
    credits: u32,
    retry_after: Option<Duration>,
) -> Frame {
    let retry_after = match (state, retry_after) {
        (LoadState::Overloaded, None) => Some(load.retry_hint()),
        (_, given) => given,
    };
    Frame::FlowControl {
        credits: if state >= LoadState::Critical {
            0
        } else {
            credits
        },
        state,
        retry_after_ms: retry_after.map_or(0, |d| u32::try_from(d.as_millis()).unwrap_or(u32::MAX)),
    }
}

/// Waits for each batch in order and answers: a Reject per refused observation, then one
/// cumulative Ack for the batch. Every observation up to an acked seq is durable or
/// rejected. Between batches, tells the client when the server's load state changes.
async fn acknowledge(
    mut ack: Acknowledger,
    mut work: mpsc::Receiver<Work>,
) -> Result<(), SessionError> {
    let mut last_lsn = 0u64;
    let mut told = *ack.load.borrow_and_update();
    let mut load_open = true;
    loop {
        let item = tokio::select! {
            biased;
            item = work.recv() => match item {
                Some(item) => item,
                None => break,
            },
            changed = ack.load.changed(), if load_open => {
                if changed.is_err() {
                    load_open = false;
                    continue;
                }
                let state = *ack.load.borrow_and_update();
                if state != told {
                    told = state;
                    let frame = ack.flow_control(state, None);
                    write_frames(&mut ack.send, &[frame]).await?;
                }
                continue;
            }
        };
        match item {
            Work::Batch {
                last_seq,
                seqs,
                outcome,
                _credits,
                _queued,
                overloaded,
            } => {
                let outcome = match outcome {
                    BatchOutcome::Submitted(task) => task.await.expect("ingest does not panic"),
                    BatchOutcome::Done(outcome) => outcome,
                };
                let outcomes = match outcome {
                    Ok(outcomes) => outcomes,
                    Err(e) => {
                        write_frames(
                            &mut ack.send,
                            &[Frame::Error {
                                code: ErrorCode::StorageFailed as u16,
                                message: e.to_string(),
                            }],
                        )
                        .await?;
                        finish_delivered(&mut ack.send).await;
                        return Err(e.into());
                    }
                };
                let mut frames = Vec::new();
                if let Some(o) = overloaded {
                    told = LoadState::Overloaded;
                    frames.push(ack.flow_control(LoadState::Overloaded, Some(o.retry_after)));
                }
                for (seq, handled) in seqs.iter().zip(outcomes) {
                    match handled {
                        Handled::Stored { lsn } | Handled::Duplicate { lsn } => {
                            last_lsn = last_lsn.max(lsn.0)
                        }
                        Handled::Rejected(rejection) => frames.push(rejection.to_frame(*seq)),
                    }
                }
                ack.last_acked = ack.last_acked.max(last_seq);
                frames.push(Frame::Ack {
                    seq: ack.last_acked,
                    lsn: last_lsn,
                });
                write_frames(&mut ack.send, &frames).await?;
                ack.sessions.acked(&ack.token, ack.last_acked);
            }
            Work::Request(request) => {
                let answer = answer(&ack.engine, request);
                write_frames(&mut ack.send, &[answer]).await?;
            }
            Work::Goodbye => {
                write_frames(
                    &mut ack.send,
                    &[Frame::ServerGoodbye {
                        last_acked_seq: ack.last_acked,
                    }],
                )
                .await?;
                finish_delivered(&mut ack.send).await;
                return Ok(());
            }
            Work::Error(code, message) => {
                write_frames(
                    &mut ack.send,
                    &[Frame::Error {
                        code: code as u16,
                        message,
                    }],
                )
                .await?;
                finish_delivered(&mut ack.send).await;
                return Ok(());
            }
        }
    }
    Ok(())
}

/// The answer to a ListSpaces or CheckIds request.
fn answer(engine: &Engine, request: Frame) -> Frame {
    match request {
        Frame::ListSpaces { request_id } => Frame::SpaceList {
            request_id,
            durable_lsn: engine.wal().durable_lsn().0,
            spaces: engine
                .spaces()
                .summaries()
                .into_iter()
                .map(|s| SpaceEntry {
                    name: s.name,
                    dim: s.dim,
                    observations: s.observations,
                    last_lsn: s.last_lsn.0,
                })
                .collect(),
        },
        Frame::CheckIds {
            request_id,
            space,
            ids,
        } => Frame::CheckResult {
            request_id,
            found: engine.contains(&space, &ids),
        },
        other => unreachable!("only requests are queued as Work::Request, not {other:?}"),
    }
}

async fn close_with(
    send: &mut quinn::SendStream,
    code: ErrorCode,
    message: String,
) -> Result<(), SessionError> {
    write_frames(
        send,
        &[Frame::Error {
            code: code as u16,
            message,
        }],
    )
    .await?;

    finish_delivered(send).await;
    Ok(())
}

/// How long a closing session waits for its last frames to reach the client.
const LAST_WORDS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Finishes the stream and waits until the client has acknowledged all of it, so that a
/// shutdown that closes the connection next does not drop the last Ack or the Goodbye.
async fn finish_delivered(send: &mut quinn::SendStream) {
    if send.finish().is_ok() {
        let _ = tokio::time::timeout(LAST_WORDS_TIMEOUT, send.stopped()).await;
    }
}
