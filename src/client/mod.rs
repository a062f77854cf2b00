//! The Rust client: `Session` is one engram/1 session over QUIC; `ObservationStream`
//! keeps streaming across lost connections and server restarts (stream.rs).

mod outbox;
mod recall;
mod stream;

pub use stream::{Backoff, ObservationStream, PENDING_OBSERVATIONS_MAX};

use std::net::SocketAddr;

use tokio::sync::{mpsc, watch};

use crate::observation::Observation;
use crate::space::Metric;
use crate::transport::endpoint::QuicTuning;
use crate::transport::framed::{write_frames, FrameReader, StreamError};
use crate::transport::protocol::{
    DefineOutcome, Frame, Limits, LoadState, SpaceEntry, PROTOCOL_VERSION, RESUME_TOKEN_BYTES,
};
use crate::transport::tls::{quic_client_config, TlsError};
use outbox::Outbox;

#[derive(Clone, Debug)]
pub struct ClientOptions {
    pub addr: SocketAddr,
    /// The server's certificate (DER), trusted as the only root.
    pub cert_der: Vec<u8>,
    /// The name the certificate is for; the generated one is for `localhost`.
    pub server_name: String,
    pub client_name: String,
    /// A server that sends nothing for this long is taken as gone (keep-alives flow every
    /// third of it), and the stream reconnects.
    pub idle_timeout: std::time::Duration,
    pub tuning: QuicTuning,
    /// Presented in Hello to a server with an auth file.
    pub auth_token: Option<String>,
}

impl ClientOptions {
    pub fn new(addr: SocketAddr, cert_der: Vec<u8>, client_name: &str) -> ClientOptions {
        ClientOptions {
            addr,
            cert_der,
            server_name: "localhost".into(),
            client_name: client_name.into(),
            idle_timeout: IDLE_TIMEOUT_DEFAULT,
            tuning: QuicTuning::default(),
            auth_token: None,
        }
    }
}

pub const IDLE_TIMEOUT_DEFAULT: std::time::Duration = std::time::Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("connecting to {addr}: {reason}")]
    Connect { addr: SocketAddr, reason: String },
    #[error(transparent)]
    Stream(#[from] StreamError),
    #[error("the server ended the session: error {code}: {message}")]
    Server { code: u16, message: String },
    #[error("the server sent {0} where it should not")]
    Unexpected(String),
    #[error("the session ended before seq {seq} was acknowledged (last acked {acked})")]
    Ended { seq: u64, acked: u64 },
    #[error("the server refused the recall ({status:?}): {message}")]
    Recall {
        status: crate::transport::protocol::RecallStatus,
        message: String,
    },
}

/// What CreateSpace did.
#[derive(Clone, Debug, PartialEq)]
pub enum SpaceCreation {
    /// Defined, and its definition is durable at this LSN.
    Created { lsn: u64 },
    /// It existed with the same dimension and metric.
    Existed,
    /// Refused: `code` is a RejectCode; `message` names what was wrong.
    Refused { code: u16, message: String },
}

/// The server's spaces, as ListSpaces answered.
#[derive(Clone, Debug, PartialEq)]
pub struct SpaceListing {
    /// The log's durable LSN when the list was made.
    pub durable_lsn: u64,
    pub spaces: Vec<SpaceEntry>,
}

/// A refused observation, as the server named it.
#[derive(Clone, Debug, PartialEq)]
pub struct Rejected {
    pub seq: u64,
    pub code: u16,
    pub field: String,
    pub expected: String,
    pub got: String,
}

/// What the server has said so far.
#[derive(Clone, Debug, Default)]
pub struct Progress {
    /// Every observation up to this seq is durable or rejected.
    pub acked_seq: u64,
    pub lsn: u64,
    pub rejected: Vec<Rejected>,
    /// The server's load as its last FlowControl said, with the credits it announced
    /// and the retry hint of the last Overloaded one: how long to wait before resending
    /// refused observations.
    pub load: LoadState,
    pub credits: u32,
    pub retry_after_ms: u32,
    /// FlowControl frames received.
    pub flow_controls: u64,
    /// The highest load state the server has reported in this session.
    pub peak_load: LoadState,
    /// Set when the session is over: the server's Goodbye, its Error, or a lost stream.
    pub ended: Option<String>,
    pub error: Option<(u16, String)>,
}

/// How long `goodbye` waits for the connection close to be sent.
const CLOSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);
/// Answers read and not yet taken, at most; a client has one request out at a time.
const ANSWERS_QUEUED_MAX: usize = 4;
/// Ids per CheckIds frame sent: 1024 of the longest ids fit well inside 1 MiB.
const CHECK_IDS_PER_REQUEST: usize = 1024;

