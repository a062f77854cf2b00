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

/// While the index lag holds ingest back (Critical), a session that recalls is still
/// answered: backpressure holds observations, not requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recall_is_answered_while_ingest_is_held_back() {
    use engram::client::Session;
    use engram::index::RecallQuery;
    let data = tempfile::tempdir().unwrap();
    // One insert a second: the lag stays past 75% of its bound for many seconds.
    let mut server = Server::start_with_env(
        data.path(),
        "127.0.0.1:0",
        &["--index-lag-max", "40", "--index-workers", "1"],
        &[("ENGRAM_FAULT_INDEX_DELAY_US", "1000000")],
    );
    let obs = |n| observation(5, "held", "h-", n, 16, Distribution::Uniform);
    let mut writer = Session::connect(&server.options("writer"), None)
        .await
        .unwrap();
    let mut last = 0;
    for n in 0..40 {
        last = writer.send(&obs(n)).await.unwrap();
    }
    writer.wait_acked(last).await.unwrap();
    let critical = |stats: &serde_json::Value| {
        matches!(
            stats["load"]["state"].as_str(),
            Some("Critical" | "Overloaded")
        )
    };
    // The lag is measured apart from the ack: poll until the state shows it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let stats = server.stats();
        if critical(&stats) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "ingest is never held back: {stats}"
        );
    }

    let mut reader = Session::connect(&server.options("reader"), None)
        .await
        .unwrap();
    let query = RecallQuery::new("held", obs(39).embedding, 1);
    let recalled = tokio::time::timeout(std::time::Duration::from_secs(60), reader.recall(&query))
        .await
        .expect("a recall is answered while ingest is held back")
        .unwrap();
    // Read your writes: the last acknowledged observation, though not yet indexed.
    assert_eq!(recalled.hits[0].id, "h-39");
    let stats = server.stats();
    assert!(
        critical(&stats),
        "answered while ingest was still held back: {stats}"
    );
    server.kill9();
}
