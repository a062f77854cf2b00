//! The real `engram serve` binary over real QUIC on loopback.

mod common;

use common::server::Server;
use common::stored;
use engram::client::Session;
use engram::observation::Observation;
use engram::synthetic::{observation, Distribution};

const DIM: usize = 32;

fn obs(space: &str, n: u64) -> Observation {
    observation(5, space, "id-", n, DIM, Distribution::Uniform)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_observations_from_four_connections_are_acked_and_stored_once() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path(), &[]);
    let clients: Vec<_> = (0..4u64)
        .map(|c| {
            let options = server.options(&format!("client-{c}"));
            tokio::spawn(async move {
                let mut session = Session::connect(&options, None).await.unwrap();
                let mut last = 0;
                for n in (c..10_000).step_by(4) {
                    last = session.send(&obs("load", n)).await.unwrap();
                }
                let progress = session.wait_acked(last).await.unwrap();
                assert!(progress.rejected.is_empty(), "{:?}", progress.rejected);
                let end = session.goodbye().await.unwrap();
                assert_eq!(end.ended.as_deref(), Some("goodbye"));
                assert_eq!(end.acked_seq, 2500);
            })
        })
        .collect();
    for c in clients {
        c.await.unwrap();
    }
    // A client that resends what was stored: acknowledged, not stored again.
    let mut again = Session::connect(&server.options("resender"), None)
        .await
        .unwrap();
    let mut last = 0;
    for n in 0..200 {
        last = again.send(&obs("load", n)).await.unwrap();
    }
    let progress = again.wait_acked(last).await.unwrap();
    assert!(progress.rejected.is_empty());
    again.goodbye().await.unwrap();

    assert!(server.terminate().success(), "a clean exit after SIGTERM");
    let counts = stored(data.path());
    assert_eq!(counts.len(), 10_000, "every observation stored");
    assert!(counts.values().all(|&c| c == 1), "none stored twice");
    for n in 0..10_000 {
        assert!(
            counts.contains_key(&("load".to_owned(), format!("id-{n}"))),
            "id-{n} missing"
        );
    }
}

