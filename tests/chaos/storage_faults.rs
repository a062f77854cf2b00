//! Storage that fails under the real server (fault-injection builds, `src/chaos.rs`):
//! fsync answering EIO, and a disk that fills up and frees again.

#[path = "../common/mod.rs"]
mod common;

use std::path::Path;

use common::server::Server;
use engram::client::{ClientError, Session};
use engram::observation::Observation;
use engram::synthetic::{observation, Distribution};
use engram::transport::protocol::{ErrorCode, RejectCode};

fn obs(space: &str, n: u64) -> Observation {
    observation(41, space, "f-", n, 384, Distribution::Uniform)
}

/// Every acknowledged observation is stored, each stored one once, and nothing that was
/// not sent. (One sent but never acknowledged may be stored: its ack was what was lost.)
async fn assert_stored_once(
    server: &Server,
    space: &str,
    acked: &[Observation],
    sent: &[Observation],
) {
    let mut session = Session::connect(&server.options("checker"), None)
        .await
        .unwrap();
    let ids: Vec<String> = acked.iter().map(|o| o.id.clone()).collect();
    let found = session.check_ids(space, &ids).await.unwrap();
    let lost: Vec<&String> = ids
        .iter()
        .zip(&found)
        .filter(|(_, f)| !**f)
        .map(|(i, _)| i)
        .collect();
    assert!(lost.is_empty(), "acknowledged and lost: {lost:?}");
    let sent: Vec<String> = sent.iter().map(|o| o.id.clone()).collect();
    let sent_found = session.check_ids(space, &sent).await.unwrap();
    let listing = session.list_spaces().await.unwrap();
    let stored = listing
        .spaces
        .iter()
        .find(|e| e.name == space)
        .unwrap()
        .observations;
    assert_eq!(
        stored,
        sent_found.iter().filter(|&&f| f).count() as u64,
        "stored once each, nothing unsent"
    );
}

async fn send(session: &mut Session, o: Observation) -> (u64, Observation) {
    let seq = session.send(&o).await.unwrap();
    (seq, o)
}

fn wait_for_log_line(server: &Server, needle: &str) -> String {
    server
        .log
        .iter()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("the server never logged {needle:?}"))
}

