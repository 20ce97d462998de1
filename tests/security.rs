//! Who may see a cached byte, attacked from the outside: revoked access,
//! other repositories' paths, both path forms, name case and coalescing
//! across credentials. Every test here can fail if a partition leaks.

mod common;

use std::time::{Duration, Instant};

use common::{get, get_with, Harness, Reply};
use ghes_sim::fixtures::{
    OUTSIDER_TOKEN, PRIVATE_REPO, PRIVATE_REPO_ID, PUBLIC_REPO, PUBLIC_REPO_ID, READER_TOKEN,
};
use ghes_sim::NewArtifact;
use http::StatusCode;

fn private_artifact(h: &Harness) -> ghes_sim::Artifact {
    h.sim.add_artifact(NewArtifact {
        repo: PRIVATE_REPO.into(),
        run_id: 9001,
        name: "confidential".into(),
        payload_bytes: 20_000,
        with_digest: true,
        expired: false,
    })
}

/// The zip bytes a download through the mirror yields, or its non-302 answer.
async fn zip_via_mirror(h: &Harness, path: &str, token: Option<&str>) -> Result<Reply, Reply> {
    let first = get(&h.url(path), token).await;
    if first.status != StatusCode::FOUND {
        return Err(first);
    }
    let location = first.header("location").expect("location").to_owned();
    Ok(get(&location, None).await)
}

