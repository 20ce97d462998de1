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
use http_cache_semantics::{AfterResponse, BeforeRequest, CacheOptions, CachePolicy};
use serde::{Deserialize, Serialize};

use crate::access_log::UpstreamStatus;
use crate::blobs::Facts;
use crate::body::{self, Body};
use crate::config::{Revalidate, Settings};
use crate::credential::{CredentialId, InstanceSecret};
use crate::error::{error_body, MirrorError};
use crate::flight::Flights;
use crate::index::Index;
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

/// How an answer was produced, sent as `X-Cache`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStatus {
    /// Fresh entry, upstream not asked (`when-stale` only).
    Hit,
    /// Upstream said 304 to the entry's ETag.
    Revalidated,
    /// Upstream sent a new body; it is stored.
    Miss,
    /// Not from the cache: upstream's answer passed through as is.
    Bypass,
    /// Upstream failed; a recent entry answered (`stale_if_error`).
    Stale,
}

impl CacheStatus {
    fn header(self) -> HeaderValue {
        HeaderValue::from_static(match self {
            CacheStatus::Hit => "HIT",
            CacheStatus::Revalidated => "REVALIDATED",
            CacheStatus::Miss => "MISS",
            CacheStatus::Bypass => "BYPASS",
            CacheStatus::Stale => "STALE",
        })
    }
}

pub const X_CACHE: HeaderName = HeaderName::from_static("x-cache");

/// One cached answer: upstream's headers and body with URLs rewritten to the
/// mirror, and the policy that says when it must be revalidated.
#[derive(Debug)]
pub struct Entry {
    headers: HeaderMap,
    body: Bytes,
    policy: CachePolicy,
    /// Unix milliseconds of the last time upstream confirmed it (200 or 304).
    validated_at: u64,
}

/// What goes to disk besides the body.
#[derive(Serialize, Deserialize)]
struct StoredMeta {
    #[serde(with = "http_serde::header_map")]
    headers: HeaderMap,
    policy: CachePolicy,
}

impl Entry {
    fn etag(&self) -> Option<&HeaderValue> {
        self.headers.get(header::ETAG)
    }

    fn is_fresh(&self, request: &Request<()>, now: SystemTime, max_fresh: Duration) -> bool {
        let young = unix_ms(now).saturating_sub(self.validated_at) < millis(max_fresh);
        young
            && matches!(
                self.policy.before_request(request, now),
                BeforeRequest::Fresh(_)
            )
    }

    fn respond(&self, status: CacheStatus, request_headers: &HeaderMap) -> Response<Body> {
        let not_modified = match (request_headers.get(header::IF_NONE_MATCH), self.etag()) {
            (Some(wanted), Some(etag)) => etag_matches(wanted, etag),
            _ => false,
        };
        let mut response = Response::new(if not_modified {
            body::empty()
        } else {
            body::full(self.body.clone())
        });
        *response.headers_mut() = self.headers.clone();
        let headers = response.headers_mut();
        if not_modified {
            *response.status_mut() = StatusCode::NOT_MODIFIED;
            response.headers_mut().remove(header::CONTENT_LENGTH);
        } else {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(self.body.len()));
        }
        response.headers_mut().insert(X_CACHE, status.header());
        response
    }
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
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=utf-8"),
        );
        Buffered {
            status: e.status(),
            headers,
            body: error_body(&e.to_string()),
        }
    }

    fn respond(&self) -> Response<Body> {
        let mut response = Response::new(body::full(self.body.clone()));
        *response.status_mut() = self.status;
        *response.headers_mut() = self.headers.clone();
        response
            .headers_mut()
            .insert(X_CACHE, CacheStatus::Bypass.header());
        response
    }
}

