//! Brings the blob files, their sidecars and the index's blob records back
//! into agreement. Runs at every start (sizes only: cheap) and in
//! `cache verify` (every file re-hashed).
//!
//! The rule it keeps: a damaged or lost index never loses a blob. A file is
//! kept when a record or a valid sidecar entry names it, and missing records
//! are rebuilt from sidecars; only a file that neither names is an orphan
//! (a crash between the rename and the sidecar write), and only a file whose
//! size or content contradicts its name and records is corrupt.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{self, Read as _};
use std::path::{Path, PathBuf};

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::sidecar::{self, Sidecar};
use crate::access::Access;
use crate::credential::hex;
use crate::index::BlobRecord;
use crate::index::Index;

#[derive(Debug, thiserror::Error)]
pub enum RepairError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("index: {0}")]
    Index(#[from] crate::index::IndexError),
    #[error(transparent)]
    Sidecar(#[from] sidecar::SidecarError),
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> RepairError + '_ {
    move |source| RepairError::Io {
        path: path.to_owned(),
        source,
    }
}

/// A stored zip as found on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobFile {
    pub sha256: String,
    pub path: PathBuf,
    pub size: u64,
}

/// What is under `blobs/sha256/`, read only.
#[derive(Debug, Default)]
pub struct Scan {
    pub blobs: Vec<BlobFile>,
    /// Sidecar paths, by the digest they belong to.
    pub sidecars: BTreeMap<String, PathBuf>,
    /// Files in a shard that are neither: not a digest name, or in the
    /// wrong shard. Nothing can ever serve them.
    pub strays: Vec<PathBuf>,
}

impl Scan {
    pub fn bytes(&self) -> u64 {
        self.blobs.iter().map(|b| b.size).sum()
    }
}

/// Lists the store's files. Entries that are not files (a directory inside
/// a shard) are left alone rather than guessed about.
pub fn scan(data_dir: &Path) -> Result<Scan, RepairError> {
    let root = data_dir.join("blobs").join("sha256");
    let mut scan = Scan::default();
    let shards = match std::fs::read_dir(&root) {
        Ok(shards) => shards,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(scan),
        Err(e) => return Err(io_at(&root)(e)),
    };
    for shard in shards {
        let shard = shard.map_err(io_at(&root))?;
        let shard_path = shard.path();
        if !shard.file_type().map_err(io_at(&shard_path))?.is_dir() {
            continue;
        }
        let shard_name = shard.file_name().to_string_lossy().into_owned();
        for entry in std::fs::read_dir(&shard_path).map_err(io_at(&shard_path))? {
            let entry = entry.map_err(io_at(&shard_path))?;
            let path = entry.path();
            let meta = entry.metadata().map_err(io_at(&path))?;
            if !meta.is_file() {
                continue;
            }
            let stem = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            let well_named = is_digest(&stem) && stem.starts_with(&shard_name);
            if sidecar::is_sidecar(&path) && well_named {
                scan.sidecars.insert(stem, path);
            } else if well_named && path.extension().is_none() {
                scan.blobs.push(BlobFile {
                    sha256: stem,
                    path,
                    size: meta.len(),
                });
            } else {
                scan.strays.push(path);
            }
        }
    }
    scan.blobs.sort_by(|a, b| a.sha256.cmp(&b.sha256));
    Ok(scan)
}