/// A stored blob is reachable only through a path upstream answers with a
/// 302 for this credential: an artifact id under another repository's path
/// (either path form, any case of the names) gets upstream's answer, never
/// a signed URL.
#[tokio::test]
async fn an_artifact_under_another_repositorys_path_gets_no_bytes() {
    let h = Harness::start().await;
    let art = private_artifact(&h);
    let own = format!("/repos/{PRIVATE_REPO}/actions/artifacts/{}/zip", art.id);
    zip_via_mirror(&h, &own, Some(READER_TOKEN))
        .await
        .expect("the reader may download it");
    h.until_stored(1).await;
    // The reader's metadata of it is cached too.
    let meta = format!("/repos/{PRIVATE_REPO}/actions/artifacts/{}", art.id);
    assert_eq!(
        get(&h.url(&meta), Some(READER_TOKEN)).await.status,
        StatusCode::OK
    );

    let id = art.id;
    let upper = PRIVATE_REPO.to_ascii_uppercase();
    let paths = [
        format!("/repos/{PUBLIC_REPO}/actions/artifacts/{id}/zip"),
        format!("/repositories/{PUBLIC_REPO_ID}/actions/artifacts/{id}/zip"),
        format!("/repositories/{PRIVATE_REPO_ID}/actions/artifacts/{id}/zip"),
        format!("/repos/{upper}/actions/artifacts/{id}/zip"),
        format!("/repos/{PUBLIC_REPO}/actions/artifacts/{id}"),
        format!("/repos/{upper}/actions/artifacts/{id}"),
    ];
    for path in &paths {
        for who in [Some(OUTSIDER_TOKEN), None] {
            let r = get(&h.url(path), who).await;
            assert!(
                matches!(r.status, StatusCode::NOT_FOUND | StatusCode::FORBIDDEN),
                "{path} {who:?}: {} {:?}",
                r.status,
                r.header("location")
            );
            assert!(r.header("location").is_none(), "{path} {who:?}");
            assert!(
                !String::from_utf8_lossy(&r.body).contains("confidential"),
                "{path} {who:?}"
            );
        }
    }
    // The reader itself, holding a grant for the artifact, asks under the
    // public repository's path: upstream says the artifact is not there.
    let elsewhere = format!("/repos/{PUBLIC_REPO}/actions/artifacts/{id}/zip");
    let r = get(&h.url(&elsewhere), Some(READER_TOKEN)).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

/// Concurrent identical requests share one upstream call only within one
/// credential: an outsider or anonymous request arriving while the reader's
/// is in flight gets its own upstream answer.
#[tokio::test]
async fn coalescing_never_joins_another_credentials_call() {
    let h = Harness::start().await;
    let art = private_artifact(&h);
    h.sim.knobs().set_latency(Duration::from_millis(400));
    for path in [
        format!("/repos/{PRIVATE_REPO}/actions/artifacts"),
        format!("/repos/{PRIVATE_REPO}/actions/artifacts/{}", art.id),
        format!("/repositories/{PRIVATE_REPO_ID}/actions/artifacts"),
    ] {
        let url = h.url(&path);
        let mut tasks = Vec::new();
        for who in [
            READER_TOKEN,
            OUTSIDER_TOKEN,
            "",
            READER_TOKEN,
            OUTSIDER_TOKEN,
            "",
        ] {
            let url = url.clone();
            tasks.push(tokio::spawn(async move {
                let token = (!who.is_empty()).then_some(who);
                (who, get(&url, token).await)
            }));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for task in tasks {
            let (who, r) = task.await.unwrap();
            if who == READER_TOKEN {
                assert_eq!(r.status, StatusCode::OK, "{path}");
                assert!(String::from_utf8_lossy(&r.body).contains("confidential"));
            } else {
                assert_eq!(r.status, StatusCode::NOT_FOUND, "{path} {who:?}");
                assert!(
                    !String::from_utf8_lossy(&r.body).contains("confidential"),
                    "{path} {who:?}"
                );
            }
        }
    }
}

/// `stale_if_error` answers JSON from the credential's own entry while
/// upstream fails, but a stale answer is the cache's, not upstream's yes: it
/// must not renew a grant to the zip (the credential may have lost access).
#[tokio::test]
async fn a_stale_answer_does_not_renew_a_grant() {
    let h = Harness::start_with(|l| l.stale_if_error = Some("1m".parse().unwrap())).await;
    let art = private_artifact(&h);
    let zip = h.sim.zip_bytes(art.id).unwrap();
    let path = format!("/repos/{PRIVATE_REPO}/actions/artifacts/{}/zip", art.id);
    // First download (the endpoint's 302), then a renewal by a full GET
    // that stores the metadata entry a stale answer could come from.
    for _ in 0..2 {
        let blob = zip_via_mirror(&h, &path, Some(READER_TOKEN))
            .await
            .expect("upstream allows the reader");
        assert_eq!(blob.body, zip);
        h.until_stored(1).await;
    }
    let meta = h.url(&format!(
        "/repos/{PRIVATE_REPO}/actions/artifacts/{}",
        art.id
    ));
    h.sim.knobs().fail_next(1, 503);
    // The Accept every renewal sends, so this is the renewals' entry.
    let accept = [("accept", "application/vnd.github+json")];
    let stale = get_with(&meta, Some(READER_TOKEN), &accept).await;
    assert_eq!(stale.status, StatusCode::OK);
    assert_eq!(
        stale.header("x-cache"),
        Some("STALE"),
        "the JSON entry is there"
    );

    h.sim.knobs().fail_next(1, 503);
    match zip_via_mirror(&h, &path, Some(READER_TOKEN)).await {
        Ok(blob) => panic!("a stale renewal granted the zip (status {})", blob.status),
        Err(refused) => {
            assert_eq!(refused.status, StatusCode::BAD_GATEWAY);
            assert!(refused.json()["message"]
                .as_str()
                .is_some_and(|m| m.contains("503")));
        }
    }
    // Two renewals at once share one failing upstream call: the one that
    // joined it got the same stale answer and must be refused too. The
    // second starts only once the first is at upstream (held there by the
    // latency), so it joins that call.
    h.sim.knobs().set_latency(Duration::from_secs(1));
    h.sim.knobs().fail_next(1, 503);
    let gets = h.sim.counters().get;
    let download =
        |url: String| tokio::spawn(async move { get(&url, Some(READER_TOKEN)).await.status });
    let first = download(h.url(&path));
    let deadline = Instant::now() + common::TIMEOUT;
    while h.sim.counters().get == gets {
        assert!(
            Instant::now() < deadline,
            "the first renewal never reached upstream"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let second = download(h.url(&path));
    for task in [first, second] {
        let status = task.await.expect("download task");
        assert_eq!(
            status,
            StatusCode::BAD_GATEWAY,
            "a stale renewal granted the zip"
        );
    }
    assert_eq!(
        h.sim.counters().get,
        gets + 1,
        "the two renewals joined one upstream call"
    );
    h.sim.knobs().set_latency(Duration::ZERO);
    h.sim.knobs().fail_next(0, 0);

    // Upstream back: the grant renews and the stored zip is served again.
    let blob = zip_via_mirror(&h, &path, Some(READER_TOKEN))
        .await
        .expect("renewed once upstream answers");
    assert_eq!(blob.body, zip);
    assert_eq!(
        h.sim.counters().blob_gets,
        1,
        "served from the store throughout"
    );
}

/// A loopback port free a moment ago (the mirror binds it right after).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Waits (bounded) until the mirror on `port` answers `/healthz`.
async fn until_healthy(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "the mirror never listened");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = get(&format!("http://127.0.0.1:{port}/healthz"), None).await;
    assert_eq!(r.status, StatusCode::OK);
}

/// SIGTERM, then waits (bounded) for a clean exit.
fn stop(mut child: std::process::Child) {
    let pid = child.id().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status();
    assert!(killed.is_ok_and(|s| s.success()));
    let status = common::wait_bounded(&mut child, Duration::from_secs(20));
    assert_eq!(status.and_then(|s| s.code()), Some(0));
}

/// Widens every entry as an older version (umask 022) left them.
#[cfg(unix)]
fn widen(root: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    let mut pending = vec![root.to_owned()];
    while let Some(path) = pending.pop() {
        let meta = std::fs::symlink_metadata(&path).unwrap();
        let mode = if meta.is_dir() { 0o755 } else { 0o644 };
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path).unwrap() {
                pending.push(entry.unwrap().path());
            }
        }
    }
}

/// Zips, sidecars, cached JSON, the index and the key of a shared runner
/// host's mirror are its own: other local users read none of them.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_dir_is_private_to_its_owner_whatever_the_umask() {
    let sim = ghes_sim::Sim::start(ghes_sim::SimConfig::default())
        .await
        .expect("simulator starts");
    let art = sim.add_artifact(NewArtifact {
        repo: PRIVATE_REPO.into(),
        run_id: 9001,
        name: "confidential".into(),
        payload_bytes: 20_000,
        with_digest: true,
        expired: false,
    });
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let port = free_port();
    let mut cmd = common::mirror_command();
    cmd.args(["serve", "--upstream", &sim.api_base(), "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data-dir")
        .arg(&data_dir);
    let child = common::under_umask_022(&cmd)
        .spawn()
        .expect("the mirror starts");
    until_healthy(port).await;

    let api = format!("http://127.0.0.1:{port}/api/v3");
    let list = get(
        &format!("{api}/repos/{PRIVATE_REPO}/actions/artifacts"),
        Some(READER_TOKEN),
    )
    .await;
    assert_eq!(list.status, StatusCode::OK);
    let zip = get(
        &format!(
            "{api}/repos/{PRIVATE_REPO}/actions/artifacts/{}/zip",
            art.id
        ),
        Some(READER_TOKEN),
    )
    .await;
    assert_eq!(zip.status, StatusCode::FOUND);
    let blob = get(zip.header("location").expect("location"), None).await;
    assert_eq!(blob.status, StatusCode::OK);
    assert_eq!(Some(blob.body.clone()), sim.zip_bytes(art.id));

    // The whole body arrived, so the blob, its sidecar and record are kept.
    let (wrong, seen) = common::not_private(&data_dir);
    let shard = std::fs::read_dir(data_dir.join("blobs/sha256"))
        .unwrap()
        .next()
        .expect("a blob shard")
        .unwrap()
        .path();
    let kept = std::fs::read_dir(&shard).unwrap().count();
    let missing: Vec<_> = ["secret", "server.json", "index", "tmp"]
        .into_iter()
        .filter(|name| !data_dir.join(name).exists())
        .collect();
    stop(child);
    assert_eq!(kept, 2, "the blob and its sidecar");
    assert!(missing.is_empty(), "{missing:?} missing");
    assert!(seen > 10, "only {seen} entries walked");
    assert!(wrong.is_empty(), "readable by others: {wrong:?}");
}

/// A data dir an older version left 0755/0644 is narrowed at start.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_narrows_a_data_dir_left_readable_by_others() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let port = free_port();
    let cmd = common::serve_command(&format!("127.0.0.1:{port}"), &data_dir);
    let first = common::under_umask_022(&cmd)
        .spawn()
        .expect("the mirror starts");
    until_healthy(port).await;
    stop(first);
    widen(&data_dir);
    let (wrong, seen) = common::not_private(&data_dir);
    assert_eq!(wrong.len(), seen, "every entry widened");

    let second = common::under_umask_022(&cmd)
        .spawn()
        .expect("the mirror starts");
    until_healthy(port).await;
    let (wrong, seen) = common::not_private(&data_dir);
    stop(second);
    assert!(seen > 5, "only {seen} entries walked");
    assert!(wrong.is_empty(), "left readable by others: {wrong:?}");
}

