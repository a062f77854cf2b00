//! Tokens, rights and limits, against the real `engram serve` over real QUIC, HTTP and
//! WebSocket on loopback (docs/security.md).

mod common;

use common::server::{http_get_with, serve_command, Server};
use engram::client::{ClientError, ClientOptions, Session, SpaceCreation};
use engram::index::RecallQuery;
use engram::observation::Observation;
use engram::space::Metric;
use engram::synthetic::{observation, Distribution};
use engram::transport::framed::FrameReader;
use engram::transport::protocol::{ErrorCode, Frame, RecallStatus, RejectCode};

const DIM: usize = 16;
const WRITER: &str = "writer-token-0123456789";
const READER: &str = "reader-token-0123456789";
const OTHER: &str = "other-token-0123456789a";
const ADMIN: &str = "admin-token-0123456789a";

fn auth_file(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("tokens.toml");
    std::fs::write(
        &path,
        format!(
            r#"
            [[token]]
            name = "writer"
            token = "{WRITER}"
            spaces = ["alpha", "team-*"]
            rights = ["read", "write"]

            [[token]]
            name = "reader"
            token = "{READER}"
            spaces = ["alpha"]
            rights = ["read"]

            [[token]]
            name = "other"
            token = "{OTHER}"
            spaces = ["secret"]
            rights = ["read", "write"]

            [[token]]
            name = "ops"
            token = "{ADMIN}"
            rights = ["admin"]
            "#
        ),
    )
    .unwrap();
    path
}

fn obs(space: &str, n: u64) -> Observation {
    observation(3, space, "id-", n, DIM, Distribution::Uniform)
}

fn with_token(server: &Server, token: Option<&str>) -> ClientOptions {
    let mut options = server.options("security");
    options.auth_token = token.map(str::to_owned);
    options
}

fn refused_code(result: Result<Session, ClientError>) -> u16 {
    match result {
        Err(ClientError::Server { code, .. }) => code,
        Err(other) => panic!("expected an Error frame, got {other}"),
        Ok(_) => panic!("the session was let in"),
    }
}

