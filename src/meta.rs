//! The JSON cache for the list and get routes.
//!
//! Entries are partitioned by credential: the key starts with the repository
//! and the credential id, so an answer is only ever served to the credential
//! upstream gave it to. Policy is `http-cache-semantics` evaluated as a
//! *private* cache inside that partition (GitHub marks these answers
//! `private`). By default every request is revalidated upstream with the
//! credential's own ETag; a 304 costs no rate limit and keeps lists current.
//!
//! Two tiers: moka in memory (bounded by bytes), sled on disk (survives a
//! restart; bounded by bytes and age, least recently validated out first).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{request, Method, Request, Response, StatusCode};
use http_cache_semantics::{AfterResponse, CacheOptions, CachePolicy};
use serde::{Deserialize, Serialize};

use crate::access_log::UpstreamStatus;
use crate::blobs::{BlobStore, Facts};
use crate::body::{self, Body};
use crate::clock::{millis, now_secs, unix_ms};
use crate::config::{Revalidate, Settings};
use crate::credential::CredentialId;
use crate::error::MirrorError;
use crate::flight::Flights;
use crate::index::Index;
use crate::metrics::CacheOutcome;
use crate::rewrite::{PublicBase, Rewriter};
use crate::router::{ArtifactRoute, RepoRef};
use crate::upstream::{ClientInfo, Upstream};

/// Largest JSON answer the cache takes in (a 100-artifact page is ~70 KB).
const MAX_JSON_BYTES: usize = 16 * 1024 * 1024;

/// Request headers that decide the answer, besides path and credential.
const VARYING: [HeaderName; 2] = [
    header::ACCEPT,
    HeaderName::from_static("x-github-api-version"),
];

/// `X-Cache` for how an answer was produced. Coalesced callers are told
/// what the shared trip was (the flight's leader's status).
fn x_cache(outcome: CacheOutcome) -> HeaderValue {
    HeaderValue::from_static(match outcome {
        CacheOutcome::Hit => "HIT",
        CacheOutcome::Revalidated => "REVALIDATED",
        CacheOutcome::Miss => "MISS",
        CacheOutcome::Bypass => "BYPASS",
        CacheOutcome::Stale => "STALE",
        CacheOutcome::Coalesced => "COALESCED",
        CacheOutcome::Filling => "FILLING",
    })
}

pub const X_CACHE: HeaderName = HeaderName::from_static("x-cache");

/// One cached answer: upstream's headers and body with URLs rewritten to the
/// mirror, and the policy that says when it must be revalidated.
#[derive(Debug)]
pub struct Entry {
    /// Upstream's headers plus `Content-Length` and an `X-Cache` slot: ready
    /// to be cloned into a response without growing (see [`Entry::respond`]).
    headers: HeaderMap,
    body: Bytes,
    policy: CachePolicy,
    /// Unix milliseconds of the last time upstream confirmed it (200 or 304).
    validated_at: u64,
    /// Unix milliseconds until which it may be answered without upstream:
    /// `validated_at + min(policy's time to live then, max_fresh)`.
    fresh_until: u64,
    /// Unix milliseconds of the `validated_at` last written to disk.
    persisted_at: u64,
}

/// What goes to disk besides the body.
#[derive(Serialize, Deserialize)]
struct StoredMeta {
    #[serde(with = "http_serde::header_map")]
    headers: HeaderMap,
    policy: CachePolicy,
}

/// Headers whose change on a 304 is written to disk at once: validators,
/// pagination and what decides freshness. Anything else (rate-limit headers,
/// `Date`) reaches the disk with the next write (see [`PERSIST_EVERY`]).
const PERSISTED_ON_CHANGE: [HeaderName; 7] = [
    header::ETAG,
    header::LAST_MODIFIED,
    header::LINK,
    header::CACHE_CONTROL,
    header::EXPIRES,
    header::PRAGMA,
    header::VARY,
];

/// A revalidated entry whose headers that matter did not change is written
/// to disk at most this often. The memory tier is always current; after a
/// restart the disk's older `validated_at` (and policy) only make the entry
/// look older than it is, i.e. cost at most one more revalidation sooner.
const PERSIST_EVERY: Duration = Duration::from_secs(30);

impl Entry {
    /// `headers` as upstream sent them (URLs rewritten, no `Content-Length`).
    fn new(
        mut headers: HeaderMap,
        body: Bytes,
        policy: CachePolicy,
        validated_at: u64,
        persisted_at: u64,
        max_fresh: Duration,
    ) -> Entry {
        let validated = UNIX_EPOCH + Duration::from_millis(validated_at);
        let ttl = millis(policy.time_to_live(validated)).min(millis(max_fresh));
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        headers.insert(X_CACHE, x_cache(CacheOutcome::Hit));
        Entry {
            headers,
            body,
            policy,
            validated_at,
            fresh_until: validated_at.saturating_add(ttl),
            persisted_at,
        }
    }

    fn etag(&self) -> Option<&HeaderValue> {
        self.headers.get(header::ETAG)
    }

