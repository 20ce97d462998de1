//! The `cache` admin commands over the built binary, on data dirs a real
//! mirror run populated (simulator + in-process mirror, then stopped):
//! stats, purge, verify (corrupt blobs, a deleted index), gc, a running
//! server's lock, and bad input.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use artifact_mirror::admin::ServerFile;
use artifact_mirror::index::Index;
use bytes::Bytes;
use common::{get, request, send, Harness, Reply, TIMEOUT};
use ghes_sim::fixtures::{ADMIN_TOKEN, PRIVATE_REPO, PUBLIC_REPO, PUBLIC_REPO_ID, READER_TOKEN};
use ghes_sim::NewArtifact;
use http::{Method, StatusCode};

/// Seeded artifacts: one public (with a digest), one private.
const PUBLIC_ART: u64 = 1_000_001;
const PRIVATE_ART: u64 = 1_000_006;

struct Run {
    code: i32,
    out: String,
    err: String,
}

/// Runs the binary (no inherited ARTIFACT_MIRROR_* variables) with a
/// bounded wait.
fn admin(args: &[&str], data_dir: &Path) -> Run {
    admin_with(args, Some(data_dir), &[])
}

fn admin_with(args: &[&str], data_dir: Option<&Path>, env: &[(&str, &str)]) -> Run {
    let mut cmd = common::mirror_command();
    cmd.args(args);
    if let Some(dir) = data_dir {
        cmd.arg("--data-dir").arg(dir);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("binary runs");
    let status = common::wait_bounded(&mut child, Duration::from_secs(60));
    let mut out = String::new();
    let mut err = String::new();
    if let Some(mut s) = child.stdout.take() {
        let _ = s.read_to_string(&mut out);
    }
    if let Some(mut s) = child.stderr.take() {
        let _ = s.read_to_string(&mut err);
    }
    let code = status
        .unwrap_or_else(|| panic!("{args:?} did not finish within 60s: {out}{err}"))
        .code()
        .unwrap_or(-1);
    Run { code, out, err }
}

/// `cache stats --json`, parsed.
fn stats(data_dir: &Path) -> serde_json::Value {
    let run = admin(&["cache", "stats", "--json"], data_dir);
    assert_eq!(run.code, 0, "{}{}", run.out, run.err);
    serde_json::from_str(&run.out).unwrap_or_else(|e| panic!("{e}: {}", run.out))
}

/// Stops the in-process mirror and waits (bounded) until its index lock is
/// released: connection and fill tasks may hold it a moment longer.
async fn stop(h: &mut Harness) {
    h.stop_mirror().await;
    let deadline = Instant::now() + TIMEOUT;
    loop {
        match Index::open(&h.data_dir.path().join("index"), 1 << 20) {
            Ok(index) => {
                drop(index);
                return;
            }
            Err(e) if e.is_locked() && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("index not released: {e}"),
        }
    }
}

fn x_cache(r: &Reply) -> &str {
    r.header("x-cache").unwrap_or("(none)")
}

/// The download route's answer and the blob's (whole: a fill's last byte
/// waits for its verdict, so the blob is recorded when this returns).
async fn download(h: &Harness, path: &str, token: &str) -> (Reply, Bytes) {
    let first = get(&h.url(path), Some(token)).await;
    assert_eq!(first.status, StatusCode::FOUND, "{path}: {:?}", first.body);
    let location = first.header("location").expect("location").to_owned();
    let blob = get(&location, None).await;
    assert_eq!(blob.status, StatusCode::OK);
    (first, blob.body)
}

fn zip_path(repo: &str, id: u64) -> String {
    format!("/repos/{repo}/actions/artifacts/{id}/zip")
}

fn blob_path(h: &Harness, id: u64) -> PathBuf {
    h.blob_file(&h.sim.artifact(id).expect("artifact").sha256)
}

fn sidecar_path(blob: &Path) -> PathBuf {
    blob.with_extension("json")
}

/// Lists both seeded repositories and downloads one artifact of each;
/// returns how many artifacts the two lists named (each becomes a fact).
async fn populate(h: &Harness) -> u64 {
    let mut listed = 0;
    for (repo, token) in [(PUBLIC_REPO, READER_TOKEN), (PRIVATE_REPO, ADMIN_TOKEN)] {
        let r = get(
            &h.url(&format!("/repos/{repo}/actions/artifacts")),
            Some(token),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK);
        listed += r.json()["artifacts"].as_array().expect("list").len() as u64;
    }
    for (repo, id, token) in [
        (PUBLIC_REPO, PUBLIC_ART, READER_TOKEN),
        (PRIVATE_REPO, PRIVATE_ART, ADMIN_TOKEN),
    ] {
        let (redirect, body) = download(h, &zip_path(repo, id), token).await;
        assert_eq!(x_cache(&redirect), "MISS");
        assert_eq!(body, h.sim.zip_bytes(id).unwrap());
    }
    listed
}

fn zip_len(h: &Harness, id: u64) -> u64 {
    h.sim.artifact(id).unwrap().size_in_bytes
}

#[tokio::test]
async fn stats_counts_exactly_what_a_mirror_run_stored() {
    let mut h = Harness::start().await;
    let listed = populate(&h).await;
    stop(&mut h).await;
    let dir = h.data_dir.path();
    let s = stats(dir);
    assert_eq!(s["server"], serde_json::Value::Null);
    assert_eq!(s["index"]["json"]["entries"], 2, "{s:#}");
    assert_eq!(s["index"]["blobs"]["records"], 2);
    assert_eq!(s["index"]["blobs"]["files"], 2);
    let bytes = zip_len(&h, PUBLIC_ART) + zip_len(&h, PRIVATE_ART);
    assert_eq!(s["index"]["blobs"]["bytes"], bytes);
    assert_eq!(s["index"]["grants"], 2);
    assert_eq!(s["index"]["facts"], listed);
    assert_eq!(s["disk"]["blob_files"], 2);
    assert_eq!(s["disk"]["bytes"], bytes);
    assert_eq!(s["disk"]["unindexed_files"], 0);
    assert_eq!(s["disk"]["partials"], 0);
    assert!(s["index"]["json"]["oldest_validated"].is_string());
    assert!(s["metrics"]["unavailable"]
        .as_str()
        .unwrap()
        .contains("not running"));

    // Each blob has its sidecar, naming the artifact and its repository.
    let sidecar: serde_json::Value =
        serde_json::from_slice(&std::fs::read(sidecar_path(&blob_path(&h, PUBLIC_ART))).unwrap())
            .unwrap();
    let record = &sidecar["artifacts"][PUBLIC_ART.to_string()];
    assert_eq!(record["size"], zip_len(&h, PUBLIC_ART));
    assert_eq!(record["repo"], "n:octo-org/public-repo");

    // The human form says the same; the settings come from a file or the
    // environment as for `serve` (no `upstream` needed).
    let config = dir.join("admin.toml");
    std::fs::write(
        &config,
        format!("data_dir = {:?}\n", dir.display().to_string()),
    )
    .unwrap();
    let run = admin_with(
        &["cache", "stats", "--config", config.to_str().unwrap()],
        None,
        &[],
    );
    assert_eq!(run.code, 0, "{}", run.err);
    for needle in [
        "server: not running",
        "cached JSON: 2 entries",
        "blobs: 2 artifacts in 2 files",
        &format!("{bytes} bytes"),
        "grants: 2",
        &format!("facts: {listed}"),
        "hit ratio: unavailable",
    ] {
        assert!(run.out.contains(needle), "{needle:?} not in:\n{}", run.out);
    }
    let via_env = admin_with(
        &["cache", "stats", "--json"],
        None,
        &[("ARTIFACT_MIRROR_DATA_DIR", dir.to_str().unwrap())],
    );
    assert_eq!(via_env.code, 0, "{}", via_env.err);
    assert!(via_env.out.contains("\"records\": 2"), "{}", via_env.out);
}

#[tokio::test]
async fn purge_artifact_drops_its_blob_grants_and_facts_only() {
    let mut h = Harness::start().await;
    let listed = populate(&h).await;
    stop(&mut h).await;
    let dir = h.data_dir.path();
    let run = admin(
        &["cache", "purge", "--artifact", &PUBLIC_ART.to_string()],
        dir,
    );
    assert_eq!(run.code, 0, "{}", run.err);
    assert!(
        run.out.contains(&format!(
            "0 cached JSON entries, 1 blob records (1 files, {} bytes freed), 1 grants, 1 facts",
            zip_len(&h, PUBLIC_ART)
        )),
        "{}",
        run.out
    );
    let gone = blob_path(&h, PUBLIC_ART);
    assert!(!gone.exists() && !sidecar_path(&gone).exists());
    let kept = blob_path(&h, PRIVATE_ART);
    assert!(kept.exists() && sidecar_path(&kept).exists());
    let s = stats(dir);
    assert_eq!(s["index"]["blobs"]["records"], 1);
    assert_eq!(s["index"]["grants"], 1);
    assert_eq!(s["index"]["facts"], listed - 1);
    assert_eq!(s["index"]["json"]["entries"], 2);

    // The next mirror fetches the purged artifact again, and only it.
    h.restart_mirror().await;
    h.sim.reset_counters();
    let (redirect, body) = download(&h, &zip_path(PUBLIC_REPO, PUBLIC_ART), READER_TOKEN).await;
    assert_eq!(x_cache(&redirect), "MISS");
    assert_eq!(body, h.sim.zip_bytes(PUBLIC_ART).unwrap());
    let c = h.sim.counters();
    assert_eq!(
        (c.download, c.get, c.blob_gets),
        (1, 0, 1),
        "grant gone: the download endpoint was asked; blob fetched again"
    );
    let (redirect, body) = download(&h, &zip_path(PRIVATE_REPO, PRIVATE_ART), ADMIN_TOKEN).await;
    assert_eq!(x_cache(&redirect), "HIT");
    assert_eq!(body, h.sim.zip_bytes(PRIVATE_ART).unwrap());
    let c = h.sim.counters();
    assert_eq!((c.get, c.blob_gets), (1, 1), "renewed grant, no new fetch");
}

#[tokio::test]
async fn purge_repo_drops_its_json_for_every_credential_in_both_forms_and_its_blobs() {
    let mut h = Harness::start().await;
    let named = format!("/repos/{PUBLIC_REPO}/actions/artifacts");
    let by_id = format!("/repositories/{PUBLIC_REPO_ID}/actions/artifacts");
    let private = format!("/repos/{PRIVATE_REPO}/actions/artifacts");
    for (path, token) in [
        (&named, READER_TOKEN),
        (&named, ADMIN_TOKEN),
        (&by_id, READER_TOKEN),
        (&private, ADMIN_TOKEN),
    ] {
        let r = get(&h.url(path), Some(token)).await;
        assert_eq!((r.status, x_cache(&r)), (StatusCode::OK, "MISS"), "{path}");
    }
    // One public blob downloaded under each path form, one private blob.
    let second_public = PUBLIC_ART + 1;
    download(
        &h,
        &format!("/repositories/{PUBLIC_REPO_ID}/actions/artifacts/{PUBLIC_ART}/zip"),
        READER_TOKEN,
    )
    .await;
    download(&h, &zip_path(PUBLIC_REPO, second_public), READER_TOKEN).await;
    download(&h, &zip_path(PRIVATE_REPO, PRIVATE_ART), ADMIN_TOKEN).await;
    stop(&mut h).await;
    let dir = h.data_dir.path();
    let before = stats(dir);
    assert_eq!(before["index"]["json"]["entries"], 4);
    assert_eq!(before["index"]["blobs"]["records"], 3);

    // GitHub names are case-insensitive: so is the purge.
    let run = admin(&["cache", "purge", "--repo", "Octo-Org/Public-Repo"], dir);
    assert_eq!(run.code, 0, "{}", run.err);
    let public_facts = before["index"]["facts"].as_u64().unwrap() - 3;
    assert!(
        run.out.contains(&format!(
            "purged Octo-Org/Public-Repo: 3 cached JSON entries, 2 blob records (2 files, {} bytes freed), 2 grants, {public_facts} facts",
            zip_len(&h, PUBLIC_ART) + zip_len(&h, second_public)
        )),
        "{}",
        run.out
    );
    let s = stats(dir);
    assert_eq!(s["index"]["json"]["entries"], 1);
    assert_eq!(s["index"]["blobs"]["records"], 1);
    assert_eq!(s["index"]["grants"], 1);
    assert_eq!(s["index"]["facts"], 3);
    assert!(blob_path(&h, PRIVATE_ART).exists());

    h.restart_mirror().await;
    h.sim.reset_counters();
    for path in [&named, &by_id] {
        let r = get(&h.url(path), Some(READER_TOKEN)).await;
        assert_eq!(x_cache(&r), "MISS", "{path}: the entry was purged");
    }
    let r = get(&h.url(&private), Some(ADMIN_TOKEN)).await;
    assert_eq!(
        x_cache(&r),
        "REVALIDATED",
        "another repository's entry stays"
    );
    let (redirect, _) = download(&h, &zip_path(PUBLIC_REPO, PUBLIC_ART), READER_TOKEN).await;
    assert_eq!(x_cache(&redirect), "MISS");
    let (redirect, _) = download(&h, &zip_path(PRIVATE_REPO, PRIVATE_ART), ADMIN_TOKEN).await;
    assert_eq!(x_cache(&redirect), "HIT");
    assert_eq!(h.sim.counters().blob_gets, 1);
}

#[tokio::test]
async fn purge_all_empties_the_cache() {
    let mut h = Harness::start().await;
    populate(&h).await;
    stop(&mut h).await;
    let dir = h.data_dir.path();
    let run = admin(&["cache", "purge", "--all"], dir);
    assert_eq!(run.code, 0, "{}", run.err);
    assert!(
        run.out
            .starts_with("purged everything: 2 cached JSON entries, 2 blob records (2 files"),
        "{}",
        run.out
    );
    let s = stats(dir);
    for (tree, key) in [
        ("json", "entries"),
        ("json", "bytes"),
        ("blobs", "records"),
        ("blobs", "bytes"),
    ] {
        assert_eq!(s["index"][tree][key], 0, "{tree}.{key}: {s:#}");
    }
    assert_eq!(
        (s["index"]["grants"].as_u64(), s["index"]["facts"].as_u64()),
        (Some(0), Some(0))
    );
    let shards = dir.join("blobs").join("sha256");
    let left: Vec<PathBuf> = std::fs::read_dir(&shards)
        .unwrap()
        .flat_map(|s| std::fs::read_dir(s.unwrap().path()).unwrap())
        .map(|f| f.unwrap().path())
        .collect();
    assert!(left.is_empty(), "files left: {left:?}");

    h.restart_mirror().await;
    h.sim.reset_counters();
    let r = get(
        &h.url(&format!("/repos/{PUBLIC_REPO}/actions/artifacts")),
        Some(READER_TOKEN),
    )
    .await;
    assert_eq!(x_cache(&r), "MISS");
    let (redirect, _) = download(&h, &zip_path(PUBLIC_REPO, PUBLIC_ART), READER_TOKEN).await;
    assert_eq!(x_cache(&redirect), "MISS");
    assert_eq!(h.sim.counters().blob_gets, 1);
}

/// `purge --all` seals the store with its totals and the next start trusts
/// them: they must say empty, or the purged zips would go on counting
/// against the quota (and in the store gauges).
#[tokio::test]
async fn a_start_after_purge_all_counts_an_empty_store() {
    let mut h = Harness::start().await;
    populate(&h).await;
    stop(&mut h).await;
    let run = admin(&["cache", "purge", "--all"], h.data_dir.path());
    assert_eq!(run.code, 0, "{}", run.err);

    h.restart_mirror().await;
    for gauge in ["artifact_mirror_store_blobs", "artifact_mirror_store_bytes"] {
        assert_eq!(common::metric(h.mirror, gauge).await, Some(0.0), "{gauge}");
    }
}

/// Every file under `dir`: path → (length, modification time).
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (u64, SystemTime)> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(path) = todo.pop() {
        let meta = std::fs::metadata(&path).unwrap();
        if meta.is_dir() {
            todo.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        } else {
            out.insert(path, (meta.len(), meta.modified().unwrap()));
        }
    }
    out
}

