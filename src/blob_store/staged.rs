//! A staged fill that outlives its process: the partial file under `tmp/`
//! and, beside it, a small record of what it is a prefix of (artifact,
//! expected size and digest, upstream's validator), so that the first
//! download after a restart resumes it with `Range` from the bytes on disk
//! instead of fetching them again.
//!
//! Record format (`tmp/<artifact>-<nonce>.fill`, JSON, 0600, next to
//! `<artifact>-<nonce>.part`): see [`StagedRecord`]. It is written once,
//! when upstream's first answer gives the size and validator; nothing of the
//! part file's length is recorded: the bytes on disk are the prefix.
//!
//! Trust: a process crash (SIGKILL, OOM kill, panic) leaves every byte
//! written to the file in the page cache, so the whole file is a good
//! prefix. A machine crash may leave a tail never written back, so a staged
//! file from another boot (the kernel's `boot_id` differs) is discarded,
//! never resumed. Either way a resumed fill is still checked whole (size,
//! digest when upstream gives one) before it is committed: a crash leaves
//! no blob or a whole one.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::clock::now_secs;

/// How long a staged file nobody resumes is kept. A restart takes seconds
/// to minutes and the clients (or prefetch) that wanted the artifact ask
/// again within that; after an hour the bytes are more likely waste than a
/// saving, and `tmp/` is not under the quota, so its use must be bounded in
/// time.
pub(super) const STAGED_TTL: Duration = Duration::from_secs(3600);

/// What a staged file is a prefix of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct StagedRecord {
    pub artifact: u64,
    /// The zip's whole size, as upstream's first answer gave it.
    pub size: u64,
    /// The expected sha256 (hex), when the artifact's JSON gave one.
    pub sha256: Option<String>,
    /// The zip's name, from JSON or `Content-Disposition`.
    pub name: Option<String>,
    pub validator: Validator,
    /// The kernel's boot id when the fill started (see the module doc).
    pub boot: Option<String>,
    /// Unix seconds.
    pub started: u64,
}

impl StagedRecord {
    /// Whether what is known of the artifact now (its JSON) agrees with
    /// this record.
    pub fn fits(&self, facts: &crate::index::Facts) -> bool {
        facts.size.is_none_or(|n| n == self.size)
            && (facts.sha256.is_none() || self.sha256.is_none() || facts.sha256 == self.sha256)
    }
}

/// Upstream's validator of the blob: a resumed answer must carry the same
/// one, or the staged bytes may belong to other content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Validator {
    ETag(String),
    /// Only when there is no ETag.
    LastModified(String),
    /// Neither: only the size and `Content-Range` can be compared.
    None,
}

impl Validator {
    pub fn of(headers: &http::HeaderMap) -> Validator {
        let value = |name| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        if let Some(etag) = value(http::header::ETAG) {
            Validator::ETag(etag)
        } else if let Some(date) = value(http::header::LAST_MODIFIED) {
            Validator::LastModified(date)
        } else {
            Validator::None
        }
    }
}

/// The record's path beside a part file.
pub(super) fn record_path(part: &Path) -> PathBuf {
    part.with_extension("fill")
}

/// This boot's id: equal ids mean the page cache survived.
pub(super) fn boot_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

/// Writes the record beside `part`. Blocking.
pub(super) fn write_record(part: &Path, record: &StagedRecord) -> io::Result<()> {
    use std::io::Write;
    let json = serde_json::to_vec(record).map_err(io::Error::other)?;
    crate::private::create_file(&record_path(part))?.write_all(&json)
}

/// Removes a part file and its record (either may be missing). Blocking.
pub(super) fn remove(part: &Path) {
    let _ = std::fs::remove_file(part);
    let _ = std::fs::remove_file(record_path(part));
}

/// A staged file found at start that a fill may resume.
#[derive(Debug, Clone)]
pub(crate) struct Staged {
    pub part: PathBuf,
    pub record: StagedRecord,
    /// Bytes on disk: the prefix to re-hash and resume from.
    pub len: u64,
}

/// The staged files found at start, by artifact, until a fill takes one or
/// housekeeping finds it too old.
#[derive(Debug, Default)]
pub(super) struct Resumable(Mutex<HashMap<u64, Staged>>);

