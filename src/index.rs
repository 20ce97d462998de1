//! The embedded persistent index (sled). Every sled call lives in this
//! module: sled 0.34 is beta-quality upstream, so keeping it behind one
//! small API keeps it replaceable, and its page cache is bounded by a
//! setting instead of sled's 1 GB default.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use sled::IVec;

#[derive(Debug, thiserror::Error)]
#[error(
    "cannot open the index at {path}: {source} (is another artifact-mirror using this data dir?)"
)]
pub struct IndexOpenError {
    path: PathBuf,
    source: sled::Error,
}

impl IndexOpenError {
    /// Whether the open failed because another process (or another open in
    /// this one) holds the index's file lock, as opposed to a damaged or
    /// unreadable index: the admin commands then name the holder instead of
    /// suggesting a repair.
    pub fn is_locked(&self) -> bool {
        // sled reports a held lock as a plain I/O error with this text.
        match &self.source {
            sled::Error::Io(e) => e.to_string().contains("could not acquire lock"),
            _ => false,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// What `cache stats` reports of the index. Times are Unix milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IndexStats {
    pub json_entries: u64,
    pub json_bytes: u64,
    /// Least and most recently validated cached JSON.
    pub json_validated: Option<(u64, u64)>,
    pub blob_records: u64,
    /// Least and most recently used blob.
    pub blob_used: Option<(u64, u64)>,
    pub grants: u64,
    pub facts: u64,
}

/// How many records `Index::clear_all` dropped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cleared {
    pub json_entries: u64,
    pub grants: u64,
    pub facts: u64,
    pub blob_records: u64,
}

/// Cached JSON lives in three trees: `json_meta` (key → last-validated
/// time + policy and headers, rewritten on every revalidation, so small),
/// `json_body` (key → body, written only when upstream sends a new one) and
/// `json_lru` (time ++ key, oldest first, for eviction by size and age).
#[derive(Clone)]
pub struct Index {
    db: sled::Db,
    json_meta: sled::Tree,
    json_body: sled::Tree,
    json_lru: sled::Tree,
    aliases: sled::Tree,
    /// `artifact ++ credential id` → when upstream last allowed the download.
    grants: sled::Tree,
    /// `artifact` → what any cached JSON said of it (name, size, digest…).
    facts: sled::Tree,
    /// `artifact` → the stored blob's record; `blob_access` → last use;
    /// `blob_lru` → `last use ++ artifact`, oldest first.
    blobs: sled::Tree,
    blob_access: sled::Tree,
    blob_lru: sled::Tree,
    /// Bytes of cached JSON (meta + body), kept in memory; recounted at open.
    json_bytes: Arc<AtomicU64>,
}

/// A cached JSON record as stored.
pub struct JsonRecord {
    pub validated_at: u64,
    pub meta: IVec,
    pub body: IVec,
}

/// Key of the record that proves the index is readable and writable.
const PROBE_KEY: &[u8] = b"instance/ready-probe";

impl Index {
    pub fn open(dir: &Path, cache_bytes: u64) -> Result<Index, IndexOpenError> {
        // sled takes no mode: its directory is made 0700 first (nothing
        // inside is reachable by others then) and its files narrowed after.
        crate::private::create_dir_all(dir).map_err(|e| IndexOpenError {
            path: dir.to_owned(),
            source: sled::Error::Io(e),
        })?;
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(cache_bytes)
            .open()
            .map_err(|source| IndexOpenError {
                path: dir.to_owned(),
                source,
            })?;
        let tree = |name: &str| {
            db.open_tree(name).map_err(|source| IndexOpenError {
                path: dir.to_owned(),
                source,
            })
        };
        let index = Index {
            json_meta: tree("json_meta")?,
            json_body: tree("json_body")?,
            json_lru: tree("json_lru")?,
            aliases: tree("aliases")?,
            grants: tree("grants")?,
            facts: tree("facts")?,
            blobs: tree("blobs")?,
            blob_access: tree("blob_access")?,
            blob_lru: tree("blob_lru")?,
            json_bytes: Arc::new(AtomicU64::new(0)),
            db,
        };
        let mut total = 0u64;
        for tree in [&index.json_meta, &index.json_body] {
            for item in tree.iter() {
                let (_, v) = item.map_err(|source| IndexOpenError {
                    path: dir.to_owned(),
                    source,
                })?;
                total += v.len() as u64;
            }
        }
        index.json_bytes.store(total, Ordering::Relaxed);
        if let Some(error) = crate::private::tighten(dir).first_error {
            tracing::warn!(%error, "index files left readable by others");
        }
        Ok(index)
    }