#[tokio::test]
async fn bad_input_exits_2_and_touches_nothing() {
    let mut h = Harness::start().await;
    populate(&h).await;
    stop(&mut h).await;
    let dir = h.data_dir.path();
    let before = snapshot(dir);
    let cases: &[(&[&str], &str)] = &[
        (&["cache", "purge"], "required"),
        (&["cache", "purge", "--repo", "nope"], "OWNER/REPO"),
        (
            &["cache", "purge", "--repo", "a/b/c"],
            "Invalid repository name",
        ),
        (
            &["cache", "purge", "--repo", "bad owner/x"],
            "Invalid owner name",
        ),
        (&["cache", "purge", "--repo", ""], "OWNER/REPO"),
        (&["cache", "purge", "--artifact", "0"], "positive integer"),
        (&["cache", "purge", "--artifact", "abc"], "positive integer"),
        (
            &["cache", "purge", "--artifact", "99999999999999999999"],
            "positive integer",
        ),
        (
            &["cache", "purge", "--all", "--artifact", "5"],
            "cannot be used",
        ),
        (
            &["cache", "purge", "--all", "--repo", "o/r"],
            "cannot be used",
        ),
        (&["cache", "frobnicate"], "frobnicate"),
        (
            &["cache", "gc", "--blob-quota-bytes", "lots"],
            "blob-quota-bytes",
        ),
        (
            &["cache", "verify", "--config", "/nonexistent/admin.toml"],
            "cannot read config file",
        ),
    ];
    for (args, needle) in cases {
        let run = admin(args, dir);
        assert_eq!(run.code, 2, "{args:?}: {}{}", run.out, run.err);
        assert!(
            run.err.contains(needle),
            "{args:?}: {needle:?} not in {}",
            run.err
        );
        assert!(run.out.is_empty(), "{args:?}: {}", run.out);
    }
    assert_eq!(snapshot(dir), before, "bad input changed the data dir");

    // A data dir that does not exist is not created.
    let missing = dir.join("no-such-dir");
    for args in [
        &["cache", "purge", "--all"][..],
        &["cache", "stats"],
        &["cache", "gc"],
    ] {
        let run = admin(args, &missing);
        assert_eq!(run.code, 1, "{args:?}: {}", run.err);
        assert!(run.err.contains("there is no data dir"), "{}", run.err);
    }
    assert!(!missing.exists());
}

