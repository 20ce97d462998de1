//! What changes as wall time passes, with the mirror's clock advanced
//! instead of slept through: a fresh JSON entry goes stale, a young grant
//! ends `max_fresh` after upstream last said yes, a signed blob URL expires,
//! an entry ages past `stale_if_error` and past a client's `max-age`.
//!
//! The clock is one per process, so these tests live in their own binary
//! and take turns ([`TURN`]): one advancing it would disturb the other.

mod common;

use std::time::Duration;

use artifact_mirror::advance_clock;
use artifact_mirror::config::{Layer, Revalidate, Span};
use common::{get, get_with, Harness, Reply};
use ghes_sim::fixtures::{PRIVATE_REPO, PUBLIC_REPO, READER_TOKEN};
use ghes_sim::NewArtifact;
use http::StatusCode;
use tokio::sync::Mutex;

/// Held for a whole test: the clock it advances is the process's.
static TURN: Mutex<()> = Mutex::const_new(());

/// Under the simulator's `max-age=60`, so `max_fresh` is the limit that
/// decides, and wide enough that the real seconds a test takes on a loaded
/// machine do not matter beside the halves the clock is advanced by: the
/// clock, not the machine, decides on which side of it a request falls.
const MAX_FRESH: Duration = Duration::from_secs(30);

fn when_stale(l: &mut Layer) {
    l.revalidate = Some(Revalidate::WhenStale);
    l.max_fresh = Some(Span(MAX_FRESH));
}

fn x_cache(r: &Reply) -> &str {
    r.header("x-cache").unwrap_or("(none)")
}

fn total_count(r: &Reply) -> u64 {
    r.json()["total_count"].as_u64().expect("total_count")
}

fn artifact(repo: &str, run_id: u64, name: &str, payload_bytes: usize) -> NewArtifact {
    NewArtifact {
        repo: repo.into(),
        run_id,
        name: name.into(),
        payload_bytes,
        with_digest: true,
        expired: false,
    }
}

