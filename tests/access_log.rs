//! The access log names a request by its path only: a signed blob URL's
//! `exp` and `sig` (a minute's access to the zip for whoever reads the log)
//! and a client's token never reach a log line.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{get, Harness, TIMEOUT};
use ghes_sim::fixtures::{PRIVATE_REPO, READER_TOKEN};
use ghes_sim::NewArtifact;
use http::StatusCode;

/// Every line the process logged, JSON as `log_format = "json"` writes it.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn lines(&self) -> Vec<String> {
        let bytes = self.0.lock().expect("log buffer").clone();
        String::from_utf8_lossy(&bytes)
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

#[tokio::test]
async fn a_signed_blob_url_is_logged_without_its_query() {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_max_level(tracing::Level::INFO)
        .with_writer(move || writer.clone())
        .try_init()
        .expect("the only subscriber of this test binary");

    let h = Harness::start().await;
    let art = h.sim.add_artifact(NewArtifact {
        repo: PRIVATE_REPO.into(),
        run_id: 9301,
        name: "logged".into(),
        payload_bytes: 2_000,
        with_digest: true,
        expired: false,
    });
    let zip = format!("/repos/{PRIVATE_REPO}/actions/artifacts/{}/zip", art.id);
    let redirect = get(&h.url(&zip), Some(READER_TOKEN)).await;
    assert_eq!(redirect.status, StatusCode::FOUND);
    let location = redirect.header("location").expect("location").to_owned();
    let (_, query) = location.split_once('?').expect("a signed URL");
    assert!(query.contains("sig="), "{location}");
    let blob = get(&location, None).await;
    assert_eq!(blob.status, StatusCode::OK);

    // The line is written when the body ends, on the server's side.
    let blob_path = format!("/_mirror/blobs/{}", art.id);
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    let line = loop {
        let found = captured
            .lines()
            .into_iter()
            .find(|l| l.contains(r#""route":"blob""#));
        if let Some(line) = found {
            break line;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no access line for the blob"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let entry: serde_json::Value = serde_json::from_str(&line).expect("a JSON line");
    assert_eq!(entry["path"], blob_path.as_str(), "{line}");
    // The whole zip went out: the line says so.
    assert_eq!(entry["bytes"], blob.body.len(), "{line}");
    assert_eq!(entry["outcome"], "complete", "{line}");
    let all = captured.lines().join("\n");
    assert!(!all.contains(query), "the signed query reached the log");
    assert!(!all.contains("sig="), "a signature reached the log");
    assert!(!all.contains(READER_TOKEN), "a token reached the log");
}
