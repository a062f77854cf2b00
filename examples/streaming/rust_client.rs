//! Streams 1,000 observations to an engram server over QUIC, waits until every one is
//! durable, and recalls one of them by its own embedding.
//!
//!   cargo run --example rust_client -- [ADDR] [CERT]
//!
//! ADDR defaults to 127.0.0.1:7400 and CERT to ./engram-data/tls/cert.der, where
//! `engram serve` on its defaults listens and writes its certificate.

use std::time::{SystemTime, UNIX_EPOCH};

use engram::client::{Backoff, ClientOptions, ObservationStream, Session};
use engram::index::RecallQuery;
use engram::observation::Observation;

const SPACE: &str = "rust-example";
const DIM: usize = 32;
const COUNT: u64 = 1_000;

fn embedding(n: u64) -> Vec<f32> {
    (0..DIM)
        .map(|d| {
            ((n as f32) * 0.37 + d as f32 * 1.3).sin()
                + if d as u64 == n % DIM as u64 { 2.0 } else { 0.0 }
        })
        .collect()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr = args
        .next()
        .unwrap_or_else(|| "127.0.0.1:7400".into())
        .parse()?;
    let cert = std::fs::read(
        args.next()
            .unwrap_or_else(|| "./engram-data/tls/cert.der".into()),
    )?;
    let options = ClientOptions::new(addr, cert, "rust-example");

    // The stream keeps every observation until the server says it is durable, and
    // reconnects and resends by itself if the connection is lost.
    let mut stream = ObservationStream::connect(options.clone(), Backoff::default()).await?;
    let now_ns = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos() as i64;
    for n in 0..COUNT {
        stream
            .send(Observation {
                space: SPACE.into(),
                id: format!("example-{n}"),
                when_unix_ns: now_ns + n as i64,
                confidence: 0.9,
                what: format!("example observation {n}"),
                embedding: embedding(n),
            })
            .await?;
    }
    stream.flush().await?;
    let acked = stream.take_acked().len();
    let refused = stream.take_rejected();
    anyhow::ensure!(refused.is_empty(), "refused: {refused:?}");
    println!("acknowledged (durable): {acked}");
    stream.close().await?;

    let mut session = Session::connect(&options, None).await?;
    let recalled = session
        .recall(&RecallQuery::new(SPACE, embedding(500), 3))
        .await?;
    session.goodbye().await?;
    let top = recalled
        .hits
        .first()
        .map(|h| h.id.as_str())
        .unwrap_or("(none)");
    println!("recall of example-500's embedding: first {top}");
    anyhow::ensure!(
        top == "example-500",
        "recall did not find example-500 first"
    );
    Ok(())
}
