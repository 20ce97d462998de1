//! One fill per artifact: the transfer from the blob storage upstream
//! redirects to (resumed with `Range` after a cut, relocated through the
//! download endpoint when the signed URL expired), written into a staged
//! file every client of the artifact reads as bytes arrive; checked (size,
//! digest) and committed to the backend, or streamed and not kept.

use std::future::Future;
use std::io::SeekFrom;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header;
use http::{StatusCode, Uri};
use hyper::body::Body as HttpBody;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncSeekExt, AsyncWriteExt};
use tokio::sync::watch;

use crate::clock::{now_ms, now_secs};
use crate::credential::hex;
use crate::error::FillError;
use crate::index::{BlobRecord, Facts};

use super::backend::Backend;
use super::relay::Origin;
use super::staged::{self, Staged, StagedRecord, Validator};
use super::{BlobStore, Swept};

/// Transfers attempted per fill (the first and the resumes).
const ATTEMPTS: u32 = 5;

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

    /// Brings the whole zip into `tmp`, resuming with `Range` after a cut,
    /// or from the staged file an earlier process left (`resume`).
    async fn transfer(
        &self,
        artifact: u64,
        tmp: &Path,
        origin: &Origin,
        facts: &Facts,
        tx: &watch::Sender<FillState>,
        resume: Option<Staged>,
    ) -> Result<BlobRecord, FillError> {
        let mut total = facts.size;
        let mut name = facts.name.clone();
        let mut expected_sha = facts.sha256.clone();
        // The staged prefix of an earlier process, until upstream's first
        // answer confirms it (same size, validator, `Content-Range`): no
        // reader is told of its bytes before that.
        let mut unconfirmed: Option<StagedRecord> = None;
        let (mut file, mut hasher, mut written) = match resume {
            Some(s) => match reopen(&s).await {
                Ok((file, hasher)) => {
                    tracing::info!(artifact, bytes = s.len, "resuming a staged fill");
                    name = name.or_else(|| s.record.name.clone());
                    expected_sha = expected_sha.or_else(|| s.record.sha256.clone());
                    let len = s.len;
                    unconfirmed = Some(s.record);
                    (file, hasher, len)
                }
                Err(e) => {
                    tracing::warn!(artifact, error = %e, "staged fill unreadable; starting over");
                    (create(tmp).await?, Sha256::new(), 0)
                }
            },
            None => (create(tmp).await?, Sha256::new(), 0),
        };
        // Upstream's validator of the bytes in the staged file.
        let mut validator = unconfirmed.as_ref().map(|r| r.validator.clone());
        // A resumed answer's validator differed: the next request asks for
        // the whole zip again.
        let mut changed = false;
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
            let from = (written > 0 && !changed).then_some(written);
            let response = match self.fetcher.get(&origin.location(), from).await {
                Ok(r) => r,
                Err(e) => {
                    last_error = FillError::Unreachable(e);
                    continue;
                }
            };
            match response.status() {
                StatusCode::OK if unconfirmed.take().is_some() => {
                    // The staged prefix is not confirmed: start over; no
                    // client read it.
                    tracing::info!(artifact, "range not honoured; staged prefix dropped");
                    restart(&mut file, tmp).await?;
                    (hasher, written) = (Sha256::new(), 0);
                    let length = content_length(response.headers())
                        .ok_or_else(|| FillError::BadAnswer("no Content-Length".into()))?;
                    check_size(total, length)?;
                    total = Some(length);
                    validator = Some(
                        self.record(tmp, artifact, response.headers(), length, facts, &name)
                            .await,
                    );
                }
                StatusCode::OK => {
                    changed = false;
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
                    validator = Some(
                        self.record(tmp, artifact, response.headers(), length, facts, &name)
                            .await,
                    );
                }
                StatusCode::PARTIAL_CONTENT
                    if validator
                        .as_ref()
                        .is_some_and(|v| *v != Validator::of(response.headers()))
                        || unconfirmed.as_ref().is_some_and(|r| {
                            content_range(response.headers()) != Some((written, r.size))
                        }) =>
                {
                    // Other content than the bytes staged: a staged prefix
                    // no client read is dropped; bytes clients may hold are
                    // fetched again from the start and must repeat (the
                    // 200 path checks them).
                    tracing::info!(artifact, "blob changed upstream; starting over");
                    last_error = FillError::BadAnswer("the blob changed upstream".into());
                    if unconfirmed.take().is_some() {
                        restart(&mut file, tmp).await?;
                        (hasher, written, validator) = (Sha256::new(), 0, None);
                    } else {
                        changed = true;
                    }
                    continue;
                }
                StatusCode::PARTIAL_CONTENT => {
                    if unconfirmed.take().is_some() {
                        tracing::info!(artifact, from = written, "staged fill confirmed");
                    }
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
                    if !origin.relocate().await {
                        return Err(FillError::NoFreshLocation(response.status()));
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
                if let FillState::Running {
                    total,
                    name: n,
                    written: w,
                } = s
                {
                    *total = Some(size);
                    *w = written;
                    n.clone_from(&name);
                }
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
                self.metrics.fetched_from_upstream(data.len() as u64);
                append(&mut file, &mut hasher, &mut written, &data, tmp, tx).await?;
            }
            if written == size {
                let sha256 = seal(&file, hasher, tmp, expected_sha.as_deref()).await?;
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

    /// Writes the staged record beside `tmp` for upstream's answer (a
    /// failure only costs resuming after a restart); returns its validator.
    /// Awaited, so that the removal at the fill's end cannot overtake it.
    async fn record(
        &self,
        tmp: &Path,
        artifact: u64,
        headers: &http::HeaderMap,
        size: u64,
        facts: &Facts,
        name: &Option<String>,
    ) -> Validator {
        let validator = Validator::of(headers);
        let record = StagedRecord {
            artifact,
            size,
            sha256: facts.sha256.clone(),
            name: name.clone(),
            validator: validator.clone(),
            boot: staged::boot_id(),
            started: now_secs(),
        };
        let tmp = tmp.to_owned();
        let written =
            tokio::task::spawn_blocking(move || staged::write_record(&tmp, &record)).await;
        if let Err(e) = written.map_err(std::io::Error::other).and_then(|r| r) {
            tracing::warn!(artifact, error = %e, "staged record not written");
        }
        validator
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

/// Empties a staged file whose prefix upstream did not confirm.
async fn restart(file: &mut tokio::fs::File, tmp: &Path) -> Result<(), FillError> {
    file.set_len(0)
        .await
        .map_err(FillError::io("truncate", tmp))?;
    file.seek(SeekFrom::Start(0))
        .await
        .map_err(FillError::io("seek in", tmp))?;
    Ok(())
}

/// Opens a staged file for appending and re-hashes its prefix, on the
/// blocking pool.
async fn reopen(s: &Staged) -> std::io::Result<(tokio::fs::File, Sha256)> {
    let (part, len) = (s.part.clone(), s.len);
    let (file, hasher) = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Seek};
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&part)?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 256 * 1024];
        let mut left = len;
        while left > 0 {
            let want = buf.len().min(usize::try_from(left).unwrap_or(buf.len()));
            let n = file.read(&mut buf[..want])?;
            if n == 0 {
                return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof));
            }
            hasher.update(&buf[..n]);
            left -= n as u64;
        }
        file.set_len(len)?;
        file.seek(SeekFrom::Start(len))?;
        Ok::<_, std::io::Error>((file, hasher))
    })
    .await
    .map_err(std::io::Error::other)??;
    Ok((tokio::fs::File::from_std(file), hasher))
}

pub(super) fn check_size(expected: Option<u64>, got: u64) -> Result<(), FillError> {
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
pub(super) fn content_range(headers: &http::HeaderMap) -> Option<(u64, u64)> {
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
