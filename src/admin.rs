//! `artifact-mirror cache …`: stats, purge, verify and gc, for operators.
//!
//! They read the same settings as `serve` (file, environment, flags) and
//! work on a stopped server's data dir, holding the index's lock for their
//! whole run so they can never race a server or each other. A running
//! server's lock stops them with a message that names it (from
//! `server.json`, which `serve` writes); they never wait for the lock or
//! take it over. `cache stats` alone has something to say while the server
//! runs: it asks the server's `/metrics`.

mod holder;
mod metrics;
mod purge;
mod server_file;
mod stats;

use std::io;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use crate::blob_store::local::repair::{self, RepairError};
use crate::blob_store::{BlobStore, Start, StoreLimits};
use crate::clock::{millis, now_ms};
use crate::config::{ConfigArgs, ConfigError, Layer, Settings};
use crate::index::{Index, IndexOpenError};
use crate::metrics::Metrics;
use crate::router::{self, RepoRef};
use crate::upstream::{BlobFetcher, UpstreamSetupError};

pub use metrics::{parse as parse_metrics, Figures};
pub use server_file::ServerFile;

#[derive(Debug, clap::Subcommand)]
pub enum CacheCommand {
    /// Entries, blobs, bytes, oldest and newest; the hit ratio since start
    /// when the server runs (read from its /metrics).
    Stats(StatsArgs),
    /// Drop cached data: a repository's, artifacts', or everything.
    Purge(PurgeArgs),
    /// Re-hash every stored blob, remove corrupt ones, rebuild index records
    /// from the blob files' sidecars, remove orphans.
    Verify(ConfigArgs),
    /// Apply the blob quota and expiry and the JSON cache's age and size
    /// limits now; drop facts of expired artifacts and unused grants.
    Gc(ConfigArgs),
}

#[derive(Debug, clap::Args)]
pub struct StatsArgs {
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub config: ConfigArgs,
}

#[derive(Debug, clap::Args)]
#[command(group(
    clap::ArgGroup::new("selector")
        .required(true)
        .multiple(true)
        .args(["repo", "artifact", "all"])
))]
pub struct PurgeArgs {
    /// A repository's cached JSON (every credential, both path forms) and
    /// its blobs, grants and facts. Repeatable.
    #[arg(long, value_name = "OWNER/REPO", value_parser = parse_repo)]
    pub repo: Vec<RepoRef>,
    /// An artifact's blob (the file unless another artifact shares it),
    /// grants and facts. Repeatable.
    #[arg(long, value_name = "ID", value_parser = parse_artifact)]
    pub artifact: Vec<u64>,
    /// Everything: cached JSON, blobs, grants, facts.
    #[arg(long, conflicts_with_all = ["repo", "artifact"])]
    pub all: bool,
    #[command(flatten)]
    pub config: ConfigArgs,
}

fn parse_repo(s: &str) -> Result<RepoRef, String> {
    if !s.contains('/') {
        return Err(format!(
            "expected OWNER/REPO (e.g. octo-org/app), got {s:?}"
        ));
    }
    router::parse_full_name(s).map_err(|e| e.to_string())
}

