//! Checkpoints against the real server: SIGKILL after checkpoints were written and the log
//! truncated below them; the restart loads the checkpoints, replays only the tail, and
//! every observation is recallable and still deduplicated.

#[path = "../common/mod.rs"]
mod common;

use std::path::Path;

use common::server::{space_stats, Server};
use engram::client::Session;
use engram::index::{Consistency, RecallQuery};
use engram::synthetic::{observation, Distribution};
use engram::wal::Lsn;

/// Checkpoint every 1,500 inserts; 2 MiB segments (the smallest that hold a largest
/// record), about 1,700 of these observations each, so that truncation has whole segments
/// to drop.
const FLAGS: [&str; 6] = [
    "--checkpoint-records",
    "1500",
    "--index-workers",
    "1",
    "--wal-segment-bytes",
    "2097152",
];

/// The LSNs the space's checkpoints cover, newest first, from their folder names.
fn checkpoints(data: &Path, space: &str) -> Vec<u64> {
    let mut lsns: Vec<u64> = std::fs::read_dir(data.join("index").join(format!("space-{space}")))
        .unwrap()
        .filter_map(|e| {
            e.unwrap()
                .file_name()
                .to_str()?
                .strip_prefix("ckpt-")?
                .parse()
                .ok()
        })
        .collect();
    lsns.sort_unstable_by(|a, b| b.cmp(a));
    lsns
}

fn obs(n: u64) -> engram::observation::Observation {
    observation(21, "ck", "k-", n, 256, Distribution::Clustered)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_after_kill9_loads_checkpoints_and_replays_only_the_tail() {
    let data = tempfile::tempdir().unwrap();
    let mut server = Server::start(data.path(), &FLAGS);
    let mut session = Session::connect(&server.options("w"), None).await.unwrap();
    // Three rounds of 1,600, each indexed before the next: each passes 1,500 inserts
    // since the last checkpoint, so each ends with one.
    let mut stats = serde_json::Value::Null;
    for round in 0..3u64 {
        for n in round * 1_600..(round + 1) * 1_600 {
            session.send(&obs(n)).await.unwrap();
        }
        session.wait_acked((round + 1) * 1_600).await.unwrap();
        stats = server.wait_indexed();
    }
    assert_eq!(
        stats["index"]["checkpoints_written"].as_u64().unwrap(),
        3,
        "{stats}"
    );
    let kept = checkpoints(data.path(), "ck");
    assert_eq!(kept.len(), 2, "the two newest are kept: {kept:?}");
    let covered = kept[0];
    assert!(covered > 3_200 && covered <= 4_800, "{kept:?}");
    let wal = &stats["wal"];
    assert!(
        wal["segments"].as_u64().unwrap() < wal["segments_created"].as_u64().unwrap(),
        "segments the older checkpoint covers were removed: {wal}"
    );
    // A tail after the last checkpoint, then SIGKILL.
    for n in 4_800..5_600 {
        session.send(&obs(n)).await.unwrap();
    }
    session.wait_acked(5_600).await.unwrap();
    server.kill9();

    let server = Server::start(data.path(), &FLAGS);
    let stats = server.wait_indexed();
    assert_eq!(
        stats["index"]["inserted"].as_u64().unwrap(),
        5_600 - covered,
        "only the records after the checkpoint are inserted again: {stats}"
    );
    assert_eq!(space_stats(&stats, "ck")["indexed"], 5_600);
    let mut session = Session::connect(&server.options("r"), None).await.unwrap();
    // Ids whose records the log dropped are still known: a resend is not stored again.
    for n in [0, 10, 2_500, 5_599] {
        session.send(&obs(n)).await.unwrap();
    }
    session.wait_acked(4).await.unwrap();
    let listing = session.list_spaces().await.unwrap();
    assert_eq!(listing.spaces[0].observations, 5_600, "resends stored once");
    let ids: Vec<String> = (0..5_600).map(|n| format!("k-{n}")).collect();
    assert!(session
        .check_ids("ck", &ids)
        .await
        .unwrap()
        .iter()
        .all(|f| *f));
    let as_of = Lsn(listing.durable_lsn);
    for n in (0..5_600u64).step_by(97) {
        let query = RecallQuery {
            consistency: Consistency::AsOf(as_of),
            ..RecallQuery::new("ck", obs(n).embedding, 1)
        };
        let recalled = session.recall(&query).await.unwrap();
        assert_eq!(recalled.hits[0].id, format!("k-{n}"));
        assert_eq!(
            recalled.hits[0].what,
            obs(n).what,
            "the text survived the checkpoint"
        );
    }
    session.goodbye().await.unwrap();
    let log: Vec<String> = server.log.try_iter().collect();
    let replayed = format!("inserted={}", 5_600 - covered);
    assert!(
        log.iter()
            .any(|l| l.contains("index worker caught up with the log") && l.contains(&replayed)),
        "the replay is logged: {log:#?}"
    );
}
