//! The JSON cache for the list and get routes.
//!
//! Entries are partitioned by credential: the key starts with the repository
//! and the credential id, so an answer is only ever served to the credential
//! upstream gave it to. Policy is `http-cache-semantics` evaluated as a
//! *private* cache inside that partition (GitHub marks these answers
//! `private`). By default every request is revalidated upstream with the
//! credential's own ETag; a 304 costs no rate limit and keeps lists current.
//!
//! Laid out as: `key` (what selects an answer), `entry` (one answer, its
//! freshness, the result of a trip upstream), `tiers` (memory and disk),
//! and this façade (serve a request; revalidate for a download).

mod entry;
mod key;
mod tiers;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{request, Method, Request, Response, StatusCode};
use http_cache_semantics::{AfterResponse, CacheOptions, CachePolicy};

use crate::access_log::UpstreamStatus;
use crate::blob_store::BlobStore;
use crate::body::{self, Body};
use crate::clock::{millis, now_secs, unix_ms};
use crate::config::{Revalidate, Settings};
use crate::error::MirrorError;
use crate::flight::Flights;
use crate::index::{Facts, Index};
use crate::outcome::{CacheOutcome, X_CACHE};
use crate::rewrite::{PublicBase, Rewriter};
use crate::router::{ArtifactRoute, RepoRef};
use crate::upstream::{ClientInfo, Upstream};

use entry::{any_changed, every_value, Buffered, Entry, Outcome, PERSISTED_ON_CHANGE};
use key::{cacheable_query, policy_request, repo_prefix, Key};
pub use key::{repo_id, repo_prefixes};
use tiers::{Persist, Store};

/// How the cache answered a request, before it becomes a response.
enum Answer {
    /// A fresh entry, no upstream contact (`when-stale` only).
    Fresh(Arc<Entry>),
    /// The trip upstream; `shared` when this caller joined another's.
    Trip { outcome: Arc<Outcome>, shared: bool },
}

/// What renewing a download's permission found (see
/// [`JsonCache::revalidate`]).
#[derive(Debug)]
pub struct Revalidation {
    /// How the cache answered: a fresh hit and a 304 are free, a 200 cost
    /// a rate-limit unit.
    pub outcome: CacheOutcome,
    /// Upstream's status, when it was asked (a failure status for a stale
    /// answer).
    pub upstream: Option<StatusCode>,
    pub verdict: Verdict,
}

#[derive(Debug)]
pub enum Verdict {
    /// The metadata came back (fresh, 304 or 200): the credential still
    /// sees the artifact.
    Allowed,
    /// Upstream failed and `stale_if_error` answered from the entry: no
    /// upstream yes stands behind it.
    Stale,
    /// Upstream says no (401/403/404/410); its answer, for the client.
    Denied(Response<Body>),
    /// Upstream failed otherwise; its answer, for the client.
    Failed(Response<Body>),
}

impl Revalidation {
    /// Whether upstream said yes just now (a 200 or 304), as opposed to a
    /// fresh entry standing in for it.
    pub fn confirmed(&self) -> bool {
        self.upstream
            .is_some_and(|s| s.is_success() || s == StatusCode::NOT_MODIFIED)
    }
}

/// A buffered upstream answer as a response, with the status the access
/// log records.
fn buffered_response(buffered: &Buffered) -> Response<Body> {
    let mut response = buffered.respond();
    response
        .extensions_mut()
        .insert(UpstreamStatus(buffered.status));
    response
}

/// Largest JSON answer the cache takes in (a 100-artifact page is ~70 KB).
const MAX_JSON_BYTES: usize = 16 * 1024 * 1024;