#[tokio::test]
async fn verify_removes_a_corrupt_blob_and_the_next_download_fetches_it_again() {
    let mut h = Harness::start().await;
    populate(&h).await;
    stop(&mut h).await;
    let dir = h.data_dir.path();
    let corrupt = blob_path(&h, PUBLIC_ART);
    let mut bytes = std::fs::read(&corrupt).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&corrupt, &bytes).unwrap();
    std::fs::write(dir.join("tmp").join("7-abc.part"), b"cut").unwrap();

    let run = admin(&["cache", "verify"], dir);
    assert_eq!(run.code, 0, "{}", run.err);
    assert!(
        run.out.contains(
            "2 blob files checked, 1 ok, 1 corrupt removed, 0 records rebuilt, 0 orphans removed"
        ),
        "{}",
        run.out
    );
    let sha = h.sim.artifact(PUBLIC_ART).unwrap().sha256;
    assert!(
        run.out.contains(&format!(
            "corrupt: sha256:{sha} (artifacts {PUBLIC_ART}): its content hashes to"
        )),
        "{}",
        run.out
    );
    assert!(
        run.out.contains("1 partial downloads removed"),
        "{}",
        run.out
    );
    assert!(!corrupt.exists() && !sidecar_path(&corrupt).exists());
    assert!(blob_path(&h, PRIVATE_ART).exists());
    let s = stats(dir);
    assert_eq!(s["index"]["blobs"]["records"], 1);
    // Verified again: nothing left to do.
    let again = admin(&["cache", "verify"], dir);
    assert!(
        again.out.contains("1 blob files checked, 1 ok, 0 corrupt"),
        "{}",
        again.out
    );

    h.restart_mirror().await;
    h.sim.reset_counters();
    let (redirect, body) = download(&h, &zip_path(PUBLIC_REPO, PUBLIC_ART), READER_TOKEN).await;
    assert_eq!(x_cache(&redirect), "MISS");
    assert_eq!(
        body,
        h.sim.zip_bytes(PUBLIC_ART).unwrap(),
        "correct bytes again"
    );
    let (redirect, _) = download(&h, &zip_path(PRIVATE_REPO, PRIVATE_ART), ADMIN_TOKEN).await;
    assert_eq!(x_cache(&redirect), "HIT");
    assert_eq!(h.sim.counters().blob_gets, 1);
}

