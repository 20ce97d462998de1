//! The zip store: which artifact's zip is stored (lookup, expiry), how much
//! may be (quota, least recently used out first, a largest blob kept), and
//! the single fill per artifact that brings a zip from the blob storage
//! upstream redirects to.
//!
//! Laid out as: `fill` (the fill, its staged file, and what becomes of
//! it), `transfer` (the transfer from GHES's blob storage), `staging` (reading a stored or filling blob for a client),
//! `backend` (the trait where verified zips live: commit a staged file,
//! open by byte range, delete, scan) and `local` (its filesystem
//! implementation, with sidecars and repair). Every blocking call into the
//! backend runs on the blocking pool.
//!
//! A crash leaves no blob or a whole one: only a complete transfer whose
//! size (and digest, when upstream gives one) checks out is committed, and
//! only a committed one is recorded; startup clears the rest.

mod backend;
mod fill;
pub(crate) mod local;
mod relay;
pub mod shared;
mod staged;
mod staging;
#[cfg(test)]
mod test_host;
mod transfer;

use std::collections::{HashMap, VecDeque};
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::access::Access;
use crate::clock::{now_ms, now_secs};
use crate::error::FillError;
use crate::index::{BlobRecord, Index, IndexError, Opened};
use crate::metrics::{Live, Metrics};
use crate::outcome::Eviction;
use crate::upstream::BlobFetcher;

use backend::{Backend, StoredBlob};
pub(crate) use fill::{Fill, FillOutcome, FillState, FillView, Relocate};
pub(crate) use staging::{read_range, Source};

/// What [`BlobStore::housekeep`] dropped, by artifact.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Swept {
    /// Blobs past their `expires_at`.
    pub expired: Vec<u64>,
    /// Blobs least recently used, past the quota.
    pub evicted: Vec<u64>,
    /// Facts of artifacts past their `expires_at` (with their grants).
    pub facts: Vec<u64>,
    /// Grants of artifacts with no blob stored or being filled.
    pub grants: Vec<u64>,
    /// Staged fills nobody resumed within [`staged::STAGED_TTL`].
    pub staged: Vec<u64>,
}

impl Swept {
    pub fn is_empty(&self) -> bool {
        self == &Swept::default()
    }
}

/// How [`BlobStore::open`] found the files.
#[derive(Debug)]
pub enum Start {
    /// After a clean stop: the index was trusted, nothing was read.
    Trusted,
    /// Files, sidecars and records were brought into agreement.
    Reconciled(local::repair::Report),
}

/// What the store can serve for an artifact.
pub enum Available {
    Stored(BlobRecord),
    Filling(Arc<Fill>),
    /// The last fill failed: its redirected clients get the reason; a new
    /// download starts a new fill.
    Failed(Arc<FillError>),
}

/// Bounds of the store, from the settings.
#[derive(Debug, Clone, Copy)]
pub struct StoreLimits {
    /// Total bytes of stored blobs; least recently used out past it.
    pub quota: u64,
    /// Largest blob kept; larger ones are streamed to their clients only.
    pub max_blob: u64,
    /// How long a finished blob that is not kept stays servable: the
    /// lifetime of the signed URLs that point at it.
    pub linger: Duration,
}

pub struct BlobStore {
    /// The data dir: fills stage under its `tmp/`.
    dir: std::path::PathBuf,
    index: Index,
    backend: Arc<dyn Backend>,
    /// Grants end with their artifact's blob.
    access: Access,
    fetcher: BlobFetcher,
    quota: u64,
    max_blob: u64,
    linger: Duration,
    stored_bytes: AtomicU64,
    stored_blobs: AtomicU64,
    fills: Mutex<HashMap<u64, Arc<Fill>>>,
    /// Staged fills an earlier process left, until a fill resumes them.
    resumable: staged::Resumable,
    /// The last [`fill::RECENT_FILLS`] ended fills, newest last.
    recent: Mutex<VecDeque<FillView>>,
    metrics: Arc<Metrics>,
    /// The bucket replicas share (see [`shared`]), when configured.
    shared: Option<Arc<shared::SharedTier>>,
}

