//! An artifact that expires upstream after its zip was stored: whichever
//! JSON shows it first (a download's renewal, a get, one entry of a list, an
//! `expires_at` gone by), every grant ends, the zip goes, and downloads get
//! the 410 GitHub's download endpoint gives — in both path forms, and at
//! signed blob URLs handed out before.

mod common;

use std::time::{Duration, Instant};

use artifact_mirror::config::Revalidate;
use common::{get, Harness, Reply};
use ghes_sim::fixtures::{ADMIN_TOKEN, PRIVATE_REPO, PRIVATE_REPO_ID, READER_TOKEN};
use ghes_sim::NewArtifact;
use http::StatusCode;

/// GitHub's download endpoint's answer for an expired artifact.
const GITHUB_410: &str = r#"{"message":"Artifact has expired","documentation_url":"https://docs.github.com/rest/actions/artifacts#download-an-artifact"}"#;

fn artifact(h: &Harness, name: &str) -> ghes_sim::Artifact {
    h.sim.add_artifact(NewArtifact {
        repo: PRIVATE_REPO.into(),
        run_id: 7001,
        name: name.into(),
        payload_bytes: 20_000,
        with_digest: false,
        expired: false,
    })
}

fn named(id: u64) -> String {
    format!("/repos/{PRIVATE_REPO}/actions/artifacts/{id}/zip")
}

fn numbered(id: u64) -> String {
    format!("/repositories/{PRIVATE_REPO_ID}/actions/artifacts/{id}/zip")
}

/// Downloads through the mirror, checks the zip, and returns the signed
/// blob URL the mirror handed out.
async fn download(h: &Harness, path: &str, token: &str, id: u64) -> String {
    let first = get(&h.url(path), Some(token)).await;
    assert_eq!(first.status, StatusCode::FOUND, "{path}: {:?}", first.body);
    let location = first.header("location").expect("location").to_owned();
    let zip = get(&location, None).await;
    assert_eq!(zip.status, StatusCode::OK);
    assert_eq!(zip.body, h.sim.zip_bytes(id).expect("zip"));
    location
}

fn assert_github_410(r: &Reply, what: &str) {
    assert_eq!(
        r.status,
        StatusCode::GONE,
        "{what}: {} X-Cache {:?} location {:?}",
        r.status,
        r.header("x-cache"),
        r.header("location")
    );
    assert_eq!(r.body, GITHUB_410, "{what}");
    assert!(r.header("location").is_none(), "{what}");
}

/// The download's own renewal (`GET …/artifacts/{id}`, 200 with
/// `"expired": true`) is no yes: the mirror answers upstream's 410, word for
/// word, under either path form, and drops the zip.
#[tokio::test]
async fn a_renewal_that_shows_expired_answers_410_in_both_path_forms() {
    let h = Harness::start().await;
    let forms: [fn(u64) -> String; 2] = [named, numbered];
    for (n, form) in forms.into_iter().enumerate() {
        let art = artifact(&h, &format!("renewed-{n}"));
        let path = form(art.id);
        let signed = download(&h, &path, READER_TOKEN, art.id).await;
        h.until_stored(1).await;

        h.sim.expire_artifact(art.id);
        let direct = get(&h.direct_url(&path), Some(READER_TOKEN)).await;
        assert_github_410(&direct, "upstream itself");

        h.sim.reset_counters();
        let via_mirror = get(&h.url(&path), Some(READER_TOKEN)).await;
        assert_github_410(&via_mirror, &path);
        assert_eq!(via_mirror.body, direct.body, "{path}: upstream's own words");
        // The renewal's answer was enough: no second unit spent on the
        // download endpoint to hear the same.
        let asked = h.sim.counters();
        assert_eq!((asked.get, asked.download), (1, 0), "{path}");
        assert_eq!(h.stored_files(), 0, "{path}: the zip is dropped");
        // The URL handed out before the expiry gets the same answer.
        assert_github_410(&get(&signed, None).await, "the earlier signed URL");
        // And the other path form, asked next, no zip either.
        let other = if n == 0 { numbered } else { named };
        assert_github_410(
            &get(&h.url(&other(art.id)), Some(READER_TOKEN)).await,
            "the other path form",
        );
    }
}

/// A plain `GET …/artifacts/{id}` by another credential shows the artifact
/// expired: every credential's grant ends there and then, and the zip goes
/// before anyone downloads again.
#[tokio::test]
async fn a_get_that_shows_expired_ends_every_grant() {
    let h = Harness::start().await;
    let art = artifact(&h, "got");
    let signed = download(&h, &named(art.id), READER_TOKEN, art.id).await;
    download(&h, &numbered(art.id), ADMIN_TOKEN, art.id).await;
    h.until_stored(1).await;

    h.sim.expire_artifact(art.id);
    let meta = format!("/repos/{PRIVATE_REPO}/actions/artifacts/{}", art.id);
    let shown = get(&h.url(&meta), Some(ADMIN_TOKEN)).await;
    assert_eq!(shown.status, StatusCode::OK);
    assert_eq!(shown.json()["expired"], true);
    assert_eq!(h.stored_files(), 0, "the get alone drops the zip");

    assert_github_410(&get(&signed, None).await, "the earlier signed URL");
    for (path, token) in [
        (named(art.id), READER_TOKEN),
        (numbered(art.id), READER_TOKEN),
        (named(art.id), ADMIN_TOKEN),
    ] {
        assert_github_410(&get(&h.url(&path), Some(token)).await, &path);
    }
}

