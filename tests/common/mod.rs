//! Shared by the integration tests: a simulator with a mirror in front of
//! it, both on loopback, and a small HTTP client.
#![allow(dead_code)] // each test binary uses its own subset

pub mod raw_h2;

use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use artifact_mirror::app::App;
use artifact_mirror::config::{Layer, Settings};
use artifact_mirror::server::Server;
use bytes::Bytes;
use ghes_sim::{Sim, SimConfig};
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Upper bound for any single exchange in a test.
pub const TIMEOUT: Duration = Duration::from_secs(20);

pub struct Harness {
    pub sim: Sim,
    pub mirror: SocketAddr,
    pub data_dir: tempfile::TempDir,
    layer: Layer,
    running: Running,
}

/// A mirror started in this process.
struct Running {
    /// Weak: a stopped mirror must release its index to the admin commands.
    app: Weak<App>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Harness {
    pub async fn start() -> Harness {
        Self::start_with(|_| {}).await
    }

    /// Starts a simulator and a mirror in front of it; `tune` adjusts the
    /// mirror's settings (upstream, listen and data dir are filled in).
    pub async fn start_with(tune: impl FnOnce(&mut Layer)) -> Harness {
        let sim = Sim::start(SimConfig::default())
            .await
            .expect("simulator starts");
        Self::start_against(sim, tune).await
    }

    /// A mirror in front of `sim` (one started with its own `SimConfig`).
    pub async fn start_against(sim: Sim, tune: impl FnOnce(&mut Layer)) -> Harness {
        let upstream = sim.api_base();
        let data_dir = tempfile::tempdir().expect("temp dir");
        let mut layer = Layer {
            upstream: Some(upstream.parse().expect("sim base is a URL")),
            listen: Some("127.0.0.1:0".parse().expect("address")),
            data_dir: Some(data_dir.path().to_owned()),
            shutdown_grace: Some("2s".parse().expect("duration")),
            ..Layer::default()
        };
        tune(&mut layer);
        let (mirror, running) = start_mirror(layer.clone()).await;
        Harness {
            sim,
            mirror,
            data_dir,
            layer,
            running,
        }
    }

    /// Waits (bounded) until the store holds `count` blob files and no fill
    /// is under way.
    pub async fn until_stored(&self, count: usize) {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        while self.stored_files() < count {
            assert!(tokio::time::Instant::now() < deadline, "blob never stored");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.until_fills_end().await;
    }

    /// Waits (bounded) until no blob fill is under way. A stored file lands
    /// before its fill ends, and a request in between is answered from the
    /// fill (`COALESCED`), not the store (`HIT`).
    pub async fn until_fills_end(&self) {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        while self
            .running
            .app
            .upgrade()
            .is_some_and(|a| a.fills_in_flight() > 0)
        {
            assert!(tokio::time::Instant::now() < deadline, "a fill never ended");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Where the store keeps the blob whose content has this sha256 (hex).
    pub fn blob_file(&self, sha256: &str) -> std::path::PathBuf {
        self.data_dir
            .path()
            .join("blobs")
            .join("sha256")
            .join(sha256.get(..2).unwrap_or("00"))
            .join(sha256)
    }

    /// How many blob files the store holds (their `.json` sidecars not
    /// counted).
    pub fn stored_files(&self) -> usize {
        let root = self.data_dir.path().join("blobs").join("sha256");
        std::fs::read_dir(root)
            .map(|shards| {
                shards
                    .filter_map(Result::ok)
                    .filter_map(|s| std::fs::read_dir(s.path()).ok())
                    .flat_map(|files| files.filter_map(Result::ok))
                    .filter(|f| f.path().extension().is_none())
                    .count()
            })
            .unwrap_or(0)
    }

    /// `http://127.0.0.1:PORT/api/v3{path}`
    pub fn url(&self, path: &str) -> String {
        format!("http://{}/api/v3{path}", self.mirror)
    }

    /// The same path on the simulator, for side-by-side comparisons.
    pub fn direct_url(&self, path: &str) -> String {
        format!("{}{path}", self.sim.api_base())
    }

    /// Stops the mirror and starts a new one on the same data dir and port.
    pub async fn restart_mirror(&mut self) {
        self.stop_mirror().await;
        let mut layer = self.layer.clone();
        layer.listen = Some(self.mirror);
        let (mirror, running) = start_mirror(layer).await;
        self.mirror = mirror;
        self.running = running;
    }

    /// Stops the mirror and waits until it has shut down.
    pub async fn stop_mirror(&mut self) {
        if let Some(stop) = self.running.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.running.task.take() {
            tokio::time::timeout(TIMEOUT, task)
                .await
                .expect("mirror stops in time")
                .expect("mirror task");
        }
        // Connection tasks ending with the shutdown may hold the app (and
        // so the index's lock) a moment longer; a restart right away then
        // failed to open the index on a loaded machine.
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        while self.running.app.strong_count() > 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the stopped mirror still holds its app"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(task) = self.running.task.take() {
            task.abort();
        }
    }
}

/// Starts a mirror with these settings; returns its address and handles.
async fn start_mirror(layer: Layer) -> (SocketAddr, Running) {
    let settings = Settings::resolve(layer).expect("valid test settings");
    let server = Server::bind(&settings).await.expect("mirror binds");
    let addr = server.local_addr().expect("local addr");
    let app = Arc::downgrade(&server.app());
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));
    let running = Running {
        app,
        stop: Some(stop),
        task: Some(task),
    };
    (addr, running)
}

/// A whole answer.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Every value of a repeated header, in order.
    pub fn all(&self, name: &str) -> Vec<String> {
        self.headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok().map(str::to_owned))
            .collect()
    }
}

