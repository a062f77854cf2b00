//! The streaming examples run against a real server: the Rust one (examples/streaming/
//! rust_client.rs, built by `cargo test` with the other examples) and the Python one
//! (python_client.py; scripts/setup.sh installs the client) each stream 1,000
//! observations, wait for their durable acks and recall one of them first.

mod common;

use std::path::Path;
use std::process::Command;

use common::server::Server;

/// An example's binary. A whole `cargo test` builds the examples into
/// target/<profile>/examples; run alone (`--test examples`), this builds it.
fn example(name: &str) -> std::path::PathBuf {
    let deps = std::env::current_exe().unwrap();
    let profile = deps
        .parent()
        .and_then(|d| d.parent())
        .expect("target/<profile>/deps");
    let path = profile.join("examples").join(name);
    if !path.exists() {
        let built = Command::new(env!("CARGO"))
            .args(["build", "--example", name])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .unwrap();
        assert!(built.success(), "the example {name} builds");
    }
    path
}

/// Runs an example against a fresh server (its QUIC address and certificate appended to
/// `command`) and checks what it says it did.
fn streams_a_thousand_and_recalls_one(mut command: Command) {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path(), &[]);
    let output = command
        .arg(server.addr.to_string())
        .arg(data.path().join("tls/cert.der"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("acknowledged (durable): 1000"), "{stdout}");
    assert!(stdout.contains("first example-500"), "{stdout}");
}

#[test]
fn the_rust_example_streams_a_thousand_and_recalls_one() {
    streams_a_thousand_and_recalls_one(Command::new(example("rust_client")));
}

#[test]
fn the_python_example_streams_a_thousand_and_recalls_one() {
    let mut python = Command::new("python3");
    python
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/streaming/python_client.py"))
        .env("PYTHONDONTWRITEBYTECODE", "1");
    streams_a_thousand_and_recalls_one(python);
}
