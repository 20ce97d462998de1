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
pub(crate) enum Origin {
    /// The blob storage GHES redirected to.
    Upstream { location: Uri, relocate: Relocate },
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
        self.fill_from(artifact, facts, Origin::Upstream { location, relocate })
    }

    /// [`BlobStore::fill`] from either origin.
    pub(super) fn fill_from(
        self: &Arc<Self>,
        artifact: u64,
        facts: Facts,
        origin: Origin,
    ) -> (Arc<Fill>, bool) {
        let mut fills = self.lock();
        if let Some(fill) = fills.get(&artifact) {
            // A failed fill lingers so that the clients it redirected learn
            // why; a new download starts afresh rather than joining it.
            if !matches!(*fill.state.borrow(), FillState::Failed(_)) {
                return (fill.clone(), true);
            }
        }
        let mut nonce = [0u8; 8];
        let _ = getrandom::fill(&mut nonce);
        let tmp = self
            .dir
            .join("tmp")
            .join(format!("{artifact}-{}.part", hex(&nonce)));
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
            state: rx,
            readers: AtomicU64::new(0),
            transient: AtomicBool::new(false),
        });
        fills.insert(artifact, fill.clone());
        drop(fills);
        let store = self.clone();
        let detached = fill.clone();
        tokio::spawn(async move {
            let publish = matches!(origin, Origin::Upstream { .. });
            let outcome = match origin {
                Origin::Upstream { location, relocate } => {
                    store
                        .transfer(artifact, &tmp, location, &facts, &relocate, &tx)
                        .await
                }
                Origin::Shared(tier, record) => tier.transfer(&tmp, &record, &tx).await,
            };
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
                Ok(record) => {
                    let kept = store.keep(artifact, &tmp, record).await;
                    if let (Ok(record), true) = (&kept, publish) {
                        store.publish(artifact, record);
                    }
                    kept
                }
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
            tx.send_replace(match outcome {
                Ok(record) => FillState::Verified(record),
                Err(e) => FillState::Failed(e),
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
                if let FillState::Running { total, name: n, .. } = s {
                    *total = Some(size);
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
                file.write_all(&data)
                    .await
                    .map_err(FillError::io("write", tmp))?;
                self.metrics.fetched_from_upstream(data.len() as u64);
                // Readers open the file themselves: the bytes must be in it
                // before they are announced.
                file.flush().await.map_err(FillError::io("write", tmp))?;
                hasher.update(&data);
                written += data.len() as u64;
                tx.send_modify(|s| {
                    if let FillState::Running { written: w, .. } = s {
                        *w = written;
                    }
                });
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
