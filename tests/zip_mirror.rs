//! The zip mirror against the simulator: downloads resolved to the mirror's
//! signed blob URLs, one upstream fetch per artifact, grants renewed for
//! free, safe sharing between credentials, resume, integrity checks, Range,
//! quota and expiry.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{get, get_with, hex, request, send, Harness, Reply, TIMEOUT};
use ghes_sim::fixtures::{ADMIN_TOKEN, OUTSIDER_TOKEN, PRIVATE_REPO, PUBLIC_REPO, READER_TOKEN};
use ghes_sim::NewArtifact;
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use sha2::{Digest, Sha256};

fn x_cache(r: &Reply) -> &str {
    r.header("x-cache").unwrap_or("(none)")
}

fn zip_path(repo: &str, id: u64) -> String {
    format!("/repos/{repo}/actions/artifacts/{id}/zip")
}

fn artifact(h: &Harness, repo: &str, payload: usize, digest: bool) -> ghes_sim::Artifact {
    h.sim.add_artifact(NewArtifact {
        repo: repo.into(),
        run_id: 9001,
        name: format!("dist-{payload}"),
        payload_bytes: payload,
        with_digest: digest,
        expired: false,
    })
}

/// The download route's answer and, when it redirects, the blob's.
async fn download(h: &Harness, repo: &str, id: u64, token: Option<&str>) -> (Reply, Option<Reply>) {
    let first = get(&h.url(&zip_path(repo, id)), token).await;
    if first.status != StatusCode::FOUND {
        return (first, None);
    }
    let location = first.header("location").expect("location").to_owned();
    assert!(
        location.starts_with(&format!("http://{}/_mirror/blobs/{id}?", h.mirror)),
        "{location}"
    );
    // gh sends the token to the redirect target too: it must not matter.
    let blob = get(&location, token).await;
    (first, Some(blob))
}

