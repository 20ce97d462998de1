//! The shared tier: an S3-compatible bucket every replica reads and
//! writes, so an artifact fetched from GHES by one replica can be served by
//! any other (failover, a fresh replica on an empty disk).
//!
//! Layout under the configured prefix:
//! - `blobs/sha256/<hex>`: the zip, content-addressed, written once
//!   (whoever finds it present skips the upload: the bytes are the same);
//! - `artifacts/<id>`: a small JSON [`SharedRecord`] naming the digest;
//! - `refs/<hex>/<id>`: an empty marker per artifact naming the digest, so
//!   removing one artifact finds whether another still needs the blob with
//!   one list by prefix instead of reading every record.
//!
//! Nothing here fails a download: every error is returned to the caller,
//! which logs it, counts it and goes on from the local disk or GHES.

pub mod client;
mod tiered;
mod transfer;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use serde::{Deserialize, Serialize};

use crate::index::BlobRecord;
use crate::metrics::shared_store::{Direction, SharedStoreMetrics};

use super::backend::StoredBlob;

/// Bytes read from the local blob per multipart part.
const PART: usize = 8 << 20;
/// Parts in flight at once during an upload.
const PARTS_IN_FLIGHT: usize = 2;
/// A record read or a blob's first bytes: past this, the store is treated
/// as down for this request and the caller asks GHES.
const FIRST_BYTES: Duration = Duration::from_secs(5);
/// After a failed call, local misses go straight to GHES for this long
/// rather than each paying a timeout.
const BACK_OFF: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum SharedError {
    #[error("shared store: {0}")]
    Store(#[from] object_store::Error),
    #[error("shared store: no answer within {0:?}")]
    Timeout(Duration),
    #[error("shared store: unreadable record: {0}")]
    Record(#[from] serde_json::Error),
    #[error("shared store: local blob unreadable: {0}")]
    Local(#[from] std::io::Error),
}

impl SharedError {
    /// The object is not there: a miss, not a store that is down.
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            SharedError::Store(object_store::Error::NotFound { .. })
        )
    }
}

/// What a replica needs to serve an artifact it never saw.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharedRecord {
    pub sha256: String,
    pub size: u64,
    pub name: String,
    /// Unix seconds, as GHES gave it.
    pub expires_at: Option<u64>,
}

impl From<&BlobRecord> for SharedRecord {
    fn from(r: &BlobRecord) -> Self {
        SharedRecord {
            sha256: r.sha256.clone(),
            size: r.size,
            name: r.name.clone(),
            expires_at: r.expires_at,
        }
    }
}

pub struct SharedTier {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    metrics: Arc<SharedStoreMetrics>,
    /// Unix milliseconds until which the store is treated as down.
    down_until: AtomicU64,
}

impl SharedTier {
    pub fn new(
        store: Arc<dyn ObjectStore>,
        prefix: Path,
        metrics: Arc<SharedStoreMetrics>,
    ) -> SharedTier {
        SharedTier {
            store,
            prefix,
            metrics,
            down_until: AtomicU64::new(0),
        }
    }

    /// Whether to call the store now (not within [`BACK_OFF`] of a failure).
    fn available(&self) -> bool {
        self.down_until.load(Ordering::Relaxed) <= crate::clock::now_ms()
    }

    /// A call failed: counted as degraded; skipped for [`BACK_OFF`].
    fn down(&self) {
        self.metrics.degraded();
        let until = crate::clock::now_ms() + BACK_OFF.as_millis() as u64;
        self.down_until.store(until, Ordering::Relaxed);
    }

    fn key(&self, parts: &[&str]) -> Path {
        parts
            .iter()
            .fold(self.prefix.clone(), |p, part| p.clone().join(*part))
    }

    fn blob_key(&self, sha256: &str) -> Path {
        self.key(&["blobs", "sha256", sha256])
    }

    fn record_key(&self, artifact: u64) -> Path {
        self.key(&["artifacts", &artifact.to_string()])
    }