impl Resumable {
    /// Scans `tmp`: keeps each artifact's longest staged file from this
    /// boot whose record reads and whose part is not longer than the zip;
    /// removes everything else. Blocking (at start).
    pub fn scan(tmp: &Path) -> io::Result<Resumable> {
        let boot = boot_id();
        let mut found: HashMap<u64, Staged> = HashMap::new();
        let mut keep = Vec::new();
        for entry in std::fs::read_dir(tmp)? {
            let path = entry?.path();
            if path.extension().is_none_or(|e| e != "fill") {
                continue;
            }
            let part = path.with_extension("part");
            let staged = std::fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice::<StagedRecord>(&b).ok())
                .filter(|r| r.boot.is_some() && r.boot == boot)
                .and_then(|record| {
                    let len = std::fs::metadata(&part).ok()?.len();
                    // A whole file was not committed: its
                    // answer is not resumable (nothing left to ask for).
                    (len < record.size).then_some(Staged { part, record, len })
                });
            let Some(staged) = staged else { continue };
            let artifact = staged.record.artifact;
            if found.get(&artifact).is_none_or(|s| s.len < staged.len) {
                found.insert(artifact, staged);
            }
        }
        for staged in found.values() {
            keep.push(staged.part.clone());
            keep.push(record_path(&staged.part));
        }
        for entry in std::fs::read_dir(tmp)? {
            let path = entry?.path();
            if !keep.contains(&path) {
                if path.is_dir() {
                    std::fs::remove_dir_all(&path)?;
                } else {
                    std::fs::remove_file(&path)?;
                }
            }
        }
        if !found.is_empty() {
            tracing::info!(count = found.len(), "staged fills kept for resuming");
        }
        Ok(Resumable(Mutex::new(found)))
    }

    /// The staged file of `artifact`, for the fill that resumes it.
    pub fn take(&self, artifact: u64) -> Option<Staged> {
        self.lock().remove(&artifact)
    }

    /// Removes staged files older than `ttl`; returns their artifacts.
    /// Blocking.
    pub fn sweep(&self, ttl: Duration) -> Vec<u64> {
        let cutoff = now_secs().saturating_sub(ttl.as_secs());
        let old: Vec<Staged> = {
            let mut map = self.lock();
            let ids: Vec<u64> = map
                .iter()
                .filter(|(_, s)| s.record.started <= cutoff)
                .map(|(id, _)| *id)
                .collect();
            ids.iter().filter_map(|id| map.remove(id)).collect()
        };
        old.iter()
            .map(|s| {
                remove(&s.part);
                s.record.artifact
            })
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Staged>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(artifact: u64, size: u64, boot: Option<String>) -> StagedRecord {
        StagedRecord {
            artifact,
            size,
            sha256: None,
            name: None,
            validator: Validator::ETag("\"x\"".into()),
            boot,
            started: now_secs(),
        }
    }

    fn stage(tmp: &Path, name: &str, r: &StagedRecord, len: usize) {
        let part = tmp.join(format!("{name}.part"));
        std::fs::write(&part, vec![7u8; len]).unwrap();
        write_record(&part, r).unwrap();
    }

    /// A staged prefix is trusted only within the boot that wrote it (the
    /// page cache may have lost unsynced bytes since): the id must be the
    /// kernel's, a UUID that changes at each boot.
    #[test]
    fn the_boot_id_is_the_kernels() {
        let kernel = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .expect("needs /proc/sys/kernel/random/boot_id (Linux)");
        let id = boot_id().expect("a boot id");
        assert_eq!(id, kernel.trim());
        assert_eq!((id.len(), id.matches('-').count()), (36, 4), "{id}");
    }

    /// A staged prefix is resumed only if what the artifact's JSON now says
    /// (size, digest) agrees with it; what either side does not know
    /// cannot disagree.
    #[test]
    fn a_staged_record_fits_facts_that_agree_or_say_nothing() {
        use crate::index::Facts;
        let mut staged = record(1, 100, None);
        let facts = |size: Option<u64>, sha256: Option<&str>| Facts {
            size,
            sha256: sha256.map(str::to_owned),
            ..Facts::default()
        };
        assert!(staged.fits(&facts(None, None)));
        assert!(
            staged.fits(&facts(Some(100), Some("aa"))),
            "no staged digest"
        );
        assert!(!staged.fits(&facts(Some(99), None)), "another size");
        staged.sha256 = Some("aa".into());
        assert!(staged.fits(&facts(Some(100), Some("aa"))));
        assert!(staged.fits(&facts(None, None)));
        assert!(
            !staged.fits(&facts(Some(100), Some("bb"))),
            "another digest"
        );
        assert!(!staged.fits(&facts(Some(99), Some("aa"))), "another size");
    }

    #[test]
    fn scan_keeps_the_longest_prefix_of_this_boot_and_clears_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let tmp = dir.path();
        let boot = Some(boot_id().expect("needs /proc/sys/kernel/random/boot_id (Linux)"));
        stage(tmp, "1-a", &record(1, 100, boot.clone()), 10);
        stage(tmp, "1-b", &record(1, 100, boot.clone()), 40);
        stage(tmp, "2-a", &record(2, 100, Some("another boot".into())), 40);
        stage(tmp, "3-a", &record(3, 40, boot.clone()), 40); // nothing left to fetch
        std::fs::write(tmp.join("4-a.part"), b"no record").unwrap();
        std::fs::write(tmp.join("5-a.fill"), b"not json").unwrap();
        let found = Resumable::scan(tmp).unwrap();
        let mut left: Vec<String> = std::fs::read_dir(tmp)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        let staged = found.take(1).expect("artifact 1 resumable");
        assert_eq!((staged.len, staged.part), (40, tmp.join("1-b.part")));
        assert_eq!(left, ["1-b.fill", "1-b.part"]);
        assert!(found.take(2).is_none() && found.take(3).is_none());
    }

    #[test]
    fn sweep_removes_only_old_staged_files() {
        let dir = tempfile::tempdir().unwrap();
        let tmp = dir.path();
        let boot = Some(boot_id().expect("needs /proc/sys/kernel/random/boot_id (Linux)"));
        let mut old = record(1, 100, boot.clone());
        old.started = now_secs() - 7200;
        stage(tmp, "1-a", &old, 10);
        stage(tmp, "2-a", &record(2, 100, boot), 10);
        let found = Resumable::scan(tmp).unwrap();
        assert_eq!(found.sweep(STAGED_TTL), vec![1]);
        assert!(!tmp.join("1-a.part").exists() && !tmp.join("1-a.fill").exists());
        assert!(found.take(2).is_some());
    }
}
