//! Operating the mirror: exact metrics after a scripted sequence, the
//! connection and header limits (431 / 408 / 503), the upstream bound's 503
//! with `Retry-After`, blobs over `max_blob_bytes`, and SIGTERM during a
//! 64 MB download.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{get, hex, raw_h2, request, send, Harness, Reply, TIMEOUT};
use ghes_sim::fixtures::{ADMIN_TOKEN, PRIVATE_REPO, READER_TOKEN};
use ghes_sim::{NewArtifact, Sim, SimConfig};
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use sha2::{Digest, Sha256};

fn artifact(h: &Harness, name: &str, payload: usize) -> ghes_sim::Artifact {
    h.sim.add_artifact(NewArtifact {
        repo: PRIVATE_REPO.into(),
        run_id: 9001,
        name: name.into(),
        payload_bytes: payload,
        with_digest: true,
        expired: false,
    })
}

fn zip_path(id: u64) -> String {
    format!("/repos/{PRIVATE_REPO}/actions/artifacts/{id}/zip")
}

fn is_stored(h: &Harness, zip: &Bytes) -> bool {
    h.blob_file(&hex(&Sha256::digest(zip))).is_file()
}

async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    while !done() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `name{labels}` → value, from the exposition.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_owned(), value.parse().ok()?))
        })
        .collect()
}