pub struct Session {
    _endpoint: quinn::Endpoint,
    connection: quinn::Connection,
    /// Frames to send, written by `writer` in batches of whatever has queued up.
    outbox: Outbox,
    /// Answers to ListSpaces and CheckIds, in request order.
    responses: mpsc::Receiver<Frame>,
    next_request_id: u64,
    /// Taken when awaited: once the writer has stopped.
    writer: Option<tokio::task::JoinHandle<Result<quinn::SendStream, StreamError>>>,
    progress: watch::Receiver<Progress>,
    /// Shared with the task that reads the server's frames; taking refusals writes too.
    progress_tx: std::sync::Arc<watch::Sender<Progress>>,
    next_seq: u64,
    /// Set by `abort`: the writer learns of the closed connection only when it next
    /// writes, so until then frames would still queue into a session known to be lost.
    aborted: std::sync::atomic::AtomicBool,
    pub session_id: u64,
    pub resume_token: [u8; RESUME_TOKEN_BYTES],
    pub limits: Limits,
}

impl Session {
    /// Opens a session; with `resume`, continues that one after the last acked seq.
    pub async fn connect(
        options: &ClientOptions,
        resume: Option<[u8; RESUME_TOKEN_BYTES]>,
    ) -> Result<Session, ClientError> {
        let connect_err = |reason: String| ClientError::Connect {
            addr: options.addr,
            reason,
        };
        let mut endpoint = options
            .tuning
            .client(options.addr)
            .map_err(|e| connect_err(e.to_string()))?;
        let mut config = quic_client_config(&options.cert_der)?;
        let transport = options
            .tuning
            .transport_config(Some(options.idle_timeout))
            .map_err(|e| connect_err(e.to_string()))?;
        config.transport_config(std::sync::Arc::new(transport));
        endpoint.set_default_client_config(config);
        let connection = endpoint
            .connect(options.addr, &options.server_name)
            .map_err(|e| connect_err(e.to_string()))?
            .await
            .map_err(|e| connect_err(e.to_string()))?;
        let (mut send, recv) = connection
            .open_bi()
            .await
            .map_err(|e| connect_err(e.to_string()))?;
        let hello = Frame::Hello {
            version: PROTOCOL_VERSION,
            client_name: options.client_name.clone(),
            resume_token: resume,
            auth_token: options.auth_token.clone(),
        };
        write_frames(&mut send, &[hello]).await?;
        let mut reader =
            FrameReader::new(recv, crate::transport::protocol::FRAME_BYTES_MAX_DEFAULT);
        let (session_id, resume_token, last_acked_seq, limits) = match reader.next().await? {
            Some(Frame::Welcome {
                session_id,
                resume_token,
                last_acked_seq,
                limits,
            }) => (session_id, resume_token, last_acked_seq, limits),
            Some(Frame::Error { code, message }) => {
                return Err(ClientError::Server { code, message })
            }
            other => return Err(ClientError::Unexpected(format!("{other:?}"))),
        };
        let (tx, progress) = watch::channel(Progress {
            acked_seq: last_acked_seq,
            ..Progress::default()
        });
        let (answers, responses) = mpsc::channel(ANSWERS_QUEUED_MAX);
        let tx = std::sync::Arc::new(tx);
        tokio::spawn(follow(reader, tx.clone(), answers));
        let (outbox, write_out) = Outbox::new(send);
        let writer = Some(tokio::spawn(write_out));
        Ok(Session {
            _endpoint: endpoint,
            connection,
            outbox,
            writer,
            responses,
            next_request_id: 1,
            progress,
            progress_tx: tx,
            next_seq: last_acked_seq + 1,
            aborted: std::sync::atomic::AtomicBool::new(false),
            session_id,
            resume_token,
            limits,
        })
    }

    /// Sends one observation; returns its seq. Acknowledgement comes later (`wait_acked`).
    pub async fn send(&mut self, obs: &Observation) -> Result<u64, ClientError> {
        let seq = self.next_seq;
        self.queue(|out| Frame::encode_observation(seq, obs, out))
            .await?;
        self.next_seq += 1;
        Ok(seq)
    }

