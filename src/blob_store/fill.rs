//! One fill per artifact: the `Fill` every client of the artifact reads
//! as bytes arrive, its source (GHES through [`super::transfer`], or the
//! shared bucket), the staged file both write into, and what becomes of
//! it: checked (size, digest) and committed to the backend, or streamed
//! and not kept.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::Uri;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;

use crate::clock::{now_ms, now_secs};
use crate::credential::hex;
use crate::error::FillError;
use crate::index::{BlobRecord, Facts};

use super::backend::Backend;
use super::relay::Origin;
use super::staged;
use super::{BlobStore, Swept};

/// Where a fill stands; watched by every client reading it.
#[derive(Debug, Clone)]
pub enum FillState {
    /// Bytes arriving: `written` of them are in the staged file.
    Running {
        written: u64,
        /// Known once the blob store answered (or from cached JSON).
        total: Option<u64>,
        name: Option<String>,
    },
    /// Whole and checked (size, digest): every byte is in the staged file
    /// or, once committed, in the backend.
    Verified(BlobRecord),
    /// The disk could not hold it: every reader gets its bytes straight
    /// from upstream (see [`super::relay`]); nothing is kept.
    Unkept {
        size: u64,
        name: Option<String>,
    },
    Failed(Arc<FillError>),
}

impl FillState {
    pub fn ended(&self) -> bool {
        !matches!(self, FillState::Running { .. })
    }

    /// Whether a client can be told the zip's size (or the fill's end).
    pub fn size_known(&self) -> bool {
        !matches!(self, FillState::Running { total: None, .. })
    }
}

/// A fill as the status page shows it: under way, or one of the last ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FillView {
    pub artifact: u64,
    pub name: Option<String>,
    /// As [`Facts::repo`] keys it (`n:owner/name` or `i:id`).
    pub repo: Option<String>,
    pub written: u64,
    pub total: Option<u64>,
    /// Unix seconds.
    pub started: u64,
    /// How long it ran (so far, while under way).
    pub elapsed: Duration,
    /// `None` while under way.
    pub outcome: Option<FillOutcome>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FillOutcome {
    Stored,
    /// Over `max_blob_bytes`: streamed to its clients, not kept.
    NotKept,
    /// The disk was full: relayed from upstream to its clients, not kept.
    DiskFull,
    Failed,
}

/// Ended fills the status page lists.
pub(super) const RECENT_FILLS: usize = 10;

pub struct Fill {
    pub(super) artifact: u64,
    pub(super) repo: Option<String>,
    pub(super) started: Instant,
    pub(super) started_unix: u64,
    pub(super) tmp: PathBuf,
    /// Where the finished blob lands: a reader that finds the staged file
    /// renamed away opens it there.
    pub(super) backend: Arc<dyn Backend>,
    /// Where its bytes come from upstream; readers relay from it when the
    /// disk is full. `None` for a fill from the shared store, which fails
    /// instead (the next download asks GHES).
    pub(super) origin: Option<Arc<Origin>>,
    pub(super) state: watch::Receiver<FillState>,
    /// Clients streaming from this fill (a metric).
    pub(super) readers: AtomicU64,
    /// Set when the finished blob is over `max_blob_bytes`: it was streamed
    /// to its clients but is not kept; the file goes with the last of them.
    pub(super) transient: AtomicBool,
}

impl Fill {
    pub fn state(&self) -> watch::Receiver<FillState> {
        self.state.clone()
    }

    pub(super) fn view(&self, state: &FillState, outcome: Option<FillOutcome>) -> FillView {
        let (written, total, name) = match state {
            FillState::Running {
                written,
                total,
                name,
            } => (*written, *total, name.clone()),
            FillState::Verified(r) => (r.size, Some(r.size), Some(r.name.clone())),
            FillState::Unkept { size, name } => (0, Some(*size), name.clone()),
            FillState::Failed(_) => (0, None, None),
        };
        FillView {
            artifact: self.artifact,
            name,
            repo: self.repo.clone(),
            written,
            total,
            started: self.started_unix,
            elapsed: self.started.elapsed(),
            outcome,
        }
    }
}

