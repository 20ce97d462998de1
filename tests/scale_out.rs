//! Several replicas of the mirror: what they must share to stand in for one
//! another. Today, the instance key (`secret_file`): a blob URL one replica
//! signed verifies on another replica given the same file, and not on a
//! replica with its own key.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use artifact_mirror::config::{Layer, Settings};
use artifact_mirror::server::Server;
use common::{get, Harness};
use ghes_sim::fixtures::{PRIVATE_REPO, READER_TOKEN};
use ghes_sim::NewArtifact;
use http::StatusCode;

/// A second mirror in front of the harness's simulator, on its own data
/// dir; it runs until the test's runtime ends.
async fn replica(h: &Harness, data_dir: &Path, secret_file: Option<PathBuf>) -> SocketAddr {
    let layer = Layer {
        upstream: Some(h.sim.api_base().parse().expect("sim base is a URL")),
        listen: Some("127.0.0.1:0".parse().expect("address")),
        data_dir: Some(data_dir.to_owned()),
        secret_file,
        ..Layer::default()
    };
    let settings = Settings::resolve(layer).expect("valid settings");
    let server = Server::bind(&settings).await.expect("replica binds");
    let addr = server.local_addr().expect("local addr");
    tokio::spawn(server.run(std::future::pending()));
    addr
}

/// The signed blob URL `mirror` hands out for the artifact, after its bytes
/// went through that mirror (so the mirror holds the blob).
async fn signed_url(mirror: SocketAddr, zip_path: &str, zip: &[u8]) -> String {
    let redirect = get(
        &format!("http://{mirror}/api/v3{zip_path}"),
        Some(READER_TOKEN),
    )
    .await;
    assert_eq!(redirect.status, StatusCode::FOUND, "{redirect:?}");
    let location = redirect.header("location").expect("location").to_owned();
    let blob = get(&location, None).await;
    assert_eq!(blob.status, StatusCode::OK);
    assert_eq!(&blob.body[..], zip);
    location
}

#[tokio::test]
async fn replicas_given_one_secret_file_verify_each_others_blob_urls() {
    let keys = tempfile::tempdir().unwrap();
    let secret = keys.path().join("secret");
    let h = Harness::start_with(|l| l.secret_file = Some(secret.clone())).await;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&secret).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "created private");
    }
    assert!(
        !h.data_dir.path().join("secret").exists(),
        "no second key in the data dir"
    );
    let art = h.sim.add_artifact(NewArtifact {
        repo: PRIVATE_REPO.into(),
        run_id: 9001,
        name: "dist".into(),
        payload_bytes: 50_000,
        with_digest: true,
        expired: false,
    });
    let zip = h.sim.zip_bytes(art.id).unwrap();
    let zip_path = format!("/repos/{PRIVATE_REPO}/actions/artifacts/{}/zip", art.id);

    let (dir_b, dir_c) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let same_key = replica(&h, dir_b.path(), Some(secret.clone())).await;
    let own_key = replica(&h, dir_c.path(), None).await;
    let from_a = signed_url(h.mirror, &zip_path, &zip).await;
    signed_url(same_key, &zip_path, &zip).await;
    signed_url(own_key, &zip_path, &zip).await;

    let on = |mirror: SocketAddr| from_a.replace(&h.mirror.to_string(), &mirror.to_string());
    let shared = get(&on(same_key), None).await;
    assert_eq!(shared.status, StatusCode::OK, "{shared:?}");
    assert_eq!(&shared.body[..], &zip[..]);
    let foreign = get(&on(own_key), None).await;
    assert_eq!(foreign.status, StatusCode::FORBIDDEN, "{foreign:?}");
    assert!(foreign.body.len() < 1000 && !foreign.body.starts_with(b"PK"));
}