#[tokio::test]
async fn verify_rebuilds_a_deleted_index_from_the_blob_files() {
    let mut h = Harness::start().await;
    populate(&h).await;
    stop(&mut h).await;
    let dir = h.data_dir.path();
    std::fs::remove_dir_all(dir.join("index")).unwrap();
    let run = admin(&["cache", "verify"], dir);
    assert_eq!(run.code, 0, "{}", run.err);
    assert!(
        run.out.contains(
            "2 blob files checked, 2 ok, 0 corrupt removed, 2 records rebuilt, 0 orphans removed"
        ),
        "{}",
        run.out
    );
    let s = stats(dir);
    assert_eq!(s["index"]["blobs"]["records"], 2);
    assert_eq!(s["index"]["blobs"]["files"], 2);
    assert_eq!(s["index"]["grants"], 0, "permissions are not rebuilt");

    h.restart_mirror().await;
    h.sim.reset_counters();
    let (redirect, body) = download(&h, &zip_path(PUBLIC_REPO, PUBLIC_ART), READER_TOKEN).await;
    assert_eq!(x_cache(&redirect), "HIT");
    assert_eq!(body, h.sim.zip_bytes(PUBLIC_ART).unwrap());
    let c = h.sim.counters();
    assert_eq!(c.download, 1, "upstream asked for permission again");
    assert_eq!(c.blob_gets, 0, "no new blob fetch");
}