pub struct JsonCache {
    upstream: Upstream,
    store: Store,
    /// Told when JSON shows an artifact expired (see `learn_from_body`).
    blobs: Arc<BlobStore>,
    flights: Flights<Key, Arc<Outcome>>,
    public: PublicBase,
    upstream_base: String,
    /// The API's path prefix (`/api/v3`), for the renewal's metadata path.
    api_base: String,
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
            api_base: settings.api_base_path().to_owned(),
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
                .insert(X_CACHE, CacheOutcome::Bypass.x_cache());
            response.extensions_mut().insert(CacheOutcome::Bypass);
            return Ok(response);
        }
        let public = self
            .public
            .resolve(&parts.headers, parts.uri.authority(), client.tls)?;
        let if_none_match = parts.headers.get(header::IF_NONE_MATCH).cloned();
        let answer = self.answer(route, parts, &public, client).await;
        let mut response = match &answer {
            Answer::Fresh(entry) => {
                return Ok(entry.respond(CacheOutcome::Hit, if_none_match.as_ref()))
            }
            Answer::Trip { outcome, .. } => match &**outcome {
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
                Outcome::Passthrough(buffered) => buffered_response(buffered),
            },
        };
        if let Answer::Trip { shared: true, .. } = answer {
            response.extensions_mut().insert(CacheOutcome::Coalesced);
        }
        Ok(response)
    }

    /// Renews a download's permission: a conditional GET of the artifact's
    /// metadata with the downloading credential and that credential's own
    /// cached ETag (a 304 costs no rate limit), through the same entry,
    /// tiers and coalescing as a client's get. `public` is the mirror's
    /// public base as the download resolved it.
    pub async fn revalidate(
        &self,
        repo: &RepoRef,
        artifact: u64,
        download: &request::Parts,
        public: &str,
        client: ClientInfo,
    ) -> Result<Revalidation, MirrorError> {
        let route = ArtifactRoute::Get {
            repo: repo.clone(),
            artifact_id: artifact,
        };
        let path = match repo {
            RepoRef::Named { owner, name } => {
                format!(
                    "{}/repos/{owner}/{name}/actions/artifacts/{artifact}",
                    self.api_base
                )
            }
            RepoRef::Id(id) => {
                format!(
                    "{}/repositories/{id}/actions/artifacts/{artifact}",
                    self.api_base
                )
            }
        };
        let mut parts = download.clone();
        parts.method = Method::GET;
        parts.uri = path
            .parse()
            .map_err(|e: http::uri::InvalidUri| MirrorError::BadRequest(e.to_string()))?;
        for name in [
            header::IF_NONE_MATCH,
            header::IF_MODIFIED_SINCE,
            header::RANGE,
        ] {
            parts.headers.remove(name);
        }
        // One Accept for every renewal, so they share one cache entry.
        parts.headers.insert(
            header::ACCEPT,
            HeaderValue::from_static("application/vnd.github+json"),
        );
        let client = client.for_route(route.name());
        Ok(match self.answer(&route, parts, public, client).await {
            Answer::Fresh(_) => Revalidation {
                outcome: CacheOutcome::Hit,
                upstream: None,
                verdict: Verdict::Allowed,
            },
            Answer::Trip { outcome, shared } => {
                let told = |status| {
                    if shared {
                        CacheOutcome::Coalesced
                    } else {
                        status
                    }
                };
                match &*outcome {
                    Outcome::Entry {
                        status: CacheOutcome::Stale,
                        upstream,
                        ..
                    } => Revalidation {
                        outcome: told(CacheOutcome::Stale),
                        upstream: *upstream,
                        verdict: Verdict::Stale,
                    },
                    Outcome::Entry {
                        status, upstream, ..
                    } => Revalidation {
                        outcome: told(*status),
                        upstream: *upstream,
                        verdict: Verdict::Allowed,
                    },
                    Outcome::Passthrough(buffered) => {
                        let mut response = buffered_response(buffered);
                        if shared {
                            response.extensions_mut().insert(CacheOutcome::Coalesced);
                        }
                        let verdict = match buffered.status {
                            s if s.is_success() => Verdict::Allowed,
                            StatusCode::UNAUTHORIZED
                            | StatusCode::FORBIDDEN
                            | StatusCode::NOT_FOUND
                            | StatusCode::GONE => Verdict::Denied(response),
                            _ => Verdict::Failed(response),
                        };
                        Revalidation {
                            outcome: told(CacheOutcome::Bypass),
                            upstream: Some(buffered.status),
                            verdict,
                        }
                    }
                }
            }
        })
    }

    /// The cached entry when it may answer alone (`when-stale` and fresh),
    /// else the result of the (possibly shared) trip upstream.
    async fn answer(
        &self,
        route: &ArtifactRoute,
        parts: request::Parts,
        public: &str,
        client: ClientInfo,
    ) -> Answer {
        let credential = client.credential;
        let key = Key::new(route, credential, &parts, public);
        let cached = self.store.get(&key).await;
        if self.mode == Revalidate::WhenStale {
            if let Some(entry) = &cached {
                if entry.is_fresh(&parts.headers, crate::clock::now()) {
                    return Answer::Fresh(entry.clone());
                }
            }
        }
        let policy_request = policy_request(&parts, credential);
        let rewriter = Rewriter::new(&self.upstream_base, public);
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
        Answer::Trip { outcome, shared }
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
        let now = crate::clock::now();
        match (status, cached) {
            (StatusCode::NOT_MODIFIED, Some(entry)) => {
                let (parts, _) = response.into_parts();
                match entry.policy.after_response(policy_request, &parts, now) {
                    AfterResponse::NotModified(policy, merged) => {
                        let mut headers =
                            every_value(&entry.headers, &parts.headers, merged.headers);
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
                    && unix_ms(crate::clock::now()).saturating_sub(entry.validated_at) <= limit =>
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
            if let Err(e) = self.store.index.facts().put(id, &facts) {
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
        if let Err(e) = self.store.index.json().alias_put(&a, &b) {
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
