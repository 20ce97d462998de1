//! Where verified zips live: the seam between the store's logic (lookup,
//! quota, LRU, expiry, fills) and the storage itself. The local filesystem
//! is the one implementation; the shared bucket (`shared/`) is a second
//! tier that fills it, not another `Backend`.
//!
//! Every method blocks: the store calls them on the blocking pool only.

use std::io;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;

use crate::error::FillError;
use crate::index::{BlobRecord, Index};

use super::local::repair::{RepairError, Report};

pub(crate) trait Backend: Send + Sync {
    /// Makes the verified staged file at `staged` the stored content that
    /// `record` names, for `artifact`: durable before it returns (the index
    /// record that makes it visible is written after).
    fn commit(&self, staged: &Path, artifact: u64, record: &BlobRecord) -> Result<(), FillError>;

    /// Opens the content `record` names for reading by byte range. Once
    /// open, a later `delete` does not cut the reader short.
    fn open(&self, record: &BlobRecord) -> io::Result<Arc<dyn StoredBlob>>;

    /// `artifact`, whose record is gone from the index, no longer uses
    /// `record`'s content: the content goes unless another artifact's
    /// record still names it.
    fn delete(&self, artifact: u64, record: &BlobRecord);

    /// Brings stored content and the index's blob records into agreement
    /// (at start; `rehash` re-reads every byte).
    fn scan(&self, index: &Index, rehash: bool) -> Result<Report, RepairError>;
}

/// Stored content opened for reading.
pub(crate) trait StoredBlob: Send + Sync {
    /// Up to `len` bytes from `pos`; fewer only at the end.
    fn read_at(&self, pos: u64, len: usize) -> io::Result<Bytes>;
}

/// Content held in memory, for the tests of what reads stored blobs.
#[cfg(test)]
impl StoredBlob for Bytes {
    fn read_at(&self, pos: u64, len: usize) -> io::Result<Bytes> {
        let start = usize::try_from(pos).map_or(self.len(), |p| p.min(self.len()));
        Ok(self.slice(start..(start + len).min(self.len())))
    }
}