/// A server started on a data dir whose index is gone keeps the blobs
/// (it used to delete every file as an orphan).
#[tokio::test]
async fn a_start_without_an_index_rebuilds_instead_of_deleting() {
    let mut h = Harness::start().await;
    populate(&h).await;
    stop(&mut h).await;
    std::fs::remove_dir_all(h.data_dir.path().join("index")).unwrap();
    h.restart_mirror().await;
    h.sim.reset_counters();
    for (repo, id, token) in [
        (PUBLIC_REPO, PUBLIC_ART, READER_TOKEN),
        (PRIVATE_REPO, PRIVATE_ART, ADMIN_TOKEN),
    ] {
        let (redirect, body) = download(&h, &zip_path(repo, id), token).await;
        assert_eq!(x_cache(&redirect), "HIT", "{id}");
        assert_eq!(body, h.sim.zip_bytes(id).unwrap());
    }
    assert_eq!(h.sim.counters().blob_gets, 0);
}

#[tokio::test]
async fn gc_applies_a_lowered_quota_least_recently_used_first() {
    let mut h = Harness::start().await;
    let arts: Vec<_> = (0..3)
        .map(|i| {
            h.sim.add_artifact(NewArtifact {
                repo: PUBLIC_REPO.into(),
                run_id: 9001,
                name: format!("dist-{i}"),
                payload_bytes: 100_000 + i,
                with_digest: false,
                expired: false,
            })
        })
        .collect();
    for art in &arts {
        download(&h, &zip_path(PUBLIC_REPO, art.id), READER_TOKEN).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Using the first again makes the second the least recently used.
    download(&h, &zip_path(PUBLIC_REPO, arts[0].id), READER_TOKEN).await;
    stop(&mut h).await;
    let dir = h.data_dir.path();
    let keep = arts[0].size_in_bytes + arts[2].size_in_bytes;
    let quota = (keep + 10).to_string();
    let run = admin(&["cache", "gc", "--blob-quota-bytes", &quota], dir);
    assert_eq!(run.code, 0, "{}", run.err);
    assert!(
        run.out.contains(&format!(
            "0 expired and 1 least recently used past the quota of {quota} bytes removed; {keep} bytes stored"
        )),
        "{}",
        run.out
    );
    assert!(run.out.contains("cached JSON: 0 entries"), "{}", run.out);
    assert!(!blob_path(&h, arts[1].id).exists());
    assert!(blob_path(&h, arts[0].id).exists() && blob_path(&h, arts[2].id).exists());

    // The JSON side: past a 1-byte disk limit every entry goes.
    let entries = stats(dir)["index"]["json"]["entries"].as_u64().unwrap();
    assert!(entries > 0);
    let run = admin(&["cache", "gc", "--json-disk-bytes", "1"], dir);
    assert_eq!(run.code, 0, "{}", run.err);
    assert!(
        run.out.contains(&format!("cached JSON: {entries} entries")),
        "{}",
        run.out
    );
    assert!(run.out.contains("0 least recently used"), "{}", run.out);
    assert_eq!(stats(dir)["index"]["json"]["entries"], 0);

    h.restart_mirror().await;
    h.sim.reset_counters();
    let (redirect, _) = download(&h, &zip_path(PUBLIC_REPO, arts[1].id), READER_TOKEN).await;
    assert_eq!(x_cache(&redirect), "MISS");
    for kept in [&arts[0], &arts[2]] {
        let (redirect, _) = download(&h, &zip_path(PUBLIC_REPO, kept.id), READER_TOKEN).await;
        assert_eq!(x_cache(&redirect), "HIT");
    }
    assert_eq!(h.sim.counters().blob_gets, 1);
}

#[tokio::test]
async fn gc_drops_facts_of_expired_artifacts_and_grants_without_a_blob() {
    let mut h = Harness::start_with(|l| {
        l.max_blob_bytes = Some(150_000);
        // The unkept blob lingers this long, holding the store open.
        l.blob_url_ttl = Some("1s".parse().unwrap());
    })
    .await;
    let add = |name: &str, payload_bytes| {
        h.sim.add_artifact(NewArtifact {
            repo: PUBLIC_REPO.into(),
            run_id: 9001,
            name: name.into(),
            payload_bytes,
            with_digest: true,
            expired: false,
        })
    };
    let (kept, gone, big) = (
        add("kept", 50_000),
        add("gone", 60_000),
        add("big", 200_000),
    );
    for art in [&kept, &gone, &big] {
        download(&h, &zip_path(PUBLIC_REPO, art.id), READER_TOKEN).await;
    }
    // `big` is over max_blob_bytes: streamed, not stored, yet granted.
    // The list teaches the mirror `gone`'s `expires_at`, 5 s away; then its
    // time passes with the mirror told nothing more. (JSON that already
    // shows it expired would drop its blob and grant at once.)
    let now = common::unix_now;
    let expires_at = now() + 5;
    h.sim.set_expires_at(gone.id, expires_at);
    let list = h.url(&format!("/repos/{PUBLIC_REPO}/actions/artifacts"));
    assert_eq!(get(&list, Some(READER_TOKEN)).await.status, StatusCode::OK);
    assert!(now() < expires_at, "the list came too late to test gc");
    let deadline = Instant::now() + Duration::from_secs(7);
    while now() <= expires_at {
        assert!(
            Instant::now() < deadline,
            "the clock never passed expires_at"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop(&mut h).await;
    let dir = h.data_dir.path();
    let before = stats(dir);
    let count = |s: &serde_json::Value, what: &str| s["index"][what].as_u64().expect(what);
    assert_eq!(count(&before, "grants"), 3);

    let run = admin(&["cache", "gc"], dir);
    assert_eq!(run.code, 0, "{}", run.err);
    for line in [
        "blobs: 1 expired and 0 least recently used",
        "index: facts of 1 expired artifacts and grants of 1 artifacts without a stored blob removed",
    ] {
        assert!(run.out.contains(line), "{line:?} not in {}", run.out);
    }
    let after = stats(dir);
    assert_eq!(count(&after, "facts"), count(&before, "facts") - 1);
    assert_eq!(count(&after, "grants"), 1, "only the stored blob's grant");
    assert!(!blob_path(&h, gone.id).exists());
    assert!(blob_path(&h, kept.id).exists());
    let again = admin(&["cache", "gc"], dir);
    assert!(
        again
            .out
            .contains("facts of 0 expired artifacts and grants of 0 artifacts"),
        "{}",
        again.out
    );

    // The kept blob is still served from the store, on its kept grant.
    h.restart_mirror().await;
    h.sim.reset_counters();
    let (redirect, body) = download(&h, &zip_path(PUBLIC_REPO, kept.id), READER_TOKEN).await;
    assert_eq!(x_cache(&redirect), "HIT");
    assert_eq!(body, h.sim.zip_bytes(kept.id).unwrap());
    assert_eq!(h.sim.counters().blob_gets, 0);
}

/// `serve` names itself in server.json; commands that need the index
/// refuse with its pid, `stats` reports what it can; after SIGTERM the file
/// is gone and the commands work again.
#[test]
fn commands_refuse_a_data_dir_a_running_server_holds() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = common::serve_command("127.0.0.1:0", dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("serve starts");
    let deadline = Instant::now() + Duration::from_secs(20);
    let server = loop {
        if let Some(s) = ServerFile::read(dir.path()) {
            break Some(s);
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let server = server.expect("server.json written within 20s");
        assert_eq!(server.pid, child.id());
        assert_ne!(
            server.listen.port(),
            0,
            "the bound port, not the configured 0"
        );
        // It is the address it answers on.
        let mut s = std::net::TcpStream::connect(server.listen).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

        let expected = format!(
            "is in use by artifact-mirror pid {} (listening on {}, since {}); stop it first",
            server.pid, server.listen, server.started_at
        );
        for args in [
            &["cache", "purge", "--all"][..],
            &["cache", "verify"],
            &["cache", "gc"],
        ] {
            let run = admin(args, dir.path());
            assert_eq!(run.code, 1, "{args:?}: {}{}", run.out, run.err);
            assert!(run.err.contains(&expected), "{args:?}: {}", run.err);
        }
        let run = admin(&["cache", "stats"], dir.path());
        assert_eq!(run.code, 0, "{}", run.err);
        assert!(
            run.out
                .contains(&format!("server: artifact-mirror pid {}", server.pid)),
            "{}",
            run.out
        );
        // The server's own /metrics was read: only /healthz was asked.
        assert!(
            run.out
                .contains("hit ratio: unavailable (no cache outcomes counted yet)"),
            "{}",
            run.out
        );
        assert!(
            run.out.contains("store (server): 0 blobs, 0 bytes"),
            "{}",
            run.out
        );
        assert!(run.out.contains("disk: 0 blob files"), "{}", run.out);
    }));
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = common::wait_bounded(&mut child, Duration::from_secs(20));
    if let Err(panic) = outcome {
        let mut log = String::new();
        if let Some(mut err) = child.stderr.take() {
            let _ = err.read_to_string(&mut log);
        }
        eprintln!("server log:\n{log}");
        std::panic::resume_unwind(panic);
    }
    assert_eq!(status.and_then(|s| s.code()), Some(0));
    assert_eq!(
        ServerFile::read(dir.path()),
        None,
        "removed at a clean exit"
    );
    let run = admin(&["cache", "stats"], dir.path());
    assert_eq!(run.code, 0, "{}", run.err);
    assert!(run.out.contains("server: not running"), "{}", run.out);
}

/// Answers every connection with `response` (a whole HTTP/1.1 message), or
/// never answers when it is `None`; returns the port.
fn fake_server(response: Option<String>) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).unwrap_or(0) == 1 {
                head.push(byte[0]);
            }
            match &response {
                Some(r) => {
                    let _ = stream.write_all(r.as_bytes());
                }
                None => held.push(stream),
            }
        }
    });
    port
}

