//! What a prefetch worker does with a completed run: list its artifacts
//! (every page) with the prefetch credential, keep those worth storing, and
//! hand each to the blob store's normal fill with the `Location` the
//! download endpoint gave that credential. No grant is recorded: a client
//! still needs GHES's own yes before it gets a byte.

use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use tokio::sync::Semaphore;

use super::credential::Credential;
use super::queue::RunJob;
use crate::blob_store::{Available, BlobStore, FillState, Relocate};
use crate::body::{self, Body};
use crate::index::Facts;
use crate::metrics::prefetch::{PrefetchMetrics, Skip};
use crate::router::RepoRef;
use crate::upstream::Upstream;

/// Artifacts per page (GitHub's maximum).
const PER_PAGE: u64 = 100;
/// Pages read per run at most: 10,000 artifacts, far past GitHub's limits.
const MAX_PAGES: u64 = 100;
/// Largest artifacts-list body read.
const MAX_LIST_BYTES: usize = 8 * 1024 * 1024;

pub struct Fetcher {
    pub upstream: Upstream,
    pub blobs: Arc<BlobStore>,
    pub credential: Arc<Credential>,
    pub api_base: String,
    pub names: Vec<glob::Pattern>,
    /// `prefetch_max_bytes`, and no more than the store keeps.
    pub max_bytes: u64,
    /// `prefetch_concurrency` fills at once, over all runs.
    pub fills: Semaphore,
    pub metrics: Arc<PrefetchMetrics>,
}

/// An artifact chosen for prefetch.
struct Wanted {
    id: u64,
    facts: Facts,
}

impl Fetcher {
    /// Prefetches one run; failures are logged and counted, not returned:
    /// nobody waits for a prefetch.
    pub async fn run(self: &Arc<Self>, job: RunJob) {
        let auth = match self.credential.authorization(job.installation).await {
            Ok(auth) => auth,
            Err(e) => {
                tracing::warn!(run = job.run_id, error = %e, "prefetch: no credential");
                self.metrics.errors.inc();
                return;
            }
        };
        let Some(wanted) = self.list(&job, &auth).await else {
            self.metrics.errors.inc();
            return;
        };
        self.metrics.runs.inc();
        let mut fills = tokio::task::JoinSet::new();
        for artifact in wanted {
            let this = self.clone();
            let (job, auth) = (job.clone(), auth.clone());
            fills.spawn(async move {
                let Ok(_slot) = this.fills.acquire().await else {
                    return;
                };
                this.fill(&job, artifact, auth).await;
            });
        }
        while fills.join_next().await.is_some() {}
    }

