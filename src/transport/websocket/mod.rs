//! The WebSocket gateway, `ws://HTTP_ADDR/v1/stream`: browsers cannot open QUIC streams,
//! so they speak JSON (messages.rs, docs/protocol.md) to the gateway, which turns each
//! message into an engram/1 frame and runs the very session code a QUIC stream runs, over
//! an in-memory pipe. Validation, dedupe, limits, durable acks and resumption are
//! therefore the native protocol's, not a second implementation of them.
//!
//! Backpressure: the pipe holds `PIPE_BYTES` each way. When the session stops reading
//! (its credits are spent, or the server is Critical) the pipe fills, the gateway stops
//! reading the socket, and TCP holds the browser back; the browser also hears
//! flow_control pause. A browser that sends flow_control pause stops the gateway reading
//! the session's answers, which in turn holds the session back.

pub mod messages;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::io::{AsyncRead, DuplexStream, WriteHalf};
use tokio::sync::{mpsc, watch};

use self::messages::{hello, ClientMessage, Inbound, MessageError, ServerMessage};
use super::framed::{write_frames, FrameReader};
use super::protocol::Frame;
use super::session::{run_session, SessionTable};
use crate::ingest::Engine;

/// Bytes buffered each way between the socket and its session.
const PIPE_BYTES: usize = 256 << 10;
/// The gateway's own messages (errors for bad messages) waiting to be sent, at most; past
/// it the gateway stops reading the socket until they are sent.
const NOTES_MAX: usize = 64;
/// The heartbeat interval unless configured.
pub const HEARTBEAT_DEFAULT: Duration = Duration::from_secs(30);
/// Observations a client may keep unacknowledged, at most, whatever init asks.
pub const BUFFER_SIZE_MAX: u32 = 65_536;

/// What every WebSocket session shares.
#[derive(Clone)]
pub struct Gateway {
    sessions: Arc<SessionTable>,
    stop: watch::Receiver<bool>,
    heartbeat: Duration,
    active: Arc<watch::Sender<usize>>,
}

impl Gateway {
    /// Sessions resume from `sessions` (shared with QUIC); `stop` turning true ends them
    /// gracefully: each acknowledges what it read and says close.
    pub fn new(
        sessions: Arc<SessionTable>,
        stop: watch::Receiver<bool>,
        heartbeat: Duration,
    ) -> Gateway {
        assert!(!heartbeat.is_zero(), "a heartbeat interval is positive");
        Gateway {
            sessions,
            stop,
            heartbeat,
            active: Arc::new(watch::channel(0).0),
        }
    }

    /// Waits, at most `timeout`, until no WebSocket session is left.
    pub async fn drained(&self, timeout: Duration) {
        let mut active = self.active.subscribe();
        let _ = tokio::time::timeout(timeout, active.wait_for(|n| *n == 0)).await;
    }

    /// The largest message the gateway takes: JSON spells a float in up to about 16
    /// bytes where a frame takes 4, so four frames' worth.
    pub fn message_bytes_max(engine: &Engine) -> usize {
        engine.limits().announced().frame_bytes_max as usize * 4
    }

    /// Runs one WebSocket session to its end.
    /// `bearer`: the upgrade request's `Authorization: Bearer` token, used unless init
    /// carries one.
    pub async fn serve(self, socket: WebSocket, engine: Arc<Engine>, bearer: Option<String>) {
        let _active = Active::count(&self.active);
        let (mut sink, mut stream) = socket.split();
        // A socket that never says init does not hold its connection for ever.
        let init = tokio::time::timeout(
            self.sessions.limits().hello_timeout,
            wait_init(&mut sink, &mut stream, bearer.as_deref()),
        )
        .await;
        if let Ok(Some(init)) = init {
            self.run(init, sink, stream, engine).await;
        }
    }

    async fn run(self, init: Init, sink: Sink, stream: Stream, engine: Arc<Engine>) {
        let frame_bytes_max = engine.limits().announced().frame_bytes_max;
        let (gateway_end, session_end) = tokio::io::duplex(PIPE_BYTES);
        let (session_recv, session_send) = tokio::io::split(session_end);
        let (answers, mut frames_out) = tokio::io::split(gateway_end);
        let session = tokio::spawn(run_session(
            engine,
            self.sessions.clone(),
            session_send,
            session_recv,
            self.stop.clone(),
        ));
        if write_frames(&mut frames_out, &[init.hello]).await.is_err() {
            return;
        }
        let (notes, notes_rx) = mpsc::channel(NOTES_MAX);
        let (paused, paused_rx) = watch::channel(false);
        let (done, done_rx) = watch::channel(false);
        let outbound = tokio::spawn(
            Outbound {
                sink,
                answers: FrameReader::new(answers, frame_bytes_max),
                notes: notes_rx,
                paused: paused_rx,
                buffer_size: init.buffer_size,
                heartbeat: self.heartbeat,
            }
            .run(done),
        );
        inbound(
            stream,
            frames_out,
            notes,
            paused,
            &init.space,
            frame_bytes_max,
            done_rx,
        )
        .await;
        if let Ok(Err(e)) = session.await {
            tracing::debug!(error = %e, "a WebSocket session ended with an error");
        }
        let _ = outbound.await;
    }
}