/// 64 lower-case hex digits: how blob files are named.
fn is_digest(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A blob file removed because it contradicted its name or its records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Corrupt {
    pub sha256: String,
    pub reason: String,
    /// Artifacts whose records named it (dropped with it).
    pub artifacts: Vec<u64>,
}

/// What [`reconcile`] found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    /// Blob files looked at.
    pub checked: u64,
    /// Blob files kept.
    pub ok: u64,
    pub corrupt: Vec<Corrupt>,
    /// Records written back from sidecars.
    pub records_rebuilt: u64,
    /// Records whose file is gone (or that could not be read), dropped.
    pub dangling_records: u64,
    /// Files nothing names, and stray files in the shards, removed.
    pub orphans_removed: u64,
    /// Sidecars whose blob file is gone, removed.
    pub stray_sidecars: u64,
    /// Sidecars written to match the records (new, or out of date).
    pub sidecars_written: u64,
    /// Sum of the kept records' sizes: what the store counts against its
    /// quota (a shared file counts once per artifact).
    pub stored_bytes: u64,
    /// Records kept (rebuilt ones included): the store's blob count.
    pub stored_blobs: u64,
}

impl Report {
    /// Whether anything on disk or in the index was changed.
    pub fn changed_anything(&self) -> bool {
        !self.corrupt.is_empty()
            || self.records_rebuilt > 0
            || self.dangling_records > 0
            || self.orphans_removed > 0
            || self.stray_sidecars > 0
            || self.sidecars_written > 0
    }
}

/// Records rebuilt between two flushes of the index.
const REBUILD_BATCH: u64 = 4096;

/// Reconciles files, sidecars and records (see the module doc). With
/// `rehash`, every kept file is read and its sha256 compared with its name.
/// Only call it while no fill runs (at open, or with the index lock held by
/// an admin command).
pub fn reconcile(data_dir: &Path, index: &Index, rehash: bool) -> Result<Report, RepairError> {
    let tmp = data_dir.join("tmp");
    crate::private::create_dir_all(&tmp).map_err(io_at(&tmp))?;
    let scan = scan(data_dir)?;
    let mut report = Report::default();

    let mut records: HashMap<u64, BlobRecord> = HashMap::new();
    for (id, read) in index.blobs().records()? {
        match read {
            Ok(record) => {
                records.insert(id, record);
            }
            Err(_) => {
                index.blobs().remove(id)?;
                report.dangling_records += 1;
            }
        }
    }
    let mut by_sha: HashMap<&str, Vec<u64>> = HashMap::new();
    for (id, record) in &records {
        by_sha.entry(record.sha256.as_str()).or_default().push(*id);
    }

    let mut kept: HashSet<String> = HashSet::new();
    let mut removed_ids: HashSet<u64> = HashSet::new();
    let mut rebuilt: BTreeMap<u64, BlobRecord> = BTreeMap::new();
    for file in &scan.blobs {
        report.checked += 1;
        let mut named: BTreeMap<u64, BlobRecord> = by_sha
            .get(file.sha256.as_str())
            .into_iter()
            .flatten()
            .filter_map(|id| Some((*id, records.get(id)?.clone())))
            .collect();
        // An unreadable sidecar counts as none: it is rewritten from the
        // records, or the file is an orphan when there are none.
        let on_disk = sidecar::read(&file.path).ok().flatten();
        let claimed: BTreeMap<u64, BlobRecord> = on_disk
            .iter()
            .flat_map(|s| s.artifacts.iter())
            .filter(|(_, r)| r.sha256 == file.sha256)
            .map(|(id, r)| (*id, r.clone()))
            .collect();
        if named.is_empty() && claimed.is_empty() {
            sidecar::remove(&file.path)?;
            remove_file(&file.path)?;
            report.orphans_removed += 1;
            continue;
        }
        // The records are the truth while there are any; the sidecar's
        // claims only when the index lost them.
        let sizes = if named.is_empty() { &claimed } else { &named };
        let reason = match sizes.values().find(|r| r.size != file.size) {
            Some(r) => Some(format!(
                "{} bytes on disk, its record says {}",
                file.size, r.size
            )),
            None if rehash => {
                let actual = hash_file(&file.path)?;
                (actual != file.sha256).then(|| format!("its content hashes to sha256:{actual}"))
            }
            None => None,
        };
        if let Some(reason) = reason {
            sidecar::remove(&file.path)?;
            remove_file(&file.path)?;
            for id in named.keys() {
                index.blobs().remove(*id)?;
                Access::ending(index).end(*id)?;
                removed_ids.insert(*id);
            }
            report.corrupt.push(Corrupt {
                sha256: file.sha256.clone(),
                reason,
                artifacts: sizes.keys().copied().collect(),
            });
            continue;
        }
        for (id, record) in claimed {
            // A record of this artifact naming other content wins over the
            // sidecar entry (which is then dropped from the sidecar); so
            // does an earlier file's claim.
            if !records.contains_key(&id) && !rebuilt.contains_key(&id) {
                rebuilt.insert(id, record.clone());
                named.insert(id, record);
            }
        }
        let desired = Sidecar { artifacts: named };
        if on_disk.as_ref() != Some(&desired) {
            sidecar::write(&file.path, &tmp, &desired)?;
            report.sidecars_written += 1;
        }
        report.stored_bytes += desired.artifacts.values().map(|r| r.size).sum::<u64>();
        report.stored_blobs += desired.artifacts.len() as u64;
        report.ok += 1;
        kept.insert(file.sha256.clone());
    }
    for (id, record) in &rebuilt {
        // Last use unknown: the time it was stored, so rebuilt blobs are
        // evicted in storage order rather than all looking fresh.
        index
            .blobs()
            .put_unflushed(*id, record, record.stored_at.saturating_mul(1000))?;
        report.records_rebuilt += 1;
        // Flushed in batches: one fsync per record made 100 000 take half a
        // minute, none until the end held them all in memory (400 MB).
        if report.records_rebuilt % REBUILD_BATCH == 0 {
            index.flush_now()?;
        }
    }
    for (id, record) in &records {
        if !kept.contains(&record.sha256) && !removed_ids.contains(id) {
            index.blobs().remove(*id)?;
            report.dangling_records += 1;
        }
    }
    let files: HashSet<&str> = scan.blobs.iter().map(|b| b.sha256.as_str()).collect();
    for (sha, path) in &scan.sidecars {
        if !files.contains(sha.as_str()) {
            remove_file(path)?;
            report.stray_sidecars += 1;
        }
    }
    for path in &scan.strays {
        remove_file(path)?;
        report.orphans_removed += 1;
    }
    index.flush_now()?;
    Ok(report)
}