/// One counter's value in the Prometheus text.
fn counter(metrics: &str, series: &str) -> u64 {
    metrics
        .lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .map_or(0, |v| v.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_confine_each_client_to_its_spaces_and_rights() {
    let data = tempfile::tempdir().unwrap();
    let tokens = auth_file(data.path());
    let server = Server::start(data.path(), &["--auth-file", tokens.to_str().unwrap()]);

    // No token, a wrong one: Unauthenticated, the same for both, and the session ends.
    for token in [None, Some("writer-token-012345678X")] {
        let refused = Session::connect(&with_token(&server, token), None).await;
        assert_eq!(refused_code(refused), ErrorCode::Unauthenticated as u16);
    }

    // The other team's space exists, with an observation in it.
    let mut other = Session::connect(&with_token(&server, Some(OTHER)), None)
        .await
        .unwrap();
    let seq = other.send(&obs("secret", 0)).await.unwrap();
    assert!(other.wait_acked(seq).await.unwrap().rejected.is_empty());

    // The writer writes its spaces; a write elsewhere is refused alone and the session
    // goes on.
    let mut writer = Session::connect(&with_token(&server, Some(WRITER)), None)
        .await
        .unwrap();
    writer.send(&obs("alpha", 1)).await.unwrap();
    let forbidden = writer.send(&obs("secret", 2)).await.unwrap();
    let last = writer.send(&obs("team-x", 3)).await.unwrap();
    let progress = writer.wait_acked(last).await.unwrap();
    assert_eq!(progress.rejected.len(), 1, "{:?}", progress.rejected);
    let rejected = &progress.rejected[0];
    assert_eq!(
        (rejected.seq, rejected.code, rejected.field.as_str()),
        (forbidden, RejectCode::Forbidden as u16, "space")
    );
    // Reading another team's space: the same refusal whether or not it exists.
    for space in ["secret", "no-such-space"] {
        let query = RecallQuery::new(space, obs(space, 0).embedding, 5);
        match writer.recall(&query).await {
            Err(ClientError::Recall { status, .. }) => {
                assert_eq!(status, RecallStatus::Forbidden, "{space}")
            }
            other => panic!("recall of {space}: {other:?}"),
        }
    }
    let created = writer
        .create_space("beta", DIM as u32, Metric::Cosine)
        .await;
    assert!(
        matches!(created, Ok(SpaceCreation::Refused { code, .. }) if code == RejectCode::Forbidden as u16),
        "{created:?}"
    );
    // Listing shows only what the token may read.
    let names: Vec<String> = writer
        .list_spaces()
        .await
        .unwrap()
        .spaces
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(names, ["alpha", "team-x"]);
    writer.goodbye().await.unwrap();

    // A read token reads but cannot write.
    let mut reader = Session::connect(&with_token(&server, Some(READER)), None)
        .await
        .unwrap();
    let query = RecallQuery::new("alpha", obs("alpha", 1).embedding, 1);
    let recalled = reader.recall(&query).await.unwrap();
    assert_eq!(recalled.hits[0].id, "id-1");
    let write = reader.send(&obs("alpha", 4)).await.unwrap();
    let progress = reader.wait_acked(write).await.unwrap();
    assert_eq!(
        progress
            .rejected
            .iter()
            .map(|r| (r.seq, r.code))
            .collect::<Vec<_>>(),
        [(write, RejectCode::Forbidden as u16)]
    );
    // Asking which ids another team stored ends the session.
    let checked = reader.check_ids("secret", &["id-0".to_owned()]).await;
    assert!(
        matches!(checked, Err(ClientError::Server { code, .. }) if code == ErrorCode::Forbidden as u16),
        "{checked:?}"
    );
    other.goodbye().await.unwrap();

    // HTTP: /stats and /metrics need the admin right; /health does not.
    let get = |path: &str, token: Option<&str>| {
        let header = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
        http_get_with(server.http_addr, path, &header).unwrap()
    };
    assert_eq!(get("/health", None).0, 200);
    for token in [None, Some(READER), Some("nonsense")] {
        assert_eq!(get("/stats", token).0, 401, "{token:?}");
        assert_eq!(get("/metrics", token).0, 401, "{token:?}");
    }
    let (status, stats) = get("/stats", Some(ADMIN));
    assert_eq!(status, 200, "{stats}");
    let (status, metrics) = get("/metrics", Some(ADMIN));
    assert_eq!(status, 200);
    assert_eq!(
        counter(
            &metrics,
            "engram_auth_failures_total{reason=\"missing_token\"}"
        ),
        3,
        "{metrics}"
    );
    assert_eq!(
        counter(
            &metrics,
            "engram_auth_failures_total{reason=\"invalid_token\"}"
        ),
        3
    );
    // Two writes, two recalls, a CreateSpace, a CheckIds, two HTTP requests.
    assert_eq!(
        counter(&metrics, "engram_auth_failures_total{reason=\"forbidden\"}"),
        8
    );

    // Nothing refused was stored.
    assert!(server.terminate().success());
    let stored = common::stored(data.path());
    assert_eq!(stored.len(), 3, "{stored:?}");
}

#[test]
fn without_an_auth_file_the_server_refuses_to_listen_beyond_loopback() {
    let data = tempfile::tempdir().unwrap();
    let output = serve_command(data.path(), "0.0.0.0:0").output().unwrap();
    assert!(!output.status.success());
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(
        log.contains("--quic-addr 0.0.0.0:0 is not a loopback address")
            && log.contains("--auth-file"),
        "{log}"
    );
}

/// A raw client: opens a connection (keep-alives on, so that only the server's own limits
/// end it) and hands back the connection.
async fn raw_connection(server: &Server) -> quinn::Connection {
    let options = server.options("raw");
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let mut config = engram::transport::tls::quic_client_config(&options.cert_der).unwrap();
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(std::time::Duration::from_millis(100)));
    config.transport_config(std::sync::Arc::new(transport));
    endpoint.set_default_client_config(config);
    endpoint
        .connect(options.addr, "localhost")
        .unwrap()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_greedy_clients_meet_typed_limits_and_others_are_served() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(
        data.path(),
        &["--hello-timeout-ms", "300", "--sessions-max", "2"],
    );

    // Slow loris: a connection that opens no stream is closed by the server...
    let idle = raw_connection(&server).await;
    let closed = tokio::time::timeout(std::time::Duration::from_secs(20), idle.closed())
        .await
        .expect("the server closes a connection that opens no session");
    assert!(
        matches!(&closed, quinn::ConnectionError::ApplicationClosed(c)
            if c.error_code == engram::transport::quic::CLOSE_NO_SESSION.into()),
        "{closed:?}"
    );
    // ...and a session that starts a Hello and never finishes it gets LimitReached.
    let conn = raw_connection(&server).await;
    let (mut send, recv) = conn.open_bi().await.unwrap();
    send.write_all(&[40, 0, 0]).await.unwrap();
    let mut reader = FrameReader::new(recv, 1 << 20);
    let answer = tokio::time::timeout(std::time::Duration::from_secs(20), reader.next())
        .await
        .expect("an answer to the stalled Hello");
    assert!(
        matches!(&answer, Ok(Some(Frame::Error { code, message }))
            if *code == ErrorCode::LimitReached as u16 && message.contains("hello_timeout")),
        "{answer:?}"
    );
    drop(conn);

    // Sessions past sessions_max get LimitReached; the ones in are served.
    let mut first = Session::connect(&server.options("a"), None).await.unwrap();
    let second = Session::connect(&server.options("b"), None).await.unwrap();
    let third = Session::connect(&server.options("c"), None).await;
    assert_eq!(refused_code(third), ErrorCode::LimitReached as u16);
    let seq = first.send(&obs("v", 0)).await.unwrap();
    assert!(first.wait_acked(seq).await.unwrap().rejected.is_empty());
    second.goodbye().await.unwrap();

    let (_, metrics) = server.http_get("/metrics");
    assert_eq!(
        counter(&metrics, "engram_limit_hits_total{limit=\"hello_timeout\"}"),
        2,
        "{metrics}"
    );
    assert_eq!(
        counter(&metrics, "engram_limit_hits_total{limit=\"sessions\"}"),
        1
    );
    first.goodbye().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_limit_are_refused() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path(), &["--connections-max", "1"]);
    let mut first = Session::connect(&server.options("a"), None).await.unwrap();
    let second = Session::connect(&server.options("b"), None).await;
    assert!(
        matches!(&second, Err(ClientError::Connect { reason, .. })
            if reason.to_lowercase().contains("refused")),
        "{:?}",
        second.err()
    );
    let seq = first.send(&obs("v", 0)).await.unwrap();
    assert!(first.wait_acked(seq).await.unwrap().rejected.is_empty());
    first.goodbye().await.unwrap();
    let (_, metrics) = server.http_get("/metrics");
    assert_eq!(
        counter(&metrics, "engram_limit_hits_total{limit=\"connections\"}"),
        1,
        "{metrics}"
    );
}