impl BlobStore {
    /// Opens the store under `data_dir`: keeps in `tmp/` only the staged
    /// fills a download may resume (see [`staged`]); unless the last
    /// process stopped cleanly, drops records whose file is gone, rebuilds
    /// records from sidecars and removes files that neither names (see
    /// [`local::repair`]). Blocking.
    pub fn open(
        data_dir: &Path,
        index: Index,
        fetcher: BlobFetcher,
        limits: StoreLimits,
        metrics: Arc<Metrics>,
    ) -> io::Result<(BlobStore, Start)> {
        let tmp = data_dir.join("tmp");
        crate::private::create_dir_all(&tmp)?;
        let resumable = staged::Resumable::scan(&tmp)?;
        crate::private::create_dir_all(&data_dir.join("blobs").join("sha256"))?;
        let store = BlobStore {
            dir: data_dir.to_owned(),
            backend: Arc::new(local::LocalFs::new(data_dir, index.clone())),
            access: Access::ending(&index),
            index,
            fetcher,
            quota: limits.quota,
            max_blob: limits.max_blob.min(limits.quota),
            linger: limits.linger,
            stored_bytes: AtomicU64::new(0),
            stored_blobs: AtomicU64::new(0),
            fills: Mutex::new(HashMap::new()),
            resumable,
            recent: Mutex::new(VecDeque::new()),
            metrics,
            shared: None,
        };
        let (bytes, blobs, start) = match store.index.opened() {
            // The last process stopped cleanly: its index agrees with the
            // files (see `index::clean`), and it left the totals.
            Opened::Clean(stop) => (stop.blob_bytes, stop.blobs, Start::Trusted),
            // Otherwise files a record or a sidecar names are kept (missing
            // records are rebuilt from sidecars: a lost index must not empty
            // the store).
            Opened::Unknown => {
                let report = store
                    .backend
                    .scan(&store.index, false)
                    .map_err(io::Error::other)?;
                if report.changed_anything() {
                    tracing::info!(?report, "blob store reconciled with its index");
                }
                (
                    report.stored_bytes,
                    report.stored_blobs,
                    Start::Reconciled(report),
                )
            }
        };
        store.stored_bytes.store(bytes, Ordering::Relaxed);
        store.stored_blobs.store(blobs, Ordering::Relaxed);
        Ok((store, start))
    }

    /// A process's last act once nothing runs any more: vouches for the
    /// store at the next start (which then skips the reconcile, see
    /// `index::clean`), unless a fill was cut — its file may be committed
    /// without a record, which only a reconcile finds. Returns whether it
    /// sealed.
    pub fn seal(&self) -> Result<bool, IndexError> {
        if self.live().fills_in_flight > 0 {
            return Ok(false);
        }
        self.index.seal(
            self.stored_bytes(),
            self.stored_blobs.load(Ordering::Relaxed),
        )?;
        Ok(true)
    }

    /// Publishes every blob kept from now on to `tier`, and reads from it
    /// on a local miss.
    pub fn share_with(&mut self, tier: shared::SharedTier) {
        self.shared = Some(Arc::new(tier));
    }

    /// After a verified blob was kept: uploads it to the shared store in
    /// the background. A failure is logged and counted, never seen by a
    /// client.
    pub(crate) fn publish(self: &Arc<Self>, artifact: u64, record: &BlobRecord) {
        let Some(tier) = self.shared.clone() else {
            return;
        };
        let (store, record) = (self.clone(), record.clone());
        tokio::spawn(async move {
            let published = match store.open_blob(&record).await {
                Ok(blob) => tier.publish(artifact, &record, blob).await,
                Err(e) => Err(e.into()),
            };
            if let Err(e) = published {
                tracing::warn!(artifact, error = %e, "blob not published to the shared store");
            }
        });
    }

    pub fn stored_bytes(&self) -> u64 {
        self.stored_bytes.load(Ordering::Relaxed)
    }

    /// The store's figures for `/metrics`, read at scrape time.
    pub fn live(&self) -> Live {
        let fills = self.lock();
        Live {
            store_bytes: self.stored_bytes(),
            store_blobs: self.stored_blobs.load(Ordering::Relaxed),
            fills_in_flight: fills.values().filter(|f| !f.state.borrow().ended()).count() as u64,
            fill_waiters: fills
                .values()
                .map(|f| f.readers.load(Ordering::Relaxed))
                .sum(),
        }
    }

