//! A big store (issue 11 item 5): a data dir holding `BIG_STORE_N`
//! (default 100 000) stored artifacts of 1 000 bytes each, written the way
//! the local backend lays them out (blob file + sidecar). Measured, in one
//! process, and printed (not a criterion bench: each figure is one event):
//!
//! - `rebuild`: the first start, whose index is empty: every record is
//!   rebuilt from its sidecar (what a lost index costs);
//! - `ready`, `housekeeping`: starts after a clean stop (`Server::bind`
//!   returns when the mirror can serve), then one pass with nothing to drop
//!   (expiry, index sweeps);
//! - `after_crash`: a start whose previous process did not stop cleanly
//!   (the `housekeeping` phase leaves its store unsealed): files, sidecars
//!   and records are reconciled;
//! - `evict_100`, `evict_1000`: a start whose quota is 100 (then 1 000)
//!   blobs smaller, then the pass that evicts them: ten times the blobs
//!   should cost about ten times the pass (eviction is O(k), not O(n));
//! - `rss_anon`: each start's process's anonymous memory after its pass
//!   (each phase runs in a process of its own).
//!
//! The phases run on the allocator the binary ships with (`main.rs`), so
//! the RSS figures are the binary's.
//!
//! Each phase but `housekeeping` ends as `serve` does: the runtime dropped,
//! then the store sealed for the next start.
//!
//! Run: `cargo bench --bench big_store` (`BIG_STORE_N=30000` for a smaller
//! one, `BIG_STORE_DIR=path` to keep the data dir). Targets of the issue:
//! ready ≤ 2 s, housekeeping ≤ 1 s, eviction of k blobs O(k), RSS ≤ 128 MiB.

use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::time::Instant;

use artifact_mirror::config::{Layer, Settings};
use artifact_mirror::credential::CredentialId;
use artifact_mirror::index::{BlobRecord, Facts, Index};
use artifact_mirror::server::Server;
use sha2::{Digest, Sha256};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const BLOB: u64 = 1_000;

