//! Cached JSON: `json_meta` (key → last-validated time + headers and
//! policy, rewritten on every revalidation, so small), `json_body` (key →
//! body, written only when upstream sends a new one) and `json_lru` (time ++
//! key, oldest first, for eviction by size and age); and the repository
//! aliases learned from JSON bodies. Keys are the JSON cache's own bytes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::HeaderMap;
use http_cache_semantics::CachePolicy;
use serde::{Deserialize, Serialize};
use sled::transaction::ConflictableTransactionError;
use sled::{IVec, Transactional};

use super::stamp::{lru_key, split_stamp};
use super::IndexError;

/// What is stored of an answer besides its body.
#[derive(Serialize, Deserialize)]
pub struct JsonMeta {
    #[serde(with = "http_serde::header_map")]
    pub headers: HeaderMap,
    pub policy: CachePolicy,
}

/// A cached JSON record as read back.
pub struct JsonRecord {
    /// Unix milliseconds.
    pub validated_at: u64,
    pub meta: JsonMeta,
    pub body: Bytes,
}

#[derive(Clone)]
pub struct JsonTable {
    pub(super) meta: sled::Tree,
    pub(super) body: sled::Tree,
    pub(super) lru: sled::Tree,
    pub(super) aliases: sled::Tree,
    /// Bytes of cached JSON (meta + body), kept in memory; recounted at open.
    pub(super) bytes: Arc<AtomicU64>,
}

type Tx = ConflictableTransactionError<()>;

impl JsonTable {
    /// The record under `key`; one that does not decode is dropped (it
    /// reads as a miss and the next answer replaces it).
    pub fn get(&self, key: &[u8]) -> Result<Option<JsonRecord>, IndexError> {
        let Some(stamped) = self.meta.get(key)? else {
            return Ok(None);
        };
        let Some(body) = self.body.get(key)? else {
            // Written by a version that did not write both at once.
            self.remove(key)?;
            return Ok(None);
        };
        let (validated_at, meta) = split_stamp(&stamped);
        match serde_json::from_slice(&meta) {
            Ok(meta) => Ok(Some(JsonRecord {
                validated_at,
                meta,
                body: Bytes::copy_from_slice(&body),
            })),
            Err(e) => {
                tracing::warn!(error = %e, "unreadable cached JSON record dropped");
                self.remove(key)?;
                Ok(None)
            }
        }
    }

    /// Stores meta (always) and body (when upstream sent a new one), with
    /// its LRU line, in one transaction: a crash leaves the old record or
    /// the new one. `validated_at` is in Unix milliseconds.
    pub fn put(
        &self,
        key: &[u8],
        validated_at: u64,
        meta: &JsonMeta,
        body: Option<&[u8]>,
    ) -> Result<(), IndexError> {
        let encoded = serde_json::to_vec(meta)?;
        let mut stamped = Vec::with_capacity(8 + encoded.len());
        stamped.extend_from_slice(&validated_at.to_be_bytes());
        stamped.extend_from_slice(&encoded);
        let added = stamped.len() as u64 + body.map_or(0, |b| b.len() as u64);
        let removed = (&self.meta, &self.body, &self.lru).transaction(|(meta, bodies, lru)| {
            let mut removed = 0u64;
            if let Some(body) = body {
                if let Some(old) = bodies.insert(key, body)? {
                    removed += old.len() as u64;
                }
            }
            if let Some(old) = meta.insert(key, stamped.as_slice())? {
                removed += old.len() as u64;
                lru.remove(lru_key(split_stamp(&old).0, key))?;
            }
            lru.insert(lru_key(validated_at, key), &[])?;
            Ok::<_, Tx>(removed)
        })?;
        self.account(added, removed);
        Ok(())
    }

    pub fn remove(&self, key: &[u8]) -> Result<(), IndexError> {
        let removed = (&self.meta, &self.body, &self.lru).transaction(|(meta, bodies, lru)| {
            let mut removed = 0;
            if let Some(old) = meta.remove(key)? {
                removed += old.len() as u64;
                lru.remove(lru_key(split_stamp(&old).0, key))?;
            }
            if let Some(old) = bodies.remove(key)? {
                removed += old.len() as u64;
            }
            Ok::<_, Tx>(removed)
        })?;
        self.account(0, removed);
        Ok(())
    }

    /// Removes every record whose key starts with `prefix`; returns how many.
    pub fn remove_prefix(&self, prefix: &[u8]) -> Result<usize, IndexError> {
        let keys: Vec<IVec> = self
            .meta
            .scan_prefix(prefix)
            .keys()
            .collect::<Result<_, _>>()?;
        for key in &keys {
            self.remove(key)?;
        }
        Ok(keys.len())
    }

    /// Drops the least recently validated records until the JSON bytes fit
    /// `max_bytes`, and every record validated before `oldest`. Returns the
    /// keys dropped so the memory tier can follow.
    pub fn evict(&self, max_bytes: u64, oldest: u64) -> Result<Vec<Vec<u8>>, IndexError> {
        let mut dropped = Vec::new();
        while let Some((line, _)) = self.lru.first()? {
            let (time, key) = split_stamp(&line);
            if self.bytes() <= max_bytes && time >= oldest {
                break;
            }
            self.remove(&key)?;
            // A record whose meta vanished leaves its LRU line behind.
            self.lru.remove(&line)?;
            dropped.push(key.to_vec());
        }
        Ok(dropped)
    }

    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    fn account(&self, added: u64, removed: u64) {
        let _ = self
            .bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some((v + added).saturating_sub(removed))
            });
    }

    /// Remembers that two repository ids name the same repository
    /// (`n:owner/name` and `i:id`), both ways.
    pub fn alias_put(&self, a: &str, b: &str) -> Result<(), IndexError> {
        if self.aliases.get(a)?.as_deref() != Some(b.as_bytes()) {
            self.aliases.transaction(|aliases| {
                aliases.insert(a.as_bytes(), b.as_bytes())?;
                aliases.insert(b.as_bytes(), a.as_bytes())?;
                Ok::<_, Tx>(())
            })?;
        }
        Ok(())
    }

    pub fn alias_get(&self, a: &str) -> Result<Option<String>, IndexError> {
        Ok(self
            .aliases
            .get(a)?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }
}