impl Drop for Fill {
    fn drop(&mut self) {
        if self.transient.load(Ordering::Relaxed) {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Where a fill's bytes come from.
pub(crate) enum FillSource {
    /// The blob storage GHES redirected to.
    Upstream(Arc<Origin>),
    /// The shared store, which another replica filled from GHES.
    Shared(Arc<super::shared::SharedTier>, super::shared::SharedRecord),
}

/// Asks the download endpoint again for a fresh `Location` when the signed
/// one expired mid-fill (with the credential that started it, in memory).
pub type Relocate =
    Box<dyn Fn() -> Pin<Box<dyn Future<Output = Option<Uri>> + Send>> + Send + Sync>;

impl BlobStore {
    /// Starts the fill of `artifact` from `location`, or joins the one under
    /// way. Returns the fill and whether it was joined.
    pub fn fill(
        self: &Arc<Self>,
        artifact: u64,
        location: Uri,
        facts: Facts,
        relocate: Relocate,
    ) -> (Arc<Fill>, bool) {
        let origin = Origin::new(
            location,
            relocate,
            self.fetcher.clone(),
            self.metrics.clone(),
        );
        self.fill_from(artifact, facts, FillSource::Upstream(Arc::new(origin)))
    }

    /// [`BlobStore::fill`] from either origin.
    pub(super) fn fill_from(
        self: &Arc<Self>,
        artifact: u64,
        facts: Facts,
        source: FillSource,
    ) -> (Arc<Fill>, bool) {
        let mut fills = self.lock();
        if let Some(fill) = fills.get(&artifact) {
            // A failed fill lingers so that the clients it redirected learn
            // why; a new download starts afresh rather than joining it.
            if !matches!(*fill.state.borrow(), FillState::Failed(_)) {
                return (fill.clone(), true);
            }
        }
        // A staged file an earlier process left is resumed unless what is
        // known of the artifact now contradicts its record.
        let (resume, stale) = match self.resumable.take(artifact) {
            Some(s) if s.record.fits(&facts) => (Some(s), None),
            other => (None, other),
        };
        if let Some(stale) = stale {
            tokio::task::spawn_blocking(move || staged::remove(&stale.part));
        }
        let tmp = match &resume {
            Some(s) => s.part.clone(),
            None => {
                let mut nonce = [0u8; 8];
                let _ = getrandom::fill(&mut nonce);
                self.dir
                    .join("tmp")
                    .join(format!("{artifact}-{}.part", hex(&nonce)))
            }
        };
        let (tx, rx) = watch::channel(FillState::Running {
            written: 0,
            total: facts.size,
            name: facts.name.clone(),
        });
        let fill = Arc::new(Fill {
            artifact,
            repo: facts.repo.clone(),
            started: Instant::now(),
            started_unix: now_secs(),
            tmp: tmp.clone(),
            backend: self.backend.clone(),
            origin: match &source {
                FillSource::Upstream(origin) => Some(origin.clone()),
                FillSource::Shared(..) => None,
            },
            state: rx,
            readers: AtomicU64::new(0),
            transient: AtomicBool::new(false),
        });
        fills.insert(artifact, fill.clone());
        drop(fills);
        let store = self.clone();
        let detached = fill.clone();
        tokio::spawn(async move {
            let publish = matches!(source, FillSource::Upstream(_));
            let outcome = match source {
                FillSource::Upstream(origin) => {
                    store
                        .transfer(artifact, &tmp, &origin, &facts, &tx, resume)
                        .await
                }
                FillSource::Shared(tier, record) => tier.transfer(&tmp, &record, &tx).await,
            };
            // The transfer ended in this process: nothing to resume after a
            // restart (a crash before the commit loses the bytes, never
            // leaves a blob).
            let _ = tokio::fs::remove_file(staged::record_path(&tmp)).await;
            let outcome = match outcome {
                Ok(record) if record.size > store.max_blob => {
                    tracing::info!(
                        artifact,
                        size = record.size,
                        max = store.max_blob,
                        "blob over max_blob_bytes: streamed, not stored"
                    );
                    detached.transient.store(true, Ordering::Relaxed);
                    store.metrics.not_kept();
                    Ok(record)
                }
                Ok(record) => {
                    let kept = store.keep(artifact, &tmp, record).await;
                    if let (Ok(record), true) = (&kept, publish) {
                        store.publish(artifact, record);
                    }
                    kept
                }
                Err(e) => Err(e),
            };
            // A full disk (ENOSPC, a disk quota): its clients still get the
            // zip, relayed from upstream, once the size is known (a fill
            // from the shared store has no upstream to relay: it fails).
            let unkept = match (&outcome, &*tx.borrow()) {
                (
                    Err(e),
                    FillState::Running {
                        total: Some(size),
                        name,
                        ..
                    },
                ) if e.is_no_space() && publish => Some((*size, name.clone())),
                _ => None,
            };
            if let (Some((size, _)), Err(e)) = (&unkept, &outcome) {
                tracing::warn!(
                    artifact,
                    size,
                    error = %e,
                    "disk full: zip relayed from upstream to its clients, not kept"
                );
                store.metrics.not_kept();
            }
            let outcome = outcome.map_err(Arc::new);
            let transient = detached.transient.load(Ordering::Relaxed);
            let ended = match &outcome {
                Ok(_) if transient => FillOutcome::NotKept,
                Ok(_) => FillOutcome::Stored,
                Err(_) if unkept.is_some() => FillOutcome::DiskFull,
                Err(_) => FillOutcome::Failed,
            };
            let failed = outcome.is_err();
            let view = detached.view(&tx.borrow(), Some(ended));
            let me = Arc::downgrade(&detached);
            drop(detached);
            // JSON that showed the artifact expired while it filled found
            // no blob to drop yet: the one just kept must not outlive it.
            if outcome.is_ok() && store.is_expired(artifact) {
                store.expire(vec![artifact]).await;
            }
            if let Err(e) = &outcome {
                if unkept.is_none() {
                    tracing::warn!(artifact, error = %e, "fill failed; nothing stored");
                }
                let _ = tokio::fs::remove_file(&tmp).await;
            }
            {
                let mut recent = store.recent.lock().unwrap_or_else(|p| p.into_inner());
                if recent.len() == RECENT_FILLS {
                    recent.pop_front();
                }
                recent.push_back(view);
            }
            tx.send_replace(match (outcome, unkept) {
                (Ok(record), _) => FillState::Verified(record),
                (Err(_), Some((size, name))) => FillState::Unkept { size, name },
                (Err(e), None) => FillState::Failed(e),
            });
            if transient || failed {
                // Clients redirected to it arrive within their signed URL's
                // lifetime: the finished, unkept file stays servable for that
                // long (as a finished fill), then goes with the last reader;
                // a failed fill stays as long so they get its reason (502)
                // rather than a bare 404.
                tokio::time::sleep(store.linger).await;
            }
            let mut fills = store.lock();
            // A later download may have replaced a failed fill: leave it.
            if fills
                .get(&artifact)
                .is_some_and(|f| std::ptr::eq(Arc::as_ptr(f), me.as_ptr()))
            {
                fills.remove(&artifact);
            }
        });
        (fill, false)
    }

    /// Commits a checked transfer to the backend, records it and applies
    /// the quota, all on the blocking pool.
    async fn keep(
        self: &Arc<Self>,
        artifact: u64,
        tmp: &Path,
        record: BlobRecord,
    ) -> Result<BlobRecord, FillError> {
        let (store, tmp) = (self.clone(), tmp.to_owned());
        tokio::task::spawn_blocking(move || store.keep_now(artifact, &tmp, record))
            .await
            .map_err(|_| FillError::Stopped)?
    }

    fn keep_now(
        &self,
        artifact: u64,
        tmp: &Path,
        record: BlobRecord,
    ) -> Result<BlobRecord, FillError> {
        self.backend.commit(tmp, artifact, &record)?;
        self.index
            .blobs()
            .put(artifact, &record, now_ms())
            .map_err(|e| FillError::Index(e.to_string()))?;
        self.stored_bytes.fetch_add(record.size, Ordering::Relaxed);
        self.stored_blobs.fetch_add(1, Ordering::Relaxed);
        // Expired blobs are left to lookups and housekeeping: finding them
        // reads every record.
        self.evict_over_quota(&mut Swept::default());
        Ok(record)
    }
}

/// Appends a chunk of the zip to its staged file, hashes it and only then
/// announces it: readers open the file themselves, so the bytes must be in
/// it first. Shared by both sources of a fill.
pub(super) async fn append(
    file: &mut tokio::fs::File,
    hasher: &mut Sha256,
    written: &mut u64,
    data: &[u8],
    tmp: &Path,
    tx: &watch::Sender<FillState>,
) -> Result<(), FillError> {
    file.write_all(data)
        .await
        .map_err(FillError::io("write", tmp))?;
    file.flush().await.map_err(FillError::io("write", tmp))?;
    hasher.update(data);
    *written += data.len() as u64;
    let now = *written;
    tx.send_modify(|s| {
        if let FillState::Running { written: w, .. } = s {
            *w = now;
        }
    });
    Ok(())
}

/// The whole zip is staged: makes it durable and checks its digest against
/// `expected` (when one is known) before anything may keep it. Returns the
/// digest (hex).
pub(super) async fn seal(
    file: &tokio::fs::File,
    hasher: Sha256,
    tmp: &Path,
    expected: Option<&str>,
) -> Result<String, FillError> {
    file.sync_all().await.map_err(FillError::io("sync", tmp))?;
    let sha256 = hex(&hasher.finalize());
    match expected {
        Some(expected) if expected != sha256 => Err(FillError::DigestMismatch {
            expected: expected.to_owned(),
            got: sha256,
        }),
        _ => Ok(sha256),
    }
}

pub(super) async fn create(tmp: &Path) -> Result<tokio::fs::File, FillError> {
    crate::private::create_file_async(tmp)
        .await
        .map_err(FillError::io("create", tmp))
}

pub(super) fn check_size(expected: Option<u64>, got: u64) -> Result<(), FillError> {
    match expected {
        Some(expected) if expected != got => Err(FillError::SizeMismatch { expected, got }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_size_is_checked_only_against_a_known_one() {
        assert!(check_size(None, 7).is_ok());
        assert!(check_size(Some(7), 7).is_ok());
        let err = check_size(Some(7), 8).expect_err("another size");
        assert!(
            matches!(
                err,
                FillError::SizeMismatch {
                    expected: 7,
                    got: 8
                }
            ),
            "{err}"
        );
    }

    /// The staged zip is kept only if its digest is the one expected (when
    /// one is known); the digest returned is the content's.
    #[tokio::test]
    async fn sealing_returns_the_contents_digest_and_refuses_another() {
        let dir = tempfile::tempdir().expect("a temporary dir");
        let tmp = dir.path().join("1.part");
        let file = create(&tmp).await.expect("created");
        let hasher = || {
            let mut h = Sha256::new();
            h.update(b"zip");
            h
        };
        let digest = hex(&Sha256::digest(b"zip"));
        assert_eq!(
            seal(&file, hasher(), &tmp, None).await.expect("sealed"),
            digest
        );
        let same = seal(&file, hasher(), &tmp, Some(&digest)).await;
        assert_eq!(same.expect("sealed"), digest);
        let err = seal(&file, hasher(), &tmp, Some("00"))
            .await
            .expect_err("another digest");
        assert!(matches!(err, FillError::DigestMismatch { .. }), "{err}");
    }
}
