//! The zip store: content-addressed files under `blobs/sha256/`, their index
//! records, and the single fill per artifact that brings a zip from the
//! blob storage upstream redirects to.
//!
//! A fill runs detached from the client that started it and writes to
//! `tmp/`; every client of that artifact reads the growing file as bytes
//! arrive. Only a complete transfer whose size (and digest, when upstream
//! gives one) checks out is fsynced, renamed into `blobs/` and recorded:
//! a crash leaves no blob or a whole one, and startup clears the rest.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::io::{self, SeekFrom};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header;
use http::{StatusCode, Uri};
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncSeekExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch};

use crate::access::Access;
use crate::body::BoxError;
use crate::clock::{now_ms, now_secs};
use crate::credential::hex;
pub use crate::error::FillError;
pub use crate::index::{BlobRecord, Facts};
use crate::index::{Index, IndexError};
use crate::metrics::{Eviction, Live, Metrics};
use crate::upstream::BlobFetcher;

/// Transfers attempted per fill (the first and the resumes).
const ATTEMPTS: u32 = 5;
/// Bytes per frame sent to clients.
const CHUNK: usize = 256 * 1024;

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
}

impl Swept {
    pub fn is_empty(&self) -> bool {
        self == &Swept::default()
    }
}

/// Where a fill stands; watched by every client reading it.
#[derive(Debug, Clone, Default)]
pub struct FillState {
    pub written: u64,
    /// Known once the blob store answered (or from cached JSON).
    pub total: Option<u64>,
    pub name: Option<String>,
    /// `Some` when the fill ended.
    pub outcome: Option<Result<BlobRecord, Arc<FillError>>>,
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
    Failed,
}

/// Ended fills the status page lists.
const RECENT_FILLS: usize = 10;

pub struct Fill {
    artifact: u64,
    repo: Option<String>,
    started: Instant,
    started_unix: u64,
    tmp: PathBuf,
    /// `blobs/sha256`, where the finished file lands.
    stored_dir: PathBuf,
    state: watch::Receiver<FillState>,
    /// Clients streaming from this fill (a metric).
    readers: AtomicU64,
    /// Set when the finished blob is over `max_blob_bytes`: it was streamed
    /// to its clients but is not kept; the file goes with the last of them.
    transient: AtomicBool,
}

impl Fill {
    pub fn state(&self) -> watch::Receiver<FillState> {
        self.state.clone()
    }

