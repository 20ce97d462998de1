//! Zip serving: a 64 MiB artifact downloaded from the mirror's store (its
//! blob endpoint, the file already stored) against the same bytes from the
//! simulator's blob host, in the same run, over loopback: one download at a
//! time, then 8 at once. Read the result as the ratio of the throughputs.
//!
//! The simulator serves the zip from memory, the mirror from a file in
//! 128 KiB positional reads on the blocking pool, so the ratio is the price
//! of the store's read path (page cache, chunking, the body wrappers). The 10 Gbit/s goal of the
//! design needs a faster network than loopback on a shared 2-core machine
//! to judge; this tells whether the mirror is the bottleneck.

use std::time::Duration;

use artifact_mirror::config::{Layer, Settings};
use artifact_mirror::server::Server;
use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ghes_sim::fixtures::{PRIVATE_REPO, READER_TOKEN};
use ghes_sim::{NewArtifact, Sim, SimConfig};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

const SIZE: usize = 64 * 1024 * 1024;

fn blobs(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let (_sim, zip_len, direct, through) = rt.block_on(async {
        let sim = Sim::start(SimConfig {
            // The direct URL is reused for the whole bench.
            link_ttl: Duration::from_secs(3600),
            ..SimConfig::default()
        })
        .await
        .expect("sim");
        let art = sim.add_artifact(NewArtifact {
            repo: PRIVATE_REPO.into(),
            run_id: 1,
            name: "bench".into(),
            payload_bytes: SIZE,
            with_digest: true,
            expired: false,
        });
        let zip_len = sim.zip_bytes(art.id).expect("zip").len();
        let settings = Settings::resolve(Layer {
            upstream: Some(sim.api_base().parse().expect("url")),
            listen: Some("127.0.0.1:0".parse().expect("addr")),
            data_dir: Some(dir.path().to_owned()),
            blob_url_ttl: Some("1h".parse().expect("duration")),
            ..Layer::default()
        })
        .expect("settings");
        let server = Server::bind(&settings).await.expect("bind");
        let mirror = server.local_addr().expect("addr");
        tokio::spawn(server.run(std::future::pending()));
        let path = format!("/repos/{PRIVATE_REPO}/actions/artifacts/{}/zip", art.id);
        let direct = location(&client, &format!("{}{path}", sim.api_base())).await;
        let through = location(&client, &format!("http://{mirror}/api/v3{path}")).await;
        // The first download through the mirror fills the store.
        assert_eq!(download(&client, &through).await, zip_len);
        (sim, zip_len, direct, through)
    });

    // One download, then 8 at once: runners of one workflow fetch the same
    // artifact together.
    for (group, at_once, seconds) in [("zip_64mib", 1, 10), ("zip_64mib_8_at_once", 8, 20)] {
        let mut group = c.benchmark_group(group);
        group.throughput(Throughput::Bytes(at_once as u64 * zip_len as u64));
        group.sample_size(10);
        group.measurement_time(Duration::from_secs(seconds));
        for (name, url) in [
            ("direct_from_blob_host", &direct),
            ("from_mirror_store", &through),
        ] {
            group.bench_function(name, |b| {
                b.iter(|| {
                    rt.block_on(async {
                        let mut all = tokio::task::JoinSet::new();
                        for _ in 0..at_once {
                            let (client, url) = (client.clone(), url.clone());
                            all.spawn(async move { download(&client, &url).await });
                        }
                        while let Some(got) = all.join_next().await {
                            assert_eq!(got.expect("download task"), zip_len);
                        }
                    })
                })
            });
        }
        group.finish();
    }
}

/// The `Location` a download endpoint redirects to.
async fn location(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>,
    url: &str,
) -> String {
    let request = http::Request::get(url)
        .header("authorization", format!("token {READER_TOKEN}"))
        .body(Empty::new())
        .expect("request");
    let response = client.request(request).await.expect("answer");
    assert_eq!(response.status(), http::StatusCode::FOUND, "{url}");
    response.headers()["location"]
        .to_str()
        .expect("location")
        .to_owned()
}

/// Downloads `url` whole, frame by frame (never holding it), and answers
/// its length.
async fn download(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>,
    url: &str,
) -> usize {
    let request = http::Request::get(url).body(Empty::new()).expect("request");
    let response = client.request(request).await.expect("answer");
    assert!(
        response.status().is_success(),
        "{url}: {}",
        response.status()
    );
    let mut body = response.into_body();
    let mut len = 0;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.expect("frame").into_data() {
            len += data.len();
        }
    }
    len
}

criterion_group!(benches, blobs);
criterion_main!(benches);
