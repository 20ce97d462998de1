//! The JSON cache for the list and get routes, against the simulator:
//! revalidation, freshness, isolation between credentials, rewriting,
//! persistence, coalescing and purging.

mod common;

use std::time::Duration;

use artifact_mirror::config::Revalidate;
use common::{get, get_with, request, send, Harness, Reply};
use ghes_sim::fixtures::{
    ADMIN_TOKEN, OTHER_PRIVATE_REPO, OUTSIDER_TOKEN, PRIVATE_REPO, PRIVATE_REPO_ID, PUBLIC_REPO,
    PUBLIC_REPO_ID, READER_TOKEN,
};
use ghes_sim::NewArtifact;
use http::{Method, StatusCode};

fn x_cache(r: &Reply) -> &str {
    r.header("x-cache").unwrap_or("(none)")
}

fn total_count(r: &Reply) -> u64 {
    r.json()["total_count"].as_u64().expect("total_count")
}

fn new_artifact(repo: &str, run_id: u64, name: &str) -> NewArtifact {
    NewArtifact {
        repo: repo.into(),
        run_id,
        name: name.into(),
        payload_bytes: 100,
        with_digest: false,
        expired: false,
    }
}

#[tokio::test]
async fn always_mode_revalidates_every_request_for_free() {
    let h = Harness::start().await;
    let url = h.url(&format!("/repos/{PRIVATE_REPO}/actions/artifacts"));
    let first = get(&url, Some(READER_TOKEN)).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(x_cache(&first), "MISS");
    let remaining_after_first = first.header("x-ratelimit-remaining").map(str::to_owned);
    for _ in 0..9 {
        let r = get(&url, Some(READER_TOKEN)).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(x_cache(&r), "REVALIDATED");
        assert_eq!(r.body, first.body);
        // Both of upstream's `Vary` lines, not one per name.
        assert_eq!(r.all("vary"), first.all("vary"));
        assert_eq!(first.all("vary").len(), 2);
        // Rate-limit headers come from the 304s: nothing more was spent.
        assert_eq!(
            r.header("x-ratelimit-remaining").map(str::to_owned),
            remaining_after_first
        );
    }
    let c = h.sim.counters();
    assert_eq!(c.list_repo, 10, "every request went upstream");
    assert_eq!(c.not_modified, 9, "all but the first were 304s");
    assert_eq!(c.rate_limit_used.get("reader"), Some(&1));
}

