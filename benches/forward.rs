//! Forwarding overhead: one list request answered by the simulator directly
//! (the baseline, measured in the same run) against the same request through
//! the mirror. Read the result as the ratio of the two.

use std::time::Duration;

use artifact_mirror::config::{Layer, Settings};
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

criterion_group!(benches, forward);
criterion_main!(benches);
