//! A client's own `Cache-Control: no-cache` or `Pragma: no-cache` makes a
//! fresh entry revalidate with upstream (RFC 9111 §5.2.1), even under
//! `when-stale` where a fresh entry otherwise answers alone; so does a
//! `min-fresh` beyond the entry's time to live. (cargo-mutants found nothing
//! failing when the request's directives were ignored.) `max-age`, which
//! needs the entry to age, is in tests/time_passing.rs.

mod common;

use artifact_mirror::config::Revalidate;
use common::{get_with, Harness};
use ghes_sim::fixtures::{PUBLIC_REPO, READER_TOKEN};

#[tokio::test]
async fn no_cache_from_the_client_revalidates_a_fresh_entry() {
    let h = Harness::start_with(|l| l.revalidate = Some(Revalidate::WhenStale)).await;
    let url = h.url(&format!("/repos/{PUBLIC_REPO}/actions/artifacts"));
    let x_cache = |r: &common::Reply| r.header("x-cache").unwrap_or("(none)").to_owned();
    assert_eq!(
        x_cache(&get_with(&url, Some(READER_TOKEN), &[]).await),
        "MISS"
    );
    assert_eq!(
        x_cache(&get_with(&url, Some(READER_TOKEN), &[]).await),
        "HIT"
    );
    assert_eq!(h.sim.counters().list_repo, 1);
    for directive in [("cache-control", "no-cache"), ("pragma", "no-cache")] {
        let before = h.sim.counters().list_repo;
        let reply = get_with(&url, Some(READER_TOKEN), &[directive]).await;
        assert_eq!(x_cache(&reply), "REVALIDATED", "{directive:?}");
        assert_eq!(h.sim.counters().list_repo, before + 1, "{directive:?}");
    }
    // Without the directive the entry is fresh again: no upstream call.
    assert_eq!(
        x_cache(&get_with(&url, Some(READER_TOKEN), &[]).await),
        "HIT"
    );
    assert_eq!(h.sim.counters().list_repo, 3);
}

/// The simulator says `max-age=60`: a new entry has about 60 s to live, so
/// `min-fresh=50` accepts it and `min-fresh=70` does not.
#[tokio::test]
async fn min_fresh_beyond_the_time_to_live_revalidates() {
    let h = Harness::start_with(|l| l.revalidate = Some(Revalidate::WhenStale)).await;
    let url = h.url(&format!("/repos/{PUBLIC_REPO}/actions/artifacts"));
    let x_cache = |r: &common::Reply| r.header("x-cache").unwrap_or("(none)").to_owned();
    let with = |d: &'static str| [("cache-control", d)];
    assert_eq!(
        x_cache(&get_with(&url, Some(READER_TOKEN), &[]).await),
        "MISS"
    );
    assert_eq!(
        x_cache(&get_with(&url, Some(READER_TOKEN), &with("min-fresh=50")).await),
        "HIT"
    );
    assert_eq!(h.sim.counters().list_repo, 1);
    assert_eq!(
        x_cache(&get_with(&url, Some(READER_TOKEN), &with("min-fresh=70")).await),
        "REVALIDATED"
    );
    assert_eq!(h.sim.counters().list_repo, 2);
}
