//! Grants: `artifact ++ credential id` → when upstream last allowed that
//! credential the download (Unix milliseconds). Keys start with the
//! artifact, so one artifact's grants are one prefix.

use crate::credential::CredentialId;

use super::stamp::u64_key;
use super::IndexError;

#[derive(Clone)]
pub struct GrantTable(pub(super) sled::Tree);

fn key(artifact: u64, credential: CredentialId) -> Vec<u8> {
    let mut k = artifact.to_be_bytes().to_vec();
    k.extend_from_slice(credential.as_bytes());
    k
}

impl GrantTable {
    pub fn get(&self, artifact: u64, credential: CredentialId) -> Result<Option<u64>, IndexError> {
        Ok(self.0.get(key(artifact, credential))?.map(|v| u64_key(&v)))
    }

    pub fn put(
        &self,
        artifact: u64,
        credential: CredentialId,
        at_ms: u64,
    ) -> Result<(), IndexError> {
        self.0
            .insert(key(artifact, credential), &at_ms.to_be_bytes())?;
        Ok(())
    }

    pub fn remove(&self, artifact: u64, credential: CredentialId) -> Result<(), IndexError> {
        self.0.remove(key(artifact, credential))?;
        Ok(())
    }

    /// Ends every credential's grant for an artifact; returns how many
    /// there were.
    pub fn remove_artifact(&self, artifact: u64) -> Result<u64, IndexError> {
        let mut removed = 0;
        for key in self.0.scan_prefix(artifact.to_be_bytes()).keys() {
            if self.0.remove(key?)?.is_some() {
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Each artifact some credential holds a grant for, once.
    pub fn artifacts(&self) -> Result<Vec<u64>, IndexError> {
        let mut out = Vec::new();
        for key in self.0.iter().keys() {
            let id = u64_key(&key?);
            if out.last() != Some(&id) {
                out.push(id);
            }
        }
        Ok(out)
    }
}
