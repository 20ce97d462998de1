//! JSON cache: what a cached list answer costs, against baselines measured in
//! the same run.
//!
//! 1. Fresh hit (`revalidate = when-stale`, `X-Cache: HIT`) against a bare
//!    hyper server that answers every GET with the very status, headers and
//!    body the mirror sends for that hit (captured from the mirror, served
//!    from memory). Target: mirror/bare requests/s >= 0.95.
//! 2. Revalidated hit (default `revalidate = always`, `X-Cache: REVALIDATED`,
//!    one conditional request upstream answered 304) against the same request
//!    sent straight to the simulator. Target: added p50 <= 0.1 ms.
//!
//! A closed-loop load generator: C workers, each with its own keep-alive
//! HTTP/1.1 connection, sending one request after the other for a fixed time
//! after a warm-up; every answer is checked (status, `X-Cache`, body bytes)
//! so a broken cache fails the bench instead of flattering it. Baseline and
//! candidate alternate (A B A B ...) and the median of the rounds is
//! reported.
//!
//! Everything runs in this one process on the same cores: the servers (the
//! simulator, the mirrors, the bare server) on one tokio runtime with threads
//! named `srv`, the load generator on another named `load`. CPU time per
//! request is read per thread from `/proc/self/task/*/schedstat`, split into
//! client (load generator) and server side (everything else), because on a
//! shared 2-core machine CPU per request is steadier than requests/s.
//!
//! `BENCH_SECONDS` (default 3, at most 50: a fresh entry lives 60 s, and each
//! run starts by revalidating it),
//! `BENCH_WARMUP` (default 0.5) and `BENCH_ROUNDS` (default 3) tune a run;
//! `BENCH_ONLY=1` or `BENCH_ONLY=2` runs one scenario, and `BENCH_SIDE=candidate`
//! (or `baseline`) loads one side only (both for profiling).
//!
//! The bench runs on the allocator the binary ships with (`main.rs`), so
//! both sides pay what they would in production.
//!
//! Run: `cargo bench --bench json_cache`

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use artifact_mirror::config::{Layer, Revalidate, Settings};
use artifact_mirror::server::Server;
use bytes::Bytes;
use ghes_sim::fixtures::{PUBLIC_REPO, READER_TOKEN};
use ghes_sim::{Sim, SimConfig};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Connections for the latency figures and for the throughput figures.
const LATENCY_CONNS: usize = 1;
const THROUGHPUT_CONNS: usize = 16;
/// Hard caps so no loop can run away whatever the clock does.
const MAX_REQUESTS_PER_WORKER: usize = 5_000_000;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