    /// Fills under way (oldest first) and the last ended ones (newest
    /// first), for the status page.
    pub fn fill_views(&self) -> (Vec<FillView>, Vec<FillView>) {
        let mut running: Vec<FillView> = self
            .lock()
            .values()
            .filter_map(|f| {
                let state = f.state.borrow();
                (!state.ended()).then(|| f.view(&state, None))
            })
            .collect();
        running.sort_by_key(|f| (f.started, f.artifact));
        let recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        (running, recent.iter().rev().cloned().collect())
    }

    /// Every readable blob record.
    pub fn records(&self) -> Result<Vec<(u64, BlobRecord)>, IndexError> {
        Ok(self
            .index
            .blobs()
            .records()?
            .into_iter()
            .filter_map(|(id, r)| Some((id, r.ok()?)))
            .collect())
    }

    /// The stored blob (an expired one is dropped instead, on the blocking
    /// pool), or the fill under way.
    pub fn lookup(self: &Arc<Self>, artifact: u64) -> Option<Available> {
        if let Some(fill) = self.lock().get(&artifact) {
            // A fill that ended by keeping its blob stays in the map for a
            // moment after its index record is written: serve the store then.
            let kept = match &*fill.state.borrow() {
                FillState::Failed(e) => return Some(Available::Failed(e.clone())),
                FillState::Verified(_) => !fill.transient.load(Ordering::Relaxed),
                FillState::Running { .. } | FillState::Unkept { .. } => false,
            };
            if !kept {
                return Some(Available::Filling(fill.clone()));
            }
        }
        let record = match self.index.blobs().get(artifact) {
            Ok(Some(record)) => record,
            Ok(None) => return None,
            Err(e) => {
                tracing::warn!(error = %e, "blob record unreadable");
                return None;
            }
        };
        if record.expires_at.is_some_and(|t| t <= now_secs()) {
            let store = self.clone();
            tokio::task::spawn_blocking(move || store.remove_now(artifact, Eviction::Expired));
            return None;
        }
        Some(Available::Stored(record))
    }

    /// Opens a stored blob for reading, on the blocking pool: once open, an
    /// eviction cannot cut the answer short.
    pub(crate) async fn open_blob(&self, record: &BlobRecord) -> io::Result<Arc<dyn StoredBlob>> {
        let (backend, record) = (self.backend.clone(), record.clone());
        tokio::task::spawn_blocking(move || backend.open(&record))
            .await
            .map_err(io::Error::other)?
    }

    /// Whether any JSON of the artifact showed it expired (see
    /// [`Facts::is_expired`]).
    pub fn is_expired(&self, artifact: u64) -> bool {
        match self.index.facts().get(artifact) {
            Ok(Some(facts)) => facts.is_expired(now_secs()),
            Ok(None) => false,
            Err(e) => {
                tracing::warn!(error = %e, "artifact facts unreadable");
                false
            }
        }
    }

    /// Ends every grant of expired artifacts and drops their zips, in one
    /// trip to the blocking pool (files and sidecars are removed; a list
    /// page may name many), before the caller answers: no later download
    /// may be granted from what was.
    pub async fn expire(self: &Arc<Self>, artifacts: Vec<u64>) {
        if artifacts.is_empty() {
            return;
        }
        for &artifact in &artifacts {
            self.unshare(artifact);
        }
        let store = self.clone();
        let removed = tokio::task::spawn_blocking(move || {
            for artifact in artifacts {
                store.remove_now(artifact, Eviction::Expired);
            }
        })
        .await;
        if let Err(e) = removed {
            tracing::warn!(error = %e, "expired blobs not removed");
        }
    }

    /// Marks a stored blob used now (for LRU eviction). Called where bytes
    /// are served, not on every lookup: a download is a route lookup plus a
    /// blob request, and only one index write is needed for it.
    pub fn touch(&self, artifact: u64) {
        if let Err(e) = self.index.blobs().touch(artifact, now_ms()) {
            tracing::warn!(error = %e, "blob access time not recorded");
        }
    }