fn hello(version: u16) -> Vec<u8> {
    let mut out = Vec::new();
    engram::transport::protocol::Frame::Hello {
        version,
        client_name: "raw".into(),
        resume_token: None,
        auth_token: None,
    }
    .encode(&mut out);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_bad_input_gets_its_typed_answer_and_the_server_keeps_serving() {
    use engram::transport::protocol::{ErrorCode, Frame, RejectCode};
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path(), &[]);

    // Bad observations: a Reject naming the field, and the session goes on.
    let mut session = Session::connect(&server.options("validating"), None)
        .await
        .unwrap();
    let good = session.send(&obs("v", 0)).await.unwrap();
    let mut bad: Vec<(Observation, RejectCode, &str)> = vec![
        (
            observation(5, "v", "id-", 1, DIM + 1, Distribution::Uniform),
            RejectCode::DimensionMismatch,
            "embedding",
        ),
        (
            Observation {
                embedding: {
                    let mut e = obs("v", 2).embedding;
                    e[3] = f32::NAN;
                    e
                },
                ..obs("v", 2)
            },
            RejectCode::NonFiniteEmbedding,
            "embedding",
        ),
        (
            Observation {
                space: "no spaces!".into(),
                ..obs("v", 3)
            },
            RejectCode::InvalidSpace,
            "space",
        ),
        (
            Observation {
                confidence: 2.0,
                ..obs("v", 4)
            },
            RejectCode::ConfidenceOutOfRange,
            "confidence",
        ),
        (
            Observation {
                what: "w".repeat(70_000),
                ..obs("v", 5)
            },
            RejectCode::WhatTooLong,
            "what",
        ),
    ];
    let mut seqs = Vec::new();
    for (o, _, _) in &bad {
        seqs.push(session.send(o).await.unwrap());
    }
    let after = session.send(&obs("v", 6)).await.unwrap();
    let progress = session.wait_acked(after).await.unwrap();
    assert!(good < seqs[0] && after > *seqs.last().unwrap());
    assert_eq!(
        progress.rejected.len(),
        bad.len(),
        "{:?}",
        progress.rejected
    );
    for ((seq, (_, code, field)), rejected) in
        seqs.iter().zip(bad.drain(..)).zip(&progress.rejected)
    {
        assert_eq!(
            (rejected.seq, rejected.code, rejected.field.as_str()),
            (*seq, code as u16, field)
        );
        assert!(
            !rejected.expected.is_empty() && !rejected.got.is_empty(),
            "{rejected:?}"
        );
    }
    let dim = progress
        .rejected
        .iter()
        .find(|r| r.code == RejectCode::DimensionMismatch as u16)
        .unwrap();
    assert_eq!(
        (dim.expected.as_str(), dim.got.as_str()),
        ("dimension 32 (space v)", "dimension 33")
    );
    session.goodbye().await.unwrap();

    // Malformed streams: a typed Error, then the stream ends.
    let error_code = |frames: &[Frame]| match frames.last() {
        Some(Frame::Error { code, .. }) => *code,
        other => panic!("expected an Error frame, got {other:?}"),
    };
    assert_eq!(
        error_code(&server.raw_exchange(&hello(2)).await),
        ErrorCode::UnsupportedVersion as u16
    );
    let mut garbage = hello(1);
    garbage.extend_from_slice(&[0x05, 0x00, 0x00, 0x00, 0x99, 1, 2, 3, 4]);
    assert_eq!(
        error_code(&server.raw_exchange(&garbage).await),
        ErrorCode::MalformedFrame as u16,
        "unknown frame type"
    );
    let mut oversize = hello(1);
    oversize.extend_from_slice(&(64u32 << 20).to_le_bytes());
    oversize.push(0x02);
    assert_eq!(
        error_code(&server.raw_exchange(&oversize).await),
        ErrorCode::MalformedFrame as u16,
        "oversize frame"
    );
    let mut observe_first = Vec::new();
    Frame::encode_observation(
        1,
        &Observation {
            space: "v".into(),
            id: "x".into(),
            when_unix_ns: 0,
            confidence: 0.5,
            what: String::new(),
            embedding: vec![0.0; DIM],
        },
        &mut observe_first,
    );
    assert_eq!(
        error_code(&server.raw_exchange(&observe_first).await),
        ErrorCode::UnexpectedFrame as u16
    );
    let pure_garbage: Vec<u8> = (0..200u32).map(|i| (i * 37 % 251) as u8).collect();
    assert_eq!(
        error_code(&server.raw_exchange(&pure_garbage).await),
        ErrorCode::MalformedFrame as u16,
        "garbage"
    );

    // Other sessions are served all along.
    let mut later = Session::connect(&server.options("later"), None)
        .await
        .unwrap();
    let seq = later.send(&obs("v", 7)).await.unwrap();
    assert!(later.wait_acked(seq).await.unwrap().rejected.is_empty());
    later.goodbye().await.unwrap();
    assert!(server.terminate().success());
    let counts = stored(data.path());
    assert_eq!(
        counts.len(),
        3,
        "only the valid observations are stored: {counts:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_dropped_mid_stream_resumes_with_nothing_lost_or_duplicated() {
    use engram::client::{Backoff, ObservationStream};
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path(), &[]);
    let mut stream = ObservationStream::connect(server.options("resumer"), Backoff::default())
        .await
        .unwrap();
    let mut acked = Vec::new();
    for n in 0..3000 {
        if n == 1000 || n == 2000 {
            stream.abort_connection();
        }
        stream.send(obs("resume", n)).await.unwrap();
        acked.extend(stream.take_acked());
    }
    stream.flush().await.unwrap();
    acked.extend(stream.take_acked());
    assert!(stream.take_rejected().is_empty());
    assert!(
        stream.connects >= 3,
        "the stream reconnected after each drop ({} connects)",
        stream.connects
    );
    stream.close().await.unwrap();
    let mut ids: Vec<String> = acked.iter().map(|o| o.id.clone()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(
        (acked.len(), ids.len()),
        (3000, 3000),
        "every observation acknowledged once"
    );
    assert!(server.terminate().success());
    let counts = stored(data.path());
    assert_eq!(counts.len(), 3000);
    assert!(counts.values().all(|&c| c == 1), "nothing stored twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_acknowledges_everything_it_accepted() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path(), &[]);
    let mut session = Session::connect(&server.options("shutdown"), None)
        .await
        .unwrap();
    let mut sent = Vec::new();
    for n in 0..3000 {
        sent.push((session.send(&obs("down", n)).await.unwrap(), n));
    }
    // Some are acknowledged, more are in flight: now stop the server.
    session.wait_acked(sent[100].0).await.unwrap();
    let pid = server.child.id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let end = loop {
        let progress = session.progress();
        if progress.ended.is_some() {
            break progress;
        }
        // Wait for the server's next word: an ack or its goodbye.
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(30),
            session.wait_acked(progress.acked_seq + 1),
        )
        .await;
    };
    assert_eq!(
        end.ended.as_deref(),
        Some("goodbye"),
        "the server said goodbye: {end:?}"
    );
    assert!(end.acked_seq > sent[100].0);
    assert!(server.wait_exit().success(), "a clean exit after SIGTERM");
    let counts = stored(data.path());
    // Everything it acknowledged is stored, once; nothing it did not acknowledge was lost
    // silently: the client knows exactly which seqs to resend.
    for (seq, n) in &sent {
        let key = ("down".to_owned(), format!("id-{n}"));
        if *seq <= end.acked_seq {
            assert_eq!(
                counts.get(&key),
                Some(&1),
                "acked seq {seq} must be stored once"
            );
        }
    }
    assert!(counts.values().all(|&c| c == 1));
}

#[test]
fn health_and_ready_answer_over_http() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path(), &[]);
    let (status, body) = server.http_get("/health");
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["status"],
        "live"
    );
    let (status, body) = server.http_get("/ready");
    assert_eq!(
        status, 200,
        "recovery is done once the server is up: {body}"
    );
    let ready: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (ready["ready"].as_bool(), ready["durable_lsn"].as_u64()),
        (Some(true), Some(0))
    );
    assert_eq!(server.http_get("/nope").0, 404);
    assert!(server.terminate().success());
}

