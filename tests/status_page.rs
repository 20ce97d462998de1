//! The operator's status page, `GET /_mirror/status`: what each
//! `status_page` mode shows, and the page as headless Chromium renders it
//! agreeing with `/metrics` (that test needs Chromium: `.ci/run` installs
//! it and runs this file with `--include-ignored`).

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use artifact_mirror::config::StatusPage;
use common::{get, Harness, TIMEOUT};
use ghes_sim::fixtures::{PRIVATE_REPO, READER_TOKEN};
use ghes_sim::NewArtifact;
use http::StatusCode;

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

async fn start(mode: StatusPage) -> Harness {
    Harness::start_with(|l| l.status_page = Some(mode)).await
}

fn status_url(h: &Harness) -> String {
    format!("http://{}/_mirror/status", h.mirror)
}

/// The reader's download of `id`: the redirect, then the whole blob.
async fn download(h: &Harness, id: u64) -> usize {
    let r = get(
        &h.url(&format!("/repos/{PRIVATE_REPO}/actions/artifacts/{id}/zip")),
        Some(READER_TOKEN),
    )
    .await;
    assert_eq!(r.status, StatusCode::FOUND);
    let blob = get(r.header("location").expect("location"), None).await;
    assert_eq!(blob.status, StatusCode::OK);
    h.until_fills_end().await;
    blob.body.len()
}

