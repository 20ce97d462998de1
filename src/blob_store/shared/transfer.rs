//! A fill's transfer from the shared store: the same staged file, watch
//! channel and checks as one from GHES's blob storage (see `fill`), so
//! readers stream while the bytes arrive and a wrong byte is never kept.

use std::path::Path;

use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use crate::clock::now_secs;
use crate::error::FillError;
use crate::index::BlobRecord;

use super::super::fill::{append, check_size, create, seal, FillState};
use super::{SharedRecord, SharedTier};

impl SharedTier {
    /// Brings the blob `record` names into `tmp`, checking its size and
    /// digest against the record. One attempt: on failure the caller's
    /// next download asks GHES.
    pub(crate) async fn transfer(
        &self,
        tmp: &Path,
        record: &SharedRecord,
        tx: &watch::Sender<FillState>,
    ) -> Result<BlobRecord, FillError> {
        let mut file = create(tmp).await?;
        let mut body = self.open(&record.sha256).await.map_err(|e| {
            // A record whose blob is gone (the lifecycle rule, a removal
            // racing an upload) is a miss: the next download asks GHES, and
            // the store is not marked down for every other artifact.
            if !e.is_not_found() {
                self.down();
            }
            FillError::Unreachable(e.to_string())
        })?;
        tx.send_modify(|s| {
            if let FillState::Running { total, name, .. } = s {
                *total = Some(record.size);
                *name = Some(record.name.clone());
            }
        });
        let mut hasher = Sha256::new();
        let mut written = 0u64;
        while let Some(chunk) = body.next().await {
            let data = chunk.map_err(|e| {
                self.down();
                FillError::Cut(e.to_string())
            })?;
            if written + data.len() as u64 > record.size {
                return Err(FillError::BadAnswer(format!(
                    "more than {} bytes",
                    record.size
                )));
            }
            append(&mut file, &mut hasher, &mut written, &data, tmp, tx).await?;
        }
        check_size(Some(record.size), written)?;
        let sha256 = seal(&file, hasher, tmp, Some(&record.sha256)).await?;
        Ok(BlobRecord {
            sha256,
            size: record.size,
            name: record.name.clone(),
            expires_at: record.expires_at,
            stored_at: now_secs(),
            repo: None,
        })
    }
}