    /// The headers as stored on disk: upstream's, without what `new` adds.
    fn stored_headers(&self) -> HeaderMap {
        let mut headers = self.headers.clone();
        headers.remove(header::CONTENT_LENGTH);
        headers.remove(X_CACHE);
        headers
    }

    /// Fresh by upstream's policy (capped by `max_fresh`), computed when the
    /// entry was validated, unless the request asks for revalidation. The
    /// key holds the credential, `Accept` and `X-GitHub-Api-Version` (all
    /// the policy's request sees), so `Vary` needs no check here.
    fn is_fresh(&self, request_headers: &HeaderMap, now: SystemTime) -> bool {
        unix_ms(now) < self.fresh_until && !self.request_refuses(request_headers, now)
    }

    /// Request directives that rule this entry out (RFC 9111 §5.2.1, as
    /// `http-cache-semantics` reads them): `no-cache` (or `Pragma:
    /// no-cache`), `max-age` the entry is older than, `min-fresh` beyond its
    /// time to live. `max-stale` is not honoured: a stale entry revalidates.
    fn request_refuses(&self, request_headers: &HeaderMap, now: SystemTime) -> bool {
        let pragma_no_cache = request_headers
            .get_all(header::PRAGMA)
            .iter()
            .any(|v| v.to_str().is_ok_and(|v| v.contains("no-cache")));
        if pragma_no_cache {
            return true;
        }
        let seconds = |v: Option<&str>| {
            v.map(|v| v.trim().trim_matches('"'))
                .and_then(|v| v.parse().ok())
                .map(Duration::from_secs)
        };
        let directives = request_headers
            .get_all(header::CACHE_CONTROL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','));
        for directive in directives {
            let (name, value) = match directive.split_once('=') {
                Some((name, value)) => (name.trim(), Some(value)),
                None => (directive.trim(), None),
            };
            if name.eq_ignore_ascii_case("no-cache") {
                return true;
            }
            if name.eq_ignore_ascii_case("max-age") {
                if let Some(max_age) = seconds(value) {
                    if self.policy.age(now) > max_age {
                        return true;
                    }
                }
            }
            if name.eq_ignore_ascii_case("min-fresh") {
                if let Some(min_fresh) = seconds(value) {
                    if self.policy.time_to_live(now) < min_fresh {
                        return true;
                    }
                }
            }
        }
        false
    }

    /// The entry as an answer, its outcome in `X-Cache` and as the
    /// extension the request is counted by.
    fn respond(&self, status: CacheOutcome, if_none_match: Option<&HeaderValue>) -> Response<Body> {
        let not_modified = match (if_none_match, self.etag()) {
            (Some(wanted), Some(etag)) => etag_matches(wanted, etag),
            _ => false,
        };
        // A clone of a map that already holds every header: no growth, no
        // rehash; the `X-Cache` slot is overwritten in place.
        let mut headers = self.headers.clone();
        if status != CacheOutcome::Hit {
            if let Some(slot) = headers.get_mut(X_CACHE) {
                *slot = x_cache(status);
            }
        }
        let mut response = if not_modified {
            headers.remove(header::CONTENT_LENGTH);
            let mut response = Response::new(body::empty());
            *response.status_mut() = StatusCode::NOT_MODIFIED;
            response
        } else {
            Response::new(body::full(self.body.clone()))
        };
        *response.headers_mut() = headers;
        response.extensions_mut().insert(status);
        if status == CacheOutcome::Stale {
            // Kept when a coalesced caller's outcome is overwritten.
            response.extensions_mut().insert(FromStaleEntry);
        }
        response
    }
}

/// Marks an answer `stale_if_error` gave from an entry while upstream
/// failed, for the caller that made the trip and those that joined it: no
/// upstream yes stands behind it (a download's renewal must not use it).
#[derive(Debug, Clone, Copy)]
pub struct FromStaleEntry;

/// Whether any of `names` has other values in `a` than in `b`.
fn any_changed(a: &HeaderMap, b: &HeaderMap, names: &[HeaderName]) -> bool {
    names
        .iter()
        .any(|name| !a.get_all(name).iter().eq(b.get_all(name).iter()))
}

/// A whole upstream (or mirror) answer kept so coalesced callers can share it.
#[derive(Debug)]
struct Buffered {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Buffered {
    fn error(e: &MirrorError) -> Buffered {
        Buffered {
            status: e.status(),
            headers: e.headers(),
            body: e.body(),
        }
    }