/// The result of one trip upstream, shared by every coalesced caller.
#[derive(Debug)]
enum Outcome {
    Entry {
        entry: Arc<Entry>,
        status: CacheStatus,
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
        let (repo, tail, list) = match route {
            ArtifactRoute::ListForRepo { repo } => (repo, "artifacts".to_owned(), Some(false)),
            ArtifactRoute::ListForRun { repo, run_id } => {
                (repo, format!("runs/{run_id}/artifacts"), Some(true))
            }
            ArtifactRoute::Get { repo, artifact_id }
            | ArtifactRoute::Delete { repo, artifact_id }
            | ArtifactRoute::Download { repo, artifact_id } => {
                (repo, format!("artifacts/{artifact_id}"), None)
            }
        };
        let mut key = repo_prefix(repo);
        key.extend_from_slice(credential.to_string().as_bytes());
        key.push(0);
        key.extend_from_slice(tail.as_bytes());
        key.push(b'?');
        key.extend_from_slice(normalized_query(parts.uri.query(), list).as_bytes());
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
    let mut prefix = repo_id(repo).into_bytes();
    prefix.push(0);
    prefix
}

fn repo_id(repo: &RepoRef) -> String {
    match repo {
        // GitHub names are case-insensitive.
        RepoRef::Named { owner, name } => {
            format!(
                "n:{}/{}",
                owner.to_ascii_lowercase(),
                name.to_ascii_lowercase()
            )
        }
        RepoRef::Id(id) => format!("i:{id}"),
    }
}

/// Sorted pairs with GitHub's defaults made explicit, so `?page=1&per_page=30`
/// and no query share an entry. `list` is `Some(is_run_list)` for lists.
fn normalized_query(query: Option<&str>, list: Option<bool>) -> String {
    let mut pairs: Vec<(&str, &str)> = query
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
        .collect();
    if let Some(run_list) = list {
        let mut defaults = vec![("per_page", "30"), ("page", "1")];
        if run_list {
            defaults.push(("direction", "desc"));
        }
        for (name, value) in defaults {
            if !pairs.iter().any(|(n, _)| *n == name) {
                pairs.push((name, value));
            }
        }
    }
    pairs.sort_unstable();
    pairs
        .iter()
        .map(|(n, v)| format!("{n}={v}"))
        .collect::<Vec<_>>()
        .join("&")
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

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, millis)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The two tiers.
struct Store {
    hot: moka::future::Cache<Key, Arc<Entry>>,
    index: Index,
    disk_bytes: u64,
    max_age: Duration,
}

impl Store {
    async fn get(&self, key: &Key) -> Option<Arc<Entry>> {
        let oldest = unix_ms(SystemTime::now()).saturating_sub(millis(self.max_age));
        if let Some(entry) = self.hot.get(key).await {
            if entry.validated_at >= oldest {
                return Some(entry);
            }
        }
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
        let entry = Arc::new(Entry {
            headers: meta.headers,
            body: Bytes::copy_from_slice(&record.body),
            policy: meta.policy,
            validated_at: record.validated_at,
        });
        self.hot.insert(key.clone(), entry.clone()).await;
        Some(entry)
    }

