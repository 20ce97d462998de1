//! `cache stats`: what is cached, from the index and the disk while the
//! server is stopped; from the server's `/metrics` and the disk while it
//! runs (its lock keeps the index closed to other processes).

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::metrics::{self, Figures};
use super::server_file::ServerFile;
use super::{holder, AdminError};
use crate::blob_store::local::repair;
use crate::config::Settings;
use crate::index::BlobRecord;
use crate::index::{Index, IndexStats, Opened};

/// Time allowed for the server's `/metrics` answer.
const METRICS_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, Serialize)]
pub struct Stats {
    pub data_dir: PathBuf,
    /// The server holding the data dir, when one does.
    pub server: Option<ServerFile>,
    /// Who holds the index when it is not a server that `server.json` names.
    pub in_use: Option<String>,
    /// `None` while another process holds the index.
    pub index: Option<IndexView>,
    pub disk: DiskView,
    pub metrics: MetricsView,
}

#[derive(Debug, Serialize)]
pub struct IndexView {
    pub json: JsonView,
    pub blobs: BlobsView,
    pub grants: u64,
    pub facts: u64,
}

#[derive(Debug, Serialize)]
pub struct JsonView {
    pub entries: u64,
    pub bytes: u64,
    pub limit_bytes: u64,
    pub oldest_validated: Option<String>,
    pub newest_validated: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct BlobsView {
    /// Artifacts with a stored blob.
    pub records: u64,
    /// Distinct files they name (identical zips share one).
    pub files: u64,
    /// Sum of the records' sizes: what counts against the quota.
    pub bytes: u64,
    pub quota_bytes: u64,
    pub oldest_stored: Option<String>,
    pub newest_stored: Option<String>,
    pub least_recently_used: Option<String>,
    pub most_recently_used: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct DiskView {
    pub blob_files: u64,
    pub bytes: u64,
    /// Blob files no record names (`cache verify` rebuilds or removes
    /// them); unknown while the index is held elsewhere.
    pub unindexed_files: Option<u64>,
    /// Downloads in progress, or cut by a stop, in `tmp/`.
    pub partials: u64,
}

#[derive(Debug, Serialize)]
pub struct MetricsView {
    #[serde(flatten)]
    pub figures: Option<Figures>,
    /// Why there are no figures.
    pub unavailable: Option<String>,
}

/// Gathers the figures. Opens the index only to read it (and for as long
/// as that takes); never waits for or takes a running server's lock.
pub fn gather(settings: &Settings) -> Result<Stats, AdminError> {
    let dir = &settings.data_dir;
    if !dir.is_dir() {
        return Err(AdminError::NoDataDir(dir.clone()));
    }
    let scan = repair::scan(dir)?;
    let partials = std::fs::read_dir(dir.join("tmp")).map_or(0, |d| d.count() as u64);
    let mut disk = DiskView {
        blob_files: scan.blobs.len() as u64,
        bytes: scan.bytes(),
        unindexed_files: None,
        partials,
    };
    match Index::open(&dir.join("index"), settings.index_cache_bytes) {
        Ok(index) => {
            let read = read_index(&index, &scan, settings);
            // Opening took the seal of a clean stop; reading changed
            // nothing (even one that failed partway), so the next start may
            // still trust the store.
            if let Opened::Clean(stop) = index.opened() {
                index.seal(stop.blob_bytes, stop.blobs)?;
            }
            let (view, unindexed) = read?;
            disk.unindexed_files = Some(unindexed);
            Ok(Stats {
                data_dir: dir.clone(),
                server: None,
                in_use: None,
                index: Some(view),
                disk,
                metrics: MetricsView {
                    figures: None,
                    unavailable: Some("the server is not running; it counts from its start".into()),
                },
            })
        }
        Err(e) if e.is_locked() => {
            let server = ServerFile::read(dir).filter(ServerFile::is_running);
            let (in_use, metrics) = match &server {
                Some(server) if server.tls => (
                    None,
                    MetricsView {
                        figures: None,
                        unavailable: Some(format!(
                            "the server serves HTTPS on {}; read https://{}/metrics with a client that trusts its certificate",
                            server.listen,
                            server.reachable()
                        )),
                    },
                ),
                Some(server) => (None, from_server(server.reachable())),
                None => (
                    Some(holder::describe(dir)),
                    MetricsView {
                        figures: None,
                        unavailable: Some(
                            "no running server is named in server.json, so there is no /metrics to ask".into(),
                        ),
                    },
                ),
            };
            Ok(Stats {
                data_dir: dir.clone(),
                server,
                in_use,
                index: None,
                disk,
                metrics,
            })
        }
        Err(e) => Err(e.into()),
    }
}

fn from_server(addr: std::net::SocketAddr) -> MetricsView {
    let fetched = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime: {e}"))
        .and_then(|rt| rt.block_on(metrics::fetch(addr, METRICS_TIMEOUT)));
    match fetched {
        Ok(figures) => {
            let unavailable = figures
                .hit_ratio
                .is_none()
                .then(|| "no cache outcomes counted yet".to_owned());
            MetricsView {
                figures: Some(figures),
                unavailable,
            }
        }
        Err(reason) => MetricsView {
            figures: None,
            unavailable: Some(reason),
        },
    }
}

/// The index's figures, and how many blob files on disk no record names.
fn read_index(
    index: &Index,
    scan: &repair::Scan,
    settings: &Settings,
) -> Result<(IndexView, u64), AdminError> {
    let records = records(index)?;
    let named: HashSet<&str> = records.iter().map(|r| r.sha256.as_str()).collect();
    let on_disk: HashSet<&str> = scan.blobs.iter().map(|b| b.sha256.as_str()).collect();
    let unindexed = on_disk.difference(&named).count() as u64;
    Ok((
        index_view(&index.stats()?, &records, &on_disk, settings),
        unindexed,
    ))
}

fn records(index: &Index) -> Result<Vec<BlobRecord>, AdminError> {
    Ok(index
        .blobs()
        .records()?
        .into_iter()
        .filter_map(|(_, r)| r.ok())
        .collect())
}

fn index_view(
    stats: &IndexStats,
    records: &[BlobRecord],
    on_disk: &HashSet<&str>,
    settings: &Settings,
) -> IndexView {
    let ms = |t: u64| rfc3339(UNIX_EPOCH + Duration::from_millis(t));
    let secs = |t: u64| rfc3339(UNIX_EPOCH + Duration::from_secs(t));
    let files: HashSet<&str> = records
        .iter()
        .map(|r| r.sha256.as_str())
        .filter(|s| on_disk.contains(s))
        .collect();
    let stored = records.iter().map(|r| r.stored_at);
    IndexView {
        json: JsonView {
            entries: stats.json_entries,
            bytes: stats.json_bytes,
            limit_bytes: settings.json_disk_bytes,
            oldest_validated: stats.json_validated.map(|(a, _)| ms(a)),
            newest_validated: stats.json_validated.map(|(_, b)| ms(b)),
        },
        blobs: BlobsView {
            records: stats.blob_records,
            files: files.len() as u64,
            bytes: records.iter().map(|r| r.size).sum(),
            quota_bytes: settings.blob_quota_bytes,
            oldest_stored: stored.clone().min().map(secs),
            newest_stored: stored.max().map(secs),
            least_recently_used: stats.blob_used.map(|(a, _)| ms(a)),
            most_recently_used: stats.blob_used.map(|(_, b)| ms(b)),
        },
        grants: stats.grants,
        facts: stats.facts,
    }
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// The human-readable form.
pub fn render(stats: &Stats) -> String {
    let mut out = Vec::new();
    out.push(format!("data dir: {}", stats.data_dir.display()));
    match (&stats.server, &stats.in_use) {
        (Some(s), _) => out.push(format!(
            "server: artifact-mirror pid {} listening on {}{} since {} (the index is in use: figures from the server and the disk)",
            s.pid,
            s.listen,
            if s.tls { " (HTTPS)" } else { "" },
            s.started_at
        )),
        (None, Some(holder)) => out.push(format!("in use: {holder}")),
        (None, None) => out.push("server: not running".into()),
    }
    if let Some(index) = &stats.index {
        let j = &index.json;
        out.push(format!(
            "cached JSON: {} entries, {} (limit {}){}",
            j.entries,
            bytes(j.bytes),
            bytes(j.limit_bytes),
            span("validated", &j.oldest_validated, &j.newest_validated)
        ));
        let b = &index.blobs;
        out.push(format!(
            "blobs: {} artifacts in {} files, {} (quota {}){}{}",
            b.records,
            b.files,
            bytes(b.bytes),
            bytes(b.quota_bytes),
            span("stored", &b.oldest_stored, &b.newest_stored),
            span("used", &b.least_recently_used, &b.most_recently_used)
        ));
        out.push(format!("grants: {}", index.grants));
        out.push(format!("facts: {}", index.facts));
    }
    let d = &stats.disk;
    let mut disk = format!("disk: {} blob files, {}", d.blob_files, bytes(d.bytes));
    if let Some(n) = d.unindexed_files {
        disk.push_str(&format!(
            "; {n} without a record{}",
            if n > 0 {
                " (`cache verify` rebuilds or removes them)"
            } else {
                ""
            }
        ));
    }
    disk.push_str(&format!("; {} partial downloads in tmp/", d.partials));
    out.push(disk);
    let m = &stats.metrics;
    match m.figures.as_ref().and_then(|f| f.hit_ratio.map(|r| (f, r))) {
        Some((f, ratio)) => {
            let n = |k: &str| f.outcomes.get(k).copied().unwrap_or(0.0);
            out.push(format!(
                "hit ratio since start: {:.1}% (hit {}, revalidated {}, coalesced {} of {} cache outcomes)",
                ratio * 100.0,
                n("hit"),
                n("revalidated"),
                n("coalesced"),
                f.outcomes.values().sum::<f64>()
            ));
        }
        None => out.push(format!(
            "hit ratio: unavailable ({})",
            m.unavailable.as_deref().unwrap_or("unknown")
        )),
    }
    if let Some(f) = &m.figures {
        if let (Some(b), Some(n)) = (f.store_bytes, f.store_blobs) {
            out.push(format!("store (server): {n} blobs, {b} bytes"));
        }
    }
    out.join("\n") + "\n"
}

fn span(what: &str, from: &Option<String>, to: &Option<String>) -> String {
    match (from, to) {
        (Some(a), Some(b)) => format!("; {what} {a} … {b}"),
        _ => String::new(),
    }
}

/// Exact bytes, with a rounded binary unit for the eye.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} bytes");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{n} bytes ({value:.1} {})", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_are_exact_and_readable() {
        assert_eq!(bytes(5), "5 bytes");
        assert_eq!(bytes(1536), "1536 bytes (1.5 KiB)");
        assert_eq!(
            bytes(20 * 1024 * 1024 * 1024),
            "21474836480 bytes (20.0 GiB)"
        );
    }
}
