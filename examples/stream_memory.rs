//! Memory per stream (issue 11 item 4): 200 clients at once download one
//! stored 64 MiB zip from a mirror *process*; prints that process's
//! baseline and peak anonymous memory (`RssAnon`, sampled every 5 ms from
//! /proc) and the aggregate throughput. Compare two binaries in the same
//! run of the machine, as a ratio:
//!
//! ```sh
//! cargo run --release --example stream_memory -- path/to/artifact-mirror [streams]
//! ```
//!
//! The simulator and the clients run in this process, so their memory is
//! not counted. Linux only (/proc).

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ghes_sim::fixtures::{PRIVATE_REPO, READER_TOKEN};
use ghes_sim::{NewArtifact, Sim, SimConfig};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;

const SIZE: usize = 64 * 1024 * 1024;

type Http = Client<HttpConnector, Empty<Bytes>>;

fn rss_anon_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("RssAnon:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

async fn get(client: &Http, url: &str, token: bool) -> http::Response<hyper::body::Incoming> {
    let mut request = http::Request::get(url);
    if token {
        request = request.header("authorization", format!("token {READER_TOKEN}"));
    }
    let request = request.body(Empty::new()).expect("request");
    tokio::time::timeout(Duration::from_secs(120), client.request(request))
        .await
        .expect("an answer in time")
        .expect("an answer")
}

/// Reads a body frame by frame; answers its length.
async fn drain(response: http::Response<hyper::body::Incoming>) -> u64 {
    let mut body = response.into_body();
    let mut n = 0;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.expect("body").into_data() {
            n += data.len() as u64;
        }
    }
    n
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let binary = args
        .next()
        .expect("usage: stream_memory <artifact-mirror binary> [streams]");
    let streams: usize = args.next().map_or(200, |s| s.parse().expect("streams"));
    let sim = Sim::start(SimConfig {
        link_ttl: Duration::from_secs(3600),
        ..SimConfig::default()
    })
    .await
    .expect("sim");
    let art = sim.add_artifact(NewArtifact {
        repo: PRIVATE_REPO.into(),
        run_id: 1,
        name: "bench".into(),
        payload_bytes: SIZE,
        with_digest: false,
        expired: false,
    });
    let dir = tempfile::tempdir().expect("temp dir");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let mut child = Command::new(&binary)
        .args(["serve", "--upstream", &sim.api_base()])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(dir.path())
        .env("ARTIFACT_MIRROR_BLOB_URL_TTL", "1h")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("mirror starts");
    let pid = child.id();
    let client: Http = Client::builder(TokioExecutor::new()).build_http();
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let request = http::Request::get(format!("{base}/readyz"))
            .body(Empty::new())
            .expect("request");
        if client
            .request(request)
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            break;
        }
        assert!(Instant::now() < deadline, "mirror never ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let route = format!(
        "{base}/api/v3/repos/{PRIVATE_REPO}/actions/artifacts/{}/zip",
        art.id
    );
    let first = get(&client, &route, true).await;
    let location = first.headers()["location"]
        .to_str()
        .expect("location")
        .to_owned();
    let stored = drain(get(&client, &location, false).await).await;
    assert_eq!(stored, art.size_in_bytes);
    // Stored, not filling: the route says HIT.
    let deadline = Instant::now() + Duration::from_secs(30);
    while get(&client, &route, true)
        .await
        .headers()
        .get("x-cache")
        .map(|v| v.as_bytes())
        != Some(b"HIT")
    {
        assert!(Instant::now() < deadline, "never stored");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let baseline = rss_anon_kib(pid);
    let peak = Arc::new(AtomicU64::new(baseline));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, done) = (peak.clone(), done.clone());
        tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(rss_anon_kib(pid), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let started = Instant::now();
    let tasks: Vec<_> = (0..streams)
        .map(|_| {
            let (client, location) = (client.clone(), location.clone());
            tokio::spawn(async move { drain(get(&client, &location, false).await).await })
        })
        .collect();
    let mut bytes = 0;
    for t in tasks {
        bytes += t.await.expect("stream");
    }
    let seconds = started.elapsed().as_secs_f64();
    done.store(true, Ordering::Relaxed);
    let _ = sampler.await;
    assert_eq!(
        bytes,
        art.size_in_bytes * streams as u64,
        "every stream whole"
    );
    let peak = peak.load(Ordering::Relaxed);
    println!(
        "{streams} streams of {} MiB: {:.2} GB/s; RssAnon baseline {} MiB, peak {} MiB, per stream {} KiB",
        art.size_in_bytes >> 20,
        bytes as f64 / seconds / 1e9,
        baseline / 1024,
        peak / 1024,
        (peak.saturating_sub(baseline)) / streams as u64,
    );
    let _ = child.kill();
    let _ = child.wait();
}
