//! What tells two cached answers apart beyond the credential and the URL:
//! `Accept` and `X-GitHub-Api-Version` choose the representation, and the
//! public base the mirror was reached by is baked into the stored URLs.
//! Under `when-stale` a fresh entry answers without upstream, so a request
//! that differs in any of them must miss, not hit another's entry.

mod common;

use artifact_mirror::config::Revalidate;
use common::{get_with, Harness, Reply};
use ghes_sim::fixtures::{OUTSIDER_TOKEN, PRIVATE_REPO, PUBLIC_REPO, READER_TOKEN};
use http::StatusCode;

fn x_cache(r: &Reply) -> &str {
    r.header("x-cache").unwrap_or("(none)")
}

async fn when_stale() -> (Harness, String) {
    let h = Harness::start_with(|l| l.revalidate = Some(Revalidate::WhenStale)).await;
    let url = h.url(&format!("/repos/{PUBLIC_REPO}/actions/artifacts"));
    (h, url)
}

#[tokio::test]
async fn another_accept_is_another_entry() {
    let (h, url) = when_stale().await;
    let github = [("accept", "application/vnd.github+json")];
    let plain = [("accept", "application/json")];
    assert_eq!(
        x_cache(&get_with(&url, Some(READER_TOKEN), &github).await),
        "MISS"
    );
    assert_eq!(
        x_cache(&get_with(&url, Some(READER_TOKEN), &github).await),
        "HIT"
    );
    assert_eq!(
        x_cache(&get_with(&url, Some(READER_TOKEN), &plain).await),
        "MISS"
    );
    assert_eq!(h.sim.counters().list_repo, 2);
}

#[tokio::test]
async fn another_api_version_is_another_entry() {
    let (h, url) = when_stale().await;
    let v1 = [("x-github-api-version", "2022-11-28")];
    let v2 = [("x-github-api-version", "2026-03-10")];
    assert_eq!(
        x_cache(&get_with(&url, Some(READER_TOKEN), &v1).await),
        "MISS"
    );
    assert_eq!(
        x_cache(&get_with(&url, Some(READER_TOKEN), &v1).await),
        "HIT"
    );
    assert_eq!(
        x_cache(&get_with(&url, Some(READER_TOKEN), &v2).await),
        "MISS"
    );
    assert_eq!(h.sim.counters().list_repo, 2);
}

/// The mirror reached by two names: each gets URLs of its own name.
#[tokio::test]
async fn another_public_base_is_another_entry() {
    let (h, url) = when_stale().await;
    let port = h.mirror.port();
    let (a, b) = (format!("a.example:{port}"), format!("b.example:{port}"));
    let first = get_with(&url, Some(READER_TOKEN), &[("host", &a)]).await;
    assert_eq!(x_cache(&first), "MISS");
    assert!(String::from_utf8_lossy(&first.body).contains(&format!("http://{a}/api/v3/")));
    let second = get_with(&url, Some(READER_TOKEN), &[("host", &b)]).await;
    assert_eq!(x_cache(&second), "MISS");
    let body = String::from_utf8_lossy(&second.body);
    assert!(body.contains(&format!("http://{b}/api/v3/")), "{body}");
    assert!(!body.contains("a.example"), "{body}");
}

/// A connection holds its last `Authorization`'s credential id so a repeated
/// header is hashed once; another header on the same connection (a proxy
/// pooling several clients) must still be its own credential, never served
/// the held one's entry.
#[tokio::test]
async fn tokens_that_change_on_one_connection_keep_their_own_entries() {
    use http_body_util::{BodyExt, Empty};
    use hyper_util::rt::TokioIo;

    let h = Harness::start_with(|l| l.revalidate = Some(Revalidate::WhenStale)).await;
    let stream = tokio::net::TcpStream::connect(h.mirror).await.unwrap();
    let (mut conn, driver) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(driver);
    let path = format!("/api/v3/repos/{PRIVATE_REPO}/actions/artifacts");
    let mut ask = |token: Option<&str>| {
        let mut request = http::Request::get(&path).header("host", h.mirror.to_string());
        if let Some(token) = token {
            request = request.header("authorization", format!("token {token}"));
        }
        let sent = conn.send_request(request.body(Empty::<bytes::Bytes>::new()).unwrap());
        async move {
            let response = tokio::time::timeout(common::TIMEOUT, sent)
                .await
                .expect("answer in time")
                .expect("answer on the one connection");
            let status = response.status();
            let cache = response
                .headers()
                .get("x-cache")
                .map(|v| v.to_str().unwrap().to_owned());
            response.into_body().collect().await.expect("body");
            (status, cache.unwrap_or_default())
        }
    };
    let ok = |cache: &str| (StatusCode::OK, cache.to_owned());
    assert_eq!(ask(Some(READER_TOKEN)).await, ok("MISS"));
    assert_eq!(ask(Some(READER_TOKEN)).await, ok("HIT"));
    let outsider = ask(Some(OUTSIDER_TOKEN)).await;
    assert_eq!(outsider.0, StatusCode::NOT_FOUND, "{outsider:?}");
    let anonymous = ask(None).await;
    assert_eq!(anonymous.0, StatusCode::NOT_FOUND, "{anonymous:?}");
    assert_eq!(ask(Some(READER_TOKEN)).await, ok("HIT"));
    // Reader's miss, the outsider's and the anonymous 404s: nothing else.
    assert_eq!(h.sim.counters().list_repo, 3);
}
