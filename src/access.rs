//! Download permission: which credential GHES said may download which
//! artifact, and when. The one owner of grants — recorded on the download
//! endpoint's 302 and on a renewal upstream confirmed, ended when upstream
//! says no to that credential, and for every credential when the artifact
//! goes (expired, deleted, evicted, corrupt) or nothing is stored for it.
//!
//! A grant only spares the download endpoint's call: renewing one (the
//! metadata revalidation in `download`) still asks upstream, except for a
//! young grant under `revalidate = "when-stale"`.

use std::time::Duration;

use crate::clock::millis;
use crate::config::{Revalidate, Settings};
use crate::credential::CredentialId;
use crate::index::{GrantTable, Index, IndexError};

/// Where a credential stands with an artifact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// No grant: only the download endpoint can say.
    Unknown,
    /// Upstream said yes within `max_fresh` (`when-stale` only): no need
    /// to ask again.
    Young,
    /// A grant to renew with upstream.
    Due,
}

#[derive(Clone)]
pub struct Access {
    grants: GrantTable,
    /// How long a grant stands without renewal, in milliseconds: zero
    /// (never) unless `revalidate = "when-stale"`.
    young_for: u64,
}

impl Access {
    pub fn new(index: &Index, settings: &Settings) -> Access {
        let young_for = match settings.revalidate {
            Revalidate::WhenStale => settings.max_fresh.0,
            Revalidate::Always => Duration::ZERO,
        };
        Access::with_young_for(index, young_for)
    }

    /// For the parts that only end grants (the blob store, repair).
    pub fn ending(index: &Index) -> Access {
        Access::with_young_for(index, Duration::ZERO)
    }

    fn with_young_for(index: &Index, young_for: Duration) -> Access {
        Access {
            grants: index.grants().clone(),
            young_for: millis(young_for),
        }
    }

    /// `now_ms` in Unix milliseconds. An unreadable grant counts as none:
    /// the download endpoint is asked, which costs a call, never a wrong
    /// answer.
    pub fn standing(&self, artifact: u64, credential: CredentialId, now_ms: u64) -> Standing {
        match self.grants.get(artifact, credential) {
            Ok(Some(at)) if now_ms.saturating_sub(at) < self.young_for => Standing::Young,
            Ok(Some(_)) => Standing::Due,
            Ok(None) => Standing::Unknown,
            Err(e) => {
                tracing::warn!(error = %e, "grant unreadable");
                Standing::Unknown
            }
        }
    }

    /// Upstream said yes to this credential just now (a 302, or a renewal's
    /// 200 or 304). Only then: a young grant (or a fresh cached answer)
    /// used again must not make itself younger, or a client downloading
    /// more often than `max_fresh` would never be asked about again.
    pub fn allow(&self, artifact: u64, credential: CredentialId, now_ms: u64) {
        if let Err(e) = self.grants.put(artifact, credential, now_ms) {
            tracing::warn!(error = %e, "grant not recorded");
        }
    }

    /// Upstream said no to this credential (401/403/404/410 on renewal).
    pub fn deny(&self, artifact: u64, credential: CredentialId) {
        if let Err(e) = self.grants.remove(artifact, credential) {
            tracing::warn!(error = %e, "grant not removed");
        }
    }

    /// Ends every credential's grant for an artifact; returns how many.
    pub fn end(&self, artifact: u64) -> Result<u64, IndexError> {
        self.grants.remove_artifact(artifact)
    }

    /// Each artifact some credential holds a grant for, once.
    pub fn granted_artifacts(&self) -> Result<Vec<u64>, IndexError> {
        self.grants.artifacts()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_grant_is_young_for_max_fresh_then_due_and_ends() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(dir.path(), 1 << 20).unwrap();
        let cred = CredentialId::Token([3; 32]);
        let young = Access::with_young_for(&index, Duration::from_secs(60));
        assert_eq!(young.standing(7, cred, 1_000), Standing::Unknown);
        young.allow(7, cred, 1_000);
        assert_eq!(young.standing(7, cred, 60_999), Standing::Young);
        assert_eq!(young.standing(7, cred, 61_000), Standing::Due);
        assert_eq!(
            Access::ending(&index).standing(7, cred, 1_000),
            Standing::Due
        );
        young.deny(7, cred);
        assert_eq!(young.standing(7, cred, 1_000), Standing::Unknown);
        young.allow(7, cred, 1);
        young.allow(7, CredentialId::Anonymous, 1);
        assert_eq!(young.granted_artifacts().unwrap(), [7]);
        assert_eq!(young.end(7).unwrap(), 2);
        assert!(young.granted_artifacts().unwrap().is_empty());
    }
}