fn parse_artifact(s: &str) -> Result<u64, String> {
    router::parse_artifact_id(s).map_err(|e| e.to_string())
}

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("there is no data dir at {0}: nothing is cached there (check --data-dir or data_dir)")]
    NoDataDir(PathBuf),
    #[error("{0}")]
    InUse(String),
    #[error(transparent)]
    IndexOpen(#[from] IndexOpenError),
    #[error("index: {0}")]
    Index(#[from] crate::index::IndexError),
    #[error(transparent)]
    Repair(#[from] RepairError),
    #[error("blob store: {0}")]
    Store(io::Error),
    #[error(transparent)]
    Setup(#[from] UpstreamSetupError),
}

impl AdminError {
    /// 2 for input the operator must fix (as for `check-config`), 1 when
    /// the command could not do its work.
    pub fn exit_code(&self) -> u8 {
        match self {
            AdminError::Config(_) => 2,
            _ => 1,
        }
    }
}

/// Runs one command; prints its report on stdout, errors on stderr.
pub fn run(command: CacheCommand) -> ExitCode {
    match execute(command) {
        Ok(report) => {
            print!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("artifact-mirror: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

fn execute(command: CacheCommand) -> Result<String, AdminError> {
    match command {
        CacheCommand::Stats(args) => {
            let settings = load(&args.config)?;
            let stats = stats::gather(&settings)?;
            Ok(if args.json {
                serde_json::to_string_pretty(&stats)
                    .map(|s| s + "\n")
                    .map_err(|e| AdminError::Store(io::Error::other(e)))?
            } else {
                stats::render(&stats)
            })
        }
        CacheCommand::Purge(args) => {
            let settings = load(&args.config)?;
            let selection = purge::Selection {
                repos: args.repo,
                artifacts: args.artifact,
                all: args.all,
            };
            let (index, store, reconciled) = open_store(&settings)?;
            let purged = purge::purge(&settings.data_dir, &index, &store, &selection)?;
            store.seal()?;
            Ok(reconciled + &purge::render(&selection, &purged))
        }
        CacheCommand::Verify(args) => verify(&load(&args)?),
        CacheCommand::Gc(args) => gc(&load(&args)?),
    }
}

/// The settings as `serve` would read them. The admin commands never talk
/// to upstream, so `upstream` may be left out (a placeholder fills it).
fn load(args: &ConfigArgs) -> Result<Settings, ConfigError> {
    let file = match &args.config {
        Some(path) => Layer::from_file(path)?,
        None => Layer::default(),
    };
    let mut layer = args.overrides.clone().over(file);
    if layer.upstream.is_none() {
        layer.upstream = url::Url::parse("http://upstream.invalid/").ok();
    }
    Settings::resolve(layer)
}

/// Opens the index of an existing data dir, or says who holds it.
fn open_index(settings: &Settings) -> Result<Index, AdminError> {
    let dir = &settings.data_dir;
    if !dir.is_dir() {
        return Err(AdminError::NoDataDir(dir.clone()));
    }
    Index::open(&dir.join("index"), settings.index_cache_bytes).map_err(|e| {
        if e.is_locked() {
            AdminError::InUse(holder::describe(dir))
        } else {
            AdminError::IndexOpen(e)
        }
    })
}

/// The index and the blob store as a starting server has them (records
/// and files reconciled unless the last stop was clean), with the quota
/// from settings;
/// and a line saying what reconciling changed, if anything (a server logs
/// it; an operator should see it).
fn open_store(settings: &Settings) -> Result<(Index, BlobStore, String), AdminError> {
    let index = open_index(settings)?;
    // Offline: nothing scrapes these metrics.
    let metrics = Arc::new(Metrics::new());
    let fetcher = BlobFetcher::new(settings, metrics.clone())?;
    let limits = StoreLimits {
        quota: settings.blob_quota_bytes,
        max_blob: settings.max_blob_bytes,
        linger: settings.blob_url_ttl.0,
    };
    let (store, start) =
        BlobStore::open(&settings.data_dir, index.clone(), fetcher, limits, metrics)
            .map_err(AdminError::Store)?;
    let reconciled = match start {
        Start::Reconciled(report) if report.changed_anything() => format!(
            "reconciled first: {} records rebuilt, {} corrupt files removed, {} orphans removed, {} records without a file removed, {} sidecars written\n",
            report.records_rebuilt,
            report.corrupt.len(),
            report.orphans_removed,
            report.dangling_records,
            report.sidecars_written + report.stray_sidecars,
        ),
        Start::Reconciled(_) | Start::Trusted => String::new(),
    };
    Ok((index, store, reconciled))
}

fn verify(settings: &Settings) -> Result<String, AdminError> {
    let index = open_index(settings)?;
    let partials = repair::clear_tmp(&settings.data_dir)?;
    let report = repair::reconcile(&settings.data_dir, &index, true)?;
    let mut out = format!(
        "verified {}: {} blob files checked, {} ok, {} corrupt removed, {} records rebuilt, {} orphans removed\n",
        settings.data_dir.display(),
        report.checked,
        report.ok,
        report.corrupt.len(),
        report.records_rebuilt,
        report.orphans_removed,
    );
    for c in &report.corrupt {
        let artifacts: Vec<String> = c.artifacts.iter().map(u64::to_string).collect();
        out.push_str(&format!(
            "  corrupt: sha256:{} (artifacts {}): {}\n",
            c.sha256,
            if artifacts.is_empty() {
                "none".into()
            } else {
                artifacts.join(", ")
            },
            c.reason
        ));
    }
    out.push_str(&format!(
        "  also: {} records without a file removed, {} sidecars without a file removed, {} sidecars written, {} partial downloads removed from tmp/\n",
        report.dangling_records, report.stray_sidecars, report.sidecars_written, partials
    ));
    Ok(out)
}

fn gc(settings: &Settings) -> Result<String, AdminError> {
    let (index, store, reconciled) = open_store(settings)?;
    let before = store.stored_bytes();
    let swept = store.housekeep();
    let oldest = now_ms().saturating_sub(millis(settings.json_max_age.0));
    let json_before = index.json().bytes();
    let dropped = index.json().evict(settings.json_disk_bytes, oldest)?;
    store.seal()?;
    let blobs = format!(
        "  blobs: {} expired and {} least recently used past the quota of {} bytes removed; \
         {} bytes stored (was {before})\n",
        swept.expired.len(),
        swept.evicted.len(),
        settings.blob_quota_bytes,
        store.stored_bytes(),
    );
    let json = format!(
        "  cached JSON: {} entries not validated within {} or past {} bytes removed; \
         {} bytes left (was {json_before})\n",
        dropped.len(),
        settings.json_max_age,
        settings.json_disk_bytes,
        index.json().bytes(),
    );
    let index_records = format!(
        "  index: facts of {} expired artifacts and grants of {} artifacts without a stored blob removed\n",
        swept.facts.len(),
        swept.grants.len(),
    );
    Ok(format!(
        "{reconciled}gc {}:\n{blobs}{json}{index_records}",
        settings.data_dir.display()
    ))
}