fn main() {
    let cfg = BenchConfig::from_env();
    let srv = tokio::runtime::Builder::new_multi_thread()
        .thread_name("srv")
        .enable_all()
        .build()
        .expect("server runtime");
    let load = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("load")
        .enable_all()
        .build()
        .expect("load runtime");
    let when_stale_dir = tempfile::tempdir().expect("temp dir");
    let always_dir = tempfile::tempdir().expect("temp dir");

    let (sim, when_stale, always) = srv.block_on(async {
        let sim = Sim::start(SimConfig {
            rate_limit: u32::MAX,
            ..SimConfig::default()
        })
        .await
        .expect("sim");
        let when_stale =
            start_mirror(&sim, when_stale_dir.path(), Some(Revalidate::WhenStale)).await;
        let always = start_mirror(&sim, always_dir.path(), None).await;
        (sim, when_stale, always)
    });
    let list = format!("/repos/{PUBLIC_REPO}/actions/artifacts?per_page=5");
    let sim_base: Uri = sim.api_base().parse().expect("sim api base");
    let sim_addr = sim.api_addr();
    let direct_path = format!("{}{list}", sim_base.path().trim_end_matches('/'));
    let mirror_path = format!("/api/v3{list}");

    // Warm both mirrors and capture the answers the runs must reproduce.
    let (hit, revalidated, direct) = load.block_on(async {
        let miss = fetch(when_stale, &mirror_path).await;
        assert_eq!(
            miss.status,
            StatusCode::OK,
            "first request through the mirror"
        );
        let hit = fetch(when_stale, &mirror_path).await;
        assert_eq!(hit.status, StatusCode::OK);
        assert_eq!(
            x_cache(&hit.headers),
            Some("HIT"),
            "second request under when-stale must be a fresh hit; headers: {:?}",
            hit.headers
        );
        fetch(always, &mirror_path).await;
        let revalidated = fetch(always, &mirror_path).await;
        assert_eq!(revalidated.status, StatusCode::OK);
        assert_eq!(x_cache(&revalidated.headers), Some("REVALIDATED"));
        let direct = fetch(sim_addr, &direct_path).await;
        assert_eq!(direct.status, StatusCode::OK);
        (hit, revalidated, direct)
    });

    // The bare server answers with the captured hit, minus `Date` (hyper
    // adds its own, as it does for the mirror).
    let mut bare_headers = hit.headers.clone();
    bare_headers.remove(header::DATE);
    let bare = srv.block_on(start_bare(
        hit.status,
        bare_headers.clone(),
        hit.body.clone(),
    ));
    let check = load.block_on(fetch(bare, &mirror_path));
    let mut seen = check.headers.clone();
    seen.remove(header::DATE);
    assert_eq!(check.status, hit.status, "bare server status");
    assert_eq!(seen, bare_headers, "bare server headers");
    assert_eq!(check.body, hit.body, "bare server body");

    println!("artifact-mirror json_cache bench");
    println!(
        "machine: {} cores ({}); load generator, servers and simulator share them in one process",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model()
    );
    println!(
        "runs: {:.1} s measured after {:.1} s warm-up, {} rounds alternating baseline/candidate, median reported",
        cfg.seconds.as_secs_f64(),
        cfg.warmup.as_secs_f64(),
        cfg.rounds
    );
    println!(
        "request: GET {list} with a token; hit answer {} header lines, {} body bytes; \
         no log subscriber installed (the mirror's access log costs nothing here)",
        hit.headers.len(),
        hit.body.len()
    );
    println!();

    let run = |n: u8| cfg.only.is_none_or(|only| only == n);

    // 1. Fresh hits against the bare server.
    let bare_target = Target {
        name: "bare hyper",
        addr: bare,
        path: mirror_path.clone(),
        x_cache: Some("HIT"),
        body: hit.body.clone(),
        prime: false,
    };
    let hit_target = Target {
        name: "mirror HIT",
        addr: when_stale,
        path: mirror_path.clone(),
        x_cache: Some("HIT"),
        body: hit.body.clone(),
        prime: true,
    };
    let s1 = run(1).then(|| {
        scenario(
            "1. fresh hit (revalidate = when-stale) vs bare hyper server sending the same bytes",
            &cfg,
            &load,
            &sim,
            &bare_target,
            &hit_target,
        )
    });

    // 2. Revalidated hits against the simulator directly.
    let direct_target = Target {
        name: "direct sim",
        addr: sim_addr,
        path: direct_path,
        x_cache: None,
        body: direct.body.clone(),
        prime: false,
    };
    let revalidated_target = Target {
        name: "mirror REVAL",
        addr: always,
        path: mirror_path,
        x_cache: Some("REVALIDATED"),
        body: revalidated.body.clone(),
        prime: false,
    };
    let s2 = run(2).then(|| {
        scenario(
            "2. revalidated hit (revalidate = always, upstream 304) vs the simulator directly",
            &cfg,
            &load,
            &sim,
            &direct_target,
            &revalidated_target,
        )
    });

    println!("== summary (medians over rounds) ==");
    if let Some(s1) = &s1 {
        summary_hit(s1);
    }
    if let Some(s2) = &s2 {
        summary_revalidated(s2);
    }
    drop(load);
    drop(srv);
}