#[tokio::test]
async fn a_secret_file_of_the_wrong_size_or_open_to_others_stops_the_start() {
    let h = Harness::start().await;
    let keys = tempfile::tempdir().unwrap();
    let short = keys.path().join("short");
    std::fs::write(&short, b"not 32 bytes").unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&short, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    // The settings refuse it (so `serve` stops before binding, exit 2), and
    // so does `check-config`, naming the setting.
    let start = |secret: PathBuf| {
        let layer = Layer {
            upstream: Some(h.sim.api_base().parse().expect("sim base is a URL")),
            listen: Some("127.0.0.1:0".parse().expect("address")),
            data_dir: Some(dir.path().to_owned()),
            secret_file: Some(secret.clone()),
            ..Layer::default()
        };
        let check = common::mirror_command()
            .args(["check-config", "--upstream", &h.sim.api_base()])
            .arg("--secret-file")
            .arg(&secret)
            .output()
            .expect("check-config runs");
        assert_eq!(check.status.code(), Some(2), "{check:?}");
        let said = String::from_utf8_lossy(&check.stderr).into_owned();
        assert!(said.contains("secret_file"), "{said}");
        async move {
            match Settings::resolve(layer) {
                Ok(_) => panic!("settings accept a bad secret file"),
                Err(e) => {
                    let e = e.to_string();
                    assert!(said.contains(&e), "check-config says {said}, not {e}");
                    e
                }
            }
        }
    };
    let e = start(short.clone()).await;
    assert!(
        e.contains("short") && e.contains("expected 32"),
        "names the file and the size: {e}"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let open = keys.path().join("open");
        std::fs::write(&open, [1u8; 32]).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o604)).unwrap();
        let e = start(open).await;
        assert!(e.contains("open to other users"), "{e}");
    }
}

#[test]
fn check_config_names_a_bad_shared_store_and_shows_a_good_one() {
    let check = |url: &str| {
        let mut cmd = common::mirror_command();
        cmd.args([
            "check-config",
            "--upstream",
            "https://ghes.example.com/api/v3",
        ])
        .args(["--shared-store", url]);
        cmd.output().expect("artifact-mirror runs")
    };
    let good = check("s3://artifacts/mirror");
    assert!(good.status.success(), "{good:?}");
    let shown = String::from_utf8_lossy(&good.stdout);
    assert!(
        shown.contains("shared_store = \"s3://artifacts/mirror\""),
        "{shown}"
    );
    for (url, says) in [
        ("gs://bucket", "gs: is not supported"),
        ("ftp://host/x", "unknown scheme ftp:"),
        ("not a url", "invalid value 'not a url' for '--shared-store"),
    ] {
        let out = check(url);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{url} accepted");
        assert!(err.contains(says), "{url}: {err}");
    }
}