    async fn put(&self, key: &Key, entry: Arc<Entry>, new_body: bool) {
        let meta = StoredMeta {
            headers: entry.headers.clone(),
            policy: entry.policy.clone(),
        };
        let stored = serde_json::to_vec(&meta)
            .map_err(|e| e.to_string())
            .and_then(|meta| {
                let body = new_body.then_some(entry.body.as_ref());
                self.index
                    .json_put(&key.0, entry.validated_at, &meta, body)
                    .map_err(|e| e.to_string())
            });
        if let Err(e) = stored {
            tracing::warn!(error = %e, "cached JSON not persisted");
        }
        self.hot.insert(key.clone(), entry).await;
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
    secret: InstanceSecret,
    store: Store,
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
        secret: InstanceSecret,
        index: Index,
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
            secret,
            store: Store {
                hot,
                index,
                disk_bytes: settings.json_disk_bytes,
                max_age: settings.json_max_age.0,
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
        let (parts, _) = request.into_parts();
        if parts.method != Method::GET {
            // HEAD: not worth a cache entry of its own; upstream answers.
            let mut response = self
                .upstream
                .forward(Request::from_parts(parts, body::empty()), client)
                .await?;
            response
                .headers_mut()
                .insert(X_CACHE, CacheStatus::Bypass.header());
            return Ok(response);
        }
        let public = self
            .public
            .resolve(&parts.headers, parts.uri.authority(), client.tls)?;
        let credential = self.secret.credential(&parts.headers);
        let key = Key::new(route, credential, &parts, &public);
        let policy_request = policy_request(&parts, credential);
        let cached = self.store.get(&key).await;
        if self.mode == Revalidate::WhenStale {
            if let Some(entry) = &cached {
                if entry.is_fresh(&policy_request, SystemTime::now(), self.max_fresh) {
                    return Ok(entry.respond(CacheStatus::Hit, &parts.headers));
                }
            }
        }
        let rewriter = Rewriter::new(&self.upstream_base, &public);
        let headers = parts.headers.clone();
        let refresh = self.refresh(
            &key,
            route,
            parts,
            &policy_request,
            cached,
            client,
            &rewriter,
        );
        let (outcome, _shared) = self
            .flights
            .run(&key, || async move { Arc::new(refresh.await) })
            .await;
        Ok(match &*outcome {
            Outcome::Entry {
                entry,
                status,
                upstream,
            } => {
                let mut response = entry.respond(*status, &headers);
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
        })
    }

    /// Drops every cached answer of a repository, for every credential and
    /// under both of its path forms (when the other form is known).
    pub fn purge_repo(&self, repo: &RepoRef) {
        let id = repo_id(repo);
        self.store.remove_prefix(repo_prefix(repo));
        match self.store.index.alias_get(id.as_bytes()) {
            Ok(Some(alias)) => {
                let mut prefix = alias.to_vec();
                prefix.push(0);
                self.store.remove_prefix(prefix);
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "repository alias lookup failed"),
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
                        rewrite_link(&mut headers, rewriter);
                        let fresh = Arc::new(Entry {
                            headers,
                            body: entry.body.clone(),
                            policy,
                            validated_at: unix_ms(now),
                        });
                        self.store.put(key, fresh.clone(), false).await;
                        Outcome::Entry {
                            entry: fresh,
                            status: CacheStatus::Revalidated,
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
                let (parts, body) = response.into_parts();
                let body = match body::collect_limited(body, MAX_JSON_BYTES).await {
                    Ok(bytes) => rewriter.json(&bytes),
                    Err(e) => {
                        let e = MirrorError::UpstreamUnreachable(format!(
                            "upstream answer not received whole: {e}"
                        ));
                        return Outcome::Passthrough(Buffered::error(&e));
                    }
                };
                let mut headers = parts.headers.clone();
                rewrite_link(&mut headers, rewriter);
                headers.remove(header::CONTENT_LENGTH);
                let mut response_parts = parts;
                response_parts.headers = headers.clone();
                let options = CacheOptions {
                    shared: false,
                    ..CacheOptions::default()
                };
                let policy =
                    CachePolicy::new_options(policy_request, &response_parts, now, options);
                let entry = Arc::new(Entry {
                    headers,
                    body,
                    policy,
                    validated_at: unix_ms(now),
                });
                let status = if entry.policy.is_storable() {
                    self.store.put(key, entry.clone(), true).await;
                    self.learn_from_body(route, &entry.body);
                    CacheStatus::Miss
                } else {
                    self.store.remove(key).await;
                    CacheStatus::Bypass
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
                    status: CacheStatus::Stale,
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
    fn learn_from_body(&self, route: &ArtifactRoute, body: &Bytes) {
        let Ok(json) = serde_json::from_slice::<serde_json::Value>(body) else {
            return;
        };
        let artifacts = match json.get("artifacts").and_then(|a| a.as_array()) {
            Some(list) => list.iter().collect(),
            None => vec![&json],
        };
        for (id, facts) in artifacts.iter().filter_map(|a| Facts::from_artifact(a)) {
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
            return;
        };
        let (a, b) = (repo_id(&named), repo_id(&RepoRef::Id(id)));
        let own = repo_id(route_repo(route));
        if own != a && own != b {
            return; // The body names another repository (a fork's run).
        }
        if let Err(e) = self.store.index.alias_put(a.as_bytes(), b.as_bytes()) {
            tracing::warn!(error = %e, "repository alias not stored");
        }
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
    if let Ok(v) = HeaderValue::from_str(&credential.to_string()) {
        headers.insert(header::AUTHORIZATION, v);
    }
    request
}

fn rewrite_link(headers: &mut HeaderMap, rewriter: &Rewriter) {
    let rewritten: Vec<HeaderValue> = headers
        .get_all(header::LINK)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| HeaderValue::from_str(&rewriter.link(v)).ok())
        .collect();
    if rewritten.is_empty() {
        return;
    }
    headers.remove(header::LINK);
    for v in rewritten {
        headers.append(header::LINK, v);
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
    fn etags_compare_weakly() {
        let v = |s: &str| HeaderValue::from_str(s).unwrap();
        assert!(etag_matches(&v("\"abc\""), &v("W/\"abc\"")));
        assert!(etag_matches(&v("W/\"x\", W/\"abc\""), &v("\"abc\"")));
        assert!(etag_matches(&v("*"), &v("\"abc\"")));
        assert!(!etag_matches(&v("\"abd\""), &v("\"abc\"")));
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
