//! The mirror as a plain forwarding proxy in front of the simulator: every
//! route reaches upstream and comes back unchanged, headers are handled as a
//! proxy must, bad input stops at the mirror, upstream failures map to
//! 502/504.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{get, request, send, Harness, Reply};
use ghes_sim::fixtures::{
    ADMIN_TOKEN, OUTSIDER_TOKEN, PRIVATE_REPO, PRIVATE_REPO_ID, PUBLIC_REPO, PUBLIC_REPO_ID,
    READER_TOKEN,
};
use http::{Method, Request, StatusCode};
use http_body_util::Full;

/// Headers GitHub (and the simulator) set that must arrive untouched.
const KEPT: &[&str] = &[
    "content-type",
    "cache-control",
    "etag",
    "x-ratelimit-limit",
    "x-ratelimit-resource",
    "x-github-media-type",
    "x-github-enterprise-version",
    "link",
];

/// Compares an answer through the mirror with upstream's own. `rewritten`
/// is `Some((upstream base, mirror base))` for cached JSON, whose URLs the
/// mirror moves to itself.
fn assert_same_answer(
    via_mirror: &Reply,
    direct: &Reply,
    rewritten: Option<(&str, &str)>,
    what: &str,
) {
    let moved = |text: &str| match rewritten {
        Some((from, to)) => text.replace(from, to),
        None => text.to_owned(),
    };
    assert_eq!(via_mirror.status, direct.status, "{what}: status");
    assert_eq!(
        String::from_utf8_lossy(&via_mirror.body),
        moved(&String::from_utf8_lossy(&direct.body)),
        "{what}: body"
    );
    for name in KEPT {
        let expected: Vec<String> = direct.all(name).iter().map(|v| moved(v)).collect();
        assert_eq!(via_mirror.all(name), expected, "{what}: header {name}");
    }
    assert_eq!(via_mirror.all("vary"), direct.all("vary"), "{what}: vary");
    // A signed blob URL carries its expiry second: compare all but the query.
    let unsigned = |r: &Reply| {
        r.header("location")
            .map(|l| l.split('?').next().map(str::to_owned))
    };
    assert_eq!(unsigned(via_mirror), unsigned(direct), "{what}: location");
}

fn first_artifact(sim: &ghes_sim::Sim, repo: &str) -> ghes_sim::Artifact {
    sim.artifacts(repo)
        .into_iter()
        .find(|a| !a.expired)
        .expect("seeded artifact")
}

#[tokio::test]
async fn every_artifact_route_is_forwarded_in_both_forms() {
    let h = Harness::start().await;
    let art = first_artifact(&h.sim, PRIVATE_REPO);
    let by_name = format!("/repos/{PRIVATE_REPO}");
    let by_id = format!("/repositories/{PRIVATE_REPO_ID}");
    for base in [&by_name, &by_id] {
        let json = Some((h.sim.api_base(), h.url("")));
        let json = json.as_ref().map(|(a, b)| (a.as_str(), b.as_str()));
        for (path, rewritten) in [
            (format!("{base}/actions/artifacts?per_page=2"), json),
            (
                format!("{base}/actions/runs/{}/artifacts", art.run_id),
                json,
            ),
            (format!("{base}/actions/artifacts/{}", art.id), json),
        ] {
            let direct = get(&h.direct_url(&path), Some(READER_TOKEN)).await;
            let mirrored = get(&h.url(&path), Some(READER_TOKEN)).await;
            assert_same_answer(&mirrored, &direct, rewritten, &path);
        }
    }
    let c = h.sim.counters();
    assert_eq!((c.list_repo, c.list_run, c.get), (4, 4, 4));
}

#[tokio::test]
async fn delete_is_forwarded_with_upstream_permission_answers() {
    let h = Harness::start().await;
    let art = first_artifact(&h.sim, PUBLIC_REPO);
    let path = h.url(&format!(
        "/repositories/{PUBLIC_REPO_ID}/actions/artifacts/{}",
        art.id
    ));
    let denied = send(request(Method::DELETE, &path, Some(READER_TOKEN))).await;
    assert_eq!(denied.status, StatusCode::FORBIDDEN);
    assert_eq!(
        denied.json()["message"],
        "You must have push access to this repository."
    );
    let done = send(request(Method::DELETE, &path, Some(ADMIN_TOKEN))).await;
    assert_eq!(done.status, StatusCode::NO_CONTENT);
    assert!(h.sim.artifact(art.id).is_none());
    assert_eq!(h.sim.counters().delete, 2);
}