/// A child process killed when the test ends, however it ends.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A loopback port nothing listens on right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Waits (bounded) until `url` answers 200.
async fn until_ready(url: &str) {
    let deadline = std::time::Instant::now() + common::TIMEOUT;
    loop {
        let ready = tokio::time::timeout(
            std::time::Duration::from_secs(2),
            common::client().get(url.parse().expect("URL")),
        )
        .await;
        if matches!(ready, Ok(Ok(r)) if r.status() == StatusCode::OK) {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{url} never ready");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Three mirror processes in front of the harness's simulator, each on its
/// own data dir, all given one `secret_file`; killed when dropped.
struct Replicas {
    children: Vec<Child>,
    addrs: Vec<String>,
    _dirs: Vec<tempfile::TempDir>,
}

impl Replicas {
    async fn start(h: &Harness) -> Self {
        let keys = tempfile::tempdir().unwrap();
        let secret = keys.path().join("secret");
        let mut dirs = vec![keys];
        let mut children = Vec::new();
        let mut addrs = Vec::new();
        for _ in 0..3 {
            let dir = tempfile::tempdir().unwrap();
            let (child, listen) = replica_process(h, &secret, dir.path(), None).await;
            children.push(child);
            dirs.push(dir);
            addrs.push(listen);
        }
        Self {
            children,
            addrs,
            _dirs: dirs,
        }
    }
}

/// A new artifact of the private repository, and its zip's bytes.
fn new_artifact(h: &Harness, i: u64) -> (u64, Vec<u8>) {
    let art = h.sim.add_artifact(NewArtifact {
        repo: PRIVATE_REPO.into(),
        run_id: 9001,
        name: format!("dist-{i}"),
        payload_bytes: 20_000 + i as usize,
        with_digest: true,
        expired: false,
    });
    let zip = h.sim.zip_bytes(art.id).unwrap();
    (art.id, zip.to_vec())
}

/// Downloads artifact `id` through the load balancer `lb` by both path
/// forms of the download route and the blob URL each hands out; asserts the
/// bytes and that one replica (named by `X-Mirror-Replica`) answered all
/// four requests, and returns it.
async fn download_through(lb: &str, id: u64, zip: &[u8]) -> String {
    use ghes_sim::fixtures::PRIVATE_REPO_ID;
    let mut replica = None;
    for path in [
        format!("/api/v3/repos/{PRIVATE_REPO}/actions/artifacts/{id}/zip"),
        format!("/api/v3/repositories/{PRIVATE_REPO_ID}/actions/artifacts/{id}/zip"),
    ] {
        let redirect = get(&format!("http://{lb}{path}"), Some(READER_TOKEN)).await;
        assert_eq!(redirect.status, StatusCode::FOUND, "{path}: {redirect:?}");
        let location = redirect.header("location").expect("location").to_owned();
        assert!(
            location.starts_with(&format!("http://{lb}/_mirror/blobs/")),
            "{location}"
        );
        let blob = get(&location, None).await;
        assert_eq!(blob.status, StatusCode::OK);
        assert_eq!(&blob.body[..], zip);
        for reply in [&redirect, &blob] {
            // nginx names every replica it tried ("a, b"): the last answered.
            let by = reply.header("x-mirror-replica").expect("replica named");
            let by = by.rsplit(", ").next().unwrap_or(by);
            assert_eq!(*replica.get_or_insert(by.to_owned()), by, "{path}");
        }
    }
    replica.expect("served")
}

/// What both shipped load-balancer configs must do in front of three
/// replicas: both routes of one artifact reach one replica, the artifacts
/// spread over more than one, each zip leaves GHES once, and an outsider
/// gets GHES's 404 and no bytes. Returns each artifact with its replica.
async fn routes_each_artifact_to_one_replica(h: &Harness, lb: &str) -> Vec<(u64, Vec<u8>, String)> {
    use ghes_sim::fixtures::OUTSIDER_TOKEN;
    let mut served = Vec::new();
    for i in 0..8 {
        let (id, zip) = new_artifact(h, i);
        let replica = download_through(lb, id, &zip).await;
        let outsider = get(
            &format!("http://{lb}/api/v3/repos/{PRIVATE_REPO}/actions/artifacts/{id}/zip"),
            Some(OUTSIDER_TOKEN),
        )
        .await;
        assert_eq!(outsider.status, StatusCode::NOT_FOUND, "{outsider:?}");
        assert!(!outsider.body.starts_with(b"PK"));
        served.push((id, zip, replica));
    }
    let replicas: std::collections::BTreeSet<_> = served.iter().map(|(_, _, r)| r).collect();
    assert!(
        replicas.len() > 1,
        "eight artifacts all hashed to {replicas:?}"
    );
    assert_eq!(
        h.sim.counters().blob_gets,
        8,
        "one GHES blob fetch per artifact"
    );
    served
}

/// The shipped `deploy/haproxy/haproxy.cfg`, run by real HAProxy in front
/// of three mirror processes.
#[tokio::test]
#[ignore = "needs haproxy: see .ci/run"]
async fn haproxy_sends_both_routes_of_an_artifact_to_one_replica() {
    let h = Harness::start().await;
    let replicas = Replicas::start(&h).await;
    let lb = format!("127.0.0.1:{}", free_port());
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/haproxy/haproxy.cfg");
    let haproxy = std::process::Command::new("haproxy")
        .args(["-db", "-f", config])
        .env("MIRROR_LISTEN", &lb)
        .env("REPLICA_1", &replicas.addrs[0])
        .env("REPLICA_2", &replicas.addrs[1])
        .env("REPLICA_3", &replicas.addrs[2])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("haproxy is installed (.ci/run installs Debian's haproxy)");
    let _haproxy = Child(haproxy);
    until_ready(&format!("http://{lb}/readyz")).await;
    routes_each_artifact_to_one_replica(&h, &lb).await;
}

/// The shipped `deploy/nginx/artifact-mirror.conf.template`, filled in the
/// way envsubst does and run by real nginx in front of three mirror
/// processes; then one replica is killed and its artifact's download goes
/// to another (nginx's passive health check).
#[tokio::test]
#[ignore = "needs nginx: see .ci/run"]
async fn nginx_sends_both_routes_of_an_artifact_to_one_replica() {
    let h = Harness::start().await;
    let mut replicas = Replicas::start(&h).await;
    let lb = format!("127.0.0.1:{}", free_port());
    let prefix = tempfile::tempdir().unwrap();
    let template = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/nginx/artifact-mirror.conf.template"
    ))
    .unwrap();
    let mut site = template;
    for (name, value) in [
        ("MIRROR_LISTEN", &lb),
        ("REPLICA_1", &replicas.addrs[0]),
        ("REPLICA_2", &replicas.addrs[1]),
        ("REPLICA_3", &replicas.addrs[2]),
    ] {
        site = site.replace(&format!("${{{name}}}"), value);
    }
    let unfilled: Vec<_> = site
        .lines()
        .filter(|l| !l.trim_start().starts_with('#') && l.contains("${"))
        .collect();
    assert!(unfilled.is_empty(), "names left unfilled: {unfilled:?}");
    let dir = prefix.path().display();
    std::fs::write(prefix.path().join("artifact-mirror.conf"), site).unwrap();
    std::fs::write(
        prefix.path().join("nginx.conf"),
        format!(
            "daemon off;\nworker_processes 1;\npid {dir}/nginx.pid;\nerror_log stderr warn;\n\
             events {{ worker_connections 256; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {dir}/body;\n  proxy_temp_path {dir}/proxy;\n\
             fastcgi_temp_path {dir}/fastcgi;\n  uwsgi_temp_path {dir}/uwsgi;\n  scgi_temp_path {dir}/scgi;\n\
             include {dir}/artifact-mirror.conf;\n}}\n"
        ),
    )
    .unwrap();
    let nginx = std::process::Command::new("nginx")
        .arg("-e")
        .arg("stderr")
        .arg("-p")
        .arg(prefix.path())
        .arg("-c")
        .arg(prefix.path().join("nginx.conf"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("nginx is installed (.ci/run installs Debian's nginx-light)");
    let _nginx = Child(nginx);
    until_ready(&format!("http://{lb}/readyz")).await;
    let served = routes_each_artifact_to_one_replica(&h, &lb).await;

    // Kill the replica that served the first artifact: its downloads move to
    // another replica, which fetches the zip again (no shared store here).
    let (id, zip, first) = &served[0];
    let dead = replicas
        .addrs
        .iter()
        .position(|a| a == first)
        .expect("X-Mirror-Replica names a replica's address");
    let mut child = replicas.children.remove(dead);
    child.0.kill().expect("kill a replica");
    child.0.wait().expect("reap it");
    let now = download_through(&lb, *id, zip).await;
    assert_ne!(&now, first, "served by the dead replica?");
    assert_eq!(h.sim.counters().blob_gets, 9, "fetched again once");
}

/// A `moto_server` (an S3 imitation) on a free loopback port with one
/// bucket, `mirror`, created; killed when dropped.
struct Moto {
    child: Child,
    endpoint: String,
}

impl Moto {
    async fn start() -> Moto {
        let port = free_port();
        let child = std::process::Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("moto_server is installed (.ci/run: pip install 'moto[server]')");
        let moto = Moto {
            child: Child(child),
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        let deadline = std::time::Instant::now() + common::TIMEOUT;
        loop {
            let put = common::request(
                http::Method::PUT,
                &format!("{}/mirror", moto.endpoint),
                None,
            );
            let made = tokio::time::timeout(
                std::time::Duration::from_secs(2),
                common::client().request(put),
            )
            .await;
            if matches!(made, Ok(Ok(r)) if r.status() == StatusCode::OK) {
                return moto;
            }
            assert!(std::time::Instant::now() < deadline, "moto never answered");
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }

    /// The `AWS_*` settings a mirror needs to reach it.
    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_ACCESS_KEY_ID", "testing".into()),
            ("AWS_SECRET_ACCESS_KEY", "testing".into()),
            ("AWS_REGION", "us-east-1".into()),
        ]
    }

    /// The bucket through object_store, as the mirror sees it.
    fn bucket(&self) -> object_store::aws::AmazonS3 {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut builder = object_store::aws::AmazonS3Builder::new().with_bucket_name("mirror");
        for (key, value) in self.env() {
            builder = builder.with_config(key.to_lowercase().parse().expect("an AWS key"), value);
        }
        builder.build().expect("an S3 client")
    }

    /// Waits (bounded) until none of `keys` is in the bucket.
    async fn until_gone(&self, keys: &[String]) {
        use object_store::ObjectStoreExt;
        let bucket = self.bucket();
        let deadline = std::time::Instant::now() + common::TIMEOUT;
        for key in keys {
            let key = object_store::path::Path::from(key.as_str());
            while bucket.head(&key).await.is_ok() {
                assert!(std::time::Instant::now() < deadline, "{key} still there");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }

    /// Waits (bounded) until the shared record of artifact `id` is there;
    /// returns it and the shared blob it names.
    async fn until_recorded(&self, id: u64) -> (serde_json::Value, Vec<u8>) {
        use object_store::ObjectStoreExt;
        let bucket = self.bucket();
        let key = object_store::path::Path::from(format!("eu/artifacts/{id}"));
        let deadline = std::time::Instant::now() + common::TIMEOUT;
        loop {
            if let Ok(got) = bucket.get(&key).await {
                let record: serde_json::Value =
                    serde_json::from_slice(&got.bytes().await.expect("record read")).expect("JSON");
                let sha = record["sha256"].as_str().expect("a digest");
                let blob = bucket
                    .get(&format!("eu/blobs/sha256/{sha}").into())
                    .await
                    .expect("the blob the record names")
                    .bytes()
                    .await
                    .expect("blob read");
                return (record, blob.to_vec());
            }
            assert!(std::time::Instant::now() < deadline, "{id} never shared");
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
}

/// One mirror process given the shared store, on its own empty data dir.
/// One mirror process on `dir` with the shared `secret`, and with the
/// bucket `moto` serves when given; waits until it is ready.
async fn replica_process(
    h: &Harness,
    secret: &Path,
    dir: &Path,
    moto: Option<&Moto>,
) -> (Child, String) {
    let listen = format!("127.0.0.1:{}", free_port());
    let mut cmd = common::mirror_command();
    cmd.args([
        "serve",
        "--upstream",
        &h.sim.api_base(),
        "--listen",
        &listen,
    ])
    .arg("--data-dir")
    .arg(dir)
    .arg("--secret-file")
    .arg(secret)
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::null());
    if let Some(moto) = moto {
        cmd.args(["--shared-store", "s3://mirror/eu"])
            .envs(moto.env());
    }
    let child = Child(cmd.spawn().expect("artifact-mirror starts"));
    until_ready(&format!("http://{listen}/readyz")).await;
    (child, listen)
}

/// Downloads through `lb` once it answers the download route again (a
/// killed replica takes HAProxy's health checks a few seconds to notice).
async fn download_when_routed(lb: &str, id: u64, zip: &[u8]) -> String {
    let url = format!("http://{lb}/api/v3/repos/{PRIVATE_REPO}/actions/artifacts/{id}/zip");
    let deadline = std::time::Instant::now() + common::TIMEOUT;
    while get(&url, Some(READER_TOKEN)).await.status != StatusCode::FOUND {
        assert!(std::time::Instant::now() < deadline, "{id} never routed");
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    download_through(lb, id, zip).await
}

/// Three replicas sharing a bucket (real moto) behind the shipped HAProxy
/// config: each zip leaves GHES once; with two replicas SIGKILLed, and on a
/// fresh replica with an empty disk, the same downloads come from the
/// shared store with no new GHES blob fetch (a blob URL signed elsewhere
/// included); an artifact deleted, or one GHES calls gone, leaves the
/// bucket; with the store stopped, downloads go on from GHES; an outsider
/// still gets GHES's 404 through any replica.
#[tokio::test]
#[ignore = "needs moto_server: see .ci/run"]
async fn replicas_sharing_an_s3_bucket_fetch_each_zip_from_ghes_once() {
    use ghes_sim::fixtures::OUTSIDER_TOKEN;
    let h = Harness::start().await;
    let mut moto = Moto::start().await;
    let keys = tempfile::tempdir().unwrap();
    let secret = keys.path().join("secret");
    let dirs: Vec<_> = (0..5).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut replicas = Vec::new();
    for dir in &dirs[..3] {
        replicas.push(replica_process(&h, &secret, dir.path(), Some(&moto)).await);
    }
    let lb = format!("127.0.0.1:{}", free_port());
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/haproxy/haproxy.cfg");
    let haproxy = std::process::Command::new("haproxy")
        .args(["-db", "-f", config])
        .env("MIRROR_LISTEN", &lb)
        .env("REPLICA_1", &replicas[0].1)
        .env("REPLICA_2", &replicas[1].1)
        .env("REPLICA_3", &replicas[2].1)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("haproxy is installed (.ci/run installs Debian's haproxy)");
    let _haproxy = Child(haproxy);
    until_ready(&format!("http://{lb}/readyz")).await;
    let served = routes_each_artifact_to_one_replica(&h, &lb).await;
    for (id, zip, _) in &served {
        let (record, blob) = moto.until_recorded(*id).await;
        assert_eq!(record["size"], zip.len() as u64, "{record}");
        assert_eq!(&blob[..], &zip[..], "the shared blob is the zip");
    }

    // SIGKILL two replicas: the third serves every download from the bucket.
    for (mut child, _) in replicas.drain(..2) {
        child.0.kill().expect("kill a replica");
        child.0.wait().expect("reap it");
    }
    for (id, zip, _) in &served {
        download_when_routed(&lb, *id, zip).await;
    }
    assert_eq!(h.sim.counters().blob_gets, 8, "no new GHES blob fetch");

    // A fresh replica on an empty disk: a blob URL another replica signed,
    // and a download of its own, both from the bucket.
    let (id, zip, _) = &served[0];
    let signed = get(
        &format!("http://{lb}/api/v3/repos/{PRIVATE_REPO}/actions/artifacts/{id}/zip"),
        Some(READER_TOKEN),
    )
    .await;
    let location = signed.header("location").expect("location").to_owned();
    let (_fresh, fresh) = replica_process(&h, &secret, dirs[3].path(), Some(&moto)).await;
    let moved = get(&location.replace(&lb, &fresh), None).await;
    assert_eq!(moved.status, StatusCode::OK, "{moved:?}");
    assert_eq!(&moved.body[..], &zip[..]);
    let (id2, zip2, _) = &served[1];
    download_direct(&fresh, *id2, zip2).await;
    assert_eq!(h.sim.counters().blob_gets, 8, "no new GHES blob fetch");
    for mirror in [&lb, &fresh] {
        let outsider = get(
            &format!("http://{mirror}/api/v3/repos/{PRIVATE_REPO}/actions/artifacts/{id}/zip"),
            Some(OUTSIDER_TOKEN),
        )
        .await;
        assert_eq!(outsider.status, StatusCode::NOT_FOUND, "{outsider:?}");
        assert!(!outsider.body.starts_with(b"PK"));
    }

    // DELETE through a replica: the record and the blob leave the bucket.
    let (id4, _, _) = &served[3];
    let (record, _) = moto.until_recorded(*id4).await;
    let deleted = common::send(common::request(
        http::Method::DELETE,
        &format!("http://{fresh}/api/v3/repos/{PRIVATE_REPO}/actions/artifacts/{id4}"),
        Some(ghes_sim::fixtures::ADMIN_TOKEN),
    ))
    .await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT, "{deleted:?}");
    let sha = record["sha256"].as_str().expect("a digest");
    moto.until_gone(&[
        format!("eu/artifacts/{id4}"),
        format!("eu/blobs/sha256/{sha}"),
        format!("eu/refs/{sha}/{id4}"),
    ])
    .await;

    // An artifact whose JSON a replica read before its download: its shared
    // record carries GitHub's (future) expires_at, and another replica still
    // serves it from the bucket.
    let (seen_id, seen_zip) = new_artifact(&h, 60);
    download_after_its_json(&fresh, seen_id, &seen_zip).await;
    let (record, _) = moto.until_recorded(seen_id).await;
    assert!(record["expires_at"].as_u64().is_some(), "{record}");
    let gets = h.sim.counters().blob_gets;
    download_direct(&replicas[0].1, seen_id, &seen_zip).await;
    assert_eq!(h.sim.counters().blob_gets, gets, "from the bucket");

    // Its expires_at passes (GHES's expiry job has not run: its download
    // endpoint still answers): a replica that never read the JSON does not
    // fill from the bucket's record, it asks GHES.
    let (lapsed_id, lapsed_zip) = new_artifact(&h, 70);
    // Far enough ahead that the first replica's read and download end
    // before it on a loaded machine (after it, that replica refuses).
    let expires_at = common::unix_now() + 5;
    h.sim.set_expires_at(lapsed_id, expires_at);
    download_after_its_json(&fresh, lapsed_id, &lapsed_zip).await;
    let (record, _) = moto.until_recorded(lapsed_id).await;
    assert_eq!(record["expires_at"].as_u64(), Some(expires_at), "{record}");
    while common::unix_now() < expires_at {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let gets = h.sim.counters().blob_gets;
    download_direct(&replicas[0].1, lapsed_id, &lapsed_zip).await;
    assert_eq!(
        h.sim.counters().blob_gets,
        gets + 1,
        "from GHES, not the bucket"
    );

    // GHES answers a download 410 (a credential with no grant here, so the
    // download endpoint is asked, not the artifact's JSON): the artifact
    // leaves the bucket too, not only the replica that heard it.
    let (gone_id, gone_zip) = new_artifact(&h, 50);
    download_direct(&fresh, gone_id, &gone_zip).await;
    let (record, _) = moto.until_recorded(gone_id).await;
    h.sim.expire_artifact(gone_id);
    let gone = get(
        &format!("http://{fresh}/api/v3/repos/{PRIVATE_REPO}/actions/artifacts/{gone_id}/zip"),
        Some(ghes_sim::fixtures::ADMIN_TOKEN),
    )
    .await;
    assert_eq!(gone.status, StatusCode::GONE, "{gone:?}");
    let sha = record["sha256"].as_str().expect("a digest");
    moto.until_gone(&[
        format!("eu/artifacts/{gone_id}"),
        format!("eu/blobs/sha256/{sha}"),
        format!("eu/refs/{sha}/{gone_id}"),
    ])
    .await;

    // The store stops: a new artifact, and a known one on another empty
    // replica, still download right, from GHES.
    moto.child.0.kill().expect("stop moto");
    moto.child.0.wait().expect("reap moto");
    let (_other, other) = replica_process(&h, &secret, dirs[4].path(), Some(&moto)).await;
    let (new_id, new_zip) = new_artifact(&h, 100);
    download_direct(&fresh, new_id, &new_zip).await;
    let (id3, zip3, _) = &served[2];
    download_direct(&other, *id3, zip3).await;
    assert_eq!(h.sim.counters().blob_gets, 14, "both from GHES");
    // Still ready (downloads work), the store reported degraded, and counted.
    let ready = get(&format!("http://{fresh}/readyz"), None).await;
    assert_eq!(ready.status, StatusCode::OK, "{ready:?}");
    assert!(ready.json()["checks"]["shared_store"]
        .as_str()
        .is_some_and(|s| s.starts_with("degraded")));
    let metrics = get(&format!("http://{fresh}/metrics"), None).await;
    let metrics = String::from_utf8_lossy(&metrics.body);
    for series in [
        "artifact_mirror_shared_store_hits_total 2",
        "artifact_mirror_shared_store_degraded_total 1",
    ] {
        assert!(metrics.contains(series), "{series} in {metrics}");
    }
}

/// [`download_direct`] after reading the artifact's JSON through the same
/// mirror, so that it knows the artifact's facts (`expires_at`) when it
/// stores and shares the zip.
async fn download_after_its_json(mirror: &str, id: u64, zip: &[u8]) {
    let url = format!("http://{mirror}/api/v3/repos/{PRIVATE_REPO}/actions/artifacts/{id}");
    let json = get(&url, Some(READER_TOKEN)).await;
    assert_eq!(json.status, StatusCode::OK, "{json:?}");
    download_direct(mirror, id, zip).await;
}

/// Downloads artifact `id` straight from one mirror: the redirect, then the
/// blob URL it hands out, whose bytes must be the zip.
async fn download_direct(mirror: &str, id: u64, zip: &[u8]) {
    let url = format!("http://{mirror}/api/v3/repos/{PRIVATE_REPO}/actions/artifacts/{id}/zip");
    let redirect = get(&url, Some(READER_TOKEN)).await;
    assert_eq!(redirect.status, StatusCode::FOUND, "{redirect:?}");
    let location = redirect.header("location").expect("location").to_owned();
    let blob = get(&location, None).await;
    assert_eq!(blob.status, StatusCode::OK, "{blob:?}");
    assert_eq!(&blob.body[..], zip);
}