    fn respond(&self) -> Response<Body> {
        let mut response = Response::new(body::full(self.body.clone()));
        *response.status_mut() = self.status;
        *response.headers_mut() = self.headers.clone();
        response
            .headers_mut()
            .insert(X_CACHE, x_cache(CacheOutcome::Bypass));
        response.extensions_mut().insert(CacheOutcome::Bypass);
        response
    }
}

/// The result of one trip upstream, shared by every coalesced caller.
#[derive(Debug)]
enum Outcome {
    Entry {
        entry: Arc<Entry>,
        status: CacheOutcome,
        upstream: Option<StatusCode>,
    },
    Passthrough(Buffered),
}

/// Cache key: the repository first (so a DELETE can drop a repository's
/// entries by prefix), then the credential, then what selects the answer.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key(Vec<u8>);

impl Key {
    fn new(
        route: &ArtifactRoute,
        credential: CredentialId,
        parts: &request::Parts,
        public_base: &str,
    ) -> Key {
        use std::io::Write as _;
        let (repo, list) = match route {
            ArtifactRoute::ListForRepo { repo } => (repo, Some(false)),
            ArtifactRoute::ListForRun { repo, .. } => (repo, Some(true)),
            ArtifactRoute::Get { repo, .. }
            | ArtifactRoute::Delete { repo, .. }
            | ArtifactRoute::Download { repo, .. } => (repo, None),
        };
        let mut key = Vec::with_capacity(160 + public_base.len());
        push_repo_prefix(&mut key, repo);
        // Raw bytes, length first: 9 (`anonymous`) or 32 (the MAC, which may
        // hold any byte, the separator too).
        let credential = credential.as_bytes();
        key.push(credential.len() as u8);
        key.extend_from_slice(credential);
        key.push(0);
        // Writing to a Vec cannot fail.
        let _ = match route {
            ArtifactRoute::ListForRepo { .. } => key.write_all(b"artifacts"),
            ArtifactRoute::ListForRun { run_id, .. } => write!(key, "runs/{run_id}/artifacts"),
            ArtifactRoute::Get { artifact_id, .. }
            | ArtifactRoute::Delete { artifact_id, .. }
            | ArtifactRoute::Download { artifact_id, .. } => {
                write!(key, "artifacts/{artifact_id}")
            }
        };
        key.push(b'?');
        push_normalized_query(&mut key, parts.uri.query(), list);
        for name in &VARYING {
            key.push(0);
            if let Some(v) = parts.headers.get(name) {
                key.extend_from_slice(v.as_bytes());
            }
        }
        key.push(0);
        key.extend_from_slice(public_base.as_bytes());
        Key(key)
    }
}

/// `n:owner/name\0` or `i:id\0`: what all keys of a repository start with.
fn repo_prefix(repo: &RepoRef) -> Vec<u8> {
    let mut prefix = Vec::new();
    push_repo_prefix(&mut prefix, repo);
    prefix
}

/// The key prefixes of a repository's cached JSON: its own form's and, when
/// known, the other path form's (`/repos/o/n` ↔ `/repositories/id`). Shared
/// by a DELETE's purge and `cache purge --repo`.
pub fn repo_prefixes(index: &Index, repo: &RepoRef) -> Result<Vec<Vec<u8>>, sled::Error> {
    let mut prefixes = vec![repo_prefix(repo)];
    if let Some(alias) = index.alias_get(repo_id(repo).as_bytes())? {
        let mut prefix = alias.to_vec();
        prefix.push(0);
        prefixes.push(prefix);
    }
    Ok(prefixes)
}

fn push_repo_prefix(out: &mut Vec<u8>, repo: &RepoRef) {
    push_repo_id(out, repo);
    out.push(0);
}

/// `n:owner/name` or `i:id`: how the cache names a repository (its keys,
/// aliases, and the `repo` of facts and blob records).
pub fn repo_id(repo: &RepoRef) -> String {
    let mut id = Vec::new();
    push_repo_id(&mut id, repo);
    String::from_utf8(id).expect("repository ids are built from strings")
}

fn push_repo_id(out: &mut Vec<u8>, repo: &RepoRef) {
    use std::io::Write as _;
    match repo {
        // GitHub names are case-insensitive.
        RepoRef::Named { owner, name } => {
            out.extend_from_slice(b"n:");
            out.extend(owner.bytes().map(|b| b.to_ascii_lowercase()));
            out.push(b'/');
            out.extend(name.bytes().map(|b| b.to_ascii_lowercase()));
        }
        RepoRef::Id(id) => {
            let _ = write!(out, "i:{id}");
        }
    }
}

/// Longest `name` value the cache keys on: GitHub's artifact names are far
/// shorter, and a longer value is forwarded without being stored.
const MAX_NAME_PARAM: usize = 256;

/// Whether an answer to this query may be stored: only the parameters the
/// route documents (`per_page`, `page`, `name`; `direction` on a run's list;
/// none on a get), each once, with a value of their form. Anything else is
/// forwarded uncached (`BYPASS`): GHES still decides what it means, but an
/// arbitrary parameter cannot add cache entries or spend rate limit on
/// answers no one else will ask for.
fn cacheable_query(route: &ArtifactRoute, query: Option<&str>) -> bool {
    let known: &[&str] = match route {
        ArtifactRoute::ListForRepo { .. } => &["per_page", "page", "name"],
        ArtifactRoute::ListForRun { .. } => &["per_page", "page", "name", "direction"],
        _ => &[],
    };
    let digits =
        |v: &str, max: usize| (1..=max).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_digit());
    let mut seen = [false; 4];
    query
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .all(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let Some(i) = known.iter().position(|k| *k == name) else {
                return false;
            };
            if std::mem::replace(&mut seen[i], true) {
                return false; // Repeated: which one upstream takes is its business.
            }
            match name {
                "per_page" => digits(value, 3) && matches!(value.parse(), Ok(1..=100u8)),
                "page" => digits(value, 6),
                "direction" => matches!(value, "asc" | "desc"),
                _ => (1..=MAX_NAME_PARAM).contains(&value.len()),
            }
        })
}

