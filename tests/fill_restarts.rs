//! Fills survive a restart: the mirror binary is SIGKILLed while ten fills
//! are part way, and the next process resumes each staged file with
//! `Range` from the bytes on disk, fetching again only what had not left
//! upstream (plus a small margin), and starts over when upstream does not
//! confirm the staged bytes. And a clean stop seals the store, so the next
//! start trusts its index instead of reconciling it; a crash does not.

mod common;

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::{get, TIMEOUT};
use ghes_sim::fixtures::{PRIVATE_REPO, READER_TOKEN};
use ghes_sim::{NewArtifact, Sim, SimConfig};
use http::StatusCode;

/// A mirror process, killed when dropped.
struct Mirror {
    child: Child,
    addr: String,
}

impl Mirror {
    async fn start(sim: &Sim, data_dir: &Path) -> Mirror {
        Mirror::start_with(sim, data_dir, &[]).await
    }

    /// [`Mirror::start`] with `extra` arguments for `serve`.
    async fn start_with(sim: &Sim, data_dir: &Path, extra: &[&str]) -> Mirror {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let addr = format!("127.0.0.1:{port}");
        let child = common::mirror_command()
            .args(["serve", "--upstream", &sim.api_base(), "--listen", &addr])
            .arg("--data-dir")
            .arg(data_dir)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the mirror starts");
        let mirror = Mirror { child, addr };
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let probe = common::request(
                http::Method::GET,
                &format!("http://{}/readyz", mirror.addr),
                None,
            );
            let ready =
                tokio::time::timeout(Duration::from_secs(2), common::client().request(probe)).await;
            if ready.is_ok_and(|r| r.is_ok_and(|r| r.status() == StatusCode::OK)) {
                return mirror;
            }
            assert!(Instant::now() < deadline, "the mirror never became ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn url(&self, id: u64) -> String {
        format!(
            "http://{}/api/v3/repos/{PRIVATE_REPO}/actions/artifacts/{id}/zip",
            self.addr
        )
    }

    /// SIGTERM, and the exit it leads to.
    fn terminate(mut self) -> Option<i32> {
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        assert!(sent.is_ok_and(|s| s.success()), "kill -TERM");
        common::wait_bounded(&mut self.child, TIMEOUT).and_then(|s| s.code())
    }

    /// A gauge or counter of `/metrics`, as it reads now.
    async fn metric(&self, name: &str) -> Option<f64> {
        common::metric(&self.addr, name).await
    }

    /// SIGKILL: no shutdown code runs.
    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = common::wait_bounded(&mut self.child, TIMEOUT);
    }
}