fn start_with_trigger(data: &Path, variable: &str, trigger: &Path, flags: &[&str]) -> Server {
    let trigger = trigger.to_str().unwrap();
    Server::start_with_env(data, "127.0.0.1:0", flags, &[(variable, trigger)])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_failed_fsync_nothing_more_is_acknowledged_and_every_ack_survives() {
    let data = tempfile::tempdir().unwrap();
    let trigger = data.path().join("fsync-fails");
    let server = start_with_trigger(data.path(), "ENGRAM_FAULT_SYNC_EIO_FILE", &trigger, &[]);
    let mut session = Session::connect(&server.options("w"), None).await.unwrap();
    let sent: Vec<Observation> = (0..1_000).map(|n| obs("eio", n)).collect();
    for o in &sent[..500] {
        session.send(o).await.unwrap();
    }
    session.wait_acked(500).await.unwrap();

    // From here every fsync fails. Nothing sent from now on may be acknowledged.
    std::fs::write(&trigger, b"").unwrap();
    let last_before_fault = session.progress().acked_seq;
    assert_eq!(last_before_fault, 500);
    let mut ended = None;
    for o in &sent[500..] {
        if let Err(e) = session.send(o).await {
            ended = Some(e);
            break;
        }
    }
    let ended = match ended {
        Some(e) => e,
        None => session
            .wait_acked(1_000)
            .await
            .expect_err("the session must end unacknowledged"),
    };
    assert_eq!(
        session.progress().acked_seq,
        last_before_fault,
        "nothing sent after the failed fsync was acknowledged"
    );
    if let ClientError::Server { code, message } = &ended {
        assert_eq!(*code, ErrorCode::StorageFailed as u16, "{message}");
    }

    // The failure is in the log and in /health; new sessions are refused the same way.
    let logged = wait_for_log_line(&server, "the WAL failed");
    assert!(logged.contains("fdatasync"), "{logged}");
    let (status, body) = server.http_get("/health");
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("\"failed\"") && body.contains("fdatasync"),
        "{body}"
    );
    assert_eq!(server.http_get("/ready").0, 503);
    let (_, metrics) = server.http_get("/metrics");
    assert!(
        metrics.lines().any(|l| l == "engram_wal_failed 1"),
        "{metrics}"
    );
    let mut late = Session::connect(&server.options("late"), None)
        .await
        .unwrap();
    late.send(&obs("eio", 5_000)).await.unwrap();
    let refused = late
        .wait_acked(1)
        .await
        .expect_err("refused once the log failed");
    assert_eq!(late.progress().acked_seq, 0, "{refused}");

    // After a restart on healthy storage every acknowledgement it did send is there.
    let mut server = server;
    server.kill9();
    std::fs::remove_file(&trigger).unwrap();
    let server = Server::start(data.path(), &[]);
    assert_stored_once(&server, "eio", &sent[..last_before_fault as usize], &sent).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_with_a_retryable_error_and_writing_resumes_when_space_is_back() {
    let data = tempfile::tempdir().unwrap();
    let full = data.path().join("disk-full");
    // 2 MiB segments hold about 1,300 of these; a checkpoint every 500 inserts.
    let flags = [
        "--wal-segment-bytes",
        "2097152",
        "--checkpoint-records",
        "500",
    ];
    let server = start_with_trigger(data.path(), "ENGRAM_FAULT_DISK_FULL_FILE", &full, &flags);
    let mut session = Session::connect(&server.options("w"), None).await.unwrap();
    let mut acked: Vec<Observation> = Vec::new();
    let mut n = 0u64;
    // Fill part of the first segment, then the disk fills up.
    let mut in_flight = Vec::new();
    for _ in 0..300 {
        in_flight.push(send(&mut session, obs("full", n)).await);
        n += 1;
    }
    session
        .wait_acked(in_flight.last().unwrap().0)
        .await
        .unwrap();
    acked.extend(in_flight.drain(..).map(|(_, o)| o));
    std::fs::write(&full, b"").unwrap();

    // Stream until the log needs a segment it cannot allocate.
    let mut refused: Vec<Observation> = Vec::new();
    while refused.is_empty() {
        assert!(n < 20_000, "no StorageFull after {n} observations");
        for _ in 0..200 {
            in_flight.push(send(&mut session, obs("full", n)).await);
            n += 1;
        }
        let progress = session
            .wait_acked(in_flight.last().unwrap().0)
            .await
            .unwrap();
        for (seq, o) in in_flight.drain(..) {
            match progress.rejected.iter().find(|r| r.seq == seq) {
                Some(r) => {
                    assert_eq!(r.code, RejectCode::StorageFull as u16, "{r:?}");
                    assert!(r.expected.contains("free space"), "{r:?}");
                    assert!(r.got.contains("No space left"), "{r:?}");
                    refused.push(o);
                }
                None => acked.push(o),
            }
        }
    }
    // The session goes on: it still answers, and nothing stored was touched.
    let listing = session.list_spaces().await.unwrap();
    assert_eq!(listing.spaces[0].observations, acked.len() as u64);
    let stats = server.wait_indexed();
    assert!(
        stats["index"]["checkpoints_failed"].as_u64().unwrap() > 0,
        "checkpoints failed for space too: {stats}"
    );
    assert_eq!(
        server.http_get("/health").0,
        200,
        "a full disk is not a failed log"
    );

    // Space is back: the refused ones are resent and stored, and more after them.
    std::fs::remove_file(&full).unwrap();
    let written_before = stats["index"]["checkpoints_written"].as_u64().unwrap();
    let resend = std::mem::take(&mut refused);
    for o in resend {
        in_flight.push(send(&mut session, o).await);
    }
    for _ in 0..1_500 {
        in_flight.push(send(&mut session, obs("full", n)).await);
        n += 1;
    }
    let progress = session
        .wait_acked(in_flight.last().unwrap().0)
        .await
        .unwrap();
    let first_new = in_flight[0].0;
    let late: Vec<_> = progress
        .rejected
        .iter()
        .filter(|r| r.seq >= first_new)
        .collect();
    assert!(late.is_empty(), "refused once space is back: {late:?}");
    acked.extend(in_flight.drain(..).map(|(_, o)| o));
    let stats = server.wait_indexed();
    assert!(
        stats["index"]["checkpoints_written"].as_u64().unwrap() > written_before,
        "checkpoints are written again: {stats}"
    );
    session.goodbye().await.unwrap();
    assert!(server.terminate().success());

    // Nothing is corrupted: the log verifies and a restart holds each exactly once.
    let verify = common::engram_wal(data.path(), &["verify"]);
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
    let server = Server::start(data.path(), &flags);
    assert_stored_once(&server, "full", &acked, &acked).await;
}