#[tokio::test]
async fn an_upload_shows_in_the_very_next_list() {
    let h = Harness::start().await;
    let url = h.url(&format!(
        "/repositories/{PRIVATE_REPO_ID}/actions/runs/6001/artifacts"
    ));
    let before = get(&url, Some(READER_TOKEN)).await;
    let uploaded = h
        .sim
        .add_artifact(new_artifact(PRIVATE_REPO, 6001, "just-uploaded"));
    let after = get(&url, Some(READER_TOKEN)).await;
    assert_eq!(x_cache(&after), "MISS", "a changed list is a new body");
    assert_eq!(total_count(&after), total_count(&before) + 1);
    let names: Vec<String> = after.json()["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap().to_owned())
        .collect();
    assert!(names.contains(&uploaded.name), "{names:?}");
}

/// Token B never gets what token A cached: for every JSON route, in both
/// path forms, B either gets upstream's own refusal or its own entry.
#[tokio::test]
async fn credentials_never_share_cached_answers() {
    let h = Harness::start().await;
    let art = h
        .sim
        .artifacts(PRIVATE_REPO)
        .into_iter()
        .find(|a| !a.expired)
        .unwrap();
    let forms = [
        format!("/repos/{PRIVATE_REPO}"),
        format!("/repositories/{PRIVATE_REPO_ID}"),
    ];
    for base in &forms {
        for path in [
            format!("{base}/actions/artifacts"),
            format!("{base}/actions/runs/{}/artifacts", art.run_id),
            format!("{base}/actions/artifacts/{}", art.id),
        ] {
            let url = h.url(&path);
            let a = get(&url, Some(READER_TOKEN)).await;
            assert_eq!(a.status, StatusCode::OK, "{path}");
            let a_etag = a.header("etag").unwrap().to_owned();
            // Warm: A's entry exists now.
            assert_eq!(x_cache(&get(&url, Some(READER_TOKEN)).await), "REVALIDATED");

            // No access: upstream's 404, never A's body.
            for who in [Some(OUTSIDER_TOKEN), None] {
                let denied = get(&url, who).await;
                assert_eq!(denied.status, StatusCode::NOT_FOUND, "{path} {who:?}");
                assert_ne!(denied.body, a.body);
                assert_eq!(x_cache(&denied), "BYPASS");
            }
            // Access of its own: its own first upstream request, without
            // A's validator, and its own ETag.
            let before = h.sim.requests().len();
            let b = get(&url, Some(ADMIN_TOKEN)).await;
            assert_eq!(b.status, StatusCode::OK);
            assert_eq!(x_cache(&b), "MISS", "{path}");
            assert_ne!(b.header("etag"), Some(a_etag.as_str()));
            let upstream = &h.sim.requests()[before];
            assert_eq!(upstream.header("if-none-match"), None, "{path}");
            assert_eq!(
                upstream.header("authorization"),
                Some(format!("token {ADMIN_TOKEN}").as_str())
            );
            // Presenting A's ETag does not give B a 304 for A's entry.
            let b_with_a_etag =
                get_with(&url, Some(ADMIN_TOKEN), &[("if-none-match", &a_etag)]).await;
            assert_eq!(b_with_a_etag.status, StatusCode::OK);
        }
    }
    // Anonymous on a public repository gets its own partition too.
    let url = h.url(&format!("/repos/{PUBLIC_REPO}/actions/artifacts"));
    assert_eq!(x_cache(&get(&url, Some(READER_TOKEN)).await), "MISS");
    let anon = get(&url, None).await;
    assert_eq!(anon.status, StatusCode::OK);
    assert_eq!(x_cache(&anon), "MISS");
    assert!(anon.header("cache-control").unwrap().starts_with("public"));
}

#[tokio::test]
async fn a_bad_token_gets_401_and_no_cached_body() {
    let h = Harness::start().await;
    let url = h.url(&format!("/repos/{PUBLIC_REPO}/actions/artifacts"));
    get(&url, Some(READER_TOKEN)).await;
    let r = get(&url, Some("ghp_notarealtoken")).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.json()["message"], "Bad credentials");
    let r = get(&format!("{url}?per_page=100"), Some(OUTSIDER_TOKEN)).await;
    assert_eq!(r.status, StatusCode::OK, "outsiders may read public repos");
    let other = h.url(&format!("/repos/{OTHER_PRIVATE_REPO}/actions/artifacts"));
    assert_eq!(
        get(&other, Some(OUTSIDER_TOKEN)).await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn cached_entries_survive_a_restart() {
    let mut h = Harness::start().await;
    let path = format!("/repos/{PRIVATE_REPO}/actions/artifacts");
    let first = get(&h.url(&path), Some(READER_TOKEN)).await;
    assert_eq!(x_cache(&first), "MISS");
    h.restart_mirror().await;
    let again = get(&h.url(&path), Some(READER_TOKEN)).await;
    assert_eq!(
        x_cache(&again),
        "REVALIDATED",
        "no full 200 after a restart"
    );
    let c = h.sim.counters();
    assert_eq!((c.list_repo, c.not_modified), (2, 1));
    assert_eq!(again.body, first.body);
}

#[tokio::test]
async fn pagination_stays_on_the_mirror() {
    let h = Harness::start().await;
    let base = h.url("");
    let mut next = Some(h.url(&format!(
        "/repos/{PUBLIC_REPO}/actions/artifacts?per_page=2"
    )));
    let mut ids = Vec::new();
    let mut pages = 0;
    while let Some(url) = next.take() {
        pages += 1;
        assert!(pages <= 10, "pagination does not end");
        // PyGithub's rule: same scheme, host, port and path prefix as the base.
        assert!(url.starts_with(&format!("{base}/")), "{url} leaves {base}");
        let r = get(&url, Some(READER_TOKEN)).await;
        assert_eq!(r.status, StatusCode::OK, "{url}");
        for a in r.json()["artifacts"].as_array().unwrap() {
            ids.push(a["id"].as_u64().unwrap());
            for field in ["url", "archive_download_url"] {
                let link = a[field].as_str().unwrap();
                assert!(
                    link.starts_with(&format!("{base}/repos/{PUBLIC_REPO}/")),
                    "{link}"
                );
            }
        }
        next = r.header("link").and_then(|link| {
            link.split(',')
                .find(|part| part.contains("rel=\"next\""))
                .and_then(|part| part.split(['<', '>']).nth(1))
                .map(str::to_owned)
        });
        if let Some(n) = &next {
            assert!(
                n.contains(&format!("/repositories/{PUBLIC_REPO_ID}/")),
                "{n}"
            );
        }
    }
    let expected: Vec<u64> = h.sim.artifacts(PUBLIC_REPO).iter().map(|a| a.id).collect();
    assert_eq!(ids, expected);
    assert_eq!(pages, expected.len().div_ceil(2));
    // No request ever went to the simulator except through the mirror, and
    // the cache key made `/repositories/` pages their own entries.
    assert_eq!(h.sim.counters().list_repo, pages as u64);
}

#[tokio::test]
async fn client_conditionals_are_answered_by_the_mirror() {
    let h = Harness::start_with(|l| l.revalidate = Some(Revalidate::WhenStale)).await;
    let url = h.url(&format!("/repos/{PUBLIC_REPO}/actions/artifacts"));
    let first = get(&url, Some(READER_TOKEN)).await;
    let etag = first.header("etag").unwrap().to_owned();
    // Strong form of a weak ETag still matches.
    let strong = etag.trim_start_matches("W/").to_owned();
    for validator in [etag.as_str(), strong.as_str(), "\"nope\", *"] {
        let r = get_with(&url, Some(READER_TOKEN), &[("if-none-match", validator)]).await;
        assert_eq!(r.status, StatusCode::NOT_MODIFIED, "{validator}");
        assert!(r.body.is_empty());
        assert_eq!(r.header("etag"), Some(etag.as_str()));
        assert_eq!(x_cache(&r), "HIT");
    }
    let r = get_with(&url, Some(READER_TOKEN), &[("if-none-match", "\"other\"")]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(h.sim.counters().list_repo, 1);
}

#[tokio::test]
async fn concurrent_identical_misses_make_one_upstream_request() {
    let h = Harness::start().await;
    h.sim.knobs().set_latency(Duration::from_millis(400));
    let url = h.url(&format!("/repos/{PUBLIC_REPO}/actions/artifacts"));
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let url = url.clone();
        tasks.push(tokio::spawn(
            async move { get(&url, Some(READER_TOKEN)).await },
        ));
    }
    let mut bodies = Vec::new();
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, StatusCode::OK);
        bodies.push(r.body);
    }
    assert!(bodies.windows(2).all(|w| w[0] == w[1]));
    assert_eq!(h.sim.counters().list_repo, 1);
}