/// Removes every file under `blobs/sha256/` (blobs, sidecars, strays), for
/// `cache purge --all`: records the index could not read may have left
/// files whose sidecars would otherwise bring them back.
pub fn remove_all_files(data_dir: &Path) -> Result<(), RepairError> {
    let scan = scan(data_dir)?;
    // Sidecars first: a crash half way leaves orphans, never a sidecar
    // naming a file that is gone.
    for path in scan.sidecars.values() {
        remove_file(path)?;
    }
    for path in scan.blobs.iter().map(|b| &b.path).chain(&scan.strays) {
        remove_file(path)?;
    }
    Ok(())
}

/// Empties `data_dir/tmp` (downloads cut by a stop or crash); returns how
/// many entries it held.
pub fn clear_tmp(data_dir: &Path) -> Result<u64, RepairError> {
    let tmp = data_dir.join("tmp");
    let count = match std::fs::read_dir(&tmp) {
        Ok(entries) => entries.count() as u64,
        Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
        Err(e) => return Err(io_at(&tmp)(e)),
    };
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io_at(&tmp))?;
    }
    crate::private::create_dir_all(&tmp).map_err(io_at(&tmp))?;
    Ok(count)
}

fn remove_file(path: &Path) -> Result<(), RepairError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_at(path)(e)),
        _ => Ok(()),
    }
}