#[test]
fn engram_load_streams_to_the_server_and_records_every_acked_id() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path(), &[]);
    let ids = data.path().join("ids.txt");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_engram-load"))
        .args([
            "--target",
            "quic",
            "--addr",
            &server.addr.to_string(),
            "--cert",
        ])
        .arg(data.path().join("tls").join("cert.der"))
        .args([
            "--count",
            "3000",
            "--dim",
            "24",
            "--connections",
            "3",
            "--space",
            "loadq",
            "--json",
            "--ids-out",
        ])
        .arg(&ids)
        .output()
        .unwrap();
    let report = common::success_json(&out);
    assert_eq!(
        (
            report["sent"].as_u64(),
            report["acked"].as_u64(),
            report["rejected"].as_u64()
        ),
        (Some(3000), Some(3000), Some(0))
    );
    let lines: Vec<String> = std::fs::read_to_string(&ids)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    let unique: std::collections::HashSet<&String> = lines.iter().collect();
    assert_eq!((lines.len(), unique.len()), (3000, 3000));
    assert!(server.terminate().success());
    let counts = stored(data.path());
    for id in &lines {
        assert_eq!(
            counts.get(&("loadq".to_owned(), id.clone())),
            Some(&1),
            "{id}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_held_to_tiny_credits_still_stores_everything_once() {
    use engram::client::{Backoff, ObservationStream};
    let data = tempfile::tempdir().unwrap();
    // 16 KiB of credits (about 90 of these observations) and slow commits: the server must
    // stop reading and resume as acks free credits, without losing or repeating anything.
    let server = Server::start(
        data.path(),
        &[
            "--inflight-bytes-max",
            "16384",
            "--wal-commit-window-us",
            "20000",
        ],
    );
    let session = Session::connect(&server.options("announced"), None)
        .await
        .unwrap();
    assert_eq!(
        session.limits.inflight_bytes_max, 16384,
        "Welcome announces the credits"
    );
    session.goodbye().await.unwrap();
    let mut stream = ObservationStream::connect(server.options("tight"), Backoff::default())
        .await
        .unwrap();
    for n in 0..2000 {
        stream.send(obs("tight", n)).await.unwrap();
    }
    stream.flush().await.unwrap();
    let acked = stream.take_acked();
    assert_eq!(acked.len(), 2000);
    assert_eq!(stream.connects, 1, "flow control, not a lost connection");
    stream.close().await.unwrap();
    assert!(server.terminate().success());
    let counts = stored(data.path());
    assert_eq!(counts.len(), 2000);
    assert!(counts.values().all(|&c| c == 1));
}

#[test]
fn engram_observe_streams_a_jsonl_file_and_names_what_was_refused() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path(), &[]);
    let file = data.path().join("in.jsonl");
    let mut lines: Vec<String> = (0..40)
        .map(|i| serde_json::json!({"id": format!("o-{i}"), "embedding": [i as f32, 1.0, 0.5, 0.0, 0.25, 0.0, 0.0, 1.0], "what": "seen"}).to_string())
        .collect();
    lines.insert(20, serde_json::json!({"id": "wrong-dim", "embedding": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]}).to_string());
    std::fs::write(&file, lines.join("\n")).unwrap();
    let cert = data.path().join("tls").join("cert.der");
    let run = |file: &std::path::Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_engram"))
            .args([
                "observe",
                "--space",
                "jsonl",
                "--json",
                "--addr",
                &server.addr.to_string(),
                "--cert",
            ])
            .arg(&cert)
            .arg("--file")
            .arg(file)
            .output()
            .unwrap()
    };
    let out = run(&file);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a refused line makes the exit code 1"
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (summary["sent"].as_u64(), summary["acked"].as_u64()),
        (Some(41), Some(40))
    );
    let refused = &summary["rejected"][0];
    assert_eq!(
        (refused["id"].as_str(), refused["field"].as_str()),
        (Some("wrong-dim"), Some("embedding"))
    );
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("refused wrong-dim: field embedding expected dimension 8"));

    let bad = data.path().join("bad.jsonl");
    std::fs::write(&bad, format!("{}\n{{not json\n", lines[0])).unwrap();
    let out = run(&bad);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("line 2 of"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    assert!(server.terminate().success());
    let counts = stored(data.path());
    assert_eq!(
        counts.len(),
        40,
        "the 40 valid ones, once each (the resend of o-0 is a duplicate)"
    );
    assert!(counts.values().all(|&c| c == 1));
}