    /// Hands an encoded frame to the writer; its error if it has stopped.
    async fn queue(&mut self, encode: impl FnOnce(&mut Vec<u8>)) -> Result<(), ClientError> {
        if self.aborted.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(ClientError::Stream(StreamError::Write(
                std::io::ErrorKind::ConnectionAborted.into(),
            )));
        }
        if self.outbox.push(encode).await.is_ok() {
            return Ok(());
        }
        // The writer stops only on a write error; wait for it to say which.
        let stopped = match self.writer.take() {
            Some(writer) => writer.await.ok(),
            None => None,
        };
        Err(match stopped {
            Some(Err(e)) => e.into(),
            _ => ClientError::Ended {
                seq: self.next_seq,
                acked: self.progress().acked_seq,
            },
        })
    }

    /// Every space the server has, with its dimension and counts. Answered after the
    /// server acknowledged everything this session sent before.
    pub async fn list_spaces(&mut self) -> Result<SpaceListing, ClientError> {
        let request_id = self
            .request(|request_id| Frame::ListSpaces { request_id })
            .await?;
        match self.answer(request_id).await? {
            Frame::SpaceList {
                durable_lsn,
                spaces,
                ..
            } => Ok(SpaceListing {
                durable_lsn,
                spaces,
            }),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Defines `space` before its first observation, with `dim` and `metric`.
    pub async fn create_space(
        &mut self,
        space: &str,
        dim: u32,
        metric: Metric,
    ) -> Result<SpaceCreation, ClientError> {
        let request_id = self
            .request(|request_id| Frame::CreateSpace {
                request_id,
                space: space.to_owned(),
                dim,
                metric,
            })
            .await?;
        match self.answer(request_id).await? {
            Frame::SpaceDefined {
                outcome,
                lsn,
                code,
                message,
                ..
            } => Ok(match outcome {
                DefineOutcome::Created => SpaceCreation::Created { lsn },
                DefineOutcome::Existed => SpaceCreation::Existed,
                DefineOutcome::Refused => SpaceCreation::Refused { code, message },
            }),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    /// For each of `ids`: whether the server has it stored durably in `space`.
    pub async fn check_ids(
        &mut self,
        space: &str,
        ids: &[String],
    ) -> Result<Vec<bool>, ClientError> {
        let mut found = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(CHECK_IDS_PER_REQUEST) {
            let request_id = self
                .request(|request_id| Frame::CheckIds {
                    request_id,
                    space: space.to_owned(),
                    ids: chunk.to_vec(),
                })
                .await?;
            match self.answer(request_id).await? {
                Frame::CheckResult { found: part, .. } if part.len() == chunk.len() => {
                    found.extend(part)
                }
                other => return Err(ClientError::Unexpected(format!("{other:?}"))),
            }
        }
        Ok(found)
    }

    async fn request(&mut self, frame: impl FnOnce(u64) -> Frame) -> Result<u64, ClientError> {
        let request_id = self.next_request_id;
        self.next_request_id += 1;
        let frame = frame(request_id);
        self.queue(|out| frame.encode(out)).await?;
        Ok(request_id)
    }

    /// The answer to `request_id`: answers come in request order.
    async fn answer(&mut self, request_id: u64) -> Result<Frame, ClientError> {
        let Some(answer) = self.responses.recv().await else {
            let p = self.progress();
            return Err(match p.error {
                Some((code, message)) => ClientError::Server { code, message },
                None => ClientError::Ended {
                    seq: self.next_seq,
                    acked: p.acked_seq,
                },
            });
        };
        let answered = match &answer {
            Frame::SpaceList { request_id, .. }
            | Frame::CheckResult { request_id, .. }
            | Frame::SpaceDefined { request_id, .. }
            | Frame::RecallResult { request_id, .. } => *request_id,
            _ => 0,
        };
        if answered != request_id {
            return Err(ClientError::Unexpected(format!(
                "an answer to request {answered} while waiting for {request_id}"
            )));
        }
        Ok(answer)
    }

    /// The highest load state the server has reported in this session.
    pub fn peak_load(&self) -> LoadState {
        self.progress.borrow().peak_load
    }

    /// The wait the server last asked for before resending refused observations.
    pub fn retry_after_ms(&self) -> u32 {
        self.progress.borrow().retry_after_ms
    }

    pub fn progress(&self) -> Progress {
        self.progress.borrow().clone()
    }

    /// The last acked seq, and the refusals up to it, taken out of the progress. A
    /// session keeps every refusal until it is taken, so a long-lived caller takes them
    /// (ObservationStream does after every send) to keep its memory bounded.
    pub fn take_settled(&self) -> (u64, Vec<Rejected>) {
        let mut settled = (0, Vec::new());
        self.progress_tx.send_if_modified(|p| {
            let acked = p.acked_seq;
            // Refusals of a batch come before its Ack: keep those not yet covered.
            let (done, later): (Vec<_>, Vec<_>) =
                p.rejected.drain(..).partition(|r| r.seq <= acked);
            p.rejected = later;
            settled = (acked, done);
            false
        });
        settled
    }

    /// Waits until the server's frames change the progress: an ack, a refusal, a load
    /// state. Never returns once the session has ended.
    pub async fn settled_changed(&mut self) {
        if self.progress.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Waits until every observation up to `seq` is acknowledged.
    pub async fn wait_acked(&mut self, seq: u64) -> Result<Progress, ClientError> {
        let progress = self
            .progress
            .wait_for(|p| p.acked_seq >= seq || p.ended.is_some())
            .await
            .map(|p| p.clone());
        match progress {
            Ok(p) if p.acked_seq >= seq => Ok(p),
            Ok(p) => match p.error {
                Some((code, message)) => Err(ClientError::Server { code, message }),
                None => Err(ClientError::Ended {
                    seq,
                    acked: p.acked_seq,
                }),
            },
            Err(_) => Err(ClientError::Ended { seq, acked: 0 }),
        }
    }

    /// Drops the connection at once, as a network failure would (for tests and tools).
    pub fn abort(&self) {
        self.aborted
            .store(true, std::sync::atomic::Ordering::Relaxed);
        self.connection.close(1u32.into(), b"aborted");
    }

    /// Says goodbye after the last sent observation and waits for the server's goodbye.
    pub async fn goodbye(mut self) -> Result<Progress, ClientError> {
        let last_seq = self.next_seq - 1;
        self.queue(|out| Frame::ClientGoodbye { last_seq }.encode(out))
            .await?;
        self.outbox.close();
        if let Some(writer) = self.writer.take() {
            if let Ok(Ok(mut send)) = writer.await {
                let _ = send.finish();
            }
        }
        let progress = self
            .progress
            .wait_for(|p| p.ended.is_some())
            .await
            .map(|p| p.clone())
            .unwrap_or_default();
        self.connection.close(0u32.into(), b"goodbye");
        // Let the close reach the server before a short-lived process exits; otherwise the
        // server holds the connection until its idle timeout, and a graceful shutdown
        // waits for it.
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, self._endpoint.wait_idle()).await;
        Ok(progress)
    }
}

/// Applies the server's frames to the progress until the stream ends; answers to
/// requests go to `answers`.
async fn follow(
    mut reader: FrameReader<quinn::RecvStream>,
    progress: std::sync::Arc<watch::Sender<Progress>>,
    answers: mpsc::Sender<Frame>,
) {
    loop {
        let frame = reader.next().await;
        if let Ok(Some(
            answer @ (Frame::SpaceList { .. }
            | Frame::CheckResult { .. }
            | Frame::SpaceDefined { .. }
            | Frame::RecallResult { .. }),
        )) = frame
        {
            // Nobody waiting (the session was dropped mid-request) is not an error.
            let _ = answers.send(answer).await;
            continue;
        }
        let mut done = false;
        progress.send_modify(|p| match frame {
            Ok(Some(Frame::Ack { seq, lsn })) => {
                p.acked_seq = p.acked_seq.max(seq);
                p.lsn = p.lsn.max(lsn);
            }
            Ok(Some(Frame::Reject {
                seq,
                code,
                field,
                expected,
                got,
            })) => p.rejected.push(Rejected {
                seq,
                code,
                field,
                expected,
                got,
            }),
            Ok(Some(Frame::FlowControl {
                credits,
                state,
                retry_after_ms,
            })) => {
                p.load = state;
                p.credits = credits;
                if state == LoadState::Overloaded {
                    // Kept until the next Overloaded: the refusals it explains may be
                    // settled after later FlowControls arrived.
                    p.retry_after_ms = retry_after_ms;
                }
                p.flow_controls += 1;
                p.peak_load = p.peak_load.max(state);
            }
            Ok(Some(Frame::ServerGoodbye { last_acked_seq })) => {
                p.acked_seq = p.acked_seq.max(last_acked_seq);
                p.ended = Some("goodbye".into());
                done = true;
            }
            Ok(Some(Frame::Error { code, message })) => {
                p.ended = Some(format!("error {code}: {message}"));
                p.error = Some((code, message));
                done = true;
            }
            Ok(Some(other)) => {
                p.ended = Some(format!("unexpected {}", other.frame_type()));
                done = true;
            }
            Ok(None) => {
                p.ended = Some("stream finished".into());
                done = true;
            }
            Err(e) => {
                p.ended = Some(with_causes(&e));
                done = true;
            }
        });
        if done {
            return;
        }
    }
}

/// An error and its causes, outermost first ("reading the stream: connection lost: reset
/// by peer"): why a session ended matters to whoever reads the log.
pub(crate) fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.ends_with(&more) {
            text = format!("{text}: {more}");
        }
        cause = c.source();
    }
    text
}
