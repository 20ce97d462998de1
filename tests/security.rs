//! Who may see a cached byte, attacked from the outside: revoked access,
//! other repositories' paths, both path forms, name case and coalescing
//! across credentials. Every test here can fail if a partition leaks.

mod common;

use std::time::{Duration, Instant};

use artifact_mirror::config::Revalidate;
use common::{get, get_with, Harness, Reply};
use ghes_sim::fixtures::{
    OUTSIDER_TOKEN, PRIVATE_REPO, PRIVATE_REPO_ID, PUBLIC_REPO, PUBLIC_REPO_ID, READER_TOKEN,
};
use ghes_sim::NewArtifact;
use http::StatusCode;

fn private_artifact(h: &Harness) -> ghes_sim::Artifact {
    h.sim.add_artifact(NewArtifact {
        repo: PRIVATE_REPO.into(),
        run_id: 9001,
        name: "confidential".into(),
        payload_bytes: 20_000,
        with_digest: true,
        expired: false,
    })
}

/// The zip bytes a download through the mirror yields, or its non-302 answer.
async fn zip_via_mirror(h: &Harness, path: &str, token: Option<&str>) -> Result<Reply, Reply> {
    let first = get(&h.url(path), token).await;
    if first.status != StatusCode::FOUND {
        return Err(first);
    }
    let location = first.header("location").expect("location").to_owned();
    Ok(get(&location, None).await)
}

/// `revalidate = "when-stale"` lets a young grant skip upstream, but only
/// for `max_fresh` after upstream last said yes. A young grant used again
/// must not count as a new "yes": a client downloading more often than
/// `max_fresh` would otherwise keep access forever after upstream revoked it.
#[tokio::test]
async fn a_young_grant_ends_max_fresh_after_upstream_last_said_yes() {
    let max_fresh = Duration::from_secs(2);
    let h = Harness::start_with(|l| {
        l.revalidate = Some(Revalidate::WhenStale);
        l.max_fresh = Some("2s".parse().unwrap());
    })
    .await;
    let art = private_artifact(&h);
    let zip = h.sim.zip_bytes(art.id).unwrap();
    let path = format!("/repos/{PRIVATE_REPO}/actions/artifacts/{}/zip", art.id);

    let first = zip_via_mirror(&h, &path, Some(READER_TOKEN))
        .await
        .expect("upstream allows the reader");
    // Upstream said yes no later than now.
    let said_yes = Instant::now();
    assert_eq!(first.body, zip);
    h.until_stored(1).await;

    // The reader is removed from the team: upstream now answers 404.
    h.sim.knobs().revoke_private_access(READER_TOKEN);
    let direct = get(&h.direct_url(&path), Some(READER_TOKEN)).await;
    assert_eq!(direct.status, StatusCode::NOT_FOUND, "upstream revoked it");

    // Download every 400 ms: within max_fresh the young grant may still
    // answer; past it (plus a margin for a loaded machine) only upstream's
    // 404 may come back.
    let limit = max_fresh + Duration::from_millis(300);
    let end = said_yes + max_fresh * 2 + Duration::from_secs(1);
    let mut checked_after = 0;
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let asked = Instant::now();
        let answer = zip_via_mirror(&h, &path, Some(READER_TOKEN)).await;
        if asked.duration_since(said_yes) > limit {
            checked_after += 1;
            match answer {
                Ok(blob) => panic!(
                    "{:?} after upstream last said yes (max_fresh {max_fresh:?}), a revoked \
                     credential still got the zip ({} bytes, status {})",
                    asked.duration_since(said_yes),
                    blob.body.len(),
                    blob.status
                ),
                Err(denied) => assert_eq!(denied.status, StatusCode::NOT_FOUND),
            }
        }
    }
    assert!(checked_after >= 2, "the loop never got past max_fresh");
}

