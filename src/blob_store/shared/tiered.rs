//! The blob store with the shared tier behind its local disk: a local miss
//! is filled from the shared store (through the one single-flight fill per
//! artifact) before anyone asks GHES, and an artifact that is gone for
//! everyone (deleted, expired) leaves the shared store too.

use std::sync::Arc;

use crate::clock::now_secs;
use crate::index::Facts;

use super::super::fill::FillSource;
use super::super::{Available, BlobStore};

impl BlobStore {
    /// [`BlobStore::lookup`], and on a local miss the shared store's copy:
    /// a fill from it starts (readers stream while it arrives). A failed
    /// local fill is left as it is, so the caller falls back to GHES
    /// rather than retrying the store. A store that is down costs one
    /// bounded call, then is skipped for a while (counted as degraded).
    pub async fn lookup_shared(self: &Arc<Self>, artifact: u64, facts: Facts) -> Option<Available> {
        let local = self.lookup(artifact);
        let Some(tier) = self.shared.clone() else {
            return local;
        };
        if local.is_some() || !tier.available() {
            return local;
        }
        match tier.record(artifact).await {
            Ok(Some(record)) if record.expires_at.is_some_and(|t| t <= now_secs()) => {
                self.unshare(artifact);
                None
            }
            Ok(Some(record)) => {
                let (fill, _) = self.fill_from(artifact, facts, FillSource::Shared(tier, record));
                Some(Available::Filling(fill))
            }
            Ok(None) => None,
            Err(e) => {
                tier.down();
                tracing::warn!(artifact, error = %e, "shared store unavailable; asking GHES");
                None
            }
        }
    }

    /// The artifact is gone for every replica (deleted through the mirror,
    /// expired, a 410): its shared record goes, and the blob when no other
    /// artifact names it. In the background; a failure is only logged (the
    /// bucket's lifecycle rule sweeps what is left).
    pub fn unshare(&self, artifact: u64) {
        let Some(tier) = self.shared.clone() else {
            return;
        };
        tokio::spawn(async move {
            if let Err(e) = tier.forget(artifact).await {
                tracing::warn!(artifact, error = %e, "shared record not removed");
            }
        });
    }

    /// The shared store as `/readyz` reports it, from its last call (no
    /// probe: a health check must not wait on the store): `None` without
    /// one.
    pub fn shared_state(&self) -> Option<&'static str> {
        self.shared.as_ref().map(|tier| {
            if tier.available() {
                "ok"
            } else {
                "degraded: a call failed in the last 30 s; serving from GHES and the local disk"
            }
        })
    }
}