    pub fn json_get(&self, key: &[u8]) -> Result<Option<JsonRecord>, sled::Error> {
        let Some(meta) = self.json_meta.get(key)? else {
            return Ok(None);
        };
        let Some(body) = self.json_body.get(key)? else {
            // A crash between the two writes: treat as absent.
            self.json_remove(key)?;
            return Ok(None);
        };
        let (validated_at, meta) = split_stamp(&meta);
        Ok(Some(JsonRecord {
            validated_at,
            meta,
            body,
        }))
    }

    /// Stores meta (always) and body (when upstream sent a new one).
    /// `validated_at` is in Unix milliseconds.
    pub fn json_put(
        &self,
        key: &[u8],
        validated_at: u64,
        meta: &[u8],
        body: Option<&[u8]>,
    ) -> Result<(), sled::Error> {
        let mut stamped = Vec::with_capacity(8 + meta.len());
        stamped.extend_from_slice(&validated_at.to_be_bytes());
        stamped.extend_from_slice(meta);
        let mut added = stamped.len() as u64;
        let mut removed = 0u64;
        if let Some(body) = body {
            added += body.len() as u64;
            if let Some(old) = self.json_body.insert(key, body)? {
                removed += old.len() as u64;
            }
        }
        if let Some(old) = self.json_meta.insert(key, stamped)? {
            removed += old.len() as u64;
            let (old_time, _) = split_stamp(&old);
            self.json_lru.remove(lru_key(old_time, key))?;
        }
        self.json_lru.insert(lru_key(validated_at, key), &[])?;
        self.account(added, removed);
        Ok(())
    }

    pub fn json_remove(&self, key: &[u8]) -> Result<(), sled::Error> {
        let mut removed = 0;
        if let Some(old) = self.json_meta.remove(key)? {
            removed += old.len() as u64;
            let (old_time, _) = split_stamp(&old);
            self.json_lru.remove(lru_key(old_time, key))?;
        }
        if let Some(old) = self.json_body.remove(key)? {
            removed += old.len() as u64;
        }
        self.account(0, removed);
        Ok(())
    }

    /// Removes every record whose key starts with `prefix`; returns how many.
    pub fn json_remove_prefix(&self, prefix: &[u8]) -> Result<usize, sled::Error> {
        let keys: Vec<IVec> = self
            .json_meta
            .scan_prefix(prefix)
            .keys()
            .collect::<Result<_, _>>()?;
        for key in &keys {
            self.json_remove(key)?;
        }
        Ok(keys.len())
    }

    /// Drops the least recently validated records until the JSON bytes fit
    /// `max_bytes`, and every record validated before `oldest`. Returns the
    /// keys dropped so the memory tier can follow.
    pub fn json_evict(&self, max_bytes: u64, oldest: u64) -> Result<Vec<Vec<u8>>, sled::Error> {
        let mut dropped = Vec::new();
        while let Some((lru, _)) = self.json_lru.first()? {
            let (time, key) = split_stamp(&lru);
            if self.json_bytes() <= max_bytes && time >= oldest {
                break;
            }
            self.json_remove(&key)?;
            // A record whose meta vanished leaves its LRU line behind.
            self.json_lru.remove(&lru)?;
            dropped.push(key.to_vec());
        }
        Ok(dropped)
    }

    pub fn json_bytes(&self) -> u64 {
        self.json_bytes.load(Ordering::Relaxed)
    }