pub fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

pub async fn send(request: Request<Full<Bytes>>) -> Reply {
    send_with(&client(), request).await
}

pub async fn send_with(
    client: &Client<HttpConnector, Full<Bytes>>,
    request: Request<Full<Bytes>>,
) -> Reply {
    let exchange = async {
        let response = client.request(request).await.expect("request sent");
        let (parts, body) = response.into_parts();
        let body = body.collect().await.expect("whole body").to_bytes();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    };
    tokio::time::timeout(TIMEOUT, exchange)
        .await
        .expect("answer within the test timeout")
}

/// A request with an optional `Authorization: token …`.
pub fn request(method: Method, url: &str, token: Option<&str>) -> Request<Full<Bytes>> {
    let mut builder = Request::builder().method(method).uri(url);
    if let Some(token) = token {
        builder = builder.header("authorization", format!("token {token}"));
    }
    builder
        .body(Full::new(Bytes::new()))
        .expect("valid request")
}

pub async fn get(url: &str, token: Option<&str>) -> Reply {
    send(request(Method::GET, url, token)).await
}

/// A GET with extra headers.
pub async fn get_with(url: &str, token: Option<&str>, headers: &[(&str, &str)]) -> Reply {
    let mut req = request(Method::GET, url, token);
    for (name, value) in headers {
        req.headers_mut().insert(
            http::HeaderName::from_bytes(name.as_bytes()).expect("header name"),
            http::HeaderValue::from_str(value).expect("header value"),
        );
    }
    send(req).await
}

/// Waits for a child process at most `limit`; kills it past that and
/// answers `None`.
pub fn wait_bounded(
    child: &mut std::process::Child,
    limit: Duration,
) -> Option<std::process::ExitStatus> {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Lower-case hex of `bytes`, as the mirror writes it.
pub fn hex(bytes: &[u8]) -> String {
    ::hex::encode(bytes)
}

/// This process's wall clock in Unix seconds, as GHES's `expires_at`
/// counts (the simulator's clock; the mirror's own may be advanced).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("a clock after 1970")
        .as_secs()
}