#[tokio::test]
async fn upstream_errors_reach_the_client_unchanged() {
    let h = Harness::start().await;
    let list = format!("/repos/{PRIVATE_REPO}/actions/artifacts");
    for token in [None, Some(OUTSIDER_TOKEN), Some("ghp_bogus")] {
        let direct = get(&h.direct_url(&list), token).await;
        let mirrored = get(&h.url(&list), token).await;
        assert!(direct.status.is_client_error(), "{token:?}");
        assert_same_answer(&mirrored, &direct, None, &format!("{token:?}"));
    }
    // Rate-limit headers come from upstream and keep counting down.
    let repo = h.url(&format!("/repos/{PRIVATE_REPO}"));
    let a = get(&repo, Some(READER_TOKEN)).await;
    let b = get(&repo, Some(READER_TOKEN)).await;
    let remaining = |r: &Reply| -> u32 {
        r.header("x-ratelimit-remaining")
            .and_then(|v| v.parse().ok())
            .expect("remaining")
    };
    assert_eq!(remaining(&a), remaining(&b) + 1);
}

#[tokio::test]
async fn a_conditional_request_reaches_upstream_and_its_304_comes_back() {
    // A forwarded route, and the client's own ETag from upstream itself (on
    // the cached routes the mirror sends its entry's ETag instead).
    let h = Harness::start().await;
    let path = format!("/repos/{PUBLIC_REPO}");
    let direct = get(&h.direct_url(&path), Some(READER_TOKEN)).await;
    let etag = direct.header("etag").expect("etag").to_owned();
    let again = Request::get(h.url(&path))
        .header("authorization", format!("token {READER_TOKEN}"))
        .header("if-none-match", &etag)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let r = send(again).await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED);
    assert!(r.body.is_empty());
    assert_eq!(h.sim.counters().not_modified, 1);
    let forwarded = h.sim.requests().pop().expect("the forwarded request");
    assert_eq!(forwarded.header("if-none-match"), Some(etag.as_str()));
}