/// Sorted pairs with GitHub's defaults made explicit, so `?page=1&per_page=30`
/// and no query share an entry. `list` is `Some(is_run_list)` for lists.
#[cfg(test)]
fn normalized_query(query: Option<&str>, list: Option<bool>) -> String {
    let mut out = Vec::new();
    push_normalized_query(&mut out, query, list);
    String::from_utf8(out).expect("built from a str")
}

/// [`normalized_query`] appended to `out`.
fn push_normalized_query(out: &mut Vec<u8>, query: Option<&str>, list: Option<bool>) {
    let mut pairs: Vec<(&str, &str)> = query
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
        .collect();
    if let Some(run_list) = list {
        let defaults: &[(&str, &str)] = if run_list {
            &[("per_page", "30"), ("page", "1"), ("direction", "desc")]
        } else {
            &[("per_page", "30"), ("page", "1")]
        };
        for &(name, value) in defaults {
            if !pairs.iter().any(|(n, _)| *n == name) {
                pairs.push((name, value));
            }
        }
    }
    pairs.sort_unstable();
    for (i, (name, value)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push(b'&');
        }
        out.extend_from_slice(name.as_bytes());
        out.push(b'=');
        out.extend_from_slice(value.as_bytes());
    }
}

/// Weak comparison (RFC 9110 §8.8.3.2): GitHub flips between `W/"x"` and
/// `"x"` for one representation. Handles lists and `*`.
pub fn etag_matches(if_none_match: &HeaderValue, etag: &HeaderValue) -> bool {
    let opaque = |t: &str| t.trim().trim_start_matches("W/").to_owned();
    let (Ok(wanted), Ok(etag)) = (if_none_match.to_str(), etag.to_str()) else {
        return false;
    };
    let etag = opaque(etag);
    wanted
        .split(',')
        .any(|w| w.trim() == "*" || opaque(w) == etag)
}

/// The two tiers.
struct Store {
    hot: moka::future::Cache<Key, Arc<Entry>>,
    index: Index,
    disk_bytes: u64,
    max_age: Duration,
    max_fresh: Duration,
}

/// What [`Store::put`] writes to disk besides the memory tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Persist {
    /// A new body: meta and body.
    Body,
    /// Revalidated: the meta (validation time, headers, policy).
    Meta,
    /// Revalidated, nothing that matters changed and the disk is recent
    /// enough: memory only.
    No,
}

impl Store {
    async fn get(&self, key: &Key) -> Option<Arc<Entry>> {
        let oldest = unix_ms(SystemTime::now()).saturating_sub(millis(self.max_age));
        if let Some(entry) = self.hot.get(key).await {
            if entry.validated_at >= oldest {
                return Some(entry);
            }
        }
        // Boxed: the disk path's futures (moka insert, invalidate) would
        // otherwise enlarge every hit's future.
        Box::pin(self.load(key, oldest)).await
    }

    /// The disk tier's record, brought into memory.
    async fn load(&self, key: &Key, oldest: u64) -> Option<Arc<Entry>> {
        let record = match self.index.json_get(&key.0) {
            Ok(Some(record)) if record.validated_at >= oldest => record,
            Ok(_) => return None,
            Err(e) => {
                tracing::warn!(error = %e, "index read failed; treating as a miss");
                return None;
            }
        };
        let meta: StoredMeta = match serde_json::from_slice(&record.meta) {
            Ok(meta) => meta,
            Err(e) => {
                tracing::warn!(error = %e, "unreadable cached JSON record dropped");
                self.remove(key).await;
                return None;
            }
        };
        // Freshness is recomputed from the stored policy and validation time
        // (so a changed `max_fresh` applies at once).
        let entry = Arc::new(Entry::new(
            meta.headers,
            Bytes::copy_from_slice(&record.body),
            meta.policy,
            record.validated_at,
            record.validated_at,
            self.max_fresh,
        ));
        self.hot.insert(key.clone(), entry.clone()).await;
        Some(entry)
    }

    async fn put(&self, key: &Key, entry: Arc<Entry>, persist: Persist) {
        if persist != Persist::No {
            let meta = StoredMeta {
                headers: entry.stored_headers(),
                policy: entry.policy.clone(),
            };
            let stored = serde_json::to_vec(&meta)
                .map_err(|e| e.to_string())
                .and_then(|meta| {
                    let body = (persist == Persist::Body).then_some(entry.body.as_ref());
                    self.index
                        .json_put(&key.0, entry.validated_at, &meta, body)
                        .map_err(|e| e.to_string())
                });
            if let Err(e) = stored {
                tracing::warn!(error = %e, "cached JSON not persisted");
            }
        }
        self.hot.insert(key.clone(), entry).await;
        if persist == Persist::No {
            return; // Nothing added to disk: nothing to evict.
        }
        let oldest = unix_ms(SystemTime::now()).saturating_sub(millis(self.max_age));
        match self.index.json_evict(self.disk_bytes, oldest) {
            Ok(dropped) => {
                for key in dropped {
                    self.hot.invalidate(&Key(key)).await;
                }
            }
            Err(e) => tracing::warn!(error = %e, "cached JSON eviction failed"),
        }
    }

