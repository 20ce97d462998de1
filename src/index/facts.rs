//! Facts: `artifact` → what any cached JSON said of it (name, size, digest,
//! expiry), the same for every credential, so a cold fill needs no API call;
//! and `fact_expiry` (`expires_at` ++ artifact), changed with them in one
//! transaction, so housekeeping reads only the expired.

use serde::{Deserialize, Serialize};

use sled::transaction::ConflictableTransactionError;
use sled::Transactional;

use super::expiry::{self, Expiring};
use super::stamp::u64_key;
use super::IndexError;

/// What is known of an artifact from any cached JSON.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Facts {
    pub name: Option<String>,
    pub size: Option<u64>,
    /// Lower-case hex sha256 (`digest` without its `sha256:` prefix).
    pub sha256: Option<String>,
    /// Unix seconds.
    pub expires_at: Option<u64>,
    /// GitHub's `"expired": true`: upstream may expire an artifact before
    /// its `expires_at` (and says so only here and with a 410).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub expired: bool,
    /// The repository it was seen under, as the JSON cache keys it
    /// (`n:owner/name` or `i:id`), so `cache purge --repo` can find it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repo: Option<String>,
}

impl Facts {
    /// Reads the fields of one artifact object of GitHub's JSON.
    pub fn from_artifact(artifact: &serde_json::Value) -> Option<(u64, Facts)> {
        let id = artifact.get("id")?.as_u64()?;
        let sha256 = artifact
            .get("digest")
            .and_then(|d| d.as_str())
            .and_then(|d| d.strip_prefix("sha256:"))
            .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
            .map(str::to_ascii_lowercase);
        let expires_at = artifact
            .get("expires_at")
            .and_then(|d| d.as_str())
            .and_then(|d| {
                time::OffsetDateTime::parse(d, &time::format_description::well_known::Rfc3339).ok()
            })
            .and_then(|t| u64::try_from(t.unix_timestamp()).ok());
        Some((
            id,
            Facts {
                name: artifact
                    .get("name")
                    .and_then(|n| n.as_str())
                    .map(str::to_owned),
                size: artifact.get("size_in_bytes").and_then(|s| s.as_u64()),
                sha256,
                expires_at,
                expired: artifact.get("expired").and_then(|e| e.as_bool()) == Some(true),
                repo: None,
            },
        ))
    }

    /// Expired by upstream's word or by its `expires_at` (Unix seconds
    /// `now`): no credential may have its zip any more (DESIGN rule 1).
    pub fn is_expired(&self, now: u64) -> bool {
        self.expired || self.expires_at.is_some_and(|t| t <= now)
    }
}

#[derive(Clone)]
pub struct FactTable {
    pub(super) facts: sled::Tree,
    pub(super) expiry: sled::Tree,
}

type Tx = ConflictableTransactionError<()>;

impl Expiring for Facts {
    fn expires_at(&self) -> Option<u64> {
        self.expires_at
    }
}

impl FactTable {
    pub fn put(&self, artifact: u64, facts: &Facts) -> Result<(), IndexError> {
        let encoded = serde_json::to_vec(facts)?;
        let id = artifact.to_be_bytes();
        (&self.facts, &self.expiry).transaction(|(tree, lines)| {
            let old = tree.insert(&id, encoded.as_slice())?;
            expiry::redraw_line(lines, artifact, old.as_deref(), Some(facts))?;
            Ok::<_, Tx>(())
        })?;
        Ok(())
    }

    pub fn get(&self, artifact: u64) -> Result<Option<Facts>, IndexError> {
        match self.facts.get(artifact.to_be_bytes())? {
            Some(v) => Ok(Some(serde_json::from_slice(&v)?)),
            None => Ok(None),
        }
    }

    /// Every artifact's readable facts, for `cache purge --repo` (facts
    /// name the repository they were learned from).
    pub fn all(&self) -> Result<Vec<(u64, Facts)>, IndexError> {
        let mut out = Vec::new();
        for item in self.facts.iter() {
            let (k, v) = item?;
            if let Ok(facts) = serde_json::from_slice(&v) {
                out.push((u64_key(&k), facts));
            }
        }
        Ok(out)
    }

    /// Returns whether there were facts to drop.
    pub fn remove(&self, artifact: u64) -> Result<bool, IndexError> {
        let id = artifact.to_be_bytes();
        let old = (&self.facts, &self.expiry).transaction(|(tree, lines)| {
            let old = tree.remove(&id)?;
            expiry::redraw_line::<Facts>(lines, artifact, old.as_deref(), None)?;
            Ok::<_, Tx>(old)
        })?;
        Ok(old.is_some())
    }

    /// Drops the facts whose `expires_at` is `now` (Unix seconds) or
    /// before, reading only those; returns their artifacts.
    pub fn remove_expired(&self, now: u64) -> Result<Vec<u64>, IndexError> {
        let ids = expiry::expired(&self.expiry, now)?;
        for &id in &ids {
            self.remove(id)?;
        }
        Ok(ids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn facts_come_from_github_json() {
        let v = serde_json::json!({
            "id": 7, "name": "dist", "size_in_bytes": 12,
            "digest": "sha256:ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef0123456789",
            "expires_at": "2027-02-22T00:15:31Z"
        });
        let (id, f) = Facts::from_artifact(&v).unwrap();
        assert_eq!(id, 7);
        assert_eq!(f.name.as_deref(), Some("dist"));
        assert_eq!(f.size, Some(12));
        assert_eq!(f.sha256.as_deref().map(str::len), Some(64));
        assert!(!f.expired && !f.is_expired(1_803_255_330));
        assert!(f.is_expired(1_803_255_331));
        assert!(f.sha256.unwrap().starts_with("abcdef"));
        assert_eq!(f.expires_at, Some(1_803_255_331));
        let (_, bare) = Facts::from_artifact(&serde_json::json!({"id": 1})).unwrap();
        assert_eq!(bare, Facts::default());
        assert!(!bare.is_expired(u64::MAX));
    }

    /// GitHub may expire an artifact before its `expires_at`: the flag alone
    /// ends it, and survives the trip through the facts table.
    #[test]
    fn expired_flag_alone_makes_facts_expired() {
        let v = serde_json::json!({
            "id": 7, "expired": true, "expires_at": "2999-01-01T00:00:00Z"
        });
        let (_, f) = Facts::from_artifact(&v).unwrap();
        assert!(f.expired && f.is_expired(0));
        let stored: Facts = serde_json::from_slice(&serde_json::to_vec(&f).unwrap()).unwrap();
        assert!(stored.is_expired(0));
    }
}
