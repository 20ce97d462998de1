//! Real clients, unmodified, through the mirror over TLS: gh, octokit,
//! @actions/artifact, PyGithub (+ requests) and curl. Each test starts the
//! simulator and a mirror serving HTTPS with a test CA, writes a fixture
//! file describing what the client must find (artifacts, and the files and
//! digests inside their zips), and runs the client's script from
//! `tests/clients/`, which exits non-zero on any mismatch.
//!
//! The clients come from package registries, not from Cargo, so these tests
//! are `#[ignore]`d: a plain `cargo test` reports them as ignored rather
//! than as passed without running. `.ci/run` installs the clients and runs
//! them with `--include-ignored`; a client that is missing then fails.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{hex, Harness};
use ghes_sim::fixtures::{ADMIN_TOKEN, PRIVATE_REPO, PRIVATE_REPO_ID, READER_TOKEN};
use ghes_sim::NewArtifact;
use serde_json::json;
use sha2::{Digest, Sha256};

const RUN_ID: u64 = 9100;
/// Longest a client script may run.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(300);

struct ClientEnv {
    h: Harness,
    dir: tempfile::TempDir,
    fixture: PathBuf,
    ca: PathBuf,
    host: String,
}

/// A test CA and a certificate for 127.0.0.1/localhost signed by it.
fn pki(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "artifact-mirror test CA");
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params =
        rcgen::CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "127.0.0.1");
    let cert = params.signed_by(&key, &ca).unwrap();
    let paths = (dir.join("ca.pem"), dir.join("tls.crt"), dir.join("tls.key"));
    std::fs::write(&paths.0, ca.pem()).unwrap();
    std::fs::write(&paths.1, cert.pem()).unwrap();
    std::fs::write(&paths.2, key.serialize_pem()).unwrap();
    paths
}

/// The single stored entry of a simulator zip (store method, no
/// compression): name and bytes.
fn zip_entry(zip: &[u8]) -> (String, Vec<u8>) {
    let u16_at = |i: usize| u16::from_le_bytes([zip[i], zip[i + 1]]) as usize;
    let u32_at =
        |i: usize| u32::from_le_bytes([zip[i], zip[i + 1], zip[i + 2], zip[i + 3]]) as usize;
    assert_eq!(&zip[..4], b"PK\x03\x04", "a local file header");
    let (size, name_len, extra_len) = (u32_at(18), u16_at(26), u16_at(28));
    let name = String::from_utf8(zip[30..30 + name_len].to_vec()).unwrap();
    let start = 30 + name_len + extra_len;
    (name, zip[start..start + size].to_vec())
}

async fn client_env() -> ClientEnv {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = pki(dir.path());
    let h = Harness::start_with(|l| {
        l.tls_cert = Some(cert);
        l.tls_key = Some(key);
    })
    .await;
    // A run of our own, so the expected artifacts are known exactly.
    let mut artifacts = Vec::new();
    for (i, payload) in [2_000usize, 150_000, 40_000].into_iter().enumerate() {
        let a = h.sim.add_artifact(NewArtifact {
            repo: PRIVATE_REPO.into(),
            run_id: RUN_ID,
            name: format!("client-artifact-{i}"),
            payload_bytes: payload,
            with_digest: i == 1,
            expired: false,
        });
        let zip = h.sim.zip_bytes(a.id).unwrap();
        let (file, content) = zip_entry(&zip);
        artifacts.push(json!({
            "id": a.id,
            "name": a.name,
            "size_in_bytes": a.size_in_bytes,
            "zip_sha256": hex(&Sha256::digest(&zip)),
            "files": [{ "name": file, "size": content.len(), "sha256": hex(&Sha256::digest(&content)) }],
        }));
    }
    let all_ids: Vec<u64> = h.sim.artifacts(PRIVATE_REPO).iter().map(|a| a.id).collect();
    let host = format!("127.0.0.1:{}", h.mirror.port());
    let (owner, repo) = PRIVATE_REPO.split_once('/').unwrap();
    let fixture = dir.path().join("fixture.json");
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let value = json!({
        "api_base": format!("https://{host}/api/v3"),
        "host": host,
        "ca_file": ca,
        "reader_token": READER_TOKEN,
        "admin_token": ADMIN_TOKEN,
        "owner": owner,
        "repo": repo,
        "repository_id": PRIVATE_REPO_ID,
        "run_id": RUN_ID,
        "run_artifacts": artifacts,
        "all_artifact_ids": all_ids,
        "work_dir": work,
    });
    std::fs::write(&fixture, serde_json::to_vec_pretty(&value).unwrap()).unwrap();
    ClientEnv {
        h,
        dir,
        fixture,
        ca,
        host,
    }
}