    /// How long a revalidated entry's disk record may lag behind memory:
    /// [`PERSIST_EVERY`], or less when records age out sooner.
    fn persist_every(&self) -> u64 {
        millis(PERSIST_EVERY.min(self.max_age / 2))
    }

    async fn remove(&self, key: &Key) {
        self.hot.invalidate(key).await;
        if let Err(e) = self.index.json_remove(&key.0) {
            tracing::warn!(error = %e, "cached JSON not removed from the index");
        }
    }

    fn remove_prefix(&self, prefix: Vec<u8>) {
        let matching = prefix.clone();
        if let Err(e) = self
            .hot
            .invalidate_entries_if(move |k, _| k.0.starts_with(&matching))
        {
            tracing::warn!(error = %e, "memory tier not purged");
        }
        if let Err(e) = self.index.json_remove_prefix(&prefix) {
            tracing::warn!(error = %e, "cached JSON not purged from the index");
        }
    }
}

pub struct JsonCache {
    upstream: Upstream,
    store: Store,
    /// Told when JSON shows an artifact expired (see `learn_from_body`).
    blobs: Arc<BlobStore>,
    flights: Flights<Key, Arc<Outcome>>,
    public: PublicBase,
    upstream_base: String,
    mode: Revalidate,
    max_fresh: Duration,
    stale_if_error: Duration,
}

impl JsonCache {
    pub fn new(
        settings: &Settings,
        upstream: Upstream,
        index: Index,
        blobs: Arc<BlobStore>,
    ) -> JsonCache {
        let hot = moka::future::Cache::builder()
            .max_capacity(settings.json_memory_bytes)
            .weigher(|key: &Key, entry: &Arc<Entry>| {
                let bytes = key.0.len() + entry.body.len() + 64 * entry.headers.len();
                u32::try_from(bytes).unwrap_or(u32::MAX)
            })
            .support_invalidation_closures()
            .build();
        let public = match &settings.public_url {
            Some(url) => PublicBase::Fixed(url.as_str().trim_end_matches('/').to_owned()),
            None => PublicBase::FromRequest {
                api_path: settings.api_base_path().to_owned(),
                trust_forwarded: settings.trust_forwarded_headers,
            },
        };
        JsonCache {
            upstream,
            blobs,
            store: Store {
                hot,
                index,
                disk_bytes: settings.json_disk_bytes,
                max_age: settings.json_max_age.0,
                max_fresh: settings.max_fresh.0,
            },
            flights: Flights::default(),
            public,
            upstream_base: settings.upstream.as_str().trim_end_matches('/').to_owned(),
            mode: settings.revalidate,
            max_fresh: settings.max_fresh.0,
            stale_if_error: settings.stale_if_error.0,
        }
    }

    /// Answers a list or get request.
    pub async fn serve(
        &self,
        route: &ArtifactRoute,
        request: Request<Body>,
        client: ClientInfo,
    ) -> Result<Response<Body>, MirrorError> {
        let (mut parts, _) = request.into_parts();
        let storable = cacheable_query(route, parts.uri.query());
        if parts.method != Method::GET || !storable {
            // HEAD: not worth a cache entry of its own; a query the route
            // does not know must not add entries. Upstream answers; a GET's
            // URLs still move to the mirror, as on the forward route.
            let rewriter = if parts.method == Method::GET {
                parts.headers.remove(header::ACCEPT_ENCODING);
                let public =
                    self.public
                        .resolve(&parts.headers, parts.uri.authority(), client.tls)?;
                Some(Rewriter::new(&self.upstream_base, &public))
            } else {
                None
            };
            let forward = self
                .upstream
                .forward(Request::from_parts(parts, body::empty()), client);
            let mut response = Box::pin(forward).await?;
            if let Some(rewriter) = rewriter {
                response = Box::pin(rewriter.forwarded(response)).await?;
            }
            response
                .headers_mut()
                .insert(X_CACHE, x_cache(CacheOutcome::Bypass));
            response.extensions_mut().insert(CacheOutcome::Bypass);
            return Ok(response);
        }
        let public = self
            .public
            .resolve(&parts.headers, parts.uri.authority(), client.tls)?;
        let credential = client.credential;
        let key = Key::new(route, credential, &parts, &public);
        let cached = self.store.get(&key).await;
        if self.mode == Revalidate::WhenStale {
            if let Some(entry) = &cached {
                if entry.is_fresh(&parts.headers, SystemTime::now()) {
                    let if_none_match = parts.headers.get(header::IF_NONE_MATCH);
                    return Ok(entry.respond(CacheOutcome::Hit, if_none_match));
                }
            }
        }
        let policy_request = policy_request(&parts, credential);
        let rewriter = Rewriter::new(&self.upstream_base, &public);
        // `refresh` strips the client's validators from the upstream request.
        let if_none_match = parts.headers.get(header::IF_NONE_MATCH).cloned();
        // Boxed: the upstream trip's state is large, and carrying it inline
        // made every fresh hit build and copy a future of ~18 KB (see the
        // `handler` bench).
        let refresh = Box::pin(self.refresh(
            &key,
            route,
            parts,
            &policy_request,
            cached,
            client,
            &rewriter,
        ));
        let (outcome, shared) = self
            .flights
            .run(&key, || async move { Arc::new(refresh.await) })
            .await;
        let mut response = match &*outcome {
            Outcome::Entry {
                entry,
                status,
                upstream,
            } => {
                let mut response = entry.respond(*status, if_none_match.as_ref());
                if let Some(s) = upstream {
                    response.extensions_mut().insert(UpstreamStatus(*s));
                }
                response
            }
            Outcome::Passthrough(buffered) => {
                let mut response = buffered.respond();
                response
                    .extensions_mut()
                    .insert(UpstreamStatus(buffered.status));
                response
            }
        };
        if shared {
            response.extensions_mut().insert(CacheOutcome::Coalesced);
        }
        Ok(response)
    }