/// Only a list (another credential's, of the whole repository) shows the
/// artifact expired; nobody asked for the artifact itself.
#[tokio::test]
async fn only_a_list_shows_expired() {
    let h = Harness::start().await;
    let art = artifact(&h, "listed");
    let signed = download(&h, &named(art.id), READER_TOKEN, art.id).await;
    h.until_stored(1).await;

    h.sim.expire_artifact(art.id);
    let list = get(
        &h.url(&format!(
            "/repos/{PRIVATE_REPO}/actions/artifacts?per_page=100"
        )),
        Some(ADMIN_TOKEN),
    )
    .await;
    assert_eq!(list.status, StatusCode::OK);
    let listed = list.json()["artifacts"]
        .as_array()
        .expect("artifacts")
        .iter()
        .any(|a| a["id"] == art.id && a["expired"] == true);
    assert!(listed, "the list shows it expired");
    assert_eq!(h.stored_files(), 0, "the list alone drops the zip");

    assert_github_410(&get(&signed, None).await, "the earlier signed URL");
    for path in [named(art.id), numbered(art.id)] {
        assert_github_410(&get(&h.url(&path), Some(READER_TOKEN)).await, &path);
    }
}

/// `expires_at` has passed while upstream's `"expired"` is still false and
/// its download endpoint still answers 302 (GHES's expiry job has not run
/// yet): the date alone ends the artifact, for a renewing credential and a
/// new one alike.
#[tokio::test]
async fn an_expires_at_in_the_past_ends_the_artifact() {
    let h = Harness::start().await;
    let art = artifact(&h, "dated");
    let signed = download(&h, &named(art.id), READER_TOKEN, art.id).await;
    h.until_stored(1).await;

    h.sim.set_expires_at(art.id, common::unix_now() - 60);
    let direct = get(&h.direct_url(&named(art.id)), Some(READER_TOKEN)).await;
    assert_eq!(direct.status, StatusCode::FOUND, "upstream still redirects");

    assert_github_410(
        &get(&h.url(&named(art.id)), Some(READER_TOKEN)).await,
        "the renewing reader",
    );
    assert_eq!(h.stored_files(), 0, "the zip is dropped");
    assert_github_410(&get(&signed, None).await, "the earlier signed URL");
    assert_github_410(
        &get(&h.url(&numbered(art.id)), Some(ADMIN_TOKEN)).await,
        "a credential upstream still redirects",
    );
    assert_eq!(h.stored_files(), 0, "no new fill stored it again");
}

/// A list shows the artifact expired while its first fill is still waiting
/// for the blob store: there is no stored zip to drop yet, and the fill,
/// once whole, must not keep one.
#[tokio::test]
async fn a_fill_under_way_when_the_artifact_expires_keeps_nothing() {
    let h = Harness::start().await;
    let art = artifact(&h, "filling");
    h.sim.knobs().delay_blob_answers(Duration::from_secs(2), 1);
    let first = get(&h.url(&named(art.id)), Some(READER_TOKEN)).await;
    assert_eq!(first.status, StatusCode::FOUND);
    assert_eq!(first.header("x-cache"), Some("MISS"));

    h.sim.expire_artifact(art.id);
    let list = get(
        &h.url(&format!(
            "/repos/{PRIVATE_REPO}/actions/artifacts?per_page=100"
        )),
        Some(ADMIN_TOKEN),
    )
    .await;
    assert_eq!(list.status, StatusCode::OK);
    h.until_fills_end().await;
    assert_eq!(h.stored_files(), 0, "the finished fill kept the zip");
    assert_github_410(
        &get(&h.url(&named(art.id)), Some(READER_TOKEN)).await,
        "the reader",
    );
}

/// Under `when-stale` a young grant skips upstream: what ends it is the
/// list another credential made, and an `expires_at` gone by.
#[tokio::test]
async fn a_young_grant_gives_no_zip_of_an_expired_artifact() {
    let h = Harness::start_with(|l| l.revalidate = Some(Revalidate::WhenStale)).await;

    // Shown expired by someone else's list.
    let listed = artifact(&h, "young-listed");
    download(&h, &named(listed.id), READER_TOKEN, listed.id).await;
    h.until_stored(1).await;
    h.sim.expire_artifact(listed.id);
    let list = format!("/repos/{PRIVATE_REPO}/actions/artifacts?per_page=100");
    assert_eq!(
        get(&h.url(&list), Some(ADMIN_TOKEN)).await.status,
        StatusCode::OK
    );
    assert_github_410(
        &get(&h.url(&named(listed.id)), Some(READER_TOKEN)).await,
        "a young grant after a list showed it expired",
    );

    // Its `expires_at`, learned before the download, passes.
    let dated = artifact(&h, "young-dated");
    let expires_at = common::unix_now() + 3;
    h.sim.set_expires_at(dated.id, expires_at);
    let meta = format!("/repos/{PRIVATE_REPO}/actions/artifacts/{}", dated.id);
    assert_eq!(
        get(&h.url(&meta), Some(READER_TOKEN)).await.status,
        StatusCode::OK
    );
    download(&h, &named(dated.id), READER_TOKEN, dated.id).await;
    assert!(
        common::unix_now() < expires_at,
        "downloaded too late to test"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while common::unix_now() <= expires_at {
        assert!(
            Instant::now() < deadline,
            "the clock never passed expires_at"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    h.sim.reset_counters();
    assert_github_410(
        &get(&h.url(&named(dated.id)), Some(READER_TOKEN)).await,
        "a young grant past expires_at",
    );
    assert_eq!(h.sim.counters().api_requests, 0, "no upstream call needed");
}