    /// The run's artifacts worth fetching; `None` when GHES would not list
    /// them (logged).
    async fn list(&self, job: &RunJob, auth: &HeaderValue) -> Option<Vec<Wanted>> {
        let now = crate::clock::now_secs();
        let mut wanted = Vec::new();
        let mut seen = 0u64;
        for page in 1..=MAX_PAGES {
            let path = format!(
                "{}/repos/{}/{}/actions/runs/{}/artifacts?per_page={PER_PAGE}&page={page}",
                self.api_base, job.owner, job.name, job.run_id
            );
            let response = get(&self.upstream, &path, auth, "prefetch_list").await?;
            if response.status() != StatusCode::OK {
                tracing::warn!(
                    run = job.run_id,
                    status = %response.status(),
                    "prefetch: GHES did not list the run's artifacts"
                );
                return None;
            }
            let list = body::collect_limited(response.into_body(), MAX_LIST_BYTES)
                .await
                .ok()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok());
            let Some(artifacts) = list.as_ref().and_then(|l| l.get("artifacts")?.as_array()) else {
                tracing::warn!(run = job.run_id, "prefetch: unreadable artifacts list");
                return None;
            };
            let total = list
                .as_ref()
                .and_then(|l| l.get("total_count")?.as_u64())
                .unwrap_or(0);
            seen += artifacts.len() as u64;
            for artifact in artifacts {
                let Some((id, facts)) = Facts::from_artifact(artifact) else {
                    continue;
                };
                match self.skip(id, &facts, now) {
                    Some(reason) => self.metrics.skipped(reason),
                    None => wanted.push(Wanted { id, facts }),
                }
            }
            if artifacts.is_empty() || seen >= total {
                break;
            }
        }
        Some(wanted)
    }

    /// Why an artifact is left alone, if it is.
    fn skip(&self, id: u64, facts: &Facts, now: u64) -> Option<Skip> {
        let name = facts.name.as_deref().unwrap_or_default();
        if !self.names.is_empty() && !self.names.iter().any(|p| p.matches(name)) {
            return Some(Skip::Name);
        }
        if facts.is_expired(now) {
            return Some(Skip::Expired);
        }
        if facts.size.is_none_or(|s| s > self.max_bytes) {
            return Some(Skip::Size);
        }
        match self.blobs.lookup(id) {
            Some(Available::Stored(..) | Available::Filling(_)) => Some(Skip::Present),
            Some(Available::Failed(_)) | None => None,
        }
    }

    /// One artifact: the download endpoint's `Location` for the prefetch
    /// credential, then the store's fill (joined if a client started one),
    /// awaited so that `prefetch_concurrency` bounds the transfers.
    async fn fill(&self, job: &RunJob, artifact: Wanted, auth: HeaderValue) {
        let path = format!(
            "{}/repos/{}/{}/actions/artifacts/{}/zip",
            self.api_base, job.owner, job.name, artifact.id
        );
        let Some(location) = locate(&self.upstream, &path, &auth).await else {
            tracing::warn!(artifact = artifact.id, "prefetch: no download Location");
            self.metrics.errors.inc();
            return;
        };
        let mut facts = artifact.facts;
        facts.repo = Some(crate::json_cache::repo_id(&RepoRef::Named {
            owner: job.owner.clone(),
            name: job.name.clone(),
        }));
        let relocate: Relocate = {
            let upstream = self.upstream.clone();
            Box::new(move || {
                let (upstream, path, auth) = (upstream.clone(), path.clone(), auth.clone());
                Box::pin(async move { locate(&upstream, &path, &auth).await })
            })
        };
        let (fill, joined) = self.blobs.fill(artifact.id, location, facts, relocate);
        if joined {
            // A client's download started it meanwhile: its bytes, not ours.
            self.metrics.skipped(Skip::Present);
            return;
        }
        let mut state = fill.state();
        let ended = state
            .wait_for(FillState::ended)
            .await
            .ok()
            .map(|s| s.clone());
        match ended {
            Some(FillState::Verified(record)) => {
                tracing::info!(artifact = artifact.id, size = record.size, "prefetched");
                self.metrics.artifacts.inc();
                self.metrics.bytes.inc_by(record.size);
            }
            Some(FillState::Unkept { .. }) => {
                tracing::warn!(
                    artifact = artifact.id,
                    "prefetch: the disk is full; not kept"
                );
                self.metrics.errors.inc();
            }
            Some(FillState::Failed(e)) => {
                tracing::warn!(artifact = artifact.id, error = %e, "prefetch fill failed");
                self.metrics.errors.inc();
            }
            Some(FillState::Running { .. }) | None => {
                self.metrics.errors.inc();
            }
        }
    }
}

/// A GET to GHES with the prefetch credential; `None` (logged) when GHES
/// could not be asked.
pub(super) async fn get(
    upstream: &Upstream,
    path: &str,
    auth: &HeaderValue,
    route: &'static str,
) -> Option<Response<Body>> {
    get_with(upstream, path, auth, route, None).await
}

pub(super) async fn get_with(
    upstream: &Upstream,
    path: &str,
    auth: &HeaderValue,
    route: &'static str,
    etag: Option<&HeaderValue>,
) -> Option<Response<Body>> {
    let mut request = Request::get(path)
        .header(header::AUTHORIZATION, auth.clone())
        .header(header::ACCEPT, "application/vnd.github+json")
        .header(header::USER_AGENT, "artifact-mirror")
        .body(body::empty())
        .ok()?;
    if let Some(etag) = etag {
        request
            .headers_mut()
            .insert(header::IF_NONE_MATCH, etag.clone());
    }
    match upstream.forward(request, super::client(route)).await {
        Ok(response) => Some(response),
        Err(e) => {
            tracing::warn!(route, error = %e, "prefetch: GHES not reached");
            None
        }
    }
}

/// The download endpoint's 302 `Location` for the prefetch credential.
async fn locate(upstream: &Upstream, path: &str, auth: &HeaderValue) -> Option<Uri> {
    let response = get(upstream, path, auth, "prefetch_download").await?;
    if response.status() != StatusCode::FOUND {
        tracing::warn!(status = %response.status(), "prefetch: the download endpoint said no");
        return None;
    }
    crate::upstream::blob_location(response.headers())
}