    /// Drops every cached answer of a repository, for every credential and
    /// under both of its path forms (when the other form is known).
    pub fn purge_repo(&self, repo: &RepoRef) {
        let prefixes = repo_prefixes(&self.store.index, repo).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "repository alias lookup failed");
            vec![repo_prefix(repo)]
        });
        for prefix in prefixes {
            self.store.remove_prefix(prefix);
        }
    }

    /// One trip upstream: a conditional GET with the client's credential.
    #[allow(clippy::too_many_arguments)]
    async fn refresh(
        &self,
        key: &Key,
        route: &ArtifactRoute,
        mut parts: request::Parts,
        policy_request: &Request<()>,
        cached: Option<Arc<Entry>>,
        client: ClientInfo,
        rewriter: &Rewriter,
    ) -> Outcome {
        // Bodies must come back uncompressed to be rewritten, and only the
        // entry's own validator may be sent (the client's may be another
        // credential's or the mirror's).
        for name in [
            header::IF_NONE_MATCH,
            header::IF_MODIFIED_SINCE,
            header::ACCEPT_ENCODING,
        ] {
            parts.headers.remove(name);
        }
        if let Some(etag) = cached.as_ref().and_then(|e| e.etag()) {
            parts.headers.insert(header::IF_NONE_MATCH, etag.clone());
        }
        let response = match self
            .upstream
            .forward(Request::from_parts(parts, body::empty()), client)
            .await
        {
            Ok(response) => response,
            Err(e) => return self.on_failure(cached, Buffered::error(&e)),
        };
        let status = response.status();
        let now = SystemTime::now();
        match (status, cached) {
            (StatusCode::NOT_MODIFIED, Some(entry)) => {
                let (parts, _) = response.into_parts();
                match entry.policy.after_response(policy_request, &parts, now) {
                    AfterResponse::NotModified(policy, merged) => {
                        let mut headers = merged.headers;
                        headers.remove(header::AGE);
                        rewriter.link_headers(&mut headers);
                        // Memory always takes the new headers and time; the
                        // disk only when what matters changed or it lags too
                        // far (see `PERSIST_EVERY`).
                        let validated_at = unix_ms(now);
                        let persist = any_changed(&entry.headers, &headers, &PERSISTED_ON_CHANGE)
                            || validated_at.saturating_sub(entry.persisted_at)
                                >= self.store.persist_every();
                        let fresh = Arc::new(Entry::new(
                            headers,
                            entry.body.clone(),
                            policy,
                            validated_at,
                            if persist {
                                validated_at
                            } else {
                                entry.persisted_at
                            },
                            self.max_fresh,
                        ));
                        let persist = if persist { Persist::Meta } else { Persist::No };
                        self.store.put(key, fresh.clone(), persist).await;
                        Outcome::Entry {
                            entry: fresh,
                            status: CacheOutcome::Revalidated,
                            upstream: Some(status),
                        }
                    }
                    // A 304 for a validator the entry does not hold.
                    AfterResponse::Modified(..) => {
                        self.store.remove(key).await;
                        Outcome::Passthrough(Buffered {
                            status,
                            headers: parts.headers,
                            body: Bytes::new(),
                        })
                    }
                }
            }
            (StatusCode::OK, _) => {
                let (mut parts, body) = response.into_parts();
                let body = match body::collect_limited(body, MAX_JSON_BYTES).await {
                    Ok(bytes) => rewriter.json(&bytes),
                    Err(e) => {
                        let e = MirrorError::UpstreamUnreachable(format!(
                            "upstream answer not received whole: {e}"
                        ));
                        return Outcome::Passthrough(Buffered::error(&e));
                    }
                };
                rewriter.link_headers(&mut parts.headers);
                parts.headers.remove(header::CONTENT_LENGTH);
                let options = CacheOptions {
                    shared: false,
                    ..CacheOptions::default()
                };
                let policy = CachePolicy::new_options(policy_request, &parts, now, options);
                let headers = parts.headers;
                let validated_at = unix_ms(now);
                let entry = Arc::new(Entry::new(
                    headers,
                    body,
                    policy,
                    validated_at,
                    validated_at,
                    self.max_fresh,
                ));
                let status = if entry.policy.is_storable() {
                    self.store.put(key, entry.clone(), Persist::Body).await;
                    let expired = self.learn_from_body(route, &entry.body);
                    self.blobs.expire(expired).await;
                    CacheOutcome::Miss
                } else {
                    self.store.remove(key).await;
                    CacheOutcome::Bypass
                };
                Outcome::Entry {
                    entry,
                    status,
                    upstream: Some(StatusCode::OK),
                }
            }
            (status, cached) => {
                let (parts, body) = response.into_parts();
                let body = body::collect_limited(body, MAX_JSON_BYTES)
                    .await
                    .unwrap_or_default();
                let buffered = Buffered {
                    status,
                    headers: parts.headers,
                    body,
                };
                if status.is_server_error() {
                    return self.on_failure(cached, buffered);
                }
                if denies_access(&buffered) {
                    self.store.remove(key).await;
                }
                Outcome::Passthrough(buffered)
            }
        }
    }

    /// Upstream failed: a recent enough entry may answer (opt-in).
    fn on_failure(&self, cached: Option<Arc<Entry>>, failure: Buffered) -> Outcome {
        let limit = millis(self.stale_if_error);
        match cached {
            Some(entry)
                if limit > 0
                    && unix_ms(SystemTime::now()).saturating_sub(entry.validated_at) <= limit =>
            {
                Outcome::Entry {
                    entry,
                    status: CacheOutcome::Stale,
                    upstream: Some(failure.status),
                }
            }
            _ => Outcome::Passthrough(failure),
        }
    }

    /// Records that `/repos/{owner}/{name}` and `/repositories/{id}` are one
    /// repository, read from an answer's first artifact, so a DELETE under
    /// one form also purges entries stored under the other.
    ///
    /// Also records each artifact's facts (name, size, digest, expiry: the
    /// same for every credential), so a cold zip fill needs no API call.
    /// Returns the artifacts it shows expired (a get, a renewal or any entry
    /// of a list): the caller ends their grants and drops their zips.
    fn learn_from_body(&self, route: &ArtifactRoute, body: &Bytes) -> Vec<u64> {
        let Ok(json) = serde_json::from_slice::<serde_json::Value>(body) else {
            return Vec::new();
        };
        let artifacts = match json.get("artifacts").and_then(|a| a.as_array()) {
            Some(list) => list.iter().collect(),
            None => vec![&json],
        };
        let own = repo_id(route_repo(route));
        let now = now_secs();
        let mut expired = Vec::new();
        for (id, mut facts) in artifacts.iter().filter_map(|a| Facts::from_artifact(a)) {
            if facts.is_expired(now) {
                expired.push(id);
            }
            facts.repo = Some(own.clone());
            let stored = serde_json::to_vec(&facts)
                .map_err(|e| e.to_string())
                .and_then(|v| {
                    self.store
                        .index
                        .facts_put(id, &v)
                        .map_err(|e| e.to_string())
                });
            if let Err(e) = stored {
                tracing::warn!(error = %e, "artifact facts not stored");
            }
        }
        let artifact = json
            .get("artifacts")
            .and_then(|a| a.get(0))
            .unwrap_or(&json);
        let id = artifact
            .pointer("/workflow_run/repository_id")
            .and_then(serde_json::Value::as_u64);
        let named = artifact
            .get("url")
            .and_then(serde_json::Value::as_str)
            .and_then(|url| url.split_once("/repos/"))
            .and_then(|(_, rest)| {
                let mut segments = rest.split('/');
                Some(RepoRef::Named {
                    owner: segments.next()?.to_owned(),
                    name: segments.next()?.to_owned(),
                })
            });
        let (Some(id), Some(named)) = (id, named) else {
            return expired;
        };
        let (a, b) = (repo_id(&named), repo_id(&RepoRef::Id(id)));
        if own != a && own != b {
            return expired; // The body names another repository (a fork's run).
        }
        if let Err(e) = self.store.index.alias_put(a.as_bytes(), b.as_bytes()) {
            tracing::warn!(error = %e, "repository alias not stored");
        }
        expired
    }
}