/// The value of one series (name and labels as exposed) on the mirror's
/// `/metrics`; `None` when it is absent.
pub async fn metric(mirror: impl std::fmt::Display, series: &str) -> Option<f64> {
    let reply = get(&format!("http://{mirror}/metrics"), None).await;
    String::from_utf8_lossy(&reply.body)
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// The built binary, with no inherited `ARTIFACT_MIRROR_*` (or `RUST_LOG`)
/// variables: each test says what it sets.
pub fn mirror_command() -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_artifact-mirror"));
    for (key, _) in std::env::vars() {
        if key.starts_with("ARTIFACT_MIRROR_") || key == "RUST_LOG" {
            cmd.env_remove(key);
        }
    }
    cmd
}

/// `artifact-mirror serve` on `listen` with `data_dir`, its upstream a
/// loopback port nothing listens on (for tests that never reach GHES).
pub fn serve_command(listen: &str, data_dir: &std::path::Path) -> std::process::Command {
    let mut cmd = mirror_command();
    cmd.args([
        "serve",
        "--upstream",
        "http://127.0.0.1:9/api/v3",
        "--listen",
        listen,
    ])
    .arg("--data-dir")
    .arg(data_dir);
    cmd
}

/// Runs `cmd` under umask 022, the usual default, which leaves new files
/// readable by every local user unless the mirror sets their modes itself.
#[cfg(unix)]
pub fn under_umask_022(cmd: &std::process::Command) -> std::process::Command {
    let mut sh = std::process::Command::new("sh");
    sh.arg("-c")
        .arg("umask 022 && exec \"$0\" \"$@\"")
        .arg(cmd.get_program())
        .args(cmd.get_args())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    if let Some(dir) = cmd.get_current_dir() {
        sh.current_dir(dir);
    }
    for (key, value) in cmd.get_envs() {
        match value {
            Some(value) => sh.env(key, value),
            None => sh.env_remove(key),
        };
    }
    sh
}

/// Every entry under `root` whose mode is not 0700 (directory) or 0600
/// (file), with that mode; and how many entries there are.
#[cfg(unix)]
pub fn not_private(root: &std::path::Path) -> (Vec<(std::path::PathBuf, String)>, usize) {
    use std::os::unix::fs::PermissionsExt;
    let mut wrong = Vec::new();
    let mut seen = 0;
    let mut pending = vec![root.to_owned()];
    while let Some(path) = pending.pop() {
        seen += 1;
        assert!(seen < 10_000, "the data dir does not end");
        let meta = std::fs::symlink_metadata(&path).expect("entry readable");
        let mode = meta.permissions().mode() & 0o777;
        let want = if meta.is_dir() { 0o700 } else { 0o600 };
        if mode != want {
            wrong.push((path.clone(), format!("{mode:o}")));
        }
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path).expect("dir readable") {
                pending.push(entry.expect("dir entry").path());
            }
        }
    }
    (wrong, seen)
}

/// Runs an external tool with `args` and `stdin`, bounded by `limit`;
/// answers (success, stdout, stderr). A missing tool panics: tests that
/// need one are `#[ignore]`d and run where `.ci/run` installed it.
pub fn run_tool(
    program: &str,
    args: &[&str],
    stdin: &[u8],
    limit: Duration,
) -> (bool, String, String) {
    use std::io::Write;
    let out = tempfile::tempdir().expect("temp dir");
    let file = |name: &str| std::fs::File::create(out.path().join(name)).expect("output file");
    let mut child = std::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(file("out"))
        .stderr(file("err"))
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run {program} ({e}): install it (.ci/run does: apt-get install prometheus chromium systemd)")
        });
    // Small inputs: the pipe takes them whole before the tool reads.
    let mut pipe = child.stdin.take().expect("stdin");
    pipe.write_all(stdin).expect("stdin written");
    drop(pipe);
    let status = wait_bounded(&mut child, limit)
        .unwrap_or_else(|| panic!("{program} did not finish within {limit:?}"));
    let read = |name: &str| std::fs::read_to_string(out.path().join(name)).unwrap_or_default();
    (status.success(), read("out"), read("err"))
}