fn summary_hit(s: &Scenario) {
    let (b, c) = (&s.throughput, &s.latency);
    let ratio = b.1.rps / b.0.rps;
    println!(
        "1. fresh hit, {THROUGHPUT_CONNS} conns: mirror {:.0} req/s vs bare {:.0} req/s -> ratio {:.3} (target >= 0.95: {})",
        b.1.rps,
        b.0.rps,
        ratio,
        verdict(ratio >= 0.95)
    );
    println!(
        "   server CPU per request: mirror {:.1} us vs bare {:.1} us -> server-only ratio {:.3} \
         (what req/s would be if the client cost nothing)",
        b.1.server_us,
        b.0.server_us,
        b.0.server_us / b.1.server_us
    );
    println!(
        "   {LATENCY_CONNS} conn: p50 {:.3} ms vs {:.3} ms (+{:.3} ms), p99 {:.3} ms vs {:.3} ms",
        c.1.p50_ms,
        c.0.p50_ms,
        c.1.p50_ms - c.0.p50_ms,
        c.1.p99_ms,
        c.0.p99_ms
    );
}

fn summary_revalidated(s: &Scenario) {
    let (b, c) = (&s.throughput, &s.latency);
    let added = c.1.p50_ms - c.0.p50_ms;
    println!(
        "2. revalidated, {LATENCY_CONNS} conn: p50 mirror {:.3} ms vs direct {:.3} ms -> added {:.3} ms (target <= 0.100: {}); \
         p99 {:.3} vs {:.3} ms (+{:.3})",
        c.1.p50_ms,
        c.0.p50_ms,
        added,
        verdict(added <= 0.1),
        c.1.p99_ms,
        c.0.p99_ms,
        c.1.p99_ms - c.0.p99_ms
    );
    println!(
        "   {LATENCY_CONNS} conn server CPU per request: {:.1} us vs {:.1} us (+{:.1} us for the mirror's leg)",
        c.1.server_us,
        c.0.server_us,
        c.1.server_us - c.0.server_us
    );
    println!(
        "   {THROUGHPUT_CONNS} conns: mirror {:.0} req/s vs direct {:.0} req/s (ratio {:.3}); \
         upstream trips per mirror request {:.2} (concurrent identical requests share one trip)",
        b.1.rps,
        b.0.rps,
        b.1.rps / b.0.rps,
        b.1.upstream_per_req
    );
}

struct BenchConfig {
    seconds: Duration,
    warmup: Duration,
    rounds: usize,
    /// `Some(n)`: run scenario n only.
    only: Option<u8>,
    /// `BENCH_SIDE=candidate` or `baseline`: load one side only, for a
    /// profile of it alone (no comparison is printed). `Some(true)`: the
    /// candidate.
    side: Option<bool>,
}

impl BenchConfig {
    fn from_env() -> BenchConfig {
        let secs = |name: &str, default: f64| {
            let value = std::env::var(name)
                .ok()
                .and_then(|v| v.trim().parse::<f64>().ok())
                .unwrap_or(default);
            Duration::from_secs_f64(value.clamp(0.1, 50.0))
        };
        BenchConfig {
            seconds: secs("BENCH_SECONDS", 3.0),
            warmup: secs("BENCH_WARMUP", 0.5),
            rounds: std::env::var("BENCH_ROUNDS")
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(3usize)
                .clamp(1, 20),
            only: std::env::var("BENCH_ONLY")
                .ok()
                .and_then(|v| v.trim().parse().ok()),
            side: match std::env::var("BENCH_SIDE").as_deref() {
                Ok("candidate") => Some(true),
                Ok("baseline") => Some(false),
                _ => None,
            },
        }
    }
}

async fn start_mirror(sim: &Sim, dir: &Path, revalidate: Option<Revalidate>) -> SocketAddr {
    let settings = Settings::resolve(Layer {
        upstream: Some(sim.api_base().parse().expect("url")),
        listen: Some("127.0.0.1:0".parse().expect("addr")),
        data_dir: Some(dir.to_owned()),
        revalidate,
        ..Layer::default()
    })
    .expect("settings");
    let server = Server::bind(&settings).await.expect("bind");
    let addr = server.local_addr().expect("addr");
    tokio::spawn(server.run(std::future::pending()));
    addr
}

