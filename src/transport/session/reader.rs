//! One session: Hello and Welcome, then reading Observe frames into batches for the log.

use std::sync::Arc;

use tokio::io::AsyncRead;
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};

use super::acknowledger::{acknowledge, close_with, flow_control, Acknowledger};
use super::{FrameSink, SessionTable};
use crate::auth::Access;
use crate::ingest::{Engine, EngineError, Handled, LoadPermit, Overloaded, Rejection};
use crate::transport::framed::{write_frames, FrameReader, StreamError};
use crate::transport::protocol::{ErrorCode, Frame, ObserveFrame, PROTOCOL_VERSION};

/// Batches of one session in flight between its reader and its acknowledger.
const SESSION_BATCHES_IN_FLIGHT_MAX: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Stream(#[from] StreamError),
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// A batch in the log's commit queue, or already decided.
pub(super) enum BatchOutcome {
    /// A task that waits for the sync. It runs to the end even if the session is gone:
    /// the append is in the log's queue and will be durable, so its dedupe claims must be
    /// committed, never released (a release would let a resend store it twice).
    Submitted(tokio::task::JoinHandle<Result<Vec<Handled>, EngineError>>),
    Done(Result<Vec<Handled>, EngineError>),
}

pub(super) enum Work {
    Batch {
        last_seq: u64,
        seqs: Vec<u64>,
        outcome: BatchOutcome,
        /// Released when the batch is acknowledged.
        _credits: Option<OwnedSemaphorePermit>,
        _queued: Option<LoadPermit>,
        /// Set when the server refused the whole batch: the client retries after this.
        overloaded: Option<Overloaded>,
        /// When the batch reached ingest: its observations' latency runs to their ack.
        received: std::time::Instant,
    },
    /// A request frame to answer (ListSpaces, CheckIds, CreateSpace, Recall).
    Request(Frame),
    Goodbye,
    Error(ErrorCode, String),
}

pub async fn run_session<S: FrameSink, R: AsyncRead + Unpin>(
    engine: Arc<Engine>,
    sessions: Arc<SessionTable>,
    mut send: S,
    recv: R,
    mut stop: watch::Receiver<bool>,
) -> Result<(), SessionError> {
    let Some(_open) = sessions.admit() else {
        limit_reached("sessions");
        let max = sessions.limits().sessions_max;
        return close_with(
            &mut send,
            ErrorCode::LimitReached,
            format!("the server has {max} sessions open, its limit (sessions_max); retry later"),
        )
        .await;
    };
    let limits = engine.limits().announced();
    let mut reader = FrameReader::new(recv, limits.frame_bytes_max);
    let hello_timeout = sessions.limits().hello_timeout;
    let hello = match tokio::time::timeout(hello_timeout, reader.next()).await {
        Err(_) => {
            limit_reached("hello_timeout");
            return close_with(
                &mut send,
                ErrorCode::LimitReached,
                format!(
                    "no Hello within {} ms (hello_timeout)",
                    hello_timeout.as_millis()
                ),
            )
            .await;
        }
        Ok(Ok(Some(frame))) => frame,
        Ok(Ok(None)) => return Ok(()),
        Ok(Err(StreamError::Protocol(e))) => {
            return close_with(&mut send, ErrorCode::MalformedFrame, e.to_string()).await
        }
        Ok(Err(e)) => return Err(e.into()),
    };
    let (token, auth_token) = match hello {
        Frame::Hello {
            version,
            resume_token,
            auth_token,
            ..
        } if version == PROTOCOL_VERSION => (resume_token, auth_token),
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
    let access = match sessions.authenticator().authenticate(auth_token.as_deref()) {
        Ok(access) => access,
        Err(e) => {
            crate::metrics::metrics()
                .auth_failures
                .with_label_values(&[e.reason()])
                .inc();
            tracing::warn!(reason = e.reason(), "a session was refused: {e}");
            return close_with(&mut send, ErrorCode::Unauthenticated, e.to_string()).await;
        }
    };
    let Some((session_id, token, last_acked_seq)) = sessions.open(token, &access) else {
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
        Acknowledger::new(
            send,
            sessions.clone(),
            token,
            last_acked_seq,
            credits.clone(),
            engine.clone(),
            access.clone(),
        ),
        work_rx,
    ));
    let read_result = read_observations(
        &engine,
        &sessions,
        &access,
        &mut reader,
        &work_tx,
        &mut stop,
        &credits,
    )
    .await;
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
    sessions: &SessionTable,
    access: &Access,
    reader: &mut FrameReader<impl AsyncRead + Unpin>,
    work: &mpsc::Sender<Work>,
    stop: &mut watch::Receiver<bool>,
    credits: &Arc<Semaphore>,
) -> Result<(), SessionError> {
    let credits_max = engine.limits().inflight_bytes_max.max(1);
    let batch_max = sessions.limits().batch_observations_max.max(1);
    let load = engine.load().clone();
    let mut load_state = load.subscribe();
    loop {
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
        // Server-wide Critical: an observation waits, and the session is read no further,
        // until the commit queue and the index lag drain. Requests pass: a session that
        // only recalls is never held behind ingest, and the one frame read is bounded.
        if matches!(first, Some(Frame::Observe(_))) {
            let reading = tokio::select! {
                () = load.wait_below_critical(&mut load_state) => true,
                stopped = stop.wait_for(|s| *s) => {
                    drop(stopped);
                    false
                }
            };
            if !reading {
                // Shutting down: the held observation was never accepted, so it is
                // neither acknowledged nor refused; the client resends it.
                let _ = work.send(Work::Goodbye).await;
                return Ok(());
            }
        }
        let mut batch: Vec<ObserveFrame> = Vec::new();
        let mut held: Option<OwnedSemaphorePermit> = None;
        let mut after = None;
        let mut next = first;
        loop {
            match next {
                Some(Frame::Observe(obs)) if !access.may_write(&obs.observation.space) => {
                    // Refused alone, in its place among the session's acks.
                    if !dispatch(engine, work, &mut batch, held.take()).await
                        || !refuse_forbidden(work, obs).await
                    {
                        return Ok(());
                    }
                }
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
            if batch.len() >= batch_max {
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
            Some(Some(
                request @ (Frame::ListSpaces { .. }
                | Frame::CheckIds { .. }
                | Frame::CreateSpace { .. }
                | Frame::Recall { .. }),
            )) => {
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
    let received = std::time::Instant::now();
    let bytes: u64 = batch.iter().map(|o| o.encoded_len() as u64).sum();
    let (seqs, batch): (Vec<u64>, Vec<_>) = std::mem::take(batch)
        .into_iter()
        .map(|frame| (frame.seq, frame.observation))
        .unzip();
    let last_seq = *seqs.last().expect("non-empty");
    let (outcome, queued, overloaded) = match engine.load().admit(bytes, seqs.len() as u64) {
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
        received,
    })
    .await
    .is_ok()
}

/// Hands the acknowledger a Reject for an observation to a space the session's token
/// may not write. False if the acknowledger is gone.
async fn refuse_forbidden(work: &mpsc::Sender<Work>, obs: ObserveFrame) -> bool {
    crate::metrics::metrics()
        .auth_failures
        .with_label_values(&["forbidden"])
        .inc();
    let rejection = Rejection::forbidden(&obs.observation.space);
    work.send(Work::Batch {
        last_seq: obs.seq,
        seqs: vec![obs.seq],
        outcome: BatchOutcome::Done(Ok(vec![Handled::Rejected(rejection)])),
        _credits: None,
        _queued: None,
        overloaded: None,
        received: std::time::Instant::now(),
    })
    .await
    .is_ok()
}

/// Counts a session refused by a limit.
fn limit_reached(limit: &str) {
    crate::metrics::metrics()
        .limit_hits
        .with_label_values(&[limit])
        .inc();
}
