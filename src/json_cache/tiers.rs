//! The two tiers: moka in memory (bounded by bytes, always current) and
//! the index on disk (survives a restart; bounded by bytes and age, least
//! recently validated out first).

use std::sync::Arc;
use std::time::Duration;

use crate::clock::millis;
use crate::index::{Index, JsonMeta};

use super::entry::{Entry, PERSIST_EVERY};
use super::key::Key;

/// The two tiers.
pub(super) struct Store {
    pub(super) hot: moka::future::Cache<Key, Arc<Entry>>,
    pub(super) index: Index,
    pub(super) disk_bytes: u64,
    pub(super) max_age: Duration,
    pub(super) max_fresh: Duration,
}

/// What [`Store::put`] writes to disk besides the memory tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Persist {
    /// A new body: meta and body.
    Body,
    /// Revalidated: the meta (validation time, headers, policy).
    Meta,
    /// Revalidated, nothing that matters changed and the disk is recent
    /// enough: memory only.
    No,
}

impl Store {
    pub(super) async fn get(&self, key: &Key) -> Option<Arc<Entry>> {
        let oldest = crate::clock::now_ms().saturating_sub(millis(self.max_age));
        if let Some(entry) = self.hot.get(key).await {
            if entry.validated_at >= oldest {
                return Some(entry);
            }
        }
        // Boxed: the disk path's futures (moka insert, invalidate) would
        // otherwise enlarge every hit's future.
        Box::pin(self.load(key, oldest)).await
    }

    /// The disk tier's record, brought into memory.
    pub(super) async fn load(&self, key: &Key, oldest: u64) -> Option<Arc<Entry>> {
        let record = match self.index.json().get(&key.0) {
            Ok(Some(record)) if record.validated_at >= oldest => record,
            Ok(_) => return None,
            Err(e) => {
                tracing::warn!(error = %e, "index read failed; treating as a miss");
                return None;
            }
        };
        let meta = record.meta;
        // Freshness is recomputed from the stored policy and validation time
        // (so a changed `max_fresh` applies at once).
        let entry = Arc::new(Entry::new(
            meta.headers,
            record.body,
            meta.policy,
            record.validated_at,
            record.validated_at,
            self.max_fresh,
        ));
        self.hot.insert(key.clone(), entry.clone()).await;
        Some(entry)
    }

    pub(super) async fn put(&self, key: &Key, entry: Arc<Entry>, persist: Persist) {
        if persist != Persist::No {
            let meta = JsonMeta {
                headers: entry.stored_headers(),
                policy: entry.policy.clone(),
            };
            let body = (persist == Persist::Body).then_some(entry.body.as_ref());
            let stored = self
                .index
                .json()
                .put(&key.0, entry.validated_at, &meta, body);
            if let Err(e) = stored {
                tracing::warn!(error = %e, "cached JSON not persisted");
            }
        }
        self.hot.insert(key.clone(), entry).await;
        if persist == Persist::No {
            return; // Nothing added to disk: nothing to evict.
        }
        let oldest = crate::clock::now_ms().saturating_sub(millis(self.max_age));
        match self.index.json().evict(self.disk_bytes, oldest) {
            Ok(dropped) => {
                for key in dropped {
                    self.hot.invalidate(&Key(key)).await;
                }
            }
            Err(e) => tracing::warn!(error = %e, "cached JSON eviction failed"),
        }
    }

    /// How long a revalidated entry's disk record may lag behind memory:
    /// [`PERSIST_EVERY`], or less when records age out sooner.
    pub(super) fn persist_every(&self) -> u64 {
        millis(PERSIST_EVERY.min(self.max_age / 2))
    }

    pub(super) async fn remove(&self, key: &Key) {
        self.hot.invalidate(key).await;
        if let Err(e) = self.index.json().remove(&key.0) {
            tracing::warn!(error = %e, "cached JSON not removed from the index");
        }
    }

    pub(super) fn remove_prefix(&self, prefix: Vec<u8>) {
        let matching = prefix.clone();
        if let Err(e) = self
            .hot
            .invalidate_entries_if(move |k, _| k.0.starts_with(&matching))
        {
            tracing::warn!(error = %e, "memory tier not purged");
        }
        if let Err(e) = self.index.json().remove_prefix(&prefix) {
            tracing::warn!(error = %e, "cached JSON not purged from the index");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_cache_semantics::CachePolicy;

    const HOUR_MS: u64 = 3_600_000;

    fn store(dir: &std::path::Path, disk_bytes: u64, max_age: Duration) -> Store {
        Store {
            hot: moka::future::Cache::new(100),
            index: Index::open(&dir.join("index"), 1 << 20).unwrap(),
            disk_bytes,
            max_age,
            max_fresh: Duration::from_secs(60),
        }
    }

    fn entry(body_len: usize, validated_at: u64) -> Arc<Entry> {
        let request = http::Request::get("/").body(()).unwrap();
        let response = http::Response::builder()
            .header("cache-control", "private, max-age=60")
            .body(())
            .unwrap();
        Arc::new(Entry::new(
            http::HeaderMap::new(),
            Bytes::from(vec![b'x'; body_len]),
            CachePolicy::new(&request, &response),
            validated_at,
            validated_at,
            Duration::from_secs(60),
        ))
    }

    fn key(n: u8) -> Key {
        Key(vec![b'k', n])
    }

    #[tokio::test]
    async fn new_bodies_on_disk_stay_within_the_disk_bound() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path(), 3_000, Duration::from_secs(86_400));
        let now = crate::clock::now_ms();
        for n in 0..10 {
            store
                .put(&key(n), entry(1_000, now + u64::from(n)), Persist::Body)
                .await;
        }
        assert!(store.index.json().bytes() <= 3_000);
        // The least recently validated went, from both tiers.
        assert!(store.index.json().get(&key(0).0).unwrap().is_none());
        assert!(store.hot.get(&key(0)).await.is_none());
        assert!(store.index.json().get(&key(9).0).unwrap().is_some());
    }

    #[tokio::test]
    async fn a_disk_record_validated_before_the_oldest_allowed_is_not_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path(), 1 << 20, Duration::from_secs(86_400));
        let now = crate::clock::now_ms();
        store
            .put(&key(1), entry(10, now - 2 * HOUR_MS), Persist::Body)
            .await;
        assert!(store.load(&key(1), now - HOUR_MS).await.is_none());
        assert!(store.load(&key(1), now - 3 * HOUR_MS).await.is_some());
    }

    #[test]
    fn the_disk_lags_memory_by_at_most_half_the_record_age_limit() {
        let dir = tempfile::tempdir().unwrap();
        let long = store(dir.path(), 1, Duration::from_secs(86_400));
        assert_eq!(long.persist_every(), millis(PERSIST_EVERY));
        drop(long);
        let short = store(dir.path(), 1, Duration::from_secs(20));
        assert_eq!(short.persist_every(), 10_000);
    }
}
