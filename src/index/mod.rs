//! The embedded persistent index (sled), as typed tables owned by the
//! parts that use them: cached JSON and repository aliases (the JSON
//! cache), grants (access), facts (what JSON said of an artifact) and blob
//! records (the blob store). Every sled call lives in this module and its
//! error type does not name sled: sled 0.34 is beta-quality upstream, so
//! keeping it behind one small API keeps it replaceable, and its page cache
//! is bounded by a setting instead of sled's 1 GB default. Records are
//! encoded here (serde), so callers hand over and get back their own types.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

mod blobs;
mod clean;
mod error;
mod expiry;
mod facts;
mod grants;
mod json;
mod stamp;

pub use blobs::{BlobRecord, BlobTable};
pub use clean::{CleanStop, Opened};
pub use error::{IndexError, IndexOpenError};
pub use facts::{FactTable, Facts};
pub use grants::GrantTable;
pub use json::{JsonMeta, JsonRecord, JsonTable};

use stamp::split_stamp;

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

#[derive(Clone)]
pub struct Index {
    db: sled::Db,
    json: JsonTable,
    grants: GrantTable,
    facts: FactTable,
    blobs: BlobTable,
    /// Whether the last process stopped cleanly (read once, at open).
    opened: Opened,
}

/// Present once the expiry lines of blob records and facts were drawn.
const EXPIRY_LINES_KEY: &[u8] = b"instance/expiry-lines/v1";

/// Key of the record that proves the index is readable and writable.
const PROBE_KEY: &[u8] = b"instance/ready-probe";

impl Index {
    pub fn open(dir: &Path, cache_bytes: u64) -> Result<Index, IndexOpenError> {
        // sled takes no mode: its directory is made 0700 first (nothing
        // inside is reachable by others then) and its files narrowed after.
        crate::private::create_dir_all(dir).map_err(|e| IndexOpenError::new(dir, e))?;
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(cache_bytes)
            .open()
            .map_err(|e| IndexOpenError::new(dir, e))?;
        let open_err = |e: sled::Error| IndexOpenError::new(dir, e);
        let tree = |name: &str| db.open_tree(name).map_err(open_err);
        let json = JsonTable {
            meta: tree("json_meta")?,
            body: tree("json_body")?,
            lru: tree("json_lru")?,
            aliases: tree("aliases")?,
            bytes: Arc::new(AtomicU64::new(0)),
        };
        let opened = clean::take(&db).map_err(open_err)?;
        let total = match opened {
            Opened::Clean(stop) => stop.json_bytes,
            Opened::Unknown => {
                let mut total = 0u64;
                for tree in [&json.meta, &json.body] {
                    for item in tree.iter() {
                        let (_, v) = item.map_err(open_err)?;
                        total += v.len() as u64;
                    }
                }
                total
            }
        };
        json.bytes.store(total, Ordering::Relaxed);
        let index = Index {
            json,
            grants: GrantTable(tree("grants")?),
            facts: FactTable {
                facts: tree("facts")?,
                expiry: tree("fact_expiry")?,
            },
            blobs: BlobTable {
                db: db.clone(),
                records: tree("blobs")?,
                access: tree("blob_access")?,
                lru: tree("blob_lru")?,
                expiry: tree("blob_expiry")?,
            },
            db,
            opened,
        };
        if index.db.get(EXPIRY_LINES_KEY).map_err(open_err)?.is_none() {
            // Written by a release that kept no expiry lines: drawn once.
            expiry::draw_all::<BlobRecord>(&index.blobs.records, &index.blobs.expiry)
                .and_then(|()| expiry::draw_all::<Facts>(&index.facts.facts, &index.facts.expiry))
                .map_err(open_err)?;
            index.db.insert(EXPIRY_LINES_KEY, &[]).map_err(open_err)?;
            index.db.flush().map_err(open_err)?;
        }
        if let Some(error) = crate::private::tighten(dir).first_error {
            tracing::warn!(%error, "index files left readable by others");
        }
        Ok(index)
    }

    /// Whether the last process stopped cleanly, with what it counted.
    pub fn opened(&self) -> Opened {
        self.opened
    }

    /// Marks the index as agreeing with the store's files, with the store's
    /// totals, and flushes: the next open then trusts both (see
    /// [`clean`]). Only for a process's last act, once nothing else can
    /// change the index or the files.
    pub fn seal(&self, blob_bytes: u64, blobs: u64) -> Result<(), IndexError> {
        let stop = CleanStop {
            json_bytes: self.json.bytes(),
            blob_bytes,
            blobs,
        };
        self.db.insert(clean::KEY, serde_json::to_vec(&stop)?)?;
        self.db.flush()?;
        Ok(())
    }

    /// Cached JSON and repository aliases (the JSON cache's).
    pub fn json(&self) -> &JsonTable {
        &self.json
    }

    /// Download permission (access's).
    pub fn grants(&self) -> &GrantTable {
        &self.grants
    }

    /// What JSON said of each artifact.
    pub fn facts(&self) -> &FactTable {
        &self.facts
    }

