//! The monitoring deployment against a real Prometheus (Debian's `prometheus`, installed
//! by scripts/setup.sh): the alert rules pass their promtool unit tests; Prometheus
//! scrapes a real server under load; every query of the Grafana dashboard returns data
//! through Prometheus' HTTP API; every alert rule evaluates without error.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::server::Server;
use engram::client::{Backoff, ObservationStream, Session};
use engram::index::RecallQuery;
use engram::synthetic::{observation, Distribution};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A Prometheus process, killed when dropped.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    fn start(dir: &Path, target: SocketAddr) -> Prometheus {
        let rules = repo().join("deployments/prometheus/alerts/streaming.yml");
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 rule_files:\n  - {}\n\
                 scrape_configs:\n  - job_name: engram\n    static_configs:\n      - targets: [\"{target}\"]\n",
                rules.display()
            ),
        )
        .unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus is installed by scripts/setup.sh");
        Prometheus { child, addr }
    }

    /// GET `path_and_query` on the HTTP API: the JSON body, or None while it is not up.
    fn get(&self, path_and_query: &str) -> Option<serde_json::Value> {
        match common::server::http_get(self.addr, path_and_query)? {
            (200, body) => serde_json::from_str(&body).ok(),
            _ => None,
        }
    }

    fn query(&self, expr: &str) -> Option<Vec<serde_json::Value>> {
        let answer = self.get(&format!("/api/v1/query?query={}", percent_encode(expr)))?;
        assert_eq!(answer["status"], "success", "{expr}: {answer}");
        answer["data"]["result"].as_array().cloned()
    }
}