#[tokio::test]
async fn delete_through_the_mirror_purges_the_repository() {
    let h = Harness::start_with(|l| l.revalidate = Some(Revalidate::WhenStale)).await;
    let victim = h.sim.artifacts(PUBLIC_REPO)[0].clone();
    let by_id = h.url(&format!("/repositories/{PUBLIC_REPO_ID}/actions/artifacts"));
    let by_name = h.url(&format!(
        "/repos/{PUBLIC_REPO}/actions/artifacts/{}",
        victim.id
    ));
    assert_eq!(total_count(&get(&by_id, Some(READER_TOKEN)).await), 5);
    assert_eq!(
        get(&by_name, Some(READER_TOKEN)).await.status,
        StatusCode::OK
    );
    assert_eq!(x_cache(&get(&by_id, Some(READER_TOKEN)).await), "HIT");

    let del = send(request(Method::DELETE, &by_name, Some(ADMIN_TOKEN))).await;
    assert_eq!(del.status, StatusCode::NO_CONTENT);
    // Both forms were purged for every credential: fresh answers from upstream.
    let list = get(&by_id, Some(READER_TOKEN)).await;
    assert_eq!(x_cache(&list), "MISS");
    assert_eq!(total_count(&list), 4);
    let gone = get(&by_name, Some(READER_TOKEN)).await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn upstream_failures_pass_through_unless_stale_if_error_allows() {
    let h = Harness::start().await;
    let url = h.url(&format!("/repos/{PUBLIC_REPO}/actions/artifacts"));
    get(&url, Some(READER_TOKEN)).await;
    h.sim.knobs().fail_next(1, 502);
    let r = get(&url, Some(READER_TOKEN)).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert_eq!(x_cache(&r), "BYPASS");
    // The entry survived the failure: the next request is a free 304.
    assert_eq!(x_cache(&get(&url, Some(READER_TOKEN)).await), "REVALIDATED");

    let h = Harness::start_with(|l| l.stale_if_error = Some("1m".parse().unwrap())).await;
    let url = h.url(&format!("/repos/{PUBLIC_REPO}/actions/artifacts"));
    let first = get(&url, Some(READER_TOKEN)).await;
    h.sim.knobs().fail_next(1, 503);
    let r = get(&url, Some(READER_TOKEN)).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(x_cache(&r), "STALE");
    assert_eq!(r.body, first.body);
    // Only for the credential that cached it.
    h.sim.knobs().fail_next(1, 503);
    let other = get(&url, Some(ADMIN_TOKEN)).await;
    assert_eq!(other.status, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn no_raw_token_reaches_the_disk() {
    let mut h = Harness::start().await;
    for path in [
        format!("/repos/{PRIVATE_REPO}/actions/artifacts"),
        format!("/repositories/{PUBLIC_REPO_ID}/actions/artifacts?per_page=1"),
    ] {
        assert_eq!(
            get(&h.url(&path), Some(READER_TOKEN)).await.status,
            StatusCode::OK
        );
        get(&h.url(&path), Some(ADMIN_TOKEN)).await;
    }
    h.stop_mirror().await; // flushes the index
    let mut files = vec![h.data_dir.path().to_owned()];
    let mut scanned = 0;
    while let Some(path) = files.pop() {
        if path.is_dir() {
            files.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        scanned += bytes.len();
        for token in [READER_TOKEN, ADMIN_TOKEN] {
            let found = bytes.windows(token.len()).any(|w| w == token.as_bytes());
            assert!(!found, "token found in {}", path.display());
        }
    }
    assert!(scanned > 0, "the index wrote nothing to scan");
}

/// A query the route does not document (or a value out of its form) is
/// answered by upstream with URLs still moved to the mirror, and never
/// stored: asked twice, it goes upstream whole both times, says `BYPASS`,
/// and is counted so in the metrics. Known parameters are still cached.
#[tokio::test]
async fn unknown_query_parameters_are_forwarded_but_not_stored() {
    let h = Harness::start().await;
    let path = format!("/repos/{PRIVATE_REPO}/actions/artifacts");
    let junk = "j".repeat(2048);
    let long_name = "n".repeat(300);
    let bypassed = [
        format!("?per_page=1&junk={junk}"),
        format!("?per_page=1&junk={junk}"),
        "?per_page=1&other=1".to_owned(),
        format!("?per_page=1&name={long_name}"),
        "?per_page=1&page=1&page=2".to_owned(),
        "?per_page=lots".to_owned(),
    ];
    for query in &bypassed {
        let r = get(&h.url(&format!("{path}{query}")), Some(READER_TOKEN)).await;
        assert_eq!(r.status, StatusCode::OK, "{query}");
        assert_eq!(x_cache(&r), "BYPASS", "{query}");
        let body = String::from_utf8_lossy(&r.body);
        assert!(!body.contains(&h.sim.api_base()), "{query}: {body}");
    }
    let r = get(
        &h.url(&format!("{path}?per_page=1&junk=1")),
        Some(READER_TOKEN),
    )
    .await;
    assert!(String::from_utf8_lossy(&r.body).contains(&h.url("/")));
    let link = r.header("link").expect("a Link header");
    assert!(link.contains(&h.url("/")), "{link}");
    let c = h.sim.counters();
    assert_eq!(c.list_repo, 7, "each went upstream");
    assert_eq!(c.not_modified, 0, "nothing stored to revalidate");
    assert_eq!(c.rate_limit_used.get("reader"), Some(&7));

    let known = h.url(&format!("{path}?per_page=1&page=1&name=dist"));
    assert_eq!(x_cache(&get(&known, Some(READER_TOKEN)).await), "MISS");
    assert_eq!(
        x_cache(&get(&known, Some(READER_TOKEN)).await),
        "REVALIDATED"
    );
    let metrics = get(&format!("http://{}/metrics", h.mirror), None).await;
    let metrics = String::from_utf8_lossy(&metrics.body);
    assert!(
        metrics.contains(
            "artifact_mirror_requests_total{route=\"list_repo_artifacts\",cache=\"bypass\"} 7"
        ),
        "{metrics}"
    );
}

/// A HEAD of a list is forwarded and stores nothing: its empty body must
/// never become the entry a later GET is answered from.
#[tokio::test]
async fn a_head_request_is_forwarded_and_stores_nothing() {
    let h = Harness::start().await;
    let url = h.url(&format!("/repos/{PUBLIC_REPO}/actions/artifacts"));
    let head = send(request(Method::HEAD, &url, Some(READER_TOKEN))).await;
    assert_eq!(head.status, StatusCode::OK);
    assert_eq!(x_cache(&head), "BYPASS");
    let list = get(&url, Some(READER_TOKEN)).await;
    assert_eq!(x_cache(&list), "MISS");
    assert_eq!(total_count(&list), 5);
}

/// Each path form teaches the mirror the other: a list seen only by name is
/// purged by a DELETE under the repository's id, and one seen only by id by
/// a DELETE under its name.
#[tokio::test]
async fn a_delete_under_either_form_purges_a_list_seen_under_the_other() {
    let h = Harness::start_with(|l| l.revalidate = Some(Revalidate::WhenStale)).await;
    for (listed, deleted_under) in [
        (
            format!("/repos/{PUBLIC_REPO}"),
            format!("/repositories/{PUBLIC_REPO_ID}"),
        ),
        (
            format!("/repositories/{PRIVATE_REPO_ID}"),
            format!("/repos/{PRIVATE_REPO}"),
        ),
    ] {
        let list = h.url(&format!("{listed}/actions/artifacts"));
        let before = get(&list, Some(ADMIN_TOKEN)).await;
        assert_eq!(x_cache(&before), "MISS");
        assert_eq!(x_cache(&get(&list, Some(ADMIN_TOKEN)).await), "HIT");
        let victim = before.json()["artifacts"][0]["id"]
            .as_u64()
            .expect("an artifact id");
        let delete = h.url(&format!("{deleted_under}/actions/artifacts/{victim}"));
        let deleted = send(request(Method::DELETE, &delete, Some(ADMIN_TOKEN))).await;
        assert_eq!(deleted.status, StatusCode::NO_CONTENT);
        let after = get(&list, Some(ADMIN_TOKEN)).await;
        assert_eq!(
            x_cache(&after),
            "MISS",
            "{listed} kept its entry after a DELETE under {deleted_under}"
        );
        assert_eq!(total_count(&after), total_count(&before) - 1);
    }
}

/// A page of 100 artifacts (~70 KB of JSON, far above a few) is taken in
/// whole and cached like a short one.
#[tokio::test]
async fn a_full_page_of_artifacts_is_cached_whole() {
    let h = Harness::start().await;
    let before = h.sim.artifacts(PUBLIC_REPO).len();
    for i in before..100 {
        h.sim
            .add_artifact(new_artifact(PUBLIC_REPO, 7000, &format!("part-{i}")));
    }
    let url = h.url(&format!(
        "/repos/{PUBLIC_REPO}/actions/artifacts?per_page=100"
    ));
    let page = get(&url, Some(READER_TOKEN)).await;
    assert_eq!((page.status, x_cache(&page)), (StatusCode::OK, "MISS"));
    assert_eq!(page.json()["artifacts"].as_array().map(Vec::len), Some(100));
    assert!(page.body.len() > 50_000, "{} bytes", page.body.len());
    let again = get(&url, Some(READER_TOKEN)).await;
    assert_eq!(x_cache(&again), "REVALIDATED");
    assert_eq!(again.body, page.body);
}
