//! Backpressure from the index over real QUIC: a slowed index and a tiny lag bound make
//! ingest pause and then refuse batches as Overloaded; when the index catches up, ingest
//! resumes, and every observation is stored and indexed once.

mod common;

use common::server::{push_through, space_stats, Pushed, Server};
use engram::synthetic::{observation, Distribution};
use engram::transport::protocol::LoadState;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_index_holds_ingest_back_and_nothing_is_lost() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start_with_env(
        data.path(),
        "127.0.0.1:0",
        &["--index-lag-max", "300", "--index-workers", "1"],
        &[("ENGRAM_FAULT_INDEX_DELAY_US", "500")],
    );
    const STREAMS: u64 = 2;
    const EACH: u64 = 1500;
    let Pushed {
        acked,
        retries,
        peak,
    } = push_through(&server, STREAMS, EACH, |n| {
        observation(4, "lag", "l-", n, 16, Distribution::Uniform)
    })
    .await;
    assert_eq!(acked, STREAMS * EACH, "every observation acknowledged");
    assert_eq!(peak, LoadState::Overloaded, "clients were told");
    assert!(retries > 0, "the lag bound refused batches");
    let stats = server.wait_indexed();
    assert_eq!(stats["index"]["inserted"], STREAMS * EACH, "{stats}");
    assert_eq!(space_stats(&stats, "lag")["indexed"], STREAMS * EACH);
    assert_eq!(stats["wal"]["records"], STREAMS * EACH, "stored once");
    assert!(server.terminate().success());
}
