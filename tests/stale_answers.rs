//! `stale_if_error`: when upstream fails — an error status, no connection at
//! all, or no answer in time — a recent enough entry answers (`STALE`); an
//! entry older than the limit never does (that one in `time_passing.rs`,
//! which advances the clock).

mod common;

use std::time::Duration;

use common::{get, Harness, Reply};
use ghes_sim::fixtures::{PUBLIC_REPO, READER_TOKEN};
use ghes_sim::{Sim, SimConfig};
use http::StatusCode;

fn x_cache(r: &Reply) -> &str {
    r.header("x-cache").unwrap_or("(none)")
}

fn list(h: &Harness) -> String {
    h.url(&format!("/repos/{PUBLIC_REPO}/actions/artifacts"))
}

/// Upstream gone (connection refused): the entry answers, within the limit;
/// without one the client gets the mirror's 502.
#[tokio::test]
async fn an_unreachable_upstream_gets_a_stale_answer() {
    let mut h = Harness::start_with(|l| l.stale_if_error = Some("1m".parse().unwrap())).await;
    let first = get(&list(&h), Some(READER_TOKEN)).await;
    assert_eq!(first.status, StatusCode::OK);
    // Stop upstream: its listeners and connections close, its port refuses.
    let spare = Sim::start(SimConfig::default()).await.expect("a spare sim");
    std::mem::replace(&mut h.sim, spare).shutdown().await;

    let stale = get(&list(&h), Some(READER_TOKEN)).await;
    assert_eq!((stale.status, x_cache(&stale)), (StatusCode::OK, "STALE"));
    assert_eq!(stale.body, first.body);
    // A list with no entry gets the mirror's own 502.
    let other = h.url(&format!("/repos/{PUBLIC_REPO}/actions/artifacts?page=2"));
    let miss = get(&other, Some(READER_TOKEN)).await;
    assert_eq!(miss.status, StatusCode::BAD_GATEWAY);
}

/// Upstream too slow (past `upstream_timeout`): the entry answers.
#[tokio::test]
async fn a_timed_out_upstream_gets_a_stale_answer() {
    let h = Harness::start_with(|l| {
        l.stale_if_error = Some("1m".parse().unwrap());
        l.upstream_timeout = Some("300ms".parse().unwrap());
    })
    .await;
    let first = get(&list(&h), Some(READER_TOKEN)).await;
    assert_eq!(first.status, StatusCode::OK);
    h.sim.knobs().set_latency(Duration::from_secs(3));
    let stale = get(&list(&h), Some(READER_TOKEN)).await;
    assert_eq!((stale.status, x_cache(&stale)), (StatusCode::OK, "STALE"));
    assert_eq!(stale.body, first.body);
    let other = h.url(&format!("/repos/{PUBLIC_REPO}/actions/artifacts?page=2"));
    let miss = get(&other, Some(READER_TOKEN)).await;
    assert_eq!(miss.status, StatusCode::GATEWAY_TIMEOUT);
}