/// A fill that fails on the mirror's own disk: the client's answer names
/// none of the mirror's paths; the operator's log line does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fill_failing_on_the_local_disk_names_no_path_to_the_client() {
    let sim = ghes_sim::Sim::start(ghes_sim::SimConfig::default())
        .await
        .expect("simulator starts");
    let art = sim.add_artifact(NewArtifact {
        repo: PRIVATE_REPO.into(),
        run_id: 9001,
        name: "confidential".into(),
        payload_bytes: 20_000,
        with_digest: true,
        expired: false,
    });
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let port = free_port();
    let mut child = common::mirror_command()
        .args(["serve", "--upstream", &sim.api_base(), "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data-dir")
        .arg(&data_dir)
        .env("ARTIFACT_MIRROR_LOG_FORMAT", "json")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the mirror starts");
    until_healthy(port).await;
    // No fill can create its file now, even as root.
    let tmp = data_dir.join("tmp");
    std::fs::remove_dir_all(&tmp).unwrap();
    std::fs::write(&tmp, b"not a directory").unwrap();

    let api = format!("http://127.0.0.1:{port}/api/v3");
    let zip = get(
        &format!(
            "{api}/repos/{PRIVATE_REPO}/actions/artifacts/{}/zip",
            art.id
        ),
        Some(READER_TOKEN),
    )
    .await;
    assert_eq!(zip.status, StatusCode::FOUND);
    // The fill fails at once: it is gone (404) or its failure answers (502).
    let blob = get(zip.header("location").expect("location"), None).await;
    let pid = child.id().to_string();
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status();
    let status = common::wait_bounded(&mut child, Duration::from_secs(20));
    let mut log = String::new();
    if let Some(mut err) = child.stderr.take() {
        use std::io::Read;
        let _ = err.read_to_string(&mut log);
    }
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{log}");

    assert!(
        [StatusCode::NOT_FOUND, StatusCode::BAD_GATEWAY].contains(&blob.status),
        "{:?}",
        blob.status
    );
    let v = blob.json();
    assert!(v["message"].is_string(), "not GitHub-style: {v}");
    assert!(v["documentation_url"].is_string(), "not GitHub-style: {v}");
    let body = String::from_utf8_lossy(&blob.body);
    let root = dir.path().to_string_lossy();
    assert!(
        !body.contains(&*root),
        "a local path reached the client: {body}"
    );
    let failed = log
        .lines()
        .find(|l| l.contains("fill failed"))
        .unwrap_or_else(|| panic!("no log line for the failed fill: {log}"));
    assert!(
        failed.contains(&*tmp.to_string_lossy()),
        "the log line lost the path: {failed}"
    );
}