async fn metrics(h: &Harness) -> BTreeMap<String, f64> {
    let r = get(&format!("http://{}/metrics", h.mirror), None).await;
    assert_eq!(r.status, StatusCode::OK);
    // Prometheus text 0.0.4 unless OpenMetrics is asked for.
    assert_eq!(
        r.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let text = String::from_utf8(r.body.to_vec()).expect("UTF-8 exposition");
    for token in [READER_TOKEN, ADMIN_TOKEN] {
        assert!(!text.contains(token), "a token in the metrics");
    }
    samples(&text)
}

fn requests(route: &str, cache: &str) -> String {
    format!("artifact_mirror_requests_total{{route=\"{route}\",cache=\"{cache}\"}}")
}

fn upstream(route: &str, status: &str) -> String {
    format!("artifact_mirror_upstream_requests_total{{route=\"{route}\",status=\"{status}\"}}")
}

/// Sends a download and, once its blob is stored, the blob request.
async fn download_stored(h: &Harness, id: u64, zip: &Bytes, remaining: &mut Vec<u64>) -> Reply {
    let redirect = get(&h.url(&zip_path(id)), Some(READER_TOKEN)).await;
    assert_eq!(redirect.status, StatusCode::FOUND);
    note_remaining(&redirect, remaining);
    until("blob stored", || is_stored(h, zip)).await;
    h.until_fills_end().await;
    let location = redirect.header("location").expect("location").to_owned();
    let blob = get(&location, None).await;
    assert_eq!(&blob.body, zip);
    redirect
}

fn note_remaining(r: &Reply, seen: &mut Vec<u64>) {
    if let Some(v) = r.header("x-ratelimit-remaining") {
        seen.push(v.parse().expect("number"));
    }
}

#[tokio::test]
async fn metrics_after_a_scripted_sequence_are_exact() {
    let h = Harness::start_with(|l| l.blob_quota_bytes = Some(450_000)).await;
    let a = artifact(&h, "first", 300_000);
    let b = artifact(&h, "second", 300_000);
    let (zip_a, zip_b) = (
        h.sim.zip_bytes(a.id).unwrap(),
        h.sim.zip_bytes(b.id).unwrap(),
    );
    let mut remaining = Vec::new();
    let list = h.url(&format!("/repos/{PRIVATE_REPO}/actions/artifacts"));

    // 1 miss and 2 revalidations.
    for _ in 0..3 {
        let r = get(&list, Some(READER_TOKEN)).await;
        assert_eq!(r.status, StatusCode::OK);
        note_remaining(&r, &mut remaining);
    }
    // 5 identical requests while upstream is slow: 1 miss, 4 coalesced.
    h.sim.knobs().set_latency(Duration::from_millis(400));
    let run = h.url(&format!(
        "/repos/{PRIVATE_REPO}/actions/runs/9001/artifacts"
    ));
    let calls = (0..5).map(|_| {
        let run = run.clone();
        async move { get(&run, Some(READER_TOKEN)).await }
    });
    for r in futures_join_all(calls).await {
        assert_eq!(r.status, StatusCode::OK);
        note_remaining(&r, &mut remaining);
    }
    h.sim.knobs().set_latency(Duration::ZERO);
    // Downloads: first (endpoint call), renewal by a full GET, renewal by 304.
    download_stored(&h, a.id, &zip_a, &mut remaining).await;
    for _ in 0..2 {
        let r = get(&h.url(&zip_path(a.id)), Some(READER_TOKEN)).await;
        assert_eq!(r.status, StatusCode::FOUND);
    }
    // B pushes A out of the 450 000-byte quota.
    download_stored(&h, b.id, &zip_b, &mut remaining).await;
    until("A evicted", || !is_stored(&h, &zip_a)).await;
    let r = get(&list, Some(READER_TOKEN)).await;
    note_remaining(&r, &mut remaining);
    // DELETE drops B.
    let r = send(request(
        Method::DELETE,
        &h.url(&format!("/repos/{PRIVATE_REPO}/actions/artifacts/{}", b.id)),
        Some(ADMIN_TOKEN),
    ))
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    note_remaining(&r, &mut remaining);

    let m = metrics(&h).await;
    let expect = |key: String, value: f64| {
        assert_eq!(m.get(&key).copied(), Some(value), "{key} in {m:#?}");
    };
    expect(requests("list_repo_artifacts", "miss"), 1.0);
    expect(requests("list_repo_artifacts", "revalidated"), 3.0);
    expect(requests("list_run_artifacts", "miss"), 1.0);
    expect(requests("list_run_artifacts", "coalesced"), 4.0);
    expect(requests("download_artifact", "miss"), 3.0);
    expect(requests("download_artifact", "revalidated"), 1.0);
    expect(requests("blob", "hit"), 2.0);
    expect(requests("delete_artifact", "none"), 1.0);
    expect(upstream("list_repo_artifacts", "2xx"), 1.0);
    expect(upstream("list_repo_artifacts", "3xx"), 3.0);
    expect(upstream("list_run_artifacts", "2xx"), 1.0);
    expect(upstream("download_artifact", "3xx"), 2.0);
    expect(upstream("get_artifact", "2xx"), 1.0);
    expect(upstream("get_artifact", "3xx"), 1.0);
    expect(upstream("blob_store", "2xx"), 2.0);
    expect(upstream("delete_artifact", "2xx"), 1.0);
    expect(
        "artifact_mirror_upstream_duration_seconds_count{route=\"list_repo_artifacts\"}".into(),
        4.0,
    );
    // 3 revalidated lists, 4 coalesced, 1 renewal by 304.
    expect("artifact_mirror_rate_limit_units_saved_total".into(), 8.0);
    let both = (zip_a.len() + zip_b.len()) as f64;
    expect("artifact_mirror_served_from_store_bytes_total".into(), both);
    expect(
        "artifact_mirror_fetched_from_upstream_bytes_total".into(),
        both,
    );
    expect("artifact_mirror_store_bytes".into(), 0.0);
    expect("artifact_mirror_store_blobs".into(), 0.0);
    expect(
        "artifact_mirror_evictions_total{reason=\"quota\"}".into(),
        1.0,
    );
    expect(
        "artifact_mirror_evictions_total{reason=\"deleted\"}".into(),
        1.0,
    );
    expect("artifact_mirror_fills_in_flight".into(), 0.0);
    expect("artifact_mirror_fill_waiters".into(), 0.0);
    let lowest = *remaining.iter().min().expect("rate-limit headers seen") as f64;
    expect("artifact_mirror_rate_limit_remaining_lowest".into(), lowest);
    // Every answer is timed; the 4 coalesced ones waited for the 400 ms
    // upstream, so none is in a bucket under that.
    let duration = |suffix: &str, le: &str, route: &str, cache: &str| {
        format!("artifact_mirror_request_duration_seconds_{suffix}{{route=\"{route}\",cache=\"{cache}\"{le}}}")
    };
    expect(
        duration("count", "", "list_run_artifacts", "coalesced"),
        4.0,
    );
    expect(
        duration("bucket", ",le=\"0.256\"", "list_run_artifacts", "coalesced"),
        0.0,
    );
    expect(
        duration("count", "", "list_repo_artifacts", "revalidated"),
        3.0,
    );

    let r = common::get_with(
        &format!("http://{}/metrics", h.mirror),
        None,
        &[("accept", "application/openmetrics-text; version=1.0.0")],
    )
    .await;
    assert_eq!(
        r.header("content-type"),
        Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
    );
    assert!(r.body.ends_with(b"# EOF\n"));
}

/// Runs the futures concurrently, in order of results.
async fn futures_join_all<F: std::future::Future<Output = Reply> + Send + 'static>(
    calls: impl Iterator<Item = F>,
) -> Vec<Reply> {
    let tasks: Vec<_> = calls.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.expect("request task"));
    }
    out
}

