//! ListSpaces and CheckIds over real QUIC, and the `engram spaces` and `engram check`
//! commands against the real server binary.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::server::Server;
use common::stdout_json as json;
use engram::client::Session;
use engram::synthetic::{observation, Distribution};

fn cli(server: &Server, data: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_engram"))
        .args(args)
        .args(["--addr", &server.addr.to_string(), "--cert"])
        .arg(data.join("tls").join("cert.der"))
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_reads_its_own_writes_in_spaces_and_checks() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path(), &[]);
    let mut session = Session::connect(&server.options("rw"), None).await.unwrap();
    for n in 0..300 {
        session
            .send(&observation(1, "alpha", "a-", n, 16, Distribution::Uniform))
            .await
            .unwrap();
    }
    for n in 0..5 {
        session
            .send(&observation(1, "beta", "b-", n, 8, Distribution::Uniform))
            .await
            .unwrap();
    }
    // No wait for acks: the answers come after everything sent before them.
    let listing = session.list_spaces().await.unwrap();
    let summary: Vec<_> = listing
        .spaces
        .iter()
        .map(|s| (s.name.as_str(), s.dim, s.observations))
        .collect();
    assert_eq!(summary, vec![("alpha", 16, 300), ("beta", 8, 5)]);
    assert_eq!(listing.durable_lsn, 305);
    assert_eq!(listing.spaces[1].last_lsn, 305, "beta's newest observation");
    let ids: Vec<String> = ["a-0", "a-299", "a-300", "b-4", "nope"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let found = session.check_ids("alpha", &ids).await.unwrap();
    assert_eq!(found, vec![true, true, false, false, false], "per space");
    // More ids than one request carries: the client splits them, the answer is whole.
    let many: Vec<String> = (0..2500).map(|n| format!("a-{n}")).collect();
    let found = session.check_ids("alpha", &many).await.unwrap();
    assert_eq!(found.len(), 2500);
    assert_eq!(found.iter().filter(|f| **f).count(), 300);
    assert!(found[..300].iter().all(|f| *f));
    session.goodbye().await.unwrap();
    assert!(server.terminate().success());
}

