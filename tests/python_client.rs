//! The Python client (clients/python) against the real server: its pytest suite (which
//! starts and SIGKILLs `engram serve` itself) and examples/streaming/python_client.py.
//! scripts/setup.sh installs the package with aioquic, pytest and pytest-asyncio.

mod common;

use std::path::Path;
use std::process::Command;

use common::server::Server;

#[test]
fn the_python_clients_tests_pass_against_the_real_server() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let status = Command::new("python3")
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider"])
        .arg(root.join("clients/python/tests"))
        .env("ENGRAM_BIN", env!("CARGO_BIN_EXE_engram"))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .status()
        .expect("python3 runs (scripts/setup.sh installs the client and pytest)");
    assert!(
        status.success(),
        "the Python client's tests passed (output above)"
    );
}

#[test]
fn the_python_example_streams_a_thousand_and_recalls_one() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path(), &[]);
    let output = Command::new("python3")
        .arg(root.join("examples/streaming/python_client.py"))
        .arg(server.addr.to_string())
        .arg(data.path().join("tls/cert.der"))
        .env("PYTHONDONTWRITEBYTECODE", "1")
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
