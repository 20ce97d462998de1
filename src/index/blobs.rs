//! Blob records: `blobs` (artifact → the stored zip's record),
//! `blob_access` (artifact → last use), `blob_lru` (last use ++ artifact,
//! oldest first) and `blob_expiry` (`expires_at` ++ artifact, soonest
//! first). They change together, in one transaction.

use serde::{Deserialize, Serialize};
use sled::transaction::ConflictableTransactionError;
use sled::Transactional;

use super::expiry::{self, Expiring};
use super::stamp::{lru_key, split_stamp, u64_key};
use super::IndexError;

/// A stored zip.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BlobRecord {
    pub sha256: String,
    pub size: u64,
    pub name: String,
    pub expires_at: Option<u64>,
    /// Unix seconds.
    pub stored_at: u64,
    /// The repository of the download that stored it (`n:owner/name` or
    /// `i:id`); absent in records written before it was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repo: Option<String>,
}

#[derive(Clone)]
pub struct BlobTable {
    pub(super) db: sled::Db,
    pub(super) records: sled::Tree,
    pub(super) access: sled::Tree,
    pub(super) lru: sled::Tree,
    pub(super) expiry: sled::Tree,
}

impl Expiring for BlobRecord {
    fn expires_at(&self) -> Option<u64> {
        self.expires_at
    }
}

type Tx = ConflictableTransactionError<()>;

/// One record as read back: its value, or why it does not decode.
pub type Decoded<T> = Result<T, IndexError>;

impl BlobTable {
    pub fn get(&self, artifact: u64) -> Result<Option<BlobRecord>, IndexError> {
        match self.records.get(artifact.to_be_bytes())? {
            Some(v) => Ok(Some(serde_json::from_slice(&v)?)),
            None => Ok(None),
        }
    }

    /// Every blob record, for sweeps (expiry, shared files, repair); one
    /// that does not decode comes back as its error, for repair to drop.
    pub fn records(&self) -> Result<Vec<(u64, Decoded<BlobRecord>)>, IndexError> {
        self.records
            .iter()
            .map(|item| {
                let (k, v) = item?;
                Ok((u64_key(&k), serde_json::from_slice(&v).map_err(Into::into)))
            })
            .collect()
    }

    /// The artifacts whose record says they expired by `now` (Unix
    /// seconds): one range of the expiry lines, not every record (a pass
    /// over 100 000 records cost housekeeping tens of MB each time).
    pub fn expired(&self, now: u64) -> Result<Vec<u64>, IndexError> {
        Ok(expiry::expired(&self.expiry, now)?)
    }

    /// Writes a blob record and marks it used at `used_ms`. Flushed before
    /// it returns: the record is what makes a stored file visible after a
    /// restart.
    pub fn put(&self, artifact: u64, record: &BlobRecord, used_ms: u64) -> Result<(), IndexError> {
        self.put_unflushed(artifact, record, used_ms)?;
        self.db.flush()?;
        Ok(())
    }

    /// [`BlobTable::put`] without the flush, for many records flushed once
    /// after (repair rebuilding a lost index: one fsync per record made
    /// 100 000 records take half a minute).
    pub fn put_unflushed(
        &self,
        artifact: u64,
        record: &BlobRecord,
        used_ms: u64,
    ) -> Result<(), IndexError> {
        let encoded = serde_json::to_vec(record)?;
        let id = artifact.to_be_bytes();
        let trees = (&self.records, &self.access, &self.lru, &self.expiry);
        trees.transaction(|(records, access, lru, lines)| {
            let old = records.insert(&id, encoded.as_slice())?;
            expiry::redraw_line(lines, artifact, old.as_deref(), Some(record))?;
            if let Some(old) = access.insert(&id, &used_ms.to_be_bytes())? {
                lru.remove(lru_key(split_stamp(&old).0, &id))?;
            }
            lru.insert(lru_key(used_ms, &id), &[])?;
            Ok::<_, Tx>(())
        })?;
        Ok(())
    }

    /// Writes a record that does not decode (as a torn or foreign write
    /// would leave), for the tests of what reads it back.
    #[cfg(test)]
    pub fn put_undecodable(&self, artifact: u64) -> Result<(), IndexError> {
        self.records
            .insert(artifact.to_be_bytes(), b"{not json".as_slice())?;
        Ok(())
    }

    pub fn touch(&self, artifact: u64, now_ms: u64) -> Result<(), IndexError> {
        let id = artifact.to_be_bytes();
        (&self.access, &self.lru).transaction(|(access, lru)| {
            if let Some(old) = access.insert(&id, &now_ms.to_be_bytes())? {
                lru.remove(lru_key(split_stamp(&old).0, &id))?;
            }
            lru.insert(lru_key(now_ms, &id), &[])?;
            Ok::<_, Tx>(())
        })?;
        Ok(())
    }

    /// Drops the record; returns it when there was a readable one.
    pub fn remove(&self, artifact: u64) -> Result<Option<BlobRecord>, IndexError> {
        let id = artifact.to_be_bytes();
        let trees = (&self.records, &self.access, &self.lru, &self.expiry);
        let old = trees.transaction(|(records, access, lru, lines)| {
            if let Some(old) = access.remove(&id)? {
                lru.remove(lru_key(split_stamp(&old).0, &id))?;
            }
            let old = records.remove(&id)?;
            expiry::redraw_line::<BlobRecord>(lines, artifact, old.as_deref(), None)?;
            Ok::<_, Tx>(old)
        })?;
        Ok(old.and_then(|v| serde_json::from_slice(&v).ok()))
    }

    /// The least recently used stored blob.
    pub fn least_recent(&self) -> Result<Option<u64>, IndexError> {
        Ok(self.lru.first()?.map(|(k, _)| u64_key(&split_stamp(&k).1)))
    }
}