/// A stored blob is reachable only through a path upstream answers with a
/// 302 for this credential: an artifact id under another repository's path
/// (either path form, any case of the names) gets upstream's answer, never
/// a signed URL.
#[tokio::test]
async fn an_artifact_under_another_repositorys_path_gets_no_bytes() {
    let h = Harness::start().await;
    let art = private_artifact(&h);
    let own = format!("/repos/{PRIVATE_REPO}/actions/artifacts/{}/zip", art.id);
    zip_via_mirror(&h, &own, Some(READER_TOKEN))
        .await
        .expect("the reader may download it");
    h.until_stored(1).await;
    // The reader's metadata of it is cached too.
    let meta = format!("/repos/{PRIVATE_REPO}/actions/artifacts/{}", art.id);
    assert_eq!(
        get(&h.url(&meta), Some(READER_TOKEN)).await.status,
        StatusCode::OK
    );

    let id = art.id;
    let upper = PRIVATE_REPO.to_ascii_uppercase();
    let paths = [
        format!("/repos/{PUBLIC_REPO}/actions/artifacts/{id}/zip"),
        format!("/repositories/{PUBLIC_REPO_ID}/actions/artifacts/{id}/zip"),
        format!("/repositories/{PRIVATE_REPO_ID}/actions/artifacts/{id}/zip"),
        format!("/repos/{upper}/actions/artifacts/{id}/zip"),
        format!("/repos/{PUBLIC_REPO}/actions/artifacts/{id}"),
        format!("/repos/{upper}/actions/artifacts/{id}"),
    ];
    for path in &paths {
        for who in [Some(OUTSIDER_TOKEN), None] {
            let r = get(&h.url(path), who).await;
            assert!(
                matches!(r.status, StatusCode::NOT_FOUND | StatusCode::FORBIDDEN),
                "{path} {who:?}: {} {:?}",
                r.status,
                r.header("location")
            );
            assert!(r.header("location").is_none(), "{path} {who:?}");
            assert!(
                !String::from_utf8_lossy(&r.body).contains("confidential"),
                "{path} {who:?}"
            );
        }
    }
    // The reader itself, holding a grant for the artifact, asks under the
    // public repository's path: upstream says the artifact is not there.
    let elsewhere = format!("/repos/{PUBLIC_REPO}/actions/artifacts/{id}/zip");
    let r = get(&h.url(&elsewhere), Some(READER_TOKEN)).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

/// Concurrent identical requests share one upstream call only within one
/// credential: an outsider or anonymous request arriving while the reader's
/// is in flight gets its own upstream answer.
#[tokio::test]
async fn coalescing_never_joins_another_credentials_call() {
    let h = Harness::start().await;
    let art = private_artifact(&h);
    h.sim.knobs().set_latency(Duration::from_millis(400));
    for path in [
        format!("/repos/{PRIVATE_REPO}/actions/artifacts"),
        format!("/repos/{PRIVATE_REPO}/actions/artifacts/{}", art.id),
        format!("/repositories/{PRIVATE_REPO_ID}/actions/artifacts"),
    ] {
        let url = h.url(&path);
        let mut tasks = Vec::new();
        for who in [
            READER_TOKEN,
            OUTSIDER_TOKEN,
            "",
            READER_TOKEN,
            OUTSIDER_TOKEN,
            "",
        ] {
            let url = url.clone();
            tasks.push(tokio::spawn(async move {
                let token = (!who.is_empty()).then_some(who);
                (who, get(&url, token).await)
            }));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for task in tasks {
            let (who, r) = task.await.unwrap();
            if who == READER_TOKEN {
                assert_eq!(r.status, StatusCode::OK, "{path}");
                assert!(String::from_utf8_lossy(&r.body).contains("confidential"));
            } else {
                assert_eq!(r.status, StatusCode::NOT_FOUND, "{path} {who:?}");
                assert!(
                    !String::from_utf8_lossy(&r.body).contains("confidential"),
                    "{path} {who:?}"
                );
            }
        }
    }
}

/// `stale_if_error` answers JSON from the credential's own entry while
/// upstream fails, but a stale answer is the cache's, not upstream's yes: it
/// must not renew a grant to the zip (the credential may have lost access).
#[tokio::test]
async fn a_stale_answer_does_not_renew_a_grant() {
    let h = Harness::start_with(|l| l.stale_if_error = Some("1m".parse().unwrap())).await;
    let art = private_artifact(&h);
    let zip = h.sim.zip_bytes(art.id).unwrap();
    let path = format!("/repos/{PRIVATE_REPO}/actions/artifacts/{}/zip", art.id);
    // First download (the endpoint's 302), then a renewal by a full GET
    // that stores the metadata entry a stale answer could come from.
    for _ in 0..2 {
        let blob = zip_via_mirror(&h, &path, Some(READER_TOKEN))
            .await
            .expect("upstream allows the reader");
        assert_eq!(blob.body, zip);
        h.until_stored(1).await;
    }
    let meta = h.url(&format!(
        "/repos/{PRIVATE_REPO}/actions/artifacts/{}",
        art.id
    ));
    h.sim.knobs().fail_next(1, 503);
    // The Accept every renewal sends, so this is the renewals' entry.
    let accept = [("accept", "application/vnd.github+json")];
    let stale = get_with(&meta, Some(READER_TOKEN), &accept).await;
    assert_eq!(stale.status, StatusCode::OK);
    assert_eq!(
        stale.header("x-cache"),
        Some("STALE"),
        "the JSON entry is there"
    );

    h.sim.knobs().fail_next(1, 503);
    match zip_via_mirror(&h, &path, Some(READER_TOKEN)).await {
        Ok(blob) => panic!("a stale renewal granted the zip (status {})", blob.status),
        Err(refused) => {
            assert_eq!(refused.status, StatusCode::BAD_GATEWAY);
            assert!(refused.json()["message"]
                .as_str()
                .is_some_and(|m| m.contains("503")));
        }
    }
    // Two renewals at once share one failing upstream call: the one that
    // joined it got the same stale answer and must be refused too. The
    // second starts only once the first is at upstream (held there by the
    // latency), so it joins that call.
    h.sim.knobs().set_latency(Duration::from_secs(1));
    h.sim.knobs().fail_next(1, 503);
    let gets = h.sim.counters().get;
    let download =
        |url: String| tokio::spawn(async move { get(&url, Some(READER_TOKEN)).await.status });
    let first = download(h.url(&path));
    let deadline = Instant::now() + common::TIMEOUT;
    while h.sim.counters().get == gets {
        assert!(
            Instant::now() < deadline,
            "the first renewal never reached upstream"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let second = download(h.url(&path));
    for task in [first, second] {
        let status = task.await.expect("download task");
        assert_eq!(
            status,
            StatusCode::BAD_GATEWAY,
            "a stale renewal granted the zip"
        );
    }
    assert_eq!(
        h.sim.counters().get,
        gets + 1,
        "the two renewals joined one upstream call"
    );
    h.sim.knobs().set_latency(Duration::ZERO);
    h.sim.knobs().fail_next(0, 0);

    // Upstream back: the grant renews and the stored zip is served again.
    let blob = zip_via_mirror(&h, &path, Some(READER_TOKEN))
        .await
        .expect("renewed once upstream answers");
    assert_eq!(blob.body, zip);
    assert_eq!(
        h.sim.counters().blob_gets,
        1,
        "served from the store throughout"
    );
}
