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
