//! Server-wide backpressure over real QUIC: a commit queue held tiny and commits made
//! slow push the server through Critical (sessions pause) into Overloaded (batches
//! refused with a retry hint). Clients that retry lose and duplicate nothing.

mod common;

use common::server::{push_through, Pushed, Server};
use common::stored;
use engram::client::Session;
use engram::observation::Observation;
use engram::synthetic::{observation, Distribution};
use engram::transport::protocol::{LoadState, RejectCode};

fn obs(space: &str, n: u64) -> Observation {
    observation(9, space, "id-", n, 32, Distribution::Uniform)
}

/// About 30 of these observations fill the queue; each commit waits 20 ms for company.
const TIGHT: [&str; 4] = [
    "--queue-bytes-max",
    "8192",
    "--wal-commit-window-us",
    "20000",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overloaded_server_refuses_with_a_retry_hint_and_retrying_clients_store_all_once() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path(), &TIGHT);
    const STREAMS: u64 = 4;
    const EACH: u64 = 1000;
    let Pushed {
        acked,
        retries,
        peak,
    } = push_through(&server, STREAMS, EACH, |n| obs("pushed", n)).await;
    assert_eq!(
        acked,
        STREAMS * EACH,
        "every observation acknowledged in the end"
    );
    assert!(
        retries > 0,
        "the tiny queue refused some batches as Overloaded"
    );
    assert_eq!(
        peak,
        LoadState::Overloaded,
        "clients were told the server's state"
    );
    assert!(server.terminate().success());
    let counts = stored(data.path());
    assert_eq!(counts.len() as u64, STREAMS * EACH);
    assert!(
        counts.values().all(|&c| c == 1),
        "retries stored nothing twice"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_names_the_queue_and_the_retry_hint_comes_first() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path(), &TIGHT);
    // Several raw sessions write bursts without waiting, so some batch finds the queue full.
    let sessions: Vec<_> = (0..4u64)
        .map(|c| {
            let options = server.options(&format!("raw-{c}"));
            tokio::spawn(async move {
                let mut session = Session::connect(&options, None).await.unwrap();
                let mut last = 0;
                for n in 0..600 {
                    last = session.send(&obs(&format!("raw{c}"), n)).await.unwrap();
                }
                let progress = session.wait_acked(last).await.unwrap();
                session.goodbye().await.unwrap();
                progress
            })
        })
        .collect();
    let mut overloaded = Vec::new();
    for s in sessions {
        let progress = s.await.unwrap();
        assert!(
            progress.flow_controls >= 1,
            "Welcome is followed by a FlowControl"
        );
        if progress.peak_load == LoadState::Overloaded {
            assert!(
                progress.retry_after_ms >= 10,
                "a retry hint: {}",
                progress.retry_after_ms
            );
        }
        overloaded.extend(
            progress
                .rejected
                .into_iter()
                .filter(|r| r.code == RejectCode::Overloaded as u16),
        );
    }
    assert!(
        !overloaded.is_empty(),
        "some batch was refused as Overloaded"
    );
    for r in &overloaded {
        assert_eq!(r.field, "observation");
        assert!(r.expected.contains("8192 bytes"), "{}", r.expected);
        assert!(r.got.contains("retry after"), "{}", r.got);
    }
    assert!(server.terminate().success());
}
