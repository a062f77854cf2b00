//! Starting the real `engram serve` binary for a test, on a free port.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use engram::client::ClientOptions;

pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub data_dir: PathBuf,
    /// The server's log lines after "engram is up", read by a thread.
    pub log: std::sync::mpsc::Receiver<String>,
}

impl Server {
    /// Starts `engram serve` on 127.0.0.1 with a free port and waits for "engram is up".
    pub fn start(data_dir: &Path, extra: &[&str]) -> Server {
        Server::start_at(data_dir, "127.0.0.1:0", extra)
    }

    /// Starts `engram serve` on `addr` and waits for "engram is up".
    pub fn start_at(data_dir: &Path, addr: &str, extra: &[&str]) -> Server {
        Server::start_with_env(data_dir, addr, extra, &[])
    }

    /// `start_at` with extra environment variables (test faults).
    pub fn start_with_env(
        data_dir: &Path,
        addr: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Server {
        let mut child = serve_command(data_dir, addr)
            .args(extra)
            .env(
                "RUST_LOG",
                std::env::var("ENGRAM_TEST_SERVER_LOG").unwrap_or_else(|_| "info".into()),
            )
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start engram serve");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let mut before_up = Vec::new();
        let up = lines
            .by_ref()
            .map(|l| l.expect("server log"))
            .find(|l| {
                before_up.push(l.clone());
                l.contains("engram is up")
            })
            .unwrap_or_else(|| panic!("the server did not come up; its log: {before_up:#?}"));
        let addr = up
            .split("quic_addr=")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .expect("quic_addr in the log");
        let http_addr = up
            .split("http_addr=")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .expect("http_addr in the log")
            .parse()
            .expect("socket address");
        let (tx, log) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Server {
            child,
            addr: addr.parse().expect("socket address"),
            http_addr,
            data_dir: data_dir.to_owned(),
            log,
        }
    }

    pub fn options(&self, client_name: &str) -> ClientOptions {
        let cert =
            std::fs::read(self.data_dir.join("tls").join("cert.der")).expect("server certificate");
        ClientOptions::new(self.addr, cert, client_name)
    }

    /// Sends raw bytes on a fresh session stream and returns every frame the server
    /// answers until it closes the stream.
    pub async fn raw_exchange(&self, bytes: &[u8]) -> Vec<engram::transport::protocol::Frame> {
        use engram::transport::framed::FrameReader;
        let options = self.options("raw");
        let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        endpoint.set_default_client_config(
            engram::transport::tls::quic_client_config(&options.cert_der).unwrap(),
        );
        let conn = endpoint
            .connect(options.addr, "localhost")
            .unwrap()
            .await
            .unwrap();
        let (mut send, recv) = conn.open_bi().await.unwrap();
        send.write_all(bytes).await.unwrap();
        let mut reader = FrameReader::new(recv, 1 << 20);
        let mut frames = Vec::new();
        while let Ok(Some(frame)) = reader.next().await {
            frames.push(frame);
        }
        frames
    }

    /// SIGKILL: no shutdown, no last sync.
    pub fn kill9(&mut self) {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill")
            .args(["-9", &pid])
            .status()
            .unwrap()
            .success());
        let _ = self.child.wait();
    }

    /// GET `path` on the HTTP address: (status code, body).
    pub fn http_get(&self, path: &str) -> (u16, String) {
        http_get(self.http_addr, path).unwrap_or_else(|| {
            let log: Vec<String> = self.log.try_iter().collect();
            panic!("no HTTP answer to GET {path}; server log: {log:#?}")
        })
    }