    fn ref_key(&self, sha256: &str, artifact: u64) -> Path {
        self.key(&["refs", sha256, &artifact.to_string()])
    }

    /// Writes the artifact's reference, uploads a verified local blob
    /// unless the store has its digest already, then writes the record. Counted
    /// here; the caller only logs a failure.
    pub(crate) async fn publish(
        &self,
        artifact: u64,
        record: &BlobRecord,
        blob: Arc<dyn StoredBlob>,
    ) -> Result<(), SharedError> {
        let started = Instant::now();
        let outcome = self.publish_inner(artifact, record, blob).await;
        self.metrics.observe(started.elapsed());
        match &outcome {
            Ok(Some(bytes)) => self.metrics.uploaded(*bytes),
            Ok(None) => {}
            Err(_) => self.metrics.upload_failed(),
        }
        outcome.map(|_| ())
    }

    /// Returns the bytes uploaded, `None` when the blob was there already.
    async fn publish_inner(
        &self,
        artifact: u64,
        record: &BlobRecord,
        blob: Arc<dyn StoredBlob>,
    ) -> Result<Option<u64>, SharedError> {
        // The reference first: a replica forgetting another artifact with
        // the same digest meanwhile then sees this one and keeps the blob.
        let ref_key = self.ref_key(&record.sha256, artifact);
        self.store.put(&ref_key, PutPayload::new()).await?;
        let published = self.upload_and_record(artifact, record, blob).await;
        if published.is_err() {
            // Best effort: a stray reference only keeps a blob for the
            // bucket's lifecycle rule to sweep.
            let _ = self.store.delete(&ref_key).await;
        }
        published
    }

    /// [`publish_inner`](Self::publish_inner) once the reference is
    /// written.
    async fn upload_and_record(
        &self,
        artifact: u64,
        record: &BlobRecord,
        blob: Arc<dyn StoredBlob>,
    ) -> Result<Option<u64>, SharedError> {
        let key = self.blob_key(&record.sha256);
        let uploaded = match self.store.head(&key).await {
            Ok(meta) if meta.size == record.size => None,
            Ok(_) | Err(object_store::Error::NotFound { .. }) => {
                let upload = self.store.put_multipart(&key).await?;
                let mut writer = WriteMultipart::new_with_chunk_size(upload, PART);
                let mut pos = 0u64;
                while pos < record.size {
                    writer.wait_for_capacity(PARTS_IN_FLIGHT).await?;
                    let blob = blob.clone();
                    let chunk = tokio::task::spawn_blocking(move || blob.read_at(pos, PART))
                        .await
                        .map_err(std::io::Error::other)??;
                    if chunk.is_empty() {
                        writer.abort().await?;
                        return Err(SharedError::Local(std::io::Error::new(
                            std::io::ErrorKind::UnexpectedEof,
                            "blob shorter than its record",
                        )));
                    }
                    pos += chunk.len() as u64;
                    writer.put(chunk);
                }
                writer.finish().await?;
                Some(record.size)
            }
            Err(e) => return Err(e.into()),
        };
        let json = serde_json::to_vec(&SharedRecord::from(record))?;
        self.store
            .put(&self.record_key(artifact), PutPayload::from(json))
            .await?;
        Ok(uploaded)
    }

    /// The artifact's record, `None` when the store has none.
    pub async fn record(&self, artifact: u64) -> Result<Option<SharedRecord>, SharedError> {
        let read = async {
            match self.store.get(&self.record_key(artifact)).await {
                Ok(got) => Ok(Some(got.bytes().await?)),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(e),
            }
        };
        let started = Instant::now();
        let bytes = tokio::time::timeout(FIRST_BYTES, read).await;
        self.metrics.observe_read(started.elapsed());
        let bytes = bytes.map_err(|_| SharedError::Timeout(FIRST_BYTES))??;
        match bytes {
            Some(bytes) => Ok(Some(serde_json::from_slice(&bytes)?)),
            None => {
                self.metrics.miss();
                Ok(None)
            }
        }
    }