/// The share of a histogram's samples above bucket `le`, from a Prometheus exposition.
fn share_above(exposition: &str, histogram: &str, le: &str) -> f64 {
    let sample = |prefix: String| -> f64 {
        let line = exposition
            .lines()
            .find(|line| line.starts_with(&prefix))
            .unwrap_or_else(|| panic!("{prefix} missing from the exposition"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    let count = sample(format!("{histogram}_count "));
    let at_or_below = sample(format!("{histogram}_bucket{{le=\"{le}\"}} "));
    assert!(count > 0.0, "{histogram} has no samples");
    1.0 - at_or_below / count
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Every query of the dashboard, with its variables filled in as Grafana would.
fn dashboard_queries() -> Vec<(String, String)> {
    let text =
        std::fs::read_to_string(repo().join("deployments/grafana/dashboards/streaming.json"))
            .unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).unwrap();
    let panels = dashboard["panels"].as_array().unwrap();
    assert!((8..=10).contains(&panels.len()), "8-10 panels");
    let variables: Vec<&str> = dashboard["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert!(variables.contains(&"space"), "a $space variable");
    panels
        .iter()
        .flat_map(|p| {
            p["targets"].as_array().unwrap().iter().map(move |t| {
                let expr = t["expr"]
                    .as_str()
                    .unwrap()
                    .replace("$__rate_interval", "10s")
                    .replace("$space", ".*");
                (p["title"].as_str().unwrap().to_owned(), expr)
            })
        })
        .collect()
}

/// Streams, recalls and sends one bad observation a round, until told to stop.
async fn load(server_options: engram::client::ClientOptions, stop: Arc<AtomicBool>) {
    let mut stream = ObservationStream::connect(server_options.clone(), Backoff::default())
        .await
        .unwrap();
    let mut session = Session::connect(&server_options, None).await.unwrap();
    let mut n = 0u64;
    let mut bad = 0u64;
    while !stop.load(Ordering::Relaxed) {
        for _ in 0..200 {
            let space = ["p0", "p1"][(n % 2) as usize];
            stream
                .send(observation(9, space, "p-", n, 32, Distribution::Uniform))
                .await
                .unwrap();
            n += 1;
        }
        stream.flush().await.unwrap();
        stream.take_acked();
        let query = observation(9, "p0", "p-", 0, 32, Distribution::Uniform).embedding;
        session
            .recall(&RecallQuery::new("p0", query, 5))
            .await
            .unwrap();
        // A wrong dimension, refused: the rejection series have data too.
        session
            .send(&observation(9, "p0", "bad-", bad, 8, Distribution::Uniform))
            .await
            .unwrap();
        bad += 1;
    }
    stream.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_the_server_and_the_dashboard_and_alerts_work() {
    let rules = Command::new("promtool")
        .arg("test")
        .arg("rules")
        .arg(repo().join("deployments/prometheus/alerts/streaming_test.yml"))
        .output()
        .expect("promtool is installed by scripts/setup.sh");
    assert!(
        rules.status.success(),
        "{}{}",
        String::from_utf8_lossy(&rules.stdout),
        String::from_utf8_lossy(&rules.stderr)
    );
    let config = Command::new("promtool")
        .arg("check")
        .arg("config")
        .arg(repo().join("deployments/prometheus/prometheus.yml"))
        .output()
        .unwrap();
    assert!(config.status.success(), "{config:?}");

    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path(), &[]);
    let prom_dir = tempfile::tempdir().unwrap();
    let prometheus = Prometheus::start(prom_dir.path(), server.http_addr);
    let stop = Arc::new(AtomicBool::new(false));
    let loader = tokio::spawn(load(server.options("load"), stop.clone()));

    // Polls until every query has data and every rule has been evaluated; the deadline
    // only turns a hang into a failure that says what was missing.
    let queries = dashboard_queries();
    let deadline = Instant::now() + Duration::from_secs(120);
    let missing = loop {
        let missing: Vec<String> = tokio::task::block_in_place(|| {
            let mut missing = Vec::new();
            for (panel, expr) in &queries {
                let has_data = prometheus.query(expr).is_some_and(|series| {
                    series.iter().any(|s| {
                        s["value"][1]
                            .as_str()
                            .and_then(|v| v.parse::<f64>().ok())
                            .is_some_and(f64::is_finite)
                    })
                });
                if !has_data {
                    missing.push(format!("{panel}: {expr}"));
                }
            }
            match prometheus.get("/api/v1/rules") {
                Some(rules) => {
                    let groups = rules["data"]["groups"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default();
                    let evaluated: Vec<&serde_json::Value> = groups
                        .iter()
                        .flat_map(|g| g["rules"].as_array().unwrap())
                        .collect();
                    if evaluated.len() != 7 {
                        missing.push(format!("{} rules loaded, not 7", evaluated.len()));
                    }
                    for rule in evaluated {
                        let never = rule["lastEvaluation"]
                            .as_str()
                            .is_none_or(|t| t.starts_with("0001"));
                        if rule["health"] != "ok" || never {
                            missing.push(format!("rule {}: {}", rule["name"], rule["health"]));
                        }
                    }
                }
                None => missing.push("the rules API".into()),
            }
            missing
        });
        if missing.is_empty() || Instant::now() > deadline {
            break missing;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    stop.store(true, Ordering::Relaxed);
    loader.await.unwrap();
    assert!(
        missing.is_empty(),
        "after 120 s still without data or evaluation: {missing:#?}"
    );
    // No alert fires on a healthy server under a light load. The two latency alerts
    // measure the machine's disk as much as the server: on a slow disk (a shared CI
    // runner) they may stand pending, but only when the server's own histogram, read
    // without Prometheus, shows the same slowness.
    let alerts = prometheus.get("/api/v1/alerts").unwrap();
    let (_, exposition) = server.http_get("/metrics");
    for alert in alerts["data"]["alerts"].as_array().unwrap() {
        assert_eq!(alert["state"], "pending", "{alerts}");
        let (histogram, bucket_below_threshold) = match alert["labels"]["alertname"].as_str() {
            // p99 > 20 ms interpolates inside (12.8 ms, 25.6 ms] or above.
            Some("FsyncSlow") => ("engram_wal_fsync_duration_seconds", "0.0128"),
            // p99 > 50 ms interpolates inside (25.6 ms, 51.2 ms] or above.
            Some("HighObservationLatency") => {
                ("engram_streaming_observation_latency_seconds", "0.0256")
            }
            _ => panic!("a healthy server raised {alert}"),
        };
        let share = share_above(&exposition, histogram, bucket_below_threshold);
        assert!(
            share > 0.01,
            "{alert} while only {share} of {histogram} lies above {bucket_below_threshold} s"
        );
    }
    drop(prometheus);
    assert!(server.terminate().success());
}