#[test]
fn spaces_and_check_commands_report_what_is_stored_also_after_a_restart() {
    let data = tempfile::tempdir().unwrap();
    let ids = data.path().join("ids.txt");
    let server = Server::start(data.path(), &[]);
    let load = Command::new(env!("CARGO_BIN_EXE_engram-load"))
        .args([
            "--addr",
            &server.addr.to_string(),
            "--space",
            "loaded",
            "--count",
            "2000",
            "--dim",
            "24",
            "--connections",
            "2",
            "--json",
            "--cert",
        ])
        .arg(data.path().join("tls").join("cert.der"))
        .arg("--ids-out")
        .arg(&ids)
        .output()
        .unwrap();
    common::success_json(&load);

    // `engram check --space loaded --ids FILE`, then `extra` flags.
    let check = |server: &Server, ids: &Path, extra: &[&str]| {
        let mut args = vec!["check", "--space", "loaded", "--ids", ids.to_str().unwrap()];
        args.extend_from_slice(extra);
        cli(server, data.path(), &args)
    };
    let check_all = |server: &Server| {
        let out = check(server, &ids, &["--json"]);
        assert!(out.status.success(), "every acked id is there");
        let report = json(&out);
        assert_eq!(
            (
                report["checked"].as_u64(),
                report["found"].as_u64(),
                report["missing"].as_u64()
            ),
            (Some(2000), Some(2000), Some(0))
        );
    };
    let spaces = |server: &Server| {
        let listing = json(&cli(server, data.path(), &["spaces", "--json"]));
        let space = &listing["spaces"][0];
        assert_eq!(listing["spaces"].as_array().unwrap().len(), 1);
        assert_eq!(
            (
                space["space"].as_str(),
                space["dimension"].as_u64(),
                space["count"].as_u64()
            ),
            (Some("loaded"), Some(24), Some(2000))
        );
        assert_eq!(listing["durable_lsn"].as_u64(), Some(2000));
    };
    check_all(&server);
    spaces(&server);

    // A missing id: named, counted, exit 1.
    let with_ghost = data.path().join("ghost.txt");
    std::fs::write(
        &with_ghost,
        format!("{}ghost-1\n", std::fs::read_to_string(&ids).unwrap()),
    )
    .unwrap();
    let out = check(&server, &with_ghost, &["--json"]);
    assert_eq!(out.status.code(), Some(1));
    let report = json(&out);
    assert_eq!(report["missing"].as_u64(), Some(1));
    assert_eq!(report["missing_ids"][0].as_str(), Some("ghost-1"));
    let plain = check(&server, &with_ghost, &[]);
    assert!(String::from_utf8_lossy(&plain.stdout).contains("missing ghost-1"));

    // Counts and ids are rebuilt from the log after a crash.
    let mut server = server;
    server.kill9();
    let server = Server::start(data.path(), &[]);
    check_all(&server);
    spaces(&server);
    let table = cli(&server, data.path(), &["spaces"]);
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.contains("loaded") && table.contains("2000"),
        "{table}"
    );
    assert!(server.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_space_defined_first_holds_its_dimension_and_survives_a_restart_empty() {
    use engram::client::SpaceCreation;
    let data = tempfile::tempdir().unwrap();
    let created = |out: &Output| json(out);
    let mut server = Server::start(data.path(), &[]);
    let define = |server: &Server, space: &str, dim: &str, metric: &str| {
        cli(
            server,
            data.path(),
            &[
                "create-space",
                "--space",
                space,
                "--dim",
                dim,
                "--metric",
                metric,
                "--json",
            ],
        )
    };
    let out = define(&server, "defined", "8", "l2");
    assert!(out.status.success());
    let report = created(&out);
    assert_eq!(report["outcome"].as_str(), Some("created"));
    assert!(
        report["lsn"].as_u64().unwrap() >= 1,
        "the definition is logged"
    );
    let again = define(&server, "defined", "8", "l2");
    assert!(again.status.success());
    assert_eq!(created(&again)["outcome"].as_str(), Some("existed"));
    for (space, dim, metric, why) in [
        ("defined", "9", "l2", "dimension 8"),
        ("defined", "8", "dot", "metric L2"),
        ("bad name!", "8", "cosine", "[A-Za-z0-9_.-]"),
        ("zero", "0", "cosine", "at least 1 dimension"),
    ] {
        let out = define(&server, space, dim, metric);
        assert_eq!(out.status.code(), Some(1), "{space} {dim} {metric}");
        let refused = created(&out)["refused"].as_str().unwrap().to_owned();
        assert!(refused.contains(why), "{refused} should name {why}");
    }

    // Observations must now have the defined dimension.
    let mut session = Session::connect(&server.options("definer"), None)
        .await
        .unwrap();
    let wrong = observation(1, "defined", "d-", 0, 9, Distribution::Uniform);
    let seq = session.send(&wrong).await.unwrap();
    let progress = session.wait_acked(seq).await.unwrap();
    assert_eq!(progress.rejected.len(), 1);
    assert_eq!(progress.rejected[0].field, "embedding");
    assert!(progress.rejected[0].expected.contains("dimension 8"));
    assert_eq!(
        session
            .create_space("defined", 8, engram::space::Metric::L2)
            .await
            .unwrap(),
        SpaceCreation::Existed
    );
    session.goodbye().await.unwrap();

    // Empty, it is still there after kill -9, with its dimension.
    server.kill9();
    let server = Server::start(data.path(), &[]);
    let listing = json(&cli(&server, data.path(), &["spaces", "--json"]));
    let space = &listing["spaces"][0];
    assert_eq!(
        (
            space["space"].as_str(),
            space["dimension"].as_u64(),
            space["count"].as_u64()
        ),
        (Some("defined"), Some(8), Some(0))
    );
    let out = define(&server, "defined", "8", "dot");
    assert_eq!(
        out.status.code(),
        Some(1),
        "the metric came back from the log too"
    );
    assert!(server.terminate().success());
}
