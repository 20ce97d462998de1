//! Zip integrity while a fill is under way: no answer of the blob endpoint
//! ends as complete before the fill's verdict (size, digest) says its bytes
//! are the artifact's (DESIGN rule 4), whatever part of the zip it carries
//! and however the blob store behaves between attempts.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{get, request, Harness, TIMEOUT};
use ghes_sim::fixtures::{PUBLIC_REPO, READER_TOKEN};
use ghes_sim::NewArtifact;
use http::{Method, StatusCode};
use http_body_util::BodyExt;

fn artifact(h: &Harness, payload: usize, digest: bool) -> ghes_sim::Artifact {
    h.sim.add_artifact(NewArtifact {
        repo: PUBLIC_REPO.into(),
        run_id: 9001,
        name: format!("dist-{payload}"),
        payload_bytes: payload,
        with_digest: digest,
        expired: false,
    })
}

/// Lists the repository's artifacts, so the mirror learns their size and
/// digest from JSON (as clients list before they download).
async fn list(h: &Harness) {
    let r = get(
        &h.url(&format!(
            "/repos/{PUBLIC_REPO}/actions/artifacts?per_page=100"
        )),
        Some(READER_TOKEN),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
}

/// The mirror's signed blob URL for the artifact (starting its fill).
async fn blob_url(h: &Harness, id: u64) -> String {
    let r = get(
        &h.url(&format!("/repos/{PUBLIC_REPO}/actions/artifacts/{id}/zip")),
        Some(READER_TOKEN),
    )
    .await;
    assert_eq!(r.status, StatusCode::FOUND);
    r.header("location").expect("location").to_owned()
}

/// A GET of the blob URL: the status and body when it ended as complete
/// with a success status, else how it failed.
async fn fetch(location: &str, range: Option<&str>) -> Result<(StatusCode, Bytes), Failed> {
    tokio::time::timeout(TIMEOUT, async {
        let mut req = request(Method::GET, location, None);
        if let Some(range) = range {
            req.headers_mut()
                .insert("range", range.parse().expect("range value"));
        }
        let response = common::client()
            .request(req)
            .await
            .map_err(|_| Failed::NoAnswer)?;
        let status = response.status();
        let body = response.into_body().collect().await;
        match body {
            Ok(body) if status.is_success() => Ok((status, body.to_bytes())),
            Ok(body) => Err(Failed::Refused(
                status,
                String::from_utf8_lossy(&body.to_bytes()).into_owned(),
            )),
            Err(_) => Err(Failed::Cut(status)),
        }
    })
    .await
    .expect("an answer within the test timeout")
}

/// How a blob answer failed to be a whole zip.
#[derive(Debug, PartialEq)]
enum Failed {
    /// No response head at all.
    NoAnswer,
    /// An error status, with its body.
    Refused(StatusCode, String),
    /// This status, then a body that ended in an error (never complete).
    Cut(StatusCode),
}

#[tokio::test]
async fn a_range_from_a_fill_that_fails_its_digest_is_never_complete() {
    // The stall holds the fill at 100 000 bytes for the upstream timeout, so
    // the range is asked for while its bytes are there but unverified.
    let h = Harness::start_with(|l| l.upstream_timeout = Some("1s".parse().unwrap())).await;
    let art = artifact(&h, 300_000, true);
    h.sim
        .misdescribe_artifact(art.id, Some(format!("sha256:{}", "0".repeat(64))), None);
    list(&h).await;
    h.sim.knobs().stall_blob_after(100_000, 1);
    let location = blob_url(&h, art.id).await;
    let got = fetch(&location, Some("bytes=0-999")).await;
    assert_eq!(
        got.as_ref().map(|(s, b)| (*s, b.len())),
        Err(&Failed::Cut(StatusCode::PARTIAL_CONTENT)),
        "a range of a blob that fails its digest must end in an error"
    );
    h.until_fills_end().await;
    assert_eq!(h.stored_files(), 0);
}

#[tokio::test]
async fn an_empty_answer_from_a_fill_waits_for_its_verdict() {
    // The JSON says the zip is empty; the blob store (slow to answer) has
    // bytes: the size check fails, so no answer may say "0 bytes, done".
    let h = Harness::start().await;
    let art = artifact(&h, 20_000, false);
    h.sim.misdescribe_artifact(art.id, None, Some(0));
    list(&h).await;
    h.sim
        .knobs()
        .delay_blob_answers(Duration::from_millis(500), 1);
    let location = blob_url(&h, art.id).await;
    let got = fetch(&location, None).await;
    // The answer waited for the verdict, and says what went wrong.
    let Err(Failed::Refused(status, body)) = got else {
        panic!("an empty body was answered before the fill's verdict: {got:?}");
    };
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(
        body.contains("size mismatch: expected 0 bytes, the blob store has"),
        "{body}"
    );
    h.until_fills_end().await;
    assert_eq!(h.stored_files(), 0);
}

#[tokio::test]
async fn a_restart_with_other_bytes_never_completes_a_stitched_zip() {
    // The first attempt sends wrong bytes and stalls; the resume is answered
    // 200 (Range ignored) with the right zip. A client streaming meanwhile
    // has the wrong prefix: it must not get the right end as if complete.
    let h = Harness::start_with(|l| l.upstream_timeout = Some("1s".parse().unwrap())).await;
    let art = artifact(&h, 300_000, true);
    let zip = h.sim.zip_bytes(art.id).unwrap();
    list(&h).await;
    let knobs = h.sim.knobs();
    knobs.corrupt_blob_bodies(1);
    knobs.stall_blob_after(100_000, 1);
    knobs.ignore_blob_ranges(1);
    let location = blob_url(&h, art.id).await;
    let got = fetch(&location, None).await;
    if let Ok((_, body)) = &got {
        assert_eq!(body.len(), zip.len());
        assert!(
            *body == zip,
            "a zip stitched from two different answers was served as complete"
        );
    }
    h.until_fills_end().await;
    // The blob store contradicted itself: the fill fails, nothing is kept,
    // and a later download (a new fill) is right.
    assert_eq!(h.stored_files(), 0);
    let (_, again) = fetch(&blob_url(&h, art.id).await, None)
        .await
        .expect("a later download works");
    assert_eq!(again, zip);
}

#[tokio::test]
async fn a_restart_with_the_same_bytes_completes_for_every_client() {
    // A store that ignores `Range` on the resume and repeats the same zip:
    // the fill starts over and succeeds, and a client streaming meanwhile
    // (which already read the first bytes) gets the whole zip, right.
    let h = Harness::start_with(|l| l.upstream_timeout = Some("1s".parse().unwrap())).await;
    let art = artifact(&h, 300_000, true);
    let zip = h.sim.zip_bytes(art.id).unwrap();
    list(&h).await;
    h.sim.knobs().stall_blob_after(100_000, 1);
    h.sim.knobs().ignore_blob_ranges(1);
    let location = blob_url(&h, art.id).await;
    let (status, body) = fetch(&location, None)
        .await
        .expect("the restarted fill completes");
    assert_eq!(status, StatusCode::OK);
    assert!(body == zip, "the zip differs after a restart");
    h.until_fills_end().await;
    assert_eq!(h.stored_files(), 1);
    let ranges: Vec<Option<String>> = h
        .sim
        .blob_requests()
        .iter()
        .map(|r| r.header("range").map(str::to_owned))
        .collect();
    assert_eq!(ranges, [None, Some("bytes=100000-".to_owned())]);
}

#[tokio::test]
async fn a_range_from_a_good_fill_completes_once_the_fill_is_verified() {
    let h = Harness::start_with(|l| l.upstream_timeout = Some("1s".parse().unwrap())).await;
    let art = artifact(&h, 300_000, true);
    let zip = h.sim.zip_bytes(art.id).unwrap();
    list(&h).await;
    h.sim.knobs().stall_blob_after(100_000, 1);
    let location = blob_url(&h, art.id).await;
    let (status, body) = fetch(&location, Some("bytes=1000-1999"))
        .await
        .expect("the range completes");
    assert_eq!(status, StatusCode::PARTIAL_CONTENT);
    assert!(body == zip.slice(1000..2000), "wrong bytes for the range");
    h.until_fills_end().await;
    assert_eq!(h.stored_files(), 1);
}

#[tokio::test]
async fn a_blob_cut_short_on_disk_between_runs_is_dropped_at_start_and_fetched_again() {
    // What a disk fault or a half-copied restore leaves: the record and the
    // sidecar say N bytes, the file has fewer. The start (sizes only, no
    // re-hash) must drop it rather than serve a short zip.
    let mut h = Harness::start().await;
    let art = artifact(&h, 30_000, true);
    let zip = h.sim.zip_bytes(art.id).unwrap();
    let (_, first) = fetch(&blob_url(&h, art.id).await, None)
        .await
        .expect("the first download works");
    assert!(first == zip);
    h.until_fills_end().await;
    assert_eq!(h.stored_files(), 1);
    h.stop_mirror().await;
    let path = h.blob_file(&art.sha256);
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(zip.len() as u64 - 1).unwrap();
    drop(file);
    h.restart_mirror().await;
    assert!(!path.exists(), "a blob shorter than its record was kept");
    let blob_gets = h.sim.counters().blob_gets;
    let (_, again) = fetch(&blob_url(&h, art.id).await, None)
        .await
        .expect("the download after the restart works");
    assert!(again == zip, "a short or wrong zip was served");
    assert_eq!(h.sim.counters().blob_gets, blob_gets + 1);
}

#[tokio::test]
async fn a_blob_exactly_at_max_blob_bytes_and_the_quota_is_kept() {
    // The zip's size, from a throwaway simulator given the same artifact
    // (the zip is a function of its spec and id).
    let spec = || NewArtifact {
        repo: PUBLIC_REPO.into(),
        run_id: 9001,
        name: "edge".into(),
        payload_bytes: 40_000,
        with_digest: true,
        expired: false,
    };
    let probe = ghes_sim::Sim::start(ghes_sim::SimConfig::default())
        .await
        .expect("simulator starts");
    let size = probe.add_artifact(spec()).size_in_bytes;
    probe.shutdown().await;
    let h = Harness::start_with(|l| {
        l.max_blob_bytes = Some(size);
        l.blob_quota_bytes = Some(size);
    })
    .await;
    let art = h.sim.add_artifact(spec());
    assert_eq!(art.size_in_bytes, size);
    let zip = h.sim.zip_bytes(art.id).unwrap();
    for round in 1..=2 {
        let (_, body) = fetch(&blob_url(&h, art.id).await, None)
            .await
            .expect("the download works");
        assert!(body == zip, "round {round}: wrong zip");
        h.until_fills_end().await;
        assert_eq!(h.stored_files(), 1, "round {round}: not kept");
    }
    assert_eq!(h.sim.counters().blob_gets, 1, "fetched once, then served");
}
