//! Recall against the real server over real QUIC: read-your-writes while streaming, space
//! isolation, AsOf snapshots, a worker that panics, and recall quality on clustered and
//! real sentence embeddings.

mod common;

use std::path::Path;

use common::server::{indexed_lsn, space_stats, Server};
use engram::client::{ClientError, Session};
use engram::index::{Consistency, RecallQuery};
use engram::synthetic::{embedding, observation, Distribution};
use engram::transport::protocol::RecallStatus;
use engram::wal::Lsn;

fn wait_indexed(server: &Server) -> serde_json::Value {
    server.wait_indexed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_observations_are_recalled_while_streaming_and_after() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path(), &[]);
    let mut session = Session::connect(&server.options("e2e"), None)
        .await
        .unwrap();
    let dim = 64;
    let obs = |n| observation(1, "e2e", "e-", n, dim, Distribution::Clustered);
    for n in 0..10_000u64 {
        session.send(&obs(n)).await.unwrap();
        if n % 1000 == 999 {
            // Answered after everything sent before: the observation just sent is a
            // candidate, whether or not the index has it yet.
            let recalled = session
                .recall(&RecallQuery::new("e2e", obs(n).embedding, 5))
                .await
                .unwrap();
            assert_eq!(recalled.hits[0].id, format!("e-{n}"), "{recalled:?}");
            assert!(recalled.hits[0].score > 0.999);
            assert!(recalled.as_of >= recalled.hits[0].lsn);
        }
    }
    let sent = session.progress().acked_seq;
    assert!(sent <= 10_000);
    for n in (0..10_000u64).step_by(50) {
        let query = RecallQuery::new("e2e", Vec::new(), 10);
        let recalled = session
            .recall_by_id(&query, &format!("e-{n}"))
            .await
            .unwrap();
        let top = &recalled.hits[0];
        assert_eq!(
            top.id,
            format!("e-{n}"),
            "self-recall of e-{n}: {recalled:?}"
        );
        let expected = obs(n);
        assert_eq!(
            (top.what.as_str(), top.when_unix_ns, top.confidence),
            (
                expected.what.as_str(),
                expected.when_unix_ns,
                expected.confidence
            )
        );
        assert_eq!(recalled.hits.len(), 10);
        assert!(recalled.hits.windows(2).all(|w| w[0].score >= w[1].score));
    }
    session.goodbye().await.unwrap();
    let stats = wait_indexed(&server);
    assert_eq!(space_stats(&stats, "e2e")["indexed"], 10_000);
    assert_eq!(stats["index"]["inserted"], 10_000);
    // Every link of the space was audited as it grew (once 256 inserts and an eighth of
    // the space came since the last).
    assert!(stats["index"]["audits"].as_u64().unwrap() >= 1, "{stats}");

    // The CLI: by id and by vector, as JSON.
    let cli = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_engram"))
            .arg("recall")
            .args(args)
            .args(["--addr", &server.addr.to_string(), "--cert"])
            .arg(data.path().join("tls").join("cert.der"))
            .output()
            .unwrap()
    };
    let by_id = common::success_json(&cli(&[
        "--space", "e2e", "--id", "e-77", "-k", "3", "--json",
    ]));
    assert_eq!(by_id["results"][0]["id"], "e-77");
    assert_eq!(by_id["results"].as_array().unwrap().len(), 3);
    assert!(by_id["as_of_lsn"].as_u64().unwrap() >= 10_000);
    let vector = serde_json::to_string(&obs(4242).embedding).unwrap();
    let by_vector = common::success_json(&cli(&[
        "--space",
        "e2e",
        "--vector",
        &vector,
        "--consistency",
        "eventual",
        "--json",
    ]));
    assert_eq!(by_vector["results"][0]["id"], "e-4242");
    assert_eq!(by_vector["results"].as_array().unwrap().len(), 10);
    let missing = cli(&["--space", "nope", "--id", "x"]);
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("\"nope\" does not exist"),
        "{}",
        String::from_utf8_lossy(&missing.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_clients_in_three_spaces_never_see_each_other() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path(), &[]);
    let mut clients = Vec::new();
    for space in ["red", "green", "blue"] {
        let options = server.options(space);
        clients.push(tokio::spawn(async move {
            let mut session = Session::connect(&options, None).await.unwrap();
            let prefix = format!("{space}-");
            for n in 0..5_000u64 {
                // The same ids and the same embeddings in every space: only the space
                // keeps them apart.
                let mut o = observation(3, "shared", "", n, 32, Distribution::Clustered);
                o.space = space.to_owned();
                o.id = format!("{prefix}{n}");
                session.send(&o).await.unwrap();
                if n % 500 == 499 {
                    let recalled = session
                        .recall(&RecallQuery::new(space, o.embedding.clone(), 20))
                        .await
                        .unwrap();
                    assert_eq!(recalled.hits.len(), 20);
                    for hit in &recalled.hits {
                        assert!(hit.id.starts_with(&prefix), "{space} got {}", hit.id);
                    }
                    assert_eq!(recalled.hits[0].id, o.id);
                }
            }
            session.goodbye().await.unwrap();
        }));
    }
    for client in clients {
        client.await.unwrap();
    }
    let stats = wait_indexed(&server);
    let mut session = Session::connect(&server.options("check"), None)
        .await
        .unwrap();
    for space in ["red", "green", "blue"] {
        assert_eq!(space_stats(&stats, space)["indexed"], 5_000);
        for consistency in [Consistency::ReadYourWrites, Consistency::Eventual] {
            let query = RecallQuery {
                consistency,
                ..RecallQuery::new(
                    space,
                    embedding(3, "shared", "7", 32, Distribution::Clustered),
                    100,
                )
            };
            let recalled = session.recall(&query).await.unwrap();
            assert_eq!(recalled.hits.len(), 100);
            assert!(recalled.hits.iter().all(|h| h.id.starts_with(space)));
            assert_eq!(recalled.hits[0].id, format!("{space}-7"));
        }
    }
    session.goodbye().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn as_of_recalls_are_snapshots_while_streaming_goes_on() {
    let data = tempfile::tempdir().unwrap();
    // A slowed index, so that the first snapshot reads are answered partly from the log
    // and the repeats wholly from the graph: the results must not change.
    let server = Server::start_with_env(
        data.path(),
        "127.0.0.1:0",
        &[],
        &[("ENGRAM_FAULT_INDEX_DELAY_US", "1000")],
    );
    let dim = 32;
    let mut writer = Session::connect(&server.options("writer"), None)
        .await
        .unwrap();
    for n in 0..3_000u64 {
        writer
            .send(&observation(
                5,
                "snap",
                "s-",
                n,
                dim,
                Distribution::Clustered,
            ))
            .await
            .unwrap();
    }
    writer.wait_acked(3_000).await.unwrap();
    let as_of = writer.progress().lsn;
    // More streaming from another session while the snapshot is read.
    let options = server.options("more");
    let more = tokio::spawn(async move {
        let mut session = Session::connect(&options, None).await.unwrap();
        for n in 3_000..8_000u64 {
            session
                .send(&observation(
                    5,
                    "snap",
                    "s-",
                    n,
                    dim,
                    Distribution::Clustered,
                ))
                .await
                .unwrap();
        }
        session.goodbye().await.unwrap()
    });
    let mut reader = Session::connect(&server.options("reader"), None)
        .await
        .unwrap();
    let queries: Vec<RecallQuery> = (0..20)
        .map(|q| RecallQuery {
            consistency: Consistency::AsOf(Lsn(as_of)),
            ..RecallQuery::new(
                "snap",
                embedding(6, "q", &q.to_string(), dim, Distribution::Clustered),
                10,
            )
        })
        .collect();
    let indexed = indexed_lsn(&server.stats());
    assert!(
        indexed < as_of,
        "the snapshot reaches past the index ({indexed} < {as_of})"
    );
    let mut first = Vec::new();
    for query in &queries {
        let recalled = reader.recall(query).await.unwrap();
        assert_eq!(recalled.as_of, Lsn(as_of));
        assert_eq!(recalled.hits.len(), 10);
        assert!(
            recalled.hits.iter().all(|h| h.lsn.0 <= as_of),
            "{recalled:?}"
        );
        first.push(recalled.hits);
    }
    more.await.unwrap();
    wait_indexed(&server);
    for (query, before) in queries.iter().zip(&first) {
        let again = reader.recall(query).await.unwrap();
        assert_eq!(
            &again.hits, before,
            "the same snapshot gives the same results"
        );
        // The newer observations are candidates again once the snapshot is not asked for.
        let now = reader
            .recall(&RecallQuery {
                consistency: Consistency::ReadYourWrites,
                ..query.clone()
            })
            .await
            .unwrap();
        assert!(now.as_of.0 >= as_of + 5_000);
    }
    // A snapshot of the future, an unknown space, a wrong dimension, a bad k: each a typed
    // refusal, and the session goes on.
    let future = RecallQuery {
        consistency: Consistency::AsOf(Lsn(as_of + 1_000_000)),
        ..queries[0].clone()
    };
    let refusals = [
        (future, RecallStatus::FutureLsn, "not durable yet"),
        (
            RecallQuery::new("nope", vec![0.0; dim], 10),
            RecallStatus::UnknownSpace,
            "does not exist",
        ),
        (
            RecallQuery::new("snap", vec![0.5; dim + 1], 10),
            RecallStatus::DimensionMismatch,
            "has 33 dimensions; space \"snap\" has 32",
        ),
        (
            RecallQuery::new("snap", vec![0.5; dim], 0),
            RecallStatus::InvalidQuery,
            "k is 0",
        ),
    ];
    for (query, expected, says) in refusals {
        match reader.recall(&query).await {
            Err(ClientError::Recall { status, message }) => {
                assert_eq!(status, expected, "{message}");
                assert!(message.contains(says), "{message}");
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }
    match reader
        .recall_by_id(&RecallQuery::new("snap", Vec::new(), 3), "s-99999")
        .await
    {
        Err(ClientError::Recall { status, .. }) => assert_eq!(status, RecallStatus::UnknownId),
        other => panic!("expected UnknownId, got {other:?}"),
    }
    assert_eq!(
        reader.recall(&queries[0]).await.unwrap().hits,
        first[0],
        "the session went on"
    );
    reader.goodbye().await.unwrap();
    writer.goodbye().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_panics_restarts_and_indexes_everything_once() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start_with_env(
        data.path(),
        "127.0.0.1:0",
        &["--index-workers", "2"],
        &[("ENGRAM_FAULT_INDEX_PANIC_AFTER", "1500")],
    );
    let mut session = Session::connect(&server.options("w"), None).await.unwrap();
    for n in 0..5_000u64 {
        for space in ["p", "q"] {
            session
                .send(&observation(9, space, "x-", n, 16, Distribution::Clustered))
                .await
                .unwrap();
        }
    }
    session.wait_acked(10_000).await.unwrap();
    let stats = wait_indexed(&server);
    assert_eq!(stats["index"]["panics"], 1, "{stats}");
    assert_eq!(stats["index"]["inserted"], 10_000, "each once: {stats}");
    let as_of = Lsn(stats["wal"]["durable_lsn"].as_u64().unwrap());
    for space in ["p", "q"] {
        assert_eq!(space_stats(&stats, space)["indexed"], 5_000);
        let mut found_by_graph = 0;
        for n in (0..5_000u64).step_by(50) {
            let id = format!("x-{n}");
            // AsOf scores every vector the graph stores, exactly: each sampled one is
            // there, under its own id.
            let exact = RecallQuery {
                consistency: Consistency::AsOf(as_of),
                ..RecallQuery::new(space, Vec::new(), 1)
            };
            let recalled = session.recall_by_id(&exact, &id).await.unwrap();
            assert_eq!(recalled.hits[0].id, id);
            assert!(recalled.hits[0].score > 0.9999);
            // And the graph search reaches it (approximate: HNSW may leave a rare node
            // unreachable).
            let graph = RecallQuery {
                consistency: Consistency::Eventual,
                ..RecallQuery::new(space, Vec::new(), 10)
            };
            let recalled = session.recall_by_id(&graph, &id).await.unwrap();
            if recalled.hits.iter().any(|h| h.id == id) {
                found_by_graph += 1;
            }
        }
        assert!(found_by_graph >= 99, "{space}: {found_by_graph} of 100");
    }
    let log: Vec<String> = server.log.try_iter().collect();
    assert!(
        log.iter()
            .any(|l| l.contains("injected index fault")
                && l.contains("restarts from its indexed LSN")),
        "the panic is logged"
    );
    session.goodbye().await.unwrap();
}

/// Recall@k of `found` against `truth` (both lists of ids).
fn recall_at(found: &[String], truth: &[String]) -> f64 {
    let hits = truth.iter().filter(|t| found.contains(t)).count();
    hits as f64 / truth.len() as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recall_quality_on_clustered_data_against_exact_search() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path(), &[]);
    let (dim, n, k) = (128, 20_000u64, 10);
    let mut session = Session::connect(&server.options("q"), None).await.unwrap();
    let base: Vec<Vec<f32>> = (0..n)
        .map(|i| embedding(11, "c", &format!("c-{i}"), dim, Distribution::Clustered))
        .collect();
    for i in 0..n {
        session
            .send(&observation(11, "c", "c-", i, dim, Distribution::Clustered))
            .await
            .unwrap();
    }
    session.wait_acked(n).await.unwrap();
    wait_indexed(&server);
    let mut total = 0.0;
    let queries = 200;
    for q in 0..queries {
        // From the same distribution as the base (same seed and space), as real queries
        // are: ids the base does not have.
        let query = embedding(11, "c", &format!("query-{q}"), dim, Distribution::Clustered);
        let mut exact: Vec<(f32, usize)> = base
            .iter()
            .enumerate()
            .map(|(i, v)| (v.iter().zip(&query).map(|(a, b)| a * b).sum::<f32>(), i))
            .collect();
        exact.sort_by(|a, b| b.0.total_cmp(&a.0));
        let truth: Vec<String> = exact[..k].iter().map(|(_, i)| format!("c-{i}")).collect();
        let found = session
            .recall(&RecallQuery {
                consistency: Consistency::Eventual,
                ..RecallQuery::new("c", query, k)
            })
            .await
            .unwrap();
        let ids: Vec<String> = found.hits.into_iter().map(|h| h.id).collect();
        total += recall_at(&ids, &truth);
    }
    let recall = total / queries as f64;
    println!("clustered recall@10 = {recall:.4}");
    assert!(recall >= 0.95, "recall@10 {recall}");
    session.goodbye().await.unwrap();
}

fn read_f32s(path: &Path) -> Vec<f32> {
    std::fs::read(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recall_quality_on_real_sentence_embeddings() {
    // The shared data set lives beside the checkout (../shared), never in it;
    // ENGRAM_SHARED_DIR points elsewhere.
    let shared = std::env::var_os("ENGRAM_SHARED_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared"));
    let dir = shared.join("data/minilm-docs-384");
    let dim = 384;
    let base = read_f32s(&dir.join("base.f32"));
    let queries = read_f32s(&dir.join("queries.f32"));
    let truth: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("groundtruth.json")).unwrap()).unwrap();
    let truth = truth["queries"].as_array().unwrap();
    assert_eq!(
        (base.len() / dim, queries.len() / dim, truth.len()),
        (23_000, 1_000, 1_000)
    );

    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path(), &[]);

    let mut session = Session::connect(&server.options("minilm"), None)
        .await
        .unwrap();
    for (row, vector) in base.chunks_exact(dim).enumerate() {
        session
            .send(&engram::observation::Observation {
                space: "docs".into(),
                id: format!("d{:06}", row + 1),
                when_unix_ns: 0,
                confidence: 1.0,
                what: String::new(),
                embedding: vector.to_vec(),
            })
            .await
            .unwrap();
    }
    session.wait_acked(23_000).await.unwrap();
    wait_indexed(&server);
    let mut total = 0.0;
    for (query, expected) in queries.chunks_exact(dim).zip(truth) {
        let ids: Vec<String> = expected["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|id| id.as_str().unwrap().to_owned())
            .collect();
        let found = session
            .recall(&RecallQuery {
                consistency: Consistency::Eventual,
                ..RecallQuery::new("docs", query.to_vec(), 10)
            })
            .await
            .unwrap();
        let found: Vec<String> = found.hits.into_iter().map(|h| h.id).collect();
        total += recall_at(&found, &ids);
    }
    let recall = total / truth.len() as f64;
    println!("MiniLM recall@10 = {recall:.4}");
    assert!(recall >= 0.95, "recall@10 {recall}");
    session.goodbye().await.unwrap();
}