/// `name{labels}` → value, from the exposition.
async fn metrics(h: &Harness) -> BTreeMap<String, f64> {
    let r = get(&format!("http://{}/metrics", h.mirror), None).await;
    String::from_utf8(r.body.to_vec())
        .expect("UTF-8")
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// Waits (bounded) until the metric `name` is `value`.
async fn until_metric(h: &Harness, name: &str, value: f64) {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let seen = metrics(h).await.get(name).copied();
        if seen == Some(value) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} stayed {seen:?}, not {value}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn summary_names_nothing_detail_names_fills_and_off_is_404() {
    for mode in [StatusPage::Summary, StatusPage::Detail] {
        let h = start(mode).await;
        let a = artifact(&h, "release-notes-embargoed", 40_000);
        download(&h, a.id).await;
        let page = get(&status_url(&h), None).await;
        assert_eq!(page.status, StatusCode::OK);
        assert_eq!(
            page.header("content-type"),
            Some("text/html; charset=utf-8")
        );
        assert!(page
            .header("content-security-policy")
            .is_some_and(|v| v.starts_with("default-src 'none'")));
        let text = String::from_utf8(page.body.to_vec()).expect("UTF-8");
        assert!(!text.contains("<script"), "no script on the page");
        // The ended fill is listed either way.
        assert!(text.contains("id=\"recent\" data-count=\"1\""), "{text}");
        let (owner, repo) = PRIVATE_REPO.split_once('/').expect("owner/repo");
        for name in ["release-notes-embargoed", owner, repo] {
            assert_eq!(
                text.contains(name),
                mode == StatusPage::Detail,
                "{name:?} on the {mode:?} page"
            );
        }
    }
    let h = start(StatusPage::Off).await;
    assert_eq!(
        get(&status_url(&h), None).await.status,
        StatusCode::NOT_FOUND
    );
}

/// Each recent fill says what became of it, and the list holds them all
/// (up to ten): stored, streamed and not kept (over `max_blob_bytes`),
/// failed.
#[tokio::test]
async fn each_recent_fill_says_what_became_of_it() {
    let h = Harness::start_with(|l| {
        l.status_page = Some(StatusPage::Detail);
        l.max_blob_bytes = Some(100_000);
    })
    .await;
    let kept = artifact(&h, "kept", 40_000);
    download(&h, kept.id).await;
    let big = artifact(&h, "big", 200_000);
    download(&h, big.id).await;
    // The JSON gives a size the zip does not have: the fill the redirect
    // starts fails.
    let bad = artifact(&h, "bad", 40_000);
    h.sim.misdescribe_artifact(bad.id, None, Some(1));
    let json = format!("/repos/{PRIVATE_REPO}/actions/artifacts/{}", bad.id);
    let json = get(&h.url(&json), Some(READER_TOKEN)).await;
    assert_eq!(json.status, StatusCode::OK, "{json:?}");
    let zip = format!("/repos/{PRIVATE_REPO}/actions/artifacts/{}/zip", bad.id);
    let redirect = get(&h.url(&zip), Some(READER_TOKEN)).await;
    assert_eq!(redirect.status, StatusCode::FOUND, "{redirect:?}");
    h.until_fills_end().await;

    let page = get(&status_url(&h), None).await;
    let text = String::from_utf8(page.body.to_vec()).expect("UTF-8");
    assert!(text.contains("id=\"recent\" data-count=\"3\""), "{text}");
    for (id, outcome) in [
        (kept.id, "stored"),
        (big.id, "streamed, not kept (over max_blob_bytes)"),
        (bad.id, "failed (see the log)"),
    ] {
        let row = text
            .split("<tr>")
            .find(|row| row.starts_with(&format!("<td>{id}</td>")))
            .unwrap_or_else(|| panic!("a row for artifact {id}: {text}"));
        assert!(
            row.contains(&format!("<td>{outcome}</td></tr>")),
            "{id}: {row}"
        );
    }
}

/// The `data-value` of the element with `id` in the rendered DOM.
fn shown(dom: &str, id: &str) -> String {
    let at = dom
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no #{id} on the page"));
    let rest = &dom[at..];
    let start = rest.find("data-value=\"").expect("data-value") + "data-value=\"".len();
    rest[start..][..rest[start..].find('"').expect("closing quote")].to_owned()
}

/// Headless Chromium on `url` with `extra` flags (`--dump-dom`,
/// `--screenshot=…`); its stdout. No network but loopback is asked for.
fn chromium(url: &str, extra: &[&str]) -> String {
    let profile = tempfile::tempdir().expect("profile dir");
    let profile = format!("--user-data-dir={}", profile.path().display());
    let mut args = vec![
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        &profile,
    ];
    args.extend_from_slice(extra);
    args.push(url);
    // Chromium starts slowly on a loaded machine.
    let (ok, out, err) = common::run_tool("chromium", &args, b"", Duration::from_secs(120));
    assert!(ok, "chromium {extra:?} failed:\n{err}");
    out
}

#[tokio::test]
#[ignore = "needs chromium (Debian package chromium): see .ci/run"]
async fn chromium_renders_the_figures_metrics_exports() {
    let h = start(StatusPage::Detail).await;
    // A cache miss and a revalidation, a stored zip served once, and a
    // second fill held mid-way by the blob store: in flight.
    let list = h.url(&format!("/repos/{PRIVATE_REPO}/actions/artifacts"));
    for _ in 0..2 {
        assert_eq!(get(&list, Some(READER_TOKEN)).await.status, StatusCode::OK);
    }
    let stored = artifact(&h, "build-output", 300_000);
    let stored_len = download(&h, stored.id).await as f64;
    until_metric(
        &h,
        "artifact_mirror_served_from_store_bytes_total",
        stored_len,
    )
    .await;
    let held = artifact(&h, "coverage-report", 400_000);
    h.sim.knobs().stall_blob_after(150_000, 1);
    let r = get(
        &h.url(&format!(
            "/repos/{PRIVATE_REPO}/actions/artifacts/{}/zip",
            held.id
        )),
        Some(READER_TOKEN),
    )
    .await;
    assert_eq!(r.status, StatusCode::FOUND);
    let fetched = stored_len + 150_000.0;
    until_metric(
        &h,
        "artifact_mirror_fetched_from_upstream_bytes_total",
        fetched,
    )
    .await;

    let m = metrics(&h).await;
    let url = status_url(&h);
    let dom = {
        let url = url.clone();
        tokio::task::spawn_blocking(move || chromium(&url, &["--dump-dom"]))
            .await
            .expect("chromium ran")
    };
    assert!(dom.contains("<svg id=\"chart\""), "{dom}");
    let number = |id: &str| -> f64 {
        let v = shown(&dom, id);
        v.parse().unwrap_or_else(|_| panic!("#{id} shows {v:?}"))
    };
    for (id, metric) in [
        ("store-bytes", "artifact_mirror_store_bytes"),
        ("store-blobs", "artifact_mirror_store_blobs"),
        ("fills-in-flight", "artifact_mirror_fills_in_flight"),
        (
            "served-bytes",
            "artifact_mirror_served_from_store_bytes_total",
        ),
        (
            "fetched-bytes",
            "artifact_mirror_fetched_from_upstream_bytes_total",
        ),
        (
            "rate-limit-lowest",
            "artifact_mirror_rate_limit_remaining_lowest",
        ),
    ] {
        assert_eq!(
            Some(number(id)),
            m.get(metric).copied(),
            "#{id} vs {metric}"
        );
    }
    assert_eq!(number("fills-in-flight"), 1.0);
    assert_eq!(number("fetched-bytes"), fetched);
    // `cache stats`' hit ratio from the request counters.
    let outcome = |cache: &str| -> f64 {
        m.iter()
            .filter(|(k, _)| {
                k.starts_with("artifact_mirror_requests_total{")
                    && k.contains(&format!("cache=\"{cache}\""))
            })
            .map(|(_, v)| v)
            .sum()
    };
    let from_cache: f64 = ["hit", "revalidated", "coalesced"]
        .map(outcome)
        .iter()
        .sum();
    let all: f64 = ["hit", "revalidated", "miss", "coalesced", "bypass", "stale"]
        .map(outcome)
        .iter()
        .sum();
    assert!(all > 0.0 && from_cache > 0.0);
    assert!((number("hit-ratio") - from_cache / all).abs() < 1e-9);
    // The chart's bars add up to the bytes since the start.
    let bars: f64 = dom
        .match_indices("class=\"served\" data-minute=")
        .map(|(at, _)| {
            let rest = &dom[at..];
            let start = rest.find("data-bytes=\"").expect("data-bytes") + 12;
            rest[start..][..rest[start..].find('"').expect("quote")]
                .parse::<f64>()
                .expect("a number")
        })
        .sum();
    assert_eq!(bars, stored_len);
    // The held fill with its progress, the stored one among the last.
    assert!(dom.contains("id=\"running\" data-count=\"1\""), "{dom}");
    assert!(dom.contains("coverage-report") && dom.contains("data-written=\"150000\""));
    assert!(dom.contains("build-output") && dom.contains(">stored<"));

    // The README's screenshot comes from here: set
    // ARTIFACT_MIRROR_SCREENSHOT=docs/status-page.png to write it.
    let dir = tempfile::tempdir().expect("temp dir");
    let png = dir.path().join("status.png");
    let shot = format!("--screenshot={}", png.display());
    tokio::task::spawn_blocking(move || chromium(&url, &[&shot, "--window-size=1100,880"]))
        .await
        .expect("chromium ran");
    let image = std::fs::read(&png).expect("a screenshot");
    assert!(image.starts_with(b"\x89PNG\r\n\x1a\n") && image.len() > 10_000);
    if let Some(path) = std::env::var_os("ARTIFACT_MIRROR_SCREENSHOT") {
        std::fs::write(path, &image).expect("screenshot written");
    }
}
