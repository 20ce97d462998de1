//! Log lines are written by a thread of their own: a reader of the log
//! stream (stderr) that stops reading never holds up a request or the exit.
//! Lines with no room in the queue are dropped and counted in
//! `artifact_mirror_log_lines_dropped_total`; the queued ones are written at
//! shutdown.

mod common;

use std::io::Read;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::{client, request, send_with, wait_bounded};
use http::{Method, StatusCode};

/// Requests sent while nobody reads the log: far more lines than the pipe
/// (64 KiB), the writer's buffer (64 KiB) and the queue (64 lines) hold.
const REQUESTS: u64 = 3_000;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// The mirror process, killed if the test fails before stopping it.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `serve` with JSON logs and a 64-line queue; stderr piped to the test.
fn spawn(data_dir: &std::path::Path, port: u16) -> Running {
    Running(
        common::serve_command(&format!("127.0.0.1:{port}"), data_dir)
            .args(["--log-format", "json", "--log-queue-lines", "64"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("serve starts"),
    )
}

/// Waits (bounded) until the mirror on `port` answers `/healthz`.
async fn until_healthy(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "the mirror never listened");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// SIGTERM; the exit status, waited for at most 20 s.
fn terminate(child: &mut Child) -> Option<i32> {
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    assert!(sent.is_ok_and(|s| s.success()), "kill -TERM");
    wait_bounded(child, Duration::from_secs(20)).and_then(|s| s.code())
}

/// `artifact_mirror_log_lines_dropped_total` as `/metrics` says it now.
async fn dropped_now(base: &str) -> u64 {
    let reply = send_with(
        &client(),
        request(Method::GET, &format!("{base}/metrics"), None),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    let metrics = String::from_utf8_lossy(&reply.body);
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("artifact_mirror_log_lines_dropped_total "))
        .unwrap_or_else(|| panic!("no dropped-lines counter in:\n{metrics}"))
        .parse()
        .expect("a count")
}

#[tokio::test]
async fn a_stalled_log_reader_drops_lines_and_never_blocks_requests() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = spawn(dir.path(), port);
    // Held, never read: the pipe fills and the writer thread stalls on it.
    let stalled = child.0.stderr.take().expect("stderr piped");
    until_healthy(port).await;

    let base = format!("http://127.0.0.1:{port}");
    let http = client();
    let before = dropped_now(&base).await;
    // Every answer within common::TIMEOUT (send_with panics past it): a
    // request that waited for the log would never be answered.
    for _ in 0..REQUESTS {
        let reply = send_with(
            &http,
            request(Method::GET, &format!("{base}/healthz"), None),
        )
        .await;
        assert_eq!(reply.status, StatusCode::OK);
    }
    let after = dropped_now(&base).await;
    assert!(
        after > before && after <= before + REQUESTS + 1,
        "dropped lines before {before}, after {REQUESTS} requests {after}"
    );

    // The exit does not wait for the reader either.
    let code = terminate(&mut child.0);
    drop(stalled);
    assert_eq!(code, Some(0), "exit status with a stalled log reader");
}

#[tokio::test]
async fn queued_lines_are_written_at_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = spawn(dir.path(), port);
    let mut stderr = child.0.stderr.take().expect("stderr piped");
    let reader = std::thread::spawn(move || {
        let mut log = String::new();
        let _ = stderr.read_to_string(&mut log);
        log
    });
    until_healthy(port).await;
    let reply = send_with(
        &client(),
        request(
            Method::GET,
            &format!("http://127.0.0.1:{port}/healthz"),
            None,
        ),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);

    let code = terminate(&mut child.0);
    // The pipe closes with the process, so the read ends.
    let log = tokio::task::spawn_blocking(move || reader.join().expect("reader"))
        .await
        .unwrap();
    assert_eq!(code, Some(0), "{log}");
    let messages: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(
        messages.iter().any(|m| m["route"] == "healthz"),
        "no access line in:\n{log}"
    );
    // The process's last line, written just before it exits.
    assert_eq!(
        messages.last().map(|m| m["message"].clone()),
        Some("stopped".into()),
        "{log}"
    );
}
