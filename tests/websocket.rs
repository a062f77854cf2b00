//! The WebSocket gateway against the real server binary, over a real WebSocket: durable
//! acks, typed errors that leave the session going, resumption without loss or
//! duplicates, heartbeats, pause and resume, recall and close.

mod common;

use std::time::Duration;

use common::server::Server;
use engram::client::Session;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

const DIM: usize = 16;

/// A deadline against a stuck test, not a synchronisation.
const DEADLINE: Duration = Duration::from_secs(60);

fn embedding(n: u64) -> Vec<f32> {
    // Distinct directions: n's bits spread over the dimensions, plus a constant.
    (0..DIM)
        .map(|d| {
            let bit = (n.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (d * 4)) & 0xf;
            bit as f32 - 7.5
        })
        .collect()
}

fn observation(seq: u64, id: &str) -> Value {
    json!({
        "type": "observation",
        "seq": seq,
        "episode": {
            "id": id,
            "when": 1_700_000_000_000.0 + seq as f64,
            "what": format!("episode {id}"),
            "embedding": embedding(seq),
            "confidence": 0.75,
        }
    })
}

async fn connect(server: &Server) -> Socket {
    let url = format!("ws://{}/v1/stream", server.http_addr);
    tokio_tungstenite::connect_async(url).await.unwrap().0
}

async fn send(socket: &mut Socket, message: Value) {
    socket
        .send(Message::Text(message.to_string().into()))
        .await
        .unwrap();
}