/// Reads what the server sends until it closes, at most `limit`.
fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> (String, bool) {
    stream.set_read_timeout(Some(limit)).expect("read timeout");
    let mut got = Vec::new();
    let closed = match stream.read_to_end(&mut got) {
        Ok(_) => true,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => true,
        Err(_) => false,
    };
    (String::from_utf8_lossy(&got).into_owned(), closed)
}

/// One request on a kept-alive connection; answers the status line.
fn exchange(stream: &mut TcpStream, path: &str) -> String {
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .expect("request written");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("read timeout");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    // /healthz answers a small body with Content-Length: read the head and
    // the body it announces.
    for _ in 0..100 {
        let n = stream.read(&mut buf).expect("answer");
        assert!(n > 0, "closed early");
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(str::to_owned)
                })
                .and_then(|v| v.trim().parse().ok())
                .expect("content-length");
            if body.len() >= length {
                return head.lines().next().unwrap_or_default().to_owned();
            }
        }
    }
    panic!("no whole answer");
}

#[tokio::test]
async fn header_limits_answer_431_and_408_and_idle_connections_close() {
    let h = Harness::start_with(|l| {
        l.header_read_timeout = Some("1s".parse().unwrap());
        // Idle gaps of 600 ms below stay well inside it on a loaded machine.
        l.idle_timeout = Some("2s".parse().unwrap());
    })
    .await;
    let addr = h.mirror;
    tokio::task::spawn_blocking(move || {
        // Too large a head: 431.
        let mut s = TcpStream::connect(addr).unwrap();
        let big = "a".repeat(70_000);
        let _ = s.write_all(
            format!("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n").as_bytes(),
        );
        let (answer, _) = read_until_closed(&mut s, Duration::from_secs(10));
        assert!(answer.starts_with("HTTP/1.1 431"), "{answer:.80}");

        // A head that never ends: 408, then close.
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            .unwrap();
        let started = Instant::now();
        let (answer, closed) = read_until_closed(&mut s, Duration::from_secs(10));
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer:.80}");
        assert!(
            answer.contains("\"message\""),
            "GitHub-style body: {answer}"
        );
        assert!(closed, "connection closed after the 408");
        assert!(started.elapsed() >= Duration::from_millis(900));

        // A connection that sends nothing at all: 408 too.
        let mut s = TcpStream::connect(addr).unwrap();
        let (answer, closed) = read_until_closed(&mut s, Duration::from_secs(10));
        assert!(answer.starts_with("HTTP/1.1 408") && closed, "{answer:.80}");

        // A busy keep-alive connection outlives both timeouts...
        let mut s = TcpStream::connect(addr).unwrap();
        for _ in 0..4 {
            assert_eq!(exchange(&mut s, "/healthz"), "HTTP/1.1 200 OK");
            std::thread::sleep(Duration::from_millis(600));
        }
        // ...and is closed once idle past idle_timeout, without a 408.
        let (answer, closed) = read_until_closed(&mut s, Duration::from_secs(10));
        assert!(closed && answer.is_empty(), "{answer:.80}");
    })
    .await
    .expect("limits checks");
}