/// A hyper 1 server (auto builder, like the mirror's) that answers every
/// request with one fixed response from memory.
async fn start_bare(status: StatusCode, headers: HeaderMap, body: Bytes) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind bare");
    let addr = listener.local_addr().expect("addr");
    let canned = Arc::new((status, headers, body));
    tokio::spawn(async move {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder.http1().timer(TokioTimer::new());
        builder.http2().timer(TokioTimer::new());
        // Ends with the runtime at the end of the bench.
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let canned = canned.clone();
            let service = service_fn(move |_request| {
                let mut response = Response::new(Full::new(canned.2.clone()));
                *response.status_mut() = canned.0;
                *response.headers_mut() = canned.1.clone();
                async move { Ok::<_, Infallible>(response) }
            });
            let conn = builder
                .serve_connection(TokioIo::new(stream), service)
                .into_owned();
            tokio::spawn(conn);
        }
    });
    addr
}

struct Fetched {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

fn x_cache(headers: &HeaderMap) -> Option<&str> {
    headers.get("x-cache").and_then(|v| v.to_str().ok())
}

/// One request on a connection of its own.
async fn fetch(addr: SocketAddr, path: &str) -> Fetched {
    let mut conn = Conn::open(addr, path).await;
    let response = conn.send().await;
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    Fetched {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

/// A keep-alive HTTP/1.1 connection and the request it repeats.
struct Conn {
    sender: hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    uri: Uri,
    host: HeaderValue,
    auth: HeaderValue,
}

impl Conn {
    async fn open(addr: SocketAddr, path: &str) -> Conn {
        let stream = TcpStream::connect(addr).await.expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                eprintln!("client connection error: {e}");
            }
        });
        Conn {
            sender,
            uri: path.parse().expect("path"),
            host: HeaderValue::from_str(&addr.to_string()).expect("host"),
            auth: HeaderValue::from_str(&format!("token {READER_TOKEN}")).expect("token"),
        }
    }

    async fn send(&mut self) -> Response<hyper::body::Incoming> {
        self.send_with(None).await
    }

    /// The request, with a `Cache-Control` header when given.
    async fn send_with(
        &mut self,
        cache_control: Option<HeaderValue>,
    ) -> Response<hyper::body::Incoming> {
        let mut request = Request::new(Empty::new());
        if let Some(value) = cache_control {
            request.headers_mut().insert(header::CACHE_CONTROL, value);
        }
        *request.uri_mut() = self.uri.clone();
        request
            .headers_mut()
            .insert(header::HOST, self.host.clone());
        request
            .headers_mut()
            .insert(header::AUTHORIZATION, self.auth.clone());
        self.sender.ready().await.expect("connection ready");
        tokio::time::timeout(REQUEST_TIMEOUT, self.sender.send_request(request))
            .await
            .expect("answer within the timeout")
            .expect("answer")
    }
}

/// What one side of a comparison sends and must get back.
struct Target {
    name: &'static str,
    addr: SocketAddr,
    path: String,
    x_cache: Option<&'static str>,
    body: Bytes,
    /// Send one request first that may revalidate, so a long bench never
    /// meets an entry gone stale (under when-stale it lives 60 s).
    prime: bool,
}

/// One measured run.
#[derive(Clone, Copy, Debug, Default)]
struct Stats {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    requests: usize,
    /// Server-side CPU (all threads but the load generator's) per request.
    server_us: f64,
    /// Load generator CPU per request.
    client_us: f64,
    /// Simulator API requests per request sent (measured over warm-up too).
    upstream_per_req: f64,
}

/// Baseline and candidate medians: (latency runs, throughput runs).
struct Scenario {
    latency: (Stats, Stats),
    throughput: (Stats, Stats),
}