/// A 20 000-byte private artifact of run `run_id`: its id, its zip, and
/// its download route.
fn private_zip(h: &Harness, run_id: u64, name: &str) -> (u64, bytes::Bytes, String) {
    let art = h
        .sim
        .add_artifact(artifact(PRIVATE_REPO, run_id, name, 20_000));
    let zip = h.sim.zip_bytes(art.id).unwrap();
    let path = format!("/repos/{PRIVATE_REPO}/actions/artifacts/{}/zip", art.id);
    (art.id, zip, path)
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

#[tokio::test]
async fn when_stale_mode_answers_fresh_entries_without_upstream() {
    let _turn = TURN.lock().await;
    let h = Harness::start_with(when_stale).await;
    let url = h.url(&format!(
        "/repos/{PUBLIC_REPO}/actions/artifacts?per_page=3"
    ));
    let first = get(&url, Some(READER_TOKEN)).await;
    assert_eq!(x_cache(&first), "MISS");
    for _ in 0..5 {
        let r = get(&url, Some(READER_TOKEN)).await;
        assert_eq!(x_cache(&r), "HIT");
        assert_eq!(r.body, first.body);
    }
    assert_eq!(h.sim.counters().list_repo, 1, "fresh hits stay local");

    // An upload now is not seen until the entry is stale...
    h.sim
        .add_artifact(artifact(PUBLIC_REPO, 5002, "late-upload", 100));
    advance_clock(MAX_FRESH / 2);
    let r = get(&url, Some(READER_TOKEN)).await;
    assert_eq!(x_cache(&r), "HIT");
    assert_eq!(total_count(&r), total_count(&first));
    // ... and is past max_fresh: upstream answers 200 with the new list.
    advance_clock(MAX_FRESH / 2 + Duration::from_secs(1));
    let r = get(&url, Some(READER_TOKEN)).await;
    assert_eq!(x_cache(&r), "MISS");
    assert_eq!(total_count(&r), total_count(&first) + 1);
    // Stale again later, nothing changed: a free 304.
    advance_clock(MAX_FRESH + Duration::from_secs(1));
    let r = get(&url, Some(READER_TOKEN)).await;
    assert_eq!(x_cache(&r), "REVALIDATED");
    let c = h.sim.counters();
    assert_eq!((c.list_repo, c.not_modified), (3, 1));
}

/// `revalidate = "when-stale"` lets a young grant skip upstream, but only
/// for `max_fresh` after upstream last said yes. A young grant used again
/// must not count as a new "yes": a client downloading more often than
/// `max_fresh` would otherwise keep access forever after upstream revoked it.
#[tokio::test]
async fn a_young_grant_ends_max_fresh_after_upstream_last_said_yes() {
    let _turn = TURN.lock().await;
    let h = Harness::start_with(when_stale).await;
    let (_, zip, path) = private_zip(&h, 9001, "confidential");

    let first = zip_via_mirror(&h, &path, Some(READER_TOKEN))
        .await
        .expect("upstream allows the reader");
    assert_eq!(first.body, zip);
    h.until_stored(1).await;

    // The reader is removed from the team: upstream now answers 404.
    h.sim.knobs().revoke_private_access(READER_TOKEN);
    let direct = get(&h.direct_url(&path), Some(READER_TOKEN)).await;
    assert_eq!(direct.status, StatusCode::NOT_FOUND, "upstream revoked it");

    // Halfway through max_fresh the young grant answers without upstream...
    let asked = h.sim.counters().api_requests;
    advance_clock(MAX_FRESH / 2);
    let young = zip_via_mirror(&h, &path, Some(READER_TOKEN))
        .await
        .expect("a young grant answers from the store");
    assert_eq!(young.body, zip);
    assert_eq!(
        h.sim.counters().api_requests,
        asked,
        "upstream was not asked"
    );

    // ...but that use was no new "yes": past max_fresh since the last one,
    // only upstream's 404 comes back.
    advance_clock(MAX_FRESH / 2 + Duration::from_secs(1));
    match zip_via_mirror(&h, &path, Some(READER_TOKEN)).await {
        Ok(blob) => panic!(
            "past max_fresh after upstream last said yes, a revoked credential still got \
             the zip ({} bytes, status {})",
            blob.body.len(),
            blob.status
        ),
        Err(denied) => assert_eq!(denied.status, StatusCode::NOT_FOUND),
    }
}

/// A signed blob URL works until `blob_url_ttl`, then says it expired; a
/// tampered or unsigned one is refused for that reason, never its age (the
/// TTL is wide and the clock, not the machine, moves past it).
#[tokio::test]
async fn blob_urls_need_a_valid_unexpired_signature_for_that_artifact() {
    let _turn = TURN.lock().await;
    let ttl = Duration::from_secs(60);
    let h = Harness::start_with(|l| l.blob_url_ttl = Some(Span(ttl))).await;
    let mut ids = Vec::new();
    let mut locations = Vec::new();
    for name in ["a", "b"] {
        let art = h
            .sim
            .add_artifact(artifact(PUBLIC_REPO, 9001, name, 10_000));
        let path = format!("/repos/{PUBLIC_REPO}/actions/artifacts/{}/zip", art.id);
        let redirect = get(&h.url(&path), Some(READER_TOKEN)).await;
        assert_eq!(redirect.status, StatusCode::FOUND);
        let location = redirect.header("location").expect("location").to_owned();
        assert_eq!(get(&location, None).await.status, StatusCode::OK);
        ids.push(art.id);
        locations.push(location);
    }
    let location = &locations[0];
    let query = location.split_once('?').unwrap().1.to_owned();

    let mut tampered = location.clone().into_bytes();
    let last = tampered.len() - 1;
    tampered[last] = if tampered[last] == b'0' { b'1' } else { b'0' };
    let cases = [
        (
            String::from_utf8(tampered).unwrap(),
            "Blob URL signature does not match",
        ),
        (
            format!("http://{}/_mirror/blobs/{}?{query}", h.mirror, ids[1]),
            "Blob URL signature does not match",
        ),
        (
            format!("http://{}/_mirror/blobs/{}", h.mirror, ids[0]),
            "Blob URL is not signed",
        ),
    ];
    for (url, message) in &cases {
        let r = get(url, None).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{url}");
        assert_eq!(r.json()["message"], *message, "{url}");
    }
    // Still valid within the TTL...
    advance_clock(ttl / 2);
    assert_eq!(get(location, None).await.status, StatusCode::OK);
    // ...and expired past it.
    advance_clock(ttl / 2 + Duration::from_secs(1));
    let expired = get(location, None).await;
    assert_eq!(expired.status, StatusCode::FORBIDDEN);
    assert_eq!(expired.json()["message"], "Blob URL has expired");
}

/// Past `stale_if_error` since upstream last validated it, the entry stays
/// quiet and upstream's failure goes through; within it, it answers.
#[tokio::test]
async fn an_entry_older_than_stale_if_error_is_not_served() {
    let _turn = TURN.lock().await;
    let limit = Duration::from_secs(60);
    let h = Harness::start_with(|l| l.stale_if_error = Some(Span(limit))).await;
    let list = h.url(&format!("/repos/{PUBLIC_REPO}/actions/artifacts"));
    let first = get(&list, Some(READER_TOKEN)).await;
    assert_eq!(x_cache(&first), "MISS");

    advance_clock(limit / 2);
    h.sim.knobs().fail_next(1, 503);
    let recent = get(&list, Some(READER_TOKEN)).await;
    assert_eq!((recent.status, x_cache(&recent)), (StatusCode::OK, "STALE"));

    advance_clock(limit / 2 + Duration::from_secs(1));
    h.sim.knobs().fail_next(1, 503);
    let old = get(&list, Some(READER_TOKEN)).await;
    assert_eq!(
        (old.status, x_cache(&old)),
        (StatusCode::SERVICE_UNAVAILABLE, "BYPASS"),
        "an entry served past stale_if_error"
    );
}

/// A client's `Cache-Control: max-age=N` refuses an entry older than N
/// seconds, even a fresh one under `when-stale`; an older limit accepts it.
#[tokio::test]
async fn a_client_max_age_below_the_entry_age_revalidates() {
    let _turn = TURN.lock().await;
    let h = Harness::start_with(when_stale).await;
    let url = h.url(&format!("/repos/{PUBLIC_REPO}/actions/artifacts"));
    assert_eq!(x_cache(&get(&url, Some(READER_TOKEN)).await), "MISS");
    // Aged a third of MAX_FRESH (10 s): fresh, but older than max-age=5.
    advance_clock(MAX_FRESH / 3);
    let ask = |max_age: u64| {
        let url = url.clone();
        async move {
            let directive = format!("max-age={max_age}");
            let reply = get_with(&url, Some(READER_TOKEN), &[("cache-control", &directive)]).await;
            x_cache(&reply).to_owned()
        }
    };
    assert_eq!(ask(20).await, "HIT");
    assert_eq!(h.sim.counters().list_repo, 1);
    assert_eq!(ask(5).await, "REVALIDATED");
    assert_eq!(h.sim.counters().list_repo, 2);
    // The revalidated entry is young again: max-age=5 accepts it.
    assert_eq!(ask(5).await, "HIT");
    assert_eq!(h.sim.counters().list_repo, 2);
}

/// A revalidation that finds nothing changed writes to disk only when the
/// disk lags `PERSIST_EVERY` (30 s) or more behind: after a restart the
/// entry is as young as that last 304, not as its first 200.
#[tokio::test]
async fn a_revalidation_after_the_disk_lagged_survives_a_restart() {
    let _turn = TURN.lock().await;
    let mut h = Harness::start_with(when_stale).await;
    let url = h.url(&format!("/repos/{PUBLIC_REPO}/actions/artifacts"));
    assert_eq!(x_cache(&get(&url, Some(READER_TOKEN)).await), "MISS");
    // Stale, and the disk's record is older than PERSIST_EVERY.
    advance_clock(MAX_FRESH + Duration::from_secs(1));
    assert_eq!(x_cache(&get(&url, Some(READER_TOKEN)).await), "REVALIDATED");

    h.restart_mirror().await;
    let after = get(&url, Some(READER_TOKEN)).await;
    assert_eq!(
        x_cache(&after),
        "HIT",
        "the disk kept the first 200's time, not the last 304's"
    );
    let c = h.sim.counters();
    assert_eq!((c.list_repo, c.not_modified), (2, 1));
}

/// Longer than the simulator's `max-age=60`: a renewal's JSON entry goes
/// stale before the grant it renewed stops being young.
const LONG_FRESH: Duration = Duration::from_secs(120);

fn when_stale_long(l: &mut Layer) {
    l.revalidate = Some(Revalidate::WhenStale);
    l.max_fresh = Some(Span(LONG_FRESH));
}

/// A renewal upstream answered (200, then 304) makes the grant young again
/// for `max_fresh`: the downloads within it ask upstream nothing, though
/// the renewal's JSON entry is stale by then.
#[tokio::test]
async fn a_renewal_upstream_confirmed_makes_the_grant_young_again() {
    let _turn = TURN.lock().await;
    let h = Harness::start_with(when_stale_long).await;
    let (_, zip, path) = private_zip(&h, 9002, "renewed");
    let download = || async {
        let before = h.sim.counters().api_requests;
        let blob = zip_via_mirror(&h, &path, Some(READER_TOKEN))
            .await
            .expect("upstream allows the reader");
        assert_eq!(blob.body, zip);
        h.sim.counters().api_requests - before
    };
    assert_eq!(download().await, 1, "the download endpoint's 302");
    h.until_stored(1).await;
    // The first renewal's metadata is a 200, the second's a 304; each is
    // followed, past the JSON's 60 s, by a download on the young grant.
    for renewal in ["200", "304"] {
        advance_clock(LONG_FRESH + Duration::from_secs(1));
        assert_eq!(download().await, 1, "the renewal ({renewal}) asks upstream");
        advance_clock(Duration::from_secs(61));
        assert_eq!(
            download().await,
            0,
            "the renewal's {renewal} did not make the grant young again"
        );
    }
}

/// A fresh cached answer standing in for upstream is no new "yes": the
/// grant stays as old as upstream's last one, and once upstream says no
/// (and the entry is stale) the download is refused.
#[tokio::test]
async fn a_fresh_cached_answer_does_not_make_a_grant_young_again() {
    let _turn = TURN.lock().await;
    let h = Harness::start_with(when_stale_long).await;
    let (id, zip, path) = private_zip(&h, 9003, "not-renewed");
    zip_via_mirror(&h, &path, Some(READER_TOKEN))
        .await
        .expect("upstream allows the reader");
    h.until_stored(1).await;

    // The metadata is cached (the key a renewal uses) while the grant is young.
    advance_clock(Duration::from_secs(100));
    let meta = h.url(&format!("/repos/{PRIVATE_REPO}/actions/artifacts/{}", id));
    let accept = [("accept", "application/vnd.github+json")];
    assert_eq!(
        x_cache(&get_with(&meta, Some(READER_TOKEN), &accept).await),
        "MISS"
    );
    // Past max_fresh the grant is due, and the fresh entry renews it.
    advance_clock(Duration::from_secs(25));
    let asked = h.sim.counters().api_requests;
    let renewed = zip_via_mirror(&h, &path, Some(READER_TOKEN))
        .await
        .expect("the fresh entry allows the reader");
    assert_eq!(renewed.body, zip);
    assert_eq!(h.sim.counters().api_requests, asked, "a fresh hit");

    h.sim.knobs().revoke_private_access(READER_TOKEN);
    // Within max_fresh of that hit, but the entry is stale: upstream decides.
    advance_clock(Duration::from_secs(40));
    match zip_via_mirror(&h, &path, Some(READER_TOKEN)).await {
        Ok(blob) => panic!(
            "a fresh cached answer renewed the grant: a revoked credential got \
             {} bytes (status {})",
            blob.body.len(),
            blob.status
        ),
        Err(denied) => assert_eq!(denied.status, StatusCode::NOT_FOUND),
    }
}
