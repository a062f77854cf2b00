//! Target `ws`: the WebSocket gateway, as a browser would use it. Each connection sends
//! JSON observations with up to --window unacknowledged and reads the cumulative acks;
//! an observation's latency runs from its send to the ack that covers it.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::Context;
use engram::observation::Observation;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::{oneshot, Semaphore};
use tokio_tungstenite::tungstenite::Message;

use super::{join_senders, progress_bar, summed, Args, Report, Sent};

/// Observations each connection keeps unacknowledged unless --window says otherwise.
const WINDOW_DEFAULT: usize = 1024;

pub fn run(args: &Args) -> anyhow::Result<Report> {
    let url = format!("ws://{}/v1/stream", args.http_addr);
    let bar = progress_bar(args.count);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()?;
    let started = Instant::now();
    let results: Vec<anyhow::Result<Sent>> = runtime.block_on(async {
        let tasks: Vec<_> = (0..args.connections)
            .map(|sender| {
                let mine: Vec<Observation> = (args.start + sender as u64..args.start + args.count)
                    .step_by(args.connections)
                    .map(|n| args.observation(n))
                    .collect();
                let (url, space, window, bar, binary) = (
                    url.clone(),
                    args.space.clone(),
                    args.window.unwrap_or(WINDOW_DEFAULT),
                    bar.clone(),
                    args.ws_binary,
                );
                tokio::spawn(async move {
                    let sent = stream(&url, &space, window, binary, mine).await;
                    bar.inc(sent.as_ref().map_or(0, |s| s.latencies.len() as u64));
                    sent
                })
            })
            .collect();
        join_senders(tasks).await
    });
    bar.finish_and_clear();
    let target = if args.ws_binary { "ws-binary" } else { "ws" };
    summed(target, results, started.elapsed().as_secs_f64())
}

/// An observation message, serialised straight from the observation: building a
/// `serde_json::Value` first would cost the load generator an allocation per float.
#[derive(serde::Serialize)]
struct ObservationMessage<'a> {
    r#type: &'static str,
    seq: u64,
    episode: Episode<'a>,
}

#[derive(serde::Serialize)]
struct Episode<'a> {
    id: &'a str,
    when: f64,
    what: &'a str,
    embedding: &'a [f32],
    confidence: f32,
}

/// An observation as a binary message: its engram/1 Observe frame, no JSON.
fn binary_message(seq: u64, o: &Observation) -> Message {
    let mut out = Vec::with_capacity(o.embedding.len() * 4 + 128);
    engram::transport::protocol::Frame::encode_observation(seq, o, &mut out);
    Message::Binary(out.into())
}

fn message(seq: u64, o: &Observation) -> Message {
    let text = serde_json::to_string(&ObservationMessage {
        r#type: "observation",
        seq,
        episode: Episode {
            id: &o.id,
            when: o.when_unix_ns as f64 / 1e6,
            what: &o.what,
            embedding: &o.embedding,
            confidence: o.confidence,
        },
    })
    .expect("an observation serialises");
    Message::Text(text.into())
}

/// Sent and not yet acknowledged, oldest first: (seq, when sent).
type InFlight = Arc<Mutex<VecDeque<(u64, Instant)>>>;

/// One connection: init, then observations with at most `window` unacknowledged. The
/// writer and the reader run apart: a writer that stopped to read could deadlock with a
/// server that stopped reading until its acks are read.
async fn stream(
    url: &str,
    space: &str,
    window: usize,
    binary: bool,
    observations: Vec<Observation>,
) -> anyhow::Result<Sent> {
    let (socket, _) = tokio_tungstenite::connect_async(url)
        .await
        .with_context(|| format!("connecting to {url}"))?;
    let (mut tx, rx) = socket.split();
    let init = json!({ "type": "init", "space": space, "buffer_size": window });
    tx.send(Message::Text(init.to_string().into())).await?;
    let room = Arc::new(Semaphore::new(window.max(1)));
    let in_flight: InFlight = Default::default();
    let (ready_tx, ready) = oneshot::channel();
    let reader = tokio::spawn(read_acks(rx, room.clone(), in_flight.clone(), ready_tx));
    ready.await.context("the server did not answer init")?;
    for (i, o) in observations.iter().enumerate() {
        room.acquire().await.expect("never closed").forget();
        let seq = i as u64 + 1;
        in_flight
            .lock()
            .expect("lock")
            .push_back((seq, Instant::now()));
        let message = if binary {
            binary_message(seq, o)
        } else {
            message(seq, o)
        };
        tx.send(message).await?;
    }
    let close = json!({ "type": "close", "last_seq": observations.len() as u64 });
    tx.send(Message::Text(close.to_string().into())).await?;
    let (latencies, refused) = reader.await.expect("reader task")?;
    Ok(Sent {
        latencies,
        sent: observations.len() as u64,
        rejected: refused,
    })
}

type Acks = futures_util::stream::SplitStream<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
>;

/// Reads until the server's close: each ack settles what it covers and frees its room.
/// Returns the latencies of the acknowledged and the number refused.
async fn read_acks(
    mut rx: Acks,
    room: Arc<Semaphore>,
    in_flight: InFlight,
    ready: oneshot::Sender<()>,
) -> anyhow::Result<(Vec<f64>, u64)> {
    let mut ready = Some(ready);
    let mut refused: HashSet<u64> = HashSet::new();
    let (mut latencies, mut rejected) = (Vec::new(), 0);
    while let Some(incoming) = rx.next().await {
        let text = match incoming? {
            Message::Text(text) => text,
            Message::Close(_) => break,
            _ => continue,
        };
        let m: Value = serde_json::from_str(&text)?;
        match m["type"].as_str() {
            Some("init_ack") => {
                if let Some(ready) = ready.take() {
                    let _ = ready.send(());
                }
            }
            Some("ack") => {
                let seq = m["seq"].as_u64().unwrap_or(0);
                let now = Instant::now();
                let mut settled = 0;
                let mut in_flight = in_flight.lock().expect("lock");
                while in_flight.front().is_some_and(|(s, _)| *s <= seq) {
                    let (s, at) = in_flight.pop_front().expect("non-empty");
                    settled += 1;
                    if refused.remove(&s) {
                        rejected += 1;
                    } else {
                        latencies.push((now - at).as_secs_f64() * 1e3);
                    }
                }
                room.add_permits(settled);
            }
            Some("error") if m["fatal"] == true => {
                anyhow::bail!("the server ended the session: {m}")
            }
            Some("error") => {
                if let Some(seq) = m["seq"].as_u64() {
                    refused.insert(seq);
                }
            }
            Some("close") => break,
            _ => {}
        }
    }
    Ok((latencies, rejected))
}