/// The WebSocket gateway's messages until (and with) the first that is not a flow state
/// or heartbeat.
async fn ws_next(
    socket: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
) -> serde_json::Value {
    use futures_util::StreamExt;
    loop {
        let message = tokio::time::timeout(std::time::Duration::from_secs(60), socket.next())
            .await
            .expect("a message before the deadline")
            .expect("the socket is open")
            .unwrap();
        if let tokio_tungstenite::tungstenite::Message::Text(text) = message {
            let value: serde_json::Value = serde_json::from_str(&text).unwrap();
            if !matches!(value["type"].as_str(), Some("flow_control" | "heartbeat")) {
                return value;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_sessions_present_their_token_in_init_or_as_a_bearer() {
    use futures_util::SinkExt;
    use serde_json::json;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Message;
    let data = tempfile::tempdir().unwrap();
    let tokens = auth_file(data.path());
    let server = Server::start(data.path(), &["--auth-file", tokens.to_str().unwrap()]);
    let url = format!("ws://{}/v1/stream", server.http_addr);
    let connect = |bearer: Option<&str>| {
        let mut request = url.as_str().into_client_request().unwrap();
        if let Some(token) = bearer {
            request
                .headers_mut()
                .insert("authorization", format!("Bearer {token}").parse().unwrap());
        }
        tokio_tungstenite::connect_async(request)
    };
    let observation = |seq: u64, id: &str| {
        json!({"type": "observation", "seq": seq, "episode": {
            "id": id, "when": 1.7e12, "what": "w", "embedding": obs("alpha", seq).embedding,
            "confidence": 0.5}})
    };
    let send = |message: serde_json::Value| Message::Text(message.to_string().into());

    // No token: a fatal unauthenticated error.
    let (mut socket, _) = connect(None).await.unwrap();
    socket
        .send(send(json!({"type": "init", "space": "alpha"})))
        .await
        .unwrap();
    let refused = ws_next(&mut socket).await;
    assert_eq!(
        (refused["code"].as_str(), refused["fatal"].as_bool()),
        (Some("unauthenticated"), Some(true)),
        "{refused}"
    );

    // The writer's token as a bearer header: its writes are acknowledged.
    let (mut socket, _) = connect(Some(WRITER)).await.unwrap();
    socket
        .send(send(json!({"type": "init", "space": "alpha"})))
        .await
        .unwrap();
    assert_eq!(ws_next(&mut socket).await["type"], "init_ack");
    socket.send(send(observation(1, "ws-1"))).await.unwrap();
    let acked = ws_next(&mut socket).await;
    assert_eq!(
        (acked["type"].as_str(), acked["seq"].as_u64()),
        (Some("ack"), Some(1))
    );

    // The reader's token in init: let in, but its write is refused as forbidden.
    let (mut socket, _) = connect(None).await.unwrap();
    socket
        .send(send(
            json!({"type": "init", "space": "alpha", "token": READER}),
        ))
        .await
        .unwrap();
    assert_eq!(ws_next(&mut socket).await["type"], "init_ack");
    socket.send(send(observation(1, "ws-2"))).await.unwrap();
    let refused = ws_next(&mut socket).await;
    assert_eq!(
        (
            refused["code"].as_str(),
            refused["seq"].as_u64(),
            refused["field"].as_str()
        ),
        (Some("forbidden"), Some(1), Some("space")),
        "{refused}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_address_serves_tls_when_given_a_certificate() {
    use rustls::pki_types::{CertificateDer, ServerName};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let data = tempfile::tempdir().unwrap();
    let generated = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let (cert, key) = (data.path().join("http.der"), data.path().join("http.key"));
    std::fs::write(&cert, generated.cert.der()).unwrap();
    std::fs::write(&key, generated.signing_key.serialize_der()).unwrap();
    let server = Server::start(
        data.path(),
        &[
            "--http-tls-cert",
            cert.to_str().unwrap(),
            "--http-tls-key",
            key.to_str().unwrap(),
        ],
    );

    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from(generated.cert.der().to_vec()))
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(server.http_addr)
        .await
        .unwrap();
    let mut tls = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("a TLS handshake with the configured certificate");
    tls.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    tls.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");

    // Plain HTTP gets no HTTP answer from a TLS address.
    let plain = common::server::http_get(server.http_addr, "/health");
    assert!(plain.is_none(), "{plain:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversize_frames_of_every_type_are_answered_and_others_are_served() {
    use engram::transport::protocol::{FrameType, FRAME_BYTES_MAX_DEFAULT};
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path(), &[]);
    let mut hello = Vec::new();
    Frame::Hello {
        version: 1,
        client_name: "hostile".into(),
        resume_token: None,
        auth_token: None,
    }
    .encode(&mut hello);
    let raw = |kind: u8, body: &[u8]| {
        let mut bytes = ((1 + body.len()) as u32).to_le_bytes().to_vec();
        bytes.push(kind);
        bytes.extend_from_slice(body);
        bytes
    };
    let last_error = |frames: Vec<Frame>| match frames.last() {
        Some(Frame::Error { code, message }) => (*code, message.clone()),
        other => panic!("expected an Error frame, got {other:?}"),
    };
    for code in 0..=u8::MAX {
        let Some(kind) = FrameType::from_u8(code) else {
            continue;
        };
        // A body cut short inside its first field, after a valid Hello (and as the first
        // frame, for Hello itself).
        let cut = raw(code, &[0x07]);
        let bytes = if kind == FrameType::Hello {
            cut
        } else {
            [hello.clone(), cut].concat()
        };
        let (error, message) = last_error(server.raw_exchange(&bytes).await);
        assert_eq!(
            error,
            ErrorCode::MalformedFrame as u16,
            "{kind:?}: {message}"
        );
        // Its length field past the limit: refused before the body is read.
        let mut oversize = hello.clone();
        oversize.extend_from_slice(&(FRAME_BYTES_MAX_DEFAULT + 1).to_le_bytes());
        oversize.push(code);
        let (error, message) = last_error(server.raw_exchange(&oversize).await);
        assert_eq!(
            error,
            ErrorCode::MalformedFrame as u16,
            "{kind:?}: {message}"
        );
        assert!(message.contains("frame length"), "{kind:?}: {message}");
    }
    // Every frame type a client must not send, well formed, after Hello.
    for frame in [
        Frame::Ack { seq: 1, lsn: 1 },
        Frame::ServerGoodbye { last_acked_seq: 0 },
        Frame::Error {
            code: 1,
            message: "x".into(),
        },
        Frame::CheckResult {
            request_id: 1,
            found: vec![true],
        },
    ] {
        let mut bytes = hello.clone();
        frame.encode(&mut bytes);
        let (error, message) = last_error(server.raw_exchange(&bytes).await);
        assert_eq!(
            error,
            ErrorCode::UnexpectedFrame as u16,
            "{frame:?}: {message}"
        );
    }

    // The server still serves, and stored nothing of all that.
    let mut session = Session::connect(&server.options("after"), None)
        .await
        .unwrap();
    let seq = session.send(&obs("v", 0)).await.unwrap();
    assert!(session.wait_acked(seq).await.unwrap().rejected.is_empty());
    session.goodbye().await.unwrap();
    assert!(server.terminate().success());
    assert_eq!(common::stored(data.path()).len(), 1);
}

#[test]
fn metrics_can_move_to_their_own_address_and_need_the_admin_token_elsewhere() {
    let data = tempfile::tempdir().unwrap();
    let tokens = auth_file(data.path());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let metrics_addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let server = Server::start(
        data.path(),
        &[
            "--auth-file",
            tokens.to_str().unwrap(),
            "--metrics-addr",
            &metrics_addr.to_string(),
        ],
    );
    let (status, body) = common::server::http_get(metrics_addr, "/metrics").unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("engram_streaming_active_sessions"), "{body}");
    // Not on the main address any more, with or without a token; /stats stays, for admins.
    let admin = format!("Authorization: Bearer {ADMIN}\r\n");
    assert_eq!(
        http_get_with(server.http_addr, "/metrics", &admin)
            .unwrap()
            .0,
        404
    );
    assert_eq!(
        http_get_with(server.http_addr, "/stats", &admin).unwrap().0,
        200
    );
    // The metrics address serves nothing else.
    assert_eq!(
        common::server::http_get(metrics_addr, "/stats").unwrap().0,
        404
    );
}