/// HTTP/2 gets the limits HTTP/1.1 has, each ended with a GOAWAY: a first
/// request not complete within `header_read_timeout`, and a connection idle
/// past `idle_timeout`; requests spaced wider than `header_read_timeout`
/// keep being served.
#[tokio::test]
async fn h2c_connections_get_goaway_at_the_header_read_and_idle_limits() {
    let h = Harness::start_with(|l| {
        l.header_read_timeout = Some("1s".parse().unwrap());
        l.idle_timeout = Some("4s".parse().unwrap());
    })
    .await;
    // The preface and SETTINGS, then no request: GOAWAY at the header-read
    // limit, and closed although this client ignores the GOAWAY's PING.
    let started = Instant::now();
    let mut silent = tokio::net::TcpStream::connect(h.mirror).await.unwrap();
    raw_h2::preface(&mut silent).await;
    let seen = raw_h2::read(&mut silent, started, TIMEOUT, None, false).await;
    let (at, _) = *seen
        .goaways()
        .first()
        .unwrap_or_else(|| panic!("no GOAWAY: {seen:?}"));
    assert!(at >= Duration::from_millis(900), "{at:?}");
    assert!(at < Duration::from_secs(8), "{at:?}");
    let eof = seen.eof.unwrap_or_else(|| panic!("not closed: {seen:?}"));
    assert!(eof < Duration::from_secs(12), "{eof:?}");

    // A client that sends requests is not held to the header-read limit
    // after its first...
    let mut busy = tokio::net::TcpStream::connect(h.mirror).await.unwrap();
    raw_h2::preface(&mut busy).await;
    raw_h2::assert_served(&mut busy, 1, "/healthz").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let started = Instant::now();
    raw_h2::assert_served(&mut busy, 3, "/healthz").await;
    // ...and idle past idle_timeout gets GOAWAY naming its last stream.
    let seen = raw_h2::read(&mut busy, started, TIMEOUT, None, true).await;
    let goaways = seen.goaways();
    let (at, _) = *goaways
        .first()
        .unwrap_or_else(|| panic!("no GOAWAY: {seen:?}"));
    assert!(at >= Duration::from_millis(3900), "{at:?}");
    assert_eq!(goaways.last().map(|(_, f)| f.last_stream()), Some(3));
    assert!(seen.eof.is_some(), "not closed: {seen:?}");
}

#[tokio::test]
async fn connections_past_the_limit_get_503_with_retry_after() {
    let h = Harness::start_with(|l| l.max_connections = Some(2)).await;
    let addr = h.mirror;
    tokio::task::spawn_blocking(move || {
        let mut held: Vec<_> = (0..2).map(|_| TcpStream::connect(addr).unwrap()).collect();
        // An answer on each proves both were accepted before the third.
        for s in &mut held {
            assert_eq!(exchange(s, "/healthz"), "HTTP/1.1 200 OK");
        }
        let mut third = TcpStream::connect(addr).unwrap();
        let (answer, closed) = read_until_closed(&mut third, Duration::from_secs(10));
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer:.80}");
        assert!(answer.to_ascii_lowercase().contains("retry-after: 1\r\n"));
        assert!(closed);
        drop(held);
        // Slots come back when connections end.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut s = TcpStream::connect(addr).unwrap();
            let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            let (answer, _) = read_until_closed(&mut s, Duration::from_secs(5));
            if answer.starts_with("HTTP/1.1 200") {
                break;
            }
            assert!(Instant::now() < deadline, "slots never freed: {answer:.80}");
            std::thread::sleep(Duration::from_millis(100));
        }
    })
    .await
    .expect("connection limit checks");
}

#[tokio::test]
async fn upstream_bound_answers_503_with_retry_after_past_its_queue() {
    let h = Harness::start_with(|l| {
        l.max_upstream_requests = Some(1);
        l.upstream_queue = Some(1);
    })
    .await;
    h.sim.knobs().set_latency(Duration::from_millis(500));
    let urls = [
        (
            h.url(&format!("/repos/{PRIVATE_REPO}/actions/artifacts")),
            READER_TOKEN,
        ),
        (
            h.url(&format!("/repos/{PRIVATE_REPO}/actions/artifacts")),
            ADMIN_TOKEN,
        ),
        (
            h.url(&format!("/repos/{PRIVATE_REPO}/actions/runs/1/artifacts")),
            READER_TOKEN,
        ),
    ];
    let calls = urls
        .into_iter()
        .map(|(url, token)| async move { get(&url, Some(token)).await });
    let replies = futures_join_all(calls).await;
    let mut statuses: Vec<u16> = replies.iter().map(|r| r.status.as_u16()).collect();
    statuses.sort_unstable();
    assert_eq!(
        statuses,
        [200, 200, 503],
        "one slot, one queued, one refused"
    );
    let refused = replies
        .iter()
        .find(|r| r.status == StatusCode::SERVICE_UNAVAILABLE)
        .expect("a 503");
    assert_eq!(refused.header("retry-after"), Some("1"));
    assert!(refused.json()["message"].as_str().is_some());
    h.sim.knobs().set_latency(Duration::ZERO);
    let m = metrics(&h).await;
    assert_eq!(m.get("artifact_mirror_upstream_rejected_total"), Some(&1.0));
}