/// Counts a WebSocket session while it lives, however it ends.
struct Active(Arc<watch::Sender<usize>>);

impl Active {
    fn count(active: &Arc<watch::Sender<usize>>) -> Active {
        active.send_modify(|n| *n += 1);
        Active(active.clone())
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}

type Sink = SplitSink<WebSocket, Message>;
type Stream = SplitStream<WebSocket>;

struct Init {
    space: String,
    hello: Frame,
    buffer_size: u32,
}

async fn send(sink: &mut Sink, message: &ServerMessage) -> bool {
    let text = serde_json::to_string(message).expect("server messages serialise");
    sink.send(Message::Text(text.into())).await.is_ok()
}

/// The seq a message that could not be parsed seems to carry, for its error.
fn seq_hint(text: &str) -> Option<u64> {
    serde_json::from_str::<serde_json::Value>(text)
        .ok()?
        .get("seq")?
        .as_u64()
}

/// Reads until an init arrives, answering anything else with an error; None if the
/// socket closes first.
async fn wait_init(sink: &mut Sink, stream: &mut Stream, bearer: Option<&str>) -> Option<Init> {
    while let Some(Ok(message)) = stream.next().await {
        let text = match message {
            Message::Text(text) => text,
            Message::Close(_) => return None,
            Message::Binary(_) => {
                let error = MessageError::NotInit.to_message(None);
                if !send(sink, &error).await {
                    return None;
                }
                continue;
            }
            _ => continue,
        };
        let init = match messages::parse(&text) {
            Ok(ClientMessage::Init {
                space,
                resume_token,
                buffer_size,
                client_name,
                token,
            }) => hello(
                resume_token.as_deref(),
                client_name,
                token.or_else(|| bearer.map(str::to_owned)),
            )
            .map(|hello| Init {
                space,
                hello,
                buffer_size: buffer_size
                    .unwrap_or(BUFFER_SIZE_MAX)
                    .clamp(1, BUFFER_SIZE_MAX),
            }),
            Ok(_) => Err(MessageError::NotInit),
            Err(e) => Err(e.into()),
        };
        match init {
            Ok(init) => return Some(init),
            Err(e) => {
                if !send(sink, &e.to_message(seq_hint(&text))).await {
                    return None;
                }
            }
        }
    }
    None
}

/// Socket to session: each message becomes a frame in the pipe, or an error note back to
/// the browser; the session goes on either way. Ends when the socket closes, the browser
/// says close, or the outbound half is done.
async fn inbound(
    mut stream: Stream,
    mut frames: WriteHalf<DuplexStream>,
    notes: mpsc::Sender<ServerMessage>,
    paused: watch::Sender<bool>,
    space: &str,
    frame_bytes_max: u32,
    mut done: watch::Receiver<bool>,
) {
    let mut batch = Vec::new();
    loop {
        let mut message = tokio::select! {
            message = stream.next() => message,
            _ = done.wait_for(|d| *d) => return,
        };
        // What has already arrived goes to the session in one write, as a QUIC stream's
        // frames do: the session then appends them in one batch and acks them at once,
        // not one by one.
        let mut ended = false;
        loop {
            match step(message, space, frame_bytes_max, &paused) {
                Step::Frame(frame) => {
                    ended = matches!(frame, Frame::ClientGoodbye { .. });
                    batch.push(frame);
                }
                Step::Frames(frames) => batch.extend(frames),
                Step::Note(note) => {
                    if notes.send(note).await.is_err() {
                        return;
                    }
                }
                Step::Skip => {}
                Step::End => ended = true,
            }
            if ended || batch.len() >= BATCH_MESSAGES_MAX {
                break;
            }
            match stream.next().now_or_never() {
                Some(next) => message = next,
                None => break,
            }
        }
        if write_frames(&mut frames, &batch).await.is_err() || ended {
            return;
        }
        batch.clear();
    }
}

/// A binary message: engram/1 Observe frames, one or more, exactly as on a QUIC stream
/// (docs/protocol.md): no JSON to parse, so the fast way to stream. Anything else in it
/// is refused whole with an error note, and the session goes on.
fn observe_frames(bytes: &[u8], frame_bytes_max: u32) -> Step {
    let refuse = |expected: &str, got: String| {
        Step::Note(ServerMessage::Error {
            seq: None,
            code: "malformed_frame".into(),
            field: Some("binary message".into()),
            expected: Some(expected.into()),
            message: format!("binary message: expected {expected}, got {got}"),
            got: Some(got),
            retryable: false,
            fatal: false,
        })
    };
    let mut frames = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        match Frame::decode(&bytes[at..], frame_bytes_max) {
            Ok(Some((frame @ Frame::Observe(_), used))) => {
                frames.push(frame);
                at += used;
            }
            Ok(Some((other, _))) => {
                return refuse(
                    "engram/1 Observe frames only",
                    format!("a {} frame", other.frame_type()),
                )
            }
            Ok(None) => {
                return refuse(
                    "whole frames",
                    format!("{} bytes of a frame", bytes.len() - at),
                )
            }
            Err(e) => return refuse("engram/1 Observe frames", e.to_string()),
        }
    }
    Step::Frames(frames)
}

