//! The clean-stop record: written as the last thing a process does when it
//! stopped with nothing half done (no fill cut, every blocking task
//! finished), read and removed as the first thing the next open does.
//!
//! Why: with 100 000 stored artifacts, bringing files, sidecars and records
//! into agreement reads 200 000 small files and made every start take
//! seconds. After a clean stop they agree already; only a crash (or a
//! second signal) can leave them apart, and a crash leaves no record, so
//! the next start reconciles in full. The record also carries the totals
//! the start would otherwise count by reading every record.

use serde::{Deserialize, Serialize};

/// Versioned: a release that changes what a clean store means uses a new
/// key, so an older release's record never vouches for the newer layout.
pub(super) const KEY: &[u8] = b"instance/clean-stop/v1";

/// What a clean stop left, so the next start need not count it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CleanStop {
    /// Bytes of cached JSON (meta and bodies), as [`JsonTable::bytes`]
    /// counts them.
    ///
    /// [`JsonTable::bytes`]: super::JsonTable::bytes
    pub json_bytes: u64,
    /// Sum of the stored blobs' record sizes, and their count: what the
    /// blob store counts against its quota.
    pub blob_bytes: u64,
    pub blobs: u64,
}

/// How an index was found at open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opened {
    /// The last process stopped cleanly: the index agrees with the files.
    Clean(CleanStop),
    /// A crash, a first start, or a record that does not decode: whoever
    /// owns files beside the index must reconcile them.
    Unknown,
}

/// Reads and removes the record, flushing the removal before the index is
/// used: from here on it may change, and a crash must find no record.
pub(super) fn take(db: &sled::Db) -> Result<Opened, sled::Error> {
    let Some(value) = db.remove(KEY)? else {
        return Ok(Opened::Unknown);
    };
    db.flush()?;
    Ok(serde_json::from_slice(&value).map_or(Opened::Unknown, Opened::Clean))
}

#[cfg(test)]
mod tests {
    use super::super::tests::{meta, record};
    use super::super::Index;
    use super::*;

    #[test]
    fn a_seal_vouches_for_one_open_only() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(index.opened(), Opened::Unknown, "a first start");
        index
            .json()
            .put(b"k", 1, &meta("\"m\""), Some(b"body"))
            .unwrap();
        index.blobs().put(1, &record("a"), 1).unwrap();
        let json_bytes = index.json().bytes();
        index.seal(5, 1).unwrap();
        drop(index);

        let index = Index::open(dir.path(), 1 << 20).unwrap();
        let stop = CleanStop {
            json_bytes,
            blob_bytes: 5,
            blobs: 1,
        };
        assert_eq!(index.opened(), Opened::Clean(stop));
        assert_eq!(index.json().bytes(), json_bytes, "taken from the seal");
        drop(index);
        // Opened, the index may have changed: no seal is left for a crash.
        let index = Index::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(index.opened(), Opened::Unknown);
        assert_eq!(index.json().bytes(), json_bytes, "counted again");
    }

    #[test]
    fn a_seal_that_does_not_decode_vouches_for_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        db.insert(KEY, b"not json".as_slice()).unwrap();
        assert_eq!(take(&db).unwrap(), Opened::Unknown);
        assert_eq!(db.get(KEY).unwrap(), None, "removed all the same");
    }
}
