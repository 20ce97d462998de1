//! End-to-end checks over real sockets, with a tiny hyper client.

use crate::fixtures::*;
use crate::{NewArtifact, Sim, SimConfig};
use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpStream;

struct Resp {
    status: StatusCode,
    headers: HeaderMap,
    /// `Err` when the connection broke mid-body; holds what arrived.
    body: Result<Bytes, Bytes>,
}

impl Resp {
    fn body(&self) -> &Bytes {
        self.body.as_ref().expect("complete body")
    }
    fn json(&self) -> Value {
        serde_json::from_slice(self.body()).expect("JSON body")
    }
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_else(|| panic!("missing header {name}"))
    }
}

/// One request on a fresh HTTP/1.1 (or h2c) connection.
async fn send(
    addr: SocketAddr,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
    h2: bool,
) -> Resp {
    let io = TokioIo::new(TcpStream::connect(addr).await.expect("connect"));
    let mut req = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    if !h2 {
        req = req.header("host", addr.to_string());
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(body)).expect("request");
    let resp = if h2 {
        let (mut tx, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .expect("h2 handshake");
        tokio::spawn(conn);
        tx.send_request(req).await.expect("send")
    } else {
        let (mut tx, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .expect("handshake");
        tokio::spawn(conn);
        tx.send_request(req).await.expect("send")
    };
    let (parts, mut incoming) = resp.into_parts();
    let mut got = Vec::new();
    let mut broken = false;
    while let Some(frame) = incoming.frame().await {
        match frame {
            Ok(f) => {
                if let Some(d) = f.data_ref() {
                    got.extend_from_slice(d);
                }
            }
            Err(_) => {
                broken = true;
                break;
            }
        }
    }
    let got = Bytes::from(got);
    Resp {
        status: parts.status,
        headers: parts.headers,
        body: if broken { Err(got) } else { Ok(got) },
    }
}

async fn get(sim: &Sim, path: &str, token: Option<&str>) -> Resp {
    let auth = token.map(|t| format!("token {t}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
    send(
        sim.api_addr(),
        Method::GET,
        &format!("/api/v3{path}"),
        &headers,
        Bytes::new(),
        false,
    )
    .await
}

/// Splits an absolute URL on the sim into (addr, path and query).
fn split_url(url: &str) -> (SocketAddr, String) {
    let rest = url.strip_prefix("http://").expect("http URL");
    let (host, path) = rest.split_at(rest.find('/').expect("path"));
    (host.parse().expect("addr"), path.to_string())
}

async fn start() -> Sim {
    Sim::start(SimConfig::default()).await.expect("start")
}

#[tokio::test]
async fn list_over_a_real_socket() {
    let sim = start().await;
    let r = get(&sim, "/repos/octo-org/public-repo/actions/artifacts", None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("content-type"), "application/json; charset=utf-8");
    assert_eq!(r.header("cache-control"), "public, max-age=60, s-maxage=60");
    let vary: Vec<_> = r.headers.get_all("vary").iter().collect();
    assert_eq!(vary.len(), 2);
    assert!(r.header("etag").starts_with("W/\""));
    assert_eq!(r.header("x-ratelimit-limit"), "60");
    assert_eq!(r.header("x-ratelimit-used"), "1");
    assert_eq!(r.header("x-github-enterprise-version"), "3.19.0");
    assert_eq!(r.header("content-length"), r.body().len().to_string());
    assert!(r.headers.get("link").is_none());

    let v = r.json();
    assert_eq!(v["total_count"], 5);
    let arts = v["artifacts"].as_array().unwrap();
    let ids: Vec<u64> = arts.iter().map(|a| a["id"].as_u64().unwrap()).collect();
    assert_eq!(
        ids,
        vec![1_000_005, 1_000_004, 1_000_003, 1_000_002, 1_000_001]
    );
    let first = &arts[0];
    let url = format!(
        "{}/repos/octo-org/public-repo/actions/artifacts/1000005",
        sim.api_base()
    );
    assert_eq!(first["url"], url.as_str());
    assert_eq!(first["archive_download_url"], format!("{url}/zip").as_str());
    assert_eq!(first["workflow_run"]["repository_id"], 1001);
    let art = sim.artifact(1_000_005).unwrap();
    assert_eq!(first["size_in_bytes"], art.size_in_bytes);
    assert_eq!(first["digest"], format!("sha256:{}", art.sha256).as_str());
    // GHES-style: no digest key at all.
    assert!(arts[1].as_object().unwrap().get("digest").is_none());
    assert_eq!(sim.counters().list_repo, 1);
    assert_eq!(sim.counters().rate_limit_used["anonymous"], 1);
    let rec = &sim.requests()[0];
    assert_eq!(
        rec.path_and_query,
        "/api/v3/repos/octo-org/public-repo/actions/artifacts"
    );
    assert_eq!(rec.version, "HTTP/1.1");
    sim.shutdown().await;
}

#[tokio::test]
async fn etags_are_per_token_and_304_is_free() {
    let sim = start().await;
    let path = "/repos/octo-org/private-repo/actions/artifacts/1000006";
    let a = get(&sim, path, Some(ADMIN_TOKEN)).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(
        a.header("cache-control"),
        "private, max-age=60, s-maxage=60"
    );
    let etag = a.header("etag").to_string();
    let strong = etag.trim_start_matches("W/").to_string();
    let h = [
        (
            "authorization",
            "Bearer ghp_simadmin000000000000000000000000000",
        ),
        ("if-none-match", strong.as_str()),
    ];
    let r = send(
        sim.api_addr(),
        Method::GET,
        &format!("/api/v3{path}"),
        &h,
        Bytes::new(),
        false,
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED);
    assert_eq!(r.header("etag"), etag);
    assert_eq!(r.header("x-ratelimit-used"), "1");
    assert!(r.body().is_empty());

    let auth = format!("token {READER_TOKEN}");
    let h = [
        ("authorization", auth.as_str()),
        ("if-none-match", etag.as_str()),
    ];
    let r = send(
        sim.api_addr(),
        Method::GET,
        &format!("/api/v3{path}"),
        &h,
        Bytes::new(),
        false,
    )
    .await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "another token's ETag must not match"
    );
    assert_ne!(r.header("etag"), etag);
    assert_eq!(r.body(), a.body());

    let c = sim.counters();
    assert_eq!((c.get, c.not_modified), (3, 1));
    assert_eq!(c.rate_limit_used["admin"], 1);
    assert_eq!(c.rate_limit_used["reader"], 1);
}

#[tokio::test]
async fn access_rules() {
    let sim = start().await;
    let private = "/repos/octo-org/private-repo/actions/artifacts";
    assert_eq!(get(&sim, private, None).await.status, StatusCode::NOT_FOUND);
    assert_eq!(
        get(&sim, private, Some(OUTSIDER_TOKEN)).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        get(
            &sim,
            "/repositories/1002/actions/artifacts",
            Some(OUTSIDER_TOKEN)
        )
        .await
        .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        get(&sim, private, Some(READER_TOKEN)).await.status,
        StatusCode::OK
    );
    let bad = get(&sim, private, Some(BAD_TOKEN)).await;
    assert_eq!(bad.status, StatusCode::UNAUTHORIZED);
    assert_eq!(bad.json()["message"], "Bad credentials");
    assert_eq!(
        get(
            &sim,
            "/repos/nobody/nothing/actions/artifacts",
            Some(ADMIN_TOKEN)
        )
        .await
        .status,
        StatusCode::NOT_FOUND
    );
    // an artifact of another repo is not visible through this one
    assert_eq!(
        get(
            &sim,
            "/repos/octo-org/public-repo/actions/artifacts/1000009",
            Some(ADMIN_TOKEN)
        )
        .await
        .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        get(&sim, "/repos/octo-org/public-repo", None).await.json()["id"],
        1001
    );
    assert_eq!(
        get(&sim, "/no/such/route", None).await.json()["message"],
        "Not Found"
    );

    let del = |token: &'static str| {
        let auth = format!("token {token}");
        let addr = sim.api_addr();
        async move {
            let h = [("authorization", auth.as_str())];
            send(
                addr,
                Method::DELETE,
                "/api/v3/repos/octo-org/private-repo/actions/artifacts/1000008",
                &h,
                Bytes::new(),
                false,
            )
            .await
        }
    };
    let r = del(READER_TOKEN).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(
        r.json()["message"],
        "You must have push access to this repository."
    );
    assert_eq!(del(ADMIN_TOKEN).await.status, StatusCode::NO_CONTENT);
    assert!(sim.artifact(1_000_008).is_none());
    assert_eq!(del(ADMIN_TOKEN).await.status, StatusCode::NOT_FOUND);
    let dl = get(
        &sim,
        "/repos/octo-org/private-repo/actions/artifacts/1000008/zip",
        Some(ADMIN_TOKEN),
    )
    .await;
    assert_eq!(dl.status, StatusCode::GONE);
    assert_eq!(sim.counters().delete, 3);
}

#[tokio::test]
async fn pagination_links_are_followed_verbatim() {
    let sim = start().await;
    let r = get(
        &sim,
        "/repos/octo-org/public-repo/actions/artifacts?per_page=2",
        Some(ADMIN_TOKEN),
    )
    .await;
    let base = format!("{}/repositories/1001/actions/artifacts", sim.api_base());
    assert_eq!(
        r.header("link"),
        format!(
            "<{base}?per_page=2&page=2>; rel=\"next\", <{base}?per_page=2&page=3>; rel=\"last\""
        )
    );
    let mut ids = Vec::new();
    let mut next = Some(format!(
        "{}/repos/octo-org/public-repo/actions/artifacts?per_page=2",
        sim.api_base()
    ));
    while let Some(url) = next.take() {
        let (addr, path) = split_url(&url);
        let h = [(
            "authorization",
            "token ghp_simadmin000000000000000000000000000",
        )];
        let r = send(addr, Method::GET, &path, &h, Bytes::new(), false).await;
        assert_eq!(r.json()["total_count"], 5);
        ids.extend(
            r.json()["artifacts"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a["id"].as_u64().unwrap()),
        );
        next = r.headers.get("link").and_then(|l| {
            l.to_str()
                .unwrap()
                .split(", ")
                .find(|p| p.ends_with("rel=\"next\""))
                .map(|p| p[1..p.find('>').unwrap()].to_string())
        });
    }
    assert_eq!(ids.len(), 5);

    let named = get(
        &sim,
        "/repos/octo-org/public-repo/actions/artifacts?name=build-linux",
        None,
    )
    .await;
    assert_eq!(named.json()["total_count"], 2);
    let run = get(
        &sim,
        "/repositories/1001/actions/runs/5001/artifacts?direction=asc&per_page=1&page=2",
        None,
    )
    .await;
    assert_eq!(run.json()["total_count"], 3);
    assert_eq!(run.json()["artifacts"][0]["id"], 1_000_002);
    let rbase = format!(
        "{}/repositories/1001/actions/runs/5001/artifacts",
        sim.api_base()
    );
    assert!(run.header("link").contains(&format!(
        "<{rbase}?direction=asc&per_page=1&page=3>; rel=\"next\""
    )));
}

#[tokio::test]
async fn download_redirect_and_blob_host() {
    let sim = start().await;
    let api = "/repos/octo-org/public-repo/actions/artifacts/1000001";
    let anon = get(&sim, &format!("{api}/zip"), None).await;
    assert_eq!(anon.status, StatusCode::FORBIDDEN);
    assert_eq!(
        anon.json()["message"],
        "You must have the actions scope to download artifacts."
    );
    assert_eq!(
        get(&sim, &format!("{api}/tar"), Some(READER_TOKEN))
            .await
            .status,
        StatusCode::NOT_FOUND
    );

    let r = get(&sim, &format!("{api}/zip"), Some(OUTSIDER_TOKEN)).await;
    assert_eq!(r.status, StatusCode::FOUND);
    let location = r.header("location").to_string();
    let (addr, path) = split_url(&location);
    assert_eq!(addr, sim.blob_addr());
    let zip = sim.zip_bytes(1_000_001).unwrap();

    let b = send(addr, Method::GET, &path, &[], Bytes::new(), false).await;
    assert_eq!(b.status, StatusCode::OK);
    assert_eq!(b.header("content-type"), "application/zip");
    assert_eq!(
        b.header("content-disposition"),
        "attachment; filename=\"build-linux.zip\""
    );
    assert_eq!(b.header("content-length"), zip.len().to_string());
    assert_eq!(b.body(), &zip);

    let with_auth = send(
        addr,
        Method::GET,
        &path,
        &[("authorization", "token x")],
        Bytes::new(),
        false,
    )
    .await;
    assert_eq!(with_auth.status, StatusCode::BAD_REQUEST);
    let tampered = send(
        addr,
        Method::GET,
        &path.replace("sig=", "sig=0"),
        &[],
        Bytes::new(),
        false,
    )
    .await;
    assert_eq!(tampered.status, StatusCode::FORBIDDEN);

    let part = send(
        addr,
        Method::GET,
        &path,
        &[("range", "bytes=10-19")],
        Bytes::new(),
        false,
    )
    .await;
    assert_eq!(part.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        part.header("content-range"),
        format!("bytes 10-19/{}", zip.len())
    );
    assert_eq!(part.body(), &zip.slice(10..20));
    let bad = send(
        addr,
        Method::GET,
        &path,
        &[("range", "bytes=999999-")],
        Bytes::new(),
        false,
    )
    .await;
    assert_eq!(bad.status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(
        bad.header("content-range"),
        format!("bytes */{}", zip.len())
    );
    let head = send(addr, Method::HEAD, &path, &[], Bytes::new(), false).await;
    assert_eq!(head.header("content-length"), zip.len().to_string());

    let c = sim.counters();
    assert_eq!(c.blob_gets, 5);
    assert_eq!(c.blob_bytes, zip.len() as u64 + 10);
    assert_eq!(c.download, 3);

    sim.expire_artifact(1_000_001);
    assert_eq!(
        get(&sim, &format!("{api}/zip"), Some(ADMIN_TOKEN))
            .await
            .status,
        StatusCode::GONE
    );
    assert_eq!(
        get(&sim, api, Some(ADMIN_TOKEN)).await.json()["expired"],
        true
    );
}

#[tokio::test]
async fn expired_links_and_cut_connections() {
    let cfg = SimConfig {
        link_ttl: Duration::ZERO,
        seed_artifacts: false,
        ..SimConfig::default()
    };
    let sim = Sim::start(cfg).await.unwrap();
    let art = sim.add_artifact(NewArtifact {
        repo: PRIVATE_REPO.into(),
        run_id: 1,
        name: "big".into(),
        payload_bytes: 1 << 20,
        with_digest: false,
        expired: false,
    });
    assert_eq!(art.id, 1_000_001);
    let r = get(
        &sim,
        &format!("/repos/{PRIVATE_REPO}/actions/artifacts/{}/zip", art.id),
        Some(ADMIN_TOKEN),
    )
    .await;
    let (addr, path) = split_url(r.header("location"));
    let expired = send(addr, Method::GET, &path, &[], Bytes::new(), false).await;
    assert_eq!(expired.status, StatusCode::FORBIDDEN);
    assert!(std::str::from_utf8(expired.body())
        .unwrap()
        .contains("Signature not valid in the specified time frame"));

    // A valid URL, signed the way the API signs it, to exercise the cut.
    let se = (crate::util::now_unix() + 60).to_string();
    let blob_path = format!("/blobs/{}/{}.zip", art.id, art.sha256);
    let sig = sim.state.sign(&blob_path, &se);
    let url = format!("{blob_path}?se={se}&sig={sig}");
    sim.knobs().cut_blob_after(100_000, 1);
    let cut = send(addr, Method::GET, &url, &[], Bytes::new(), false).await;
    assert_eq!(cut.status, StatusCode::OK);
    assert_eq!(cut.header("content-length"), art.size_in_bytes.to_string());
    let partial = cut.body.expect_err("the body must be cut short");
    assert_eq!(partial.len(), 100_000);
    let whole = send(addr, Method::GET, &url, &[], Bytes::new(), true).await;
    assert_eq!(
        whole.body().len() as u64,
        art.size_in_bytes,
        "only one cut was asked for (h2 here)"
    );
    assert_eq!(sim.counters().blob_bytes, 100_000 + art.size_in_bytes);
    assert_eq!(sim.blob_requests()[2].version, "HTTP/2.0");
}

#[tokio::test]
async fn knobs_rate_limit_and_echo() {
    let cfg = SimConfig {
        rate_limit: 3,
        ..SimConfig::default()
    };
    let sim = Sim::start(cfg).await.unwrap();
    sim.knobs().fail_next(2, 502);
    let f = get(&sim, "/meta", Some(ADMIN_TOKEN)).await;
    assert_eq!(f.status, StatusCode::BAD_GATEWAY);
    assert_eq!(f.json()["message"], "Server Error");
    assert_eq!(
        get(&sim, "/meta", Some(ADMIN_TOKEN)).await.status,
        StatusCode::BAD_GATEWAY
    );
    for used in 1..=3 {
        let r = get(&sim, "/meta", Some(ADMIN_TOKEN)).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.header("x-ratelimit-used"), used.to_string());
    }
    let limited = get(&sim, "/meta", Some(ADMIN_TOKEN)).await;
    assert_eq!(limited.status, StatusCode::FORBIDDEN);
    assert_eq!(limited.header("x-ratelimit-remaining"), "0");
    assert_eq!(
        limited.json()["message"],
        "API rate limit exceeded for user ID 1."
    );
    assert_eq!(sim.counters().rate_limit_used["admin"], 3);
    sim.reset_counters();
    assert_eq!(sim.counters(), crate::Counters::default());

    let payload = Bytes::from(vec![b'x'; 300_000]);
    let h = [("content-type", "text/plain")];
    let echo = send(
        sim.api_addr(),
        Method::POST,
        "/api/v3/markdown/raw",
        &h,
        payload.clone(),
        false,
    )
    .await;
    assert_eq!(echo.status, StatusCode::OK);
    assert_eq!(echo.header("content-type"), "text/html;charset=utf-8");
    assert_eq!(echo.body(), &payload);
    assert_eq!(sim.requests().last().unwrap().body_len, payload.len());

    sim.knobs().set_latency(Duration::from_millis(150));
    let t = std::time::Instant::now();
    get(&sim, "/meta", None).await;
    assert!(t.elapsed() >= Duration::from_millis(150));
}

#[tokio::test]
async fn shutdown_closes_the_listeners() {
    let sim = start().await;
    let (api, blob) = (sim.api_addr(), sim.blob_addr());
    sim.shutdown().await;
    assert!(TcpStream::connect(api).await.is_err());
    assert!(TcpStream::connect(blob).await.is_err());
}

#[tokio::test]
async fn advertised_host_names_every_url_it_hands_out() {
    let sim = Sim::start(SimConfig {
        advertise_host: Some("ghes-sim.test".into()),
        ..SimConfig::default()
    })
    .await
    .expect("start");
    let api = format!("http://ghes-sim.test:{}/api/v3", sim.api_addr().port());
    assert_eq!(sim.api_base(), api);

    let list = get(
        &sim,
        &format!("/repos/{PUBLIC_REPO}/actions/artifacts?per_page=1"),
        None,
    )
    .await;
    assert_eq!(list.status, StatusCode::OK);
    assert!(
        list.header("link")
            .starts_with(&format!("<{api}/repositories/")),
        "Link names the advertised host: {}",
        list.header("link")
    );
    let first = &list.json()["artifacts"][0];
    let url = first["url"].as_str().expect("url");
    assert!(url.starts_with(&format!("{api}/repos/")), "{url}");

    let zip = get(
        &sim,
        &format!("/repos/{PUBLIC_REPO}/actions/artifacts/{}/zip", first["id"]),
        Some(READER_TOKEN),
    )
    .await;
    assert_eq!(zip.status, StatusCode::FOUND);
    let blob = format!("http://ghes-sim.test:{}/blobs/", sim.blob_addr().port());
    assert!(
        zip.header("location").starts_with(&blob),
        "{}",
        zip.header("location")
    );
}

#[tokio::test]
async fn runs_list_revalidates_and_shows_a_completed_run() {
    let sim = start().await;
    sim.knobs().set_poll_interval(7);
    let path = "/repos/octo-org/private-repo/actions/runs?status=completed";
    let first = get(&sim, path, Some(READER_TOKEN)).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.header("x-poll-interval"), "7");
    let ids = |r: &Resp| -> Vec<u64> {
        r.json()["workflow_runs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(ids(&first), vec![6001]);
    let etag = first.header("etag").to_owned();
    let auth = format!("token {READER_TOKEN}");
    let conditional = [
        ("authorization", auth.as_str()),
        ("if-none-match", etag.as_str()),
    ];
    let api = format!("/api/v3{path}");
    let again = send(
        sim.api_addr(),
        Method::GET,
        &api,
        &conditional,
        Bytes::new(),
        false,
    )
    .await;
    assert_eq!(again.status, StatusCode::NOT_MODIFIED);

    let done = sim.complete_run(PRIVATE_REPO, 6002, &[("dist", 100)]).await;
    assert!(done.delivered.is_none(), "no webhook set");
    let after = send(
        sim.api_addr(),
        Method::GET,
        &api,
        &conditional,
        Bytes::new(),
        false,
    )
    .await;
    assert_eq!(after.status, StatusCode::OK);
    assert_eq!(ids(&after), vec![6002, 6001]);
    assert_eq!(sim.counters().list_runs, 3);
}

#[tokio::test]
async fn app_token_needs_the_apps_jwt() {
    let sim = start().await;
    sim.enable_github_app(42, 77);
    let now = crate::util::now_unix();
    let jwt = |iss: &str, key: &[u8]| {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
            &serde_json::json!({"iat": now - 60, "exp": now + 540, "iss": iss}),
            &jsonwebtoken::EncodingKey::from_rsa_pem(key).unwrap(),
        )
        .unwrap()
    };
    let post = |installation: u64, bearer: String| {
        let addr = sim.api_addr();
        async move {
            let auth = format!("Bearer {bearer}");
            send(
                addr,
                Method::POST,
                &format!("/api/v3/app/installations/{installation}/access_tokens"),
                &[("authorization", auth.as_str())],
                Bytes::new(),
                false,
            )
            .await
        }
    };
    let good = post(77, jwt("42", APP_PRIVATE_KEY_PEM)).await;
    assert_eq!(good.status, StatusCode::CREATED);
    assert_eq!(good.json()["token"], APP_INSTALLATION_TOKEN);
    assert_eq!(
        post(77, jwt("43", APP_PRIVATE_KEY_PEM)).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        post(77, "not.a.jwt".into()).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        post(78, jwt("42", APP_PRIVATE_KEY_PEM)).await.status,
        StatusCode::NOT_FOUND
    );
    let c = sim.counters();
    assert_eq!((c.app_token_requests, c.app_tokens_minted), (4, 1));
    // The minted token reads private repositories.
    let r = get(
        &sim,
        "/repos/octo-org/private-repo/actions/artifacts",
        Some(APP_INSTALLATION_TOKEN),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
}

#[test]
fn deliveries_are_signed_like_github() {
    // GitHub's documented example: secret "It's a Secret to Everybody",
    // payload "Hello, World!".
    assert_eq!(
        crate::signature("It's a Secret to Everybody", b"Hello, World!"),
        "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    );
}
