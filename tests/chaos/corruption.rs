//! A flipped bit in the middle of a closed segment, under the real server with
//! checkpoints: the server refuses to start and names segment, offset and LSN;
//! `engram-wal verify` names the same place; `engram-wal repair --truncate-after-corruption`
//! brings the server back with every observation before the corruption, none after, and
//! the checkpoints that covered the lost part are dropped.

#[path = "../common/mod.rs"]
mod common;

use std::os::unix::fs::FileExt;

use common::engram_wal;
use common::server::Server;
use engram::client::Session;
use engram::index::RecallQuery;
use engram::observation::Observation;
use engram::synthetic::{observation, Distribution};

const FLAGS: [&str; 4] = [
    "--wal-segment-bytes",
    "2097152",
    "--checkpoint-records",
    "1000",
];

fn obs(n: u64) -> Observation {
    observation(61, "bits", "b-", n, 384, Distribution::Uniform)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_bit_mid_log_stops_the_server_and_repair_brings_back_everything_before_it() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path(), &FLAGS);
    let mut session = Session::connect(&server.options("w"), None).await.unwrap();
    let total = 5_000u64;
    for n in 0..total {
        session.send(&obs(n)).await.unwrap();
    }
    session.wait_acked(total).await.unwrap();
    session.goodbye().await.unwrap();
    server.wait_indexed();
    assert!(server.terminate().success());

    // The middle record of the newest closed segment.
    let dump = engram_wal(data.path(), &["dump", "--json"]);
    assert!(dump.status.success(), "{}", text(&dump.stderr));
    let rows: Vec<serde_json::Value> = text(&dump.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mut segments: Vec<&str> = rows
        .iter()
        .map(|r| r["segment"].as_str().unwrap())
        .collect();
    segments.dedup();
    assert!(
        segments.len() >= 2,
        "a closed segment to damage: {segments:?}"
    );
    let closed = segments[segments.len() - 2];
    let in_closed: Vec<&serde_json::Value> =
        rows.iter().filter(|r| r["segment"] == closed).collect();
    let victim = in_closed[in_closed.len() / 2];
    let (lsn, offset) = (
        victim["lsn"].as_u64().unwrap(),
        victim["offset"].as_u64().unwrap(),
    );
    let victim_id = victim["id"].as_str().unwrap().to_owned();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(data.path().join("wal").join(closed))
        .unwrap();
    let mut byte = [0u8];
    file.read_exact_at(&mut byte, offset + 100).unwrap();
    file.write_all_at(&[byte[0] ^ 0x04], offset + 100).unwrap();
    drop(file);

    // The server refuses to start, naming the place and the way out.
    let refused = common::server::serve_command(data.path(), "127.0.0.1:0")
        .args(FLAGS)
        .output()
        .unwrap();
    assert!(
        !refused.status.success(),
        "the server must not start on a corrupt log"
    );
    let why = text(&refused.stderr);
    let place = format!("segment {closed} at offset {offset} (LSN {lsn})");
    assert!(why.contains(&place), "{place} not named in: {why}");
    assert!(
        why.contains("engram-wal"),
        "the operator is told what to do: {why}"
    );

    // verify names the same place.
    let verify = engram_wal(data.path(), &["verify", "--json"]);
    assert_eq!(verify.status.code(), Some(1));
    let verdict: serde_json::Value = serde_json::from_slice(&verify.stdout).unwrap();
    assert_eq!(verdict["corruption"]["segment"], closed);
    assert_eq!(verdict["corruption"]["offset"], offset);
    assert_eq!(verdict["corruption"]["lsn"], lsn);

    // The documented repair, then the server is back with everything before the bit.
    let repair = engram_wal(data.path(), &["repair", "--truncate-after-corruption"]);
    assert!(repair.status.success(), "{}", text(&repair.stdout));
    assert!(engram_wal(data.path(), &["verify"]).status.success());
    let server = Server::start(data.path(), &FLAGS);
    let ids: Vec<String> = (0..total).map(|n| obs(n).id).collect();
    // One session sent them in order, so log order is id order; the oldest segments
    // were removed below a checkpoint and are not in the dump.
    let victim_n: u64 = victim_id.strip_prefix("b-").unwrap().parse().unwrap();
    let before: std::collections::HashSet<&str> = ids[..victim_n as usize]
        .iter()
        .map(String::as_str)
        .collect();
    let mut session = Session::connect(&server.options("r"), None).await.unwrap();
    let found = session.check_ids("bits", &ids).await.unwrap();
    for (id, there) in ids.iter().zip(&found) {
        assert_eq!(
            *there,
            before.contains(id.as_str()),
            "{id}: present exactly when it was logged before LSN {lsn}"
        );
    }
    assert!(!before.contains(victim_id.as_str()));
    let listing = session.list_spaces().await.unwrap();
    assert_eq!(listing.spaces[0].observations, before.len() as u64);
    let stats = server.wait_indexed();
    let indexed = common::server::space_stats(&stats, "bits")["indexed"]
        .as_u64()
        .unwrap();
    assert_eq!(
        indexed,
        before.len() as u64,
        "the index holds what the log holds"
    );
    for n in [0, total / 3, total / 2] {
        let o = obs(n);
        if !before.contains(o.id.as_str()) {
            continue;
        }
        let hits = session
            .recall(&RecallQuery::new("bits", o.embedding.clone(), 1))
            .await
            .unwrap()
            .hits;
        assert_eq!(hits[0].id, o.id);
    }

    // What was lost can be sent again, and is stored once.
    let lost: Vec<Observation> = (0..total)
        .map(obs)
        .filter(|o| !before.contains(o.id.as_str()))
        .collect();
    for o in &lost {
        session.send(o).await.unwrap();
    }
    let progress = session.wait_acked(lost.len() as u64).await.unwrap();
    assert!(progress.rejected.is_empty(), "{:?}", progress.rejected);
    let listing = session.list_spaces().await.unwrap();
    assert_eq!(listing.spaces[0].observations, total);
}