fn scenario(
    title: &str,
    cfg: &BenchConfig,
    rt: &Runtime,
    sim: &Sim,
    baseline: &Target,
    candidate: &Target,
) -> Scenario {
    println!("== {title} ==");
    println!(
        "{:<6} {:<13} {:>5} {:>9} {:>9} {:>9} {:>10} {:>10} {:>9} {:>9}",
        "round",
        "side",
        "conns",
        "req/s",
        "p50 ms",
        "p99 ms",
        "srv us/rq",
        "cli us/rq",
        "upstr/rq",
        "requests"
    );
    let mut results: HashMap<(usize, bool), Vec<Stats>> = HashMap::new();
    for round in 1..=cfg.rounds {
        for conns in [LATENCY_CONNS, THROUGHPUT_CONNS] {
            for (is_candidate, target) in [(false, baseline), (true, candidate)] {
                if cfg.side.is_some_and(|side| side != is_candidate) {
                    continue;
                }
                let stats = rt.block_on(run_load(target, conns, cfg, sim));
                print_row(&round.to_string(), target.name, conns, &stats);
                results
                    .entry((conns, is_candidate))
                    .or_default()
                    .push(stats);
            }
        }
    }
    if cfg.side.is_some() {
        println!("(BENCH_SIDE: one side only, no comparison)");
        std::process::exit(0);
    }
    let median_of =
        |conns: usize, is_candidate: bool| median_stats(&results[&(conns, is_candidate)]);
    let scenario = Scenario {
        latency: (
            median_of(LATENCY_CONNS, false),
            median_of(LATENCY_CONNS, true),
        ),
        throughput: (
            median_of(THROUGHPUT_CONNS, false),
            median_of(THROUGHPUT_CONNS, true),
        ),
    };
    for (conns, (b, c)) in [
        (LATENCY_CONNS, scenario.latency),
        (THROUGHPUT_CONNS, scenario.throughput),
    ] {
        print_row("median", baseline.name, conns, &b);
        print_row("median", candidate.name, conns, &c);
        println!(
            "{:<6} {:<13} {:>5} {:>9.3} {:>+9.3} {:>+9.3} {:>+10.1} {:>10}",
            "",
            "cand/base",
            conns,
            c.rps / b.rps,
            c.p50_ms - b.p50_ms,
            c.p99_ms - b.p99_ms,
            c.server_us - b.server_us,
            "(ratio, +ms, +ms, +us)"
        );
    }
    println!();
    scenario
}

fn print_row(round: &str, side: &str, conns: usize, s: &Stats) {
    println!(
        "{:<6} {:<13} {:>5} {:>9.0} {:>9.3} {:>9.3} {:>10.1} {:>10.1} {:>9.2} {:>9}",
        round,
        side,
        conns,
        s.rps,
        s.p50_ms,
        s.p99_ms,
        s.server_us,
        s.client_us,
        s.upstream_per_req,
        s.requests
    );
}

/// Field-wise median (each figure's own median over the rounds).
fn median_stats(runs: &[Stats]) -> Stats {
    let median = |f: fn(&Stats) -> f64| {
        let mut v: Vec<f64> = runs.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        }
    };
    Stats {
        rps: median(|s| s.rps),
        p50_ms: median(|s| s.p50_ms),
        p99_ms: median(|s| s.p99_ms),
        requests: median(|s| s.requests as f64) as usize,
        server_us: median(|s| s.server_us),
        client_us: median(|s| s.client_us),
        upstream_per_req: median(|s| s.upstream_per_req),
    }
}

/// What one worker saw.
struct WorkerResult {
    latencies_ns: Vec<u64>,
    /// Requests sent, warm-up included.
    sent: usize,
    last_done: Instant,
}