fn http_answer(status: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// `cache stats` while the index is held: the hit ratio and store figures
/// come from the server's `/metrics` (reached over loopback for a wildcard
/// listen address), or it says why there are none.
#[test]
fn stats_reads_the_running_servers_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let _held = Index::open(&dir.path().join("index"), 1 << 20).unwrap();
    let metrics = "\
# TYPE artifact_mirror_requests_total counter
artifact_mirror_requests_total{route=\"list_repo_artifacts\",cache=\"hit\"} 4
artifact_mirror_requests_total{route=\"list_repo_artifacts\",cache=\"revalidated\"} 3
artifact_mirror_requests_total{route=\"download_artifact\",cache=\"hit\"} 2
artifact_mirror_requests_total{route=\"download_artifact\",cache=\"coalesced\"} 1
artifact_mirror_requests_total{route=\"download_artifact\",cache=\"miss\"} 6
artifact_mirror_requests_total{route=\"get_artifact\",cache=\"bypass\"} 3
artifact_mirror_requests_total{route=\"get_artifact\",cache=\"stale\"} 1
artifact_mirror_requests_total{route=\"forward\"} 50
artifact_mirror_store_bytes 123456
artifact_mirror_store_blobs 3
";
    let server_at = |listen: String, tls: bool| {
        ServerFile {
            listen: listen.parse().unwrap(),
            tls,
            ..ServerFile::new("127.0.0.1:1".parse().unwrap(), false)
        }
        .write(dir.path())
        .unwrap();
    };
    let port = fake_server(Some(http_answer("200 OK", metrics)));
    server_at(format!("0.0.0.0:{port}"), false);
    let s = stats(dir.path());
    assert_eq!(s["server"]["pid"], std::process::id());
    assert_eq!(s["index"], serde_json::Value::Null);
    assert_eq!(s["metrics"]["hit_ratio"], 0.5, "{s:#}");
    assert_eq!(s["metrics"]["outcomes"]["hit"], 6.0);
    assert_eq!(s["metrics"]["store_bytes"], 123_456.0);
    assert_eq!(s["metrics"]["store_blobs"], 3.0);
    let run = admin(&["cache", "stats"], dir.path());
    assert!(
        run.out.contains(
            "hit ratio since start: 50.0% (hit 6, revalidated 3, coalesced 1 of 20 cache outcomes)"
        ),
        "{}",
        run.out
    );
    assert!(
        run.out.contains("store (server): 3 blobs, 123456 bytes"),
        "{}",
        run.out
    );

    let missing = fake_server(Some(http_answer("404 Not Found", "{}")));
    server_at(format!("127.0.0.1:{missing}"), false);
    let run = admin(&["cache", "stats"], dir.path());
    assert_eq!(run.code, 0, "{}", run.err);
    assert!(
        run.out
            .contains("hit ratio: unavailable (the server has no /metrics"),
        "{}",
        run.out
    );

    let silent = fake_server(None);
    server_at(format!("127.0.0.1:{silent}"), false);
    let started = Instant::now();
    let run = admin(&["cache", "stats"], dir.path());
    assert!(run.out.contains("no answer within"), "{}", run.out);
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "the wait is bounded"
    );

    server_at(format!("127.0.0.1:{port}"), true);
    let run = admin(&["cache", "stats"], dir.path());
    assert!(run.out.contains("serves HTTPS"), "{}", run.out);

    // No server.json: the holder is named as the lock's owner (Linux) and
    // the commands that need the index refuse.
    std::fs::remove_file(ServerFile::path(dir.path())).unwrap();
    let run = admin(&["cache", "purge", "--all"], dir.path());
    assert_eq!(run.code, 1);
    assert!(run.err.contains("is in use by"), "{}", run.err);
    if cfg!(target_os = "linux") {
        assert!(
            run.err.contains(&format!("pid {}", std::process::id())),
            "{}",
            run.err
        );
    }
    let run = admin(&["cache", "stats"], dir.path());
    assert_eq!(run.code, 0, "{}", run.err);
    assert!(run.out.contains("in use: the data dir"), "{}", run.out);
}

/// A DELETE through the mirror drops the blob's sidecar with its file, so
/// a later rebuild cannot bring the deleted artifact back.
#[tokio::test]
async fn a_delete_through_the_mirror_removes_the_sidecar_too() {
    let h = Harness::start().await;
    populate(&h).await;
    let path = blob_path(&h, PUBLIC_ART);
    assert!(sidecar_path(&path).exists());
    let del = send(request(
        Method::DELETE,
        &h.url(&format!(
            "/repos/{PUBLIC_REPO}/actions/artifacts/{PUBLIC_ART}"
        )),
        Some(ADMIN_TOKEN),
    ))
    .await;
    assert_eq!(del.status, StatusCode::NO_CONTENT);
    assert!(!path.exists() && !sidecar_path(&path).exists());
}

/// What `cache verify` writes (a rebuilt index, a missing sidecar) is as
/// private as what the server writes, whatever the umask.
#[cfg(unix)]
#[tokio::test]
async fn verify_writes_private_files_whatever_the_umask() {
    let mut h = Harness::start().await;
    populate(&h).await;
    stop(&mut h).await;
    let dir = h.data_dir.path();
    let verify = || {
        let mut cmd = common::mirror_command();
        cmd.args(["cache", "verify", "--data-dir"]).arg(dir);
        let mut child = common::under_umask_022(&cmd).spawn().expect("binary runs");
        let status = common::wait_bounded(&mut child, Duration::from_secs(60));
        assert_eq!(status.and_then(|s| s.code()), Some(0));
    };
    std::fs::remove_dir_all(dir.join("index")).unwrap();
    verify();
    let sidecar = sidecar_path(&blob_path(&h, PUBLIC_ART));
    std::fs::remove_file(&sidecar).unwrap();
    verify();
    assert!(sidecar.exists(), "the sidecar was not rewritten");
    let (wrong, seen) = common::not_private(dir);
    assert!(seen > 10, "only {seen} entries walked");
    assert!(wrong.is_empty(), "readable by others: {wrong:?}");
}