/// The next JSON message; panics if the socket ends or the deadline passes.
async fn next(socket: &mut Socket) -> Value {
    loop {
        let message = tokio::time::timeout(DEADLINE, socket.next())
            .await
            .expect("a message before the deadline")
            .expect("the socket is open")
            .unwrap();
        match message {
            Message::Text(text) => return serde_json::from_str(&text).unwrap(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected a JSON message, got {other:?}"),
        }
    }
}

/// The next error, past the flow states and heartbeats a session sends on its own.
async fn next_error(socket: &mut Socket) -> Value {
    loop {
        let message = next(socket).await;
        match message["type"].as_str() {
            Some("flow_control" | "heartbeat") => continue,
            Some("error") => return message,
            _ => panic!("expected an error, got {message}"),
        }
    }
}

/// Reads until an ack covers `seq`; returns every other message seen on the way.
async fn until_acked(socket: &mut Socket, seq: u64) -> Vec<Value> {
    let mut others = Vec::new();
    loop {
        let message = next(socket).await;
        if message["type"] == "ack" && message["seq"].as_u64().unwrap() >= seq {
            return others;
        }
        if message["type"] != "ack" {
            others.push(message);
        }
    }
}

async fn init(socket: &mut Socket, space: &str, resume_token: Option<&str>) -> Value {
    let mut message = json!({ "type": "init", "space": space, "buffer_size": 512 });
    if let Some(token) = resume_token {
        message["resume_token"] = json!(token);
    }
    send(socket, message).await;
    let ack = next(socket).await;
    assert_eq!(ack["type"], "init_ack", "{ack}");
    ack
}

/// Which of `ids` the server stores in `space`, asked over the native protocol.
async fn stored(server: &Server, space: &str, ids: &[String]) -> Vec<bool> {
    let mut session = Session::connect(&server.options("checker"), None)
        .await
        .unwrap();
    let found = session.check_ids(space, ids).await.unwrap();
    session.goodbye().await.unwrap();
    found
}

async fn count(server: &Server, space: &str) -> u64 {
    let mut session = Session::connect(&server.options("counter"), None)
        .await
        .unwrap();
    let listing = session.list_spaces().await.unwrap();
    session.goodbye().await.unwrap();
    listing
        .spaces
        .iter()
        .find(|s| s.name == space)
        .map_or(0, |s| s.observations)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_session_streams_with_durable_acks_recalls_and_closes() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path(), &[]);
    let mut socket = connect(&server).await;
    let ack = init(&mut socket, "web", None).await;
    assert_eq!(ack["last_acked_seq"], 0);
    assert_eq!(ack["resume_token"].as_str().unwrap().len(), 32);
    assert_eq!(ack["limits"]["buffer_size"], 512);
    assert_eq!(ack["heartbeat_ms"], 30_000);

    let ids: Vec<String> = (1..=1000).map(|n| format!("w{n}")).collect();
    for (n, id) in ids.iter().enumerate() {
        send(&mut socket, observation(n as u64 + 1, id)).await;
    }
    let others = until_acked(&mut socket, 1000).await;
    assert!(
        others.iter().all(|m| m["type"] == "flow_control"),
        "nothing refused: {others:?}"
    );
    assert!(
        stored(&server, "web", &ids).await.iter().all(|f| *f),
        "every acknowledged observation is stored"
    );

    send(
        &mut socket,
        json!({ "type": "recall", "request_id": 9, "k": 3, "embedding": embedding(500) }),
    )
    .await;
    let result = next(&mut socket).await;
    assert_eq!(result["type"], "recall_result", "{result}");
    assert_eq!(result["request_id"], 9);
    assert_eq!(result["status"], "ok");
    let top = &result["hits"][0];
    assert_eq!(top["id"], "w500");
    assert_eq!(top["what"], "episode w500");
    assert_eq!(top["when"], 1_700_000_000_500.0);

    send(&mut socket, json!({ "type": "close", "last_seq": 1000 })).await;
    let close = next(&mut socket).await;
    assert_eq!(close, json!({ "type": "close", "last_acked_seq": 1000 }));
    assert_eq!(count(&server, "web").await, 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_messages_get_typed_errors_and_the_session_goes_on() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path(), &[]);
    let mut socket = connect(&server).await;

    send(&mut socket, observation(1, "early")).await;
    let error = next_error(&mut socket).await;
    assert_eq!(error["type"], "error");
    assert_eq!(error["code"], "unexpected_message", "before init: {error}");
    init(&mut socket, "strict", None).await;

    socket
        .send(Message::Text("{not json".into()))
        .await
        .unwrap();
    let error = next_error(&mut socket).await;
    assert_eq!(
        (&error["code"], &error["fatal"]),
        (&json!("malformed_json"), &json!(false))
    );

    send(&mut socket, json!({ "type": "teleport" })).await;
    let error = next_error(&mut socket).await;
    assert_eq!(error["code"], "invalid_message");
    assert!(
        error["message"].as_str().unwrap().contains("teleport"),
        "{error}"
    );

    let mut wrong = observation(1, "a");
    wrong["episode"]["embedding"] = json!("nope");
    send(&mut socket, wrong).await;
    let error = next_error(&mut socket).await;
    assert_eq!(error["seq"], 1, "the error names the observation: {error}");
    assert!(
        error["message"].as_str().unwrap().contains("invalid type"),
        "{error}"
    );

    socket
        .send(Message::Binary(vec![1, 2, 3].into()))
        .await
        .unwrap();
    let error = next_error(&mut socket).await;
    assert_eq!(error["code"], "malformed_frame");
    assert_eq!(error["got"], "3 bytes of a frame", "{error}");
    let mut hello = Vec::new();
    engram::transport::protocol::Frame::ClientGoodbye { last_seq: 1 }.encode(&mut hello);
    socket.send(Message::Binary(hello.into())).await.unwrap();
    let error = next_error(&mut socket).await;
    assert_eq!(error["expected"], "engram/1 Observe frames only", "{error}");

    send(&mut socket, observation(2, "good")).await;
    let mut short = observation(3, "short");
    short["episode"]["embedding"] = json!([1.0, 2.0]);
    send(&mut socket, short).await;
    let others = until_acked(&mut socket, 3).await;
    let refused = others
        .iter()
        .find(|m| m["type"] == "error")
        .expect("the short embedding is refused");
    assert_eq!(refused["seq"], 3);
    assert_eq!(refused["code"], "dimension_mismatch");
    assert_eq!(refused["field"], "embedding");
    assert!(
        refused["expected"].as_str().unwrap().contains("16"),
        "{refused}"
    );
    assert_eq!(refused["got"], "dimension 2", "{refused}");
    assert_eq!(refused["retryable"], false);
    assert_eq!(
        count(&server, "strict").await,
        1,
        "only the good one is stored"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_messages_carry_engram_frames_with_the_same_acks() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path(), &[]);
    let mut socket = connect(&server).await;
    init(&mut socket, "framed", None).await;
    // Three Observe frames in one binary message, then one more in another.
    let frame = |seq: u64| {
        let o = engram::observation::Observation {
            space: "framed".into(),
            id: format!("f{seq}"),
            when_unix_ns: seq as i64,
            confidence: 0.5,
            what: format!("framed {seq}"),
            embedding: embedding(seq),
        };
        let mut out = Vec::new();
        engram::transport::protocol::Frame::encode_observation(seq, &o, &mut out);
        out
    };
    let three: Vec<u8> = (1..=3).flat_map(frame).collect();
    socket.send(Message::Binary(three.into())).await.unwrap();
    socket.send(Message::Binary(frame(4).into())).await.unwrap();
    let others = until_acked(&mut socket, 4).await;
    assert!(others.iter().all(|m| m["type"] != "error"), "{others:?}");
    let ids: Vec<String> = (1..=4).map(|n| format!("f{n}")).collect();
    assert!(stored(&server, "framed", &ids).await.iter().all(|f| *f));
    assert_eq!(count(&server, "framed").await, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_session_resends_the_unacknowledged_without_duplicates() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path(), &[]);
    let mut socket = connect(&server).await;
    let token = init(&mut socket, "resumed", None).await["resume_token"]
        .as_str()
        .unwrap()
        .to_owned();
    for seq in 1..=100 {
        send(&mut socket, observation(seq, &format!("r{seq}"))).await;
    }
    until_acked(&mut socket, 100).await;
    // 100 more, then the connection is lost without waiting for their acks.
    for seq in 101..=200 {
        send(&mut socket, observation(seq, &format!("r{seq}"))).await;
    }
    drop(socket);

    let mut socket = connect(&server).await;
    let ack = init(&mut socket, "resumed", Some(&token)).await;
    let last = ack["last_acked_seq"].as_u64().unwrap();
    assert!((100..=200).contains(&last), "{ack}");
    // The client resends everything after what the server says it acknowledged; some of
    // it may have been stored before the connection was lost.
    for seq in last + 1..=200 {
        send(&mut socket, observation(seq, &format!("r{seq}"))).await;
    }
    // Resending what was acknowledged is harmless too: dedupe stores it once.
    send(&mut socket, observation(201, "r1")).await;
    until_acked(&mut socket, 201).await;
    let ids: Vec<String> = (1..=200).map(|n| format!("r{n}")).collect();
    assert!(stored(&server, "resumed", &ids).await.iter().all(|f| *f));
    assert_eq!(count(&server, "resumed").await, 200, "nothing stored twice");

    let mut stranger = connect(&server).await;
    send(
        &mut stranger,
        json!({ "type": "init", "space": "resumed", "resume_token": "00".repeat(16) }),
    )
    .await;
    let error = next_error(&mut stranger).await;
    assert_eq!(error["code"], "unknown_resume_token");
    assert_eq!(error["fatal"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_flow_and_a_paused_browser_gets_its_acks_on_resume() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path(), &["--ws-heartbeat-ms", "100"]);
    let mut socket = connect(&server).await;
    let ack = init(&mut socket, "paced", None).await;
    assert_eq!(ack["heartbeat_ms"], 100);

    send(
        &mut socket,
        json!({ "type": "flow_control", "action": "pause" }),
    )
    .await;
    let ids: Vec<String> = (1..=10).map(|n| format!("p{n}")).collect();
    for (n, id) in ids.iter().enumerate() {
        send(&mut socket, observation(n as u64 + 1, id)).await;
    }
    // Durable, as the native protocol sees; polled, since nothing on this socket says so.
    let started = tokio::time::Instant::now();
    while !stored(&server, "paced", &ids).await.iter().all(|f| *f) {
        assert!(started.elapsed() < DEADLINE, "stored before the deadline");
    }
    // Their ack is held while paused; heartbeats go on (a flow state sent before the
    // pause took effect may come too).
    let mut beats = 0;
    while beats < 2 {
        let message = next(&mut socket).await;
        assert_ne!(message["type"], "ack", "no ack while paused: {message}");
        beats += u32::from(message["type"] == "heartbeat");
    }
    send(
        &mut socket,
        json!({ "type": "flow_control", "action": "resume" }),
    )
    .await;
    until_acked(&mut socket, 10).await;
}