    /// GET /stats as JSON.
    pub fn stats(&self) -> serde_json::Value {
        let (status, body) = self.http_get("/stats");
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    /// What the server is doing, for a test that gave up waiting on it: its /stats, its
    /// log since start, and every thread's stack (if gdb is installed).
    pub fn diagnosis(&self) -> String {
        let stats = self.stats();
        let log: Vec<String> = self.log.try_iter().collect();
        let stacks = Command::new("gdb")
            .args([
                "-p",
                &self.child.id().to_string(),
                "-batch",
                "-ex",
                "thread apply all bt",
            ])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_else(|e| format!("(no stacks: gdb: {e})"));
        format!(
            "server stats: {stats:#}\nserver log:\n{}\nthreads:\n{stacks}",
            log.join("\n")
        )
    }

    /// Waits until every index worker has indexed the log up to its durable LSN; the
    /// /stats JSON then. Polls: the condition, not the time, decides.
    pub fn wait_indexed(&self) -> serde_json::Value {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        loop {
            let stats = self.stats();
            let durable = stats["wal"]["durable_lsn"].as_u64().unwrap();
            if indexed_lsn(&stats) >= durable {
                return stats;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "not indexed after 120 s: {stats}"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Waits for a server that was already told to stop.
    pub fn wait_exit(mut self) -> std::process::ExitStatus {
        self.child.wait().unwrap()
    }

    /// SIGTERM, then the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success());
        self.child.wait().unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every record up to this LSN is indexed, as a /stats answer says (the slowest worker).
pub fn indexed_lsn(stats: &serde_json::Value) -> u64 {
    stats["index"]["workers_indexed_lsn"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_u64().unwrap())
        .min()
        .unwrap()
}

/// One space's entry in a /stats answer.
pub fn space_stats<'a>(stats: &'a serde_json::Value, space: &str) -> &'a serde_json::Value {
    stats["index"]["spaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["space"] == space)
        .unwrap_or_else(|| panic!("no index for {space}: {stats}"))
}

/// What a set of retrying streams saw.
pub struct Pushed {
    /// Observations acknowledged, over every stream.
    pub acked: u64,
    /// Resends of observations refused as Overloaded.
    pub retries: u64,
    /// The highest load state the server announced to any of them.
    pub peak: engram::transport::protocol::LoadState,
}

/// Runs `streams` ObservationStreams at once against `server`; stream `c` sends
/// observations `c`, `c + streams`, ... of `0..streams * each`, made by `obs`, then
/// flushes. Nothing may be given up: every refusal must have been retried.
pub async fn push_through(
    server: &Server,
    streams: u64,
    each: u64,
    obs: fn(u64) -> engram::observation::Observation,
) -> Pushed {
    use engram::client::{Backoff, ObservationStream};
    let tasks: Vec<_> = (0..streams)
        .map(|c| {
            let options = server.options(&format!("pusher-{c}"));
            tokio::spawn(async move {
                let mut stream = ObservationStream::connect(options, Backoff::default())
                    .await
                    .unwrap();
                for n in (c..streams * each).step_by(streams as usize) {
                    stream.send(obs(n)).await.unwrap();
                }
                stream.flush().await.unwrap();
                assert!(
                    stream.take_rejected().is_empty(),
                    "Overloaded is retried, not given up"
                );
                let seen = (
                    stream.take_acked().len() as u64,
                    stream.overload_retries,
                    stream.peak_load,
                );
                stream.close().await.unwrap();
                seen
            })
        })
        .collect();
    let mut pushed = Pushed {
        acked: 0,
        retries: 0,
        peak: Default::default(),
    };
    for task in tasks {
        let (acked, retries, peak) = task.await.unwrap();
        pushed.acked += acked;
        pushed.retries += retries;
        pushed.peak = pushed.peak.max(peak);
    }
    pushed
}

/// GET `path` from an HTTP/1.1 server at `addr`: (status code, body), with a chunked body
/// put back together; None if nothing answered.
pub fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    http_get_with(addr, path, "")
}

/// `http_get` with extra header lines (each ending in \r\n).
pub fn http_get_with(addr: SocketAddr, path: &str, headers: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{headers}\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    Some((
        status,
        if chunked {
            dechunk(body)
        } else {
            body.to_owned()
        },
    ))
}

fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        out.push_str(&after[..size]);
        rest = after[size..].trim_start_matches("\r\n");
    }
    out
}

/// `engram serve` on `data_dir`, QUIC on `quic_addr` and HTTP on a free loopback port.
pub fn serve_command(data_dir: &Path, quic_addr: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_engram"));
    command
        .args([
            "serve",
            "--quic-addr",
            quic_addr,
            "--http-addr",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(data_dir);
    command
}
