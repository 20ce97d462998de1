//! What upstream's "no" (and its failures) do to what the mirror keeps: a
//! refused DELETE drops nothing, a denial drops that credential's entry, an
//! exhausted rate limit keeps it, and a failed renewal keeps the grant.

mod common;

use artifact_mirror::config::Revalidate;
use common::{get, request, send, Harness, Reply};
use ghes_sim::fixtures::{ADMIN_TOKEN, PRIVATE_REPO, PUBLIC_REPO, READER_TOKEN};
use ghes_sim::{NewArtifact, Sim, SimConfig};
use http::{Method, StatusCode};

fn x_cache(r: &Reply) -> &str {
    r.header("x-cache").unwrap_or("(none)")
}

fn artifact(h: &Harness, repo: &str) -> ghes_sim::Artifact {
    h.sim.add_artifact(NewArtifact {
        repo: repo.into(),
        run_id: 9101,
        name: "kept".into(),
        payload_bytes: 4_000,
        with_digest: true,
        expired: false,
    })
}

/// A download through the mirror: the zip's bytes, or the non-302 answer.
async fn download(h: &Harness, path: &str, token: &str) -> Result<Reply, Reply> {
    let first = get(&h.url(path), Some(token)).await;
    if first.status != StatusCode::FOUND {
        return Err(first);
    }
    let location = first.header("location").expect("location").to_owned();
    Ok(get(&location, None).await)
}

/// A reader may not delete (upstream 403): its DELETE must not empty the
/// cache or the store for everyone else.
/// A private artifact the reader downloaded (granted, zip stored); its
/// download route.
async fn granted_and_stored(h: &Harness) -> String {
    let art = artifact(h, PRIVATE_REPO);
    let zip = format!("/repos/{PRIVATE_REPO}/actions/artifacts/{}/zip", art.id);
    download(h, &zip, READER_TOKEN)
        .await
        .expect("the reader may download");
    h.until_stored(1).await;
    zip
}

#[tokio::test]
async fn a_refused_delete_drops_neither_cached_json_nor_the_blob() {
    let h = Harness::start_with(|l| l.revalidate = Some(Revalidate::WhenStale)).await;
    let art = artifact(&h, PUBLIC_REPO);
    let list = h.url(&format!("/repos/{PUBLIC_REPO}/actions/artifacts"));
    let zip = format!("/repos/{PUBLIC_REPO}/actions/artifacts/{}/zip", art.id);
    assert_eq!(x_cache(&get(&list, Some(ADMIN_TOKEN)).await), "MISS");
    download(&h, &zip, READER_TOKEN)
        .await
        .expect("the reader may download");
    h.until_stored(1).await;

    let one = h.url(&format!(
        "/repos/{PUBLIC_REPO}/actions/artifacts/{}",
        art.id
    ));
    let refused = send(request(Method::DELETE, &one, Some(READER_TOKEN))).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert_eq!(h.sim.counters().delete, 1);

    // The admin's entry is still there, and the zip still stored.
    assert_eq!(x_cache(&get(&list, Some(ADMIN_TOKEN)).await), "HIT");
    assert_eq!(h.stored_files(), 1);
    let again = get(&h.url(&zip), Some(READER_TOKEN)).await;
    assert_eq!(again.status, StatusCode::FOUND);
    assert_eq!(again.header("x-cache"), Some("HIT"));
    assert_eq!(
        h.sim.counters().blob_gets,
        1,
        "the zip came from upstream once"
    );
}

/// Upstream's 401 or (not rate-limited) 403 drops the credential's entry
/// as its 404 does (below).
#[tokio::test]
async fn a_401_or_403_drops_the_entry() {
    for status in [401, 403] {
        let h = Harness::start_with(|l| l.stale_if_error = Some("1m".parse().unwrap())).await;
        let list = h.url(&format!("/repos/{PRIVATE_REPO}/actions/artifacts"));
        assert_eq!(get(&list, Some(READER_TOKEN)).await.status, StatusCode::OK);
        h.sim.knobs().fail_next(1, status);
        let denied = get(&list, Some(READER_TOKEN)).await;
        assert_eq!(denied.status.as_u16(), status);
        assert_ne!(denied.header("x-ratelimit-remaining"), Some("0"));
        h.sim.knobs().fail_next(1, 503);
        let failed = get(&list, Some(READER_TOKEN)).await;
        assert_eq!(
            (failed.status, x_cache(&failed)),
            (StatusCode::SERVICE_UNAVAILABLE, "BYPASS"),
            "the entry was dropped with upstream's {status}"
        );
    }
}

