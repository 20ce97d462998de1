//! The two tiers: moka in memory (bounded by bytes, always current) and
//! the index on disk (survives a restart; bounded by bytes and age, least
//! recently validated out first).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::clock::{millis, unix_ms};
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
        let oldest = unix_ms(SystemTime::now()).saturating_sub(millis(self.max_age));
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
        let oldest = unix_ms(SystemTime::now()).saturating_sub(millis(self.max_age));
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