#[tokio::test]
async fn blobs_over_max_blob_bytes_are_streamed_not_stored() {
    let h = Harness::start_with(|l| {
        l.max_blob_bytes = Some(100_000);
        l.blob_url_ttl = Some("1s".parse().unwrap());
    })
    .await;
    let art = artifact(&h, "big", 200_000);
    let zip = h.sim.zip_bytes(art.id).unwrap();
    for round in 1..=2 {
        let redirect = get(&h.url(&zip_path(art.id)), Some(READER_TOKEN)).await;
        assert_eq!(redirect.status, StatusCode::FOUND);
        let blob = get(redirect.header("location").unwrap(), None).await;
        assert_eq!(blob.status, StatusCode::OK);
        assert_eq!(blob.body, zip, "round {round}: whole and correct");
        let tmp = h.data_dir.path().join("tmp");
        until("transient file removed", || {
            std::fs::read_dir(&tmp)
                .map(|d| d.count() == 0)
                .unwrap_or(false)
        })
        .await;
        assert_eq!(h.stored_files(), 0, "nothing kept");
        assert_eq!(h.sim.counters().blob_gets, round, "fetched again each time");
    }
}

/// A zip over `max_blob_bytes` is not kept, but the finished fill stays
/// servable while the URLs it handed out live: a client that fetches its
/// blob URL after the fill ended gets the zip without a second GHES fetch.
#[tokio::test]
async fn a_blob_not_kept_is_served_from_its_ended_fill_while_its_urls_live() {
    let h = Harness::start_with(|l| l.max_blob_bytes = Some(100_000)).await;
    let art = artifact(&h, "big", 200_000);
    let zip = h.sim.zip_bytes(art.id).unwrap();
    let redirect = get(&h.url(&zip_path(art.id)), Some(READER_TOKEN)).await;
    assert_eq!(redirect.status, StatusCode::FOUND, "{redirect:?}");
    h.until_fills_end().await;
    let blob = get(redirect.header("location").unwrap(), None).await;
    assert_eq!(blob.status, StatusCode::OK, "{blob:?}");
    assert_eq!(blob.body, zip);
    assert_eq!(h.sim.counters().blob_gets, 1, "from the ended fill");
    assert_eq!(h.stored_files(), 0, "nothing kept");
}

/// A simulator holding one 64 MiB artifact, and its zip.
async fn sim_with_huge_artifact() -> (Sim, u64, Bytes) {
    let sim = Sim::start(SimConfig::default()).await.expect("simulator");
    let art = sim.add_artifact(NewArtifact {
        repo: PRIVATE_REPO.into(),
        run_id: 9001,
        name: "huge".into(),
        payload_bytes: 64 * 1024 * 1024,
        with_digest: true,
        expired: false,
    });
    let zip = sim.zip_bytes(art.id).unwrap();
    (sim, art.id, zip)
}

