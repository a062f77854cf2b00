//! The sending half of a session: acks, rejects, load changes and answers, in order.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch, Semaphore};

use super::reader::{BatchOutcome, SessionError, Work};
use super::recall::answer_recall;
use super::{FrameSink, SessionTable, Token};
use crate::auth::Access;
use crate::index::RecallQuery;
use crate::ingest::{Defined, Engine, EngineError, Handled, ServerLoad};
use crate::transport::framed::write_frames;
use crate::transport::protocol::{
    DefineOutcome, ErrorCode, Frame, LoadState, RecallStatus, RejectCode, SpaceEntry,
};

/// The sending half of a session.
pub(super) struct Acknowledger<S> {
    send: S,
    sessions: Arc<SessionTable>,
    token: Token,
    last_acked: u64,
    credits: Arc<Semaphore>,
    /// The server-wide load state; the client hears of every change.
    load: watch::Receiver<LoadState>,
    engine: Arc<Engine>,
    /// What the session's token may read and write.
    access: Access,
}

impl<S: FrameSink> Acknowledger<S> {
    /// The sending half of the session `token`, which the client knows acked up to
    /// `last_acked`; `credits` are the session's, shown in FlowControl.
    pub(super) fn new(
        send: S,
        sessions: Arc<SessionTable>,
        token: Token,
        last_acked: u64,
        credits: Arc<Semaphore>,
        engine: Arc<Engine>,
        access: Access,
    ) -> Acknowledger<S> {
        Acknowledger {
            send,
            sessions,
            token,
            last_acked,
            credits,
            load: engine.load().subscribe(),
            engine,
            access,
        }
    }

    fn flow_control(&self, state: LoadState, retry_after: Option<Duration>) -> Frame {
        let credits = u32::try_from(self.credits.available_permits()).unwrap_or(u32::MAX);
        flow_control(self.engine.load(), state, credits, retry_after)
    }
}

/// A FlowControl for `state`. Paused (Critical or worse) grants no credits; Overloaded
/// always carries a retry hint, the server's current one unless `retry_after` is given.
pub(super) fn flow_control(
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
pub(super) async fn acknowledge<S: FrameSink>(
    mut ack: Acknowledger<S>,
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
                received,
            } => {
                let outcome = match outcome {
                    BatchOutcome::Submitted(task) => task.await.expect("ingest does not panic"),
                    BatchOutcome::Done(outcome) => outcome,
                };
                let outcomes = match outcome {
                    Ok(outcomes) => outcomes,
                    Err(e) => {
                        close_with(&mut ack.send, ErrorCode::StorageFailed, e.to_string()).await?;
                        return Err(e.into());
                    }
                };
                let metrics = crate::metrics::recording();
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
                        Handled::Rejected(rejection) => {
                            if let Some(metrics) = metrics {
                                metrics
                                    .rejected
                                    .with_label_values(&[rejection.code.name()])
                                    .inc();
                            }
                            frames.push(rejection.to_frame(*seq))
                        }
                    }
                }
                ack.last_acked = ack.last_acked.max(last_seq);
                frames.push(Frame::Ack {
                    seq: ack.last_acked,
                    lsn: last_lsn,
                });
                write_frames(&mut ack.send, &frames).await?;
                ack.sessions.acked(&ack.token, ack.last_acked);
                if let Some(metrics) = metrics {
                    let latency = received.elapsed().as_secs_f64();
                    for _ in &seqs {
                        metrics.observation_latency.observe(latency);
                    }
                }
            }
            Work::Request(Frame::Recall {
                request_id,
                space,
                k,
                ef,
                consistency,
                query_id,
                embedding,
            }) => {
                let query = RecallQuery {
                    space,
                    embedding,
                    k: k.into(),
                    ef: (ef > 0).then_some(ef.into()),
                    consistency,
                };
                let query_id = (!query_id.is_empty()).then_some(query_id);
                let asked = std::time::Instant::now();
                let frames = if ack.access.may_read(&query.space) {
                    answer_recall(ack.engine.clone(), request_id, query, query_id).await
                } else {
                    count_forbidden();
                    vec![forbidden_recall(request_id, &query.space)]
                };
                write_frames(&mut ack.send, &frames).await?;
                if let Some(metrics) = crate::metrics::recording() {
                    metrics
                        .recall_latency
                        .observe(asked.elapsed().as_secs_f64());
                }
            }
            Work::Request(Frame::CheckIds { space, .. }) if !ack.access.may_read(&space) => {
                count_forbidden();
                return close_with(
                    &mut ack.send,
                    ErrorCode::Forbidden,
                    format!("the session's token may not read space {space:?}"),
                )
                .await;
            }
            Work::Request(request) => match answer(&ack.engine, &ack.access, request).await {
                Ok(answer) => write_frames(&mut ack.send, &[answer]).await?,
                Err(e) => {
                    // Only a latched log failure gets here: the session ends.
                    close_with(&mut ack.send, ErrorCode::StorageFailed, e.to_string()).await?;
                    return Err(e.into());
                }
            },
            Work::Goodbye => {
                write_frames(
                    &mut ack.send,
                    &[Frame::ServerGoodbye {
                        last_acked_seq: ack.last_acked,
                    }],
                )
                .await?;
                ack.send.finish_delivered().await;
                return Ok(());
            }
            Work::Error(code, message) => return close_with(&mut ack.send, code, message).await,
        }
    }
    Ok(())
}

/// The answer to a ListSpaces, CheckIds or CreateSpace request. A listing shows only the
/// spaces `access` may read.
async fn answer(engine: &Engine, access: &Access, request: Frame) -> Result<Frame, EngineError> {
    Ok(match request {
        Frame::ListSpaces { request_id } => Frame::SpaceList {
            request_id,
            durable_lsn: engine.wal().durable_lsn().0,
            spaces: engine
                .spaces()
                .summaries()
                .into_iter()
                .filter(|s| access.may_read(&s.name))
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
        Frame::CreateSpace {
            request_id, space, ..
        } if !access.may_write(&space) => {
            count_forbidden();
            Frame::SpaceDefined {
                request_id,
                outcome: DefineOutcome::Refused,
                lsn: 0,
                code: RejectCode::Forbidden as u16,
                message: format!("the session's token may not write space {space:?}"),
            }
        }
        Frame::CreateSpace {
            request_id,
            space,
            dim,
            metric,
        } => {
            let (outcome, lsn, code, message) =
                match engine.define_space(&space, dim, metric).await? {
                    Defined::Created { lsn } => (DefineOutcome::Created, lsn.0, 0, String::new()),
                    Defined::Existed => (DefineOutcome::Existed, 0, 0, String::new()),
                    Defined::Refused(why) => {
                        (DefineOutcome::Refused, 0, why.code as u16, why.to_string())
                    }
                };
            Frame::SpaceDefined {
                request_id,
                outcome,
                lsn,
                code,
                message,
            }
        }
        other => unreachable!("only requests are queued as Work::Request, not {other:?}"),
    })
}

/// A RecallResult refusing a space the token may not read; the same whether or not the
/// space exists.
fn forbidden_recall(request_id: u64, space: &str) -> Frame {
    Frame::RecallResult {
        request_id,
        status: RecallStatus::Forbidden,
        message: format!("the session's token may not read space {space:?}"),
        as_of_lsn: 0,
        more: false,
        hits: Vec::new(),
    }
}

fn count_forbidden() {
    crate::metrics::metrics()
        .auth_failures
        .with_label_values(&["forbidden"])
        .inc();
}

pub(super) async fn close_with<S: FrameSink>(
    send: &mut S,
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

    send.finish_delivered().await;
    Ok(())
}
