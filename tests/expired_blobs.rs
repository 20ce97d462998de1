//! A stored zip whose artifact's `expires_at` has passed is never served,
//! even where no upstream call is made (a young grant under `when-stale`),
//! and the periodic housekeeping drops it without anyone asking for it.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use artifact_mirror::config::{Layer, Revalidate};
use common::{get, Harness, TIMEOUT};
use ghes_sim::fixtures::{PRIVATE_REPO, READER_TOKEN};
use ghes_sim::NewArtifact;
use http::StatusCode;

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}

/// A mirror holding one stored zip of an artifact whose `expires_at` (as
/// the mirror learned it from the artifact's JSON) is now past; answers the
/// artifact id.
async fn stored_then_expired(tune: impl FnOnce(&mut Layer)) -> (Harness, u64) {
    let h = Harness::start_with(tune).await;
    let art = h.sim.add_artifact(NewArtifact {
        repo: PRIVATE_REPO.into(),
        run_id: 9201,
        name: "short-lived".into(),
        payload_bytes: 3_000,
        with_digest: true,
        expired: false,
    });
    // Retention ends two seconds from now (whole seconds, as GitHub writes it).
    let expires_at = now_secs() + 2;
    h.sim.set_expires_at(art.id, expires_at);
    let meta = format!("/repos/{PRIVATE_REPO}/actions/artifacts/{}", art.id);
    let json = get(&h.url(&meta), Some(READER_TOKEN)).await;
    assert_eq!(json.status, StatusCode::OK);
    let zip = format!("{meta}/zip");
    let first = get(&h.url(&zip), Some(READER_TOKEN)).await;
    assert_eq!(first.status, StatusCode::FOUND);
    h.until_stored(1).await;
    // Bounded: expires_at is at most 2 s away.
    while now_secs() <= expires_at {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (h, art.id)
}

#[tokio::test]
async fn a_young_grant_gets_no_zip_past_expires_at() {
    let (h, id) = stored_then_expired(|l| l.revalidate = Some(Revalidate::WhenStale)).await;
    // GitHub now answers 410 for it.
    h.sim.expire_artifact(id);
    let zip = format!("/repos/{PRIVATE_REPO}/actions/artifacts/{id}/zip");
    let after = get(&h.url(&zip), Some(READER_TOKEN)).await;
    assert_eq!(
        after.status,
        StatusCode::GONE,
        "an expired zip was offered ({:?})",
        after.header("x-cache")
    );
    assert_eq!(h.stored_files(), 0, "the expired zip was dropped");
}

#[tokio::test]
async fn housekeeping_drops_an_expired_zip_on_its_own() {
    let (h, _) = stored_then_expired(|l| {
        l.housekeeping_interval = Some("200ms".parse().unwrap());
    })
    .await;
    let requests = h.sim.counters().api_requests;
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while h.stored_files() > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "housekeeping never dropped the expired zip"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(h.sim.counters().api_requests, requests, "nobody asked");
}
