//! Target `raw-quic`: the ceiling engram is measured against. The same QUIC stack, TLS,
//! tuning and message size as an engram session, with nothing behind it: an in-process
//! quinn server counts whole messages and answers each read with the running count (a
//! cumulative ack, as engram's Ack is), with no ingest, no log and no sync.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use engram::synthetic;
use engram::transport::endpoint::QuicTuning;
use engram::transport::protocol::Frame;
use engram::transport::tls::{quic_client_config, ServerIdentity};

use crate::{report, Args, Report};

/// Bytes the sender hands to QUIC per write, as the engram client batches its frames.
const WRITE_BATCH_BYTES: usize = 256 << 10;
/// Messages sent and not yet counted by the server, at most per connection: the same
/// bound the engram client keeps (`PENDING_OBSERVATIONS_MAX`).
const PENDING_MAX: usize = engram::client::PENDING_OBSERVATIONS_MAX;

pub fn run(args: &Args) -> anyhow::Result<Report> {
    // One real Observe frame of the requested dimension: the size engram moves per message.
    let obs = synthetic::observation(
        args.seed,
        &args.space,
        "obs-",
        0,
        args.dim,
        args.distribution,
    );
    let mut message = Vec::new();
    Frame::encode_observation(1, &obs, &mut message);
    let message = Arc::new(message);
    let identity = ServerIdentity::load_or_generate(&args.data_dir)
        .with_context(|| format!("a certificate in {}", args.data_dir.display()))?;
    let cert = identity.chain[0].to_vec();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()?;
    let tuning = QuicTuning::default();
    let (latencies, seconds) = runtime.block_on(async {
        let server = tuning.server(
            "127.0.0.1:0".parse().expect("valid"),
            identity.quic_server_config()?,
            None,
            &Default::default(),
        )?;
        let addr = server.local_addr()?;
        let message_len = message.len();
        tokio::spawn(async move {
            while let Some(incoming) = server.accept().await {
                tokio::spawn(async move {
                    if let Ok(conn) = incoming.await {
                        while let Ok((send, recv)) = conn.accept_bi().await {
                            tokio::spawn(count_messages(send, recv, message_len));
                        }
                    }
                });
            }
        });
        let started = Instant::now();
        let senders: Vec<_> = (0..args.connections)
            .map(|sender| {
                let share = (sender as u64..args.count)
                    .step_by(args.connections)
                    .count();
                let interval = (args.rate > 0)
                    .then(|| Duration::from_secs_f64(args.connections as f64 / args.rate as f64));
                let (message, cert) = (message.clone(), cert.clone());
                tokio::spawn(send_messages(tuning, addr, cert, message, share, interval))
            })
            .collect();
        let mut all = Vec::new();
        for s in senders {
            all.extend(s.await.expect("sender task")?);
        }
        anyhow::Ok((all, started.elapsed().as_secs_f64()))
    })?;
    Ok(report("raw-quic", latencies, args.count, 0, seconds))
}

/// The server side of one stream: counts whole messages and answers every read with the
/// count so far (u64, little-endian).
async fn count_messages(mut send: quinn::SendStream, mut recv: quinn::RecvStream, len: usize) {
    let mut bytes = 0u64;
    let mut buf = vec![0u8; 64 << 10];
    while let Ok(Some(n)) = recv.read(&mut buf).await {
        bytes += n as u64;
        let whole = bytes / len as u64;
        if send.write_all(&whole.to_le_bytes()).await.is_err() {
            return;
        }
    }
    let _ = send.finish();
}

/// One connection: `count` messages, paced at `interval` if given; the latency of each
/// from its write to the count that covers it, in milliseconds.
async fn send_messages(
    tuning: QuicTuning,
    addr: std::net::SocketAddr,
    cert: Vec<u8>,
    message: Arc<Vec<u8>>,
    count: usize,
    interval: Option<Duration>,
) -> anyhow::Result<Vec<f64>> {
    let mut endpoint = tuning.client(addr)?;
    let mut config = quic_client_config(&cert)?;
    config.transport_config(Arc::new(tuning.transport_config(None)?));
    endpoint.set_default_client_config(config);
    let conn = endpoint.connect(addr, "localhost")?.await?;
    let (mut send, mut recv) = conn.open_bi().await?;
    let sent_at = Arc::new(Mutex::new(VecDeque::<Instant>::with_capacity(PENDING_MAX)));
    let counted = Arc::new(tokio::sync::Notify::new());
    let reader = {
        let (sent_at, counted) = (sent_at.clone(), counted.clone());
        tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(count);
            let mut word = [0u8; 8];
            let mut seen = 0u64;
            while (latencies.len()) < count {
                recv.read_exact(&mut word).await?;
                let now = Instant::now();
                let upto = u64::from_le_bytes(word);
                let mut pending = sent_at.lock().expect("sent-at lock");
                while seen < upto {
                    let at = pending
                        .pop_front()
                        .expect("a send time per counted message");
                    latencies.push((now - at).as_secs_f64() * 1e3);
                    seen += 1;
                }
                drop(pending);
                counted.notify_one();
            }
            anyhow::Ok(latencies)
        })
    };
    let start = tokio::time::Instant::now();
    let mut batch = Vec::with_capacity(WRITE_BATCH_BYTES + message.len());
    for i in 0..count {
        if let Some(interval) = interval {
            let due = start + interval * i as u32;
            if due > tokio::time::Instant::now() {
                // Write what is batched before waiting, or its latency would include the wait.
                if !batch.is_empty() {
                    send.write_all(&batch).await?;
                    batch.clear();
                }
                tokio::time::sleep_until(due).await;
            }
        }
        loop {
            let notified = counted.notified();
            if sent_at.lock().expect("sent-at lock").len() < PENDING_MAX {
                break;
            }
            if !batch.is_empty() {
                send.write_all(&batch).await?;
                batch.clear();
            }
            notified.await;
        }
        sent_at
            .lock()
            .expect("sent-at lock")
            .push_back(Instant::now());
        batch.extend_from_slice(&message);
        if batch.len() >= WRITE_BATCH_BYTES {
            send.write_all(&batch).await?;
            batch.clear();
        }
    }
    send.write_all(&batch).await?;
    send.finish()?;
    let latencies = reader.await.expect("reader task")?;
    conn.close(0u32.into(), b"done");
    endpoint.wait_idle().await;
    Ok(latencies)
}