/// Waits (bounded) until this zip is stored and `count` files are.
async fn until_holds(h: &Harness, zip: &Bytes, count: usize) {
    let path = h.blob_file(&hex(&Sha256::digest(zip)));
    let deadline = Instant::now() + TIMEOUT;
    while !(path.is_file() && h.stored_files() == count) {
        assert!(Instant::now() < deadline, "blob never stored");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    h.until_fills_end().await;
}

/// The `Range` of every request the blob host received, in order.
fn blob_ranges(h: &Harness) -> Vec<Option<String>> {
    h.sim
        .blob_requests()
        .iter()
        .map(|r| r.header("range").map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn ten_downloads_cost_two_rate_limit_units_and_one_blob_fetch() {
    let h = Harness::start().await;
    let art = artifact(&h, PRIVATE_REPO, 200_000, false);
    let zip = h.sim.zip_bytes(art.id).unwrap();
    h.sim.reset_counters();
    for i in 0..10 {
        let (redirect, blob) = download(&h, PRIVATE_REPO, art.id, Some(READER_TOKEN)).await;
        assert_eq!(redirect.status, StatusCode::FOUND, "download {i}");
        let blob = blob.unwrap();
        assert_eq!(blob.status, StatusCode::OK);
        assert_eq!(blob.body, zip, "download {i}: bytes differ");
        assert_eq!(blob.header("content-type"), Some("application/zip"));
        assert_eq!(
            blob.header("content-length"),
            Some(zip.len().to_string().as_str())
        );
        assert_eq!(
            blob.header("content-disposition"),
            Some(format!("attachment; filename=\"{}.zip\"", art.name).as_str())
        );
        let expected = if i == 0 { "MISS" } else { "HIT" };
        assert_eq!(x_cache(&redirect), expected, "download {i}");
        h.until_stored(1).await;
    }
    let c = h.sim.counters();
    assert_eq!(c.download, 1, "one call of the download endpoint");
    assert_eq!(c.blob_gets, 1, "one upstream blob fetch");
    assert_eq!(c.get, 9, "9 grant renewals by metadata GET");
    assert_eq!(c.not_modified, 8, "all but the first renewal were 304s");
    assert_eq!(
        c.rate_limit_used.get("reader"),
        Some(&2),
        "direct access would have cost 10"
    );

    // Another credential with access: its own first download-endpoint call,
    // no new blob fetch.
    let (redirect, blob) = download(&h, PRIVATE_REPO, art.id, Some(ADMIN_TOKEN)).await;
    assert_eq!(x_cache(&redirect), "HIT");
    assert_eq!(blob.unwrap().body, zip);
    let c = h.sim.counters();
    assert_eq!((c.download, c.blob_gets), (2, 1));
}

#[tokio::test]
async fn no_access_gets_upstream_answers_and_no_bytes() {
    let h = Harness::start().await;
    let art = artifact(&h, PRIVATE_REPO, 50_000, false);
    let (_, blob) = download(&h, PRIVATE_REPO, art.id, Some(READER_TOKEN)).await;
    assert_eq!(blob.unwrap().status, StatusCode::OK);
    h.until_stored(1).await;

    let (outsider, blob) = download(&h, PRIVATE_REPO, art.id, Some(OUTSIDER_TOKEN)).await;
    assert_eq!(outsider.status, StatusCode::NOT_FOUND);
    assert!(blob.is_none());
    assert_eq!(outsider.json()["message"], "Not Found");
    // Anonymous on a private repository: upstream's 404, no redirect.
    let (anonymous, blob) = download(&h, PRIVATE_REPO, art.id, None).await;
    assert_eq!(anonymous.status, StatusCode::NOT_FOUND);
    assert!(blob.is_none());
    // Even on a public repository a download needs a credential upstream.
    let public = artifact(&h, PUBLIC_REPO, 1000, false);
    let (anonymous, _) = download(&h, PUBLIC_REPO, public.id, None).await;
    assert_eq!(anonymous.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn concurrent_cold_downloads_make_one_fetch_and_stream_as_it_arrives() {
    let h = Harness::start().await;
    let art = artifact(&h, PUBLIC_REPO, 64 * 1024 * 1024, false);
    let expected = hex(&Sha256::digest(h.sim.zip_bytes(art.id).unwrap()));
    h.sim.reset_counters();
    let mirror = h.mirror;
    let url = h.url(&zip_path(PUBLIC_REPO, art.id));
    let stored_file = h.blob_file(&expected);
    // When the fill is stored, as seen from outside.
    let watcher = tokio::spawn(async move {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if stored_file.is_file() || Instant::now() > deadline {
                return Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });
    let mut clients = Vec::new();
    for _ in 0..20 {
        let url = url.clone();
        clients.push(tokio::spawn(async move {
            let redirect = get(&url, Some(READER_TOKEN)).await;
            assert_eq!(redirect.status, StatusCode::FOUND);
            let status = x_cache(&redirect).to_owned();
            let location = redirect.header("location").unwrap().to_owned();
            assert!(location.contains(&mirror.to_string()));
            let response = common::client()
                .request(request(Method::GET, &location, None))
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            let mut body = response.into_body();
            let mut hasher = Sha256::new();
            let mut first_byte = None;
            let mut len = 0usize;
            while let Some(frame) = body.frame().await {
                if let Ok(data) = frame.expect("stream completes").into_data() {
                    first_byte.get_or_insert_with(Instant::now);
                    len += data.len();
                    hasher.update(&data);
                }
            }
            (status, first_byte.unwrap(), len, hex(&hasher.finalize()))
        }));
    }
    let mut results = Vec::new();
    for c in clients {
        results.push(
            tokio::time::timeout(Duration::from_secs(120), c)
                .await
                .unwrap()
                .unwrap(),
        );
    }
    let stored_at = watcher.await.unwrap();
    for (_, _, len, sha) in &results {
        assert_eq!(
            *len,
            64 * 1024 * 1024 + (art.size_in_bytes as usize - 64 * 1024 * 1024)
        );
        assert_eq!(sha, &expected);
    }
    let c = h.sim.counters();
    assert_eq!(c.blob_gets, 1, "one upstream blob fetch for 20 clients");
    let joiners: Vec<_> = results.iter().filter(|r| r.0 == "COALESCED").collect();
    assert!(!joiners.is_empty(), "no client joined the fill");
    assert!(
        joiners.iter().any(|r| r.1 < stored_at),
        "joiners only got bytes after the fill ended"
    );
    assert_eq!(results.iter().filter(|r| r.0 == "MISS").count(), 1);
}

#[tokio::test]
async fn a_cut_transfer_resumes_with_range() {
    let h = Harness::start().await;
    let art = artifact(&h, PUBLIC_REPO, 300_000, true);
    let zip = h.sim.zip_bytes(art.id).unwrap();
    // Let the mirror learn size and digest from JSON, as clients list first.
    get(
        &h.url(&format!(
            "/repos/{PUBLIC_REPO}/actions/artifacts/{}",
            art.id
        )),
        Some(READER_TOKEN),
    )
    .await;
    h.sim.knobs().cut_blob_after(100_000, 2);
    let (_, blob) = download(&h, PUBLIC_REPO, art.id, Some(READER_TOKEN)).await;
    let blob = blob.unwrap();
    assert_eq!(blob.status, StatusCode::OK);
    assert_eq!(blob.body, zip);
    h.until_stored(1).await;
    let ranges = blob_ranges(&h);
    assert_eq!(
        ranges,
        vec![
            None,
            Some("bytes=100000-".into()),
            Some("bytes=200000-".into())
        ]
    );
    assert!(h
        .sim
        .blob_requests()
        .iter()
        .all(|r| r.header("authorization").is_none()));
}

#[tokio::test]
async fn a_stalled_blob_store_is_resumed_after_the_upstream_timeout() {
    // The stall lasts a minute; the test's own limit (TIMEOUT) is shorter,
    // so only the mirror giving up on the silent body lets it pass.
    let h = Harness::start_with(|l| l.upstream_timeout = Some("1s".parse().unwrap())).await;
    let art = artifact(&h, PUBLIC_REPO, 300_000, true);
    let zip = h.sim.zip_bytes(art.id).unwrap();
    h.sim.knobs().stall_blob_after(100_000, 1);
    let (_, blob) = download(&h, PUBLIC_REPO, art.id, Some(READER_TOKEN)).await;
    let blob = blob.unwrap();
    assert_eq!(blob.status, StatusCode::OK);
    assert_eq!(blob.body, zip);
    h.until_stored(1).await;
    let ranges = blob_ranges(&h);
    assert_eq!(ranges, vec![None, Some("bytes=100000-".into())]);
}

#[tokio::test]
async fn a_transfer_that_cannot_finish_stores_nothing_and_the_next_one_works() {
    let h = Harness::start().await;
    let art = artifact(&h, PUBLIC_REPO, 300_000, false);
    let zip = h.sim.zip_bytes(art.id).unwrap();
    h.sim.knobs().cut_blob_after(50_000, 100);
    let redirect = get(&h.url(&zip_path(PUBLIC_REPO, art.id)), Some(READER_TOKEN)).await;
    let location = redirect.header("location").unwrap().to_owned();
    let response = common::client()
        .request(request(Method::GET, &location, None))
        .await
        .unwrap();
    let advertised: usize = response.headers()["content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(advertised, zip.len());
    let outcome = tokio::time::timeout(TIMEOUT, response.into_body().collect())
        .await
        .unwrap();
    assert!(
        outcome.is_err(),
        "a cut fill must end the client's stream in error"
    );
    assert_eq!(h.stored_files(), 0);
    h.sim.knobs().clear();
    let (_, blob) = download(&h, PUBLIC_REPO, art.id, Some(READER_TOKEN)).await;
    assert_eq!(blob.unwrap().body, zip);
    h.until_stored(1).await;
}

#[tokio::test]
async fn digest_or_size_mismatch_is_never_stored() {
    let h = Harness::start().await;
    let bad_digest = artifact(&h, PUBLIC_REPO, 20_000, true);
    h.sim.misdescribe_artifact(
        bad_digest.id,
        Some(format!("sha256:{}", "0".repeat(64))),
        None,
    );
    let bad_size = artifact(&h, PUBLIC_REPO, 20_000, false);
    h.sim
        .misdescribe_artifact(bad_size.id, None, Some(bad_size.size_in_bytes + 10));
    // The list teaches the mirror each artifact's digest and size.
    get(
        &h.url(&format!(
            "/repos/{PUBLIC_REPO}/actions/artifacts?per_page=100"
        )),
        Some(READER_TOKEN),
    )
    .await;
    for art in [&bad_digest, &bad_size] {
        let redirect = get(&h.url(&zip_path(PUBLIC_REPO, art.id)), Some(READER_TOKEN)).await;
        let location = redirect.header("location").unwrap().to_owned();
        // Either the stream started (200) and ends in an error, or the
        // verdict came first and the answer is the mirror's 502 naming it;
        // never a complete body, and not any refusal (a 403 or 404 says
        // nothing about the bytes).
        let (status, body) = tokio::time::timeout(TIMEOUT, async {
            let response = common::client()
                .request(request(Method::GET, &location, None))
                .await
                .expect("a blob answer");
            let status = response.status();
            (
                status,
                response.into_body().collect().await.map(|b| b.to_bytes()),
            )
        })
        .await
        .unwrap();
        match (status, body) {
            (StatusCode::OK, Err(_)) => {}
            (StatusCode::BAD_GATEWAY, Ok(body)) => {
                let body = String::from_utf8_lossy(&body);
                assert!(
                    body.contains("digest mismatch") || body.contains("size mismatch"),
                    "artifact {}: {body}",
                    art.id
                );
            }
            (status, body) => panic!(
                "artifact {}: a bad blob answered {status}, body {:?}",
                art.id,
                body.map(|b| b.len())
            ),
        }
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(h.stored_files(), 0);
}

#[tokio::test]
async fn ranges_match_the_zip() {
    let h = Harness::start().await;
    let art = artifact(&h, PUBLIC_REPO, 100_000, false);
    let zip = h.sim.zip_bytes(art.id).unwrap();
    let (redirect, _) = download(&h, PUBLIC_REPO, art.id, Some(READER_TOKEN)).await;
    h.until_stored(1).await;
    let location = redirect.header("location").unwrap().to_owned();
    let n = zip.len();
    for (range, from, to) in [
        ("bytes=0-99", 0, 99),
        ("bytes=5000-5999", 5000, 5999),
        ("bytes=-100", n - 100, n - 1),
        ("bytes=1000-", 1000, n - 1),
    ] {
        let r = get_with(&location, None, &[("range", range)]).await;
        assert_eq!(r.status, StatusCode::PARTIAL_CONTENT, "{range}");
        assert_eq!(r.body, zip.slice(from..=to), "{range}");
        assert_eq!(
            r.header("content-range"),
            Some(format!("bytes {from}-{to}/{n}").as_str())
        );
    }
    let r = get_with(&location, None, &[("range", &format!("bytes={n}-"))]).await;
    assert_eq!(r.status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(
        r.header("content-range"),
        Some(format!("bytes */{n}").as_str())
    );
    let head = send(request(Method::HEAD, &location, None)).await;
    assert_eq!(head.status, StatusCode::OK);
    assert_eq!(head.header("content-length"), Some(n.to_string().as_str()));
    let etag = head.header("etag").unwrap().to_owned();
    assert_eq!(etag, format!("\"{}\"", hex(&Sha256::digest(&zip))));
    assert!(head.header("last-modified").is_some());
    assert_eq!(head.header("accept-ranges"), Some("bytes"));
}

#[tokio::test]
async fn quota_evicts_the_least_recently_used_and_expiry_and_delete_drop_blobs() {
    let h = Harness::start_with(|l| l.blob_quota_bytes = Some(250_000)).await;
    let arts: Vec<_> = (0..3)
        .map(|_| artifact(&h, PUBLIC_REPO, 100_000, false))
        .collect();
    for (i, art) in arts.iter().enumerate() {
        download(&h, PUBLIC_REPO, art.id, Some(READER_TOKEN)).await;
        h.until_stored(i.min(1) + 1).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Two fit; the first downloaded went.
    assert_eq!(h.stored_files(), 2);
    let blob_gets = h.sim.counters().blob_gets;
    let (again, _) = download(&h, PUBLIC_REPO, arts[2].id, Some(READER_TOKEN)).await;
    assert_eq!(x_cache(&again), "HIT");
    let (again, _) = download(&h, PUBLIC_REPO, arts[0].id, Some(READER_TOKEN)).await;
    assert_eq!(x_cache(&again), "MISS", "the evicted blob is fetched again");
    assert_eq!(h.sim.counters().blob_gets, blob_gets + 1);
    // Stored again, and the quota made room by evicting arts[1] (arts[2]
    // was used more recently).
    until_holds(&h, &h.sim.zip_bytes(arts[0].id).unwrap(), 2).await;
    let (kept, _) = download(&h, PUBLIC_REPO, arts[2].id, Some(READER_TOKEN)).await;
    assert_eq!(x_cache(&kept), "HIT");

    // Expired upstream: 410 passes through and the blob goes.
    h.sim.expire_artifact(arts[2].id);
    let (gone, _) = download(&h, PUBLIC_REPO, arts[2].id, Some(ADMIN_TOKEN)).await;
    assert_eq!(gone.status, StatusCode::GONE);
    assert_eq!(h.stored_files(), 1);
    // Deleted through the mirror: the blob goes too.
    let del = send(request(
        Method::DELETE,
        &h.url(&format!(
            "/repos/{PUBLIC_REPO}/actions/artifacts/{}",
            arts[0].id
        )),
        Some(ADMIN_TOKEN),
    ))
    .await;
    assert_eq!(del.status, StatusCode::NO_CONTENT);
    assert_eq!(h.stored_files(), 0);
}

#[tokio::test]
async fn a_restart_keeps_whole_blobs_and_clears_leftovers() {
    let mut h = Harness::start().await;
    let art = artifact(&h, PUBLIC_REPO, 30_000, false);
    let zip = h.sim.zip_bytes(art.id).unwrap();
    download(&h, PUBLIC_REPO, art.id, Some(READER_TOKEN)).await;
    until_holds(&h, &zip, 1).await;
    h.stop_mirror().await;
    // What a crash mid-fill leaves: a partial download and a file whose
    // record was never written.
    let data = h.data_dir.path().to_owned();
    std::fs::write(data.join("tmp").join("123-abc.part"), b"partial").unwrap();
    let orphan = data.join("blobs").join("sha256").join("ff");
    std::fs::create_dir_all(&orphan).unwrap();
    std::fs::write(orphan.join("f".repeat(64)), b"orphan").unwrap();
    h.restart_mirror().await;
    assert_eq!(std::fs::read_dir(data.join("tmp")).unwrap().count(), 0);
    assert!(!orphan.join("f".repeat(64)).exists());
    let blob_gets = h.sim.counters().blob_gets;
    let (redirect, blob) = download(&h, PUBLIC_REPO, art.id, Some(READER_TOKEN)).await;
    assert_eq!(x_cache(&redirect), "HIT");
    assert_eq!(blob.unwrap().body, zip);
    assert_eq!(h.sim.counters().blob_gets, blob_gets);
}

/// Over HTTP/2 the host is only in `:authority`: a repeat download (grant
/// renewal through the JSON cache) must still resolve the public base.
#[tokio::test]
async fn repeat_downloads_over_h2_are_redirected() {
    let h = Harness::start().await;
    let art = artifact(&h, PUBLIC_REPO, 5_000, false);
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<http_body_util::Full<Bytes>>();
    for expected in ["MISS", "HIT"] {
        let r = common::send_with(
            &client,
            request(
                Method::GET,
                &h.url(&zip_path(PUBLIC_REPO, art.id)),
                Some(READER_TOKEN),
            ),
        )
        .await;
        assert_eq!(
            r.status,
            StatusCode::FOUND,
            "{:?}",
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(x_cache(&r), expected);
        let location = r.header("location").unwrap();
        assert!(
            location.starts_with(&format!("http://{}/_mirror/blobs/", h.mirror)),
            "{location}"
        );
        h.until_stored(1).await;
    }
}

/// A transfer cut late in its signed URL's life resumes with a fresh
/// `Location` from the download endpoint (asked with the credential that
/// started the fill), from where it stopped.
#[tokio::test]
async fn a_resume_with_an_expired_link_gets_a_fresh_location() {
    let h = Harness::start().await;
    let art = artifact(&h, PRIVATE_REPO, 300_000, false);
    let zip = h.sim.zip_bytes(art.id).unwrap();
    h.sim.reset_counters();
    h.sim.knobs().cut_blob_after(100_000, 1);
    h.sim.knobs().expire_blob_links_on_resume(1);
    let (redirect, blob) = download(&h, PRIVATE_REPO, art.id, Some(READER_TOKEN)).await;
    assert_eq!(x_cache(&redirect), "MISS");
    assert_eq!(blob.unwrap().body, zip);
    h.until_stored(1).await;
    let blobs = h.sim.blob_requests();
    let ranges: Vec<Option<&str>> = blobs.iter().map(|r| r.header("range")).collect();
    assert_eq!(ranges, [None, Some("bytes=100000-"), Some("bytes=100000-")]);
    assert!(blobs.iter().all(|r| r.header("authorization").is_none()));
    let c = h.sim.counters();
    assert_eq!(c.download, 2, "the download endpoint was asked again");
    // The fresh Location was asked with the client's credential.
    let relocation = h
        .sim
        .requests()
        .into_iter()
        .filter(|r| r.path_and_query.ends_with("/zip"))
        .nth(1)
        .expect("second download-endpoint call");
    assert_eq!(
        relocation.header("authorization"),
        Some(format!("token {READER_TOKEN}").as_str())
    );
}

#[tokio::test]
async fn artifacts_with_identical_content_share_one_file_until_the_last_goes() {
    let h = Harness::start().await;
    let first = artifact(&h, PRIVATE_REPO, 150_000, true);
    let twin = h.sim.duplicate_artifact(first.id).expect("twin");
    let zip = h.sim.zip_bytes(first.id).unwrap();
    assert_eq!(h.sim.zip_bytes(twin.id).unwrap(), zip, "identical bytes");
    for id in [first.id, twin.id] {
        let (_, blob) = download(&h, PRIVATE_REPO, id, Some(READER_TOKEN)).await;
        assert_eq!(blob.unwrap().body, zip);
        until_holds(&h, &zip, 1).await;
    }
    assert_eq!(h.stored_files(), 1, "one file for both");
    let delete = |id: u64| {
        request(
            Method::DELETE,
            &h.url(&format!("/repos/{PRIVATE_REPO}/actions/artifacts/{id}")),
            Some(ADMIN_TOKEN),
        )
    };
    // Deleting one keeps the file the other still names: the twin is
    // served from the store, with no new blob fetch.
    assert_eq!(send(delete(first.id)).await.status, StatusCode::NO_CONTENT);
    assert_eq!(h.stored_files(), 1, "the twin still names the file");
    let blob_gets = h.sim.counters().blob_gets;
    let (redirect, blob) = download(&h, PRIVATE_REPO, twin.id, Some(READER_TOKEN)).await;
    assert_eq!(x_cache(&redirect), "HIT");
    assert_eq!(blob.unwrap().body, zip);
    assert_eq!(h.sim.counters().blob_gets, blob_gets);
    // Deleting the last one removes the file.
    assert_eq!(send(delete(twin.id)).await.status, StatusCode::NO_CONTENT);
    assert_eq!(h.stored_files(), 0);
}

#[tokio::test]
async fn a_record_whose_file_vanished_is_dropped_and_the_zip_fetched_again() {
    let h = Harness::start().await;
    let art = artifact(&h, PRIVATE_REPO, 120_000, true);
    let zip = h.sim.zip_bytes(art.id).unwrap();
    let (redirect, _) = download(&h, PRIVATE_REPO, art.id, Some(READER_TOKEN)).await;
    until_holds(&h, &zip, 1).await;
    let location = redirect.header("location").unwrap().to_owned();
    // The file goes behind the mirror's back (an operator, a full disk...).
    let path = h.blob_file(&hex(&Sha256::digest(&zip)));
    std::fs::remove_file(&path).unwrap();
    let gone = get(&location, None).await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);
    assert!(gone.json()["message"].as_str().is_some());
    // The record went with it: the next download fetches the zip again.
    let (redirect, blob) = download(&h, PRIVATE_REPO, art.id, Some(READER_TOKEN)).await;
    assert_eq!(redirect.status, StatusCode::FOUND);
    assert_eq!(blob.unwrap().body, zip);
    assert_eq!(h.sim.counters().blob_gets, 2);
}

/// A name that is not plain ASCII reaches the client whole in `filename*`
/// (RFC 6266), beside an ASCII `filename` for clients that only read that.
#[tokio::test]
async fn a_non_ascii_name_goes_out_as_filename_star() {
    let h = Harness::start().await;
    let art = h.sim.add_artifact(NewArtifact {
        repo: PRIVATE_REPO.into(),
        run_id: 9001,
        name: "résumé 1".into(),
        payload_bytes: 1000,
        with_digest: false,
        expired: false,
    });
    // The artifact's JSON teaches the mirror its name, as gh's list does.
    let meta = get(
        &h.url(&format!(
            "/repos/{PRIVATE_REPO}/actions/artifacts/{}",
            art.id
        )),
        Some(READER_TOKEN),
    )
    .await;
    assert_eq!(meta.status, StatusCode::OK);
    let (_, blob) = download(&h, PRIVATE_REPO, art.id, Some(READER_TOKEN)).await;
    let blob = blob.expect("a redirect to the blob");
    assert_eq!(blob.status, StatusCode::OK);
    assert_eq!(
        blob.header("content-disposition"),
        Some("attachment; filename=\"r_sum_ 1.zip\"; filename*=UTF-8''r%C3%A9sum%C3%A9%201.zip")
    );
}