    /// Stored zips (the blob store's).
    pub fn blobs(&self) -> &BlobTable {
        &self.blobs
    }

    /// Counts for `cache stats`. Walks the JSON and grant trees (a few
    /// hundred bytes per record), which is fine for an operator's command
    /// and why the server never calls it.
    pub fn stats(&self) -> Result<IndexStats, IndexError> {
        let bounds = |tree: &sled::Tree| -> Result<Option<(u64, u64)>, sled::Error> {
            Ok(match (tree.first()?, tree.last()?) {
                (Some((first, _)), Some((last, _))) => {
                    Some((split_stamp(&first).0, split_stamp(&last).0))
                }
                _ => None,
            })
        };
        Ok(IndexStats {
            json_entries: self.json.meta.len() as u64,
            json_bytes: self.json.bytes(),
            json_validated: bounds(&self.json.lru)?,
            blob_records: self.blobs.records.len() as u64,
            blob_used: bounds(&self.blobs.lru)?,
            grants: self.grants.0.len() as u64,
            facts: self.facts.facts.len() as u64,
        })
    }

    /// Empties every cache tree: JSON (and the repository aliases learned
    /// from it), grants, facts and blob records. The caller removes the blob
    /// files and their sidecars first, so a crash half way leaves records
    /// without files (dropped at the next start), never files a rebuild
    /// would bring back.
    pub fn clear_all(&self) -> Result<Cleared, IndexError> {
        let cleared = Cleared {
            json_entries: self.json.meta.len() as u64,
            grants: self.grants.0.len() as u64,
            facts: self.facts.facts.len() as u64,
            blob_records: self.blobs.records.len() as u64,
        };
        for tree in [
            &self.json.meta,
            &self.json.body,
            &self.json.lru,
            &self.json.aliases,
            &self.grants.0,
            &self.facts.facts,
            &self.facts.expiry,
            &self.blobs.records,
            &self.blobs.expiry,
            &self.blobs.access,
            &self.blobs.lru,
        ] {
            tree.clear()?;
        }
        self.json.bytes.store(0, Ordering::Relaxed);
        self.db.flush()?;
        Ok(cleared)
    }

    /// Writes everything to disk before an admin command exits (the server
    /// flushes at shutdown; a command has no shutdown of its own).
    pub fn flush_now(&self) -> Result<(), IndexError> {
        self.db.flush()?;
        Ok(())
    }

    /// Writes and reads back a record: what `/readyz` means by "index open".
    pub fn check(&self) -> Result<(), IndexError> {
        let stamp = crate::clock::now_secs().to_be_bytes();
        self.db.insert(PROBE_KEY, &stamp)?;
        match self.db.get(PROBE_KEY)? {
            Some(v) if v.as_ref() == stamp => Ok(()),
            _ => Err(
                sled::Error::ReportableBug("index probe record did not read back".into()).into(),
            ),
        }
    }