#[tokio::test]
async fn other_routes_are_forwarded_with_bodies_both_ways() {
    let h = Harness::start().await;
    let meta = get(&h.url("/meta"), None).await;
    let direct = get(&h.direct_url("/meta"), None).await;
    assert_same_answer(&meta, &direct, None, "/meta");
    assert_eq!(h.sim.counters().other, 2);

    // 3 MiB of non-repeating bytes up and back down.
    let payload: Vec<u8> = (0..3 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let post = Request::post(h.url("/markdown/raw"))
        .header("content-type", "text/plain")
        .body(Full::new(Bytes::from(payload.clone())))
        .unwrap();
    let echoed = send(post).await;
    assert_eq!(echoed.status, StatusCode::OK);
    assert_eq!(echoed.body.len(), payload.len());
    assert!(echoed.body == payload, "echoed body differs");
    let recorded = h.sim.requests();
    let last = recorded.last().expect("recorded");
    assert_eq!(last.body_len, payload.len());
}

/// Forwarding headers a client can write to pose as another address,
/// scheme or host; without `trust_forwarded_headers` none may reach GHES.
const FORGED: &[(&str, &str)] = &[
    (
        "forwarded",
        "for=198.51.100.7;proto=https;host=evil.example",
    ),
    ("x-real-ip", "198.51.100.7"),
    ("x-forwarded-port", "443"),
    ("x-forwarded-prefix", "/evil"),
    ("x-client-ip", "198.51.100.7"),
    ("client-ip", "198.51.100.7"),
    ("true-client-ip", "198.51.100.7"),
    ("x-forwarded-ssl", "on"),
];

#[tokio::test]
async fn header_hygiene_toward_upstream_and_back() {
    let h = Harness::start().await;
    let url = h.url(&format!("/repos/{PUBLIC_REPO}/actions/artifacts"));
    let mut req = Request::get(&url)
        .header("authorization", format!("token {READER_TOKEN}"))
        .header("connection", "keep-alive, x-hop-secret")
        .header("x-hop-secret", "must not travel")
        .header("keep-alive", "timeout=5")
        .header("proxy-authorization", "Basic Zm9vOmJhcg==")
        .header("te", "trailers")
        .header("x-forwarded-for", "203.0.113.9")
        .header("x-forwarded-host", "evil.example")
        .header("x-forwarded-proto", "https")
        .header("x-github-api-version", "2022-11-28")
        .body(Full::new(Bytes::new()))
        .unwrap();
    for (name, value) in FORGED {
        req.headers_mut().insert(*name, value.parse().unwrap());
    }
    let r = send(req).await;
    assert_eq!(r.status, StatusCode::OK);
    // Two Vary lines and the Via of this hop on the way back.
    assert_eq!(r.all("vary").len(), 2);
    assert_eq!(r.all("via"), ["1.1 artifact-mirror"]);

    let seen = h.sim.requests();
    let upstream = seen.last().expect("request reached the simulator");
    let header = |name: &str| -> Vec<&str> {
        upstream
            .headers
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    assert_eq!(header("host"), [h.sim.api_addr().to_string()]);
    assert_eq!(header("authorization"), [format!("token {READER_TOKEN}")]);
    assert_eq!(header("x-github-api-version"), ["2022-11-28"]);
    // Untrusted client-supplied forwarding headers are replaced.
    assert_eq!(header("x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(header("x-forwarded-proto"), ["http"]);
    assert!(header("x-forwarded-host").is_empty());
    assert_eq!(header("via"), ["1.1 artifact-mirror"]);
    for (forged, _) in FORGED {
        assert!(header(forged).is_empty(), "{forged} was forwarded");
    }
    for hop in [
        "x-hop-secret",
        "keep-alive",
        "proxy-authorization",
        "te",
        "upgrade",
    ] {
        assert!(header(hop).is_empty(), "{hop} was forwarded");
    }
}

#[tokio::test]
async fn trusted_forwarding_headers_are_appended() {
    let h = Harness::start_with(|l| l.trust_forwarded_headers = Some(true)).await;
    let req = Request::get(h.url("/meta"))
        .header("x-forwarded-for", "203.0.113.9")
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "ci.example.com")
        .header("x-real-ip", "203.0.113.9")
        .header("forwarded", "for=203.0.113.9;proto=https")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(send(req).await.status, StatusCode::OK);
    let seen = h.sim.requests();
    let upstream = seen.last().expect("recorded");
    let get = |name: &str| {
        upstream
            .headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(
        get("x-forwarded-for").as_deref(),
        Some("203.0.113.9, 127.0.0.1")
    );
    assert_eq!(get("x-forwarded-proto").as_deref(), Some("https"));
    assert_eq!(get("x-forwarded-host").as_deref(), Some("ci.example.com"));
    assert_eq!(get("x-real-ip").as_deref(), Some("203.0.113.9"));
    assert_eq!(
        get("forwarded").as_deref(),
        Some("for=203.0.113.9;proto=https, for=127.0.0.1;proto=http")
    );
}

/// Each malformed request gets a GitHub-style 4xx from the mirror and
/// nothing reaches the simulator.
#[tokio::test]
async fn bad_input_stops_at_the_mirror() {
    let h = Harness::start().await;
    let table: &[(Method, &str, u16, &str)] = &[
        (
            Method::GET,
            "/repos/octo-org/public-repo/../private-repo/actions/artifacts",
            400,
            "`.` or `..`",
        ),
        (
            Method::GET,
            "/repos/octo-org/%2e%2e/actions/artifacts",
            400,
            "`.` or `..`",
        ),
        (
            Method::GET,
            "/repos/octo-org%2Fpublic-repo/x/actions/artifacts",
            400,
            "encoded",
        ),
        (
            Method::GET,
            "/repos/octo-org/public-repo%5C/actions/artifacts",
            400,
            "encoded",
        ),
        (
            Method::GET,
            "/repos/octo$org/public-repo/actions/artifacts",
            400,
            "owner",
        ),
        (
            Method::GET,
            "/repos/octo-org/public%20repo/actions/artifacts",
            400,
            "repository name",
        ),
        (
            Method::GET,
            "/repos/octo-org/public-repo/actions/artifacts/abc",
            400,
            "artifact id",
        ),
        (
            Method::DELETE,
            "/repos/octo-org/public-repo/actions/artifacts/1e3",
            400,
            "artifact id",
        ),
        (
            Method::GET,
            "/repos/octo-org/public-repo/actions/artifacts/99999999999999999999",
            400,
            "artifact id",
        ),
        (
            Method::GET,
            "/repos/octo-org/public-repo/actions/runs/-5/artifacts",
            400,
            "run id",
        ),
        (
            Method::GET,
            "/repositories/0x3e9/actions/artifacts",
            400,
            "repository id",
        ),
        (
            Method::GET,
            "/repos/octo-org/public-repo/actions/artifacts/1/tar",
            400,
            "zip",
        ),
        (
            Method::GET,
            "/repos/octo-org/public-repo/actions/artifacts/1/zip/more",
            404,
            "Not Found",
        ),
        // Empty segments: upstream would still route these, past the
        // mirror's checks, cache and blob store.
        (
            Method::GET,
            "/repos/octo-org/public-repo//actions/artifacts/1/zip",
            400,
            "empty segments",
        ),
        (
            Method::GET,
            "//repos/octo-org/public-repo/actions/artifacts",
            400,
            "empty segments",
        ),
        (
            Method::DELETE,
            "/repos/octo-org/public-repo/actions//artifacts/1",
            400,
            "empty segments",
        ),
        (Method::GET, "/meta/", 400, "empty segments"),
    ];
    for (method, path, status, needle) in table {
        let r = send(request(method.clone(), &h.url(path), Some(ADMIN_TOKEN))).await;
        assert_eq!(r.status.as_u16(), *status, "{method} {path}");
        let body = r.json();
        let message = body["message"].as_str().unwrap_or_default();
        assert!(message.contains(needle), "{path}: {message}");
        assert!(body["documentation_url"].is_string(), "{path}");
        assert_eq!(
            r.header("content-type"),
            Some("application/json; charset=utf-8")
        );
    }
    // Outside the API base path: the mirror's own 404.
    let r = get(&format!("http://{}/elsewhere", h.mirror), None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(h.sim.counters().api_requests, 0, "{:?}", h.sim.requests());
}

#[tokio::test]
async fn oversized_request_head_gets_431() {
    let h = Harness::start_with(|l| l.max_header_bytes = Some(16 * 1024)).await;
    let big = "x".repeat(20 * 1024);
    let req = Request::get(h.url("/meta"))
        .header("x-big", big)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let r = send(req).await;
    assert_eq!(r.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    assert_eq!(h.sim.counters().api_requests, 0);
}

#[tokio::test]
async fn unreachable_upstream_is_502_and_slow_upstream_is_504() {
    // A port nobody listens on: a freed ephemeral port could be taken again
    // at once by this harness's own simulator or a parallel test's (this
    // test then saw 200); port 9 is what common::serve_command uses.
    let h = Harness::start_with(|l| {
        l.upstream = Some("http://127.0.0.1:9/api/v3".parse().unwrap());
    })
    .await;
    let r = get(&h.url("/meta"), None).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert!(r.json()["message"]
        .as_str()
        .unwrap_or_default()
        .starts_with("Upstream unreachable"));

    let h = Harness::start_with(|l| {
        l.upstream_timeout = Some("300ms".parse().unwrap());
    })
    .await;
    h.sim.knobs().set_latency(Duration::from_secs(3));
    let r = get(&h.url("/meta"), None).await;
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(r.json()["message"], "Upstream did not answer within 300ms");
}

#[tokio::test]
async fn upstream_5xx_passes_through() {
    let h = Harness::start().await;
    h.sim.knobs().fail_next(1, 503);
    let r = get(
        &h.url(&format!("/repos/{PUBLIC_REPO}/actions/artifacts")),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    let ok = get(
        &h.url(&format!("/repos/{PUBLIC_REPO}/actions/artifacts")),
        None,
    )
    .await;
    assert_eq!(ok.status, StatusCode::OK);
}

#[tokio::test]
async fn h2c_clients_are_served() {
    let h = Harness::start().await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<Bytes>>();
    let r = common::send_with(&client, request(Method::GET, &h.url("/meta"), None)).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body, get(&h.direct_url("/meta"), None).await.body);
}

#[tokio::test]
async fn health_endpoints_answer_at_the_root() {
    let h = Harness::start().await;
    let alive = get(&format!("http://{}/healthz", h.mirror), None).await;
    assert_eq!(alive.status, StatusCode::OK);
    let ready = get(&format!("http://{}/readyz", h.mirror), None).await;
    assert_eq!(ready.status, StatusCode::OK, "{:?}", ready.body);
    assert_eq!(ready.json()["checks"]["index"], "ok");

    // A data dir that stops taking writes (here: gone) makes it not ready.
    std::fs::remove_dir_all(h.data_dir.path()).unwrap();
    let not_ready = get(&format!("http://{}/readyz", h.mirror), None).await;
    assert_eq!(not_ready.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(not_ready.json()["status"], "not ready");
    assert_ne!(not_ready.json()["checks"]["data_dir"], "ok");
    assert_eq!(h.sim.counters().api_requests, 0);
}

/// Forwarded JSON must not lead clients off the mirror: PyGithub builds
/// artifact URLs from a repository's `url` and asserts they stay on its base.
#[tokio::test]
async fn forwarded_json_urls_point_at_the_mirror() {
    let h = Harness::start().await;
    let r = get_with_gzip(&h.url(&format!("/repos/{PUBLIC_REPO}")), READER_TOKEN).await;
    assert_eq!(r.status, StatusCode::OK);
    let url = r.json()["url"].as_str().unwrap().to_owned();
    assert_eq!(url, h.url(&format!("/repos/{PUBLIC_REPO}")));
    assert_eq!(
        r.header("content-length"),
        Some(r.body.len().to_string().as_str())
    );
    // The simulator saw no Accept-Encoding: bodies come back rewritable.
    let seen = h.sim.requests();
    assert!(seen.last().unwrap().header("accept-encoding").is_none());
}

async fn get_with_gzip(url: &str, token: &str) -> Reply {
    let req = Request::get(url)
        .header("authorization", format!("token {token}"))
        .header("accept-encoding", "gzip")
        .body(Full::new(Bytes::new()))
        .unwrap();
    send(req).await
}
