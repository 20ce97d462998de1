//! Forwarding overhead: one list request answered by the simulator directly
//! (the baseline, measured in the same run) against the same request through
//! the mirror. Read the result as the ratio of the two.
//!
//! `handler/*`: the mirror's own work for a fresh hit, without sockets or
//! hyper: `App::handle` on a cached list answer (`when-stale`) against a
//! baseline that builds the same request and clones the same headers and
//! body from memory. What is left of a fresh hit's cost beyond this is
//! hyper, tokio and the kernel.

use std::time::Duration;

use artifact_mirror::config::{Layer, Settings};
use artifact_mirror::credential::ConnCredential;
use artifact_mirror::server::Server;
use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use ghes_sim::fixtures::{PUBLIC_REPO, READER_TOKEN};
use ghes_sim::{Sim, SimConfig};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

fn forward(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let (sim, mirror) = rt.block_on(async {
        let sim = Sim::start(SimConfig {
            // Enough for every iteration criterion may run.
            rate_limit: u32::MAX,
            ..SimConfig::default()
        })
        .await
        .expect("sim");
        let settings = Settings::resolve(Layer {
            upstream: Some(sim.api_base().parse().expect("url")),
            listen: Some("127.0.0.1:0".parse().expect("addr")),
            data_dir: Some(dir.path().to_owned()),
            ..Layer::default()
        })
        .expect("settings");
        let server = Server::bind(&settings).await.expect("bind");
        let addr = server.local_addr().expect("addr");
        tokio::spawn(server.run(std::future::pending()));
        (sim, addr)
    });
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let path = format!("/repos/{PUBLIC_REPO}/actions/artifacts?per_page=5");
    let direct = format!("{}{path}", sim.api_base());
    let through = format!("http://{mirror}/api/v3{path}");

    let mut group = c.benchmark_group("list_artifacts");
    group.measurement_time(Duration::from_secs(5));
    for (name, url) in [
        ("direct_to_simulator", &direct),
        ("through_mirror", &through),
    ] {
        let uri: http::Uri = url.parse().expect("uri");
        group.bench_function(name, |b| {
            b.iter(|| {
                rt.block_on(async {
                    let request = http::Request::get(uri.clone())
                        .header("authorization", format!("token {READER_TOKEN}"))
                        .body(Empty::new())
                        .expect("request");
                    let response = client.request(request).await.expect("answer");
                    assert!(response.status().is_success());
                    response
                        .into_body()
                        .collect()
                        .await
                        .expect("body")
                        .to_bytes()
                })
            })
        });
    }
    group.finish();
}

fn handler(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let path = format!("/api/v3/repos/{PUBLIC_REPO}/actions/artifacts?per_page=5");
    let (_sim, app, cached) = rt.block_on(async {
        let sim = Sim::start(SimConfig::default()).await.expect("sim");
        let settings = Settings::resolve(Layer {
            upstream: Some(sim.api_base().parse().expect("url")),
            listen: Some("127.0.0.1:0".parse().expect("addr")),
            data_dir: Some(dir.path().to_owned()),
            revalidate: Some(artifact_mirror::config::Revalidate::WhenStale),
            ..Layer::default()
        })
        .expect("settings");
        let server = Server::bind(&settings).await.expect("bind");
        let app = server.app();
        // The first call fills the cache (a miss); keep its answer as the
        // baseline's bytes.
        let first = request(&path);
        let client = client_info(&app, &ConnCredential::default(), &first);
        let response = app.handle(first, client).await;
        let (parts, body) = response.into_parts();
        let body = body.collect().await.expect("body").to_bytes();
        (sim, app, (parts.headers, body))
    });
    let held = ConnCredential::default();
    let sized = request(&path);
    let client = client_info(&app, &held, &sized);
    eprintln!(
        "size of the App::handle future: {} bytes",
        std::mem::size_of_val(&app.handle(sized, client))
    );
    let mut group = c.benchmark_group("handler");
    group.measurement_time(Duration::from_secs(5));
    group.bench_function("baseline_clone_from_memory", |b| {
        b.iter(|| {
            rt.block_on(async {
                // The same request is built (hyper would have parsed it) and
                // dropped, so only the handler's own work differs.
                drop(std::hint::black_box(request(&path)));
                let mut response = http::Response::new(http_body_util::Full::new(cached.1.clone()));
                *response.headers_mut() = cached.0.clone();
                response
                    .into_body()
                    .collect()
                    .await
                    .expect("body")
                    .to_bytes()
            })
        })
    });
    // A keep-alive connection's requests after its first (the credential
    // is held), and a connection's first request (it is hashed).
    for (name, fresh_connection) in [
        ("fresh_hit", false),
        ("fresh_hit_first_on_connection", true),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| {
                rt.block_on(async {
                    let request = request(&path);
                    let new = ConnCredential::default();
                    let conn = if fresh_connection { &new } else { &held };
                    let client = client_info(&app, conn, &request);
                    let response = app.handle(request, client).await;
                    assert_eq!(response.headers()["x-cache"], "HIT");
                    response
                        .into_body()
                        .collect()
                        .await
                        .expect("body")
                        .to_bytes()
                })
            })
        });
    }
    group.finish();
}

fn request(path: &str) -> http::Request<Empty<Bytes>> {
    http::Request::get(path)
        .header("host", "127.0.0.1:8080")
        .header("authorization", format!("token {READER_TOKEN}"))
        .header("accept", "application/vnd.github+json")
        .header("user-agent", "bench")
        .body(Empty::new())
        .expect("request")
}

/// The client of one keep-alive connection: its credential as the server
/// finds it for each request (hashed once, then held for the connection).
fn client_info(
    app: &artifact_mirror::app::App,
    held: &ConnCredential,
    request: &http::Request<Empty<Bytes>>,
) -> artifact_mirror::upstream::ClientInfo {
    artifact_mirror::upstream::ClientInfo {
        peer: std::net::Ipv4Addr::LOCALHOST.into(),
        tls: false,
        route: "",
        credential: app.credential(held, request.headers()),
    }
}

criterion_group!(benches, forward, handler);
criterion_main!(benches);