    fn view(&self, state: &FillState, outcome: Option<FillOutcome>) -> FillView {
        FillView {
            artifact: self.artifact,
            name: state.name.clone(),
            repo: self.repo.clone(),
            written: state.written,
            total: state.total,
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

/// Counts a client in [`Fill::readers`] for as long as it streams.
struct Reading<'a>(&'a Fill);

impl<'a> Reading<'a> {
    fn new(fill: &'a Fill) -> Self {
        fill.readers.fetch_add(1, Ordering::Relaxed);
        Reading(fill)
    }
}

impl Drop for Reading<'_> {
    fn drop(&mut self) {
        self.0.readers.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Asks the download endpoint again for a fresh `Location` when the signed
/// one expired mid-fill (with the credential that started it, in memory).
pub type Relocate =
    Box<dyn Fn() -> Pin<Box<dyn Future<Output = Option<Uri>> + Send>> + Send + Sync>;

/// What the store can serve for an artifact.
pub enum Available {
    Stored(BlobRecord, PathBuf),
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
    dir: PathBuf,
    index: Index,
    /// Grants end with their artifact's blob.
    access: Access,
    fetcher: BlobFetcher,
    quota: u64,
    max_blob: u64,
    linger: Duration,
    stored_bytes: AtomicU64,
    stored_blobs: AtomicU64,
    fills: Mutex<HashMap<u64, Arc<Fill>>>,
    /// The last [`RECENT_FILLS`] ended fills, newest last.
    recent: Mutex<VecDeque<FillView>>,
    metrics: Arc<Metrics>,
}

impl BlobStore {
    /// Opens the store under `data_dir`: empties `tmp/`, drops records
    /// whose file is gone, rebuilds records from sidecars and removes files
    /// that neither names (see [`crate::repair`]).
    pub fn open(
        data_dir: &Path,
        index: Index,
        fetcher: BlobFetcher,
        limits: StoreLimits,
        metrics: Arc<Metrics>,
    ) -> io::Result<BlobStore> {
        let tmp = data_dir.join("tmp");
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp)?;
        }
        crate::private::create_dir_all(&tmp)?;
        crate::private::create_dir_all(&data_dir.join("blobs").join("sha256"))?;
        let store = BlobStore {
            dir: data_dir.to_owned(),
            access: Access::ending(&index),
            index,
            fetcher,
            quota: limits.quota,
            max_blob: limits.max_blob.min(limits.quota),
            linger: limits.linger,
            stored_bytes: AtomicU64::new(0),
            stored_blobs: AtomicU64::new(0),
            fills: Mutex::new(HashMap::new()),
            recent: Mutex::new(VecDeque::new()),
            metrics,
        };
        // Files a record or a sidecar names are kept (missing records are
        // rebuilt from sidecars: a lost index must not empty the store).
        let report =
            crate::repair::reconcile(data_dir, &store.index, false).map_err(io::Error::other)?;
        if report.changed_anything() {
            tracing::info!(?report, "blob store reconciled with its index");
        }
        store
            .stored_bytes
            .store(report.stored_bytes, Ordering::Relaxed);
        store
            .stored_blobs
            .store(report.stored_blobs, Ordering::Relaxed);
        Ok(store)
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
            fills_in_flight: fills
                .values()
                .filter(|f| f.state.borrow().outcome.is_none())
                .count() as u64,
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
                state.outcome.is_none().then(|| f.view(&state, None))
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

    fn path_of(&self, sha256: &str) -> PathBuf {
        let shard = sha256.get(..2).unwrap_or("00");
        self.dir
            .join("blobs")
            .join("sha256")
            .join(shard)
            .join(sha256)
    }

    /// The stored blob (an expired one is dropped instead), or the fill
    /// under way.
    pub fn lookup(&self, artifact: u64) -> Option<Available> {
        if let Some(fill) = self.lock().get(&artifact) {
            // A fill that ended by keeping its blob stays in the map for a
            // moment after its index record is written: serve the store then.
            let kept = match &fill.state.borrow().outcome {
                Some(Err(e)) => return Some(Available::Failed(e.clone())),
                Some(Ok(_)) => !fill.transient.load(Ordering::Relaxed),
                None => false,
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
            self.remove(artifact, Eviction::Expired);
            return None;
        }
        let path = self.path_of(&record.sha256);
        Some(Available::Stored(record, path))
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
        let store = self.clone();
        let removed = tokio::task::spawn_blocking(move || {
            for artifact in artifacts {
                store.remove(artifact, Eviction::Expired);
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

    /// Drops an artifact's blob (deleted, expired or evicted); the file goes
    /// when no other artifact shares its content. Returns whether a blob
    /// was stored.
    pub fn remove(&self, artifact: u64, reason: Eviction) -> bool {
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
        let path = self.path_of(&record.sha256);
        let shared = self.shared(&path, artifact, &record.sha256);
        // The sidecar follows the record, so a rebuild cannot bring it back.
        let sidecar = if shared {
            crate::sidecar::forget(&path, &self.dir.join("tmp"), artifact)
        } else {
            crate::sidecar::remove(&path)
        };
        if let Err(e) = sidecar {
            tracing::warn!(error = %e, "blob sidecar not updated");
        }
        if !shared {
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!(error = %e, "blob file not removed");
            }
        }
        true
    }

    /// Whether another artifact's record still names the file `path` (of
    /// content `sha256`), which `artifact` no longer does. The sidecar names
    /// the file's artifacts, so only those records are read; without a
    /// readable sidecar naming `artifact`, every record is (O(n)).
    fn shared(&self, path: &Path, artifact: u64, sha256: &str) -> bool {
        let names_same = |id: u64| match self.index.blobs().get(id) {
            Ok(Some(r)) => r.sha256 == sha256,
            Ok(None) => false,
            Err(_) => true,
        };
        match crate::sidecar::read(path) {
            Ok(Some(sidecar)) if sidecar.artifacts.contains_key(&artifact) => sidecar
                .artifacts
                .keys()
                .filter(|id| **id != artifact)
                .any(|id| names_same(*id)),
            _ => self
                .records()
                .map(|all| all.iter().any(|(_, r)| r.sha256 == sha256))
                .unwrap_or(true),
        }
    }

    /// Starts the fill of `artifact` from `location`, or joins the one under
    /// way. Returns the fill and whether it was joined.
    pub fn fill(
        self: &Arc<Self>,
        artifact: u64,
        location: Uri,
        facts: Facts,
        relocate: Relocate,
    ) -> (Arc<Fill>, bool) {
        let mut fills = self.lock();
        if let Some(fill) = fills.get(&artifact) {
            // A failed fill lingers so that the clients it redirected learn
            // why; a new download starts afresh rather than joining it.
            if !matches!(fill.state.borrow().outcome, Some(Err(_))) {
                return (fill.clone(), true);
            }
        }
        let mut nonce = [0u8; 8];
        let _ = getrandom::fill(&mut nonce);
        let tmp = self
            .dir
            .join("tmp")
            .join(format!("{artifact}-{}.part", hex(&nonce)));
        let (tx, rx) = watch::channel(FillState {
            total: facts.size,
            name: facts.name.clone(),
            ..FillState::default()
        });
        let fill = Arc::new(Fill {
            artifact,
            repo: facts.repo.clone(),
            started: Instant::now(),
            started_unix: now_secs(),
            tmp: tmp.clone(),
            stored_dir: self.dir.join("blobs").join("sha256"),
            state: rx,
            readers: AtomicU64::new(0),
            transient: AtomicBool::new(false),
        });
        fills.insert(artifact, fill.clone());
        drop(fills);
        let store = self.clone();
        let detached = fill.clone();
        tokio::spawn(async move {
            let outcome = store
                .transfer(artifact, &tmp, location, &facts, &relocate, &tx)
                .await;
            let outcome = match outcome {
                Ok(record) if record.size > store.max_blob => {
                    tracing::info!(
                        artifact,
                        size = record.size,
                        max = store.max_blob,
                        "blob over max_blob_bytes: streamed, not stored"
                    );
                    detached.transient.store(true, Ordering::Relaxed);
                    Ok(record)
                }
                Ok(record) => store.keep(artifact, &tmp, record).await,
                Err(e) => Err(e),
            }
            .map_err(Arc::new);
            let transient = detached.transient.load(Ordering::Relaxed);
            let ended = match &outcome {
                Ok(_) if transient => FillOutcome::NotKept,
                Ok(_) => FillOutcome::Stored,
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
                tracing::warn!(artifact, error = %e, "fill failed; nothing stored");
                let _ = tokio::fs::remove_file(&tmp).await;
            }
            {
                let mut recent = store.recent.lock().unwrap_or_else(|p| p.into_inner());
                if recent.len() == RECENT_FILLS {
                    recent.pop_front();
                }
                recent.push_back(view);
            }
            tx.send_modify(|s| s.outcome = Some(outcome));
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

    /// Brings the whole zip into `tmp`, resuming with `Range` after a cut.
    async fn transfer(
        &self,
        artifact: u64,
        tmp: &Path,
        mut location: Uri,
        facts: &Facts,
        relocate: &Relocate,
        tx: &watch::Sender<FillState>,
    ) -> Result<BlobRecord, FillError> {
        let mut file = crate::private::create_file_async(tmp)
            .await
            .map_err(FillError::io("create", tmp))?;
        let mut hasher = Sha256::new();
        let mut written = 0u64;
        let mut total = facts.size;
        let mut name = facts.name.clone();
        let mut last_error = FillError::NoAnswer;
        // After a restart from byte 0 (a store that ignored `Range`): how
        // many bytes the earlier answers had written, and their digest.
        // Clients may already hold those bytes, so the new answer must
        // repeat them exactly (checked once it reaches that length).
        let mut replay: Option<(u64, Vec<u8>)> = None;
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt))).await;
            }
            let from = (written > 0).then_some(written);
            let response = match self.fetcher.get(&location, from).await {
                Ok(r) => r,
                Err(e) => {
                    last_error = FillError::Unreachable(e);
                    continue;
                }
            };
            match response.status() {
                StatusCode::OK => {
                    if written > 0 {
                        // The store ignored the range: start over, writing
                        // over the bytes in place rather than truncating, so
                        // clients reading them never find the file short.
                        // An earlier restart's check covers more bytes.
                        if replay.is_none() {
                            replay = Some((written, hasher.clone().finalize().to_vec()));
                        }
                        file.seek(SeekFrom::Start(0))
                            .await
                            .map_err(FillError::io("seek in", tmp))?;
                        hasher = Sha256::new();
                        written = 0;
                    }
                    let length = content_length(response.headers())
                        .ok_or_else(|| FillError::BadAnswer("no Content-Length".into()))?;
                    check_size(total, length)?;
                    total = Some(length);
                    if name.is_none() {
                        name = disposition_name(response.headers());
                    }
                }
                StatusCode::PARTIAL_CONTENT => {
                    let (start, length) = content_range(response.headers()).ok_or_else(|| {
                        FillError::BadAnswer("a 206 without a usable Content-Range".into())
                    })?;
                    if start != written {
                        return Err(FillError::BadAnswer(format!(
                            "asked for bytes from {written}, got from {start}"
                        )));
                    }
                    check_size(total, length)?;
                    total = Some(length);
                }
                // An expired or refused signed URL: ask for a fresh one.
                StatusCode::BAD_REQUEST
                | StatusCode::FORBIDDEN
                | StatusCode::NOT_FOUND
                | StatusCode::GONE => {
                    last_error = FillError::UpstreamStatus(response.status());
                    match relocate().await {
                        Some(fresh) => location = fresh,
                        None => return Err(FillError::NoFreshLocation(response.status())),
                    }
                    continue;
                }
                other => {
                    last_error = FillError::UpstreamStatus(other);
                    continue;
                }
            }
            let size = total.unwrap_or(0);
            tx.send_modify(|s| {
                s.total = Some(size);
                s.name = name.clone();
            });
            let mut body = response.into_body();
            let mut cut = None;
            while let Some(frame) =
                std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
            {
                let data = match frame {
                    Ok(frame) => match frame.into_data() {
                        Ok(data) => data,
                        Err(_) => continue,
                    },
                    Err(e) => {
                        cut = Some(e.to_string());
                        break;
                    }
                };
                if written + data.len() as u64 > size {
                    return Err(FillError::BadAnswer(format!("more than {size} bytes")));
                }
                if let Some((upto, digest)) = &replay {
                    if written + data.len() as u64 >= *upto {
                        // `upto - written` is at most `data.len()` here.
                        let head = usize::try_from(upto - written)
                            .unwrap_or(data.len())
                            .min(data.len());
                        let mut prefix = hasher.clone();
                        prefix.update(&data[..head]);
                        if prefix.finalize().as_slice() != digest.as_slice() {
                            return Err(FillError::BadAnswer(format!(
                                "the restarted answer differs in its first {upto} bytes"
                            )));
                        }
                        replay = None;
                    }
                }
                file.write_all(&data)
                    .await
                    .map_err(FillError::io("write", tmp))?;
                self.metrics.fetched_from_upstream(data.len() as u64);
                // Readers open the file themselves: the bytes must be in it
                // before they are announced.
                file.flush().await.map_err(FillError::io("write", tmp))?;
                hasher.update(&data);
                written += data.len() as u64;
                tx.send_modify(|s| s.written = written);
            }
            if written == size {
                file.sync_all().await.map_err(FillError::io("sync", tmp))?;
                let sha256 = hex(&hasher.finalize());
                if let Some(expected) = &facts.sha256 {
                    if *expected != sha256 {
                        return Err(FillError::DigestMismatch {
                            expected: expected.clone(),
                            got: sha256,
                        });
                    }
                }
                return Ok(BlobRecord {
                    sha256,
                    size,
                    name: name.unwrap_or_else(|| format!("artifact-{artifact}")),
                    expires_at: facts.expires_at,
                    stored_at: now_secs(),
                    repo: facts.repo.clone(),
                });
            }
            last_error = FillError::Cut(
                cut.unwrap_or_else(|| format!("it ended after {written} of {size} bytes")),
            );
            tracing::info!(artifact, written, size, "blob transfer cut; resuming");
        }
        Err(FillError::GaveUp {
            attempts: ATTEMPTS,
            last: Box::new(last_error),
        })
    }

    /// Renames a checked transfer into `blobs/`, records it, applies the quota.
    async fn keep(
        &self,
        artifact: u64,
        tmp: &Path,
        record: BlobRecord,
    ) -> Result<BlobRecord, FillError> {
        let path = self.path_of(&record.sha256);
        if let Some(parent) = path.parent() {
            crate::private::create_dir_all_async(parent)
                .await
                .map_err(FillError::io("create", parent))?;
        }
        tokio::fs::rename(tmp, &path)
            .await
            .map_err(FillError::io("rename", tmp))?;
        if let Some(parent) = path.parent() {
            // The rename itself must survive a crash before the record does.
            if let Ok(dir) = tokio::fs::File::open(parent).await {
                let _ = dir.sync_all().await;
            }
        }
        // The sidecar before the record: the file stays recoverable should
        // the index be lost. Without it the blob is still whole and
        // recorded (the next start writes the sidecar), so only warn. On
        // the blocking pool: it fsyncs a file and a directory.
        let sidecar = {
            let (path, tmp, record) = (path.clone(), self.dir.join("tmp"), record.clone());
            tokio::task::spawn_blocking(move || {
                crate::sidecar::add(&path, &tmp, artifact, &record).map_err(|e| e.to_string())
            })
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r)
        };
        if let Err(e) = sidecar {
            tracing::warn!(artifact, error = %e, "blob sidecar not written");
        }
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

    /// Drops expired blobs, then least recently used ones past the quota,
    /// and index records that outlived their use; returns what went. Reads
    /// every blob record, fact and grant key: `cache gc` and the server's
    /// periodic task call it, off the async threads.
    pub fn housekeep(&self) -> Swept {
        let mut swept = Swept::default();
        self.sweep_expired(&mut swept);
        self.sweep_index(&mut swept);
        self.evict_over_quota(&mut swept);
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
        let expired = self
            .index
            .facts()
            .remove_where(|f| f.expires_at.is_some_and(|t| t <= now));
        match expired {
            Ok(ids) => {
                for &id in &ids {
                    if self.remove(id, Eviction::Expired) {
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
        if let Ok(records) = self.records() {
            let now = now_secs();
            for (id, r) in records {
                if r.expires_at.is_some_and(|t| t <= now) {
                    self.remove(id, Eviction::Expired);
                    swept.expired.push(id);
                }
            }
        }
    }

    fn evict_over_quota(&self, swept: &mut Swept) {
        // Bounded: each round removes one record.
        for _ in 0..10_000 {
            if self.stored_bytes() <= self.quota {
                break;
            }
            match self.index.blobs().least_recent() {
                Ok(Some(id)) => {
                    tracing::info!(artifact = id, "blob evicted (quota)");
                    self.remove(id, Eviction::Quota);
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

fn check_size(expected: Option<u64>, got: u64) -> Result<(), FillError> {
    match expected {
        Some(expected) if expected != got => Err(FillError::SizeMismatch { expected, got }),
        _ => Ok(()),
    }
}

fn content_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// `bytes a-b/total` → (a, total).
fn content_range(headers: &http::HeaderMap) -> Option<(u64, u64)> {
    let v = headers.get(header::CONTENT_RANGE)?.to_str().ok()?;
    let (range, total) = v.strip_prefix("bytes ")?.split_once('/')?;
    let (start, _) = range.split_once('-')?;
    Some((start.parse().ok()?, total.parse().ok()?))
}

/// `attachment; filename="x.zip"; …` → `x`: the parameter's value only, up
/// to its closing quote or, unquoted, the next `;`.
fn disposition_name(headers: &http::HeaderMap) -> Option<String> {
    let v = headers.get(header::CONTENT_DISPOSITION)?.to_str().ok()?;
    let value = v.split("filename=").nth(1)?.trim_start();
    let name = match value.strip_prefix('"') {
        Some(quoted) => quoted.split('"').next()?,
        None => value.split(';').next()?.trim(),
    };
    let name = name.strip_suffix(".zip").unwrap_or(name);
    (!name.is_empty()).then(|| name.to_owned())
}

/// Reads bytes `[start, end)` of a stored blob or a fill in progress,
/// waiting for a fill to write them. Memory stays at two chunks per client
/// (one queued, one being read).
pub fn read_range(source: Source, start: u64, end: u64) -> ChannelBody {
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(async move {
        if let Err(e) = pump(source, start, end, &tx).await {
            let _ = tx.send(Err(e.into())).await;
        }
    });
    ChannelBody {
        rx,
        remaining: end.saturating_sub(start),
    }
}

pub enum Source {
    /// Opened before the answer starts: a file evicted after that stays
    /// readable through the handle.
    Stored(std::fs::File),
    Filling(Arc<Fill>),
}

async fn pump(
    source: Source,
    start: u64,
    end: u64,
    tx: &mpsc::Sender<Result<Bytes, BoxError>>,
) -> Result<(), String> {
    let fill = match source {
        Source::Stored(file) => return pump_file(file, None, start, end, tx).await,
        Source::Filling(fill) => fill,
    };
    let _reading = Reading::new(&fill);
    let mut state = fill.state();
    let file = match open(&fill.tmp).await {
        Ok(f) => f,
        // The fill finished and renamed its file in between: wait for its
        // verdict (the record is written right after the rename).
        Err(_) => {
            let outcome = state
                .wait_for(|s| s.outcome.is_some())
                .await
                .map_err(|_| "the fill stopped".to_owned())?
                .outcome
                .clone();
            match outcome {
                Some(Ok(record)) => {
                    let stored = fill
                        .stored_dir
                        .join(record.sha256.get(..2).unwrap_or("00"))
                        .join(&record.sha256);
                    open(&stored).await.map_err(|e| e.to_string())?
                }
                Some(Err(e)) => return Err(e.to_string()),
                None => return Err("stored blob not found".into()),
            }
        }
    };
    pump_file(file, Some(state), start, end, tx).await
}

/// Sends `[start, end)` of `file`; with `state`, no further than the fill
/// has written (and byte `end - 1` only once the fill is verified).
async fn pump_file(
    file: std::fs::File,
    mut state: Option<watch::Receiver<FillState>>,
    start: u64,
    end: u64,
    tx: &mpsc::Sender<Result<Bytes, BoxError>>,
) -> Result<(), String> {
    let file = Arc::new(file);
    let mut pos = start;
    while pos < end {
        let available = match &mut state {
            None => end,
            Some(rx) => loop {
                let (written, outcome) = {
                    let s = rx.borrow_and_update();
                    (s.written, s.outcome.clone())
                };
                // The last byte of this answer (not only of the zip: a
                // range is an answer too) waits for the fill's verdict
                // (size, digest): a client must never see bytes the fill
                // goes on to reject end as complete.
                let releasable = written.min(end.saturating_sub(1));
                match outcome {
                    Some(Err(e)) => return Err(e.to_string()),
                    Some(Ok(record)) => break record.size,
                    None if releasable > pos => break releasable,
                    None => {
                        if rx.changed().await.is_err() {
                            return Err("the fill stopped".into());
                        }
                    }
                }
            },
        };
        let want = (available.min(end) - pos).min(CHUNK as u64) as usize;
        let chunk = read_at(&file, pos, want).await.map_err(|e| e.to_string())?;
        if chunk.is_empty() {
            return Err("blob file shorter than announced".into());
        }
        pos += chunk.len() as u64;
        if tx.send(Ok(chunk)).await.is_err() {
            return Ok(()); // The client went away.
        }
    }
    Ok(())
}

/// Opens `path` for reading, off the async threads.
pub async fn open(path: &Path) -> io::Result<std::fs::File> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || std::fs::File::open(path))
        .await
        .map_err(io::Error::other)?
}

/// Up to `len` bytes of `file` from `pos`, read on the blocking pool
/// straight into the buffer that is sent (one copy, one thread hop per
/// chunk; positional, so no seek state is shared).
async fn read_at(file: &Arc<std::fs::File>, pos: u64, len: usize) -> io::Result<Bytes> {
    let file = file.clone();
    tokio::task::spawn_blocking(move || {
        let mut buf = vec![0u8; len];
        #[cfg(unix)]
        let n = std::os::unix::fs::FileExt::read_at(&*file, &mut buf, pos)?;
        #[cfg(windows)]
        let n = std::os::windows::fs::FileExt::seek_read(&*file, &mut buf, pos)?;
        buf.truncate(n);
        Ok(Bytes::from(buf))
    })
    .await
    .map_err(io::Error::other)?
}

/// A response body fed by [`pump`].
pub struct ChannelBody {
    rx: mpsc::Receiver<Result<Bytes, BoxError>>,
    remaining: u64,
}

impl HttpBody for ChannelBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(Ok(data))) => {
                self.remaining = self.remaining.saturating_sub(data.len() as u64);
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
            Poll::Ready(None) if self.remaining > 0 => {
                Poll::Ready(Some(Err("blob stream ended early".into())))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_and_disposition_headers_parse() {
        let mut h = http::HeaderMap::new();
        h.insert(header::CONTENT_RANGE, "bytes 100-199/1000".parse().unwrap());
        h.insert(
            header::CONTENT_DISPOSITION,
            "attachment; filename=\"build.zip\"".parse().unwrap(),
        );
        assert_eq!(content_range(&h), Some((100, 1000)));
        assert_eq!(disposition_name(&h).as_deref(), Some("build"));
        for (header, name) in [
            ("attachment; filename=build.zip; size=3", "build"),
            ("attachment; filename=\"a;b.zip\"; size=3", "a;b"),
            ("attachment;filename=\"c.zip\";creation-date=x", "c"),
        ] {
            h.insert(header::CONTENT_DISPOSITION, header.parse().unwrap());
            assert_eq!(disposition_name(&h).as_deref(), Some(name), "{header}");
        }
    }
}
