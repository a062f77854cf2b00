//! The Python client (clients/python) against the real server: its pytest suite, which
//! starts and SIGKILLs `engram serve` itself (tests/examples.rs runs its example).
//! scripts/setup.sh installs the package with aioquic, pytest and pytest-asyncio.

use std::path::Path;
use std::process::Command;

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
