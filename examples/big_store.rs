//! A store of many artifacts (issue 11 item 5): builds a data dir with N
//! stored blobs (tiny files, their sidecars, their index records), then
//! measures a given mirror binary: start to `/readyz`, its RSS once ready,
//! and `cache gc` (a housekeeping pass plus the reconcile) on the stopped
//! data dir.
//!
//! ```sh
//! cargo run --release --example big_store -- path/to/artifact-mirror [count]
//! ```
//!
//! With 100 000 artifacts and a release binary (before any change for
//! item 5): ready after 2.46 s, RSS 144 MiB, `cache gc` 3.33 s; with 10 000:
//! 0.34 s, 25 MiB, 0.37 s. The issue's targets are ready ≤ 2 s, RSS ≤ 128
//! MiB, housekeeping ≤ 1 s.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use artifact_mirror::index::{BlobRecord, Index};
use sha2::{Digest, Sha256};

fn build(dir: &Path, count: u64) {
    let index = Index::open(&dir.join("index"), 64 << 20).expect("index");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    for id in 1..=count {
        let content = format!("zip of artifact {id}");
        let sha256 = hex::encode(Sha256::digest(content.as_bytes()));
        let shard = dir.join("blobs").join("sha256").join(&sha256[..2]);
        std::fs::create_dir_all(&shard).expect("shard");
        let record = BlobRecord {
            sha256: sha256.clone(),
            size: content.len() as u64,
            name: format!("artifact-{id}"),
            expires_at: Some(now + 86_400),
            stored_at: now,
            repo: Some("n:octo-org/private-repo".into()),
        };
        std::fs::write(shard.join(&sha256), &content).expect("blob");
        let sidecar = serde_json::json!({ "artifacts": { id.to_string(): &record } });
        std::fs::write(shard.join(format!("{sha256}.json")), sidecar.to_string()).expect("sidecar");
        index.blobs().put(id, &record, now * 1000).expect("record");
    }
    index.flush_now().expect("flush");
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn ready(port: u16) -> bool {
    use std::io::Write;
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = s.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer.starts_with("HTTP/1.1 200")
}

fn main() {
    let mut args = std::env::args().skip(1);
    let binary = args
        .next()
        .expect("usage: big_store <artifact-mirror binary> [count]");
    let count: u64 = args.next().map_or(100_000, |s| s.parse().expect("count"));
    let dir = tempfile::tempdir().expect("temp dir");
    let t = Instant::now();
    build(dir.path(), count);
    println!(
        "built {count} stored artifacts in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let started = Instant::now();
    let mut child = Command::new(&binary)
        .args(["serve", "--upstream", "http://127.0.0.1:9/api/v3"])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("mirror starts");
    while !ready(port) {
        assert!(started.elapsed() < Duration::from_secs(300), "never ready");
        std::thread::sleep(Duration::from_millis(10));
    }
    let to_ready = started.elapsed();
    std::thread::sleep(Duration::from_millis(200));
    println!(
        "ready after {:.2} s, RSS {} MiB",
        to_ready.as_secs_f64(),
        rss_kib(child.id()) / 1024
    );
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();

    let t = Instant::now();
    let gc = Command::new(&binary)
        .args(["cache", "gc", "--data-dir"])
        .arg(dir.path())
        .output()
        .expect("cache gc");
    println!(
        "cache gc: {:.2} s ({})",
        t.elapsed().as_secs_f64(),
        String::from_utf8_lossy(&gc.stdout)
            .lines()
            .next()
            .unwrap_or("")
    );
}
