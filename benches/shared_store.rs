//! A zip served from the shared store on a local miss (a replica with an
//! empty disk given a blob URL another replica signed) against a local hit
//! (the same replica, the zip now on its disk) and the same bytes straight
//! from the simulator's blob host, in the same run, over loopback. Read the
//! result as ratios of the times.
//!
//! Needs `moto_server` (`.ci/run` installs it). moto is a Python imitation
//! of S3, so the shared-store figure is moto's speed as much as the
//! mirror's: it bounds the cost of the path, it does not predict S3's.

use std::time::{Duration, Instant};

use artifact_mirror::config::{Layer, Settings};
use artifact_mirror::server::Server;
use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ghes_sim::fixtures::{PRIVATE_REPO, READER_TOKEN};
use ghes_sim::{NewArtifact, Sim, SimConfig};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

const SIZE: usize = 16 * 1024 * 1024;

type Http = Client<HttpConnector, Empty<Bytes>>;

/// moto on a free port with the bucket `bench`; killed when dropped.
struct Moto(std::process::Child);

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn start_moto(client: &Http) -> (Moto, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let moto = Moto(
        std::process::Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("moto_server is installed (.ci/run: pip install 'moto[server]')"),
    );
    let endpoint = format!("http://127.0.0.1:{port}");
    for _ in 0..100 {
        let put = http::Request::put(format!("{endpoint}/bench"))
            .body(Empty::new())
            .expect("request");
        if matches!(client.request(put).await, Ok(r) if r.status().is_success()) {
            return (moto, endpoint);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("moto never answered");
}

async fn mirror(sim: &Sim, dir: &std::path::Path, secret: &std::path::Path) -> String {
    let settings = Settings::resolve(Layer {
        upstream: Some(sim.api_base().parse().expect("url")),
        listen: Some("127.0.0.1:0".parse().expect("addr")),
        data_dir: Some(dir.to_owned()),
        secret_file: Some(secret.to_owned()),
        blob_url_ttl: Some("1h".parse().expect("duration")),
        shared_store: Some("s3://bench".parse().expect("url")),
        ..Layer::default()
    })
    .expect("settings");
    let server = Server::bind(&settings).await.expect("bind");
    let addr = server.local_addr().expect("addr");
    tokio::spawn(server.run(std::future::pending()));
    addr.to_string()
}

fn shared_store(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let keys = tempfile::tempdir().expect("temp dir");
    let secret = keys.path().join("secret");
    let (_moto, sim, zip_len, direct, signed, first) = rt.block_on(async {
        let (moto, endpoint) = start_moto(&client).await;
        for (key, value) in [
            ("AWS_ENDPOINT_URL", endpoint.as_str()),
            ("AWS_ALLOW_HTTP", "true"),
            ("AWS_ACCESS_KEY_ID", "bench"),
            ("AWS_SECRET_ACCESS_KEY", "bench"),
            ("AWS_REGION", "us-east-1"),
        ] {
            std::env::set_var(key, value);
        }
        let sim = Sim::start(SimConfig {
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
        let dir = tempfile::tempdir().expect("temp dir");
        let first = mirror(&sim, dir.path(), &secret).await;
        let path = format!("/repos/{PRIVATE_REPO}/actions/artifacts/{}/zip", art.id);
        let direct = location(&client, &format!("{}{path}", sim.api_base())).await;
        let signed = location(&client, &format!("http://{first}/api/v3{path}")).await;
        assert_eq!(download(&client, &signed).await, zip_len);
        // Bounded wait for the background upload: a replica with an empty
        // disk finds the zip in the bucket.
        let probe_dir = tempfile::tempdir().expect("temp dir");
        let probe = mirror(&sim, probe_dir.path(), &secret).await;
        let url = signed.replace(&first, &probe);
        let mut shared = false;
        for _ in 0..100 {
            let request = http::Request::get(&url)
                .body(Empty::new())
                .expect("request");
            if matches!(client.request(request).await, Ok(r) if r.status().is_success()) {
                shared = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(shared, "the zip never reached the shared store");
        (moto, sim, zip_len, direct, signed, (first, dir))
    });
    let _keep = (&sim, &first);

    let mut group = c.benchmark_group("zip_16mib");
    group.throughput(Throughput::Bytes(zip_len as u64));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(15));
    group.bench_function("direct_from_blob_host", |b| {
        b.iter(|| rt.block_on(async { assert_eq!(download(&client, &direct).await, zip_len) }))
    });
    // A replica with an empty disk per sample: only the download is timed.
    let mut disks = Vec::new();
    group.bench_function("local_miss_from_shared_store", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut spent = Duration::ZERO;
                for _ in 0..iters {
                    let dir = tempfile::tempdir().expect("temp dir");
                    let fresh = mirror(&sim, dir.path(), &secret).await;
                    let url = signed.replace(&first.0, &fresh);
                    let started = Instant::now();
                    assert_eq!(download(&client, &url).await, zip_len);
                    spent += started.elapsed();
                    disks.push(dir);
                }
                spent
            })
        })
    });
    group.bench_function("local_hit", |b| {
        b.iter(|| rt.block_on(async { assert_eq!(download(&client, &signed).await, zip_len) }))
    });
    group.finish();
}

/// The `Location` a download endpoint redirects to.
async fn location(client: &Http, url: &str) -> String {
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

/// Downloads `url` whole, frame by frame, and answers its length.
async fn download(client: &Http, url: &str) -> usize {
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

criterion_group!(benches, shared_store);
criterion_main!(benches);