    /// [`BlobStore::remove_now`] on the blocking pool.
    pub async fn remove(self: &Arc<Self>, artifact: u64, reason: Eviction) -> bool {
        if reason == Eviction::Expired {
            self.unshare(artifact);
        }
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.remove_now(artifact, reason))
            .await
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "blob not removed");
                false
            })
    }

    /// Drops an artifact's blob (deleted, expired or evicted) and its
    /// grants; the content goes when no other artifact shares it. Returns
    /// whether a blob was stored. Blocking: on the blocking pool only.
    pub fn remove_now(&self, artifact: u64, reason: Eviction) -> bool {
        let removed = match self.index.blobs().remove(artifact) {
            Ok(removed) => removed,
            Err(e) => {
                tracing::warn!(error = %e, "blob record not removed");
                None
            }
        };
        if let Err(e) = self.access.end(artifact) {
            tracing::warn!(error = %e, "grants not removed");
        }
        let Some(record) = removed else {
            return false;
        };
        self.metrics.evicted(reason);
        let _ = self
            .stored_blobs
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some(v.saturating_sub(1))
            });
        let _ = self
            .stored_bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some(v.saturating_sub(record.size))
            });
        self.backend.delete(artifact, &record);
        true
    }

    /// Drops expired blobs, then least recently used ones past the quota,
    /// and index records that outlived their use; returns what went. Reads
    /// every blob record, fact and grant key: `cache gc` and the server's
    /// periodic task call it, off the async threads.
    pub fn housekeep(&self) -> Swept {
        let mut swept = Swept::default();
        self.sweep_expired(&mut swept);
        self.sweep_index(&mut swept);
        self.evict_over_quota(&mut swept);
        swept.staged = self.resumable.sweep(staged::STAGED_TTL);
        swept
    }

    /// Facts are written for every artifact any list names and grants for
    /// every download; without this both would grow for as long as the
    /// mirror runs. An expired artifact's facts (and its blob and grants)
    /// serve nothing: GitHub answers 410 for it. A grant only spares the
    /// renewal call for a stored or filling blob; without one, the
    /// download endpoint is called anyway. Either may be dropped at any
    /// moment: the cost is one API call, never a wrong answer.
    fn sweep_index(&self, swept: &mut Swept) {
        let now = now_secs();
        let expired = self.index.facts().remove_expired(now);
        match expired {
            Ok(ids) => {
                for &id in &ids {
                    if self.remove_now(id, Eviction::Expired) {
                        swept.expired.push(id);
                    }
                }
                swept.facts = ids;
            }
            Err(e) => tracing::warn!(error = %e, "expired facts not swept"),
        }
        let granted = match self.access.granted_artifacts() {
            Ok(ids) => ids,
            Err(e) => {
                tracing::warn!(error = %e, "grants not swept");
                return;
            }
        };
        for id in granted {
            let unused =
                matches!(self.index.blobs().get(id), Ok(None)) && !self.lock().contains_key(&id);
            if unused && self.access.end(id).is_ok() {
                swept.grants.push(id);
            }
        }
    }

    fn sweep_expired(&self, swept: &mut Swept) {
        match self.index.blobs().expired(now_secs()) {
            Ok(ids) => {
                for id in ids {
                    self.remove_now(id, Eviction::Expired);
                    swept.expired.push(id);
                }
            }
            Err(e) => tracing::warn!(error = %e, "expired blobs not swept"),
        }
    }

    /// Blocking: on the blocking pool only.
    pub(super) fn evict_over_quota(&self, swept: &mut Swept) {
        // Bounded: each round removes one record.
        for _ in 0..10_000 {
            if self.stored_bytes() <= self.quota {
                break;
            }
            match self.index.blobs().least_recent() {
                Ok(Some(id)) => {
                    tracing::info!(artifact = id, "blob evicted (quota)");
                    self.remove_now(id, Eviction::Quota);
                    swept.evicted.push(id);
                }
                _ => break,
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Fill>>> {
        self.fills.lock().unwrap_or_else(|p| p.into_inner())
    }
}