async fn run_load(target: &Target, conns: usize, cfg: &BenchConfig, sim: &Sim) -> Stats {
    if target.prime {
        // `no-cache` makes the mirror revalidate now, so the entry is fresh
        // for the whole run (a plain request could be answered by an entry
        // about to go stale mid-run).
        let mut conn = Conn::open(target.addr, &target.path).await;
        let primed = conn
            .send_with(Some(HeaderValue::from_static("no-cache")))
            .await;
        assert_eq!(
            primed.status(),
            StatusCode::OK,
            "{}: priming request",
            target.name
        );
        primed.into_body().collect().await.expect("priming body");
    }
    let mut connections = Vec::with_capacity(conns);
    for _ in 0..conns {
        connections.push(Conn::open(target.addr, &target.path).await);
    }
    let upstream_before = sim.counters().api_requests;
    let start = Instant::now();
    let measure_from = start + cfg.warmup;
    let end = measure_from + cfg.seconds;
    let expected = Arc::new((target.x_cache, target.body.clone(), target.name));
    let workers: Vec<_> = connections
        .into_iter()
        .map(|conn| {
            let expected = expected.clone();
            tokio::spawn(worker(conn, expected, measure_from, end))
        })
        .collect();
    tokio::time::sleep_until(measure_from.into()).await;
    let cpu_before = thread_cpu();
    let mut latencies = Vec::new();
    let mut sent = 0;
    let mut last_done = measure_from;
    for w in workers {
        let r = w.await.expect("worker panicked: see above");
        latencies.extend(r.latencies_ns);
        sent += r.sent;
        last_done = last_done.max(r.last_done);
    }
    let cpu_after = thread_cpu();
    let upstream = sim.counters().api_requests - upstream_before;
    latencies.sort_unstable();
    let n = latencies.len();
    assert!(n > 0, "{}: no request completed in the window", target.name);
    let (client_ns, server_ns) = cpu_delta(&cpu_before, &cpu_after);
    let elapsed = (last_done - measure_from).as_secs_f64();
    Stats {
        rps: n as f64 / elapsed,
        p50_ms: percentile(&latencies, 0.50) as f64 / 1e6,
        p99_ms: percentile(&latencies, 0.99) as f64 / 1e6,
        requests: n,
        server_us: server_ns as f64 / 1e3 / n as f64,
        client_us: client_ns as f64 / 1e3 / n as f64,
        upstream_per_req: upstream as f64 / sent as f64,
    }
}

async fn worker(
    mut conn: Conn,
    expected: Arc<(Option<&'static str>, Bytes, &'static str)>,
    measure_from: Instant,
    end: Instant,
) -> WorkerResult {
    let (x_cache_wanted, body_wanted, name) = (expected.0, &expected.1, expected.2);
    let mut latencies_ns = Vec::with_capacity(1 << 16);
    let mut sent = 0;
    let mut last_done = Instant::now();
    while sent < MAX_REQUESTS_PER_WORKER {
        let started = Instant::now();
        if started >= end {
            break;
        }
        let response = conn.send().await;
        let (parts, body) = response.into_parts();
        let body = body.collect().await.expect("body").to_bytes();
        let done = Instant::now();
        sent += 1;
        assert_eq!(parts.status, StatusCode::OK, "{name}: status");
        if let Some(wanted) = x_cache_wanted {
            assert_eq!(
                x_cache(&parts.headers),
                Some(wanted),
                "{name}: X-Cache (headers {:?})",
                parts.headers
            );
        }
        assert!(
            body == *body_wanted,
            "{name}: body differs from the captured one"
        );
        if started >= measure_from {
            latencies_ns.push(u64::try_from((done - started).as_nanos()).unwrap_or(u64::MAX));
            last_done = done;
        }
    }
    WorkerResult {
        latencies_ns,
        sent,
        last_done,
    }
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[u64], p: f64) -> u64 {
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "NOT met"
    }
}

/// On-CPU nanoseconds per live thread: (is load generator or main, ns).
fn thread_cpu() -> HashMap<u32, (bool, u64)> {
    let mut threads = HashMap::new();
    let pid = std::process::id();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return threads;
    };
    for task in tasks.flatten() {
        let Some(tid) = task
            .file_name()
            .to_str()
            .and_then(|t| t.parse::<u32>().ok())
        else {
            continue;
        };
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        let Some(ns) = std::fs::read_to_string(task.path().join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        else {
            continue;
        };
        threads.insert(tid, (tid == pid || comm.starts_with("load"), ns));
    }
    threads
}

/// (client ns, server ns) spent between two snapshots by threads alive at
/// the second (a thread gone in between is lost; runtimes keep theirs).
fn cpu_delta(before: &HashMap<u32, (bool, u64)>, after: &HashMap<u32, (bool, u64)>) -> (u64, u64) {
    let (mut client, mut server) = (0, 0);
    for (tid, (is_client, ns)) in after {
        let spent = ns.saturating_sub(before.get(tid).map_or(0, |b| b.1));
        if *is_client {
            client += spent;
        } else {
            server += spent;
        }
    }
    (client, server)
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned())
}
