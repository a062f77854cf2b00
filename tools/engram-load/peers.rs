//! Targets `redis` and `nats`: the peers a user would pick instead of engram for durable,
//! acknowledged ingest, driven with their own client crates and the same load: each
//! observation's engram/1 Observe frame as the payload (the bytes engram receives),
//! --connections connections, --window requests in flight on each. An observation's
//! latency runs from its send to its own acknowledgement.
//!
//! Redis: XADD to one stream, answered once the AOF is written (`appendfsync always`
//! syncs before replying). NATS: a JetStream publish, answered with the stream's ack.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use engram::transport::protocol::Frame;
use tokio::sync::Semaphore;

use super::{join_senders, progress_bar, summed, Args, Report, Sent};

/// The stream (Redis key, JetStream stream and subject) every peer run writes.
const STREAM: &str = "engram_load";

/// What one connection sends: its observations' frames.
fn payloads(args: &Args, sender: usize) -> Vec<bytes::Bytes> {
    (args.start + sender as u64..args.start + args.count)
        .step_by(args.connections)
        .map(|n| {
            let mut frame = Vec::new();
            Frame::encode_observation(n, &args.observation(n), &mut frame);
            bytes::Bytes::from(frame)
        })
        .collect()
}

/// Runs one sender per connection, `send` answering each payload's acknowledgement with
/// at most `window` in flight per connection.
fn run_senders<C, Connect, ConnectFut, Send, SendFut>(
    args: &Args,
    target: &'static str,
    connect: Connect,
    send: Send,
) -> anyhow::Result<Report>
where
    C: Clone + std::marker::Send + 'static,
    Connect: Fn() -> ConnectFut,
    ConnectFut: std::future::Future<Output = anyhow::Result<C>>,
    Send: Fn(C, bytes::Bytes) -> SendFut + Clone + std::marker::Send + 'static,
    SendFut: std::future::Future<Output = anyhow::Result<()>> + std::marker::Send + 'static,
{
    let window = args.window.unwrap_or(super::PEER_WINDOW_DEFAULT).max(1);
    let bar = progress_bar(args.count);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()?;
    let results = runtime.block_on(async {
        let mut connections = Vec::new();
        for _ in 0..args.connections {
            connections.push(connect().await?);
        }
        let started = Instant::now();
        let tasks: Vec<_> = connections
            .into_iter()
            .enumerate()
            .map(|(sender, connection)| {
                let (mine, bar, send) = (payloads(args, sender), bar.clone(), send.clone());
                tokio::spawn(async move {
                    let room = Arc::new(Semaphore::new(window));
                    let mut acks = tokio::task::JoinSet::new();
                    for payload in mine.iter().cloned() {
                        let permit = room.clone().acquire_owned().await.expect("never closed");
                        let (connection, send) = (connection.clone(), send.clone());
                        acks.spawn(async move {
                            let at = Instant::now();
                            let acked = send(connection, payload).await;
                            drop(permit);
                            acked.map(|()| at.elapsed().as_secs_f64() * 1e3)
                        });
                    }
                    let mut latencies = Vec::with_capacity(mine.len());
                    while let Some(acked) = acks.join_next().await {
                        latencies.push(acked.expect("send task")?);
                        bar.inc(1);
                    }
                    anyhow::Ok(Sent {
                        latencies,
                        sent: mine.len() as u64,
                        rejected: 0,
                    })
                })
            })
            .collect();
        let results = join_senders(tasks).await;
        anyhow::Ok((results, started.elapsed().as_secs_f64()))
    });
    bar.finish_and_clear();
    let (results, seconds) = results?;
    summed(target, results, seconds)
}

pub fn run_redis(args: &Args) -> anyhow::Result<Report> {
    let url = format!("redis://{}/", args.peer_addr);
    let client = redis::Client::open(url.as_str())?;
    run_senders(
        args,
        "redis",
        || {
            let (client, url) = (client.clone(), url.clone());
            async move {
                // One multiplexed connection pipelines every request sent on it.
                client
                    .get_multiplexed_async_connection()
                    .await
                    .with_context(|| format!("connecting to {url}"))
            }
        },
        |mut connection: redis::aio::MultiplexedConnection, payload| async move {
            let _: String = redis::cmd("XADD")
                .arg(STREAM)
                .arg("*")
                .arg("frame")
                .arg(payload.as_ref())
                .query_async(&mut connection)
                .await?;
            Ok(())
        },
    )
}

pub fn run_nats(args: &Args) -> anyhow::Result<Report> {
    let url = format!("nats://{}", args.peer_addr);
    // The stream, file-backed, made (or found) once before the run.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async {
            let jetstream = async_nats::jetstream::new(async_nats::connect(url.as_str()).await?);
            jetstream
                .get_or_create_stream(async_nats::jetstream::stream::Config {
                    name: STREAM.into(),
                    subjects: vec![STREAM.into()],
                    storage: async_nats::jetstream::stream::StorageType::File,
                    ..Default::default()
                })
                .await
                .map_err(|e| anyhow::anyhow!("creating the JetStream stream: {e}"))?;
            anyhow::Ok(())
        })?;
    run_senders(
        args,
        "nats",
        || {
            let url = url.clone();
            async move {
                let client = async_nats::connect(url.as_str())
                    .await
                    .with_context(|| format!("connecting to {url}"))?;
                anyhow::Ok(async_nats::jetstream::new(client))
            }
        },
        |jetstream: async_nats::jetstream::Context, payload| async move {
            let ack = jetstream
                .publish(STREAM, payload)
                .await
                .map_err(|e| anyhow::anyhow!("publishing: {e}"))?;
            ack.await
                .map_err(|e| anyhow::anyhow!("the stream's ack: {e}"))?;
            Ok(())
        },
    )
}