fn main() {
    // One start per process, so that each RSS figure is that start's own.
    if let Ok(phase) = std::env::var("BIG_STORE_PHASE") {
        return child(&phase);
    }
    // `cargo bench` passes `--bench`; a filter that excludes this bench
    // (e.g. `cargo bench -- zip`) skips it.
    if std::env::args()
        .skip(1)
        .any(|a| !a.starts_with('-') && !"big_store".contains(a.as_str()))
    {
        return;
    }
    let n: u64 = std::env::var("BIG_STORE_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let dir = tempfile::tempdir().expect("temp dir");
    // `BIG_STORE_DIR` keeps the data dir (e.g. to profile one phase on
    // it again); it is populated only when it does not exist yet.
    let data = std::env::var_os("BIG_STORE_DIR")
        .map_or_else(|| dir.path().join("data"), std::path::PathBuf::from);
    if !data.exists() {
        let built = Instant::now();
        populate(&data, n);
        println!(
            "big_store: {n} artifacts of {BLOB} B written in {:?}",
            built.elapsed()
        );
    }
    for (phase, quota) in [
        ("rebuild", n),
        ("ready", n),
        ("housekeeping", n),
        ("after_crash", n),
        ("evict_100", n - 100),
        ("evict_1000", n - 1_100),
    ] {
        let status = std::process::Command::new(std::env::current_exe().expect("exe"))
            .env("BIG_STORE_PHASE", phase)
            .env("BIG_STORE_DATA", &data)
            .env("BIG_STORE_QUOTA", (quota * BLOB).to_string())
            .status()
            .expect("child");
        assert!(status.success(), "{phase}: {status}");
    }
}

/// One start on the data dir, then the phase's measure.
fn child(phase: &str) {
    let var = |name| std::env::var(name).expect(name);
    let data = std::path::PathBuf::from(var("BIG_STORE_DATA"));
    let quota: u64 = var("BIG_STORE_QUOTA").parse().expect("quota");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let app = rt.block_on(async {
        let t = Instant::now();
        let server = Server::bind(&settings(&data, quota)).await.expect("bind");
        let ready = t.elapsed();
        let rss_ready = status_kib("RssAnon:");
        let t = Instant::now();
        let swept = server.app().housekeep();
        let pass = t.elapsed();
        let expect: usize = phase
            .strip_prefix("evict_")
            .map_or(0, |k| k.parse().expect("evict_K"));
        assert_eq!(swept.evicted.len(), expect, "{phase}: {swept:?}");
        println!(
            "big_store: {phase}: ready {ready:?} (rss_anon {rss_ready} KiB), housekeeping pass \
             {pass:?} ({} evicted), then rss_anon {} KiB, vm_hwm {} KiB",
            swept.evicted.len(),
            status_kib("RssAnon:"),
            status_kib("VmHWM:")
        );
        server.app()
    });
    drop(rt);
    if phase != "housekeeping" {
        assert!(
            app.seal().expect("seal"),
            "{phase}: nothing runs, so it seals"
        );
    }
}

fn settings(data: &Path, quota: u64) -> Settings {
    Settings::resolve(Layer {
        // Never contacted: nothing is downloaded.
        upstream: Some("http://127.0.0.1:9/api/v3".parse().expect("url")),
        listen: Some("127.0.0.1:0".parse().expect("addr")),
        data_dir: Some(data.to_owned()),
        blob_quota_bytes: Some(quota),
        index_cache_bytes: std::env::var("BIG_STORE_INDEX_CACHE")
            .ok()
            .and_then(|v| v.parse().ok()),
        ..Layer::default()
    })
    .expect("settings")
}

/// Writes `n` blob files with their sidecars, and each artifact's facts
/// and two grants, but no blob records: the first start rebuilds them, as
/// after a lost index.
fn populate(data: &Path, n: u64) {
    let root = data.join("blobs").join("sha256");
    std::fs::create_dir_all(&root).expect("blobs dir");
    for d in [data, &data.join("blobs"), &root] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    }
    let expires = Some(4_000_000_000);
    let mut facts = Vec::new();
    for id in 1..=n {
        let mut content = format!("artifact {id} ").into_bytes();
        content.resize(BLOB as usize, b'.');
        let sha = hex(&Sha256::digest(&content));
        let shard = root.join(&sha[..2]);
        if !shard.exists() {
            std::fs::create_dir(&shard).expect("shard");
            std::fs::set_permissions(&shard, std::fs::Permissions::from_mode(0o700))
                .expect("chmod");
        }
        let record = BlobRecord {
            sha256: sha.clone(),
            size: BLOB,
            name: format!("artifact-{id}"),
            expires_at: expires,
            stored_at: 1_700_000_000 + id,
            repo: Some("n:octo/big".into()),
        };
        let sidecar = serde_json::json!({ "artifacts": { id.to_string(): record } });
        facts.push((
            id,
            Facts {
                name: Some(record.name.clone()),
                size: Some(BLOB),
                sha256: Some(sha.clone()),
                expires_at: expires,
                expired: false,
                repo: record.repo.clone(),
            },
        ));
        write(&shard.join(&sha), &content);
        write(
            &shard.join(format!("{sha}.json")),
            &serde_json::to_vec(&sidecar).expect("json"),
        );
    }
    // What JSON said of each artifact and who may download it: a real
    // store holds both for every stored blob, and housekeeping reads them.
    let index = Index::open(&data.join("index"), 64 << 20).expect("index");
    for (id, facts) in facts {
        index.facts().put(id, &facts).expect("facts");
        for credential in [CredentialId::Token([1; 32]), CredentialId::Token([2; 32])] {
            index.grants().put(id, credential, 1).expect("grant");
        }
    }
    index.flush_now().expect("flush");
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(bytes))
        .expect("write");
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}
