//! SIGKILL the real server mid-stream and restart it: every acknowledged observation is in
//! the log exactly once, and the client streams on across the restart.

#[path = "../common/mod.rs"]
mod common;

use std::collections::HashMap;

use common::server::Server;
use engram::client::{Backoff, ObservationStream};
use engram::observation::Observation;
use engram::synthetic::{observation, Distribution};
use engram::wal::{wal_dir, Lsn, Wal, WalConfig};

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_stream_loses_nothing_acknowledged_and_duplicates_nothing() {
    let data = tempfile::tempdir().unwrap();
    let port = free_udp_port().to_string();
    let addr = format!("127.0.0.1:{port}");
    let mut server = Server::start_at(data.path(), &addr, &[]);
    let options = server.options("chaos");
    let total = 6000u64;
    let mut stream = ObservationStream::connect(options, Backoff::default())
        .await
        .unwrap();
    let mut acked: Vec<Observation> = Vec::new();
    let mut killed = false;
    for n in 0..total {
        stream
            .send(observation(3, "chaos", "id-", n, 16, Distribution::Uniform))
            .await
            .unwrap();
        stream.poll_acked();
        acked.extend(stream.take_acked());
        // Two thirds sent and not yet a third acknowledged (a slow machine): wait for
        // acks, so that the kill still comes with a good part acknowledged and more in
        // flight.
        if !killed && n == 4000 {
            while acked.len() < 2000 {
                stream.wait_oldest_acked().await.unwrap();
                acked.extend(stream.take_acked());
            }
        }
        // Kill once a good part is acknowledged and more is in flight.
        if !killed && acked.len() >= 2000 {
            server.kill9();
            server = Server::start_at(data.path(), &addr, &[]);
            killed = true;
        }
    }
    stream.flush().await.unwrap();
    acked.extend(stream.take_acked());
    assert!(killed, "the server was killed mid-stream");
    assert!(
        stream.connects >= 2,
        "the stream reconnected to the restarted server"
    );
    // The restarted server knows its old connection IDs and reset keys (DATA_DIR/tls/
    // quic-secret.key), so it resets the old connection at once instead of leaving the
    // client to its idle timeout.
    let why = stream.last_disconnect.clone().unwrap_or_default();
    assert!(
        why.contains("reset by peer"),
        "the old connection ended by: {why}"
    );
    stream.close().await.unwrap();
    assert!(server.terminate().success());

    let wal = Wal::open(wal_dir(data.path()), WalConfig::default()).unwrap();
    let mut counts: HashMap<String, u32> = HashMap::new();
    let mut cursor = wal.reader().cursor(Lsn(1));
    while let Some(record) = cursor.read_next().unwrap() {
        *counts
            .entry(
                Observation::view(record.payload())
                    .unwrap()
                    .id
                    .as_str()
                    .to_owned(),
            )
            .or_default() += 1;
    }
    assert_eq!(
        acked.len() as u64,
        total,
        "every observation was acknowledged in the end"
    );
    for o in &acked {
        assert_eq!(
            counts.get(&o.id),
            Some(&1),
            "{} must be stored exactly once",
            o.id
        );
    }
    assert_eq!(counts.len() as u64, total);
}
