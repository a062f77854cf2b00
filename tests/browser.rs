//! The TypeScript client (examples/streaming) in a real headless Chromium against the real
//! server: builds the client with the project's build step (`npm run build`), then runs
//! tests/browser/stream.mjs, which drives Chromium through playwright-core and asserts
//! what the browser saw and what the server stored. scripts/setup.sh installs Chromium,
//! Node.js and the npm packages.

use std::path::Path;
use std::process::Command;

#[test]
fn the_typescript_client_streams_resumes_pauses_and_recalls_in_chromium() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let examples = root.join("examples/streaming");
    let built = Command::new("npm")
        .args(["run", "--silent", "build"])
        .current_dir(&examples)
        .status()
        .expect("npm runs (scripts/setup.sh installs Node.js and the client's packages)");
    assert!(built.success(), "the TypeScript client builds");
    let tested = Command::new("node")
        .arg(root.join("tests/browser/stream.mjs"))
        .env("ENGRAM_BIN", env!("CARGO_BIN_EXE_engram"))
        .status()
        .expect("node runs");
    assert!(
        tested.success(),
        "the browser test passed (its output is above)"
    );
}