/// Upstream's 404 to a credential that lost access drops that credential's
/// entry: a later upstream failure must not answer its old JSON as STALE.
#[tokio::test]
async fn a_denied_credential_gets_no_stale_json_on_a_later_failure() {
    let h = Harness::start_with(|l| l.stale_if_error = Some("1m".parse().unwrap())).await;
    let list = h.url(&format!("/repos/{PRIVATE_REPO}/actions/artifacts"));
    assert_eq!(get(&list, Some(READER_TOKEN)).await.status, StatusCode::OK);

    h.sim.knobs().revoke_private_access(READER_TOKEN);
    let denied = get(&list, Some(READER_TOKEN)).await;
    assert_eq!(denied.status, StatusCode::NOT_FOUND);
    assert_eq!(x_cache(&denied), "BYPASS");

    h.sim.knobs().fail_next(1, 503);
    let failed = get(&list, Some(READER_TOKEN)).await;
    assert_eq!(
        (failed.status, x_cache(&failed)),
        (StatusCode::SERVICE_UNAVAILABLE, "BYPASS"),
        "the revoked credential's entry was dropped with upstream's 404"
    );
}

/// A 403 for an exhausted rate limit says nothing about access: the entry
/// stays, and once the window resets the next request is a free 304.
#[tokio::test]
async fn a_rate_limited_403_keeps_the_entry() {
    let sim = Sim::start(SimConfig {
        rate_limit: 2,
        ..SimConfig::default()
    })
    .await
    .expect("simulator starts");
    let h = Harness::start_against(sim, |_| {}).await;
    let list = h.url(&format!("/repos/{PUBLIC_REPO}/actions/artifacts"));
    assert_eq!(x_cache(&get(&list, Some(READER_TOKEN)).await), "MISS");
    // The second unit, spent directly.
    let direct = h.direct_url(&format!("/repos/{PUBLIC_REPO}/actions/artifacts?page=2"));
    assert_eq!(
        get(&direct, Some(READER_TOKEN)).await.status,
        StatusCode::OK
    );

    let limited = get(&list, Some(READER_TOKEN)).await;
    assert_eq!(limited.status, StatusCode::FORBIDDEN);
    assert_eq!(limited.header("x-ratelimit-remaining"), Some("0"));

    h.sim.reset_counters();
    let after = get(&list, Some(READER_TOKEN)).await;
    assert_eq!(
        (after.status, x_cache(&after)),
        (StatusCode::OK, "REVALIDATED"),
        "the entry outlived the rate limit"
    );
    assert_eq!(h.sim.counters().not_modified, 1);
}

/// A renewal that fails (upstream 5xx) answers the failure but keeps the
/// grant: the next download renews it for free instead of spending a
/// rate-limit unit on the download endpoint.
#[tokio::test]
async fn a_failed_renewal_keeps_the_grant() {
    let h = Harness::start().await;
    let zip = granted_and_stored(&h).await;
    assert_eq!(h.sim.counters().download, 1);

    h.sim.knobs().fail_next(1, 503);
    let failed = get(&h.url(&zip), Some(READER_TOKEN)).await;
    assert_eq!(failed.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(h.sim.counters().get, 1, "the renewal was tried");

    let renewed = get(&h.url(&zip), Some(READER_TOKEN)).await;
    assert_eq!(renewed.status, StatusCode::FOUND);
    assert_eq!(renewed.header("x-cache"), Some("HIT"));
    let c = h.sim.counters();
    assert_eq!(
        (c.download, c.get),
        (1, 2),
        "renewed by a metadata GET, not the download endpoint"
    );
}

/// A renewal upstream refuses (404 for a credential that lost access) ends
/// the grant: the next download goes to the download endpoint, as for a
/// credential never granted, instead of renewing a grant that is no more.
#[tokio::test]
async fn a_denied_renewal_ends_the_grant() {
    let h = Harness::start().await;
    let zip = granted_and_stored(&h).await;

    h.sim.knobs().revoke_private_access(READER_TOKEN);
    let denied = get(&h.url(&zip), Some(READER_TOKEN)).await;
    assert_eq!(denied.status, StatusCode::NOT_FOUND);
    let c = h.sim.counters();
    assert_eq!((c.download, c.get), (1, 1), "denied by the renewal");

    let again = get(&h.url(&zip), Some(READER_TOKEN)).await;
    assert_eq!(again.status, StatusCode::NOT_FOUND);
    let c = h.sim.counters();
    assert_eq!(
        (c.download, c.get),
        (2, 1),
        "the denied grant was renewed again instead of ended"
    );
}