/// Messages already arrived that go to the session in one write, at most.
const BATCH_MESSAGES_MAX: usize = 256;

/// What one socket message asks of the gateway.
enum Step {
    Frame(Frame),
    /// Observe frames a binary message carried.
    Frames(Vec<Frame>),
    /// An error for the browser; the session goes on.
    Note(ServerMessage),
    Skip,
    /// The socket closed or failed.
    End,
}

fn step(
    message: Option<Result<Message, axum::Error>>,
    space: &str,
    frame_bytes_max: u32,
    paused: &watch::Sender<bool>,
) -> Step {
    let text = match message {
        Some(Ok(Message::Text(text))) => text,
        Some(Ok(Message::Binary(bytes))) => return observe_frames(&bytes, frame_bytes_max),
        Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return Step::End,
        Some(Ok(_)) => return Step::Skip,
    };
    match messages::decode_text(&text, space) {
        Ok(Inbound::Frame(frame)) => Step::Frame(frame),
        Ok(Inbound::Pause(pause)) => {
            paused.send_replace(pause);
            Step::Skip
        }
        Ok(Inbound::Heartbeat) => Step::Skip,
        Err(e) => Step::Note(e.to_message(seq_hint(&text))),
    }
}

/// Session to socket: every frame the session sends, as JSON, plus the gateway's notes
/// and heartbeats. Stops reading the session while the browser asked to pause.
struct Outbound<R> {
    sink: Sink,
    answers: FrameReader<R>,
    notes: mpsc::Receiver<ServerMessage>,
    paused: watch::Receiver<bool>,
    buffer_size: u32,
    heartbeat: Duration,
}

impl<R: AsyncRead + Unpin> Outbound<R> {
    async fn run(mut self, done: watch::Sender<bool>) {
        let heartbeat_ms = self.heartbeat.as_millis() as u64;
        let mut beats =
            tokio::time::interval_at(tokio::time::Instant::now() + self.heartbeat, self.heartbeat);
        let (mut notes_open, mut pause_open) = (true, true);
        loop {
            // Once the browser's half is gone, nothing can resume: answers are read on
            // to the session's close.
            let paused = pause_open && *self.paused.borrow_and_update();
            let message = tokio::select! {
                frame = self.answers.next(), if !paused => match frame {
                    Ok(Some(frame)) => {
                        let last = matches!(frame, Frame::ServerGoodbye { .. } | Frame::Error { .. });
                        let message = messages::from_frame(frame, self.buffer_size, heartbeat_ms);
                        if !send(&mut self.sink, &message).await || last {
                            break;
                        }
                        continue;
                    }
                    Ok(None) | Err(_) => break,
                },
                note = self.notes.recv(), if notes_open => match note {
                    Some(note) => note,
                    None => {
                        notes_open = false;
                        continue;
                    }
                },
                changed = self.paused.changed(), if pause_open => {
                    pause_open = changed.is_ok();
                    continue;
                }
                _ = beats.tick() => ServerMessage::Heartbeat {},
            };
            if !send(&mut self.sink, &message).await {
                break;
            }
        }
        let _ = self.sink.send(Message::Close(None)).await;
        done.send_replace(true);
    }
}
