//! Key and value layouts shared by the tables: big-endian times and ids in
//! front, so sled's byte order is time or id order.

use sled::IVec;

pub(super) fn u64_key(k: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = k.len().min(8);
    b[..n].copy_from_slice(&k[..n]);
    u64::from_be_bytes(b)
}

/// `time ++ key`: LRU lines, oldest first.
pub(super) fn lru_key(time: u64, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + key.len());
    k.extend_from_slice(&time.to_be_bytes());
    k.extend_from_slice(key);
    k
}

/// Splits `time (8 bytes, big-endian) ++ rest`.
pub(super) fn split_stamp(v: &IVec) -> (u64, IVec) {
    let mut time = [0u8; 8];
    let n = v.len().min(8);
    time[..n].copy_from_slice(&v[..n]);
    (u64::from_be_bytes(time), v.subslice(n, v.len() - n))
}

/// `expires_at ++ id`: expiry lines, soonest first, so the expired are one
/// range from the start and a sweep reads only them.
pub(super) fn expiry_key(expires_at: u64, id: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&expires_at.to_be_bytes());
    k[8..].copy_from_slice(&id.to_be_bytes());
    k
}

/// The ids of the expiry lines in `tree` up to and including `now`.
pub(super) fn expired_ids(tree: &sled::Tree, now: u64) -> Result<Vec<u64>, sled::Error> {
    let end = expiry_key(now.saturating_add(1), 0);
    tree.range(..end)
        .keys()
        .map(|k| k.map(|k| u64_key(k.get(8..).unwrap_or_default())))
        .collect()
}