/// `artifact-mirror serve` as a process, answering /healthz. The caller
/// owns the child and waits for it (`common::wait_bounded`).
#[allow(clippy::zombie_processes)] // returned to the caller, or killed
async fn serve_process(sim: &Sim, data_dir: &Path) -> (std::process::Child, u16) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let mut child = spawn_serve(sim, data_dir, port);
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let url: http::Uri = format!("http://127.0.0.1:{port}/healthz")
            .parse()
            .expect("URL");
        let ok = tokio::time::timeout(Duration::from_secs(2), common::client().get(url))
            .await
            .is_ok_and(|r| r.is_ok_and(|r| r.status() == StatusCode::OK));
        if ok {
            return (child, port);
        }
        if Instant::now() >= deadline {
            // Killed so it does not outlive the test; reaped by init.
            let _ = child.kill();
            panic!("mirror never came up");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn spawn_serve(sim: &Sim, data_dir: &Path, port: u16) -> std::process::Child {
    common::mirror_command()
        .args(["serve", "--upstream", &sim.api_base(), "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--shutdown-grace", "30s"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("serve starts")
}

/// The blob answer of a download through the mirror at `port`.
async fn open_download(port: u16, id: u64) -> http::Response<hyper::body::Incoming> {
    let base = format!("http://127.0.0.1:{port}");
    let redirect = get(
        &format!("{base}/api/v3{}", zip_path(id)),
        Some(READER_TOKEN),
    )
    .await;
    assert_eq!(redirect.status, StatusCode::FOUND);
    let location = redirect.header("location").unwrap().to_owned();
    let response = tokio::time::timeout(
        TIMEOUT,
        common::client().request(request(Method::GET, &location, None)),
    )
    .await
    .expect("blob answer in time")
    .expect("blob answer");
    assert_eq!(response.status(), StatusCode::OK);
    response
}

fn signal(child: &std::process::Child, name: &str) {
    let sent = Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status();
    assert!(sent.is_ok_and(|s| s.success()), "kill -{name}");
}

#[tokio::test]
async fn sigterm_during_a_64_mb_download_lets_it_finish() {
    let (sim, id, zip) = sim_with_huge_artifact().await;
    let dir = tempfile::tempdir().unwrap();
    let (mut child, port) = serve_process(&sim, dir.path()).await;
    let mut body = open_download(port, id).await.into_body();
    let mut hasher = Sha256::new();
    let mut received = 0usize;
    let mut signalled = false;
    let read_all = async {
        while let Some(frame) = body.frame().await {
            let frame = frame.expect("the stream continues through shutdown");
            if let Ok(data) = frame.into_data() {
                received += data.len();
                hasher.update(&data);
            }
            if !signalled && received >= 1024 * 1024 {
                signal(&child, "TERM");
                signalled = true;
                // A slow reader: the server must wait for it.
                tokio::time::sleep(Duration::from_millis(500)).await;
                // No new connections once shutting down.
                let refused = tokio::net::TcpStream::connect(("127.0.0.1", port)).await;
                assert!(refused.is_err(), "still accepting after SIGTERM");
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), read_all)
        .await
        .expect("download finished in time");
    assert!(signalled);
    assert_eq!(received, zip.len());
    assert_eq!(
        hasher.finalize().as_slice(),
        Sha256::digest(&zip).as_slice()
    );
    let status = tokio::task::spawn_blocking(move || {
        let status = common::wait_bounded(&mut child, Duration::from_secs(30));
        let mut log = String::new();
        if let Some(mut err) = child.stderr.take() {
            let _ = err.read_to_string(&mut log);
        }
        (status, log)
    })
    .await
    .unwrap();
    assert_eq!(status.0.and_then(|s| s.code()), Some(0), "{}", status.1);
}

/// SIGTERM while a download that stopped reading holds shutdown (it would
/// wait up to the 30 s grace), then `second`; answers the exit code.
async fn exit_on_second_signal(
    mut child: std::process::Child,
    port: u16,
    id: u64,
    second: &str,
) -> Option<i32> {
    let mut body = open_download(port, id).await.into_body();
    let first = tokio::time::timeout(TIMEOUT, body.frame()).await;
    assert!(first.is_ok_and(|f| f.is_some_and(|f| f.is_ok())));
    signal(&child, "TERM");
    // The first signal did start the shutdown (a process ignoring it would
    // keep accepting): the listener closes...
    let deadline = Instant::now() + TIMEOUT;
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_ok()
    {
        assert!(Instant::now() < deadline, "still accepting after SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // ...while the process waits for the download.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        child.try_wait().expect("child state").is_none(),
        "the first signal waits for the download"
    );
    signal(&child, second);
    tokio::task::spawn_blocking(move || common::wait_bounded(&mut child, Duration::from_secs(10)))
        .await
        .unwrap()
        .and_then(|s| s.code())
}

#[tokio::test]
async fn a_second_signal_exits_at_once_and_the_data_dir_stays_usable() {
    let (sim, id, zip) = sim_with_huge_artifact().await;
    let dir = tempfile::tempdir().unwrap();
    let (child, port) = serve_process(&sim, dir.path()).await;
    // Exits at once with 128 + the signal's number: SIGINT 2.
    let code = exit_on_second_signal(child, port, id, "INT").await;
    assert_eq!(code, Some(130), "exits at once");

    // The same data dir serves again, whole and correct.
    let (child, port) = serve_process(&sim, dir.path()).await;
    let response = open_download(port, id).await;
    let bytes = tokio::time::timeout(Duration::from_secs(60), response.into_body().collect())
        .await
        .expect("download in time")
        .expect("whole body")
        .to_bytes();
    assert_eq!(bytes.len(), zip.len());
    assert!(bytes == zip, "identical bytes after the abrupt exit");
    // SIGTERM twice: 128 + 15.
    let code = exit_on_second_signal(child, port, id, "TERM").await;
    assert_eq!(code, Some(143), "exits at once");
}