fn route_repo(route: &ArtifactRoute) -> &RepoRef {
    match route {
        ArtifactRoute::ListForRepo { repo }
        | ArtifactRoute::ListForRun { repo, .. }
        | ArtifactRoute::Get { repo, .. }
        | ArtifactRoute::Delete { repo, .. }
        | ArtifactRoute::Download { repo, .. } => repo,
    }
}

/// An answer that says this credential may not (or no longer) see the
/// resource. A 403 for an exhausted rate limit says nothing about access and
/// keeps the entry (and its free revalidation).
fn denies_access(answer: &Buffered) -> bool {
    let rate_limited = answer
        .headers
        .get("x-ratelimit-remaining")
        .is_some_and(|v| v.as_bytes() == b"0");
    match answer.status {
        StatusCode::UNAUTHORIZED | StatusCode::NOT_FOUND | StatusCode::GONE => true,
        StatusCode::FORBIDDEN => !rate_limited,
        _ => false,
    }
}

/// What the cache policy sees of a request: the path, the headers that
/// select the answer and, instead of the raw `Authorization`, the credential
/// id — the policy is stored on disk, and a token must never be.
fn policy_request(parts: &request::Parts, credential: CredentialId) -> Request<()> {
    let mut request = Request::new(());
    *request.method_mut() = parts.method.clone();
    *request.uri_mut() = parts.uri.clone();
    let headers = request.headers_mut();
    for name in &VARYING {
        if let Some(v) = parts.headers.get(name) {
            headers.insert(name.clone(), v.clone());
        }
    }
    headers.insert(header::AUTHORIZATION, credential_header(credential));
    request
}

