//! A full disk still serves: with the data dir on a 6 MiB tmpfs, a 12 MB
//! zip cannot be staged (ENOSPC for real); its clients still get it whole,
//! relayed from upstream, nothing is kept, a metric counts it, and smaller
//! zips go on being stored.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{get, Harness};
use ghes_sim::fixtures::{PRIVATE_REPO, READER_TOKEN};
use ghes_sim::NewArtifact;
use http::StatusCode;

/// A tmpfs mounted for the test's life.
struct Tmpfs {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("data");
        std::fs::create_dir(&path).expect("mount point");
        let status = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(&path)
            .status();
        assert!(
            status.is_ok_and(|s| s.success()),
            "cannot mount a tmpfs (this test needs root: see .ci/run)"
        );
        Tmpfs { _dir: dir, path }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

fn part_files(data_dir: &Path) -> usize {
    std::fs::read_dir(data_dir.join("tmp"))
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| e.path().extension().is_some_and(|x| x == "part"))
                .count()
        })
        .unwrap_or(0)
}

/// Blob files (not sidecars) under the data dir.
fn blob_files(data_dir: &Path) -> usize {
    walk(&data_dir.join("blobs"))
        .iter()
        .filter(|p| p.extension().is_none())
        .count()
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .flat_map(|e| {
                    let p = e.path();
                    if p.is_dir() {
                        walk(&p)
                    } else {
                        vec![p]
                    }
                })
                .collect()
        })
        .unwrap_or_default()
}

async fn download(h: &Harness, id: u64) -> (StatusCode, Vec<u8>) {
    let url = h.url(&format!("/repos/{PRIVATE_REPO}/actions/artifacts/{id}/zip"));
    let first = get(&url, Some(READER_TOKEN)).await;
    assert_eq!(first.status, StatusCode::FOUND, "{:?}", first.body);
    let location = first.header("location").expect("location").to_owned();
    let blob = get(&location, None).await;
    (blob.status, blob.body.to_vec())
}

#[tokio::test]
#[ignore = "needs root to mount a tmpfs: see .ci/run"]
async fn a_zip_the_disk_cannot_hold_is_relayed_whole_and_not_kept() {
    let disk = Tmpfs::mount("6m");
    let data_dir = disk.path.clone();
    let h = Harness::start_with(|l| {
        l.data_dir = Some(data_dir);
        l.status_page = Some(artifact_mirror::config::StatusPage::Summary);
    })
    .await;
    let add = |name: &str, payload| {
        h.sim.add_artifact(NewArtifact {
            repo: PRIVATE_REPO.into(),
            run_id: 9001,
            name: name.into(),
            payload_bytes: payload,
            with_digest: false,
            expired: false,
        })
    };
    let big = add("big", 12_000_000);
    let zip = h.sim.zip_bytes(big.id).expect("zip");
    let (a, b) = tokio::join!(download(&h, big.id), download(&h, big.id));
    for (status, body) in [a, b] {
        assert_eq!(status, StatusCode::OK);
        assert!(body == zip, "a relayed zip differs ({} bytes)", body.len());
    }
    h.until_fills_end().await;
    assert_eq!(blob_files(&disk.path), 0, "nothing kept");
    assert_eq!(part_files(&disk.path), 0, "the staged bytes were freed");
    let metrics = get(&format!("http://{}/metrics", h.mirror), None).await;
    let text = String::from_utf8_lossy(&metrics.body).into_owned();
    assert!(
        text.contains("artifact_mirror_fills_not_kept_total 1\n"),
        "{text}"
    );
    // The status page says so, not "failed".
    let page = get(&format!("http://{}/_mirror/status", h.mirror), None).await;
    let page = String::from_utf8_lossy(&page.body).into_owned();
    let outcome = "<td>relayed from upstream, not kept (disk full)</td></tr>";
    assert_eq!(page.matches(outcome).count(), 1, "{page}");

    // A later client of the same zip is relayed too; a small zip is stored.
    let (status, body) = download(&h, big.id).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body == zip);
    let small = add("small", 100_000);
    let (status, body) = download(&h, small.id).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body == h.sim.zip_bytes(small.id).expect("zip"));
    h.until_fills_end().await;
    assert_eq!(blob_files(&disk.path), 1, "the small zip is stored");
}