/// Runs a client script to completion (bounded) on a worker thread, while
/// the mirror keeps serving on the test's runtime; fails with its output.
async fn run(env: &ClientEnv, program: &'static str, args: &[&str], extra: &[(&str, String)]) {
    let scripts = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("clients");
    let mut cmd = Command::new(program);
    cmd.args(args)
        .current_dir(&scripts)
        .env("FIXTURE", &env.fixture)
        .env("MIRROR_CA_FILE", &env.ca)
        .env("HOME", env.dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in extra {
        cmd.env(k, v);
    }
    let shown = format!("{program} {args:?}");
    tokio::task::spawn_blocking(move || {
        let mut child = cmd.spawn().unwrap_or_else(|e| {
            panic!("cannot run {shown}: {e} (is the client installed? see .ci/run)")
        });
        let status = common::wait_bounded(&mut child, SCRIPT_TIMEOUT);
        let output = child.wait_with_output().unwrap();
        let text = format!(
            "--- stdout\n{}\n--- stderr\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        match status {
            Some(s) if s.success() => eprintln!("{shown} passed\n{text}"),
            Some(s) => panic!("{shown} failed ({s})\n{text}"),
            None => panic!("{shown} ran past {SCRIPT_TIMEOUT:?}\n{text}"),
        }
    })
    .await
    .unwrap();
}

/// What every client run must leave true: each zip a client downloaded
/// came from upstream exactly once (and no other did), and no credential
/// ever reached the blob host.
fn assert_mirror_did_its_job(env: &ClientEnv) {
    let blob_requests = env.h.sim.blob_requests();
    assert!(
        blob_requests
            .iter()
            .all(|r| r.header("authorization").is_none()),
        "a credential reached the blob host"
    );
    let api_requests = env.h.sim.requests();
    let mut downloaded = 0;
    for artifact in env.h.sim.artifacts(PRIVATE_REPO) {
        let id = artifact.id;
        // An expired artifact's download endpoint answers 410: no zip.
        let asked = !artifact.expired
            && api_requests
                .iter()
                .any(|r| r.path_and_query.ends_with(&format!("/artifacts/{id}/zip")));
        let fetched = blob_requests
            .iter()
            .filter(|r| r.method == "GET" && r.path_and_query.starts_with(&format!("/blobs/{id}/")))
            .count();
        assert_eq!(
            fetched,
            usize::from(asked),
            "upstream blob fetches of artifact {id}"
        );
        downloaded += usize::from(asked);
    }
    assert!(downloaded > 0, "the client downloaded nothing");
}

/// One client suite: the script, the environment it needs beyond the
/// fixture, then the mirror's own checks.
async fn suite(
    program: &'static str,
    script: &str,
    extra: impl FnOnce(&ClientEnv) -> Vec<(&'static str, String)>,
) {
    let env = client_env().await;
    let extra = extra(&env);
    run(&env, program, &[script], &extra).await;
    assert_mirror_did_its_job(&env);
}

fn node_ca(env: &ClientEnv) -> Vec<(&'static str, String)> {
    vec![("NODE_EXTRA_CA_CERTS", env.ca.display().to_string())]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs gh, Node and Python clients: see .ci/run"]
async fn curl() {
    suite("bash", "curl.sh", |_| vec![]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs gh, Node and Python clients: see .ci/run"]
async fn pygithub() {
    suite("python3", "pygithub_client.py", |_| vec![]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs gh, Node and Python clients: see .ci/run"]
async fn octokit() {
    suite("node", "octokit.mjs", node_ca).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs gh, Node and Python clients: see .ci/run"]
async fn actions_artifact() {
    suite("node", "actions-artifact.mjs", node_ca).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs gh, Node and Python clients: see .ci/run"]
async fn gh() {
    suite("bash", "gh.sh", |env| {
        vec![
            ("GH_HOST", env.host.clone()),
            ("SSL_CERT_FILE", env.ca.display().to_string()),
            (
                "GH_CONFIG_DIR",
                env.dir.path().join("gh-config").display().to_string(),
            ),
            ("GH_NO_UPDATE_NOTIFIER", "1".to_owned()),
            ("GH_PROMPT_DISABLED", "1".to_owned()),
            ("NO_COLOR", "1".to_owned()),
        ]
    })
    .await;
}