/// The sha256 of a file, read in chunks (memory stays flat).
pub fn hash_file(path: &Path) -> Result<String, RepairError> {
    let mut file = std::fs::File::open(path).map_err(io_at(path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = file.read(&mut buf).map_err(io_at(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_files_are_named_by_64_lower_case_hex_digits() {
        let digest = "0123456789abcdef".repeat(4);
        assert!(is_digest(&digest));
        assert!(!is_digest(&digest[1..]), "63 digits");
        assert!(!is_digest(&format!("{digest}0")), "65 digits");
        assert!(!is_digest(&digest.to_uppercase()), "upper case");
        assert!(
            !is_digest(&format!("{}.json", &digest[..59])),
            "a sidecar's name"
        );
    }

    /// Only a missing blob directory is an empty store: one that cannot be
    /// read must stop the repair, or every record would be dropped as
    /// dangling.
    #[test]
    fn an_unreadable_blob_directory_is_an_error_not_an_empty_store() {
        let dir = tempfile::tempdir().unwrap();
        let found = scan(dir.path()).expect("no blob directory yet: empty");
        assert!(found.blobs.is_empty() && found.strays.is_empty());
        std::fs::create_dir_all(dir.path().join("blobs")).unwrap();
        std::fs::write(dir.path().join("blobs").join("sha256"), b"not a directory").unwrap();
        assert!(scan(dir.path()).is_err());
    }

    /// Only a report that changed something is logged at start.
    #[test]
    fn a_report_changed_anything_when_any_repair_count_is_above_zero() {
        let quiet = Report {
            checked: 3,
            ok: 3,
            stored_bytes: 10,
            stored_blobs: 3,
            ..Report::default()
        };
        assert!(!quiet.changed_anything());
        let changes: [fn(&mut Report); 6] = [
            |r| {
                r.corrupt.push(Corrupt {
                    sha256: "00".into(),
                    reason: "short".into(),
                    artifacts: vec![1],
                })
            },
            |r| r.records_rebuilt = 1,
            |r| r.dangling_records = 1,
            |r| r.orphans_removed = 1,
            |r| r.stray_sidecars = 1,
            |r| r.sidecars_written = 1,
        ];
        for (i, change) in changes.iter().enumerate() {
            let mut report = quiet.clone();
            change(&mut report);
            assert!(report.changed_anything(), "change {i}");
        }
    }

    /// A record the index cannot decode is dropped and counted, whatever
    /// its file (the file then goes as an orphan, or stays for another
    /// record).
    #[test]
    fn undecodable_records_are_dropped_and_counted() {
        let s = Store::new();
        s.put(1, b"zip");
        s.index.blobs().put_undecodable(2).unwrap();
        s.index.blobs().put_undecodable(3).unwrap();
        let report = reconcile(s.dir.path(), &s.index, false).unwrap();
        assert_eq!(report.dangling_records, 2);
        assert_eq!(s.ids(), [1]);
    }

    /// A file already gone is removed (another step or process got there
    /// first); any other failure is the repair's error.
    #[test]
    fn removing_a_file_already_gone_is_no_error_but_other_failures_are() {
        let dir = tempfile::tempdir().unwrap();
        assert!(remove_file(&dir.path().join("gone")).is_ok());
        std::fs::create_dir(dir.path().join("a-dir")).unwrap();
        assert!(remove_file(&dir.path().join("a-dir")).is_err());
    }

    /// `cache purge --all`'s last step: every file in the shards goes,
    /// blobs, sidecars and strays (a record the index could not read names
    /// files no record's delete reaches).
    #[test]
    fn removing_all_files_leaves_the_shards_empty() {
        let s = Store::new();
        let (_, blob) = s.put(1, b"zip");
        s.put(2, b"other zip");
        std::fs::write(blob.with_extension("part"), b"?").unwrap();
        remove_all_files(s.dir.path()).unwrap();
        let left = scan(s.dir.path()).unwrap();
        assert!(left.blobs.is_empty(), "{:?}", left.blobs);
        assert!(
            left.sidecars.is_empty() && left.strays.is_empty(),
            "{left:?}"
        );
    }

    /// What is a blob (a digest's name, no extension), a sidecar (a
    /// digest's name, `.json`) and a stray (anything else in a shard).
    #[test]
    fn the_scan_tells_blobs_sidecars_and_strays_apart() {
        let s = Store::new();
        let (record, blob) = s.put(1, b"zip");
        let shard = blob.parent().unwrap().to_owned();
        let prefix = &record.sha256[..2];
        // A digest that belongs in another shard.
        let elsewhere = if prefix == "ff" { "0" } else { "f" }.repeat(64);
        let mut strays = vec![
            shard.join(format!("{}.part", record.sha256)),
            shard.join("not-a-digest"),
            shard.join("not-a-digest.json"),
            shard.join(format!("{prefix}-not-a-digest")),
            shard.join(&elsewhere),
        ];
        for stray in &strays {
            std::fs::write(stray, b"?").unwrap();
        }
        let mut found = scan(s.dir.path()).unwrap();
        let blobs: Vec<&Path> = found.blobs.iter().map(|b| b.path.as_path()).collect();
        assert_eq!(blobs, [blob.as_path()]);
        let sidecars: Vec<&PathBuf> = found.sidecars.values().collect();
        assert_eq!(sidecars, [&sidecar::path_for(&blob)]);
        found.strays.sort();
        strays.sort();
        assert_eq!(found.strays, strays);
    }

    struct Store {
        dir: tempfile::TempDir,
        index: Index,
    }

    impl Store {
        fn new() -> Store {
            let dir = tempfile::tempdir().unwrap();
            let index = Index::open(&dir.path().join("index"), 1 << 20).unwrap();
            std::fs::create_dir_all(dir.path().join("tmp")).unwrap();
            Store { dir, index }
        }

        /// Stores `content` as the server does: file, sidecar, record.
        fn put(&self, id: u64, content: &[u8]) -> (BlobRecord, PathBuf) {
            let sha = hex(&Sha256::digest(content));
            let path = self.path(&sha);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, content).unwrap();
            let record = BlobRecord {
                sha256: sha,
                size: content.len() as u64,
                name: format!("a{id}"),
                expires_at: None,
                stored_at: 1_700_000_000 + id,
                repo: Some("n:o/r".into()),
            };
            sidecar::add(&path, &self.dir.path().join("tmp"), id, &record).unwrap();
            self.index.blobs().put(id, &record, 1).unwrap();
            (record, path)
        }

        fn path(&self, sha: &str) -> PathBuf {
            self.dir
                .path()
                .join("blobs/sha256")
                .join(&sha[..2])
                .join(sha)
        }

        fn ids(&self) -> Vec<u64> {
            let mut ids: Vec<u64> = self
                .index
                .blobs()
                .records()
                .unwrap()
                .into_iter()
                .map(|(id, _)| id)
                .collect();
            ids.sort_unstable();
            ids
        }

        fn reconcile(&self, rehash: bool) -> Report {
            reconcile(self.dir.path(), &self.index, rehash).unwrap()
        }
    }

    #[test]
    fn a_consistent_store_is_left_alone() {
        let s = Store::new();
        s.put(1, b"one");
        s.put(2, b"two");
        s.put(3, b"two"); // shares the file of 2
        let report = s.reconcile(true);
        assert!(!report.changed_anything(), "{report:?}");
        assert_eq!((report.checked, report.ok), (2, 2));
        assert_eq!((report.stored_bytes, report.stored_blobs), (9, 3));
    }

    #[test]
    fn lost_records_are_rebuilt_from_sidecars() {
        let s = Store::new();
        let (one, _) = s.put(1, b"one");
        s.put(2, b"two");
        s.put(3, b"two");
        for id in [1, 2, 3] {
            s.index.blobs().remove(id).unwrap();
        }
        let report = s.reconcile(false);
        assert_eq!(report.records_rebuilt, 3);
        assert_eq!(report.orphans_removed, 0);
        assert_eq!(s.ids(), [1, 2, 3]);
        let back = s.index.blobs().get(1).unwrap().unwrap();
        assert_eq!(back, one);
        // Rebuilt in storage order for the LRU.
        assert_eq!(s.index.blobs().least_recent().unwrap(), Some(1));
        assert!(!s.reconcile(false).changed_anything());
    }

    #[test]
    fn orphans_strays_and_dangling_records_go() {
        let s = Store::new();
        s.put(1, b"one");
        let (_, two) = s.put(2, b"two");
        // A file nothing names; a sidecar without its file; a stray name.
        let orphan = s.path(&"f".repeat(64));
        std::fs::create_dir_all(orphan.parent().unwrap()).unwrap();
        std::fs::write(&orphan, b"orphan").unwrap();
        let lonely = sidecar::path_for(&s.path(&"e".repeat(64)));
        std::fs::create_dir_all(lonely.parent().unwrap()).unwrap();
        std::fs::write(&lonely, br#"{"artifacts":{}}"#).unwrap();
        let stray = orphan.parent().unwrap().join("notes.txt");
        std::fs::write(&stray, b"?").unwrap();
        // A record whose file is gone (its sidecar too).
        std::fs::remove_file(&two).unwrap();
        sidecar::remove(&two).unwrap();
        let report = s.reconcile(false);
        assert_eq!(report.orphans_removed, 2, "{report:?}");
        assert_eq!(report.stray_sidecars, 1);
        assert_eq!(report.dangling_records, 1);
        assert!(!orphan.exists() && !lonely.exists() && !stray.exists());
        assert_eq!(s.ids(), [1]);
    }

    #[test]
    fn corrupt_files_go_with_their_records_and_grants() {
        let s = Store::new();
        let (_, one) = s.put(1, b"one");
        s.put(2, b"two");
        let cred = crate::credential::CredentialId::Token([1; 32]);
        s.index.grants().put(1, cred, 1).unwrap();
        std::fs::write(&one, b"onf").unwrap(); // same size, other bytes
        assert!(
            s.reconcile(false).corrupt.is_empty(),
            "sizes alone cannot see it"
        );
        let report = s.reconcile(true);
        assert_eq!(report.corrupt.len(), 1);
        assert_eq!(report.corrupt[0].artifacts, [1]);
        assert!(report.corrupt[0].reason.contains("hashes to"));
        assert!(!one.exists() && !sidecar::path_for(&one).exists());
        assert_eq!(s.ids(), [2]);
        assert_eq!(s.index.grants().get(1, cred).unwrap(), None);
        // A truncated file is caught by its size, even without re-hashing.
        let (_, three) = s.put(3, b"three");
        std::fs::write(&three, b"th").unwrap();
        let report = s.reconcile(false);
        assert_eq!(report.corrupt.len(), 1, "{report:?}");
        assert!(report.corrupt[0].reason.contains("2 bytes on disk"));
    }

    #[test]
    fn records_from_before_sidecars_get_one() {
        let s = Store::new();
        let (_, path) = s.put(1, b"one");
        sidecar::remove(&path).unwrap();
        let report = s.reconcile(false);
        assert_eq!(report.sidecars_written, 1);
        assert_eq!(
            sidecar::read(&path).unwrap().unwrap().artifacts.len(),
            1,
            "backfilled"
        );
    }

    #[test]
    fn tmp_is_emptied_and_counted() {
        let s = Store::new();
        std::fs::write(s.dir.path().join("tmp/1-x.part"), b"p").unwrap();
        assert_eq!(clear_tmp(s.dir.path()).unwrap(), 1);
        assert_eq!(clear_tmp(s.dir.path()).unwrap(), 0);
        // No tmp/ at all (a data dir from before it, or removed by hand):
        // nothing to count, and it is made.
        std::fs::remove_dir(s.dir.path().join("tmp")).unwrap();
        assert_eq!(clear_tmp(s.dir.path()).unwrap(), 0);
        assert!(s.dir.path().join("tmp").is_dir());
    }
}
