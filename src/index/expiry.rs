//! Expiry lines: a tree of `expires_at ++ artifact` keys beside a table of
//! records that carry an `expires_at` (blob records, facts), changed in the
//! same transaction as the record, so the expired are one range from the
//! start and housekeeping reads only them instead of every record.

use serde::de::DeserializeOwned;
use sled::transaction::{TransactionalTree, UnabortableTransactionError};

use super::stamp::u64_key;

/// A record with an expiry.
pub(super) trait Expiring: DeserializeOwned {
    fn expires_at(&self) -> Option<u64>;
}

/// `expires_at ++ id`, big-endian: soonest first.
fn key(expires_at: u64, id: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&expires_at.to_be_bytes());
    k[8..].copy_from_slice(&id.to_be_bytes());
    k
}

/// The line of an encoded record, if it decodes and has an `expires_at`.
fn line_of<T: Expiring>(id: u64, encoded: &[u8]) -> Option<[u8; 16]> {
    let record: T = serde_json::from_slice(encoded).ok()?;
    Some(key(record.expires_at()?, id))
}

/// Inside the record's transaction: drops the line of the record `old`
/// (as it was encoded) and draws the one of `new`.
pub(super) fn redraw_line<T: Expiring>(
    expiry: &TransactionalTree,
    id: u64,
    old: Option<&[u8]>,
    new: Option<&T>,
) -> Result<(), UnabortableTransactionError> {
    if let Some(line) = old.and_then(|v| line_of::<T>(id, v)) {
        expiry.remove(&line)?;
    }
    if let Some(t) = new.and_then(Expiring::expires_at) {
        expiry.insert(&key(t, id), &[])?;
    }
    Ok(())
}

/// The ids whose line is at `now` (Unix seconds) or before.
pub(super) fn expired(expiry: &sled::Tree, now: u64) -> Result<Vec<u64>, sled::Error> {
    expiry
        .range(..key(now.saturating_add(1), 0))
        .keys()
        .map(|k| k.map(|k| u64_key(k.get(8..).unwrap_or_default())))
        .collect()
}

/// Draws every record's line afresh: once, for an index written before
/// the lines were kept.
pub(super) fn draw_all<T: Expiring>(
    records: &sled::Tree,
    expiry: &sled::Tree,
) -> Result<(), sled::Error> {
    expiry.clear()?;
    for item in records.iter() {
        let (k, v) = item?;
        if let Some(line) = line_of::<T>(u64_key(&k), &v) {
            expiry.insert(line, &[])?;
        }
    }
    Ok(())
}