    fn account(&self, added: u64, removed: u64) {
        let _ = self
            .json_bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some((v + added).saturating_sub(removed))
            });
    }

    /// Remembers that two repository keys name the same repository
    /// (`owner/name` and its id), both ways.
    pub fn alias_put(&self, a: &[u8], b: &[u8]) -> Result<(), sled::Error> {
        if self.aliases.get(a)?.as_deref() != Some(b) {
            self.aliases.insert(a, b)?;
            self.aliases.insert(b, a)?;
        }
        Ok(())
    }

    pub fn alias_get(&self, a: &[u8]) -> Result<Option<IVec>, sled::Error> {
        self.aliases.get(a)
    }

    pub fn grant_get(&self, artifact: u64, credential: &[u8]) -> Result<Option<u64>, sled::Error> {
        let v = self.grants.get(grant_key(artifact, credential))?;
        Ok(v.map(|v| split_stamp(&v).0))
    }

    pub fn grant_put(
        &self,
        artifact: u64,
        credential: &[u8],
        at_ms: u64,
    ) -> Result<(), sled::Error> {
        self.grants
            .insert(grant_key(artifact, credential), &at_ms.to_be_bytes())
            .map(|_| ())
    }

    pub fn grant_remove(&self, artifact: u64, credential: &[u8]) -> Result<(), sled::Error> {
        self.grants
            .remove(grant_key(artifact, credential))
            .map(|_| ())
    }

    /// Ends every credential's grant for an artifact (deleted or expired);
    /// returns how many there were.
    pub fn grants_remove_artifact(&self, artifact: u64) -> Result<u64, sled::Error> {
        let mut removed = 0;
        for key in self.grants.scan_prefix(artifact.to_be_bytes()).keys() {
            if self.grants.remove(key?)?.is_some() {
                removed += 1;
            }
        }
        Ok(removed)
    }

    pub fn facts_put(&self, artifact: u64, facts: &[u8]) -> Result<(), sled::Error> {
        self.facts.insert(artifact.to_be_bytes(), facts).map(|_| ())
    }

    pub fn facts_get(&self, artifact: u64) -> Result<Option<IVec>, sled::Error> {
        self.facts.get(artifact.to_be_bytes())
    }

    /// Every artifact's facts, for `cache purge --repo` (facts name the
    /// repository they were learned from).
    pub fn facts_all(&self) -> Result<Vec<(u64, IVec)>, sled::Error> {
        self.facts
            .iter()
            .map(|item| item.map(|(k, v)| (u64_key(&k), v)))
            .collect()
    }

    /// Returns whether there were facts to drop.
    pub fn facts_remove(&self, artifact: u64) -> Result<bool, sled::Error> {
        Ok(self.facts.remove(artifact.to_be_bytes())?.is_some())
    }

    /// Drops the facts `stale` picks, one record in memory at a time;
    /// returns their artifacts.
    pub fn facts_remove_where(
        &self,
        mut stale: impl FnMut(&[u8]) -> bool,
    ) -> Result<Vec<u64>, sled::Error> {
        let mut removed = Vec::new();
        for item in self.facts.iter() {
            let (k, v) = item?;
            if stale(&v) {
                self.facts.remove(&k)?;
                removed.push(u64_key(&k));
            }
        }
        Ok(removed)
    }

    /// Each artifact some credential holds a grant for, once (grant keys
    /// start with the artifact, so they come grouped).
    pub fn granted_artifacts(&self) -> Result<Vec<u64>, sled::Error> {
        let mut out = Vec::new();
        for key in self.grants.iter().keys() {
            let id = u64_key(&key?);
            if out.last() != Some(&id) {
                out.push(id);
            }
        }
        Ok(out)
    }

    pub fn blob_get(&self, artifact: u64) -> Result<Option<IVec>, sled::Error> {
        self.blobs.get(artifact.to_be_bytes())
    }

    /// Every blob record, for sweeps (expiry, shared files, repair).
    pub fn blob_records(&self) -> Result<Vec<(u64, IVec)>, sled::Error> {
        self.blobs
            .iter()
            .map(|item| item.map(|(k, v)| (u64_key(&k), v)))
            .collect()
    }

    /// Writes a blob record and marks it used now. Flushed before it returns:
    /// the record is what makes a stored file visible after a restart.
    pub fn blob_put(&self, artifact: u64, record: &[u8], now_ms: u64) -> Result<(), sled::Error> {
        self.blobs.insert(artifact.to_be_bytes(), record)?;
        self.blob_touch(artifact, now_ms)?;
        self.db.flush()?;
        Ok(())
    }

    pub fn blob_touch(&self, artifact: u64, now_ms: u64) -> Result<(), sled::Error> {
        let id = artifact.to_be_bytes();
        if let Some(old) = self.blob_access.insert(id, &now_ms.to_be_bytes())? {
            self.blob_lru.remove(lru_key(split_stamp(&old).0, &id))?;
        }
        self.blob_lru.insert(lru_key(now_ms, &id), &[])?;
        Ok(())
    }

    pub fn blob_remove(&self, artifact: u64) -> Result<Option<IVec>, sled::Error> {
        let id = artifact.to_be_bytes();
        if let Some(old) = self.blob_access.remove(id)? {
            self.blob_lru.remove(lru_key(split_stamp(&old).0, &id))?;
        }
        self.blobs.remove(id)
    }

    /// The least recently used stored blob.
    pub fn blob_least_recent(&self) -> Result<Option<u64>, sled::Error> {
        Ok(self
            .blob_lru
            .first()?
            .map(|(k, _)| u64_key(&split_stamp(&k).1)))
    }

    /// Counts for `cache stats`. Walks the JSON and grant trees (a few
    /// hundred bytes per record), which is fine for an operator's command
    /// and why the server never calls it.
    pub fn stats(&self) -> Result<IndexStats, sled::Error> {
        let bounds = |tree: &sled::Tree| -> Result<Option<(u64, u64)>, sled::Error> {
            Ok(match (tree.first()?, tree.last()?) {
                (Some((first, _)), Some((last, _))) => {
                    Some((split_stamp(&first).0, split_stamp(&last).0))
                }
                _ => None,
            })
        };
        Ok(IndexStats {
            json_entries: self.json_meta.len() as u64,
            json_bytes: self.json_bytes(),
            json_validated: bounds(&self.json_lru)?,
            blob_records: self.blobs.len() as u64,
            blob_used: bounds(&self.blob_lru)?,
            grants: self.grants.len() as u64,
            facts: self.facts.len() as u64,
        })
    }

    /// Empties every cache tree: JSON (and the repository aliases learned
    /// from it), grants, facts and blob records. The caller removes the blob
    /// files and their sidecars first, so a crash half way leaves records
    /// without files (dropped at the next start), never files a rebuild
    /// would bring back.
    pub fn clear_all(&self) -> Result<Cleared, sled::Error> {
        let cleared = Cleared {
            json_entries: self.json_meta.len() as u64,
            grants: self.grants.len() as u64,
            facts: self.facts.len() as u64,
            blob_records: self.blobs.len() as u64,
        };
        for tree in [
            &self.json_meta,
            &self.json_body,
            &self.json_lru,
            &self.aliases,
            &self.grants,
            &self.facts,
            &self.blobs,
            &self.blob_access,
            &self.blob_lru,
        ] {
            tree.clear()?;
        }
        self.json_bytes.store(0, Ordering::Relaxed);
        self.db.flush()?;
        Ok(cleared)
    }

    /// Writes everything to disk before an admin command exits (the server
    /// flushes at shutdown; a command has no shutdown of its own).
    pub fn flush_now(&self) -> Result<(), sled::Error> {
        self.db.flush().map(|_| ())
    }

    /// Writes and reads back a record: what `/readyz` means by "index open".
    pub fn check(&self) -> Result<(), sled::Error> {
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
            .to_be_bytes();
        self.db.insert(PROBE_KEY, &stamp)?;
        match self.db.get(PROBE_KEY)? {
            Some(v) if v.as_ref() == stamp => Ok(()),
            _ => Err(sled::Error::ReportableBug(
                "index probe record did not read back".into(),
            )),
        }
    }

    pub async fn flush(&self) -> Result<(), sled::Error> {
        self.db.flush_async().await.map(|_| ())
    }
}

