//! A stored zip whose artifact's `expires_at` has passed is never served,
//! even where no upstream call is made (a young grant under `when-stale`),
//! and the periodic housekeeping drops it without anyone asking for it.

mod common;

use std::time::Duration;

use artifact_mirror::config::{Layer, Revalidate};
use common::{get, Harness, TIMEOUT};
use ghes_sim::fixtures::{PRIVATE_REPO, READER_TOKEN};
use ghes_sim::NewArtifact;
use http::StatusCode;

/// Stores one zip through `h` of an artifact whose `expires_at` (as the
/// mirror learns it from the artifact's JSON) is `secs` seconds from now;
/// answers the artifact id and that `expires_at`.
async fn store_expiring(h: &Harness, secs: u64) -> (u64, u64) {
    let art = h.sim.add_artifact(NewArtifact {
        repo: PRIVATE_REPO.into(),
        run_id: 9201,
        name: "short-lived".into(),
        payload_bytes: 3_000,
        with_digest: true,
        expired: false,
    });
    // Whole seconds, as GitHub writes it.
    let expires_at = common::unix_now() + secs;
    h.sim.set_expires_at(art.id, expires_at);
    let meta = format!("/repos/{PRIVATE_REPO}/actions/artifacts/{}", art.id);
    let json = get(&h.url(&meta), Some(READER_TOKEN)).await;
    assert_eq!(json.status, StatusCode::OK);
    let zip = format!("{meta}/zip");
    let first = get(&h.url(&zip), Some(READER_TOKEN)).await;
    assert_eq!(first.status, StatusCode::FOUND);
    h.until_stored(1).await;
    (art.id, expires_at)
}

/// Waits (bounded by the caller's `secs`) until `expires_at` has passed.
async fn until_past(expires_at: u64) {
    while common::unix_now() <= expires_at {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits (bounded) until housekeeping has dropped every stored zip.
async fn until_no_zip(h: &Harness) {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while h.stored_files() > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "housekeeping never dropped the expired zip"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A mirror holding one stored zip of an artifact whose `expires_at` is now
/// past; answers the artifact id.
async fn stored_then_expired(tune: impl FnOnce(&mut Layer)) -> (Harness, u64) {
    let h = Harness::start_with(tune).await;
    // Bounded: expires_at is 2 s away.
    let (id, expires_at) = store_expiring(&h, 2).await;
    until_past(expires_at).await;
    (h, id)
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
    until_no_zip(&h).await;
    assert_eq!(h.sim.counters().api_requests, requests, "nobody asked");
}

/// After a lost index the blob records come back from their sidecars,
/// `expires_at` and all, but the artifact's facts (which housekeeping also
/// expires by) do not: the blob record's own expiry must still drop the zip.
#[tokio::test]
async fn housekeeping_drops_an_expired_zip_whose_facts_were_lost() {
    let mut h = Harness::start_with(|l| {
        l.housekeeping_interval = Some("200ms".parse().unwrap());
    })
    .await;
    // Far enough ahead that the restart below happens before it.
    let (_, expires_at) = store_expiring(&h, 5).await;
    h.stop_mirror().await;
    std::fs::remove_dir_all(h.data_dir.path().join("index")).unwrap();
    h.restart_mirror().await;
    assert_eq!(h.stored_files(), 1, "the restart kept the zip");
    let requests = h.sim.counters().api_requests;
    until_past(expires_at).await;
    until_no_zip(&h).await;
    assert_eq!(h.sim.counters().api_requests, requests, "nobody asked");
}