    pub async fn flush(&self) -> Result<(), IndexError> {
        self.db.flush_async().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credential::CredentialId;

    const CRED: CredentialId = CredentialId::Token([1; 32]);
    const OTHER: CredentialId = CredentialId::Token([2; 32]);

    pub(super) fn meta(tag: &str) -> JsonMeta {
        let mut headers = http::HeaderMap::new();
        headers.insert("etag", http::HeaderValue::from_str(tag).unwrap());
        let request = http::Request::get("/").body(()).unwrap();
        let response = http::Response::new(());
        let policy = http_cache_semantics::CachePolicy::new(&request, &response);
        JsonMeta { headers, policy }
    }

    pub(super) fn record(sha: &str) -> BlobRecord {
        BlobRecord {
            sha256: sha.into(),
            size: 1,
            name: "n".into(),
            expires_at: None,
            stored_at: 0,
            repo: None,
        }
    }

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
        let m = meta("\"m\"");
        let m_len = serde_json::to_vec(&m).unwrap().len() as u64;
        index.json().put(b"a", 100, &m, Some(b"body")).unwrap();
        index.json().put(b"b", 300, &m, Some(b"body")).unwrap();
        index.grants().put(7, CRED, 1).unwrap();
        index.grants().put(7, OTHER, 1).unwrap();
        index.grants().put(8, CRED, 1).unwrap();
        index.facts().put(7, &Facts::default()).unwrap();
        index.blobs().put(7, &record("a"), 50).unwrap();
        index.blobs().put(8, &record("b"), 70).unwrap();
        let stats = index.stats().unwrap();
        assert_eq!(stats.json_entries, 2);
        assert_eq!(stats.json_bytes, 2 * (8 + m_len + 4));
        assert_eq!(stats.json_validated, Some((100, 300)));
        assert_eq!((stats.blob_records, stats.blob_used), (2, Some((50, 70))));
        assert_eq!((stats.grants, stats.facts), (3, 1));
        assert_eq!(index.grants().remove_artifact(7).unwrap(), 2);
        assert!(index.facts().remove(7).unwrap());
        assert!(!index.facts().remove(7).unwrap());
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
    fn expired_facts_and_blobs_are_read_from_their_lines_and_grants_listed_once() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(dir.path(), 1 << 20).unwrap();
        let expiring = |t: Option<u64>| Facts {
            expires_at: t,
            ..Facts::default()
        };
        for (id, t) in [(3, Some(100)), (5, Some(300)), (9, Some(100)), (7, None)] {
            index.facts().put(id, &expiring(t)).unwrap();
            let blob = BlobRecord {
                expires_at: t,
                ..record("x")
            };
            index.blobs().put(id, &blob, 1).unwrap();
        }
        // Learned again with a later expiry: its old line goes.
        index.facts().put(9, &expiring(Some(500))).unwrap();
        let later = BlobRecord {
            expires_at: Some(500),
            ..record("x")
        };
        index.blobs().put(9, &later, 1).unwrap();
        assert_eq!(index.blobs().expired(99).unwrap(), Vec::<u64>::new());
        assert_eq!(index.blobs().expired(300).unwrap(), [3, 5]);
        index.blobs().remove(3).unwrap();
        assert_eq!(index.blobs().expired(u64::MAX).unwrap(), [5, 9]);
        assert_eq!(index.facts().remove_expired(300).unwrap(), [3, 5]);
        assert_eq!(
            index.facts().remove_expired(300).unwrap(),
            Vec::<u64>::new()
        );
        assert!(index.facts().remove(9).unwrap());
        assert_eq!(
            index.facts().remove_expired(u64::MAX).unwrap(),
            Vec::<u64>::new()
        );
        assert_eq!(index.facts().all().unwrap().len(), 1, "7 never expires");

        // An index from before the lines: they are drawn at open.
        index.facts().put(11, &expiring(Some(50))).unwrap();
        index.blobs.expiry.clear().unwrap();
        index.facts.expiry.clear().unwrap();
        index.db.remove(EXPIRY_LINES_KEY).unwrap();
        drop(index);
        let index = Index::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(index.blobs().expired(u64::MAX).unwrap(), [5, 9]);
        assert_eq!(index.facts().remove_expired(60).unwrap(), [11]);

        for (id, cred) in [
            (300, CRED),
            (7, CRED),
            (300, OTHER),
            (7, CredentialId::Anonymous),
        ] {
            index.grants().put(id, cred, 1).unwrap();
        }
        assert_eq!(index.grants().artifacts().unwrap(), [7, 300]);
        assert_eq!(index.grants().get(7, OTHER).unwrap(), None);
        assert_eq!(index.grants().get(7, CRED).unwrap(), Some(1));
    }

    #[test]
    fn json_records_are_bounded_by_size_and_age_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(dir.path(), 1 << 20).unwrap();
        let json = index.json();
        let (m, m2) = (meta("\"one\""), meta("\"two2\""));
        let m_len = serde_json::to_vec(&m).unwrap().len() as u64;
        let m2_len = serde_json::to_vec(&m2).unwrap().len() as u64;
        for (i, key) in [b"a", b"b", b"c"].iter().enumerate() {
            json.put(*key, 100 + i as u64, &m, Some(&[0u8; 100]))
                .unwrap();
        }
        // Revalidating `a` makes it the most recent.
        json.put(b"a", 200, &m2, None).unwrap();
        let a = json.get(b"a").unwrap().unwrap();
        assert_eq!((a.body.len(), a.validated_at), (100, 200));
        assert_eq!(a.meta.headers["etag"], "\"two2\"");
        let per_record = 100 + 8 + m_len;
        assert!(json.bytes() >= 3 * per_record);
        let dropped = json.evict(2 * per_record + 1, 0).unwrap();
        assert_eq!(dropped, vec![b"b".to_vec()]);
        let dropped = json.evict(u64::MAX, 150).unwrap();
        assert_eq!(dropped, vec![b"c".to_vec()]);
        assert!(json.get(b"a").unwrap().is_some());
        drop(index);
        // Reopened, the byte count is recounted from disk.
        let index = Index::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(index.json().bytes(), 8 + m2_len + 100);
        assert_eq!(index.json().remove_prefix(b"a").unwrap(), 1);
        assert_eq!(index.json().bytes(), 0);
    }

    #[test]
    fn blob_records_keep_their_lru_line_and_aliases_go_both_ways() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(dir.path(), 1 << 20).unwrap();
        index.blobs().put(1, &record("x"), 10).unwrap();
        index.blobs().put(2, &record("y"), 20).unwrap();
        assert_eq!(index.blobs().least_recent().unwrap(), Some(1));
        index.blobs().touch(1, 30).unwrap();
        assert_eq!(index.blobs().least_recent().unwrap(), Some(2));
        assert_eq!(index.blobs().remove(2).unwrap(), Some(record("y")));
        assert_eq!(index.blobs().least_recent().unwrap(), Some(1));
        assert_eq!(index.blobs().get(1).unwrap(), Some(record("x")));
        index.json().alias_put("n:o/r", "i:5").unwrap();
        assert_eq!(
            index.json().alias_get("i:5").unwrap().as_deref(),
            Some("n:o/r")
        );
        assert_eq!(
            index.json().alias_get("n:o/r").unwrap().as_deref(),
            Some("i:5")
        );
    }
}