impl Drop for Mirror {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Bytes in the staged (`.part`) files under `tmp/`.
fn staged_bytes(data_dir: &Path) -> u64 {
    std::fs::read_dir(data_dir.join("tmp"))
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| e.path().extension().is_some_and(|x| x == "part"))
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// Downloads `id` through the mirror (the route, then its redirect).
async fn download(mirror: &Mirror, id: u64) -> Vec<u8> {
    let first = get(&mirror.url(id), Some(READER_TOKEN)).await;
    assert_eq!(first.status, StatusCode::FOUND, "{:?}", first.body);
    let location = first.header("location").expect("location").to_owned();
    let blob = get(&location, None).await;
    assert_eq!(blob.status, StatusCode::OK);
    blob.body.to_vec()
}

async fn sim_with(sizes: &[usize]) -> (Sim, Vec<ghes_sim::Artifact>) {
    let sim = Sim::start(SimConfig::default()).await.expect("sim starts");
    let arts = sizes
        .iter()
        .enumerate()
        .map(|(i, &payload)| {
            sim.add_artifact(NewArtifact {
                repo: PRIVATE_REPO.into(),
                run_id: 9001,
                name: format!("part-{i}"),
                payload_bytes: payload,
                with_digest: false,
                expired: false,
            })
        })
        .collect();
    (sim, arts)
}

/// Starts a fill of each artifact, waits until `each` bytes of every one
/// left upstream and reached the staged files, then SIGKILLs the mirror.
/// Returns the bytes that had left upstream.
async fn kill_mid_fill(sim: &Sim, arts: &[ghes_sim::Artifact], dir: &Path, each: u64) -> u64 {
    let mirror = Mirror::start(sim, dir).await;
    sim.knobs().stall_blob_after(each, arts.len() as u32);
    sim.reset_counters();
    let started: Vec<_> = arts
        .iter()
        .map(|a| {
            let url = mirror.url(a.id);
            // The route answers once the fill knows the size; its client
            // need not wait for the bytes.
            tokio::spawn(async move { get(&url, Some(READER_TOKEN)).await })
        })
        .collect();
    let want = each * arts.len() as u64;
    let deadline = Instant::now() + TIMEOUT;
    while !(sim.counters().blob_bytes == want && staged_bytes(dir) == want) {
        assert!(
            Instant::now() < deadline,
            "fills never reached {want} bytes: {} left upstream, {} staged",
            sim.counters().blob_bytes,
            staged_bytes(dir)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let left = sim.counters().blob_bytes;
    mirror.kill();
    for s in started {
        s.abort();
    }
    left
}

#[tokio::test]
async fn fills_killed_midway_resume_from_their_staged_bytes_after_a_restart() {
    let sizes: Vec<usize> = (0..10).map(|i| 1_000_000 + i * 200_000).collect();
    let (sim, arts) = sim_with(&sizes).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let left = kill_mid_fill(&sim, &arts, dir.path(), 300_000).await;
    let total: u64 = arts.iter().map(|a| a.size_in_bytes).sum();

    sim.reset_counters();
    let before = sim.blob_requests().len();
    let mirror = Mirror::start(&sim, dir.path()).await;
    for a in &arts {
        let body = download(&mirror, a.id).await;
        assert!(
            body == sim.zip_bytes(a.id).expect("zip"),
            "artifact {} differs",
            a.id
        );
    }
    let fetched_again = sim.counters().blob_bytes;
    let not_left = total - left;
    let ranged = sim
        .blob_requests()
        .iter()
        .skip(before)
        .filter(|r| r.header("range") == Some("bytes=300000-"))
        .count();
    eprintln!(
        "total {total} B, left upstream before the kill {left} B, \
         fetched after the restart {fetched_again} B, ranged requests {ranged}"
    );
    assert_eq!(
        ranged,
        arts.len(),
        "every fill resumed from its staged bytes"
    );
    assert!(
        fetched_again <= not_left + 1_500_000,
        "fetched {fetched_again} B again; {not_left} B had not left upstream"
    );
    assert_eq!(
        staged_bytes(dir.path()),
        0,
        "committed fills leave no staged file"
    );
}

#[tokio::test]
async fn a_staged_fill_starts_over_when_upstream_does_not_confirm_it() {
    let (sim, arts) = sim_with(&[1_500_000]).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let left = kill_mid_fill(&sim, &arts, dir.path(), 500_000).await;
    assert_eq!(left, 500_000);

    sim.reset_counters();
    let before = sim.blob_requests().len();
    // The resumed request is answered 200 with the whole zip: the staged
    // prefix is not confirmed, so it is dropped and the zip taken whole.
    sim.knobs().ignore_blob_ranges(1);
    let mirror = Mirror::start(&sim, dir.path()).await;
    let body = download(&mirror, arts[0].id).await;
    assert!(body == sim.zip_bytes(arts[0].id).expect("zip"));
    let ranges: Vec<Option<String>> = sim
        .blob_requests()
        .iter()
        .skip(before)
        .map(|r| r.header("range").map(str::to_owned))
        .collect();
    assert_eq!(ranges, [Some("bytes=500000-".to_owned())]);
    assert_eq!(sim.counters().blob_bytes, arts[0].size_in_bytes);
}

#[tokio::test]
async fn a_clean_stop_is_trusted_at_the_next_start_and_a_crash_is_not() {
    let (sim, arts) = sim_with(&[40_000]).await;
    let id = arts[0].id;
    let dir = tempfile::tempdir().expect("temp dir");
    let mirror = Mirror::start(&sim, dir.path()).await;
    let zip = download(&mirror, id).await;
    let deadline = Instant::now() + TIMEOUT;
    while mirror.metric("artifact_mirror_store_blobs").await != Some(1.0) {
        assert!(Instant::now() < deadline, "the zip was never stored");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(mirror.terminate(), Some(0));

    let orphan = plant_orphan(dir.path());
    // `cache stats` opens the index (taking the seal) but changes nothing:
    // it puts the seal back.
    let mut stats = common::mirror_command()
        .args(["cache", "stats", "--data-dir"])
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("cache stats runs");
    assert_eq!(
        common::wait_bounded(&mut stats, TIMEOUT).and_then(|s| s.code()),
        Some(0)
    );

    let mirror = Mirror::start(&sim, dir.path()).await;
    assert!(
        orphan.exists(),
        "after a clean stop (and a `cache stats`) the index was trusted"
    );
    // The totals came with the seal.
    assert_eq!(
        mirror.metric("artifact_mirror_store_blobs").await,
        Some(1.0)
    );
    assert_eq!(
        mirror.metric("artifact_mirror_store_bytes").await,
        Some(zip.len() as f64)
    );
    let gets = sim.blob_requests().len();
    assert_eq!(download(&mirror, id).await, zip);
    assert_eq!(sim.blob_requests().len(), gets, "served from the store");

    // SIGKILL leaves no seal: the next start reconciles, orphan and all.
    mirror.kill();
    let mirror = Mirror::start(&sim, dir.path()).await;
    assert!(!orphan.exists(), "after a crash the store was reconciled");
    assert_eq!(
        mirror.metric("artifact_mirror_store_blobs").await,
        Some(1.0)
    );
    assert_eq!(download(&mirror, id).await, zip);
    assert_eq!(sim.blob_requests().len(), gets, "still from the store");
}

/// A stop whose grace ends with a fill cut leaves no seal (its file may be
/// committed without a record, which only a reconcile finds): the next
/// start reconciles the store. Fails when a cut fill is not counted.
#[tokio::test]
async fn a_stop_that_cuts_a_fill_leaves_the_store_to_be_reconciled() {
    let (sim, arts) = sim_with(&[40_000]).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let mirror = Mirror::start_with(&sim, dir.path(), &["--shutdown-grace", "1s"]).await;
    sim.knobs().stall_blob_after(10_000, 1);
    let route = get(&mirror.url(arts[0].id), Some(READER_TOKEN)).await;
    assert_eq!(route.status, StatusCode::FOUND);
    let deadline = Instant::now() + TIMEOUT;
    while staged_bytes(dir.path()) < 10_000 {
        assert!(Instant::now() < deadline, "the fill never staged its bytes");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        mirror.metric("artifact_mirror_fills_in_flight").await,
        Some(1.0)
    );
    // The fill stalls past the grace: the stop cuts it.
    assert_eq!(mirror.terminate(), Some(0));

    let orphan = plant_orphan(dir.path());
    let _mirror = Mirror::start(&sim, dir.path()).await;
    assert!(!orphan.exists(), "a stop that cut a fill was trusted");
}

/// A blob file neither a record nor a sidecar names: a start that
/// reconciles removes it; a start that trusts the seal never lists the files.
fn plant_orphan(data_dir: &Path) -> std::path::PathBuf {
    let orphan = data_dir.join("blobs/sha256/ff").join("f".repeat(64));
    std::fs::create_dir_all(orphan.parent().expect("shard")).expect("shard");
    std::fs::write(&orphan, b"nothing names me").expect("orphan");
    orphan
}
