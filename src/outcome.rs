//! The caches' one outcome vocabulary: what a cacheable request's answer
//! was (its `X-Cache` header and its metrics label alike) and why a blob
//! left the store. A leaf, shared by the JSON cache, downloads, the blob
//! store and the metrics that count them.

use http::header::{HeaderName, HeaderValue};

/// The header every cacheable answer carries its outcome in.
pub const X_CACHE: HeaderName = HeaderName::from_static("x-cache");

/// What the mirror did for a request on a cacheable route; a response
/// extension read once, where the request is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Answered from a fresh entry (or a young grant) without upstream.
    Hit,
    /// Upstream confirmed the entry with a free 304.
    Revalidated,
    /// Upstream sent a full answer that was stored.
    Miss,
    /// Answered by another request's upstream call or fill.
    Coalesced,
    /// Not storable: passed through.
    Bypass,
    /// Upstream failed and a stored answer stood in (opt-in).
    Stale,
    /// Blob bytes streamed from a fill still in progress.
    Filling,
}

impl CacheOutcome {
    /// The `X-Cache` value: upper case, the same word on every route (the
    /// download's redirect says what the blob endpoint will find: `HIT`,
    /// `COALESCED` or `MISS`).
    pub fn x_cache(self) -> HeaderValue {
        HeaderValue::from_static(match self {
            CacheOutcome::Hit => "HIT",
            CacheOutcome::Revalidated => "REVALIDATED",
            CacheOutcome::Miss => "MISS",
            CacheOutcome::Bypass => "BYPASS",
            CacheOutcome::Stale => "STALE",
            CacheOutcome::Coalesced => "COALESCED",
            CacheOutcome::Filling => "FILLING",
        })
    }

    pub(crate) fn label(self) -> &'static str {
        match self {
            CacheOutcome::Hit => "hit",
            CacheOutcome::Revalidated => "revalidated",
            CacheOutcome::Miss => "miss",
            CacheOutcome::Coalesced => "coalesced",
            CacheOutcome::Bypass => "bypass",
            CacheOutcome::Stale => "stale",
            CacheOutcome::Filling => "filling",
        }
    }

    /// Whether the answer came from the cache, for the hit ratio; `None`
    /// when the outcome is not one of the ratio's (`filling`).
    pub(crate) fn answered_by_cache(self) -> Option<bool> {
        match self {
            CacheOutcome::Hit | CacheOutcome::Revalidated | CacheOutcome::Coalesced => Some(true),
            CacheOutcome::Miss | CacheOutcome::Bypass | CacheOutcome::Stale => Some(false),
            CacheOutcome::Filling => None,
        }
    }

    /// Whether a direct call to GHES would have cost a rate-limit unit the
    /// mirror did not spend.
    pub(crate) fn saves_rate_limit(self) -> bool {
        matches!(
            self,
            CacheOutcome::Hit | CacheOutcome::Revalidated | CacheOutcome::Coalesced
        )
    }
}

/// Why a blob left the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Eviction {
    Quota,
    Expired,
    Deleted,
}

impl Eviction {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Eviction::Quota => "quota",
            Eviction::Expired => "expired",
            Eviction::Deleted => "deleted",
        }
    }
}