fn grant_key(artifact: u64, credential: &[u8]) -> Vec<u8> {
    let mut k = artifact.to_be_bytes().to_vec();
    k.extend_from_slice(credential);
    k
}

fn u64_key(k: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = k.len().min(8);
    b[..n].copy_from_slice(&k[..n]);
    u64::from_be_bytes(b)
}

fn lru_key(time: u64, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + key.len());
    k.extend_from_slice(&time.to_be_bytes());
    k.extend_from_slice(key);
    k
}

/// Splits `time (8 bytes, big-endian) ++ rest`.
fn split_stamp(v: &IVec) -> (u64, IVec) {
    let mut time = [0u8; 8];
    let n = v.len().min(8);
    time[..n].copy_from_slice(&v[..n]);
    (u64::from_be_bytes(time), v.subslice(n, v.len() - n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_open_of_one_dir_is_refused_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(dir.path(), 1 << 20).unwrap();
        index.check().unwrap();
        let Err(e) = Index::open(dir.path(), 1 << 20) else {
            panic!("a second open must fail while the first holds the lock");
        };
        assert!(e.to_string().contains("another artifact-mirror"), "{e}");
        assert!(e.is_locked(), "{e:?}");
        drop(index);
        // A damaged index is not a held lock.
        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, b"x").unwrap();
        let Err(e) = Index::open(&file, 1 << 20) else {
            panic!("a file is no index");
        };
        assert!(!e.is_locked(), "{e:?}");
    }

    #[test]
    fn stats_count_and_clear_all_empties() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(index.stats().unwrap(), IndexStats::default());
        index.json_put(b"a", 100, b"m", Some(b"body")).unwrap();
        index.json_put(b"b", 300, b"m", Some(b"body")).unwrap();
        index.grant_put(7, b"cred", 1).unwrap();
        index.grant_put(7, b"other", 1).unwrap();
        index.grant_put(8, b"cred", 1).unwrap();
        index.facts_put(7, b"{}").unwrap();
        index.blob_put(7, b"{}", 50).unwrap();
        index.blob_put(8, b"{}", 70).unwrap();
        let stats = index.stats().unwrap();
        assert_eq!(stats.json_entries, 2);
        assert_eq!(stats.json_bytes, 2 * (8 + 1 + 4));
        assert_eq!(stats.json_validated, Some((100, 300)));
        assert_eq!((stats.blob_records, stats.blob_used), (2, Some((50, 70))));
        assert_eq!((stats.grants, stats.facts), (3, 1));
        assert_eq!(index.grants_remove_artifact(7).unwrap(), 2);
        assert!(index.facts_remove(7).unwrap());
        assert!(!index.facts_remove(7).unwrap());
        let cleared = index.clear_all().unwrap();
        assert_eq!(
            cleared,
            Cleared {
                json_entries: 2,
                grants: 1,
                facts: 0,
                blob_records: 2
            }
        );
        assert_eq!(index.stats().unwrap(), IndexStats::default());
    }

    #[test]
    fn facts_are_dropped_by_predicate_and_grants_listed_once_per_artifact() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(dir.path(), 1 << 20).unwrap();
        for (id, facts) in [(3, b"old"), (5, b"new"), (9, b"old")] {
            index.facts_put(id, facts).unwrap();
        }
        assert_eq!(index.facts_remove_where(|v| v == b"old").unwrap(), [3, 9]);
        assert_eq!(index.facts_all().unwrap().len(), 1);
        assert!(index.facts_get(5).unwrap().is_some());

        for (id, cred) in [(300, &b"a"[..]), (7, b"a"), (300, b"b"), (7, b"c")] {
            index.grant_put(id, cred, 1).unwrap();
        }
        assert_eq!(index.granted_artifacts().unwrap(), [7, 300]);
    }

    #[test]
    fn json_records_are_bounded_by_size_and_age_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(dir.path(), 1 << 20).unwrap();
        for (i, key) in [b"a", b"b", b"c"].iter().enumerate() {
            index
                .json_put(*key, 100 + i as u64, b"meta", Some(&[0u8; 100]))
                .unwrap();
        }
        // Revalidating `a` makes it the most recent.
        index.json_put(b"a", 200, b"meta2", None).unwrap();
        assert_eq!(index.json_get(b"a").unwrap().unwrap().body.len(), 100);
        let per_record = 100 + 8 + 4;
        assert!(index.json_bytes() >= 3 * per_record);
        let dropped = index.json_evict(2 * per_record + 1, 0).unwrap();
        assert_eq!(dropped, vec![b"b".to_vec()]);
        let dropped = index.json_evict(u64::MAX, 150).unwrap();
        assert_eq!(dropped, vec![b"c".to_vec()]);
        assert!(index.json_get(b"a").unwrap().is_some());
        drop(index);
        // Reopened, the byte count is recounted from disk.
        let index = Index::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(index.json_bytes(), 8 + 5 + 100);
        assert_eq!(index.json_remove_prefix(b"a").unwrap(), 1);
        assert_eq!(index.json_bytes(), 0);
    }
}
