//! The operator's files and interfaces checked by the tools that consume
//! them: `promtool` on the `/metrics` exposition and the alert rules.
//!
//! Tests that need a tool outside the Rust toolchain are `#[ignore]`d so a
//! bare `cargo test` passes on a fresh machine; `.ci/run` installs the tools
//! and runs this file with `--include-ignored`, where a missing tool fails
//! the test loudly.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::{get, Harness, TIMEOUT};

/// Runs `program` with `args` and `stdin`, bounded by the test timeout;
/// answers (success, stdout + stderr). A missing program panics: these
/// tests run only where `.ci/run` installed it.
fn run_tool(program: &str, args: &[&str], stdin: &[u8]) -> (bool, String) {
    let out = tempfile::tempdir().expect("temp dir");
    let file = |name: &str| std::fs::File::create(out.path().join(name)).expect("output file");
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(file("out"))
        .stderr(file("err"))
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run {program} ({e}): install it (.ci/run does: apt-get install prometheus chromium systemd)")
        });
    // Small inputs: the pipe takes them whole before the tool reads.
    let mut pipe = child.stdin.take().expect("stdin");
    pipe.write_all(stdin).expect("stdin written");
    drop(pipe);
    let status = common::wait_bounded(&mut child, TIMEOUT)
        .unwrap_or_else(|| panic!("{program} did not finish within {TIMEOUT:?}"));
    let read = |name: &str| std::fs::read_to_string(out.path().join(name)).unwrap_or_default();
    (status.success(), read("out") + &read("err"))
}

#[tokio::test]
#[ignore = "needs promtool (Debian package prometheus): see .ci/run"]
async fn promtool_accepts_the_metrics_exposition() {
    let h = Harness::start().await;
    // Labelled series and a histogram with samples, not just empty families.
    let r = get(
        &h.url("/repos/octo-org/public-repo/actions/artifacts"),
        None,
    )
    .await;
    assert_eq!(r.status, http::StatusCode::OK);
    let text = get(&format!("http://{}/metrics", h.mirror), None).await;
    assert!(text
        .body
        .windows(b"artifact_mirror_request_duration_seconds_bucket{".len())
        .any(|w| w == b"artifact_mirror_request_duration_seconds_bucket{"));
    let (ok, report) = tokio::task::spawn_blocking(move || {
        run_tool("promtool", &["check", "metrics"], &text.body)
    })
    .await
    .expect("promtool ran");
    // promtool exits non-zero on a parse error and on lint problems alike.
    assert!(ok, "promtool check metrics:\n{report}");
}