    /// The blob's bytes as they arrive (counted); the caller checks size
    /// and digest.
    pub async fn open(
        &self,
        sha256: &str,
    ) -> Result<impl futures_util::Stream<Item = Result<Bytes, SharedError>> + use<>, SharedError>
    {
        let started = Instant::now();
        let got = tokio::time::timeout(FIRST_BYTES, self.store.get(&self.blob_key(sha256))).await;
        self.metrics.observe_read(started.elapsed());
        let got = got.map_err(|_| SharedError::Timeout(FIRST_BYTES))??;
        self.metrics.hit();
        let metrics = self.metrics.clone();
        Ok(got.into_stream().map(move |chunk| {
            let chunk = chunk?;
            metrics.bytes(Direction::Down, chunk.len() as u64);
            Ok(chunk)
        }))
    }

    /// Drops the artifact's record and reference, and the blob when no
    /// other artifact's reference names it.
    pub async fn forget(&self, artifact: u64) -> Result<(), SharedError> {
        let Some(record) = self.record(artifact).await? else {
            return Ok(());
        };
        self.store.delete(&self.record_key(artifact)).await?;
        let ref_key = self.ref_key(&record.sha256, artifact);
        self.store.delete(&ref_key).await?;
        let refs = self.key(&["refs", &record.sha256]);
        let others: Vec<_> = self.store.list(Some(&refs)).take(1).try_collect().await?;
        if others.is_empty() {
            self.store.delete(&self.blob_key(&record.sha256)).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;

    fn record(content: &[u8]) -> BlobRecord {
        use sha2::Digest;
        BlobRecord {
            sha256: hex::encode(sha2::Sha256::digest(content)),
            size: content.len() as u64,
            name: "dist".into(),
            expires_at: Some(4_000_000_000),
            stored_at: 0,
            repo: None,
        }
    }

    /// Only a 404 is a miss; every other failure (a timeout, a 5xx, an
    /// unreadable record) must mark the store down, or each local miss would
    /// pay the store's timeout again.
    #[test]
    fn only_a_missing_object_is_a_miss() {
        let missing = object_store::Error::NotFound {
            path: "eu/blobs/sha256/00".into(),
            source: "404".into(),
        };
        assert!(SharedError::Store(missing).is_not_found());
        let failed = object_store::Error::Generic {
            store: "S3",
            source: "503 Slow Down".into(),
        };
        assert!(!SharedError::Store(failed).is_not_found());
        assert!(!SharedError::Timeout(FIRST_BYTES).is_not_found());
    }

    /// A tier over an empty in-memory store under `prefix`, and the store.
    fn in_memory(prefix: Path) -> (Arc<InMemory>, SharedTier) {
        let store = Arc::new(InMemory::new());
        let metrics = Arc::new(SharedStoreMetrics::default());
        (store.clone(), SharedTier::new(store, prefix, metrics))
    }

    async fn keys(store: &InMemory) -> Vec<String> {
        let mut keys: Vec<String> = store
            .list(None)
            .map_ok(|m| m.location.to_string())
            .try_collect()
            .await
            .unwrap();
        keys.sort();
        keys
    }

    #[tokio::test]
    async fn one_blob_per_digest_under_the_prefix_gone_with_its_last_artifact() {
        let (store, tier) = in_memory(Path::from("eu"));
        let zip = Bytes::from(vec![7u8; 3 * PART / 2]);
        let r = record(&zip);
        for artifact in [1, 2] {
            let blob = Arc::new(zip.clone());
            tier.publish(artifact, &r, blob).await.unwrap();
        }
        let sha = &r.sha256;
        assert_eq!(
            keys(&store).await,
            [
                "eu/artifacts/1".to_owned(),
                "eu/artifacts/2".to_owned(),
                format!("eu/blobs/sha256/{sha}"),
                format!("eu/refs/{sha}/1"),
                format!("eu/refs/{sha}/2"),
            ]
        );
        let shared = tier.record(2).await.unwrap().unwrap();
        assert_eq!(shared, SharedRecord::from(&r));
        let body: Vec<Bytes> = tier.open(sha).await.unwrap().try_collect().await.unwrap();
        assert_eq!(body.concat(), zip.to_vec());
        assert_eq!(tier.record(3).await.unwrap(), None);

        tier.forget(1).await.unwrap();
        assert_eq!(keys(&store).await.len(), 3, "the blob stays for artifact 2");
        tier.forget(2).await.unwrap();
        assert!(keys(&store).await.is_empty());
    }

    #[tokio::test]
    async fn a_blob_shorter_than_its_record_is_not_published() {
        let (store, tier) = in_memory(Path::default());
        let mut r = record(b"abc");
        r.size = 10;
        let blob = Arc::new(Bytes::from_static(b"abc"));
        assert!(tier.publish(1, &r, blob).await.is_err());
        assert!(keys(&store).await.is_empty());
    }

    /// A blob left under the digest by a cut upload (another size) is not
    /// taken for the zip: it is uploaded again.
    #[tokio::test]
    async fn a_blob_of_another_size_under_the_digest_is_uploaded_again() {
        let (store, tier) = in_memory(Path::default());
        let zip = Bytes::from_static(b"zip bytes");
        let r = record(&zip);
        let key = tier.blob_key(&r.sha256);
        store
            .put(&key, PutPayload::from_static(b"zip"))
            .await
            .unwrap();
        let blob = Arc::new(zip.clone());
        tier.publish(1, &r, blob).await.unwrap();
        let body: Vec<Bytes> = tier
            .open(&r.sha256)
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        assert_eq!(body.concat(), zip.to_vec());
    }

    /// A second artifact with the same zip adds a record and a reference,
    /// not a second upload of the blob.
    #[tokio::test]
    async fn a_blob_already_shared_is_not_uploaded_again() {
        let (store, tier) = in_memory(Path::default());
        let zip = Bytes::from_static(b"zip bytes");
        let r = record(&zip);
        let key = tier.blob_key(&r.sha256);
        let blob = Arc::new(zip.clone());
        tier.publish(1, &r, blob.clone()).await.unwrap();
        let first = store.head(&key).await.unwrap().e_tag;
        tier.publish(2, &r, blob).await.unwrap();
        assert_eq!(store.head(&key).await.unwrap().e_tag, first);
    }

    /// A failed call skips the store for [`BACK_OFF`], no longer.
    #[test]
    fn a_store_marked_down_is_skipped_for_the_back_off_only() {
        let metrics = Arc::new(SharedStoreMetrics::default());
        let tier = SharedTier::new(Arc::new(InMemory::new()), Path::default(), metrics);
        assert!(tier.available());
        let before = crate::clock::now_ms();
        tier.down();
        let after = crate::clock::now_ms();
        assert!(!tier.available());
        let back_off = BACK_OFF.as_millis() as u64;
        let until = tier.down_until.load(Ordering::Relaxed);
        assert!(
            (before + back_off..=after + back_off).contains(&until),
            "down until {until}, now {after}"
        );
    }

    /// A record whose blob is gone (a lifecycle rule, a removal racing an
    /// upload) is a miss for that artifact, not a store that is down for
    /// every other one.
    #[tokio::test]
    async fn a_record_whose_blob_is_gone_is_a_miss_not_an_outage() {
        let (store, tier) = in_memory(Path::default());
        let zip = Bytes::from_static(b"zip bytes");
        let r = record(&zip);
        let blob = Arc::new(zip.clone());
        tier.publish(1, &r, blob).await.unwrap();
        store.delete(&tier.blob_key(&r.sha256)).await.unwrap();

        let dir = tempfile::tempdir().unwrap();
        let tmp = dir.path().join("1.part");
        let running = crate::blob_store::FillState::Running {
            written: 0,
            total: None,
            name: None,
        };
        let (tx, _rx) = tokio::sync::watch::channel(running);
        let shared = tier.record(1).await.unwrap().expect("the record stays");
        assert!(tier.transfer(&tmp, &shared, &tx).await.is_err());
        assert!(tier.available(), "not marked down");
    }
}