/// The credential id as `Display` writes it (hex of the MAC, or
/// `anonymous`), without going through `fmt` byte by byte.
fn credential_header(credential: CredentialId) -> HeaderValue {
    match credential {
        CredentialId::Anonymous => HeaderValue::from_static("anonymous"),
        CredentialId::Token(mac) => {
            let mut hex = [0u8; 64];
            hex::encode_to_slice(mac, &mut hex).expect("64 digits for 32 bytes");
            HeaderValue::from_bytes(&hex).expect("hex digits are a valid header value")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_normalise_with_defaults() {
        assert_eq!(normalized_query(None, Some(false)), "page=1&per_page=30");
        assert_eq!(
            normalized_query(Some("per_page=30&page=1"), Some(false)),
            normalized_query(Some(""), Some(false))
        );
        assert_eq!(
            normalized_query(Some("name=x&page=2"), Some(true)),
            "direction=desc&name=x&page=2&per_page=30"
        );
        assert_eq!(normalized_query(Some("b=1&a"), None), "a=&b=1");
    }

    #[test]
    fn only_known_parameters_of_their_form_are_cacheable() {
        let repo = RepoRef::Id(1);
        let list = ArtifactRoute::ListForRepo { repo: repo.clone() };
        let run = ArtifactRoute::ListForRun {
            repo: repo.clone(),
            run_id: 2,
        };
        let get = ArtifactRoute::Get {
            repo,
            artifact_id: 3,
        };
        for q in [None, Some(""), Some("per_page=100&page=2&name=dist")] {
            assert!(cacheable_query(&list, q), "{q:?}");
        }
        assert!(cacheable_query(&run, Some("direction=asc&per_page=1")));
        assert!(cacheable_query(&get, None));
        let long_name = format!("name={}", "x".repeat(MAX_NAME_PARAM + 1));
        for q in [
            "junk=1",
            "page=1&junk",
            "direction=asc",
            "per_page=101",
            "per_page=0",
            "per_page=ten",
            "per_page=+5",
            "page=1234567",
            "page=",
            "name=",
            "page=1&page=2",
            long_name.as_str(),
        ] {
            assert!(!cacheable_query(&list, Some(q)), "{q}");
        }
        assert!(!cacheable_query(&run, Some("direction=up")));
        assert!(!cacheable_query(&get, Some("per_page=1")));
    }

    #[test]
    fn etags_compare_weakly() {
        let v = |s: &str| HeaderValue::from_str(s).unwrap();
        assert!(etag_matches(&v("\"abc\""), &v("W/\"abc\"")));
        assert!(etag_matches(&v("W/\"x\", W/\"abc\""), &v("\"abc\"")));
        assert!(etag_matches(&v("*"), &v("\"abc\"")));
        assert!(!etag_matches(&v("\"abd\""), &v("\"abc\"")));
    }

    #[test]
    fn credential_header_is_the_display_form() {
        for id in [CredentialId::Anonymous, CredentialId::Token([0xa7; 32])] {
            assert_eq!(credential_header(id), id.to_string().as_str());
        }
    }

    #[test]
    fn key_starts_with_the_repo_prefix_and_separates_credentials() {
        let (parts, ()) = Request::get("/api/v3/repos/O/R/actions/artifacts")
            .body(())
            .unwrap()
            .into_parts();
        let repo = RepoRef::Named {
            owner: "O".into(),
            name: "R".into(),
        };
        let route = ArtifactRoute::ListForRepo { repo: repo.clone() };
        let anon = Key::new(&route, CredentialId::Anonymous, &parts, "http://m");
        let token = Key::new(&route, CredentialId::Token([0; 32]), &parts, "http://m");
        assert!(anon.0.starts_with(&repo_prefix(&repo)));
        assert!(anon.0.starts_with(b"n:o/r\0"));
        assert!(token.0.starts_with(&repo_prefix(&repo)));
        assert_ne!(anon, token);
    }

    #[test]
    fn policy_request_never_holds_the_token() {
        let (parts, ()) = Request::get("/api/v3/repos/o/r/actions/artifacts")
            .header("authorization", "token ghp_secret")
            .header("accept", "application/vnd.github+json")
            .header("cookie", "session=1")
            .body(())
            .unwrap()
            .into_parts();
        let r = policy_request(&parts, CredentialId::Token([7; 32]));
        let all = format!("{:?}", r.headers());
        assert!(!all.contains("ghp_secret"), "{all}");
        assert!(!all.contains("session"), "{all}");
        assert_eq!(r.headers()["accept"], "application/vnd.github+json");
    }
}
